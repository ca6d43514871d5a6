"""The data stage: spec → dataset in the store (README: The store).

    sources ─► quarantine ─► clean ─► template+tokenize+mask ─► token rules ─► dedup ─► split
      causal-lm:      ─► weight ─► augment (train) ─► spool per split ─► BFD packing ─► Arrow IPC
      classification: ─► (all rows) split ─► weight ─► augment (train) ─► balance ─► Arrow IPC

Causal-LM streams: batches are encoded and appended to a per-split spool file as they come;
only per-example offsets and lengths stay in memory, and packing needs lengths, not tokens.
Classification keeps its rows (short texts) in memory: a stratified split and balancing need
every label first. The rules themselves live in `ftc.quality`; per-record work is Rust.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ftc import __version__, _data, quality, store
from ftc.errors import BuildError, SourceError
from ftc.model import TokenizerInfo, load_tokenizer_info, resolve_model, resolve_template
from ftc.quality import Funnel
from ftc.sources import SourceBatch, file_format, read_source, source_files, source_name
from ftc.spec import Spec

SPLITS = ("train", "valid", "test")
COLUMNS = ("input_ids", "labels", "position_ids", "seq_lengths")
STATUS_REASONS = {1: "too long (truncation = drop)", 2: "no token left to train on"}
Progress = Callable[[str, int, int | None], None]  # (phase, advance, total)


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


class Spool:
    """Token ids and labels of one split, appended batch by batch to two flat int32 files."""

    def __init__(self, root: Path, split: str, block: int | None, unk_id: int | None = None) -> None:
        self.ids_path, self.labels_path = root / f"{split}.ids", root / f"{split}.labels"
        self._ids, self._labels = open(self.ids_path, "wb"), open(self.labels_path, "wb")
        self.tokens = 0
        self.offsets: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.block = block  # chunk mode: cut the concatenated stream into blocks of this size
        self.carry = np.empty(0, dtype=np.int32)
        self.unk_id = unk_id
        self.unk = 0  # unknown tokens appended

    def append(self, ids: pa.ListArray, labels: pa.ListArray, repeats: np.ndarray) -> None:
        if self.block is not None:  # the stream holds each document `repeats` times
            ids = ids.take(pa.array(np.repeat(np.arange(len(ids)), repeats)))
            return self._append_stream(np.asarray(ids.flatten(), dtype=np.int32))
        flat_ids = np.asarray(ids.flatten(), dtype=np.int32)
        lengths = np.asarray(pc.list_value_length(ids), dtype=np.uint32)
        starts = self.tokens + np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.uint64)]).astype(np.uint64)
        self._write(flat_ids, np.asarray(labels.flatten(), dtype=np.int32))
        self.offsets.append(np.repeat(starts, repeats))
        self.lengths.append(np.repeat(lengths, repeats))

    def _append_stream(self, flat: np.ndarray) -> None:
        buf = np.concatenate([self.carry, flat])
        n = len(buf) // self.block * self.block
        self._add_blocks(buf[:n])
        self.carry = buf[n:]

    def _add_blocks(self, buf: np.ndarray) -> None:
        if not len(buf):
            return
        k = -(-len(buf) // self.block)
        starts = self.tokens + np.arange(k, dtype=np.uint64) * self.block
        lengths = np.minimum(self.block, len(buf) - np.arange(k) * self.block).astype(np.uint32)
        self._write(buf, buf)
        self.offsets.append(starts)
        self.lengths.append(lengths)

    def _write(self, ids: np.ndarray, labels: np.ndarray) -> None:
        if self.unk_id is not None:
            self.unk += int(np.count_nonzero(ids == self.unk_id))
        self._ids.write(ids.astype("<i4", copy=False).tobytes())
        self._labels.write(labels.astype("<i4", copy=False).tobytes())
        self.tokens += len(ids)

    def close(self) -> tuple[np.ndarray, np.ndarray]:
        if self.block is not None:
            self._add_blocks(self.carry)  # the tail is kept as a shorter block: nothing lost
            self.carry = np.empty(0, dtype=np.int32)
        self._ids.close()
        self._labels.close()
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.empty(0, dt)  # noqa: E731
        return cat(self.offsets, np.uint64), cat(self.lengths, np.uint32)


@dataclass
class Classified:
    """Classification rows kept in memory until every label is known."""

    texts: list[pl.DataFrame] = field(default_factory=list)  # text (+ text_pair), cleaned; kept to augment
    ids: list[pa.Array] = field(default_factory=list)
    type_ids: list[pa.Array] = field(default_factory=list)
    hashes: list[np.ndarray] = field(default_factory=list)
    labels: list[pl.Series] = field(default_factory=list)
    splits: list[np.ndarray] = field(default_factory=list)  # from a split column, -1 if none
    source: list[np.ndarray] = field(default_factory=list)
    lines: list[np.ndarray] = field(default_factory=list)


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
    spools: dict[str, Spool] | None
    classified: Classified | None
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


def _check_output_size(run: Run, tokens: int, src: str, weight: float) -> None:
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
        "data": spec.data.model_dump(mode="json", by_alias=True),
        "tokenize": spec.tokenize.model_dump(mode="json"),
        "sources": sources,
        "tokenizer": {f.name: next(it) for f in info.files},
        "template": None if template is None else {"name": template[0], "sha256": store.key_of(template[1])},
        "synonyms": next(it) if extra else None,
        "hook": quality.hook_fingerprint(spec),
        # classification reports padding with the training batch size
        "batch_size": spec.train.batch_size if spec.model.task == "classification" else None,
    }


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def prep(spec: Spec, *, threads: int = 0, progress: Progress | None = None, force: bool = False) -> PrepResult:
    t0 = time.perf_counter()
    files, info, template, inputs = resolve_inputs(spec, threads)
    key = store.key_of(inputs)
    if not force and (hit := store.lookup(store.DATASETS, key)):
        return PrepResult(key, hit, True, _read_manifest(hit), time.perf_counter() - t0)
    with store.lock(store.DATASETS, key):
        if not force and (hit := store.lookup(store.DATASETS, key)):  # built while we waited
            return PrepResult(key, hit, True, _read_manifest(hit), time.perf_counter() - t0)
        with store.staging(store.DATASETS, key) as tmp:
            manifest = _build(spec, files, info, template, inputs, key, tmp, threads, progress)
            manifest["seconds"] = round(time.perf_counter() - t0, 3)
            store.write_json(tmp / store.MANIFEST, manifest)
    path = store.entry_dir(store.DATASETS, key)
    return PrepResult(key, path, False, manifest, time.perf_counter() - t0)


def resolve_inputs(spec: Spec, threads: int = 0) -> tuple[list[list[Path]], TokenizerInfo, tuple[str, str] | None,
                                                          dict[str, Any]]:
    """Each source's files, the tokenizer, the template (unless no source is a conversation)
    and the key's inputs."""
    files = [source_files(s, spec.root) for s in spec.data.sources]
    info = load_tokenizer_info(resolve_model(spec.model.base, spec.root))
    raw_text = spec.model.task == "classification" or all(
        s.columns.text is not None or all(file_format(s, f) == "txt" for f in fs)
        for s, fs in zip(spec.data.sources, files, strict=True))
    if spec.tokenize.truncation == "chunk" and not raw_text:
        raise BuildError("`tokenize.truncation = \"chunk\"` concatenates raw text into blocks; these sources "
                         "hold conversations or prompt/response pairs", hint="use `right`, `left` or `drop` for "
                         "chat data, or map a `text` column for continued pre-training")
    if spec.data.augment.copies and spec.tokenize.truncation == "chunk":
        raise BuildError("`data.augment` with `tokenize.truncation = \"chunk\"`: augmenting a stream of "
                         "concatenated text is not supported", hint="augment with `right`, `left` or `drop`")
    template = None if raw_text else resolve_template(spec.tokenize.template, info, spec.root)
    return files, info, template, key_inputs(spec, files, info, template, threads)


def _read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / store.MANIFEST).read_text(encoding="utf-8"))


def _build(spec: Spec, files: list[list[Path]], info: TokenizerInfo, template: tuple[str, str] | None,
           inputs: dict[str, Any], key: str, tmp: Path, threads: int, progress: Progress | None) -> dict[str, Any]:
    tok, clean = spec.tokenize, spec.data.clean
    classify = spec.model.task == "classification"
    spool_dir = tmp / ".spool"
    spool_dir.mkdir()
    block = tok.max_length if tok.truncation == "chunk" else None
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
        spools=None if classify else {s: Spool(spool_dir, s, block, info.unk_id) for s in SPLITS},
        classified=Classified() if classify else None,
        unk_id=info.unk_id,
    )
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
            for batch in read_source(src, fs, threads, on_bytes, spec.data.split.column):
                if batch.note:
                    st.notes.append(f"{_rel(batch.file, spec.root)}: {batch.note}")
                _process_batch(run, batch, idx, src.weight, st)
    finally:
        run.quarantine.close()
        run.removed.close()
    _check_bad_fraction(spec, stats, tmp)
    extra: dict[str, Any] = {}
    if classify:
        splits, extra = _finish_classification(run, stats, tmp)
        columns = ["input_ids", "label", "length"] + (["token_type_ids"] if extra.pop("pairs") else [])
    else:
        splits = {}
        for name, spool in (run.spools or {}).items():
            offsets, lengths = spool.close()
            splits[name] = _write_split(tmp / f"{name}.arrow", spool, offsets, lengths, tok.max_length,
                                        tok.pack, threads, progress)
            splits[name]["unk_tokens"] = spool.unk if run.unk_id is not None else None
        columns = list(COLUMNS)
    shutil.copyfile(info.dir / "tokenizer.json", tmp / "tokenizer.json")  # inspect decodes without the model
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
        # `ftc-bpe: …` (the exact fast path, what it covers) or `tokenizers: …` (why not).
        "encoder": run.encoder.encoder,
        "files": {s: f"{s}.arrow" for s in SPLITS},
        "columns": columns,
        **extra,
        "inputs": inputs,
        "stats": {
            "sources": [st.__dict__ for st in stats],
            "funnel": run.funnel.to_dict(final_train),
            "rule_examples": run.funnel.examples,
            "splits": splits,
            **_totals(stats, splits, tok.max_length, classify),
        },
    }


def _process_batch(run: Run, batch: SourceBatch, idx: int, weight: float, st: SourceStats) -> None:
    """One batch of one source through quarantine, cleaning, tokenization, the token rules and
    dedup; the survivors go on to the splits."""
    spec, funnel = run.spec, run.funnel
    rows, bad = batch.rows, batch.bad
    st.read += rows.height + bad.height
    funnel.read += rows.height + bad.height
    bad_parts = [bad]
    if spec.model.task == "classification":
        rows, more = _check_labels(run, rows)
        bad_parts.append(more)
    codes = np.full(rows.height, -1, dtype=np.int8)
    if "split" in rows.columns:
        codes, unknown = quality.column_split(rows["split"])
        if unknown.any():
            col = spec.data.split.column
            bad_parts.append(rows.filter(pl.Series(unknown)).select(
                "line", reason=pl.format("unknown split: '{}' in column '{}' (train, valid or test)", "split",
                                         pl.lit(col))))
            rows, codes = rows.filter(pl.Series(~unknown)), codes[~unknown]
    rows, reason = quality.clean_rows(run.cleaner, spec, rows, funnel)
    keep = _remove(run, st, batch, rows, reason.series(), "cleaned")
    rows, codes = rows.filter(pl.Series(keep)), codes[keep]
    ids, second, hashes, (failed, failed_why), reason = _encode(run, rows)
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
    if run.classified is not None:
        c = run.classified
        if run.augment is not None:  # only augmentation reads the texts again
            c.texts.append(rows.select([k for k in ("text", "text_pair") if k in rows.columns]))
        c.ids.append(ids)
        c.type_ids.append(second)
        c.hashes.append(hashes)
        c.labels.append(rows["label"])
        c.splits.append(codes)
        c.source.append(np.full(rows.height, idx, dtype=np.int32))
        c.lines.append(rows["line"].to_numpy())
        return
    split = np.where(codes >= 0, codes, quality.assign_split(hashes, rows["line"].to_numpy(), idx, spec))
    for s_i, s_name in enumerate(SPLITS):
        sel = split == s_i
        funnel.splits[s_name] += int(sel.sum())
        if not sel.any():
            continue
        # Mixing weights and augmentation apply to training rows only; held-out splits stay as they are.
        reps = quality.repeats(hashes[sel], weight, spec.project.seed) if s_name == "train" else np.ones(
            int(sel.sum()), np.int64)
        st.examples[s_name] += int(reps.sum())
        sel_pa = pa.array(sel)
        kept_ids = pc.filter(ids, sel_pa)
        if s_name == "train":
            lengths = np.asarray(pc.list_value_length(kept_ids), dtype=np.int64)
            _check_output_size(run, int((lengths * reps).sum()), st.name, weight)
        run.spools[s_name].append(kept_ids, pc.filter(second, sel_pa), reps)  # type: ignore[index]
        if s_name == "train":
            funnel.train_weighted = (funnel.train_weighted or 0) + int(reps.sum())
            if run.augment is not None:
                _augment_causal(run, st, rows.filter(pl.Series(sel)), hashes[sel], reps)


def _finish_classification(run: Run, stats: list[SourceStats], tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Labels to indices, the split, weights, augmentation and balancing over all rows, then
    one Arrow file per split: `input_ids`, `label`, `length` (+ `token_type_ids` for pairs)."""
    spec, c, funnel = run.spec, run.classified, run.funnel
    assert c is not None
    labels = pl.concat(c.labels) if c.labels else pl.Series("label", [], pl.String)
    names = run.label_names or quality.infer_label_names(set(labels.to_list()))
    if not names:
        raise SourceError("no labelled row survived the data stage: nothing to classify")
    y = quality.label_index(labels, names)
    hashes = np.concatenate(c.hashes) if c.hashes else np.zeros(0, np.uint64)
    codes = np.concatenate(c.splits) if c.splits else np.zeros(0, np.int8)
    source = np.concatenate(c.source) if c.source else np.zeros(0, np.int32)
    lines = np.concatenate(c.lines) if c.lines else np.zeros(0, np.uint64)
    ids = pa.concat_arrays(c.ids) if c.ids else pa.array([], pa.list_(pa.int32()))
    lengths = np.asarray(pc.list_value_length(ids), dtype=np.int32)  # as stored: after truncation
    type_ids = pa.concat_arrays(c.type_ids) if c.type_ids else pa.array([], pa.list_(pa.int32()))
    pairs = any(src.columns.text_pair is not None for src in spec.data.sources)
    free = codes < 0
    sp = spec.data.split
    split = codes.copy()
    if sp.by == "random" and sp.stratify:
        split[free] = quality.stratified_split(y[free], hashes[free], spec)
    else:
        for i in range(len(spec.data.sources)):
            m = free & (source == i)
            split[m] = quality.assign_split(hashes[m], lines[m], i, spec)
    for s_i, s_name in enumerate(SPLITS):
        funnel.splits[s_name] = int((split == s_i).sum())
    # training rows: weights, then augmented copies, then balancing
    train = np.flatnonzero(split == 0)
    weights = np.array([s.weight for s in spec.data.sources])
    reps = quality.repeats(hashes[train], weights[source[train]], spec.project.seed)
    if len(train):
        worst = int(np.argmax(reps * lengths[train]))
        _check_output_size(run, int((reps * lengths[train]).sum()), run.names[source[train][worst]],
                           float(weights[source[train][worst]]))
    order = np.repeat(train, reps)
    funnel.train_weighted = len(order)
    parts_ids, parts_types, parts_len = [ids.take(pa.array(order))], [type_ids.take(pa.array(order))], [lengths[order]]
    parts_y, parts_h, parts_src = [y[order]], [hashes[order]], [source[order]]
    if run.augment is not None and len(train):
        originals = pl.concat(c.texts)[train.tolist()]
        for copy in range(1, run.augment.copies + 1):
            new, changed = run.augment.copy(originals, hashes[train], copy)
            funnel.augmented["unchanged"] += int((~changed).sum())
            new, rows = new.filter(pl.Series(changed)), train[changed]
            a_ids, a_types, a_hash, (failed, _), reason = _encode(run, new.with_columns(line=pl.lit(0, pl.UInt64)))
            ok = ~reason.removed & ~failed
            funnel.augmented["dropped"] += int((~ok).sum())
            k = pa.array(ok)
            parts_ids.append(pc.filter(a_ids, k))
            parts_types.append(pc.filter(a_types, k))
            parts_len.append(np.asarray(pc.list_value_length(a_ids), dtype=np.int32)[ok])
            parts_y.append(y[rows][ok])
            parts_h.append(a_hash[ok])
            parts_src.append(source[rows][ok])
            funnel.augmented["added"] += int(ok.sum())
    t_ids, t_types = pa.concat_arrays(parts_ids), pa.concat_arrays(parts_types)
    t_len, t_y, t_h, t_src = (np.concatenate(p) for p in (parts_len, parts_y, parts_h, parts_src))
    before = quality.distribution(t_y, names)
    keep, class_weights = quality.balance(t_y, t_h, len(names), spec)
    if spec.data.balance.strategy != "none":
        after = quality.distribution(t_y[keep], names)
        distinct = len(np.unique(keep))
        funnel.balance = {"strategy": spec.data.balance.strategy, "before": before, "after": after,
                          "added": len(keep) - distinct, "removed": len(t_y) - distinct}
    k = pa.array(keep)
    out = {"train": (t_ids.take(k), t_types.take(k), t_len[keep], t_y[keep], t_src[keep])}
    for s_i, s_name in ((1, "valid"), (2, "test")):
        sel = np.flatnonzero(split == s_i)
        out[s_name] = (ids.take(pa.array(sel)), type_ids.take(pa.array(sel)), lengths[sel], y[sel], source[sel])
    splits = {}
    for name, (s_ids, s_types, s_len, s_y, s_src) in out.items():
        for i, st in enumerate(stats):
            st.examples[name] = int((s_src == i).sum())
        cols = {"input_ids": s_ids, "label": pa.array(s_y, pa.int32()), "length": pa.array(s_len, pa.int32())}
        if pairs:
            cols["token_type_ids"] = s_types
        table = pa.table(cols)
        with pa.OSFile(str(tmp / f"{name}.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table, max_chunksize=8192)
        bs = spec.train.batch_size
        unk = run.unk_id
        splits[name] = {
            "unk_tokens": int(np.count_nonzero(np.asarray(s_ids.flatten()) == unk)) if unk is not None else None,
            "examples": len(s_y),
            "rows": len(s_y),
            "tokens": int(s_len.sum()),
            "labels": quality.distribution(s_y, names),
            "max_example_tokens": int(s_len.max()) if len(s_len) else 0,
            "padding_ratio": quality.padding_ratio(s_len, bs, spec.project.seed, bucketed=False),
            "padding_ratio_bucketed": quality.padding_ratio(s_len, bs, spec.project.seed, bucketed=True),
        }
    extra = {"labels": names, "class_weights": class_weights, "pairs": pairs,
             "label_distribution": {"train_before_balance": before, "train": splits["train"]["labels"]}}
    return splits, extra


def _take(keep: np.ndarray, rows: pl.DataFrame, codes: np.ndarray, ids: pa.Array, second: pa.Array,
          hashes: np.ndarray) -> tuple[Any, ...]:
    if keep.all():
        return rows, codes, ids, second, hashes
    k = pa.array(keep)
    return rows.filter(pl.Series(keep)), codes[keep], pc.filter(ids, k), pc.filter(second, k), hashes[keep]


def _check_labels(run: Run, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Classification rows need a text and a label; with `model.labels` given, an unknown label
    is quarantined."""
    if "text" not in rows.columns:
        raise BuildError("classification reads a `text` column (and optionally `text_pair`); this source maps "
                         "a conversation or prompt/response", hint="map `columns = { text = \"...\", label = \"...\" }`")
    if "label" not in rows.columns:
        raise BuildError("classification needs a label for every row; this source maps none",
                         hint="map a label column (`columns = { text = \"...\", label = \"...\" }`) or give the "
                         "source one `label`")
    rows = rows.with_columns(quality.canonical_labels(rows["label"]))
    if run.label_names is None:
        return rows, pl.DataFrame(schema={"line": pl.UInt64, "reason": pl.String})
    known = quality.label_index(rows["label"], run.label_names) >= 0
    names = ", ".join(run.label_names)
    bad = rows.filter(pl.Series(~known)).select(
        "line", reason=pl.format("unknown label: '{}' (labels: {})", "label", pl.lit(names)))
    return rows.filter(pl.Series(known)), bad


def _encode(run: Run, rows: pl.DataFrame) -> tuple[pa.Array, pa.Array, np.ndarray, tuple[np.ndarray, pl.Series],
                                                  quality.Reasons]:
    """Rows → (input_ids, labels or token_type_ids, content hashes, (failed, template error of
    the failed rows), the rule that removes a row). Token limits count tokens before truncation."""
    spec, enc = run.spec, run.encoder
    tok, clean = spec.tokenize, spec.data.clean
    if not rows.height:
        empty = pa.array([], pa.list_(pa.int32()))
        return (empty, empty, np.zeros(0, np.uint64), (np.zeros(0, bool), pl.Series([], dtype=pl.String)),
                quality.Reasons(0))
    if spec.model.task == "classification":
        pairs = quality.strings(rows["text_pair"]) if "text_pair" in rows.columns else None
        arrays = enc.encode_pairs(quality.strings(rows["text"]), pairs, tok.max_length, tok.truncation)
    elif "messages" in rows.columns:
        arrays = enc.encode_chat(rows["messages"].to_arrow(), tok.max_length, tok.truncation, tok.train_on == "all")
    else:
        arrays = enc.encode_text(quality.strings(rows["text"]), tok.max_length, tok.truncation)
    ids, second, status, errors, hashes, lengths = (pa.array(a) for a in arrays)
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


def _augment_causal(run: Run, st: SourceStats, rows: pl.DataFrame, hashes: np.ndarray, reps: np.ndarray) -> None:
    """Augmented copies of training rows, encoded and spooled like their originals."""
    aug = run.augment
    assert aug is not None and run.spools is not None
    for copy in range(1, aug.copies + 1):
        new, changed = aug.copy(rows, hashes, copy)
        run.funnel.augmented["unchanged"] += int((~changed).sum())
        new, r = new.filter(pl.Series(changed)), reps[changed]
        ids, labels, _, (failed, _), reason = _encode(run, new)
        ok = ~reason.removed & ~failed
        run.funnel.augmented["dropped"] += int((~ok).sum())
        if ok.any():
            k = pa.array(ok)
            run.spools["train"].append(pc.filter(ids, k), pc.filter(labels, k), r[ok])
            st.examples["train"] += int(r[ok].sum())
            run.funnel.augmented["added"] += int(r[ok].sum())


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


def _write_split(path: Path, spool: Spool, offsets: np.ndarray, lengths: np.ndarray, max_length: int,
                 pack: bool, threads: int, progress: Progress | None) -> dict[str, Any]:
    if pack:
        row_offsets, items = (pa.array(a) for a in _data.pack_rows(pa.array(lengths, pa.uint32()), max_length))
    else:
        row_offsets, items = pa.array(np.arange(len(lengths) + 1, dtype=np.uint64)), pa.array(
            np.arange(len(lengths), dtype=np.uint32))
    n_rows = len(row_offsets) - 1
    schema = pa.schema([pa.field(c, pa.list_(pa.int32())) for c in COLUMNS])
    per_batch = max(1, (2 << 20) // max_length)  # ~2M tokens per record batch
    off_pa, len_pa = pa.array(offsets, pa.uint64()), pa.array(lengths, pa.uint32())
    label_tokens = 0
    if progress:
        progress(f"pack {path.stem}", 0, n_rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for start in range(0, n_rows, per_batch):
            end = min(n_rows, start + per_batch)
            *arrays, labelled = _data.gather_rows(str(spool.ids_path), str(spool.labels_path), off_pa, len_pa,
                                                  row_offsets, items, start, end, threads)
            cols = [pa.array(a) for a in arrays]
            label_tokens += labelled
            writer.write_batch(pa.record_batch(cols, schema=schema))
            if progress:
                progress(f"pack {path.stem}", end - start, None)
    tokens = int(lengths.sum(dtype=np.uint64))
    return {
        "examples": int(len(lengths)),
        "rows": n_rows,
        "tokens": tokens,
        "label_tokens": label_tokens,
        "packing_efficiency": round(tokens / (n_rows * max_length), 6) if n_rows else None,
        "max_example_tokens": int(lengths.max()) if len(lengths) else 0,
    }


def _totals(stats: list[SourceStats], splits: dict[str, dict[str, Any]], max_length: int,
            classify: bool) -> dict[str, Any]:
    tokens = sum(s["tokens"] for s in splits.values())
    rows = sum(s["rows"] for s in splits.values())
    unk = [s["unk_tokens"] for s in splits.values() if s.get("unk_tokens") is not None]
    out = {
        "unk_tokens": sum(unk) if unk else None,
        "rows_read": sum(s.read for s in stats),
        "quarantined": sum(s.quarantined for s in stats),
        "removed": sum(sum(s.removed.values()) for s in stats),
        "kept": sum(s.kept for s in stats),
        "tokens": tokens,
    }
    if classify:
        return {**out, "examples": rows}
    return {**out, "packed_rows": rows, "packing_efficiency": round(tokens / (rows * max_length), 6) if rows else None}

"""The data stage: spec → packed dataset in the store (DESIGN §1).

    sources ─► normalize ─► quarantine ─► template+tokenize+mask (Rust) ─► split ─► weight
            ─► spool (per split, on disk) ─► BFD over the whole split (Rust) ─► gather ─► Arrow IPC

Streaming: batches of a source are encoded and appended to a per-split spool file as they
come; only per-example offsets and lengths stay in memory. Packing needs every length, not
every token, and the gather reads the spool with positioned reads. Peak memory is bounded by
the batch size, not the corpus.
"""

from __future__ import annotations

import json
import os
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

from ftc import __version__, _data, store
from ftc.errors import BuildError, SourceError
from ftc.model import TokenizerInfo, load_tokenizer_info, resolve_model, resolve_template
from ftc.sources import SourceBatch, file_format, read_source, source_files, source_name
from ftc.spec import Spec

SPLITS = ("train", "valid", "test")
COLUMNS = ("input_ids", "labels", "position_ids", "seq_lengths")
STATUS_REASONS = {1: "longer than max_length (truncation = drop)", 2: "no token left to train on"}
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
    dropped: dict[str, int] = field(default_factory=dict)
    kept: int = 0
    examples: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))


class Spool:
    """Token ids and labels of one split, appended batch by batch to two flat int32 files."""

    def __init__(self, root: Path, split: str, block: int | None) -> None:
        self.ids_path, self.labels_path = root / f"{split}.ids", root / f"{split}.labels"
        self._ids, self._labels = open(self.ids_path, "wb"), open(self.labels_path, "wb")
        self.tokens = 0
        self.offsets: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.block = block  # chunk mode: cut the concatenated stream into blocks of this size
        self.carry = np.empty(0, dtype=np.int32)

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


def key_inputs(spec: Spec, files: list[list[Path]], info: TokenizerInfo, template: tuple[str, str] | None,
               threads: int) -> dict[str, Any]:
    """Exactly what the packed dataset depends on (DESIGN §1). `files`: each source's files."""
    flat = [f for fs in files for f in fs]
    it = iter(_data.hash_files([str(f) for f in flat + info.files], threads))
    sources = [[{"file": _rel(f, spec.root), "blake3": next(it)} for f in fs] for fs in files]
    return {
        "format": store.DATASETS,
        "task": spec.model.task,
        "seed": spec.project.seed,
        "data": spec.data.model_dump(mode="json", by_alias=True),
        "tokenize": spec.tokenize.model_dump(mode="json"),
        "sources": sources,
        "tokenizer": {f.name: next(it) for f in info.files},
        "template": None if template is None else {"name": template[0], "sha256": store.key_of(template[1])},
    }


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def prep(spec: Spec, *, threads: int = 0, progress: Progress | None = None, force: bool = False) -> PrepResult:
    t0 = time.perf_counter()
    _check_supported(spec)
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


def _check_supported(spec: Spec) -> None:
    """Tables that validate but whose stage is not built yet: refuse rather than ignore them."""
    if spec.model.task == "classification":
        raise BuildError("`model.task = \"classification\"`: the classification data path is not built yet",
                         hint="`ftc prep` builds causal-lm datasets (chat, instruction pairs, raw text)")
    unbuilt = [name for name, table in (("data.clean", spec.data.clean), ("data.augment", spec.data.augment),
                                        ("data.balance", spec.data.balance)) if table != type(table)()]
    if spec.data.split.column is not None:
        unbuilt.append("data.split.column")
    if unbuilt:
        raise BuildError(f"{', '.join(f'`{u}`' for u in unbuilt)}: cleaning, dedup, augmentation, balancing and "
                         "split columns are not applied yet, and ftc does not ignore a rule silently",
                         hint="remove these settings to build the dataset without them")


def resolve_inputs(spec: Spec, threads: int = 0) -> tuple[list[list[Path]], TokenizerInfo, tuple[str, str] | None,
                                                          dict[str, Any]]:
    """Each source's files, the tokenizer, the template (unless every source is raw text) and
    the key's inputs."""
    files = [source_files(s, spec.root) for s in spec.data.sources]
    info = load_tokenizer_info(resolve_model(spec.model.base, spec.root))
    raw_text = all(s.columns.text is not None or all(file_format(s, f) == "txt" for f in fs)
                   for s, fs in zip(spec.data.sources, files, strict=True))
    if spec.tokenize.truncation == "chunk" and not raw_text:
        raise BuildError("`tokenize.truncation = \"chunk\"` concatenates raw text into blocks; these sources "
                         "hold conversations or prompt/response pairs", hint="use `right`, `left` or `drop` for "
                         "chat data, or map a `text` column for continued pre-training")
    template = None if raw_text else resolve_template(spec.tokenize.template, info, spec.root)
    return files, info, template, key_inputs(spec, files, info, template, threads)


def _read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / store.MANIFEST).read_text(encoding="utf-8"))


def _build(spec: Spec, files: list[list[Path]], info: TokenizerInfo, template: tuple[str, str] | None,
           inputs: dict[str, Any], key: str, tmp: Path, threads: int, progress: Progress | None) -> dict[str, Any]:
    tok = spec.tokenize
    encoder = _data.DataEncoder(info.tokenizer_json, template[1] if template else None,
                                info.special_tokens, info.eos_token, threads)
    spool_dir = tmp / ".spool"
    spool_dir.mkdir()
    block = tok.max_length if tok.truncation == "chunk" else None
    spools = {s: Spool(spool_dir, s, block) for s in SPLITS}
    stats: list[SourceStats] = []
    total_bytes = sum(f.stat().st_size for fs in files for f in fs)
    if progress:
        progress("read", 0, total_bytes)
    with open(tmp / "quarantine.jsonl", "wb") as quarantine:
        for idx, (src, fs) in enumerate(zip(spec.data.sources, files, strict=True)):
            st = SourceStats(source_name(src), files=len(fs))
            stats.append(st)
            on_bytes = (lambda n: progress("read", n, None)) if progress else None
            for batch in read_source(src, fs, threads, on_bytes):
                _encode_batch(batch, idx, src.weight, st, spec, encoder, spools, quarantine)
    _check_bad_fraction(spec, stats, tmp)
    splits = {}
    for name, spool in spools.items():
        offsets, lengths = spool.close()
        splits[name] = _write_split(tmp / f"{name}.arrow", spool, offsets, lengths, tok.max_length,
                                    tok.pack, threads, progress)
    shutil.copyfile(info.dir / "tokenizer.json", tmp / "tokenizer.json")  # inspect decodes without the model
    for p in spool_dir.iterdir():
        p.unlink()
    spool_dir.rmdir()
    return {
        "key": key,
        "name": spec.project.name,
        "format": store.DATASETS,
        "ftc_version": __version__,
        "created": time.time(),
        "task": spec.model.task,
        "max_length": tok.max_length,
        "template": template[0] if template else None,
        "tokenizer_dir": str(info.dir),
        "files": {s: f"{s}.arrow" for s in SPLITS},
        "columns": list(COLUMNS),
        "inputs": inputs,
        "stats": {
            "sources": [st.__dict__ for st in stats],
            "splits": splits,
            **_totals(stats, splits, tok.max_length),
        },
    }


def _encode_batch(batch: SourceBatch, idx: int, weight: float, st: SourceStats, spec: Spec,
                  encoder: Any, spools: dict[str, Spool], quarantine: Any) -> None:
    tok = spec.tokenize
    rows, bad = batch.rows, batch.bad
    st.read += rows.height + bad.height
    failures = bad
    if rows.height:
        if "messages" in rows.columns:
            arrays = encoder.encode_chat(rows["messages"].to_arrow(), tok.max_length, tok.truncation,
                                         tok.train_on == "all")
        else:
            arrays = encoder.encode_text(rows["text"].to_arrow(), tok.max_length, tok.truncation)
        ids, labels, status, errors, hashes = (pa.array(a) for a in arrays)
        status_np = np.asarray(status)
        failed = status_np == 3
        if failed.any():
            fmask = pl.Series(failed)
            why = pl.Series("reason", pa.array(errors)).filter(fmask)
            failures = pl.concat([bad, rows.filter(fmask).select("line").with_columns(
                reason=pl.concat_str(pl.lit("template: "), why))])
        for code, why in STATUS_REASONS.items():
            if n := int((status_np == code).sum()):
                st.dropped[why] = st.dropped.get(why, 0) + n
        ok = status_np == 0
        st.kept += int(ok.sum())
        hashes_np = np.asarray(hashes)
        split = _assign_split(hashes_np, rows["line"].to_numpy(), idx, spec)
        for s_i, s_name in enumerate(SPLITS):
            sel = ok & (split == s_i)
            if not sel.any():
                continue
            sel_pa = pa.array(sel)
            # Mixing weights apply to training rows only; held-out splits keep the data as it is.
            weight_here = weight if s_name == "train" else 1.0
            repeats = _repeats(hashes_np[sel], weight_here, spec.project.seed)
            st.examples[s_name] += int(repeats.sum())
            spools[s_name].append(pc.filter(ids, sel_pa), pc.filter(labels, sel_pa), repeats)
    st.quarantined += failures.height
    if failures.height:
        failures.sort("line").select(source=pl.lit(st.name), file=pl.lit(str(batch.file)), line="line",
                                     reason="reason").write_ndjson(quarantine)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: a stable, well-spread 64-bit hash, vectorized."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def _unit(x: np.ndarray) -> np.ndarray:
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _assign_split(hashes: np.ndarray, lines: np.ndarray, source_idx: int, spec: Spec) -> np.ndarray:
    """0 train, 1 valid, 2 test. `hash`: by content, so a row keeps its split as data grows."""
    sp = spec.data.split
    if sp.by == "hash":
        u = _unit(hashes)
    else:
        with np.errstate(over="ignore"):
            seed = np.uint64(spec.project.seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(source_idx)
            u = _unit(_mix(lines.astype(np.uint64) ^ _mix(np.array([seed]))[0]))
    return np.where(u < sp.test, 2, np.where(u < sp.test + sp.valid, 1, 0)).astype(np.int8)


def _repeats(hashes: np.ndarray, weight: float, seed: int) -> np.ndarray:
    """Mixing weight → how many times each training example is used: ⌊w⌋, plus one for a
    seeded fraction frac(w) of the examples."""
    whole, frac = int(weight), weight - int(weight)
    extra = _unit(_mix(hashes ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF))) < frac
    return whole + extra.astype(np.int64)


def _check_bad_fraction(spec: Spec, stats: list[SourceStats], tmp: Path) -> None:
    read = sum(s.read for s in stats)
    bad = sum(s.quarantined for s in stats)
    limit = spec.data.max_bad_fraction
    if read and bad / read > limit:
        kept = store.home() / "quarantine" / f"{spec.project.name}-{int(time.time())}.jsonl"
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


def _totals(stats: list[SourceStats], splits: dict[str, dict[str, Any]], max_length: int) -> dict[str, Any]:
    tokens = sum(s["tokens"] for s in splits.values())
    rows = sum(s["rows"] for s in splits.values())
    return {
        "rows_read": sum(s.read for s in stats),
        "quarantined": sum(s.quarantined for s in stats),
        "dropped": sum(sum(s.dropped.values()) for s in stats),
        "kept": sum(s.kept for s in stats),
        "tokens": tokens,
        "packed_rows": rows,
        "packing_efficiency": round(tokens / (rows * max_length), 6) if rows else None,
    }

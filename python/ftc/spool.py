"""Streamed token storage for causal-LM splits (docs/architecture.md: The data stage).

Batches are encoded and appended to a per-split spool file as they come; only per-example
offsets and lengths stay in memory, and packing needs lengths, not tokens. `layout` then packs
(best-fit decreasing, in Rust) or keeps one example per row, and `write_split` gathers the rows
from the spool into the split's Arrow IPC file.
"""

from __future__ import annotations

import errno
import fcntl
import io
import mmap
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ftc import _data, quality
from ftc.sources import ahead

COLUMNS = ("input_ids", "labels", "position_ids", "seq_lengths")
SPLITS = ("train", "valid", "test")
Progress = Callable[[str, int, int | None], None]  # (phase, advance, total), as in ftc.prep


def flat_tokens(ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(every token as one int32 array, each example's length) of a `list<int32>` column."""
    return np.asarray(ids.flatten(), dtype=np.int32), np.asarray(pc.list_value_length(ids), dtype=np.int64)


def starts_of(lengths: np.ndarray) -> np.ndarray:
    """Where each of consecutive runs of `lengths` starts (int64)."""
    return np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)]).astype(np.int64)


def gather(values: np.ndarray, lengths: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The tokens of examples `idx`, in that order, from flat `values` with per-example
    `lengths`: one NumPy gather, where filtering Arrow list arrays cost several times more."""
    if len(idx) == len(lengths) and (idx == np.arange(len(idx))).all():
        return values
    chosen = lengths[idx]
    # output token k is token (k − its example's first output position) of its example
    at = np.repeat(starts_of(lengths)[idx] - starts_of(chosen), chosen) + np.arange(int(chosen.sum()), dtype=np.int64)
    return values[at]


class Spool:
    """Token ids and labels of one split, appended batch by batch to two flat int32 files."""

    def __init__(self, root: Path, split: str, block: int | None, unk_id: int | None = None) -> None:
        self.ids_path, self.labels_path = root / f"{split}.ids", root / f"{split}.labels"
        self._ids, self._labels = open(self.ids_path, "wb"), open(self.labels_path, "wb")
        # a thread writes while the next batch is encoded; at most two batches wait, and a write's
        # error (a full disk) surfaces at the next append or at close
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="ftc-spool")
        self._pending: deque[Future[None]] = deque()
        self.tokens = 0
        self.offsets: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        self.block = block  # chunk mode: cut the concatenated stream into blocks of this size
        self.carry = np.empty(0, dtype=np.int32)
        self.unk_id = unk_id
        self.unk = 0  # unknown tokens appended

    def append(self, ids: np.ndarray, labels: np.ndarray, lengths: np.ndarray, repeats: np.ndarray) -> None:
        """Examples as flat int32 tokens with their lengths; each counts `repeats` times (mixing
        weights) but is written once, except in a chunked stream."""
        if self.block is not None:  # the stream holds each document `repeats` times
            return self._append_stream(gather(ids, lengths, np.repeat(np.arange(len(lengths)), repeats)))
        starts = (self.tokens + starts_of(lengths)).astype(np.uint64)
        self._write(ids, labels)
        self.offsets.append(np.repeat(starts, repeats))
        self.lengths.append(np.repeat(lengths.astype(np.uint32), repeats))

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
        self._pending.append(self._writer.submit(self._flush, np.ascontiguousarray(ids, "<i4"),
                                                 np.ascontiguousarray(labels, "<i4")))
        while len(self._pending) > 2:
            self._pending.popleft().result()
        self.tokens += len(ids)

    def _flush(self, ids: np.ndarray, labels: np.ndarray) -> None:
        # the arrays' own buffers: a `tobytes()` copy first tripled the cost of spooling
        self._ids.write(ids)
        self._labels.write(labels)

    def close(self) -> tuple[np.ndarray, np.ndarray]:
        if self.block is not None:
            self._add_blocks(self.carry)  # the tail is kept as a shorter block: nothing lost
            self.carry = np.empty(0, dtype=np.int32)
        while self._pending:
            self._pending.popleft().result()
        self._writer.shutdown()
        self._ids.close()
        self._labels.close()
        cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.empty(0, dt)  # noqa: E731
        return cat(self.offsets, np.uint64), cat(self.lengths, np.uint32)


def layout(lengths: np.ndarray, max_length: int, pack: bool) -> tuple[pa.Array, pa.Array]:
    """(each row's first item, the examples in row order): best-fit packed, or one example a row."""
    if pack:
        return tuple(pa.array(a) for a in _data.pack_rows(pa.array(lengths, pa.uint32()), max_length))
    return pa.array(np.arange(len(lengths) + 1, dtype=np.uint64)), pa.array(np.arange(len(lengths), dtype=np.uint32))


class DirectFile(io.RawIOBase):
    """A large file written once, front to back, with O_DIRECT where the file system takes it.

    Buffered writes of a new file cost the kernel a page-cache page each: writing a packed split
    spent more CPU in the kernel than gathering it, on one thread, after the last batch was
    encoded. Direct writes from page-aligned chunks leave the CPU to the stage and the writing to
    a thread. Anything refusing them (older tmpfs, some network file systems) gets ordinary writes.
    """

    ALIGN, CHUNK = 4096, 8 << 20

    def __init__(self, path: Path) -> None:
        super().__init__()
        flags, direct = os.O_WRONLY | os.O_CREAT | os.O_TRUNC, getattr(os, "O_DIRECT", 0)
        try:
            self.fd, self.direct = os.open(path, flags | direct, 0o644), bool(direct)
        except OSError:
            self.fd, self.direct = os.open(path, flags, 0o644), False
        self.free = [memoryview(mmap.mmap(-1, self.CHUNK)) for _ in range(3)]  # page-aligned
        self.buf, self.fill, self.at = self.free.pop(), 0, 0
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="ftc-write")
        self.pending: deque[Future[memoryview]] = deque()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.at + self.fill

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        while view:
            k = min(len(view), self.CHUNK - self.fill)
            self.buf[self.fill:self.fill + k] = view[:k]
            self.fill, view = self.fill + k, view[k:]
            if self.fill == self.CHUNK:
                self._submit()
        return n

    def _submit(self) -> None:
        self.pending.append(self.writer.submit(self._pwrite, self.buf, self.fill, self.at))
        self.at, self.fill = self.at + self.fill, 0  # handed over: a failed write is not retried
        while not self.free:  # at most three chunks in flight
            self.free.append(self.pending.popleft().result())
        self.buf = self.free.pop()

    def _pwrite(self, buf: memoryview, size: int, at: int) -> memoryview:
        try:  # a direct write covers whole blocks; `close` cuts the file back to its length
            self._write_all(buf[:-(-size // self.ALIGN) * self.ALIGN if self.direct else size], at)
        except OSError as e:
            if not (self.direct and e.errno == errno.EINVAL):
                raise
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False
            self._write_all(buf[:size], at)
        return buf

    def _write_all(self, view: memoryview, at: int) -> None:
        while view:
            n = os.pwrite(self.fd, view, at)
            view, at = view[n:], at + n

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self.fill:
                self._submit()
            while self.pending:
                self.pending.popleft().result()
            os.ftruncate(self.fd, self.at)
        finally:
            self.writer.shutdown()
            os.close(self.fd)
            super().close()


def write_split(path: Path, spool: Spool, offsets: np.ndarray, lengths: np.ndarray, rows: tuple[pa.Array, pa.Array],
                max_length: int, threads: int, progress: Progress | None) -> dict[str, Any]:
    row_offsets, items = rows
    n_rows = len(row_offsets) - 1
    schema = pa.schema([pa.field(c, pa.list_(pa.int32())) for c in COLUMNS])
    per_batch = max(1, (2 << 20) // max_length)  # ~2M tokens per record batch
    off_pa, len_pa = pa.array(offsets, pa.uint64()), pa.array(lengths, pa.uint32())
    label_tokens = 0
    if progress:
        progress(f"pack {path.stem}", 0, n_rows)

    def gathered() -> Iterator[tuple[int, list[pa.Array], int]]:
        for start in range(0, n_rows, per_batch):
            end = min(n_rows, start + per_batch)
            *arrays, labelled = _data.gather_rows(str(spool.ids_path), str(spool.labels_path), off_pa, len_pa,
                                                  row_offsets, items, start, end, threads)
            yield end - start, [pa.array(a) for a in arrays], labelled

    # the next rows are gathered (Rust, the GIL released) while this batch is written
    with DirectFile(path) as sink, pa.ipc.new_stream(sink, schema) as writer:
        for n, cols, labelled in ahead(gathered(), 1):
            label_tokens += labelled
            writer.write_batch(pa.record_batch(cols, schema=schema))
            if progress:
                progress(f"pack {path.stem}", n, None)
    tokens = int(lengths.sum(dtype=np.uint64))
    return {
        "examples": int(len(lengths)),
        "rows": n_rows,
        "tokens": tokens,
        "label_tokens": label_tokens,
        "packing_efficiency": round(tokens / (n_rows * max_length), 6) if n_rows else None,
        "max_example_tokens": int(lengths.max()) if len(lengths) else 0,
    }


class Streamed:
    """Kept rows → per-split spools (split by content hash, weights and augmentation on the
    training rows only) → packed Arrow files."""

    def __init__(self, run: Any, spool_dir: Path) -> None:
        tok = run.spec.tokenize
        block = tok.max_length if tok.truncation == "chunk" else None
        self.spools = {s: Spool(spool_dir, s, block, run.unk_id) for s in SPLITS}

    def add(self, run: Any, rows: pl.DataFrame, codes: np.ndarray, ids: pa.Array, second: pa.Array,
            hashes: np.ndarray, idx: int, weight: float, st: Any) -> None:
        from ftc.prep import check_output_size

        spec, funnel = run.spec, run.funnel
        split = np.where(codes >= 0, codes, quality.assign_split(hashes, rows["line"].to_numpy(), idx, spec))
        (flat_ids, lengths), (flat_second, _) = flat_tokens(ids), flat_tokens(second)
        for s_i, s_name in enumerate(SPLITS):
            sel = split == s_i
            funnel.splits[s_name] += int(sel.sum())
            if not sel.any():
                continue
            # Mixing weights and augmentation apply to training rows only; held-out splits stay as they are.
            reps = quality.repeats(hashes[sel], weight, spec.project.seed) if s_name == "train" else np.ones(
                int(sel.sum()), np.int64)
            st.examples[s_name] += int(reps.sum())
            idx = np.flatnonzero(sel)
            if s_name == "train":
                check_output_size(run, int((lengths[idx] * reps).sum()), st.name, weight)
            self.spools[s_name].append(gather(flat_ids, lengths, idx), gather(flat_second, lengths, idx),
                                       lengths[idx], reps)
            if s_name == "train":
                funnel.train_weighted = (funnel.train_weighted or 0) + int(reps.sum())
                if run.augment is not None:
                    self._augment(run, st, rows.filter(pl.Series(sel)), hashes[sel], reps)

    def _augment(self, run: Any, st: Any, rows: pl.DataFrame, hashes: np.ndarray, reps: np.ndarray) -> None:
        """Augmented copies of training rows, encoded and spooled like their originals."""
        from ftc.prep import encode_rows

        aug = run.augment
        for copy in range(1, aug.copies + 1):
            new, changed = aug.copy(rows, hashes, copy)
            run.funnel.augmented["unchanged"] += int((~changed).sum())
            new, r = new.filter(pl.Series(changed)), reps[changed]
            ids, labels, _, (failed, _), reason = encode_rows(run, new)
            ok = ~reason.removed & ~failed
            run.funnel.augmented["dropped"] += int((~ok).sum())
            if ok.any():
                (flat_ids, lengths), (flat_labels, _) = flat_tokens(ids), flat_tokens(labels)
                keep = np.flatnonzero(ok)
                self.spools["train"].append(gather(flat_ids, lengths, keep), gather(flat_labels, lengths, keep),
                                            lengths[keep], r[ok])
                st.examples["train"] += int(r[ok].sum())
                run.funnel.augmented["added"] += int(r[ok].sum())

    def finish(self, run: Any, stats: list[Any], tmp: Path, threads: int,
               progress: Progress | None) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        tok = run.spec.tokenize
        closed = {name: spool.close() for name, spool in self.spools.items()}
        splits = {}
        with ThreadPoolExecutor(len(closed), thread_name_prefix="ftc-pack") as packer:
            rows = {name: packer.submit(layout, lengths, tok.max_length, tok.pack)
                    for name, (_, lengths) in closed.items()}
            # smallest first: the held-out splits are written while the training split still packs
            for name in sorted(closed, key=lambda n: len(closed[n][1])):
                spool, (offsets, lengths) = self.spools[name], closed[name]
                splits[name] = write_split(tmp / f"{name}.arrow", spool, offsets, lengths, rows[name].result(),
                                           tok.max_length, threads, progress)
                splits[name]["unk_tokens"] = spool.unk if run.unk_id is not None else None
        return {name: splits[name] for name in SPLITS}, {}, list(COLUMNS)

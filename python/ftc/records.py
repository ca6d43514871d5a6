"""Nested records (lists, objects) from JSON Lines, JSON arrays and Parquet, for the tasks whose
rows hold more than strings: a list of words and a list of tags, a list of answers.

The shared readers (`ftc.sources`) hand strings and conversations to polars through the Rust
scanner; these rows are Python objects, read record by record, so one malformed line still
costs one row and is quarantined with its line and reason. A task turns the records into its
row frame (`Task.read_file`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftc import encodings, jsonfile
from ftc.encodings import Decoding
from ftc.errors import SourceError

BATCH = 10_000


@dataclass
class Records:
    """A batch of one file's records: each with its line (JSON Lines) or record number (JSON,
    Parquet), the lines that gave no record and why, and bytes of the file consumed."""

    lines: list[int] = field(default_factory=list)
    items: list[Any] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)
    nbytes: int = 0


def read(file: Path, fmt: str, decoding: Decoding, limit: int | None) -> Iterator[Records]:
    """Batches of at most `BATCH` records; reading stops after `limit` records (and bad lines)."""
    if fmt == "jsonl":
        yield from _json_lines(file, decoding, limit)
    elif fmt == "json":
        yield from _batched(((None, r, why) for r, why in jsonfile.records(encodings.read_text(file, decoding), file,
                                                                           decoding.codec, limit)),
                            file.stat().st_size)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        rows = (r for b in pq.ParquetFile(file).iter_batches(batch_size=BATCH) for r in b.to_pylist())
        yield from _batched(((None, r, None) for r in rows), file.stat().st_size, limit)
    else:
        raise SourceError(f"{file}: a {fmt} file cannot hold lists of words or answers",
                          hint="give JSON Lines, a JSON array or Parquet (or CoNLL text for tagged words)")


def _json_lines(file: Path, decoding: Decoding, limit: int | None) -> Iterator[Records]:
    def lines() -> Iterator[tuple[int | None, Any, str | None]]:
        with file.open(encoding=decoding.codec, errors=decoding.errors, newline="") as f:
            for raw in f:
                if not raw.strip():
                    yield None, None, ""  # a blank line: numbered, no row, no complaint
                    continue
                try:
                    yield None, json.loads(raw), None
                except ValueError as e:
                    yield None, None, f"invalid JSON: {e}"
    yield from _batched(lines(), file.stat().st_size, limit)


def _batched(items: Iterator[tuple[int | None, Any, str | None]], size: int, limit: int | None = None) -> Iterator[Records]:
    out = Records()
    taken = 0
    for n, (_, record, why) in enumerate(items, 1):
        if limit is not None and taken >= limit:
            break
        if why == "":
            continue
        taken += 1
        if why is not None:
            out.bad.append((n, why))
        elif not isinstance(record, dict):
            out.bad.append((n, f"a record is an object, not {type(record).__name__}"))
        else:
            out.lines.append(n)
            out.items.append(record)
        if len(out.lines) + len(out.bad) >= BATCH:
            yield out
            out = Records()
    out.nbytes = size
    yield out

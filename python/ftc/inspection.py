"""`ftc inspect`: find a dataset and decode its packed rows with the masked spans marked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from ftc import _data, store
from ftc.errors import StoreError

MASK_OPEN, MASK_CLOSE = "⟦", "⟧"


def find_dataset(target: str) -> tuple[Path, dict[str, Any]]:
    """A spec (its built dataset), a dataset directory, or a key prefix."""
    path = Path(target)
    if path.suffix == ".toml" and path.is_file():
        from ftc.prep import resolve_inputs
        from ftc.specload import load_spec

        spec = load_spec(path)
        key = store.key_of(resolve_inputs(spec)[3])
        found = store.lookup(store.DATASETS, key)
        if found is None:
            raise StoreError(f"{path}: its dataset is not built (key {key[:12]})", hint=f"run `ftc prep {path}`")
        path = found
    elif not path.is_dir():
        path = store.find(target).path
    manifest_path = path / store.MANIFEST
    if not manifest_path.is_file():
        raise StoreError(f"{path}: not a dataset (no {store.MANIFEST})")
    return path, json.loads(manifest_path.read_text(encoding="utf-8"))


def decode_rows(path: Path, manifest: dict[str, Any], split: str, n: int) -> list[list[str]]:
    """The first `n` rows of `split`, each as its examples' text, masked runs in ⟦…⟧."""
    enc = _data.DataEncoder((path / "tokenizer.json").read_text(encoding="utf-8"))
    with pa.memory_map(str(path / manifest["files"][split])) as source:
        reader = pa.ipc.open_stream(source)
        rows: list[list[str]] = []
        for batch in reader:
            for r in range(min(n - len(rows), batch.num_rows)):
                ids = batch.column("input_ids")[r].as_py()
                labels = batch.column("labels")[r].as_py()
                lengths = batch.column("seq_lengths")[r].as_py()
                rows.append(_split_examples(enc, ids, labels, lengths))
            if len(rows) >= n:
                break
    return rows


def decode_classification(path: Path, manifest: dict[str, Any], split: str, n: int) -> list[tuple[str, str]]:
    """The first `n` rows of a classification split: (label name, decoded text)."""
    enc = _data.DataEncoder((path / "tokenizer.json").read_text(encoding="utf-8"))
    with pa.memory_map(str(path / manifest["files"][split])) as source:
        table = pa.ipc.open_stream(source).read_all().slice(0, n)
    names = manifest["labels"]
    return [(names[y], enc.decode(ids)) for ids, y in zip(table.column("input_ids").to_pylist(),
                                                          table.column("label").to_pylist(), strict=True)]


def _split_examples(enc: Any, ids: list[int], labels: list[int], lengths: list[int]) -> list[str]:
    out, start = [], 0
    for length in lengths:
        out.append(mark_masked(enc, ids[start:start + length], labels[start:start + length]))
        start += length
    return out


def mark_masked(enc: Any, ids: list[int], labels: list[int]) -> str:
    """Decodes runs of equal mask state separately; masked runs are wrapped in ⟦…⟧."""
    parts, run, masked = [], [], None
    for tok, lab in zip(ids, labels, strict=True):
        m = lab == -100
        if masked is not None and m != masked:
            parts.append(_wrap(enc.decode(run), masked))
            run = []
        run.append(tok)
        masked = m
    if run:
        parts.append(_wrap(enc.decode(run), bool(masked)))
    return "".join(parts)


def _wrap(text: str, masked: bool) -> str:
    return f"{MASK_OPEN}{text}{MASK_CLOSE}" if masked else text


def distribution_text(d: dict[str, int]) -> str:
    """Label counts on one line: `positive 1,204 · negative 1,187`."""
    return " · ".join(f"{k} {v:,}" for k, v in d.items())

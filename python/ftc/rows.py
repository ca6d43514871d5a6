"""The row format every stage reads (docs/architecture.md: The store).

A dataset split is an Arrow IPC stream. Causal-LM rows hold `input_ids`, `labels` (`IGNORE`
where no loss is taken), `position_ids` (restarting at each packed example) and `seq_lengths`;
one-example-per-row tasks hold `input_ids` and their task's label columns. Training, export,
generation and the benches all read rows through these helpers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

IGNORE = -100  # a label no loss is taken on: PyTorch's cross-entropy `ignore_index`


def load_split(dataset_dir: Path, manifest: dict[str, Any], split: str) -> Any:
    """A split of the dataset as a memory-mapped `datasets.Dataset` (nothing is copied), or
    None when it is empty."""
    import datasets

    path = dataset_dir / manifest["files"][split]
    ds = datasets.Dataset.from_file(str(path))
    return ds if len(ds) else None


def segments(row: dict[str, Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The examples of a causal-LM row, as (input_ids, labels): one per `seq_lengths` entry of
    a packed row, the whole row otherwise. Positions restart at each, so each is exactly the
    sequence its part of the row computed."""
    ids, labels = np.asarray(row["input_ids"]), np.asarray(row["labels"])
    start = 0
    for n in row.get("seq_lengths") or [len(ids)]:
        yield ids[start:start + n], labels[start:start + n]
        start += n


def examples(ds: Any, n: int) -> Iterator[dict[str, Any]]:
    """Causal-LM rows → up to `n` of their examples, each alone, with at least one labelled
    token after the first (the first is never predicted: only the previous example could)."""
    count = 0
    for row in ds:
        for seg, lab in segments(row):
            lab = lab.copy()
            lab[0] = IGNORE
            if (lab != IGNORE).any():
                yield {"input_ids": seg, "labels": lab}
                count += 1
                if count >= n:
                    return


def pad_id(tokenizer: Any) -> int | None:
    """The id batches are padded with: the pad token, else EOS (decoders often have no pad)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

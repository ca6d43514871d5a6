"""Rows → training batches: the collators of the tasks, and the packed split seen as its
examples (docs/architecture.md: Training).

- `PackedCollator`: causal-LM rows (packed or not) padded to the longest; padding is a segment
  of its own, and each example's first token carries no label (only the previous example
  could have predicted it), so the per-token loss of a packed row equals each example's alone.
- `FlatCollator` + `ExampleView`: a step of `batch_size` examples joined into one padding-free
  row, as the unpacked script a user writes takes them.
- `PaddedCollator`: one example per row (classification, token classification, QA), padded
  to the longest with an attention mask; the task names its label columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ftc.rows import IGNORE


@dataclass
class PackedCollator:
    """Causal-LM rows (packed or not) → a batch padded to its longest row. Padding becomes a
    segment of its own (positions 0..k-1, no labels) so it never joins a real example."""

    pad_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"])
            lab = torch.as_tensor(r["labels"])
            p = torch.as_tensor(r["position_ids"])
            lab = lab.masked_fill(p == 0, IGNORE)  # a first token is never predicted when run alone
            labels[i, :n] = lab
            pos[i, :n] = p
            pos[i, n:] = torch.arange(width - n)
        return {"input_ids": ids, "labels": labels, "position_ids": pos}


@dataclass
class FlatCollator:
    """Causal-LM examples (or packed rows) → one padding-free row: end to end, positions
    restarting at each example, so per-example attention computes each as if alone. With
    `ExampleView` a step holds `batch_size` examples, as an unpacked script's step does."""

    pad_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        flat = {k: np.concatenate([np.asarray(r[k]) for r in rows]) for k in ("input_ids", "labels", "position_ids")}
        return PackedCollator(self.pad_id)([flat])


class ExampleView:
    """A packed split seen as its examples: item i is one example's `input_ids`, `labels` and
    `position_ids`, read from its packed row. Packing stays the storage (no padding, one
    content-addressed file); the sampler shuffles examples, and `batch_size` counts them."""

    def __init__(self, dataset: Any) -> None:
        import pyarrow.compute as pc

        self.dataset = dataset
        lengths = dataset.data.column("seq_lengths")
        counts = np.asarray(pc.list_value_length(lengths), dtype=np.int64)
        sizes = np.asarray(pc.list_flatten(lengths), dtype=np.int64)
        self.row = np.repeat(np.arange(len(counts)), counts)
        ends = np.cumsum(sizes)
        # each example's offset within its row: its end in the whole split minus its row's start
        row_start = np.concatenate([[0], ends])[np.concatenate([[0], np.cumsum(counts)])[:-1]]
        self.start = ends - sizes - np.repeat(row_start, counts)
        self.size = sizes

    def __len__(self) -> int:
        return len(self.size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.dataset[int(self.row[i])]
        s, n = int(self.start[i]), int(self.size[i])
        return {k: row[k][s:s + n] for k in ("input_ids", "labels", "position_ids")}


@dataclass
class PaddedCollator:
    """One example per row → a batch padded to its longest row, with an attention mask (and
    `token_type_ids` where rows carry them). `targets`: per-example target columns → batch
    keys (a class, a start position); `token_targets`: per-token ones, padded with `IGNORE`."""

    pad_id: int
    targets: tuple[tuple[str, str], ...] = (("label", "labels"),)
    token_targets: tuple[tuple[str, str], ...] = ()

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long) if "token_type_ids" in rows[0] else None
        per_token = {key: torch.full((len(rows), width), IGNORE, dtype=torch.long) for _, key in self.token_targets}
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"])
            mask[i, :n] = 1
            if types is not None:
                types[i, :n] = torch.as_tensor(r["token_type_ids"])
            for col, key in self.token_targets:
                per_token[key][i, :n] = torch.as_tensor(r[col])
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, **per_token}
        batch |= {key: torch.as_tensor([r[col] for r in rows]) for col, key in self.targets}
        if types is not None:
            batch["token_type_ids"] = types
        return batch

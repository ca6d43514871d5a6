"""Forgetting (`[train.forgetting]`): what a fine-tune costs the base on general data, measured
and limited.

- **retain**: general-data sources go through the data stage like any spec's (their own
  content-addressed dataset, split into a held-out part and the rest); the held-out part is
  evaluated with the base before training and with the tuned model after, and the report
  states the change.
- **replay**: rows of the rest join the training rows, so that `replay` of the training
  examples are general data. The task's own dataset stays as it was (its test split measures
  the task alone).
- **EWC**: the diagonal Fisher information of the base on the rest (the mean squared gradient
  of the loss over `fisher_rows` rows, one row per backward pass) is computed once and stored
  under a key of (retained data, base files, rows, seed); training adds λ·Σ F·(θ − θ₀)² over the
  trained weights, or over a LoRA layer's merged delta B·A·scale (θ − θ₀ exactly, without
  merging).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ftc import rows, store
from ftc.errors import BuildError
from ftc.spec import Spec, SplitSpec

FISHER = "fisher-v1"


def retain_spec(spec: Spec) -> Spec | None:
    """The spec of the retained data's dataset: the task's spec with the retained sources, split
    into the held-out part (`test`) and the rest (`train`), without augmentation or balancing."""
    f = spec.train.forgetting
    if not f.retain:
        return None
    data = spec.data.model_copy(update={
        "sources": f.retain, "split": SplitSpec(valid=0.0, test=f.test, by=spec.data.split.by),
        "augment": type(spec.data.augment)(), "balance": type(spec.data.balance)()})
    project = spec.project.model_copy(update={"name": f"{spec.project.name}-retain"})
    return spec.model_copy(update={"data": data, "project": project})


def evaluate(spec: Spec, task: Any, model: Any, tokenizer: Any, retain: Any, collator: Any,
             labels: list[str] | None) -> dict[str, Any]:
    """The task's metrics on the retained data's held-out part (generation metrics left out:
    the question is how well the model still reads general text)."""
    ds = rows.load_split(retain.path, retain.manifest, "test")
    if ds is None:
        return {}
    plain = spec.model_copy(update={"eval": spec.eval.model_copy(update={"metrics": []})})
    return task.evaluate(plain, model, tokenizer, ds, collator, labels)


def with_replay(train_ds: Any, retain: Any, fraction: float, seed: int) -> tuple[Any, int]:
    """`train_ds` with rows of the retained data's rest appended, so that about `fraction` of
    the examples are replayed (rows drawn at random without repeats, as many as there are).
    Returns the rows and the number of replayed examples."""
    import datasets
    import numpy as np

    pool = rows.load_split(retain.path, retain.manifest, "train")
    if pool is None or fraction <= 0:
        return train_ds, 0
    want = round(_examples(train_ds) * fraction / (1 - fraction))
    order = np.random.default_rng(seed).permutation(len(pool))
    counts = _example_counts(pool)
    taken, n = [], 0
    for i in order:
        if n >= want:
            break
        taken.append(int(i))
        n += int(counts[i])
    # the picked rows copied out, in memory (readers of the rows' Arrow table see them; the
    # store's entry gains no cache file)
    picked = pool.select(sorted(taken)).flatten_indices(keep_in_memory=True)
    return datasets.concatenate_datasets([train_ds, picked]), n


def _example_counts(ds: Any) -> Any:
    """Examples per row (a packed row holds several), read from Arrow, not row by row."""
    import numpy as np
    import pyarrow.compute as pc

    if "seq_lengths" not in ds.column_names:
        return np.ones(len(ds), dtype=np.int64)
    return np.maximum(np.asarray(pc.list_value_length(ds.data.column("seq_lengths")), dtype=np.int64), 1)


def _examples(ds: Any) -> int:
    return int(_example_counts(ds).sum())


# ── EWC ──────────────────────────────────────────────────────────────────────────────────────

def fisher_key(retain_key: str, base_hashes: dict[str, str], n_rows: int, seed: int, task: str) -> str:
    return store.key_of({"format": FISHER, "retain": retain_key, "base": base_hashes, "rows": n_rows, "seed": seed,
                         "task": task})


def fisher(model: Any, ds: Any, collator: Callable[..., Any], n_rows: int, seed: int,
           progress: Callable[..., None] | None = None) -> dict[str, Any]:
    """The diagonal empirical Fisher of `model` over `n_rows` rows of `ds` (drawn with `seed`):
    for each parameter that takes a gradient, the mean over rows of the squared gradient of the
    row's loss."""
    import numpy as np
    import torch

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    picked = np.random.default_rng(seed).permutation(len(ds))[:n_rows]
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it predicts
    device = next(model.parameters()).device
    for i in picked:
        batch = {k: v.to(device) for k, v in collator([ds[int(i)]]).items()}
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                total[n] += p.grad.detach().float() ** 2
        if progress:
            progress("fisher", 1, len(picked))
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {n: t / max(len(picked), 1) for n, t in total.items()}


def base_fisher(spec: Spec, task: str, model: Any, retain: Any, collator: Callable[..., Any],
                base_hashes: dict[str, str], progress: Callable[..., None] | None = None) -> dict[str, Any]:
    """EWC's Fisher of the base `model` (before a method wraps it) on the retained data's
    training part: from the store, or computed once and stored."""
    ewc, seed = spec.train.forgetting.ewc, spec.project.seed
    assert ewc is not None
    pool = rows.load_split(retain.path, retain.manifest, "train")
    if pool is None:
        raise BuildError("`train.forgetting.ewc`: the retained data's training part is empty, so there is no "
                         "Fisher information to compute", hint="give `retain` more rows, or lower "
                         "`train.forgetting.test`")
    key = fisher_key(retain.key, base_hashes, ewc.fisher_rows, seed, task)
    return stored_fisher(key, lambda: fisher(model, pool, collator, ewc.fisher_rows, seed, progress), spec.project.name)


def stored_fisher(key: str, compute: Callable[[], dict[str, Any]], name: str) -> dict[str, Any]:
    """The Fisher under `key` in the store, computed by `compute` the first time."""
    from safetensors.torch import load_file, save_file

    def make(tmp: Path) -> dict[str, Any]:
        import time

        save_file({n: t.contiguous() for n, t in compute().items()}, str(tmp / "fisher.safetensors"))
        return {"key": key, "name": name, "format": FISHER, "created": time.time()}

    path, _hit = store.build_once(FISHER, key, make)
    return load_file(str(path / "fisher.safetensors"))


def penalty(model: Any, fisher: dict[str, Any], lam: float) -> Callable[[], Any]:
    """λ·Σ F·(θ − θ₀)² over what the model trains, as a function of its current weights.

    A LoRA (or DoRA) layer's θ − θ₀ is its delta B·A·scale, read with PEFT's `get_delta_weight`
    and weighted by the Fisher of the base weight it adds to; a plain trained parameter's is its
    distance from the base, kept as it was before training. Parameters the base has no Fisher
    for (a new head, added token rows) are free."""
    import torch

    def base_name(name: str) -> str:  # PEFT's wrapped names → the base model's
        for prefix in ("base_model.model.",):
            name = name.removeprefix(prefix)
        return name.replace(".base_layer.", ".")

    lora = []
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer") and hasattr(module, "lora_A"):
            target = base_name(f"{name}.weight")
            if target in fisher:
                lora.append((module, fisher[target]))
    plain = []
    if not lora:
        for name, p in model.named_parameters():
            if p.requires_grad and (f := fisher.get(base_name(name))) is not None and f.shape == p.shape:
                plain.append((p, f.to(p.device), p.detach().clone()))

    def value() -> Any:
        terms = [(f.to(m.base_layer.weight.device) * m.get_delta_weight(a).float() ** 2).sum()
                 for m, f in lora for a in m.active_adapters if a in m.lora_A]
        terms += [(f * (p.float() - p0.float()) ** 2).sum() for p, f, p0 in plain]
        return lam * torch.stack(terms).sum() if terms else torch.zeros(())

    return value

"""GPTQ (Frantar et al., 2023): int4 weights chosen against the activations they will see.

Round-to-nearest and k-quant round each weight on its own. GPTQ quantizes a weight matrix one
input column at a time and moves each column's rounding error onto the columns not yet
quantized, weighted by the inverse of the layer's input second moment H = E[x xᵀ], so that
the layer's *outputs* on real inputs move least. On SmolLM2-135M fine-tuned by
specs/chat-sft.toml, test perplexity rose ×1.084 with the builder's k-quant and ×1.017 with
these codes, in the same MatMulNBits layout, so decoding is exactly as fast.

The codes are what MatMulNBits stores: for each output row, blocks of `group` input columns,
each with a scale and a zero point; w ≈ (q − zero) · scale with q in [0, 2^bits). H comes
from one pass over calibration examples of the run's training split (never the held-out
rows the parity check scores).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

CLIPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)  # shrink factors of a group's range, searched by MSE


@dataclass
class Codes:
    q: Any  # uint8 [out, in], each in [0, 2^bits)
    scale: Any  # float32 [out, in / group]
    zero: Any  # uint8 [out, in / group]
    bits: int = 4

    def dequantize(self, group: int) -> Any:
        blocks = self.q.reshape(self.q.shape[0], -1, group).float() - self.zero[..., None].float()
        return (blocks * self.scale[..., None]).reshape(self.q.shape)


def second_moments(model: Any, linears: dict[str, Any], examples: Iterable[Any],
                   progress: Callable[[int], None] = lambda n: None) -> dict[str, Any]:
    """H = mean over calibration tokens of x xᵀ for the input x of each of `linears` (name →
    nn.Linear inside `model`), from a forward pass per example (a 1-D tensor of ids).
    Linears fed the same tensor (q/k/v, gate/up) share one matrix."""
    import torch

    sums: dict[int, Any] = {}  # id of the module whose input was summed first → Σ x xᵀ
    owner: dict[str, int] = {}  # linear name → key in `sums`
    tokens = 0
    # id(input tensor) → (the tensor, key) within one forward, so shared inputs are summed once;
    # holding the tensor keeps its id from being reused by a later layer's input.
    seen: dict[int, tuple[Any, int]] = {}

    def hook(name: str) -> Callable[..., None]:
        def run(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
            x = inputs[0]
            key = seen.setdefault(id(x), (x, id(module)))[1]
            owner.setdefault(name, key)
            if key == id(module):
                x = x.reshape(-1, x.shape[-1]).float()
                sums[key] = sums.get(key, 0) + x.T @ x
        return run

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    try:
        with torch.inference_mode():
            for ids in examples:
                seen.clear()
                model(input_ids=ids[None])
                tokens += len(ids)
                progress(1)
    finally:
        for h in handles:
            h.remove()
    return {name: sums[key] / max(tokens, 1) for name, key in owner.items()}


def quantize(weight: Any, h: Any, *, bits: int = 4, group: int = 32, damp: float = 0.01) -> Codes:
    """GPTQ codes for `weight` [out, in] given its input second moment `h` [in, in].

    Columns are rounded in act-order, the inputs of largest second moment first, while the most
    columns are still left to absorb their error; each group's grid is fixed beforehand from the
    weights as trained ("static groups"), so the codes keep MatMulNBits' plain group layout with
    no index of which group a column went to. On the realistic SFT run of bench/export.py,
    act-order took the layers' share of the perplexity rise from ×1.147 to ×1.099."""
    import torch

    w = weight.detach().float().clone()
    rows, cols = w.shape
    assert cols % group == 0, "the input size must be a multiple of the group"
    h = h.float().clone()
    dead = torch.diag(h) == 0  # inputs never active: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols)
    top = 2 ** bits - 1
    scales, zeros = (t.reshape(rows, cols // group) for t in _grid(w.reshape(-1, group), top))
    order = torch.argsort(torch.diag(h), descending=True)
    w, h = w[:, order], h[order][:, order]
    of_group = order // group  # the group (in the weight's own layout) of each column in rounding order
    # Upper Cholesky factor of H⁻¹: row i holds how column i's error spreads to the columns after it.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros(rows, cols, dtype=torch.uint8)
    block = 128  # columns updated together, then their errors spread to the rest at once
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        wb, err = w[:, b0:b1].clone(), torch.zeros(rows, b1 - b0)
        for i in range(b1 - b0):
            col = b0 + i
            scale, zero = scales[:, of_group[col], None], zeros[:, of_group[col], None]
            codes = torch.clamp(torch.round(wb[:, i:i + 1] / scale) + zero, 0, top)
            q[:, order[col]] = codes[:, 0].to(torch.uint8)
            e = (wb[:, i:i + 1] - (codes - zero) * scale) / hinv[col, col]
            wb[:, i:] -= e @ hinv[col:col + 1, col:b1]
            err[:, i:i + 1] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]
    return Codes(q, scales, zeros.to(torch.uint8), bits)


def _grid(w: Any, top: int) -> tuple[Any, Any]:
    """Asymmetric scale and zero point per row of a group [rows, group]: the range [min, max]
    (always holding 0), shrunk by the factor of CLIPS with the least squared rounding error."""
    import torch

    lo, hi = w.min(1, keepdim=True).values.clamp(max=0), w.max(1, keepdim=True).values.clamp(min=0)
    best = None
    for clip in CLIPS:
        scale = ((hi - lo) * clip / top).clamp(min=1e-10)
        zero = torch.clamp(torch.round(-lo * clip / scale), 0, top)
        err = ((torch.clamp(torch.round(w / scale) + zero, 0, top) - zero) * scale - w).pow(2).sum(1, keepdim=True)
        if best is None:
            best = (err, scale, zero)
        else:
            better = err < best[0]
            best = (torch.where(better, err, best[0]), torch.where(better, scale, best[1]),
                    torch.where(better, zero, best[2]))
    return best[1], best[2]

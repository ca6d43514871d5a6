"""Attention for packed rows: each example of a row attends causally to itself alone, as if
it were trained alone (docs/architecture.md: Training).

transformers' own `flash_attention_2` does this where flash-attn is installed (a GPU). Else
ftc registers its own attention implementation, chosen by the causal-LM task:
- on a GPU in bf16/fp16: all segments of all rows in one call of torch's varlen flash kernel;
- elsewhere (the CPU, fp32, older torch): SDPA on each segment; on a GPU never through cuDNN,
  which builds a graph for every new shape, and every segment is one.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

SEGMENTED = "ftc_segmented_sdpa"


def register_segmented_attention() -> str:
    """Attention for packed rows without flash-attn: each example of a row attends causally to
    itself alone, over the segments where `position_ids` restart — what varlen flash attention
    does. A row of k examples costs Σ len² instead of row_len², which is where packing gains
    its speed. On a GPU in bf16/fp16 it is one call of torch's own varlen flash kernel; else
    SDPA per segment. Anything else (a KV cache while generating, no position_ids) runs plain
    SDPA with transformers' own mask, block-diagonal for packed rows. Returns its name for
    `attn_implementation`."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def segmented(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, scaling: float | None = None,
                  dropout: float = 0.0, position_ids: Any = None, **kwargs: Any) -> tuple[Any, None]:
        import torch

        if position_ids is None or query.shape[2] != key.shape[2]:
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                          **kwargs)
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
        p = dropout if module.training else 0.0
        if not query.is_cuda:
            return _per_segment(query, key, value, position_ids, scaling, p), None
        # cuDNN's SDPA builds a graph for every new shape (about 2 ms of CPU a call, and every
        # segment is a new shape): on a GPU the segments go to the flash kernel
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            if p == 0.0 and query.dtype in (torch.bfloat16, torch.float16) and _varlen_kernel() is not None:
                return _varlen(query, key, value, position_ids, scaling), None
            return _per_segment(query, key, value, position_ids, scaling, p), None

    AttentionInterface.register(SEGMENTED, segmented)
    AttentionMaskInterface.register(SEGMENTED, sdpa_mask)
    return SEGMENTED


def _per_segment(query: Any, key: Any, value: Any, position_ids: Any, scaling: float | None, p: float) -> Any:
    """SDPA run causally on each segment of each row ((batch, heads, len, dim) in, (batch, len,
    heads, dim) out)."""
    import torch

    rows = []
    for b in range(query.shape[0]):
        starts = torch.nonzero(position_ids[min(b, position_ids.shape[0] - 1)] == 0).flatten().tolist()
        bounds = ([0] if starts[:1] != [0] else []) + starts + [query.shape[2]]
        rows.append(torch.cat([torch.nn.functional.scaled_dot_product_attention(
            query[b:b + 1, :, s:e], key[b:b + 1, :, s:e], value[b:b + 1, :, s:e], is_causal=True, scale=scaling,
            dropout_p=p) for s, e in zip(bounds[:-1], bounds[1:], strict=True)], dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous()


@functools.cache
def _varlen_kernel() -> tuple[Any, dict[str, Any]] | None:
    """torch's varlen flash attention and its causal argument, or None where this torch has
    none (before 2.10): 2.10 takes `is_causal`, later ones a (left, right) window, (-1, 0)
    being causal."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    causal = "is_causal" in inspect.signature(varlen_attn).parameters
    return varlen_attn, {"is_causal": True} if causal else {"window_size": (-1, 0)}


_BOUNDS: list[Any] = [None, None]  # (position_ids, its segments): every layer of a step sees the same tensor


def _varlen(query: Any, key: Any, value: Any, position_ids: Any, scaling: float | None) -> Any:
    """All segments of all rows in one call of torch's varlen flash attention ((batch, heads,
    len, dim) in, (batch, len, heads, dim) out). The segment bounds (one host sync) are worked
    out once per step, not once per layer."""
    import torch

    varlen_attn, causal = _varlen_kernel()
    b, h, n, d = query.shape
    if _BOUNDS[0] is not position_ids:
        pos = position_ids.expand(b, n).reshape(-1)
        first = (pos == 0) | (torch.arange(b * n, device=pos.device) % n == 0)
        cu = torch.cat([torch.nonzero(first).flatten(), torch.tensor([b * n], device=pos.device)]).to(torch.int32)
        _BOUNDS[:] = [position_ids, (cu, int((cu[1:] - cu[:-1]).max()))]
    cu, longest = _BOUNDS[1]
    flat = [t.transpose(1, 2).reshape(b * n, h, d) for t in (query, key, value)]
    return varlen_attn(*flat, cu, cu, longest, longest, scale=scaling, **causal).view(b, n, h, d)

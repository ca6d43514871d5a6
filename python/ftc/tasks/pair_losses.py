"""Preference pairs in training: packed batches, per-sequence log-probabilities, and the losses
of the DPO family and of a Bradley–Terry reward model (docs/architecture.md: Tasks).

A batch of pairs is one padding-free row: chosen and rejected of each pair end to end, positions
restarting at each sequence, so per-sequence attention (`ftc.attention`) computes each as if it
ran alone and no token is padding. Each sequence's log-probability is the sum over its labelled
(response) tokens; the losses take those sums and token counts, as TRL's trainers define them:
- `dpo`: −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ), Δ = (π_c − ref_c) − (π_r − ref_r) (TRL `sigmoid`;
  ε, label smoothing, is conservative DPO);
- `ipo`: (Δ̄ − 1/(2β))², Δ̄ on per-token averages (TRL `ipo`);
- `simpo`: −log σ(β(π̄_c − π̄_r) − γ), per-token averages, no reference (TRL CPO `simpo`);
- `orpo`: NLL of the chosen tokens − β·log σ(log-odds(π̄_c) − log-odds(π̄_r)), no reference
  (TRL ORPO);
- `kto`: each pair's chosen answer desirable, its rejected one undesirable:
  w_d·(1 − σ(β(Δ_c − z))) and w_u·(1 − σ(β(z − Δ_r))), z the batch's KL estimate
  max(0, mean(π − ref)) over mismatched sequences (pair i's prompt with pair i+1's chosen
  answer, packed after the pairs), detached (TRL `KTOTrainer`);
- an optional SFT term (`sft_weight` × the chosen tokens' mean NLL) adds to DPO and IPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ftc.rows import IGNORE

REFERENCE_FREE = ("simpo", "orpo")  # losses that never read a reference model


@dataclass
class PairCollator:
    """Pair rows → one padding-free row: chosen₀, rejected₀, chosen₁, … (`seq_lengths`), then
    with `mismatched` (KTO's KL estimate) prompt₀ + chosen₁, prompt₁ + chosen₂, …, prompt_B−1 +
    chosen₀. A row that carries the reference's log-probs (`ref_chosen`, `ref_rejected`) passes
    them on."""

    pad_id: int
    mismatched: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from ftc.collate import FlatCollator

        seqs = []
        for r in rows:
            prompt = np.asarray(r["prompt_ids"], dtype=np.int64)
            for side in ("chosen", "rejected"):
                ids = np.concatenate([prompt, np.asarray(r[f"{side}_ids"], dtype=np.int64)])
                labels = np.concatenate([np.full(len(prompt), IGNORE), np.asarray(r[f"{side}_labels"])])
                seqs.append({"input_ids": ids, "labels": labels, "position_ids": np.arange(len(ids))})
        if self.mismatched:
            for r, other in zip(rows, rows[1:] + rows[:1], strict=True):
                prompt = np.asarray(r["prompt_ids"], dtype=np.int64)
                ids = np.concatenate([prompt, np.asarray(other["chosen_ids"], dtype=np.int64)])
                labels = np.concatenate([np.full(len(prompt), IGNORE), np.asarray(other["chosen_labels"])])
                seqs.append({"input_ids": ids, "labels": labels, "position_ids": np.arange(len(ids))})
        batch = FlatCollator(self.pad_id)(seqs)
        batch["seq_lengths"] = torch.as_tensor([len(s["input_ids"]) for s in seqs])
        if "ref_chosen" in rows[0]:
            batch["ref_logps"] = torch.as_tensor([[r["ref_chosen"], r["ref_rejected"]] for r in rows],
                                                 dtype=torch.float64).reshape(-1)
        return batch


def sequence_logps(logits: Any, labels: Any, seq_lengths: Any) -> tuple[Any, Any]:
    """A packed row's logits [1, T, V] → (summed log-prob of each sequence's labelled tokens,
    their counts). Labels are per position; a sequence's first token never carries one
    (`PackedCollator`), so no position is scored across two sequences."""
    import torch

    target = labels[0, 1:]
    mask = target != IGNORE
    picked = logits[0, :-1][mask].float()  # only the response positions: [N, V], never [T, V]
    logp = picked.gather(-1, target[mask].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(picked, -1)
    owner = torch.repeat_interleave(torch.arange(len(seq_lengths), device=logits.device),
                                    seq_lengths.to(logits.device))[1:][mask]
    sums = torch.zeros(len(seq_lengths), device=logits.device, dtype=logp.dtype).index_add(0, owner, logp)
    counts = torch.zeros(len(seq_lengths), device=logits.device, dtype=logp.dtype).index_add(
        0, owner, torch.ones_like(logp))
    return sums, counts


def preference_loss(kind: str, logps: Any, counts: Any, ref: Any | None, beta: float, label_smoothing: float = 0.0,
                    gamma: float = 0.5, sft_weight: float = 0.0, kl: tuple[Any, Any] | None = None,
                    weights: tuple[float, float] = (1.0, 1.0)) -> tuple[Any, dict[str, Any]]:
    """(mean loss, per-pair figures: rewards of chosen and rejected) from per-sequence sums
    `logps` [2B] (chosen, rejected alternating), token `counts` [2B] and the reference's sums;
    `kl`: KTO's mismatched sequences (policy sums, reference sums), `weights` its (desirable,
    undesirable)."""
    import torch
    import torch.nn.functional as F

    pc, pr = logps[0::2], logps[1::2]
    nc, nr = counts[0::2].clamp(min=1), counts[1::2].clamp(min=1)
    nll = -pc.sum() / nc.sum()  # the chosen tokens' mean NLL, as a plain SFT loss on them
    if kind in REFERENCE_FREE:
        ac, ar = pc / nc, pr / nr
        if kind == "simpo":
            z = beta * (ac - ar) - gamma
            losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
        else:  # orpo: log-odds of the average token probability
            odds = (ac - ar) - (_log1mexp(ac) - _log1mexp(ar))
            losses = nll - beta * F.logsigmoid(odds)
        chosen, rejected = beta * ac.detach(), beta * ar.detach()
    else:
        assert ref is not None, "dpo and ipo compare against the reference model"
        rc, rr = ref[0::2].to(pc.dtype), ref[1::2].to(pc.dtype)
        if kind == "dpo":
            z = beta * ((pc - rc) - (pr - rr))
            losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
        elif kind == "ipo":
            losses = ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2
        elif kind == "kto":
            assert kl is not None, "kto estimates the KL on mismatched sequences"
            z = (kl[0] - kl[1].to(kl[0].dtype)).mean().detach().clamp(min=0)
            losses = torch.cat([weights[0] * (1 - torch.sigmoid(beta * ((pc - rc) - z))),
                                weights[1] * (1 - torch.sigmoid(beta * (z - (pr - rr))))])
        else:
            raise ValueError(f"unknown preference loss {kind!r}")
        losses = losses + sft_weight * nll
        chosen, rejected = beta * (pc - rc).detach(), beta * (pr - rr).detach()
    return losses.mean(), {"chosen": chosen, "rejected": rejected, "logps_chosen": pc.detach(),
                           "logps_rejected": pr.detach()}


def _log1mexp(x: Any) -> Any:
    """log(1 − eˣ) for x < 0, stable at both ends."""
    import torch

    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def bradley_terry(scores: Any, margin: Any | None = None) -> Any:
    """A reward model's loss on scores [2B] (chosen, rejected alternating): −log σ(s_c − s_r − m)."""
    import torch.nn.functional as F

    diff = scores[0::2] - scores[1::2]
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def pair_figures(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, float]:
    """Pairwise accuracy (chosen scored above rejected) and the mean margin."""
    margin = chosen - rejected
    return {"accuracy": float((margin > 0).mean()) if len(margin) else float("nan"),
            "margin": float(margin.mean()) if len(margin) else float("nan"),
            "chosen": float(chosen.mean()) if len(chosen) else float("nan"),
            "rejected": float(rejected.mean()) if len(rejected) else float("nan")}

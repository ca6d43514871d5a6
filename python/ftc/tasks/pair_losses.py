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
- `kto`: each pair's chosen answer desirable, its rejected one undesirable (an unpaired row
  has one of the two): w_d·(1 − σ(β(Δ_c − z))) and w_u·(1 − σ(β(z − Δ_r))), z the batch's KL
  estimate max(0, mean(π − ref)) over mismatched sequences (row i's prompt with row i+1's
  answer, its chosen one if it has one, packed after the rows), detached (TRL `KTOTrainer`);
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
    """Pair rows → one padding-free row: chosen₀, rejected₀, chosen₁, … (`seq_lengths`; `sides`
    says which each is, 0 chosen, 1 rejected: an unpaired row has one), then with `mismatched`
    (KTO's KL estimate) prompt₀ + answer₁, prompt₁ + answer₂, …, prompt_B−1 + answer₀. A row
    that carries the reference's log-probs (`ref_chosen`, `ref_rejected`) passes them on."""

    pad_id: int
    mismatched: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from ftc.collate import FlatCollator

        def seq(prompt: Any, row: dict[str, Any], side: str) -> dict[str, Any]:
            prompt = np.asarray(prompt, dtype=np.int64)
            ids = np.concatenate([prompt, np.asarray(row[f"{side}_ids"], dtype=np.int64)])
            labels = np.concatenate([np.full(len(prompt), IGNORE), np.asarray(row[f"{side}_labels"])])
            return {"input_ids": ids, "labels": labels, "position_ids": np.arange(len(ids))}

        seqs, sides, ref = [], [], []
        for r in rows:
            for i, side in enumerate(("chosen", "rejected")):
                if len(r[f"{side}_ids"]):
                    seqs.append(seq(r["prompt_ids"], r, side))
                    sides.append(i)
                    ref.append(r.get(f"ref_{side}"))
        if self.mismatched:
            for r, other in zip(rows, rows[1:] + rows[:1], strict=True):
                seqs.append(seq(r["prompt_ids"], other, "chosen" if len(other["chosen_ids"]) else "rejected"))
        batch = FlatCollator(self.pad_id)(seqs)
        batch["seq_lengths"] = torch.as_tensor([len(s["input_ids"]) for s in seqs])
        batch["sides"] = torch.as_tensor(sides)
        if "ref_chosen" in rows[0]:
            batch["ref_logps"] = torch.as_tensor(ref, dtype=torch.float64)
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
                    weights: tuple[float, float] = (1.0, 1.0), sides: Any | None = None) -> tuple[Any, dict[str, Any]]:
    """(mean loss, figures: rewards of the chosen and the rejected answers) from per-sequence
    sums `logps` (chosen, rejected alternating, or as `sides` says: 0 chosen, 1 rejected; only
    KTO takes unpaired answers), token `counts` and the reference's sums; `kl`: KTO's mismatched
    sequences (policy sums, reference sums), `weights` its (desirable, undesirable)."""
    import torch
    import torch.nn.functional as F

    if sides is None:
        sides = torch.arange(len(logps), device=logps.device) % 2
    c, r = sides == 0, sides == 1
    if kind != "kto" and c.sum() != r.sum():
        raise ValueError(f"`{kind}` compares the two answers of a pair: unpaired answers train with kto only")
    pc, pr = logps[c], logps[r]
    nc, nr = counts[c].clamp(min=1), counts[r].clamp(min=1)
    nll = -pc.sum() / nc.sum().clamp(min=1)  # the chosen tokens' mean NLL, as a plain SFT loss on them
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
        rc, rr = ref[c].to(pc.dtype), ref[r].to(pc.dtype)
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
    """Pairwise accuracy (chosen scored above rejected, over the pairs that have both: NaN marks
    an unpaired row's missing side), the margin (mean chosen − mean rejected: the mean margin
    when every row is a pair) and the mean of each side."""
    both = ~np.isnan(chosen) & ~np.isnan(rejected)
    c, r = chosen[~np.isnan(chosen)], rejected[~np.isnan(rejected)]
    mean = lambda a: float(a.mean()) if len(a) else float("nan")  # noqa: E731
    return {"accuracy": mean(chosen[both] > rejected[both]), "margin": mean(c) - mean(r), "chosen": mean(c),
            "rejected": mean(r)}

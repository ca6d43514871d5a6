"""Parity of exported models with the trained one, on held-out rows (README: Export).

Every candidate runs the same rows as the reference PyTorch model (the run as trained: the
base with its adapter unmerged, fp32, CPU). Per candidate: the max and mean absolute logit
difference and the argmax agreement against its reference (fp32 ONNX and merged weights
against PyTorch, int8 / int4 against fp32 ONNX, GGUF files read back by transformers against
PyTorch), and the task metric (accuracy, or perplexity over the labelled tokens, as training
evaluates it) of every model.

The task (`ftc.tasks`) says which logits are scored and against what: a classifier's logits of
each row, a causal LM's next-token logits at every position whose next token carries a label
(the tokens perplexity scores, each example run alone through the graph as one prefill). Its
`parity_metric` is accuracy or perplexity. One pass, one batch at a time: no logits are kept,
only the reference's top-two gap of every scored row.

Where an argmax flips, the reference's top-two gap says whether the model was sure: a flip
where the gap is under `near_tie` × the median gap of the sample is a near-tie, an unsure row
meeting rounding, which goes either way by chance; any rounding flips some, and more the less
trained the model. What a broken export does instead is flip rows the model was sure of, and
lose accuracy there: that is what the defaults judge (`Parity.judge`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftc import evaluate
from ftc.spec import Export

# What each candidate is compared with; all but the EXACT ones are judged as quantized.
REFERENCE = {"fp32": "torch", "merged": "torch", "int8": "fp32", "int4": "fp32",
             "gguf-f16": "torch", "gguf-q8_0": "torch", "gguf-q4_0": "torch"}
EXACT = ("fp32", "merged")


@dataclass
class Diff:
    """Running comparison of one model's logits with its reference's."""

    max_abs_diff: float = 0.0
    abs_sum: float = 0.0
    elements: int = 0
    agree: int = 0
    predictions: int = 0
    gaps: list[np.ndarray] = field(default_factory=list)  # reference top-two gap of every row
    flip_gaps: list[float] = field(default_factory=list)  # reference top-two gap of each flipped row
    flip_cost: list[int] = field(default_factory=list)  # per flip: +1 right → wrong, −1 wrong → right, else 0

    def add(self, ref: np.ndarray, got: np.ndarray, targets: np.ndarray | None = None) -> None:
        d = np.abs(got.astype(np.float64) - ref)
        self.max_abs_diff = max(self.max_abs_diff, float(d.max(initial=0.0)))
        self.abs_sum += float(d.sum())
        self.elements += d.size
        same = got.argmax(-1) == ref.argmax(-1)
        self.agree += int(same.sum())
        self.predictions += ref.shape[0]
        if ref.shape[-1] < 2:
            return
        top2 = np.partition(ref, -2, axis=-1)[..., -2:]  # O(vocab), unordered
        gap = np.abs(top2[..., 1] - top2[..., 0]).astype(np.float64)
        self.gaps.append(gap)
        self.flip_gaps += gap[~same].tolist()
        if targets is not None:
            right = lambda z: (z.argmax(-1) == targets).astype(int)  # noqa: E731
            self.flip_cost += (right(ref) - right(got))[~same].tolist()
        else:
            self.flip_cost += [0] * int((~same).sum())

    @property
    def mean_abs_diff(self) -> float:
        return self.abs_sum / self.elements if self.elements else 0.0

    @property
    def agreement(self) -> float:
        return self.agree / self.predictions if self.predictions else 1.0

    def near_tie_gap(self, near_tie: float) -> float:
        """The top-two gap under which a flip is a near-tie: `near_tie` × the median gap."""
        gaps = np.concatenate(self.gaps) if self.gaps else np.zeros(0)
        return near_tie * float(np.median(gaps)) if len(gaps) else 0.0

    def flips(self, near_tie: float) -> tuple[int, int, int]:
        """(near-tie flips, confident flips, accuracy the near-tie flips cost, in rows)."""
        near = np.asarray(self.flip_gaps) <= self.near_tie_gap(near_tie)
        cost = np.asarray(self.flip_cost, dtype=np.int64)
        return int(near.sum()), int((~near).sum()), int(cost[near].sum())


@dataclass
class Metric:
    """Accuracy, or the NLL sum behind perplexity, of scored logits [n, classes]."""

    name: str  # "accuracy" or "perplexity"
    hits: int = 0
    nll: float = 0.0
    n: int = 0

    def add(self, logits: np.ndarray, targets: np.ndarray) -> None:
        if self.name == "accuracy":
            self.hits += int((logits.argmax(-1) == targets).sum())
        else:
            z = logits.astype(np.float64)
            top = z.max(-1, keepdims=True)
            log_norm = np.log(np.exp(z - top).sum(-1)) + top[:, 0]
            self.nll += float((log_norm - z[np.arange(len(targets)), targets]).sum())
        self.n += len(targets)

    @property
    def value(self) -> float:
        if self.name == "accuracy":
            return self.hits / self.n if self.n else 0.0
        return evaluate.perplexity(self.nll, self.n)


class Parity:
    def __init__(self, task: Any, held_out: Any, reference: Any, candidates: dict[str, Any],
                 pad_id: int | None) -> None:
        """`task`: the run's `ftc.tasks.Task`; `candidates`: name → an exported variant's path
        (what `task.make_variant` returned) or a torch model; names are keys of `REFERENCE`."""
        self.task, self.held_out, self.reference = task, held_out, reference
        self.pad_id = pad_id if pad_id is not None else 0
        self.candidates = candidates
        self.diffs = {name: Diff() for name in candidates}
        self.metrics = {name: Metric(task.parity_metric) for name in ("torch", *candidates)}
        self.passed: dict[str, bool] = {}
        self.settings: Export | None = None  # the thresholds `judge` applied

    def _runner(self, candidate: Any) -> Callable[[dict[str, Any]], np.ndarray]:
        if not isinstance(candidate, Path):  # a torch model
            return lambda batch: self.task.torch_logits(candidate, batch)
        return self.task.graph_runner(candidate)

    def measure(self, progress: Callable[[str, int, int | None], None]) -> Parity:
        import torch

        runners = {name: self._runner(c) for name, c in self.candidates.items()}
        rows = self.held_out.rows
        progress("parity", 0, len(rows))
        with torch.no_grad():
            for batch, pick, targets in self.task.parity_feed(rows, self.pad_id):
                outs = {"torch": pick(self.task.torch_logits(self.reference, batch))}
                outs |= {name: pick(run(batch)) for name, run in runners.items()}
                self.add(outs, targets)
                progress("parity", len(batch["input_ids"]), None)
        return self

    def add(self, outs: dict[str, np.ndarray], targets: np.ndarray) -> None:
        """One batch of logits of every model (name → logits), and what they should predict."""
        accuracy = self.task.parity_metric == "accuracy"
        for name, logits in outs.items():
            self.metrics[name].add(logits, targets)
            if name in self.diffs:
                self.diffs[name].add(outs[REFERENCE[name]], logits, targets if accuracy else None)

    def judge(self, s: Export) -> list[str]:
        """Each candidate against the `[export]` thresholds; returns what failed, as text.

        fp32 (and merged weights) must match PyTorch: `max_abs_diff`, and no more than
        `max_confident_flips` of the rows flipped where PyTorch was sure. A quantized classifier
        must flip no more of fp32's sure rows, and lose at most `max_accuracy_drop` of PyTorch's
        accuracy once its near-tie flips are set aside (they go either way by chance). A
        quantized decoder must keep its perplexity within `max_perplexity_ratio` of PyTorch's;
        its top-1 agreement is reported, not judged (over a vocabulary every position holds
        near-ties). `min_agreement`, when set, holds every flip against the candidate too, and
        `near_tie = 0` makes every flip count: the strict figures."""
        self.settings = s
        failures = []
        base = self.metrics["torch"].value
        for name, d in self.diffs.items():
            quantized, classify = name not in EXACT, self.task.parity_metric == "accuracy"
            value = self.metrics[name].value
            problems = []
            if not quantized and d.max_abs_diff > s.max_abs_diff:
                problems.append(f"max |Δ| {d.max_abs_diff:.3g} > max_abs_diff {s.max_abs_diff:g}")
            near, confident, near_cost = d.flips(s.near_tie)
            if not quantized or classify:
                if s.min_agreement is not None and d.agreement < s.min_agreement:
                    problems.append(f"agreement {d.agreement:.2%} < min_agreement {s.min_agreement:.2%} ({near} of "
                                    f"the {near + confident} flips at near-ties of {REFERENCE[name]})")
                if d.predictions and confident / d.predictions > s.max_confident_flips:
                    problems.append(f"{confident} of {d.predictions} rows ({confident / d.predictions:.2%}) flipped "
                                    f"where {REFERENCE[name]} was sure (top-two gap above "
                                    f"{d.near_tie_gap(s.near_tie):.3g}, near_tie {s.near_tie:g} × its median) > "
                                    f"max_confident_flips {s.max_confident_flips:.2%}")
            if quantized and classify:
                drop = base - value
                judged = drop - near_cost / max(d.predictions, 1)
                if judged > s.max_accuracy_drop:
                    problems.append(f"accuracy {value:.4f} is {drop:.4f} below PyTorch's {base:.4f}, {judged:.4f} "
                                    f"outside near-tie flips > max_accuracy_drop {s.max_accuracy_drop:g}")
            if quantized and not classify and value > base * s.max_perplexity_ratio:
                problems.append(f"perplexity {value:.4g} is {value / base:.4f}× PyTorch's {base:.4g} "
                                f"> max_perplexity_ratio {s.max_perplexity_ratio:g}")
            self.passed[name] = not problems
            failures += [f"{name}: {p}" for p in problems]
        return failures

    def figures(self) -> dict[str, Any]:
        """The `parity` table of ftc-artifact.json: how the rows were drawn, then every model."""
        torch_metric = self.metrics["torch"]
        out: dict[str, Any] = {"rows": len(self.held_out.rows), "sample": getattr(self.held_out, "sample", None),
                               "torch": {torch_metric.name: torch_metric.value}}
        near_tie = self.settings.near_tie if self.settings is not None else Export().near_tie
        for name, d in self.diffs.items():
            m = self.metrics[name]
            near, confident, near_cost = d.flips(near_tie)
            out[name] = {"reference": REFERENCE[name], "max_abs_diff": d.max_abs_diff, "mean_abs_diff": d.mean_abs_diff,
                         "agreement": d.agreement, m.name: m.value, "passed": self.passed.get(name, True),
                         "flips": {"near_tie": near, "confident": confident,
                                   "near_tie_gap": d.near_tie_gap(near_tie)}}
            if m.name == "accuracy":
                drop = torch_metric.value - m.value
                out[name]["accuracy_drop"] = {"all": drop, "outside_near_ties": drop - near_cost / max(d.predictions, 1)}
        return out

    def explain(self, failures: list[str], split: str) -> str:
        """The failed checks and every figure, as the error shows them."""
        f = self.figures()
        drawn = f" ({f['sample']['drawn']} of {f['sample']['of']})" if f.get("sample") else ""
        head = f"the exported model does not match the trained one on {f['rows']} held-out {split} rows{drawn}:"
        return "\n".join([head, *table(f), "failed:", *(f"  {x}" for x in failures)])


def table(figures: dict[str, Any]) -> list[str]:
    """The `parity` figures as aligned lines: one per model, PyTorch first; `flips`: those where
    the reference was sure, and (in brackets) those at near-ties."""
    metric = next(iter(figures["torch"]))
    lines = [f"  {'model':<9} {'vs':<6} {'max |Δ|':>10} {'mean |Δ|':>10} {'agreement':>10} {'flips':>10} {metric:>11}",
             f"  {'torch':<9} {'':<6} {'':>10} {'':>10} {'':>10} {'':>10} {figures['torch'][metric]:>11.4f}"]
    for name, v in figures.items():
        if isinstance(v, dict) and "reference" in v:
            flips = v.get("flips", {})
            count = f"{flips.get('confident', 0)} ({flips.get('near_tie', 0)})"
            lines.append(f"  {name:<9} {v['reference']:<6} {v['max_abs_diff']:>10.3g} {v['mean_abs_diff']:>10.3g} "
                         f"{v['agreement']:>10.2%} {count:>10} {v[metric]:>11.4f}  {'ok' if v['passed'] else 'FAILED'}")
    return lines

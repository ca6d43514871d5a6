"""Question answering's evaluation: the model over every window of a split, each question's
answer read back over its windows (`extract_answer`, as the pipeline reads it), and SQuAD's
exact match and F1 (`squad.squad_metrics`), as fractions like the other tasks' metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import numpy as np

from ftc.tasks import squad
from ftc.tasks.question_answering import SAMPLES, extract_answer

WINDOW_KEYS = ("input_ids", "offset_starts", "offset_ends", "word_ids")


Logits = list[np.ndarray]


def window_logits(model: Any, ds: Any, collator: Callable[..., Any], batch_size: int) -> tuple[Logits, Logits, float]:
    """Start and end logits of every window (unpadded, in split order) and the mean loss."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    lengths = np.asarray(ds.data.column("length"), dtype=np.int64)
    # Length-sorted batches carry less padding, which is masked: only the speed changes.
    order = np.argsort(lengths, kind="stable")
    starts: list[np.ndarray] = [np.zeros(0)] * len(ds)
    ends: list[np.ndarray] = [np.zeros(0)] * len(ds)
    loss, seen = 0.0, 0
    cols = ["input_ids", "token_type_ids", "start_positions", "end_positions"]
    cols = [c for c in cols if c in ds.column_names]
    view = ds.select_columns(cols)
    with torch.inference_mode():
        for at in range(0, len(order), batch_size):
            picked = order[at:at + batch_size]
            batch = {k: v.to(device) for k, v in collator([view[int(i)] for i in picked]).items()}
            out = model(**batch)
            loss += float(out.loss) * len(picked)
            seen += len(picked)
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for row, i in enumerate(picked):
                starts[i], ends[i] = s[row, :lengths[i]], e[row, :lengths[i]]
    return starts, ends, loss / seen if seen else float("nan")


def evaluate(spec: Any, model: Any, tokenizer: Any, ds: Any, collator: Callable[..., Any]) -> dict[str, Any]:
    """Exact match and F1 over the split's questions (plus their answerable / unanswerable
    parts when it has both kinds), the mean loss over its windows, and a few predictions."""
    starts, ends, loss = window_logits(model, ds, collator, spec.train.batch_size)
    table = ds.data
    example = np.asarray(table.column("example"), dtype=np.int64)
    windows = {k: table.column(k).to_pylist() for k in WINDOW_KEYS}
    per_example = {k: table.column(k).to_pylist() for k in ("id", "context", "answers")}
    bounds = np.flatnonzero(np.r_[True, example[1:] != example[:-1], True]) if len(example) else np.zeros(1, int)
    golds = [per_example["answers"][b]["text"] for b in bounds[:-1]]
    impossible = any(not g for g in golds)
    predictions, references, samples = {}, {}, []
    for q, (lo, hi) in enumerate(pairwise(bounds)):
        ws = [{k: np.asarray(windows[k][w]) for k in WINDOW_KEYS} for w in range(lo, hi)]
        context = per_example["context"][lo]
        best = extract_answer(context, ws, starts[lo:hi], ends[lo:hi], cls_token_id=tokenizer.cls_token_id,
                              max_answer_length=spec.eval.max_answer_length, handle_impossible_answer=impossible)
        key = str(q)  # ids may repeat across sources; the question's place in the split does not
        predictions[key] = best[0].text if best else ""
        references[key] = golds[q]
        if len(samples) < SAMPLES:
            samples.append({"id": per_example["id"][lo], "gold": golds[q], "prediction": predictions[key],
                            "score": best[0].score if best else 0.0})
    scores = squad.squad_metrics(predictions, references)
    out: dict[str, Any] = {"exact_match": scores["exact"] / 100, "f1": scores["f1"] / 100}
    for prefix, name in (("HasAns_", "answerable"), ("NoAns_", "unanswerable")):
        if impossible and f"{prefix}total" in scores:
            out[f"{name}_exact_match"] = scores[f"{prefix}exact"] / 100
            out[f"{name}_f1"] = scores[f"{prefix}f1"] / 100
            out[f"{name}_questions"] = int(scores[f"{prefix}total"])
    return out | {"loss": loss, "questions": len(references), "windows": len(example), "samples": samples}


def report_sections(metrics: dict[str, Any]) -> list[str]:
    """A few of the test questions' gold and predicted answers."""
    from ftc.report import fmt

    samples = metrics.get("samples") or []
    if not samples:
        return []

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = [f"| {cell(s['id'])} | {cell(' / '.join(s['gold'])) or '(no answer)'} | "
            f"{cell(s['prediction']) or '(no answer)'} | {fmt(float(s['score']))} |" for s in samples]
    intro = (f"Exact match and F1 as SQuAD's evaluation script scores them, over {metrics['questions']:,} "
             f"questions ({metrics['windows']:,} windows); the first {len(samples)}:")
    return ["## Answers", "", intro, "", "| id | gold | predicted | score |", "|---|---|---|---|", *rows, ""]

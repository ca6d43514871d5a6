"""The run report (README: Training): `metrics.json` for machines and
`report.md` with its plots for people, written into the run directory after evaluation.

Plots are drawn on a bare `matplotlib.figure.Figure` (the Agg canvas, no pyplot): no
display, no global figure state, safe in a headless build or a thread.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftc import tasks
from ftc.evaluate import gain, is_metric

LOSS_PNG = "loss.png"
CONFUSION_PNG = "confusion.png"
ANNOTATE_MAX_CLASSES = 30  # beyond this, counts in the cells are unreadable
# Fonts with CJK glyphs, tried after the default, so Chinese class names draw (if one is installed).
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Source Han Sans SC", "WenQuanYi Zen Hei",
             "WenQuanYi Micro Hei", "SimHei", "Microsoft YaHei", "PingFang SC", "AR PL UMing CN")
LOWER_IS_BETTER = re.compile(r"loss|perplexity")


# ── plots ────────────────────────────────────────────────────────────────────────────────────

def loss_points(log_history: list[dict[str, Any]]) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(step, loss) points for training and evaluation from HF Trainer's `state.log_history`.

    Train entries carry `loss`, eval entries `eval_loss`, both with `step`; the closing summary
    (`train_loss`) and entries without a step are left out.

    >>> loss_points([{"loss": 2.0, "step": 10}, {"eval_loss": 1.5, "step": 10}, {"train_loss": 1.9, "step": 10}])
    ([(10.0, 2.0)], [(10.0, 1.5)])
    """
    train, evals = [], []
    for entry in log_history:
        step = entry.get("step")
        if step is None:
            continue
        for key, points in (("loss", train), ("eval_loss", evals)):
            value = entry.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                points.append((float(step), float(value)))
    return train, evals


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _font_family() -> list[str]:
    """The default sans-serif, then whichever CJK fonts are installed."""
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return ["DejaVu Sans", *(f for f in CJK_FONTS if f in installed)]


def loss_curves(log_history: list[dict[str, Any]], path: Path) -> Path | None:
    """A PNG of train and eval loss against the optimizer step; None if there is no point to plot."""
    train, evals = loss_points(log_history)
    if not train and not evals:
        return None
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    for points, label, style in ((train, "train", "-"), (evals, "eval", "o-")):
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], style, label=label, markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def confusion_png(matrix: Sequence[Sequence[int]], names: list[str], path: Path) -> Path:
    """A PNG of the confusion matrix (rows true, columns predicted), counts in the cells."""
    import numpy as np

    cm = np.asarray(matrix, dtype=np.int64).reshape(len(names), len(names))
    k = len(names)
    side = min(max(4.0, 0.55 * k + 2.5), 24.0)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8)
    family = _font_family()
    ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center",
                  fontfamily=family)
    ax.set_yticks(range(k), names, fontfamily=family)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    if k <= ANNOTATE_MAX_CLASSES:
        threshold = cm.max() / 2 if cm.size else 0
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9,
                        color="white" if cm[i, j] > threshold else "black")
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Without a CJK font a Chinese name draws as boxes, one warning per glyph; the per-class
        # table of report.md spells the names out anyway.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        fig.savefig(path, format="png")
    return path


# ── metrics.json ─────────────────────────────────────────────────────────────────────────────

def with_rates(timing: dict[str, Any]) -> dict[str, Any]:
    """`timing` plus tokens per second wherever tokens and seconds are given but the rate is not.

    >>> with_rates({"train_seconds": 2.0, "train_tokens": 100})
    {'train_seconds': 2.0, 'train_tokens': 100, 'train_tokens_per_second': 50.0}
    """
    out = dict(timing)
    for key in timing:
        if key.endswith("_tokens"):
            stage = key.removesuffix("_tokens")
            seconds = timing.get(f"{stage}_seconds")
            rate = f"{stage}_tokens_per_second"
            # a bare `tokens_per_second` is the training rate, as the build stage records it
            given = rate in out or (stage == "train" and "tokens_per_second" in out)
            if not given and isinstance(seconds, (int, float)) and seconds > 0:
                out[rate] = timing[key] / seconds
    return out


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars and arrays to Python, NaN and infinities to null (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ── report.md ────────────────────────────────────────────────────────────────────────────────

def fmt(value: Any, signed: bool = False) -> str:
    """A number for a table: ints as they are, floats to 4 decimals (2 from 100 up).

    >>> fmt(0.123456), fmt(1234.5678), fmt(0.05, signed=True), fmt(None)
    ('0.1235', '1234.57', '+0.0500', '–')
    """
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    if not math.isfinite(value):
        return str(value)
    spec = ".2f" if abs(value) >= 100 else ".4f"
    return format(value, ("+" if signed else "") + spec)


def duration(seconds: float) -> str:
    """Seconds as people read them.

    >>> duration(3725.4), duration(65), duration(4.5)
    ('1h 02m 05s', '1m 05s', '4.5s')
    """
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s" if m else f"{seconds:.1f}s"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows)]


def results_table(metrics: dict[str, Any], base: dict[str, Any] | None) -> list[str]:
    """Tuned metrics, and base and gain columns when the base model was evaluated."""
    names = [k for k, v in metrics.items() if is_metric(v)]
    if not names:
        return ["No metrics."]

    def label(name: str) -> str:
        return f"{name} (lower is better)" if LOWER_IS_BETTER.search(name) else name

    if base is None:
        return _table(["metric", "tuned"], [[label(n), fmt(metrics[n])] for n in names])
    diff = gain(base, metrics)
    return _table(["metric", "tuned", "base", "gain"],
                  [[label(n), fmt(metrics[n]), fmt(base.get(n)), fmt(diff.get(n), signed=True)] for n in names])


def forgetting_section(kept: dict[str, Any]) -> list[str]:
    """`[train.forgetting]`: the retained data's held-out part before and after the fine-tune."""
    base, tuned = kept.get("base") or {}, kept.get("tuned") or {}
    lines = ["## Forgetting", "", "The retained general data's held-out part, with the base and the tuned model "
             "(change: tuned − base; for loss and perplexity a positive change is what the fine-tune cost).", ""]
    diff = gain(base, tuned)
    lines += _table(["metric", "tuned", "base", "change"], [[n, fmt(tuned[n]), fmt(base.get(n)),
                                                              fmt(diff.get(n), signed=True)]
                                                             for n in tuned if is_metric(tuned[n])])
    if kept.get("replayed_examples"):
        lines += ["", f"Replayed: {kept['replayed_examples']:,} training examples came from the retained data."]
    return [*lines, ""]


def distill_section(student: dict[str, Any], d: dict[str, Any]) -> list[str]:
    """`[train.distill]`: the student, its teacher and the student trained alone, on one split."""
    teacher, alone = d.get("teacher") or {}, d.get("student_alone")
    header = ["metric", "student", "teacher"] + (["student alone"] if alone else [])
    rows = [[n, fmt(student[n]), fmt(teacher.get(n))] + ([fmt(alone.get(n))] if alone else [])
            for n in student if is_metric(student[n])]
    note = ("The student trained alone: the same spec without `[train.distill]`, the same budget."
            if alone else "`compare = false`: the student was not trained alone.")
    return ["## Distillation", "", "The distilled student, its teacher and " + ("the student trained alone, "
            if alone else "") + "on the same test split.", "", *_table(header, rows), "", note, ""]


def per_class_table(per_class: dict[str, dict[str, Any]]) -> list[str]:
    return _table(["class", "precision", "recall", "f1", "support"],
                  [[name, fmt(m["precision"]), fmt(m["recall"]), fmt(m["f1"]), fmt(m["support"])]
                   for name, m in per_class.items()])


def timing_table(timing: dict[str, Any]) -> list[str]:
    rows = []
    for key, value in timing.items():
        if key.endswith("_seconds") and isinstance(value, (int, float)):
            rows.append([key, duration(value)])
        elif key.endswith("_per_second") and isinstance(value, (int, float)):
            rows.append([key, f"{value:,.0f}"])
        else:
            rows.append([key, fmt(value)])
    return _table(["", "value"], rows)


def fenced(text: str, lang: str) -> list[str]:
    """A code block whose fence is longer than any backtick run in `text`."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + lang, text.rstrip("\n"), fence]


def write_report(run_dir: Path, *, spec_text: str, keys: dict[str, str], metrics: dict[str, Any],
                 base_metrics: dict[str, Any] | None, log_history: list[dict[str, Any]], timing: dict[str, Any],
                 task: str, names: list[str] | None, forgetting: dict[str, Any] | None = None,
                 distilled: dict[str, Any] | None = None) -> Path:
    """Write `metrics.json`, `report.md` and its PNGs into `run_dir`; return the report's path.

    `keys` are the stage keys (data, train, …); `timing` holds seconds and token counts
    (`train_seconds`, `train_tokens`, …), to which tokens per second are added.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    timing = with_rates(timing)
    diff = gain(base_metrics, metrics) if base_metrics is not None else None
    record = {"task": task, "metrics": metrics, "base_metrics": base_metrics, "gain": diff,
              "forgetting": forgetting, "distill": distilled, "keys": keys, "timing": timing, "log_history": log_history}
    (run_dir / "metrics.json").write_text(json.dumps(_plain(record), indent=2, ensure_ascii=False,
                                                     allow_nan=False) + "\n", encoding="utf-8")

    run = keys.get("train", run_dir.name)  # run_dir may still be the store's staging directory
    lines = [f"# ftc report: run {run[:12]}", "", f"Task: `{task}`.", "", "## Results", "",
             *results_table(metrics, base_metrics), ""]
    if base_metrics is not None:
        lines += ["Base: the base model on the same split; gain: tuned − base.", ""]
    if forgetting:
        lines += forgetting_section(forgetting)
    if distilled:
        lines += distill_section(metrics, distilled)
    if loss_curves(log_history, run_dir / LOSS_PNG) is not None:
        lines += ["## Loss", "", f"![train and eval loss]({LOSS_PNG})", ""]
    lines += tasks.get(task).report_sections(metrics, names, run_dir)
    if samples := metrics.get("generation_samples"):
        lines += ["## Generations", "", f"Greedy answers to {metrics.get('generated')} test prompts "
                  f"(first {len(samples)} shown; the prompt's last 200 tokens).", ""]
        for i, g in enumerate(samples, 1):
            lines += [f"{i}. Prompt:", "", *fenced(g["prompt"], "text"), "", f"   Reference: {g['reference']!r}", "",
                      f"   Prediction: {g['prediction']!r}", ""]
    lines += ["## Stage keys", "", *_table(["stage", "key"], [[s, f"`{k}`"] for s, k in keys.items()]), "",
              "## Time", "", *timing_table(timing), "", "## Spec", "", *fenced(spec_text, "toml"), ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def class_sections(metrics: dict[str, Any], names: list[str] | None, run_dir: Path) -> list[str]:
    """Per-class figures and the confusion matrix (a PNG beside the report)."""
    if not names or "confusion_matrix" not in metrics:
        return []
    confusion_png(metrics["confusion_matrix"], names, run_dir / CONFUSION_PNG)
    return ["## Per class", "", *per_class_table(metrics.get("per_class", {})), "",
            "## Confusion matrix", "", "Rows: true class; columns: predicted class.", "",
            f"![confusion matrix]({CONFUSION_PNG})", ""]

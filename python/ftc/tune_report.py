"""The outputs of `ftc tune` (README: Tuning): `best.toml`, `report.md`, `metric.png`.

`best.toml` is the spec as written with the best trial's values set (comments and `[tune]`
kept), written beside the spec as `<name>.best.toml` (relative data paths still resolve) and
into the study's folder: `ftc build` on it is a cache hit on the best trial's run. The report
has every trial, the parameter importances (Optuna's fANOVA, once two trials have finished),
the metric against trials, and the test-split metrics of the best trial only: the test split
chose nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftc import store


def write(spec: Any, path: Path, study: Any, folder: Path) -> Any:
    from optuna.trial import TrialState

    from ftc.tune import TuneResult, row, trial_text

    trials = [row(t) for t in study.get_trials(deepcopy=False)]
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        return TuneResult(folder, None, trials, None)
    best_trial = study.best_trial
    run = Path(best_trial.user_attrs["run"])
    test = store.read_manifest(run).get("metrics", {}) if (run / store.MANIFEST).is_file() else {}
    best = {"number": best_trial.number, "params": best_trial.params, "value": best_trial.value, "run": str(run),
            "test": {k: v for k, v in test.items() if isinstance(v, int | float)}}
    text = trial_text(spec.text, best_trial.params)
    (folder / "best.toml").write_text(text, encoding="utf-8")
    beside = path.with_name(f"{path.stem}.best.toml")
    beside.write_text(text, encoding="utf-8")
    importance = _importance(study) if len(done) >= 2 else {}
    _plot(trials, spec.tune.metric, spec.tune.minimize, folder / "metric.png")
    (folder / "report.md").write_text(_markdown(spec, trials, best, importance), encoding="utf-8")
    (folder / "trials.json").write_text(json.dumps({"best": best, "trials": trials, "importance": importance},
                                                   indent=2, default=str), encoding="utf-8")
    return TuneResult(folder, best | {"importance": importance}, trials, beside)


def _importance(study: Any) -> dict[str, float]:
    import optuna

    try:
        return {k: round(float(v), 4) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError):  # every trial had the same values: nothing to attribute
        return {}


def _plot(trials: list[dict[str, Any]], metric: str, minimize: bool, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t["state"] == "complete"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter([t["number"] for t in done], [t["value"] for t in done], label="trial")
    best, line = None, []
    for t in done:
        best = t["value"] if best is None or (t["value"] < best if minimize else t["value"] > best) else best
        line.append(best)
    ax.step([t["number"] for t in done], line, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _markdown(spec: Any, trials: list[dict[str, Any]], best: dict[str, Any], importance: dict[str, float]) -> str:
    t = spec.tune
    keys = list(t.space)
    lines = [f"# Tuning {spec.project.name}", "",
             f"{len(trials)} trials, {t.sampler} sampler, {t.pruner} pruning; validation `{t.metric}` "
             f"({'lower' if t.minimize else 'higher'} is better).", "",
             f"**Best: trial {best['number']}**, validation {t.metric} {best['value']:.4g}: "
             + ", ".join(f"`{k}` = {v}" for k, v in best["params"].items()) + ".", "",
             "Test split, best trial only: " + (", ".join(f"{k} {v:.4g}" for k, v in best["test"].items()) or "—"),
             "", f"Run: `{best['run']}`", "", "![metric against trials](metric.png)", "",
             "| trial | state | " + " | ".join(f"`{k}`" for k in keys) + f" | {t.metric} | seconds |",
             "|---|---|" + "---|" * len(keys) + "---|---|"]
    for r in trials:
        value = "" if r["value"] is None else f"{r['value']:.4g}"
        cells = " | ".join(str(r["params"].get(k, "")) for k in keys)
        lines.append(f"| {r['number']} | {r['state']} | {cells} | {value} | {r['seconds'] or ''} |")
    if importance:
        lines += ["", "Parameter importance (fANOVA):", "", "| key | importance |", "|---|---|"]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in importance.items()]
    return "\n".join(lines) + "\n"

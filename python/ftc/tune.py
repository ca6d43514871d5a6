"""`ftc tune`: a hyperparameter search in which every trial is an ordinary, cached build.

    spec + [tune] ─► data stage (once) ─► trial k: the spec with sampled values ─► train stage
                                                   (a cache hit when already run) ─► validation metric
                  ─► tune-v1/<key>/: study.db (Optuna, SQLite), best.toml, report.md, metric.png

The study lives in the store under a key of the spec without `tune.trials`, so running
`ftc tune` again after a kill continues it: finished trials are kept, a trial the kill
interrupted is run again first (its checkpoints resume it), and a raised `trials` adds more.
The space's dotted keys are set in the spec's own TOML (comments kept), which is validated as
any spec; a trial's metric is its validation split's (the last evaluation, or the best with
`keep_best`), and pruning stops a trial whose evaluations trail the others (nothing of a
pruned trial is stored). The test split is read for the best trial alone, from its run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftc import store
from ftc.errors import BuildError, FtcError
from ftc.spec import Dimension, Spec

TUNE = "tune-v1"
Line = Callable[[str], None]


@dataclass
class TuneResult:
    path: Path  # the study's store entry
    best: dict[str, Any] | None  # number, params, value, run, test metrics
    trials: list[dict[str, Any]]
    best_spec: Path | None  # <spec>.best.toml beside the spec


def study_key(spec: Spec, data_key: str) -> str:
    """The study's key: the spec without `tune.trials` (more trials continue the same study) and
    the dataset's key (trials judged on edited data are another study, not mixed into this one)."""
    body = spec.model_dump(mode="json", by_alias=True, exclude={"tune": {"trials"}})
    return store.key_of({"format": TUNE, "spec": body, "data": data_key})


def trial_text(text: str, values: dict[str, Any]) -> str:
    """The spec's TOML with each dotted key set to its value; the `[tune]` table stays (it is
    no part of any stage's key) and so do the comments."""
    import tomlkit

    doc = tomlkit.parse(text)
    for path, value in values.items():
        *parents, leaf = path.split(".")
        table: Any = doc
        for part in parents:
            if part not in table:
                table[part] = tomlkit.table()
            table = table[part]
        table[leaf] = value
    return tomlkit.dumps(doc)


def check_space(spec: Spec, path: Path) -> None:
    """Each end of every range and every choice makes a valid spec: a bad value is an error
    now, naming its key, not a failed trial an hour in."""
    from ftc.specload import spec_from_text

    for key, dim in spec.tune.space.items():
        for v in dim.choice or [*(dim.log_uniform or dim.uniform or dim.integer or ())]:
            spec_from_text(trial_text(spec.text, {key: v}), path)


def suggest(trial: Any, key: str, dim: Dimension) -> Any:
    if dim.choice is not None:
        return trial.suggest_categorical(key, dim.choice)
    if dim.integer is not None:
        return trial.suggest_int(key, *dim.integer)
    low, high = dim.log_uniform or dim.uniform
    return trial.suggest_float(key, low, high, log=dim.log_uniform is not None)


def open_study(spec: Spec, data_key: str, worker: int = 0) -> tuple[Any, Path]:
    """The study of the spec on dataset `data_key`, in the store; `worker` k of `--jobs` samples
    with its own seed (seed + k), or every process would propose the same values."""
    import optuna

    t = spec.tune
    folder = store.home() / TUNE / study_key(spec, data_key)
    folder.mkdir(parents=True, exist_ok=True)
    seed = spec.project.seed + worker
    sampler = (optuna.samplers.TPESampler(seed=seed, n_startup_trials=t.startup_trials)
               if t.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed))
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=t.startup_trials),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1),
              "none": optuna.pruners.NopPruner}[t.pruner]()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from sqlalchemy.exc import OperationalError

    def create() -> Any:
        return optuna.create_study(study_name="ftc", storage=f"sqlite:///{folder / 'study.db'}", sampler=sampler,
                                   pruner=pruner, direction="minimize" if t.minimize else "maximize",
                                   load_if_exists=True)

    for attempt in range(4):
        try:
            return create(), folder
        except OperationalError as e:  # another process (a `--jobs` worker) was creating the same tables
            if "already exists" not in str(e):
                raise
            time.sleep(0.2 * (attempt + 1))
    return create(), folder


def counted(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def requeue_interrupted(study: Any) -> int:
    """Trials a killed `ftc tune` left running: failed, and their values queued again first."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, skip_if_exists=False)
    return len(stale)


def objective(spec: Spec, path: Path, threads: int, progress: Any) -> Callable[[Any], float]:
    import optuna

    from ftc import build
    from ftc.specload import spec_from_text

    t = spec.tune

    def run(trial: Any) -> float:
        values = {k: suggest(trial, k, d) for k, d in t.space.items()}
        trial_spec = spec_from_text(trial_text(spec.text, values), path)
        t0 = time.perf_counter()
        result = build.build(trial_spec, threads=threads, progress=progress, export=False,
                             callbacks=[_pruning(trial, t.metric)])
        value = metric_of(result.path, t.metric, t.minimize, trial_spec.train.keep_best)
        trial.set_user_attr("run", str(result.path))
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        trial.set_user_attr("cached", result.cache_hit)
        if value is None:
            raise optuna.TrialPruned(f"the run has no validation `{t.metric}`")
        return value

    return run


def metric_of(run: Path, metric: str, minimize: bool, keep_best: bool) -> float | None:
    """The run's validation metric: its last evaluation's, or its best with `keep_best`."""
    history = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["log_history"]
    values = [float(e[f"eval_{metric}"]) for e in history if isinstance(e.get(f"eval_{metric}"), int | float)]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    return (min(values) if minimize else max(values)) if keep_best else values[-1]


def _pruning(trial: Any, metric: str) -> Any:
    """A Trainer callback: each evaluation reported to the study, and the trial stopped (by
    raising, so nothing of it is stored) when the pruner says it trails. The evaluation at the
    last step is never pruned: the training it would save is done, and the run is a result."""
    import optuna
    from transformers import TrainerCallback

    class Prune(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001, ANN201
            value = (metrics or {}).get(f"eval_{metric}")
            if isinstance(value, int | float):
                trial.report(float(value), state.global_step)
                if state.global_step < state.max_steps and trial.should_prune():
                    raise optuna.TrialPruned(f"step {state.global_step}: {metric} {value:.4g} trails")

    return Prune()


def row(t: Any) -> dict[str, Any]:
    return {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
            "seconds": t.user_attrs.get("seconds"), "cached": t.user_attrs.get("cached"), "run": t.user_attrs.get("run")}


def work(spec: Spec, path: Path, study: Any, threads: int, progress: Any, line: Line) -> None:
    """Runs trials until the study has `tune.trials` finished ones. Several processes may:
    each stops once the finished and running trials make the count, so none overshoots."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    left = spec.tune.trials - counted(study)
    if left <= 0:
        return

    def report(study: Any, t: Any) -> None:
        r = row(t)
        shown = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in r["params"].items())
        value = "—" if r["value"] is None else f"{r['value']:.4g}"
        line(f"trial {r['number']:>3} · {r['state']:<8} · {spec.tune.metric} {value:<8} · {shown}"
             + (f" · {r['seconds']:.0f}s" if r["seconds"] else "") + (" · cached" if r["cached"] else ""))

    study.optimize(objective(spec, path, threads, progress), n_trials=left, catch=(BuildError,),
                   callbacks=[MaxTrialsCallback(spec.tune.trials, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                                          TrialState.RUNNING)),
                              report], gc_after_trial=True)


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def tune(spec: Spec, path: Path, *, threads: int = 0, jobs: int = 1, progress: Any = None,
         line: Line = print) -> TuneResult:
    """The whole study: the data stage once, trials (in `jobs` processes), then the outputs."""
    from ftc import prep

    if spec.tune is None or not spec.tune.space:
        raise FtcError(f"{path}: no `[tune]` search space", hint="add e.g. `[tune]` with "
                       "`\"train.learning_rate\" = { log_uniform = [1e-5, 1e-3] }` and `trials = 8`")
    if spec.data.split.valid <= 0:
        raise FtcError("`ftc tune` chooses by the validation split, and `data.split.valid` is 0",
                       hint="set `data.split.valid` above 0 (the test split is never used to choose)")
    check_space(spec, path)
    data = prep.prep(spec, threads=threads, progress=progress)  # once, before any trial
    study, folder = open_study(spec, data.key)
    if requeue := requeue_interrupted(study):
        line(f"{requeue} trial(s) interrupted before: run again first")
    helpers = _helpers(path, jobs, threads, folder) if jobs > 1 else []
    try:
        work(spec, path, study, threads, progress, line)
    finally:
        for p in helpers:
            p.wait()
    from ftc import tune_report

    return tune_report.write(spec, path, study, folder)


def _helpers(path: Path, jobs: int, threads: int, folder: Path) -> list[subprocess.Popen[bytes]]:
    """`jobs − 1` more processes working on the same study (SQLite), cores shared between all;
    each logs to `worker-<k>.log` in the study's folder."""
    each = max(1, (os.cpu_count() or 1) // jobs)
    env = os.environ | {"OMP_NUM_THREADS": str(each)}
    procs = []
    for k in range(1, jobs):
        log = open(folder / f"worker-{k}.log", "wb")  # noqa: SIM115  the process writes it until it exits
        procs.append(subprocess.Popen([sys.executable, "-m", "ftc.cli", "tune", str(path), "--worker", str(k),
                                       "--threads", str(threads or each)], env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs

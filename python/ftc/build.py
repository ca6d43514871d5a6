"""`ftc build` and `ftc plan`: the stages in order, each skipped when its key is in the store.

    data (ftc.prep) ─► train (ftc.train: HF Trainer) ─► evaluate (test split) ─► report

The train key hashes the data key, every file of the base model, `[model]`, `[train]`,
`[eval]` and the seed (README: The store): changing only the learning rate reuses the dataset,
changing only `[export]` retrains nothing. Checkpoints live in `$FTC_HOME/work/<key>/` until
the run is complete, so a build killed mid-training resumes from its last checkpoint.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ftc import __version__, _data, distill, distributed, forgetting, rows, store, tasks, train, vocab
from ftc import prep as data_stage
from ftc.errors import BuildError
from ftc.model import check_remote_code, resolve_model
from ftc.spec import Spec

RUNS = "runs-v1"
# Bumped when ftc itself changes what training produces from the same inputs, so a run built by
# an older ftc is not reused (2: the seed is set before a new head is initialised; 3: classifiers
# train on shuffled batches, not length-grouped ones; packed causal-LM batches count examples; the
# last checkpoint is the model unless early stopping or `keep_best` asks for the best one; 4:
# AdamW is torch's fused kernel, full and freeze keep float32 weights under bf16/fp16 autocast;
# 5: classification defaults to the linear schedule without warmup; 6: with gradient accumulation,
# a head's batch-mean loss is divided over the accumulated steps and an EWC penalty counts once
# per step).
TRAIN_RECIPE = 6


@dataclass
class StagePlan:
    stage: str
    key: str
    cached: bool
    why: str


@dataclass
class BuildResult:
    data: data_stage.PrepResult
    key: str
    path: Path
    cache_hit: bool
    manifest: dict[str, Any]
    seconds: float
    export: Any = None  # the export stage's `ftc.export.ExportResult`, when `[export] onnx = true`


def train_inputs(spec: Spec, data_key: str, model_dir: Path, threads: int = 0, world_size: int = 1,
                 retain_key: str | None = None, teacher: distill.Teacher | None = None) -> dict[str, Any]:
    """The train key's inputs. Several processes add how they trained: the global batch (world
    size × per-device batch × accumulation) sets the result, so a run of 2 processes of batch 4
    trains as one process of batch 8 would (README: More than one process), but each is its own
    entry: float sums in another order are not the same weights."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file() and ".cache" not in p.parts)
    hashes = _data.hash_files([str(f) for f in files], threads)
    t = spec.train
    several = {"distributed": {"world_size": world_size, "global_batch": world_size * t.batch_size * t.grad_accum,
                               **t.distributed.model_dump(mode="json")}} if world_size > 1 else {}
    # `[train.forgetting]` only where it has retained data: every other run keeps the key it had
    forgetting = {"retain": retain_key} if t.forgetting.retain else {}
    teacher_files = {"teacher": sorted(teacher.files.values())} if teacher else {}
    return several | forgetting | teacher_files | {
        "format": RUNS,
        "recipe": TRAIN_RECIPE,
        "data": data_key,
        "base": {str(f.relative_to(model_dir)): h for f, h in zip(files, hashes, strict=True)},
        "model": spec.model.model_dump(mode="json"),
        # trackers do not change the model; one process ignores `distributed`
        "train": spec.train.model_dump(mode="json", exclude={"report_to", "distributed"} |
                                       (set() if t.forgetting.retain else {"forgetting"}) |
                                       (set() if t.distill else {"distill"}) |
                                       (set() if t.preference else {"preference"})),
        "eval": spec.eval.model_dump(mode="json", exclude=set() if spec.eval.judge else {"judge"}),
        "seed": spec.project.seed,
    }


def plan(spec: Spec, threads: int = 0) -> list[StagePlan]:
    """Each stage: cached or to build, and which inputs changed since the last entry built
    for this project."""
    *_, inputs = data_stage.resolve_inputs(spec, threads)
    data_key = store.key_of(inputs)
    stages = [_stage_plan("data", store.DATASETS, data_key, inputs, spec.project.name)]
    retain = forgetting.retain_spec(spec)
    t_inputs = train_inputs(spec, data_key, resolve_model(spec.model.base, spec.root), threads,
                            retain_key=data_stage.dataset_key(retain, threads) if retain else None,
                            teacher=distill.resolve_teacher(spec, threads) if spec.train.distill else None)
    stages.append(_stage_plan("train", RUNS, store.key_of(t_inputs), t_inputs, spec.project.name))
    if spec.export.onnx:
        from ftc import export

        e_inputs = export.export_inputs(store.key_of(t_inputs), spec.export)
        stages.append(_stage_plan("export", export.ARTIFACTS, store.key_of(e_inputs), e_inputs, spec.project.name))
    from ftc.tasks.judge import judge_spec

    if (judge := judge_spec(spec)) is not None:  # a judge spec builds first when missing
        stages = [replace(st, stage=f"judge {st.stage}") for st in plan(judge, threads)] + stages
    return stages


def _stage_plan(stage: str, bucket: str, key: str, inputs: dict[str, Any], name: str) -> StagePlan:
    if store.lookup(bucket, key):
        return StagePlan(stage, key, True, "inputs unchanged")
    previous = [e for e in store.entries() if e.bucket == bucket and e.name == name]
    if not previous:
        return StagePlan(stage, key, False, "never built")
    last = max(previous, key=lambda e: e.created)
    old = store.read_manifest(last.path).get("inputs", {})
    changed = _diff(old, inputs)
    return StagePlan(stage, key, False, "changed: " + ", ".join(changed[:6]) + (" …" if len(changed) > 6 else ""))


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
        return out
    return [] if old == new else [path or "(all)"]


def build(spec: Spec, *, threads: int = 0, progress: data_stage.Progress | None = None,
          force: bool = False, callbacks: Sequence[Any] = (), export: bool = True) -> BuildResult | None:
    """The build; None on a rank other than 0 of several processes, which only trains.
    `callbacks`: more Trainer callbacks (`ftc tune`'s pruning); `export=False` stops before
    the export stage."""
    try:
        result = _build_run(spec, threads=threads, progress=progress, force=force, callbacks=callbacks)
    finally:
        distributed.finish()
    if result is None or not export:
        return result
    # ── the export stage: keyed by the train key + `[export]`, so a changed `[export]`
    # table re-exports the cached run and retrains nothing.
    if spec.export.onnx:
        from ftc import export

        run = export.find_run(result.path)
        result.export = export.export(run, spec.export, spec_text=spec.text, progress=progress, force=force)
    return result


def _build_run(spec: Spec, *, threads: int = 0, progress: data_stage.Progress | None = None,
               force: bool = False, callbacks: Sequence[Any] = ()) -> BuildResult | None:
    t0 = time.perf_counter()
    w = distributed.world()
    # before any work: a QLoRA spec on CPU fails here, not after prep
    train.check_method(spec, tasks.get(spec.model.task), w.size)
    model_dir = distributed.main_first(w, lambda: resolve_model(spec.model.base, spec.root))
    check_remote_code(model_dir, spec.model.trust_remote_code)
    data = distributed.main_first(w, lambda: data_stage.prep(spec, threads=threads,
                                                             progress=progress if w.main else None))
    tasks.get(spec.model.task).check_data(spec, data.manifest)
    retain_spec = forgetting.retain_spec(spec)
    retain = None if retain_spec is None else distributed.main_first(
        w, lambda: data_stage.prep(retain_spec, threads=threads, progress=progress if w.main else None))
    teacher = distill.resolve_teacher(spec, threads) if spec.train.distill else None
    inputs = train_inputs(spec, data.key, model_dir, threads, w.size, retain.key if retain else None, teacher)
    key = store.key_of(inputs)
    alone = None  # the student trained without the teacher: its own cached run, for the report
    if spec.train.distill and spec.train.distill.compare:
        alone = _build_run(distill.compare_spec(spec), threads=threads, progress=progress, force=False)
    work = store.home() / store.WORK / key
    # Several processes: rank 0 owns the store entry; the others train beside it, or stop when
    # the run is cached.
    cached = distributed.from_main(w, None if w.size == 1 else store.lookup(RUNS, key) is not None and not force)
    if not w.main:
        if not cached:
            _train(spec, data, retain, teacher, None, model_dir, inputs, key, work, None, None, w, callbacks)
        return None

    def make(tmp: Path) -> dict[str, Any]:
        # Held while training: `ftc cache gc` leaves the checkpoints and the dataset alone.
        with store.lock(store.WORK, key), store.lock(store.DATASETS, data.key, shared=True):
            work.mkdir(parents=True, exist_ok=True)
            try:
                manifest = _train(spec, data, retain, teacher, alone.manifest["metrics"] if alone else None, model_dir,
                                  inputs, key, work, tmp, progress, w, callbacks)
            except DivergedError:
                shutil.rmtree(work, ignore_errors=True)  # its checkpoints hold the diverged weights
                raise
        manifest["seconds"] = round(time.perf_counter() - t0, 3)
        return manifest

    path, hit = store.build_once(RUNS, key, make, force=force)
    if not hit:
        shutil.rmtree(work, ignore_errors=True)
    return BuildResult(data, key, path, hit, store.read_manifest(path), time.perf_counter() - t0)


def _train(spec: Spec, data: data_stage.PrepResult, retain: data_stage.PrepResult | None,
           teacher: distill.Teacher | None, alone: dict[str, Any] | None, model_dir: Path, inputs: dict[str, Any],
           key: str, work: Path, out: Path | None, progress: data_stage.Progress | None, w: distributed.World,
           callbacks: Sequence[Any] = ()) -> dict[str, Any] | None:
    """Trains, then (rank 0) evaluates and writes the run into `out`; another rank of several
    processes only trains its shard, and returns None. `retain`: the dataset of
    `[train.forgetting]`'s general data, evaluated before and after, replayed, or EWC's;
    `teacher`: `[train.distill]`'s, `alone` the metrics of the student trained without it."""
    from transformers import AutoTokenizer

    m = data.manifest
    task = tasks.get(spec.model.task)
    labels = m.get("labels")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=spec.model.trust_remote_code)
    new_tokens = vocab.add_to(tokenizer, model_dir, vocab.spec_tokens(spec))
    pad_id = rows.pad_id(tokenizer)
    if pad_id is None:
        raise BuildError(f"{model_dir}: the tokenizer has neither a pad nor an eos token to pad batches with")
    train_ds, valid_ds, test_ds = (rows.load_split(data.path, m, s) for s in ("train", "valid", "test"))
    if train_ds is None:
        raise BuildError("the training split is empty: nothing to train on")
    collator = task.collator(pad_id)
    from transformers import set_seed

    set_seed(spec.project.seed)  # before loading: a new head (classification) is initialised from it

    def load(path: Path) -> Any:
        model = train.load_model(spec, task, path, labels, pad_id)
        if path == model_dir:  # the base, with rows for the tokens the spec adds (an adapter trains them)
            vocab.grow(model, new_tokens, len(tokenizer))
        return model

    model = load(model_dir)
    f = spec.train.forgetting
    forgot: dict[str, Any] = {}  # what `[train.forgetting]` measured and did
    if retain is not None:
        if w.main:
            forgot["base"] = forgetting.evaluate(spec, task, model, tokenizer, retain, collator, labels)
        train_ds, forgot["replayed_examples"] = forgetting.with_replay(train_ds, retain, f.replay, spec.project.seed)
    fisher = forgetting.base_fisher(spec, task.name, model, retain, collator, inputs["base"], progress) \
        if f.ewc and retain else None
    eval_ds = test_ds or valid_ds
    distilled: dict[str, Any] = {}
    if teacher is not None:
        rows_key = store.key_of([data.key, retain.key, f.replay]) if retain and f.replay else data.key
        preds, width, distilled["teacher"] = distill.prepare(spec, task, teacher, rows_key, train_ds, eval_ds,
                                                             collator, tokenizer, labels, pad_id, progress)
        distilled["student_alone"] = alone
    base_metrics = task.evaluate(spec, model, tokenizer, eval_ds, collator, labels) \
        if spec.eval.compare_base and eval_ds and w.main else None
    splits = task.before_training(spec, model, tokenizer, {"train": train_ds, "valid": valid_ds, "test": test_ds},
                                  data.key, inputs["base"], pad_id, progress)
    train_ds, valid_ds, test_ds = splits["train"], splits["valid"], splits["test"]
    eval_ds = test_ds or valid_ds
    train_ds, train_collator = task.train_data(spec, train_ds, pad_id)
    if teacher is not None:
        train_ds, train_collator = distill.WithTeacher(train_ds, preds, width), distill.TeacherCollator(train_collator)
    bs = spec.train.batch_size
    model = train.apply_method(model, spec, task, [t.id for t in new_tokens])
    penalty = forgetting.penalty(model, fisher, f.ewc.lambda_) if fisher is not None and f.ewc else None
    n_trainable, n_total = train.trainable(model)
    steps_per_epoch = -(-len(train_ds) // (bs * spec.train.grad_accum * w.size))
    args = train.training_arguments(spec, work, valid_ds is not None, steps_per_epoch, task.sampling(spec), w.size)
    valid_ds = task.validation_data(valid_ds) if valid_ds is not None else None
    trainer = train.make_trainer(spec, task, model, args, train_ds, valid_ds, train_collator, task.class_weights(m),
                                 progress, callbacks, penalty)
    resume = distributed.from_main(w, train.last_checkpoint(work))  # every rank resumes the same step
    t0 = time.perf_counter()
    with train.tracker_env(spec, work):
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - t0
    if w.size > 1 and spec.train.distributed.strategy != "ddp":  # sharded: every rank gives its share
        model = distributed.gathered(trainer, work / "final", model_dir, w, load)
    else:
        model = trainer.model
    if out is None:
        return None
    _check_finite(spec, model, trainer.state.log_history, result.training_loss, "training")
    metrics = task.evaluate(spec, model, tokenizer, eval_ds, collator, labels) if eval_ds else {}
    _check_finite(spec, None, [], metrics.get("loss"), "evaluation")
    if retain is not None:
        forgot["tuned"] = forgetting.evaluate(spec, task, model, tokenizer, retain, collator, labels)
    (out / "model").mkdir()
    model.save_pretrained(out / "model")  # PEFT's own format for adapters
    for tracked, kept in (("runs", "tensorboard"), ("mlruns", "mlruns"), ("wandb", "wandb")):  # trackers' files
        if (work / tracked).is_dir():
            shutil.copytree(work / tracked, out / kept)
    tokenizer.save_pretrained(out / "model")
    vocab.save(out / "model", new_tokens, len(tokenizer))
    # What export needs without the spec's directory: the spec as written and the template it chose.
    (out / "spec.toml").write_text(spec.text, encoding="utf-8")
    if template := m.get("template_source"):
        (out / "model" / "ftc_template.jinja").write_text(template, encoding="utf-8")
    tokens = _train_tokens(m, spec)
    # Where the weights were when training ended, read off the model itself: a GPU machine
    # whose run trained on its CPU shows it here, not only in a slow tokens/s.
    p0 = next(model.parameters())
    # of which the Trainer's validation passes (a plain script without a validation split has none)
    evals = sum(e.get("eval_runtime", 0.0) for e in trainer.state.log_history)
    timing = {"train_seconds": round(seconds, 3), "validation_seconds": round(evals, 3), "steps": result.global_step,
              "device": str(p0.device), "dtype": str(p0.dtype).removeprefix("torch."),
              "tokens_per_second": round(tokens / seconds, 1) if seconds else None, "train_tokens": tokens,
              "resumed_from": resume.name if resume else None}
    log_history = trainer.state.log_history
    from ftc import model_card, report

    report.write_report(out, spec_text=spec.text,
                        keys={"data": data.key, "train": key}, metrics=metrics, base_metrics=base_metrics,
                        log_history=log_history, timing=timing, task=task.name, names=labels,
                        forgetting=forgot or None, distilled=distilled or None)
    model_card.write(out / "model", out, inputs, m, model_dir)  # README.md: the Hub's model card
    return {
        "key": key,
        "name": spec.project.name,
        "format": RUNS,
        "ftc_version": __version__,
        "created": time.time(),
        "task": task.name,
        "method": spec.train.method,
        "labels": labels,
        "data_key": data.key,
        "base": str(model_dir),
        "trust_remote_code": spec.model.trust_remote_code,
        "trainable_parameters": n_trainable,
        "parameters": n_total,
        "metrics": metrics,
        "base_metrics": base_metrics,
        "forgetting": forgot or None,
        "distill": distilled or None,
        "timing": timing,
        "inputs": inputs,
    }


class DivergedError(BuildError):
    """Training diverged: a loss or a weight is NaN or infinite."""


def _check_finite(spec: Spec, model: Any, log_history: list[dict[str, Any]], loss: float | None, stage: str) -> None:
    """A NaN or infinite loss (or trained weight) fails the run: the Trainer finishes such a run
    without complaint, and a cached model of NaNs would be reused as good."""
    bad = [(e.get("step"), k, e[k]) for e in log_history for k in ("loss", "eval_loss", "grad_norm")
           if isinstance(e.get(k), float) and not math.isfinite(e[k])]
    where = f"at step {bad[0][0]} (`{bad[0][1]}` = {bad[0][2]})" if bad else None
    if where is None and loss is not None and not math.isfinite(loss):
        where = f"(loss = {loss})"
    if where is None and model is not None:
        import torch

        if any(not torch.isfinite(p).all() for p in model.parameters() if p.requires_grad):
            where = "(trained weights hold NaN or infinite values)"
    if where is not None:
        t = spec.train
        raise DivergedError(
            f"{stage} diverged {where}: nothing was stored (learning_rate = {t.learning_rate:g}, lora.alpha = "
            f"{t.lora.alpha:g}, precision = {t.precision})",
            hint="lower `train.learning_rate` (or `train.lora.alpha`), keep `train.max_grad_norm` above 0, or "
                 "train in `precision = \"fp32\"`")


def _train_tokens(m: dict[str, Any], spec: Spec) -> int:
    epochs = spec.train.epochs if spec.train.max_steps is None else 1
    return int(m["stats"]["splits"]["train"]["tokens"] * epochs)

"""The train stage: a dataset from the store + a base model + a method → a fine-tuned model.

The engine is the HF Trainer, so `torchrun` / `accelerate launch` (DDP, FSDP, DeepSpeed) run
the same spec unchanged. ftc supplies what the Trainer does not know:

- Packed rows train exactly: each row carries `position_ids` that restart at every example
  and no attention mask, and attention runs per example: varlen flash attention on a GPU
  with flash-attn, else `ftc.attention` (torch's varlen kernel or SDPA per segment), so attention
  never crosses examples and costs Σ len², not row_len²; the collator also removes the label
  of each example's first token, which only the previous example could have predicted. The
  per-token loss of a packed row equals each example's alone.
- The task (`ftc.tasks`) gives the model class and head, PEFT's task type, the collator, the
  sampling, the validation metrics and the evaluation.
- The methods of the spec (full, freeze, LoRA, DoRA, QLoRA, IA3, prompt and prefix tuning)
  as PEFT configs or frozen parameters, and a class-weighted loss where the task has class
  weights.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftc import vocab
from ftc.errors import BuildError, FtcWarning
from ftc.spec import Spec

if TYPE_CHECKING:
    from ftc.tasks import Task


# ── the model and the method ─────────────────────────────────────────────────────────────────

def check_method(spec: Spec, task: Task, world_size: int = 1) -> None:
    """What must hold before any work starts."""
    task.check_method(spec)
    if world_size > 1:
        from ftc import distributed

        distributed.check(spec.train.distributed, spec.train.method)
    method = spec.train.method
    if method == "qlora":
        import torch

        if not torch.cuda.is_available():
            raise BuildError("`train.method = \"qlora\"` loads the base in 4-bit with bitsandbytes, which needs a "
                             "CUDA GPU; none is available here",
                             hint="use `lora` (or `dora`) on this machine, or run on a CUDA machine")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise BuildError("`train.method = \"qlora\"` needs bitsandbytes", hint="pip install bitsandbytes") from None
    if spec.train.optimizer == "paged-adamw-8bit":
        import torch

        if not torch.cuda.is_available():
            raise BuildError("`train.optimizer = \"paged-adamw-8bit\"` needs a CUDA GPU",
                             hint="use `adamw` or `adafactor` here")


def precision(spec: Spec) -> str:
    """`auto`: bf16 where the GPU supports it, else fp32 (CPU trains in fp32)."""
    import torch

    p = spec.train.precision
    if p != "auto":
        if p in ("bf16", "fp16") and not torch.cuda.is_available():
            raise BuildError(f"`train.precision = \"{p}\"` needs a GPU here", hint="use `auto` or `fp32` on CPU")
        return p
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def weights_dtype(method: str, prec: str) -> str | None:
    """The dtype the base is loaded in; None: float32. Methods that train the base's own weights
    (`full`, `freeze`) keep them in float32 and compute in bf16/fp16 under the Trainer's autocast:
    weights held in bf16 lose every update smaller than their last bit, an fp16 model cannot
    take the Trainer's gradient scaling, and a frozen layer saved from a bf16 copy is no longer
    the base's. Adapter methods load the frozen base in half precision; PEFT keeps the adapters
    in float32.

    >>> weights_dtype("full", "bf16"), weights_dtype("lora", "bf16"), weights_dtype("lora", "fp32")
    (None, 'bfloat16', None)
    """
    if prec == "fp32" or method in ("full", "freeze"):
        return None
    return "bfloat16" if prec == "bf16" else "float16"


def load_model(spec: Spec, task: Task, model_dir: Path, labels: list[str] | None, pad_id: int | None) -> Any:
    """The base model with the task's head, in the spec's precision (4-bit for QLoRA)."""
    import torch

    kwargs: dict[str, Any] = {"trust_remote_code": spec.model.trust_remote_code}  # off unless the spec opts in
    prec = precision(spec)
    if dtype := weights_dtype(spec.train.method, prec):
        kwargs["dtype"] = getattr(torch, dtype)
    if spec.train.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if prec == "bf16" else torch.float16)
    try:
        model = task.load_model(model_dir, labels, pad_id, **kwargs)
    except pickle.UnpicklingError as e:  # torch's weights-only loader refused a pickled `.bin`
        raise BuildError(f"{model_dir}: its PyTorch pickle holds more than tensors, and loading it would run code: "
                         f"{str(e).splitlines()[0][:160]}",
                         hint="use a model saved as safetensors (`save_pretrained(..., safe_serialization=True)`)") \
            from None
    except (OSError, ValueError) as e:
        raise BuildError(f"cannot load the base model from {model_dir}: {str(e).splitlines()[0]}") from None
    model.config.use_cache = False  # a cache would turn off the packed-sequence mask
    return model


def load_head(auto: Any, model_dir: Path, labels: list[str] | None, pad_id: int | None, **kwargs: Any) -> Any:
    """The base with a new task head (`auto`: transformers' Auto class; `labels`: the head's
    classes, None for a head of fixed size). transformers reports the head as missing weights
    in a table on every load; that is expected here, so only other missing weights are
    reported, in one line."""
    import warnings

    from transformers.utils import logging as hf_logging

    if labels is not None:
        kwargs |= {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                   "label2id": {n: i for i, n in enumerate(labels)}}
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = auto.from_pretrained(model_dir, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_id
    head = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} - {model.base_model_prefix}
    if missing := sorted(k for k in info.get("missing_keys", ()) if k.split(".")[0] not in head):
        warnings.warn(f"{model_dir}: weights missing from the checkpoint, initialised at random: "
                      f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}", FtcWarning, stacklevel=2)
    return model


def apply_method(model: Any, spec: Spec, task: Task, new_ids: list[int] | None = None) -> Any:
    """The spec's method → the model to train (a PEFT model or the base with some parameters
    frozen). `new_ids`: the rows of added tokens, which an adapter trains beside its own weights
    (PEFT's trainable tokens: only those rows, of the input embeddings and the output head)."""
    t = spec.train
    method = t.method
    if method == "full":
        return model
    if method == "freeze":
        return freeze_all_but_top(model, t.trainable_layers)
    import peft

    task_type = getattr(peft.TaskType, task.peft_task_type)
    if method in ("lora", "dora", "qlora"):
        if method == "qlora":
            model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)
        config: Any = peft.LoraConfig(task_type=task_type, r=t.lora.r, lora_alpha=t.lora.alpha,
                                      lora_dropout=t.lora.dropout, target_modules=t.lora.target_modules,
                                      use_dora=method == "dora",
                                      trainable_token_indices=vocab.trainable_rows(model, new_ids or []))
    elif method == "ia3":
        config = peft.IA3Config(task_type=task_type)
    elif method == "prompt-tuning":
        config = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=t.prompt.num_virtual_tokens)
    else:
        config = peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=t.prompt.num_virtual_tokens)
    try:
        return peft.get_peft_model(model, config)
    except ValueError as e:
        raise BuildError(f"`train.method = \"{method}\"`: PEFT cannot apply it to this model: {e}",
                         hint="set `train.lora.target_modules` to module names of this model") from None


def _blocks(model: Any) -> list[Any]:
    """The repeated transformer blocks: the longest ModuleList in the model."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise BuildError("`train.method = \"freeze\"`: cannot find the model's layers")
    return list(max(lists, key=len))


def freeze_all_but_top(model: Any, n: int) -> Any:
    """Trains the top `n` blocks, the final norm and the head; freezes the rest."""
    for p in model.parameters():
        p.requires_grad = False
    blocks = _blocks(model)
    for block in blocks[-n:]:
        for p in block.parameters():
            p.requires_grad = True
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    # Everything after the blocks: the final norm, the pooler, the head (not tied embeddings).
    after = False
    for module in model.modules():
        if module is blocks[-1]:
            after = True
            continue
        if after and not any(id(p) in in_blocks for p in module.parameters(recurse=False)):
            for p in module.parameters(recurse=False):
                if id(p) not in embeddings:
                    p.requires_grad = True
    for name, p in model.named_parameters():
        if re.search(r"(^|\.)(lm_head|classifier|score|pooler)\.", name) and id(p) not in embeddings:
            p.requires_grad = True
    return model


def layer_groups(model: Any, lr: float, decay: float, weight_decay: float) -> list[dict[str, Any]]:
    """Layer-wise learning-rate decay: the top block trains at `lr`, each block below at
    `decay` times the one above, embeddings at the lowest rate; the rest at `lr`."""
    blocks = _blocks(model)
    depth = {id(p): len(blocks) - 1 - i for i, b in enumerate(blocks) for p in b.parameters()}
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    groups: dict[float, list[Any]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        d = len(blocks) if id(p) in embeddings else depth.get(id(p), 0)
        groups.setdefault(lr * decay**d, []).append(p)
    return [{"params": ps, "lr": g, "weight_decay": weight_decay} for g, ps in sorted(groups.items())]


def trainable(model: Any) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


# ── the Trainer ──────────────────────────────────────────────────────────────────────────────

def training_arguments(spec: Spec, out: Path, has_eval: bool, steps_per_epoch: int, sampling: str = "random",
                       world_size: int = 1) -> Any:
    """`sampling`: the task's (`random`, or `group_by_length` batches of similar lengths);
    `world_size`: processes training together (their strategy's arguments, when above 1)."""
    import torch
    from transformers import TrainingArguments

    from ftc import distributed

    t = spec.train
    prec = precision(spec)
    early = t.early_stopping
    # The last checkpoint is the model, as in a plain Trainer script: restoring the best one by a
    # small validation split picks noise (chat-sft: the epoch-1 checkpoint, worse on test).
    best = has_eval and (t.keep_best or early is not None)
    # Keeping the best model means a checkpoint at every evaluation: the two schedules must
    # agree, so one given alone sets the other.
    eval_steps = t.eval_steps or t.save_steps
    save_steps = t.save_steps or t.eval_steps
    if best and eval_steps and save_steps % eval_steps:
        raise BuildError(f"`train.save_steps = {save_steps}` is not a multiple of `train.eval_steps = {eval_steps}`: "
                         "the best model is kept from the checkpoints, so each evaluation needs one",
                         hint=f"set `train.save_steps = {eval_steps * max(1, save_steps // eval_steps)}`")
    strategy = "steps" if eval_steps else "epoch"
    fields = getattr(TrainingArguments, "__dataclass_fields__", {})
    # `adamw`: the Trainer's own default AdamW, as a plain script gets it (torch's fused kernel
    # on torch 2.8+; the per-tensor loop cost a short-text classifier a fifth of its training time)
    optim = {"adamw": fields["optim"].default, "adafactor": "adafactor", "sgd": "sgd",
             "paged-adamw-8bit": "paged_adamw_8bit"}[t.optimizer]
    # transformers renamed the argument within 5.x (5.17 knows only the old name; later ones
    # warn that it is deprecated): the name this version has.
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    return TrainingArguments(
        output_dir=str(out),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=math.ceil(t.warmup_ratio * _total_steps(spec, steps_per_epoch)),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=optim,
        bf16=prec == "bf16",
        fp16=prec == "fp16",
        **{checkpointing: t.gradient_checkpointing},
        seed=spec.project.seed,
        data_seed=spec.project.seed,
        eval_strategy=strategy if has_eval else "no",
        eval_steps=eval_steps,
        save_strategy=strategy,
        save_steps=save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=best,
        metric_for_best_model=f"eval_{early.metric if early else 'loss'}" if best else None,
        greater_is_better=(early is not None and early.metric != "loss") if best else None,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to=trackers(spec),
        remove_unused_columns=False,
        train_sampling_strategy=sampling,
        length_column_name="length",
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
        save_only_model=False,
        include_num_input_tokens_seen="all",  # tokens/s on the progress line
        **(distributed.arguments(t.distributed) if world_size > 1 else {}),
    )


def _total_steps(spec: Spec, steps_per_epoch: int) -> int:
    t = spec.train
    return t.max_steps or math.ceil(steps_per_epoch * t.epochs)


TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow-skinny")}  # name → (module, what to pip install)


def trackers(spec: Spec) -> list[str]:
    """`train.report_to` for the Trainer. TensorBoard, the default, is skipped when it is not
    installed (as before); a tracker asked for by name must be installed."""
    import importlib.util

    out = []
    for name in spec.train.report_to:
        module, package = TRACKERS[name]
        if importlib.util.find_spec(module) is not None:
            out.append(name)
        elif name != "tensorboard" or "report_to" in spec.train.model_fields_set:
            raise BuildError(f"`train.report_to` names {name}, which is not installed",
                             hint=f"pip install {package}, or remove \"{name}\" from `train.report_to`")
    return out


@contextlib.contextmanager
def tracker_env(spec: Spec, work: Path) -> Iterator[None]:
    """Offline trackers writing into the run's work directory (kept with the run), unless the
    environment already says where: W&B in offline mode, MLflow's file store."""
    import os

    env = {}
    if "wandb" in spec.train.report_to:
        env |= {"WANDB_MODE": "offline", "WANDB_DIR": str(work), "WANDB_PROJECT": spec.project.name}
    if "mlflow" in spec.train.report_to:
        # MLflow 3 keeps the file store (no server, no database) behind an opt-in
        env |= {"MLFLOW_TRACKING_URI": (work / "mlruns").as_uri(), "MLFLOW_EXPERIMENT_NAME": spec.project.name,
                "MLFLOW_ALLOW_FILE_STORE": "true"}
    added = {k: v for k, v in env.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def make_trainer(spec: Spec, task: Task, model: Any, args: Any, train_ds: Any, eval_ds: Any, collator: Callable,
                 class_weights: list[float] | None, progress: Callable[..., None] | None = None,
                 callbacks: Sequence[Any] = (), penalty: Callable[[], Any] | None = None) -> Any:
    """`progress`: ftc's display (`(phase, advance, total, note=, restart=)`), which then
    replaces the Trainer's bars and printed log dicts (the dicts go to the `ftc.train` log);
    `callbacks`: more Trainer callbacks; `penalty`: a term added to every training loss (EWC's).
    Batches that carry a teacher's predictions (`ftc.distill`) mix in the distillation loss."""
    from ftc import distill
    import torch
    from transformers import EarlyStoppingCallback, Trainer
    from transformers.trainer_callback import ProgressCallback

    t = spec.train

    class FtcTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            teacher = (inputs.pop("teacher_ids"), inputs.pop("teacher_logp")) if "teacher_ids" in inputs else None
            if task.own_loss:
                loss, outputs = task.loss(spec, model, inputs)
            elif class_weights is None and teacher is None:
                loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
            else:
                labels = inputs.pop("labels")
                outputs = model(**inputs, labels=labels if class_weights is None else None)
                if class_weights is None:
                    loss = outputs.loss
                else:
                    weight = torch.tensor(class_weights, device=outputs.logits.device, dtype=outputs.logits.dtype)
                    loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=weight)
                if teacher is not None and t.distill is not None:
                    kd = distill.kd_loss(outputs.logits, labels, *teacher, t.distill.loss, t.distill.temperature)
                    loss = t.distill.alpha * kd + (1 - t.distill.alpha) * loss
            if penalty is not None and model.training:  # training's objective; validation reports the task's loss
                share = penalty().to(loss.device, loss.dtype)
                if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
                    share = share / self.current_gradient_accumulation_steps  # the loss is already the step's
                loss = loss + share
            return (loss, outputs) if return_outputs else loss

        def create_optimizer(self, model=None):  # noqa: ANN001
            if t.layer_lr_decay is None or self.optimizer is not None:
                return super().create_optimizer(model) if model is not None else super().create_optimizer()
            groups = layer_groups(self.model, t.learning_rate, t.layer_lr_decay, t.weight_decay)
            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, self.model)
            kwargs.pop("lr", None)
            self.optimizer = cls(groups, **kwargs)
            return self.optimizer

    callbacks = list(callbacks)
    if t.early_stopping is not None:
        if eval_ds is None:
            raise BuildError("`train.early_stopping` watches the validation split, which is empty",
                             hint="set `data.split.valid` above 0 (or give validation rows with `data.split.column`)")
        callbacks.append(EarlyStoppingCallback(t.early_stopping.patience, t.early_stopping.threshold))
    if progress is not None:
        callbacks.append(_reporter(progress))
    if task.own_loss:
        args.prediction_loss_only = True  # the task's loss is the validation figure; it gives no logits
    trainer = FtcTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
                         callbacks=callbacks,
                         compute_metrics=task.trainer_metrics(spec, [model.config.id2label[i] for i in
                                                                     range(len(model.config.id2label))]))
    if progress is not None:
        trainer.remove_callback(ProgressCallback)
    if task.own_loss or not task.step_mean_loss or class_weights is not None or t.distill is not None:
        # a batch mean: the Trainer divides it over accumulation steps (else their sum trains)
        trainer.model_accepts_loss_kwargs = False
    return trainer


def _reporter(progress: Callable[..., None]) -> Any:
    """A Trainer callback: one progress line for training (steps, loss, learning rate, tokens/s;
    the display adds the ETA), one for each evaluation, every log dict to the `ftc.train` log."""
    import json
    import logging
    import time

    from transformers import TrainerCallback

    log = logging.getLogger("ftc.train")

    class Reporter(TrainerCallback):
        note, started, seen, evaluating = "", 0.0, 0, False

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            self.started, self.seen = time.perf_counter(), state.num_input_tokens_seen
            progress("train", state.global_step, state.max_steps, note="", restart=True)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            progress("train", 1, None, note=self.note)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
            logs = logs or {}
            log.info(json.dumps({"step": state.global_step, **logs}, default=str))
            if "loss" in logs:
                seconds = time.perf_counter() - self.started
                rate = (state.num_input_tokens_seen - self.seen) / seconds if seconds > 0 else 0.0
                self.note = f"loss {float(logs['loss']):.4g} · lr {float(logs.get('learning_rate', 0)):.2e}" + \
                    (f" · {rate:,.0f} tokens/s" if rate else "")

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):  # noqa: ANN001, ANN201
            total = len(eval_dataloader) if eval_dataloader is not None else None
            progress("evaluate", 1, total, note="", restart=not self.evaluating)
            self.evaluating = True

        def on_evaluate(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            self.evaluating = False

    return Reporter()


def last_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint of an interrupted run (its trainer state is written last)."""
    found = [p for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1])) if found else None

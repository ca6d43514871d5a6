"""Tagged words, the data of token classification: CoNLL files, `tokens` + `tags` list
columns, and annotation-tool spans over text all become one table shape, `tokens` and `tags`
(both `list<string>`, one tag per token), encoded with sub-word labels by the Rust kernel
(rust/src/tags.rs). Schemes, repair and metrics live in `tagging`; the task in
`token_classification`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftc.errors import FtcError, SourceError
from ftc.tasks import tagging

if TYPE_CHECKING:
    import polars as pl

TAGGED = pa.schema([("tokens", pa.list_(pa.large_string())), ("tags", pa.list_(pa.large_string()))])
SPANS = pa.large_list(pa.struct([("start", pa.int64()), ("end", pa.int64()), ("label", pa.large_string())]))


def conll_frame(path: str | Path, encoding: str = "utf-8", errors: str = "strict") -> tuple[pl.DataFrame,
                                                                                        pl.DataFrame]:
    """A CoNLL-style file → (sentences: `line` of the first token, `tokens`, `tags`; bad
    sentences: `line`, `reason`). One token per line, the token in the first column and its tag
    in the last (the columns between, POS or chunk tags, are skipped); sentences end at a blank
    or whitespace-only line; `-DOCSTART-` lines are not sentences. Columns are split at tabs
    when the line has one (tokens may then hold spaces), else at whitespace. A sentence with a
    line that is not `token … tag` is bad, named by that line. One pass in Rust (rust/src/conll.rs)."""
    import polars as pl

    from ftc import _data

    with open(path, encoding=encoding, errors=errors, newline=None) as f:  # universal newlines
        lines, tokens, tags, first, bad_lines, raw = (pl.from_arrow(a) for a in _data.conll_sentences(f.read()))
    reasons = [f"line {n}: expected a token and a tag, found {r!r}" for n, r in zip(bad_lines, raw, strict=True)]
    return (pl.DataFrame({"line": lines, "tokens": tokens, "tags": tags}),
            pl.DataFrame({"line": first, "reason": pl.Series(reasons, dtype=pl.String)}))


def read_conll(path: str | Path, encoding: str = "utf-8") -> pa.Table:
    """A CoNLL-style file (see `conll_frame`) as a TAGGED table; raises SourceError at the
    first line that is not `token … tag`."""
    rows, bad = conll_frame(path, encoding)
    if bad.height:
        raise SourceError(f"{path}:{bad['reason'][0].removeprefix('line ')}",
                          hint="one `token … tag` per line, the tag last; a blank line between sentences")
    return pa.table([rows["tokens"].to_arrow().cast(TAGGED.field("tokens").type),
                     rows["tags"].to_arrow().cast(TAGGED.field("tags").type)], schema=TAGGED)


def check_table(table: pa.Table, tokens: str = "tokens", tags: str = "tags") -> pa.Table:
    """A table of `tokens` and `tags` list columns (from JSONL, parquet…) in the TAGGED shape;
    raises SourceError naming the first row whose lists are missing or differ in length."""
    for name in (tokens, tags):
        if name not in table.column_names:
            raise SourceError(f"no column {name!r}; found {', '.join(table.column_names)}",
                              hint="token classification reads a list of tokens and a list of tags per row")
    out = []
    for name in (tokens, tags):
        col = table[name].combine_chunks()
        if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
            raise SourceError(f"column {name!r} is {col.type}, not a list of strings",
                              hint="split the text into tokens first, or give spans (see spans_to_tagged)")
        value = col.type.value_type
        if not (pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_string_view(value)):
            # A cast would quietly turn tag ids into the strings "0", "1"…
            raise SourceError(f"column {name!r} is {col.type}; expected a list of strings",
                              hint="tags given as ids (datasets' ner_tags): map them to label names first")
        out.append(col.cast(TAGGED.field("tokens").type))
    n_tokens, n_tags = (pc.fill_null(pc.list_value_length(c), -1) for c in out)
    bad = pc.indices_nonzero(pc.or_(pc.not_equal(n_tokens, n_tags), pc.equal(n_tokens, -1)))
    if len(bad):
        row = bad[0].as_py()
        raise SourceError(f"row {row}: {n_tokens[row].as_py()} tokens but {n_tags[row].as_py()} tags "
                          f"({len(bad)} such rows; -1 is a missing list)",
                          hint="each token needs exactly one tag")
    return pa.table(out, schema=TAGGED)


def tag_ids(tags: pa.ChunkedArray | pa.Array, labels: Sequence[str]) -> pa.Array:
    """`list<string>` tags → `list<int32>` label ids; raises SourceError on a tag not in `labels`."""
    tags = tags.combine_chunks() if isinstance(tags, pa.ChunkedArray) else tags
    flat = pc.list_flatten(tags)
    ids = pc.index_in(flat, value_set=pa.array(labels, pa.large_string()))
    if ids.null_count:
        first = pc.indices_nonzero(pc.is_null(ids))[0].as_py()
        row = int(np.searchsorted(np.asarray(tags.offsets)[1:], first, side="right"))
        raise SourceError(f"row {row}: tag {flat[first].as_py()!r} is not a label; labels: {', '.join(labels)}",
                          hint="list it in the labels, or fix the data")
    return pa.ListArray.from_arrays(pc.cast(tags.offsets, pa.int32()), ids.cast(pa.int32()))


def encode_tagged(encoder: Any, table: pa.Table, labels: Sequence[str], max_length: int,
                  label_all_subwords: bool = False) -> pa.Table:
    """A TAGGED table → `input_ids`, `labels` (`list<int32>`, -100 on special tokens and
    continuation sub-words) and `length` (tokens before truncation), with the data stage's
    `DataEncoder`."""
    ids, lab, length = encoder.encode_words(table["tokens"].combine_chunks(), tag_ids(table["tags"], labels),
                                            max_length, label_all_subwords, list(labels))
    return pa.table({"input_ids": pa.array(ids), "labels": pa.array(lab), "length": pa.array(length)})


def spans_to_tagged(texts: Sequence[str], spans: Sequence[Sequence[dict]],
                    threads: int = 0) -> tuple[pa.Table, list[list[str]]]:
    """Texts with character-offset entity spans (`[{start, end, label}]`, end exclusive, in
    characters as Python indexes a str: the JSON export of Label Studio or doccano) → a TAGGED
    table with BIO tags plus `starts`/`ends` (each token's character offsets), and per text the
    spans left out (not on word boundaries, overlapping, outside the text), one line each."""
    from ftc import _data

    rows = [[{"start": int(s["start"]), "end": int(s["end"]), "label": str(s["label"])} for s in row]
            for row in spans]
    words, tags, starts, ends, problems = _data.spans_to_words(
        pa.array(texts, pa.large_string()), pa.array(rows, SPANS), threads)
    table = pa.table({"tokens": pa.array(words), "tags": pa.array(tags), "starts": pa.array(starts),
                      "ends": pa.array(ends)})
    return table, pa.array(problems).to_pylist()


# ── the data stage's side: spec checks, reading sources, checking rows ─────────────────────────

PREFIXES = {"IOB2": "BI", "IOBES": "BIES", "IO": "I"}  # a type's tags, in label-list order
_WORDS = ("tokens", "words")
_TAGS = ("tags", "ner_tags", "labels")
_SPANS = ("entities", "spans", "label", "labels")


def check_spec(spec: Any) -> None:
    """What token classification cannot do, before any work (ValueError: the spec's error)."""
    from ftc.quality import rewrites

    tok = spec.tokenize
    if on := rewrites(spec.data.clean):
        raise ValueError(f"`data.clean.{on[0]}` rewrites text, but tags belong to the words as given; "
                         "token classification keeps only the drop rules, limits and dedup")
    if tok.truncation not in ("right", "drop"):
        raise ValueError(f"`tokenize.truncation = \"{tok.truncation}\"`: a tagged sentence is cut at its end "
                         "(`right`) or dropped (`drop`)")
    if spec.data.augment.copies or spec.data.balance.strategy != "none":
        raise ValueError("`data.augment` and `data.balance` rewrite or reweigh whole rows by label; they are "
                         "for classification")
    if spec.eval.mode == "strict" and spec.data.tags.scheme == "IO":
        raise ValueError("`eval.mode = \"strict\"` reads entities with the IOB2 or IOBES automaton; IO tags have "
                         "none (use `default`)")
    if spec.model.labels is not None:
        try:
            tagging.check_labels(spec.model.labels, spec.data.tags.scheme)
        except FtcError as e:
            raise ValueError(f"`model.labels`: {e}") from None


def _frame(lines: list[int], texts: list[str], tokens: list[list[str]], tags: list[list[str]],
           split: list[str | None] | None) -> pl.DataFrame:
    import polars as pl

    cols = {"line": pl.Series(lines, dtype=pl.UInt64), "text": pl.Series(texts, dtype=pl.String),
            "tokens": pl.Series(tokens, dtype=pl.List(pl.String)), "tags": pl.Series(tags, dtype=pl.List(pl.String))}
    if split is not None:
        cols["split"] = pl.Series(split, dtype=pl.String)
    return pl.DataFrame(cols)


def _bad(bad: list[tuple[int, str]]) -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame({"line": [b[0] for b in bad], "reason": [b[1] for b in bad]},
                        schema={"line": pl.UInt64, "reason": pl.String})


def read_file(file: Path, fmt: str, cols: Any, threads: int, split: str | None, decoding: Any,
              limit: int | None) -> Iterator[Any]:
    """A source file of tagged words → `SourceBatch`es of `line`, `text` (the words joined by
    spaces, or the annotated text), `tokens`, `tags` (+ `split`)."""
    from ftc import records
    from ftc.sources import SourceBatch

    if fmt == "conll":
        import polars as pl

        rows, bad = conll_frame(file, decoding.codec, decoding.errors)
        if limit is not None:  # the first `limit` sentences, good or bad
            cut = pl.concat([rows["line"], bad["line"]]).sort().head(limit).max()
            rows, bad = rows.filter(pl.col("line") <= cut), bad.filter(pl.col("line") <= cut)
        rows = rows.with_columns(text=pl.col("tokens").list.join(" ")).select("line", "text", "tokens", "tags")
        if split:
            rows = rows.with_columns(split=pl.lit(None, pl.String))
        yield SourceBatch(file, rows, bad, file.stat().st_size)
        return
    keys: tuple[str, ...] | None = None
    for batch in records.read(file, fmt, decoding, limit):
        if keys is None and batch.items:
            keys = _columns(cols, batch.items[0], file)
        yield _records_batch(file, batch, keys or ("tokens", "tags"), split, threads)


def _columns(cols: Any, first: dict[str, Any], file: Path) -> tuple[str, ...]:
    """The keys of (words, tags) or (text, spans): as mapped, else by common names."""
    if cols.tokens is not None:
        return (cols.tokens, cols.tags or next((k for k in _TAGS if k in first), "tags"))
    if cols.entities is not None:
        return (cols.text or "text", cols.entities, "spans")
    words = next((k for k in _WORDS if k in first), None)
    if words is not None:
        return (words, cols.tags or next((k for k in _TAGS if k in first), "tags"))
    if "text" in first and (spans := next((k for k in _SPANS if isinstance(first.get(k), list)), None)):
        return (cols.text or "text", spans, "spans")
    raise SourceError(f"{file}: cannot tell which keys hold the words and tags; found {', '.join(first) or 'none'}",
                      hint="map them: `columns = { tokens = \"...\", tags = \"...\" }`, or `{ text = \"...\", "
                      "entities = \"...\" }` for character spans")


def _records_batch(file: Path, batch: Any, keys: tuple[str, ...], split: str | None, threads: int) -> Any:
    from ftc.sources import SourceBatch

    bad = list(batch.bad)
    lines, texts, words, tags, splits = [], [], [], [], []
    spans = len(keys) == 3
    pending: list[tuple[int, str, list[dict[str, Any]], Any]] = []
    for line, rec in zip(batch.lines, batch.items, strict=True):
        first, second = rec.get(keys[0]), rec.get(keys[1])
        why = _spans_problem(first, second, keys) if spans else _words_problem(first, second, keys)
        if why:
            bad.append((line, why))
        elif spans:
            pending.append((line, first, [_span(s) for s in second], rec.get(split) if split else None))
        else:
            lines.append(line), texts.append(" ".join(first)), words.append(first), tags.append(second)
            splits.append(rec.get(split) if split else None)
    if pending:
        table, problems = spans_to_tagged([p[1] for p in pending], [p[2] for p in pending], threads)
        for (line, text, _, where), w, t, problem in zip(pending, table["tokens"].to_pylist(),
                                                         table["tags"].to_pylist(), problems, strict=True):
            if problem:
                bad.append((line, f"entity span: {problem[0]}"))
            else:
                lines.append(line), texts.append(text), words.append(w), tags.append(t), splits.append(where)
    order = np.argsort(lines, kind="stable")
    pick = [[x[i] for i in order] for x in (lines, texts, words, tags, splits)]
    return SourceBatch(file, _frame(*pick[:4], [None if s is None else str(s) for s in pick[4]] if split else None),
                       _bad(bad), batch.nbytes)


def _words_problem(words: Any, tags: Any, keys: tuple[str, ...]) -> str | None:
    for key, value in zip(keys, (words, tags)):
        if not isinstance(value, list) or not value:
            return f"{'missing' if value is None else 'empty' if value == [] else 'not a list:'} '{key}'"
        if not all(isinstance(v, str) for v in value):
            kind = type(next(v for v in value if not isinstance(v, str))).__name__
            return f"'{key}' holds {kind}, not strings" + (" (tag ids: map them to tag names)" if kind == "int" else "")
    if len(words) != len(tags):
        return f"{len(words)} tokens but {len(tags)} tags"
    return None


def _spans_problem(text: Any, spans: Any, keys: tuple[str, ...]) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return f"missing or empty '{keys[0]}'"
    if not isinstance(spans, list):
        return f"'{keys[1]}' is not a list of spans"
    for s in spans:
        if _span(s) is None:
            return f"'{keys[1]}': {json.dumps(s)[:80]} is not {{start, end, label}} or [start, end, label]"
    return None


def _span(s: Any) -> dict[str, Any] | None:
    if isinstance(s, dict) and {"start", "end"} <= set(s) and ("label" in s or "labels" in s):
        label = s.get("label", s.get("labels"))
        label = label[0] if isinstance(label, list) and len(label) == 1 else label
        s = (s["start"], s["end"], label)
    if isinstance(s, (list, tuple)) and len(s) == 3 and all(isinstance(x, int) for x in s[:2]) and \
            isinstance(s[2], str):
        return {"start": s[0], "end": s[1], "label": s[2]}
    return None


def check_rows(run: Any, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Tags the scheme cannot read and (with `model.labels`) tags not listed are quarantined;
    sequences the scheme forbids are repaired or quarantined (`data.tags.invalid`)."""
    import polars as pl

    scheme, invalid_rule = run.spec.data.tags.scheme, run.spec.data.tags.invalid
    pattern = f"^(O|[{PREFIXES[scheme]}]-.+)$"
    flat = rows.select("line", "tags").explode("tags")
    wrong = flat.filter(~pl.col("tags").str.contains(pattern)).group_by("line", maintain_order=True).first()
    bad = [wrong.select("line", reason=pl.format("tag '{}' is not an {} tag (O or {}-TYPE)", "tags", pl.lit(scheme),
                                                 pl.lit("/".join(PREFIXES[scheme]))))]
    if run.label_names is not None:
        unknown = flat.filter(~pl.col("tags").is_in(run.label_names)).group_by("line", maintain_order=True).first()
        bad.append(unknown.select("line", reason=pl.format("unknown tag: '{}' (model.labels: {})", "tags",
                                                           pl.lit(", ".join(run.label_names)))))
    out = pl.concat(bad).unique("line", keep="first", maintain_order=True)
    rows = rows.filter(~pl.col("line").is_in(out["line"].implode()))
    labels = run.collector.labels
    tags_flat = rows["tags"].explode().drop_nulls()
    labels.add(tags_flat.unique().to_list())
    flat = tags_flat.replace_strict({t: i for i, t in enumerate(labels.names)}, return_dtype=pl.Int64).to_numpy()
    invalid = tagging.invalid_sentences(flat, rows["tags"].list.len().to_numpy(), labels.names, scheme)
    if len(invalid):  # only the invalid sentences become Python lists
        lines = rows["line"].gather(invalid)
        tags = rows["tags"].gather(invalid).to_list()
        if invalid_rule == "drop":
            out = pl.concat([out, pl.DataFrame({"line": lines, "reason": [
                f"invalid tag sequence: {' '.join(t)[:120]} (data.tags.invalid = \"drop\")" for t in tags]},
                schema={"line": pl.UInt64, "reason": pl.String})])
            rows = rows.filter(~pl.col("line").is_in(lines.implode()))
        else:
            fixed = tagging.check_tags(tags, labels.names, scheme, "repair").tags
            at = np.full(rows.height, -1)
            at[invalid] = np.arange(len(invalid))
            repaired = pl.Series(fixed, dtype=pl.List(pl.String))
            rows = rows.with_columns(tags=pl.when(pl.Series(at >= 0)).then(
                repaired.gather(np.maximum(at, 0))).otherwise(pl.col("tags")))
            run.funnel.changed["tags repaired"] += len(invalid)
            for before, after, line in zip(tags[:3], fixed[:3], lines.to_list(), strict=False):
                run.funnel.example("tags repaired", {"line": line, "before": " ".join(before)[:200],
                                                     "after": " ".join(after)[:200]})
    return rows, out

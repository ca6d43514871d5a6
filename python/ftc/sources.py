"""Sources: files → batches of normalized rows (polars), and the rows that cannot be used.

Every batch has `line` (1-based line of JSON Lines/text files, data row of CSV/TSV counting
the header as line 1, row number for Parquet/JSON) and one shape of content:
`text` (str, + `text_pair`) or `messages` (list<struct<role, content>>), plus `label` (str)
when mapped or given on the source, and `split` (str or null) when a split column is named.
`prompt`/`response`/`system` become `messages`. Unusable rows come back in `bad` with a reason;
nothing is dropped silently and no source file is modified.

Cost: one streaming pass per file; JSON Lines and text are validated line by line in Rust
before polars decodes them, so one malformed line costs one row, not the file.
"""

from __future__ import annotations

import codecs
import glob
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

from ftc import _data
from ftc.errors import SourceError
from ftc.model import resolve_pkg
from ftc.spec import Columns, Source

CHUNK_BYTES = 8 << 20
CHUNK_ROWS = 10_000
MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
              ".parquet": "parquet", ".pq": "parquet", ".txt": "txt", ".text": "txt"}


@dataclass
class SourceBatch:
    file: Path
    rows: pl.DataFrame
    bad: pl.DataFrame  # line: u64, reason: str
    nbytes: int  # bytes of the file consumed by this batch, for progress


def source_files(source: Source, root: Path) -> list[Path]:
    """The files of a source, globs expanded, in sorted order; an error if none."""
    patterns = [source.path] if isinstance(source.path, str) else source.path
    files: list[Path] = []
    for pat in patterns:
        base = str(resolve_pkg(pat)) if pat.startswith("pkg://") else str(root / Path(pat).expanduser())
        found = sorted(glob.glob(base, recursive=True)) if glob.has_magic(base) else [base] if Path(base).exists() else []
        if not found:
            raise SourceError(f"source `{source_name(source, pat)}`: `{pat}` matches no file (looked in {root})")
        files.extend(Path(f).resolve() for f in found if Path(f).is_file())
    return files


def source_name(source: Source, first: str | None = None) -> str:
    if source.name:
        return source.name
    pat = first or (source.path if isinstance(source.path, str) else source.path[0])
    return Path(pat).stem.replace("*", "all")


def file_format(source: Source, file: Path) -> str:
    if source.format != "auto":
        return source.format
    fmt = EXTENSIONS.get(file.suffix.lower())
    if fmt is None:
        raise SourceError(f"{file}: unknown extension `{file.suffix}`",
                          hint="set `format` on the source: csv, tsv, jsonl, json, parquet or txt")
    if fmt == "json":  # many `.json` files are JSON Lines
        with file.open("rb") as f:
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        fmt = "json" if head.startswith(b"[") else "jsonl"
    return fmt


def resolve_columns(cols: Columns, available: list[str], fmt: str, file: Path) -> Columns:
    """An explicit mapping stands; otherwise pick by common column names."""
    if fmt == "txt":
        return Columns(text="text")
    if any(v is not None for v in (cols.text, cols.prompt, cols.messages)):
        return cols
    have = set(available)
    for shape in ({"messages": "messages"}, {"messages": "conversations"},
                  {"prompt": "prompt", "response": "response"}, {"prompt": "instruction", "response": "output"},
                  {"prompt": "question", "response": "answer"}, {"text": "text"}, {"text": "content"}):
        if set(shape.values()) <= have:
            extra = {"system": "system"} if "prompt" in shape and "system" in have else {}
            label = {"label": cols.label or ("label" if "label" in have else None)}
            return Columns(**shape, **extra, **label)
    raise SourceError(f"{file}: cannot tell which columns to use; found {', '.join(available) or 'none'}",
                      hint="map them on the source, e.g. `columns = { prompt = \"q\", response = \"a\" }`")


def read_source(source: Source, files: list[Path], threads: int = 0,
                on_bytes: Callable[[int], None] | None = None, split_column: str | None = None) -> Iterator[SourceBatch]:
    """Batches of `files` (the source's, from `source_files`), `max_rows` honored (usable and
    quarantined rows count). `split_column`: a column naming each row's split, where present."""
    left = source.max_rows
    for file in files:
        fmt = file_format(source, file)
        for batch in _read_file(file, fmt, source.columns, threads, split_column):
            if source.label is not None:
                batch.rows = batch.rows.with_columns(label=pl.lit(source.label, dtype=pl.String))
            if left is not None:
                n = batch.rows.height + batch.bad.height
                if n >= left:
                    cut = _nth_line(batch, left)
                    batch.rows = batch.rows.filter(pl.col("line") <= cut)
                    batch.bad = batch.bad.filter(pl.col("line") <= cut)
                left -= batch.rows.height + batch.bad.height
            if on_bytes:
                on_bytes(batch.nbytes)
            yield batch
            if left is not None and left <= 0:
                return


def _nth_line(batch: SourceBatch, n: int) -> int:
    lines = pl.concat([batch.rows.select("line"), batch.bad.select("line")]).sort("line")
    return int(lines["line"][n - 1])


def _read_file(file: Path, fmt: str, cols: Columns, threads: int, split: str | None) -> Iterator[SourceBatch]:
    try:
        if fmt in ("jsonl", "txt"):
            yield from _read_lines(file, fmt, cols, threads, split)
        elif fmt in ("csv", "tsv"):
            yield from _read_csv(file, "\t" if fmt == "tsv" else ",", cols, split)
        elif fmt == "parquet":
            lf = pl.scan_parquet(file)
            yield from _read_frames(file, lf, cols, file.stat().st_size, split)
        else:
            yield from _read_frames(file, pl.read_json(file).lazy(), cols, file.stat().st_size, split)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise SourceError(f"{file}: cannot read as {fmt}: {str(e).splitlines()[0]}") from None


def _read_lines(file: Path, fmt: str, cols: Columns, threads: int, split: str | None) -> Iterator[SourceBatch]:
    resolved: Columns | None = Columns(text="text") if fmt == "txt" else None
    line = 1
    with file.open("rb") as f:
        carry = b""
        while True:
            block = f.read(CHUNK_BYTES)
            buf = carry + block
            if not buf:
                break
            cut = buf.rfind(b"\n") + 1 if block else len(buf)
            if cut == 0:  # one line longer than the chunk: read on
                carry = buf
                continue
            chunk, carry = buf[:cut], buf[cut:]
            if resolved is None:
                resolved = resolve_columns(cols, _first_keys(chunk), fmt, file)
            fields = None if fmt == "txt" else _json_fields(resolved) + ([(split, "scalar")] if split else [])
            good, good_lines, bad_lines, reasons, n_lines = _data.scan_lines(chunk, line, fields, threads)
            line += n_lines
            bad = pl.DataFrame({"line": pl.Series(pa.array(bad_lines)), "reason": pl.Series(pa.array(reasons))})
            texts = pl.Series("raw", pa.array(good))
            if fmt == "txt":
                frame = pl.DataFrame({"line": pl.Series(pa.array(good_lines)), "text": texts})
            else:
                dtype = pl.Struct({name: _field_dtype(kind) for name, kind in fields})
                frame = texts.str.json_decode(dtype).struct.unnest().with_columns(line=pl.Series(pa.array(good_lines)))
            rows, more_bad = normalize(frame, resolved, split)
            yield SourceBatch(file, rows, pl.concat([bad, more_bad]), len(chunk))


def _first_keys(chunk: bytes) -> list[str]:
    for raw in chunk.splitlines():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return list(obj)
    return []


def _json_fields(cols: Columns) -> list[tuple[str, str]]:
    kinds = {"text": "string", "text_pair": "string", "prompt": "string", "response": "string",
             "system": "string", "messages": "messages", "label": "scalar"}
    return [(name, kinds[k]) for k, name in cols.model_dump().items() if name is not None]


def _field_dtype(kind: str) -> pl.DataType:
    return pl.List(MESSAGE) if kind == "messages" else pl.String()


def _read_csv(file: Path, sep: str, cols: Columns, split: str | None) -> Iterator[SourceBatch]:
    # polars cannot say which row held invalid UTF-8; read lossily and flag the rows whose
    # fields gained a replacement character, but only for a file that is not valid UTF-8.
    lossy = not _valid_utf8(file)
    encoding = "utf8-lossy" if lossy else "utf8"
    lf = pl.scan_csv(file, separator=sep, infer_schema=False, encoding=encoding)
    for batch in _read_frames(file, lf, cols, file.stat().st_size, split, first_line=2):
        if lossy and batch.rows.height:
            broken = _has_replacement_char(batch.rows)
            bad = batch.rows.filter(broken).select("line", reason=pl.lit("undecodable bytes: invalid UTF-8"))
            batch.bad = pl.concat([batch.bad, bad])
            batch.rows = batch.rows.filter(~broken)
        yield batch


def _valid_utf8(file: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    with file.open("rb") as f:
        try:
            while block := f.read(CHUNK_BYTES):
                decoder.decode(block)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return False
    return True


def _has_replacement_char(rows: pl.DataFrame) -> pl.Expr:
    found = [pl.col(c).str.contains("\ufffd", literal=True) for c in ("text", "text_pair", "label")
             if c in rows.columns]
    if "messages" in rows.columns:
        found.append(pl.col("messages").list.eval(
            pl.element().struct.field("content").str.contains("\ufffd", literal=True)).list.any())
    return pl.any_horizontal(found).fill_null(False)


def _read_frames(file: Path, lf: pl.LazyFrame, cols: Columns, size: int, split: str | None,
                 first_line: int = 1) -> Iterator[SourceBatch]:
    names = lf.collect_schema().names()
    resolved = resolve_columns(cols, names, "frame", file)
    lf = lf.with_row_index("line", offset=first_line).with_columns(pl.col("line").cast(pl.UInt64))
    for frame in lf.collect_batches(chunk_size=CHUNK_ROWS):
        rows, bad = normalize(frame, resolved, split)
        yield SourceBatch(file, rows, bad, 0)
    # Columnar readers do not report bytes; a last empty batch moves progress past the file.
    yield SourceBatch(file, _empty_rows(resolved, split), _empty_bad(), size)


def _empty_bad() -> pl.DataFrame:
    return pl.DataFrame(schema={"line": pl.UInt64, "reason": pl.String})


def _empty_rows(cols: Columns, split: str | None = None) -> pl.DataFrame:
    schema: dict[str, pl.DataType] = {"line": pl.UInt64()}
    schema["text" if cols.text else "messages"] = pl.String() if cols.text else pl.List(MESSAGE)
    if cols.text_pair:
        schema["text_pair"] = pl.String()
    if cols.label:
        schema["label"] = pl.String()
    if split:
        schema["split"] = pl.String()
    return pl.DataFrame(schema=schema)


def normalize(frame: pl.DataFrame, cols: Columns, split: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Maps source columns to `text` (+`text_pair`) or `messages`, `label` and `split`; rows
    with a missing, null or empty field go to `bad` with the reason. The split column is
    optional: a file without it, or a null, leaves the row to `[data.split]`."""
    required = [c for c in (cols.text, cols.text_pair, cols.prompt, cols.response, cols.messages, cols.label)
                if c is not None]
    if missing := [c for c in required if c not in frame.columns]:
        return _empty_rows(cols), frame.select("line", reason=pl.lit(f"missing column '{missing[0]}'"))
    checks: list[tuple[pl.Expr, str]] = []
    for name in required:
        col = pl.col(name)
        checks.append((col.is_null(), f"null '{name}'"))
        if name == cols.messages:
            checks.append((col.list.len() == 0, f"empty '{name}'"))
        else:
            checks.append((col.cast(pl.String).str.strip_chars() == "", f"empty '{name}'"))
    reason: pl.Expr = pl.lit(None, dtype=pl.String)
    for cond, why in reversed(checks):
        reason = pl.when(cond).then(pl.lit(why)).otherwise(reason)
    frame = frame.with_columns(_reason=reason)
    bad = frame.filter(pl.col("_reason").is_not_null()).select("line", reason="_reason")
    good = frame.filter(pl.col("_reason").is_null())
    content: pl.Expr
    if cols.text is not None:
        content = pl.col(cols.text).cast(pl.String).alias("text")
    elif cols.messages is not None:
        el = pl.element()
        content = pl.col(cols.messages).list.eval(
            pl.struct(role=el.struct.field("role"), content=el.struct.field("content"))
        ).alias("messages")
    else:
        turns = [pl.struct(role=pl.lit("user"), content=pl.col(cols.prompt).cast(pl.String)),
                 pl.struct(role=pl.lit("assistant"), content=pl.col(cols.response).cast(pl.String))]
        if cols.system is not None and cols.system in frame.columns:
            turns.insert(0, pl.struct(role=pl.lit("system"), content=pl.col(cols.system).cast(pl.String)))
        el = pl.element().struct.field("content")
        content = pl.concat_list(turns).list.eval(pl.element().filter(el.is_not_null() & (el != ""))).alias("messages")
    out = [pl.col("line").cast(pl.UInt64), content]
    if cols.text_pair is not None:
        out.append(pl.col(cols.text_pair).cast(pl.String).alias("text_pair"))
    if cols.label is not None:
        out.append(pl.col(cols.label).cast(pl.String).alias("label"))
    if split is not None:
        out.append((pl.col(split).cast(pl.String) if split in frame.columns else pl.lit(None, pl.String)).alias("split"))
    return good.select(out), bad

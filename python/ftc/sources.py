"""Sources: files → batches of normalized rows (polars), and the rows that cannot be used.

Every batch has `line` (1-based line of JSON Lines/text files, data row of CSV/TSV counting
the header as line 1, row number for Parquet/JSON) and one shape of content:
`text` (str, + `text_pair`) or `messages` (list<struct<role, content, extra>>), plus `label`
(str) when mapped or given on the source, and `split` (str or null) when a split column is
named. `prompt`/`response`/`system` become `messages`. A message comes as `role`/`content`
(OpenAI) or `from`/`value` (ShareGPT); its role is named by its canonical name (`ROLES`) and
its other keys (`name`, `tool_calls`, ...) travel in `extra` as JSON, for the template. Unusable
rows come back in `bad` with a reason; nothing is dropped silently and no source file is modified.

Cost: one streaming pass per file; JSON Lines and text are validated line by line in Rust
before polars decodes them, so one malformed line costs one row, not the file. Conversations
from JSON and Parquet files take the same path (one JSON line per record), so every format
reads a message alike. Files in another encoding than UTF-8 are transcoded as they stream
(`ftc.encodings`).
"""

from __future__ import annotations

import codecs
import glob
import json
import queue
import tempfile
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from ftc import _data, encodings, jsonfile
from ftc.encodings import Decoding
from ftc.errors import SourceError
from ftc.model import resolve_pkg
from ftc.spec import Columns, Source

CHUNK_BYTES = 8 << 20
CHUNK_ROWS = 10_000
MAX_ROW_BYTES = CHUNK_BYTES  # a JSON Lines or text row; a longer one is quarantined unread
MESSAGE = pl.Struct({"role": pl.String, "content": pl.String, "extra": pl.String})
# The role names each role answers to (ShareGPT's and its variants'); `columns.roles` adds more.
# ShareGPT's `function_call` turn is the assistant calling a tool: it becomes a tool call.
ROLES = {"user": ("user", "human"), "assistant": ("assistant", "gpt", "chatgpt", "bing", "function_call"),
         "system": ("system",), "tool": ("tool", "function", "observation")}
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
              ".parquet": "parquet", ".pq": "parquet", ".txt": "txt", ".text": "txt", ".conll": "conll"}


@dataclass
class SourceBatch:
    file: Path
    rows: pl.DataFrame
    bad: pl.DataFrame  # line: u64, reason: str
    nbytes: int  # bytes of the file consumed by this batch, for progress
    note: str | None = None  # on a file's first batch: how its encoding was decided, when worth saying


def ahead(items: Generator[Any, None, None], depth: int = 2) -> Iterator[Any]:
    """`items`, produced by a thread up to `depth` ahead of the consumer: reading and decoding
    the next batch (Rust and polars, the GIL released) overlaps the work on this one, which is
    what lets a second core pay off where a stage would otherwise wait on one. Order and errors
    are kept; a consumer that stops early stops the producer."""
    done, stop = object(), threading.Event()
    q: queue.Queue[Any] = queue.Queue(depth)

    def produce() -> None:
        try:
            for item in items:
                q.put((item, None))
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as e:  # noqa: BLE001 (re-raised in the consumer)
            q.put((done, e))
        finally:
            items.close()

    worker = threading.Thread(target=produce, name="ftc-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, error = q.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # a producer blocked on the full queue: take its item so it sees `stop`
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass


def source_files(source: Source, root: Path) -> list[Path]:
    """The files of a source, globs expanded, in sorted order; an error if none."""
    patterns = [source.path] if isinstance(source.path, str) else source.path
    files: list[Path] = []
    for pat in patterns:
        base = str(resolve_pkg(pat)) if pat.startswith("pkg://") else str(root / Path(pat).expanduser())
        found = sorted(glob.glob(base, recursive=True)) if glob.has_magic(base) else [base] if Path(base).exists() else []
        if not glob.has_magic(base) and Path(base).is_dir():
            raise SourceError(f"source `{source_name(source, pat)}`: `{pat}` is a directory, not a file",
                              hint=f"give its files with a glob, e.g. `path = \"{pat.rstrip('/')}/*.jsonl\"` "
                                   "(`**` also reads subdirectories)")
        found = [f for f in found if Path(f).is_file()]
        if not found:
            raise SourceError(f"source `{source_name(source, pat)}`: `{pat}` matches no file (looked in {root})")
        files.extend(Path(f).resolve() for f in found)
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
                          hint="set `format` on the source: csv, tsv, jsonl, json, parquet, txt or conll")
    if fmt == "json":  # many `.json` files are JSON Lines
        with file.open("rb") as f:
            head = f.read(4096)
        codec = next((c for bom, c in encodings.BOMS if head.startswith(bom)), None)
        codec = codec or (source.encoding if source.encoding != "auto" else "utf-8")
        text = head.decode(codecs.lookup(codec).name, "ignore").lstrip("\ufeff \t\r\n")
        fmt = "json" if text.startswith("[") else "jsonl"
    return fmt


def resolve_columns(cols: Columns, available: list[str], fmt: str, file: Path) -> Columns:
    """An explicit mapping stands; otherwise pick by common column names (how messages are
    read, `role`/`content`/`roles`, carries over)."""
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
            keys = {"role": cols.role, "content": cols.content, "roles": cols.roles} if "messages" in shape else {}
            return Columns(**shape, **extra, **label, **keys)
    raise SourceError(f"{file}: cannot tell which columns to use; found {', '.join(available) or 'none'}",
                      hint="map them on the source, e.g. `columns = { prompt = \"q\", response = \"a\" }`")


def role_table(cols: Columns) -> dict[str, str]:
    """Each role name → its canonical role: `ROLES`, then the source's own names."""
    table = {name: role for role, names in ROLES.items() for name in names}
    return table | {name: role for role, names in cols.roles.items() for name in names}


# (file, format, columns, threads, split column, decoding, row limit) → batches: how a task reads one file.
FileReader = Callable[[Path, str, Columns, int, "str | None", Decoding, "int | None"], Iterator[SourceBatch]]


def read_source(source: Source, files: list[Path], threads: int = 0,
                on_bytes: Callable[[int], None] | None = None, split_column: str | None = None,
                reader: FileReader | None = None) -> Iterator[SourceBatch]:
    """Batches of `files` (the source's, from `source_files`), `max_rows` honored (usable and
    quarantined rows count). `split_column`: a column naming each row's split, where present.
    `reader`: the task's reader of one file (`Task.read_file`), for rows other than texts and
    conversations."""
    left = source.max_rows
    for file in files:
        fmt = file_format(source, file)
        decoding = _decoding(source, file, fmt)
        note = decoding.note
        for batch in (reader or read_file)(file, fmt, source.columns, threads, split_column, decoding, left):
            batch.bad = encodings.name_codec(batch.bad, decoding)
            batch.note, note = note, None
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


def _decoding(source: Source, file: Path, fmt: str) -> Decoding:
    if fmt == "parquet":  # Parquet strings are UTF-8 by definition
        if source.encoding != "auto" and encodings.codec_name(source.encoding) not in encodings.UTF8:
            raise SourceError(f"{file}: `encoding = \"{source.encoding}\"` does not apply to Parquet, whose strings "
                              "are UTF-8", hint="remove `encoding` from the source, or give it the text files alone")
        return Decoding("utf-8")
    return encodings.detect(file, source.encoding)


def _nth_line(batch: SourceBatch, n: int) -> int:
    lines = pl.concat([batch.rows.select("line"), batch.bad.select("line")]).sort("line")
    return int(lines["line"][n - 1])


def read_file(file: Path, fmt: str, cols: Columns, threads: int, split: str | None, decoding: Decoding,
              limit: int | None) -> Iterator[SourceBatch]:
    """One file of texts or conversations (the shared shapes) as batches."""
    if fmt == "conll":
        raise SourceError(f"{file}: CoNLL files hold tagged words, for `model.task = \"token-classification\"`",
                          hint="give this task texts (jsonl, csv, parquet, txt…)")
    try:
        if fmt in ("jsonl", "txt"):
            blocks = _raw_blocks(file) if decoding.native else encodings.utf8_blocks(file, decoding)
            yield from _scan(file, _whole_lines(blocks), fmt, cols, threads, split)
        elif fmt in ("csv", "tsv"):
            yield from _read_csv(file, "\t" if fmt == "tsv" else ",", cols, split, decoding)
        elif fmt == "parquet":
            yield from _read_frames(file, pl.scan_parquet(file), cols, file.stat().st_size, split, threads=threads)
        else:
            yield from _scan(file, _json_lines(file, decoding, limit), "jsonl", cols, threads, split)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise SourceError(f"{file}: cannot read as {fmt}: {str(e).splitlines()[0]}") from None


def _raw_blocks(file: Path) -> Iterator[tuple[bytes, int]]:
    with file.open("rb") as f:
        while block := f.read(CHUNK_BYTES):
            yield block, len(block)


# A chunk of whole lines for the scanner: (UTF-8 bytes, bytes of the file consumed, reasons of
# records the reader could not give, by line index in the chunk: blank lines there).
Chunk = tuple[bytes, int, dict[int, str]]


def _whole_lines(blocks: Iterable[tuple[bytes, int]]) -> Iterator[Chunk]:
    """Blocks of UTF-8 → chunks of whole lines (the last may lack its newline). A line longer
    than `MAX_ROW_BYTES` is dropped as it streams (it would take gigabytes once parsed and
    tokenized) and kept counted as an empty line with its reason."""
    carry, consumed, dropping = b"", 0, False
    too_long = f"row longer than {MAX_ROW_BYTES >> 20} MiB: split the document into smaller rows"
    for block, n in blocks:
        consumed += n
        known: dict[int, str] = {}
        if dropping:
            end = block.find(b"\n")
            if end < 0:
                continue
            block, dropping, known = block[end:], False, {0: too_long}  # its newline keeps the count
        buf = carry + block
        first = buf.find(b"\n")  # only the first line can be longer than a block
        if (first if first >= 0 else len(buf)) > MAX_ROW_BYTES:
            if first < 0:
                carry, dropping = b"", True
                continue
            buf, known = buf[first:], {0: too_long}
        cut = buf.rfind(b"\n") + 1
        if cut == 0:  # one line longer than the block: read on
            carry = buf
            continue
        yield buf[:cut], consumed, known
        carry, consumed = buf[cut:], 0
    if dropping:
        yield b"\n", consumed, {0: too_long}
    elif carry or consumed:
        yield carry, consumed, {}


def _json_lines(file: Path, decoding: Decoding, limit: int | None) -> Iterator[Chunk]:
    """A JSON array as JSON Lines, one line per record; a record that cannot be used is a blank
    line (no row, but the numbering holds) and its reason."""
    lines: list[str] = []
    reasons: dict[int, str] = {}
    for record, why in jsonfile.records(encodings.read_text(file, decoding), file, decoding.codec, limit):
        if why is not None:
            reasons[len(lines)] = why
        lines.append("" if why is not None else json.dumps(record, ensure_ascii=False))
        if len(lines) == CHUNK_ROWS:
            yield "".join(x + "\n" for x in lines).encode("utf-8"), 0, reasons
            lines, reasons = [], {}
    yield "".join(x + "\n" for x in lines).encode("utf-8"), file.stat().st_size, reasons


def _scan(file: Path, chunks: Iterable[Chunk], fmt: str, cols: Columns, threads: int,
          split: str | None) -> Iterator[SourceBatch]:
    """Chunks of whole lines (JSON Lines or text) through the Rust scanner, then polars."""
    resolved: Columns | None = Columns(text="text") if fmt == "txt" else None
    line = 1
    for chunk, nbytes, known in chunks:
        given = pl.DataFrame({"line": [line + i for i in known], "reason": list(known.values())},
                             schema={"line": pl.UInt64, "reason": pl.String})
        if not chunk.strip():  # blank lines only: the end, or records a JSON file could not give
            line += chunk.count(b"\n")
            yield SourceBatch(file, _empty_rows(resolved or Columns(text="text"), split), given, nbytes)
            continue
        if resolved is None:
            resolved = resolve_columns(cols, _first_keys(chunk), fmt, file)
        fields = None if fmt == "txt" else _json_fields(resolved) + ([(split, "scalar")] if split else [])
        good, good_lines, bad_lines, reasons, n_lines = _data.scan_lines(
            chunk, line, fields, threads, resolved.role, resolved.content, role_table(resolved))
        line += n_lines
        bad = pl.DataFrame({"line": pl.Series(pa.array(bad_lines)), "reason": pl.Series(pa.array(reasons))})
        texts = pl.Series("raw", pa.array(good))
        if fmt == "txt":
            frame = pl.DataFrame({"line": pl.Series(pa.array(good_lines)), "text": texts})
        else:
            dtype = pl.Struct({name: _field_dtype(kind) for name, kind in fields})
            frame = texts.str.json_decode(dtype).struct.unnest().with_columns(line=pl.Series(pa.array(good_lines)))
        rows, more_bad = normalize(frame, resolved, split)
        yield SourceBatch(file, rows, pl.concat([given, bad, more_bad]), nbytes)


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
    return [(name, kinds[k]) for k, name in cols.model_dump().items() if k in kinds and name is not None]


def _field_dtype(kind: str) -> pl.DataType:
    return pl.List(MESSAGE) if kind == "messages" else pl.String()


def _read_csv(file: Path, sep: str, cols: Columns, split: str | None, decoding: Decoding) -> Iterator[SourceBatch]:
    # polars reads UTF-8 only: another encoding is transcoded to a temporary file first.
    if decoding.native:
        yield from _read_utf8_csv(file, file, sep, cols, split, decoding.codec)
        return
    with tempfile.TemporaryDirectory(prefix="ftc-csv-") as tmp:
        utf8 = Path(tmp) / "utf8.csv"
        with utf8.open("wb") as out:
            for block, _ in encodings.utf8_blocks(file, decoding):
                out.write(block)
        yield from _read_utf8_csv(file, utf8, sep, cols, split, decoding.codec)


def _read_utf8_csv(file: Path, utf8: Path, sep: str, cols: Columns, split: str | None,
                   codec: str) -> Iterator[SourceBatch]:
    # polars cannot say which row held invalid UTF-8; read lossily and flag the rows whose
    # fields gained a replacement character, but only for a file that is not valid UTF-8.
    lossy = not _valid_utf8(utf8)
    encoding = "utf8-lossy" if lossy else "utf8"
    lf = pl.scan_csv(utf8, separator=sep, infer_schema=False, encoding=encoding)
    ragged: dict[int, str] = {}
    try:
        # a native pass over every field (a row count alone skips them): polars stops at the first
        # ragged row, naming none
        lf.select(pl.all().str.len_bytes().sum()).collect()
    except pl.exceptions.ComputeError as e:
        if "fields" not in str(e):
            raise
        ragged = _ragged_rows(utf8, sep)
        lf = pl.scan_csv(utf8, separator=sep, infer_schema=False, encoding=encoding, truncate_ragged_lines=True)
    for batch in _read_frames(file, lf, cols, file.stat().st_size, split, first_line=2):
        if ragged and batch.rows.height:
            hit = batch.rows["line"].is_in(list(ragged))
            batch.bad = pl.concat([batch.bad, batch.rows.filter(hit).select(
                "line", reason=pl.col("line").replace_strict(ragged, return_dtype=pl.String))])
            batch.rows = batch.rows.filter(~hit)
        if lossy and batch.rows.height:
            broken = _has_replacement_char(batch.rows)
            bad = batch.rows.filter(broken).select("line", reason=pl.lit("undecodable bytes: invalid UTF-8"))
            batch.bad = pl.concat([batch.bad, bad])
            batch.rows = batch.rows.filter(~broken)
        yield batch


def _ragged_rows(file: Path, sep: str) -> dict[int, str]:
    """Rows (numbered as the reader numbers them: the header is 1) whose field count is not the
    header's, with the reason: polars can only refuse the whole file."""
    import csv

    with file.open(encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.reader(f, delimiter=sep)
        width = len(next(reader, []))
        return {n: f"ragged row: {len(row)} fields, the header has {width}"
                for n, row in enumerate(reader, 2) if row and len(row) != width}


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
                 first_line: int = 1, threads: int = 0) -> Iterator[SourceBatch]:
    schema = lf.collect_schema()
    names = schema.names()
    resolved = resolve_columns(cols, names, "frame", file)
    _check_types(file, schema, resolved)
    if resolved.messages is not None and all(c in names for c, _ in _json_fields(resolved)):
        # Conversations take the JSON Lines path, where every format reads a message alike.
        wanted = [c for c, _ in _json_fields(resolved) + ([(split, "")] if split else []) if c in names]
        chunks = ((frame.select(wanted).write_ndjson().encode("utf-8"), 0, {})
                  for frame in lf.collect_batches(chunk_size=CHUNK_ROWS))
        yield from _scan(file, chunks, "jsonl", resolved, threads, split)
    else:
        lf = lf.with_row_index("line", offset=first_line).with_columns(pl.col("line").cast(pl.UInt64))
        for frame in lf.collect_batches(chunk_size=CHUNK_ROWS):
            rows, bad = normalize(frame, resolved, split)
            yield SourceBatch(file, rows, bad, 0)
    # Columnar readers do not report bytes; a last empty batch moves progress past the file.
    yield SourceBatch(file, _empty_rows(resolved, split), _empty_bad(), size)


def _check_types(file: Path, schema: pl.Schema, cols: Columns) -> None:
    """A mapped field of a columnar file must hold what it names (text, or a conversation): a
    cast would fail naming no column, or turn a struct into text silently."""
    scalars = (cols.text, cols.text_pair, cols.prompt, cols.response, cols.system, cols.label)
    for name in (c for c in scalars if c is not None and c in schema):
        dtype = schema[name]
        if dtype.is_nested() or dtype in (pl.Binary, pl.Object):
            raise SourceError(f"{file}: column '{name}' holds {dtype}, not text",
                              hint="map a column of strings (or numbers, for a label), or flatten this one first")
    if cols.messages is not None and cols.messages in schema and not isinstance(schema[cols.messages], pl.List):
        raise SourceError(f"{file}: column '{cols.messages}' holds {schema[cols.messages]}, not a list of messages",
                          hint="a conversation is a list of {role, content} objects")


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
    elif cols.messages is not None:  # already {role, content, extra} (the scanner's)
        el = pl.element()
        content = pl.col(cols.messages).list.eval(
            pl.struct(role=el.struct.field("role"), content=el.struct.field("content"),
                      extra=el.struct.field("extra"))
        ).alias("messages")
    else:
        def turn(role: str, col: str) -> pl.Expr:
            return pl.struct(role=pl.lit(role), content=pl.col(col).cast(pl.String), extra=pl.lit(None, pl.String))

        turns = [turn("user", cols.prompt), turn("assistant", cols.response)]
        if cols.system is not None and cols.system in frame.columns:
            turns.insert(0, turn("system", cols.system))
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

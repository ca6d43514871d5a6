"""JSON files (one array of records), read record by record.

Each record is decoded on its own, so a record that is not valid JSON costs one row (quarantined
with its line, column and byte) when the reader can tell where it ends, and the file goes on.
What cannot be skipped stops the read with the position: a file that is not an array, one that
ends inside a record or before its closing `]` (truncated: it says so, and how to read the
complete records), or a record whose brackets never close.

Cost: the file is held as one string (as any JSON parser holds it) and each record is parsed
once by the standard library's decoder; the positions are computed only on the error paths.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftc.errors import SourceError

_SPACE = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{},]', re.S)  # a string (maybe cut by the end) or a bracket
_DECODER = json.JSONDecoder()


class Where:
    """Positions in `text` as people look for them: line, column and byte of the file."""

    def __init__(self, text: str, codec: str) -> None:
        self.text, self.codec = text, codec

    def __call__(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        try:  # the file's bytes up to `pos` (a byte-order mark included, as the codec writes one)
            byte = f", byte {len(self.text[:pos].encode(self.codec, 'surrogateescape')):,}"
        except (UnicodeError, LookupError):
            byte = ""
        return f"line {line:,}, column {column:,}{byte}"


def records(text: str, file: Path, codec: str, limit: int | None = None) -> Iterator[tuple[Any, str | None]]:
    """(record, None) for each record of the array in `text`, or (None, reason) for one that
    cannot be used; at most `limit` records. Raises `SourceError` where the file cannot go on."""
    where = Where(text, codec)
    last = len(text)
    while last and text[last - 1] in " \t\r\n":  # where the content ends: past it, a record was cut
        last -= 1
    undecodable = f"undecodable bytes: invalid {'UTF-8' if codec in ('utf-8', 'utf-8-sig') else codec}"
    pos = _skip(text, 1 if text.startswith("\ufeff") else 0)
    if not text.startswith("[", pos):
        found = text[pos:pos + 20] or "nothing"
        raise SourceError(f"{file}: a JSON file holds one array of records ([{{...}}, ...]); this one starts "
                          f"with {found!r} at {where(pos)}",
                          hint="for one record per line, name the file .jsonl or set `format = \"jsonl\"` on the "
                          "source")
    pos = _skip(text, pos + 1)
    if text.startswith("]", pos):
        return _end(text, pos + 1, file, where)
    n = 0
    while limit is None or n < limit:
        n += 1
        start = pos
        try:
            record, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if _runs_out(text, e, last):
                raise _truncated(file, n, where(start)) from None
            end = _record_end(text, start)
            if end is None:
                raise SourceError(f"{file}: invalid JSON in record {n:,} at {where(e.pos)}: {e.msg}, and the record "
                                  "never closes, so the records after it cannot be found",
                                  hint="fix the file there (a JSON file holds [{...}, {...}])") from None
            yield None, f"malformed JSON at {where(e.pos)}: {e.msg}"
        else:
            bad = "\udcff" in text[start:end]  # a byte the codec could not decode, inside a string
            yield (None, undecodable) if bad else (record, None)
        pos = _skip(text, end)
        if pos >= len(text):
            raise _truncated(file, n + 1, where(pos), after_record=True)
        if text[pos] == "]":
            return _end(text, pos + 1, file, where)
        if text[pos] != ",":
            raise SourceError(f"{file}: invalid JSON after record {n:,} at {where(pos)}: expected ',' or ']', found "
                              f"{text[pos:pos + 20]!r}", hint="fix the file there (a JSON file holds [{...}, {...}])")
        pos = _skip(text, pos + 1)


def _skip(text: str, pos: int) -> int:
    m = _SPACE.match(text, pos)
    return m.end() if m else pos


def _end(text: str, pos: int, file: Path, where: Where) -> None:
    if (rest := _skip(text, pos)) < len(text):
        raise SourceError(f"{file}: data after the closing ']' of the JSON array, at {where(rest)}",
                          hint="a JSON file holds one array; for one record per line use JSON Lines (.jsonl)")


def _runs_out(text: str, e: json.JSONDecodeError, last: int) -> bool:
    """The decoder failed because the text ended (at `last`), not at a wrong character."""
    if e.pos >= last:
        return True
    return e.msg.startswith("Unterminated string") and not _STRING.match(text, e.pos)


def _truncated(file: Path, n: int, at: str, after_record: bool = False) -> SourceError:
    complete = n - 1
    what = (f"ends after record {complete:,} ({at}) without closing the array" if after_record
            else f"ends inside record {n:,}, which starts at {at}")
    return SourceError(f"{file}: truncated JSON: the file {what}; {complete:,} records are complete",
                       hint="the file was cut short (an interrupted download or copy?): fetch it again, or set "
                       f"`max_rows = {complete}` on the source to read the complete records")


def _record_end(text: str, start: int) -> int | None:
    """Where a malformed record ends: the ',' or ']' that follows it at the array's depth."""
    depth = 0
    for m in _TOKEN.finditer(text, start):
        tok = m.group()
        if tok in "[{":
            depth += 1
        elif tok in "]}":
            depth -= 1
            if depth < 0:  # the array's own ']'
                return m.start()
        elif tok == "," and depth == 0:
            return m.start()
    return None

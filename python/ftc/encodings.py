"""The text encoding of a source file, and its bytes as UTF-8 for the readers.

A source names its encoding (`encoding`: any codec Python knows) or leaves it to `auto`:

    byte-order mark          → UTF-8, UTF-16 or UTF-32, as the mark says
    valid UTF-8              → UTF-8
    mostly UTF-8             → UTF-8; the rows holding the invalid bytes are quarantined
    mostly not UTF-8         → cp1252, and the build says so

"Mostly" counts the non-ASCII characters: a file with more invalid bytes than well-formed UTF-8
characters was written in a single-byte code page. cp1252 is Windows' Western code page, what
most files labelled latin-1 really are (it only adds printable characters where latin-1 has C1
controls), and the five bytes it leaves undefined read as latin-1 does, so the fallback never
fails a row.

UTF-8 files go to the readers as they are (the JSON Lines scanner and polars check each row).
Other files are transcoded to UTF-8 as they stream; a byte the codec cannot decode becomes 0xFF,
which is never valid UTF-8, so the row holding it is quarantined like a bad row of a UTF-8
file, and `reason` names the codec.

Cost: `auto` reads a file without a byte-order mark once more, to validate it as UTF-8.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

UNDECODABLE = "ftc-undecodable"  # codec error handler: a byte the codec cannot decode → 0xFF in UTF-8
LATIN1_FILL = "ftc-latin1-fill"  # cp1252's five undefined bytes read as latin-1 (C1 controls)
UTF8 = ("utf-8", "utf-8-sig")  # the readers' native input
BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # UTF-32 LE starts like UTF-16 LE
FALLBACK = "cp1252"
BLOCK = 8 << 20

codecs.register_error(UNDECODABLE, lambda e: ("\udcff", e.end))  # type: ignore[arg-type]
codecs.register_error(LATIN1_FILL, lambda e: (e.object[e.start:e.end].decode("latin-1"), e.end))  # type: ignore[union-attr]


@dataclass(frozen=True)
class Decoding:
    codec: str  # Python's canonical name
    errors: str = UNDECODABLE
    note: str | None = None  # what `auto` decided, when it is worth saying

    @property
    def native(self) -> bool:
        """UTF-8: the readers take the bytes as they are."""
        return self.codec in UTF8


def codec_name(encoding: str) -> str | None:
    """Python's name for a codec, or None when Python knows no such text codec."""
    try:
        info = codecs.lookup(encoding)
    except LookupError:
        return None
    return info.name if getattr(info, "_is_text_encoding", True) else None


def detect(file: Path, encoding: str) -> Decoding:
    """How to decode `file`: the codec named, or what `auto` finds (see the module doc)."""
    if encoding != "auto":
        return Decoding(codec_name(encoding) or encoding)
    with file.open("rb") as f:
        head = f.read(4)
    for bom, codec in BOMS:
        if head.startswith(bom):
            return Decoding(codec, note=None if codec in UTF8 else f"{codec.upper()} (byte-order mark)")
    invalid, valid = utf8_counts(file)
    if not invalid:
        return Decoding("utf-8")
    if valid >= invalid:
        return Decoding("utf-8", note=f"UTF-8 with {invalid:,} invalid bytes (their rows are quarantined)")
    return Decoding(FALLBACK, LATIN1_FILL, note=f"not UTF-8 ({invalid:,} invalid bytes, {valid:,} UTF-8 characters): "
                    f"read as {FALLBACK} (Windows-1252, latin-1's printable characters and more); set `encoding` "
                    "on the source if it is another")


def utf8_counts(file: Path) -> tuple[int, int]:
    """(bytes that are not UTF-8, well-formed non-ASCII UTF-8 characters) of `file`."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")  # each invalid byte → one surrogate
    invalid = valid = 0
    with file.open("rb") as f:
        while block := f.read(BLOCK):
            if block.isascii() and not decoder.getstate()[0]:  # nothing pending from the last block
                continue
            text = decoder.decode(block)
            clean = text.encode("utf-8", "ignore").decode("utf-8")  # the surrogates go
            invalid += len(text) - len(clean)
            valid += len(clean) - len(clean.encode("ascii", "ignore"))
    invalid += len(decoder.decode(b"", final=True))
    return invalid, valid


def utf8_blocks(file: Path, decoding: Decoding) -> Iterator[tuple[bytes, int]]:
    """The file as UTF-8, block by block: (bytes, bytes of the file they came from)."""
    decoder = codecs.getincrementaldecoder(decoding.codec)(decoding.errors)
    with file.open("rb") as f:
        while block := f.read(BLOCK):
            yield decoder.decode(block).encode("utf-8", "surrogateescape"), len(block)
    yield decoder.decode(b"", final=True).encode("utf-8", "surrogateescape"), 0


def read_text(file: Path, decoding: Decoding) -> str:
    """The whole file as text; an undecodable byte becomes the lone surrogate U+DCFF."""
    return file.read_bytes().decode(decoding.codec, decoding.errors)


def name_codec(bad: pl.DataFrame, decoding: Decoding) -> pl.DataFrame:
    """Reasons of a transcoded file name its codec (the scanner saw UTF-8 and its offsets)."""
    if decoding.native or not bad.height:
        return bad
    return bad.with_columns(pl.col("reason").str.replace(r"^undecodable bytes: invalid UTF-8.*$",
                                                         f"undecodable bytes: invalid {decoding.codec}"))

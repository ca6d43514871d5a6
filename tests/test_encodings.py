"""Source encodings: a codec named on the source, or `auto` (a byte-order mark, else UTF-8,
else cp1252, said in the build's notes); every text read equals Python's own decoding of the
file, and a byte the codec cannot decode costs its row, with the codec named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import read_column, write_spec

from ftc.errors import SourceError, SpecError
from ftc.prep import prep
from ftc.specload import load_spec

# Tweets as a latin-1 export writes them: accents, a euro sign and curly quotes (cp1252 only).
TEXTS = ["café au lait, très bon", "naïve façade — “quoted”", "€5 for a crème brûlée", "plain ascii row",
         "señor, ¿qué tal?", "Ærø and Ödön"]


def read_texts(tmp: Path, model: Path, source: dict) -> tuple[list[str], list[tuple[int, str]]]:
    return read_column(tmp, model, source, "text")


def write(path: Path, fmt: str, texts: list[str], codec: str) -> Path:
    body = {"csv": lambda: "text\n" + "".join(f'"{t}"\n' for t in texts),
            "jsonl": lambda: "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
            "json": lambda: json.dumps([{"text": t} for t in texts], ensure_ascii=False),
            "txt": lambda: "".join(t + "\n" for t in texts)}[fmt]()
    path.write_bytes(body.encode(codec))
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "json", "txt"])
def test_a_cp1252_file_reads_whole_with_auto_and_says_so(tmp_path: Path, bpe_dir: Path, fmt: str):
    write(tmp_path / f"tweets.{fmt}", fmt, TEXTS, "cp1252")
    texts, bad = read_texts(tmp_path, bpe_dir, {"path": f"tweets.{fmt}"})
    assert texts == TEXTS and bad == []
    spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": f"tweets.{fmt}"}],
                      data_split={"valid": 0.0, "test": 0.0})
    (note,) = prep(load_spec(spec)).manifest["stats"]["sources"][0]["notes"]
    assert note.startswith(f"tweets.{fmt}: not UTF-8 (") and "read as cp1252" in note


@pytest.mark.parametrize("codec", ["latin-1", "utf-16", "utf-16-le", "shift_jis"])
def test_a_named_codec_reads_what_python_decodes(tmp_path: Path, bpe_dir: Path, codec: str):
    texts = ["こんにちは世界", "テスト row"] if codec == "shift_jis" else [t.replace("€", "E").replace("“", "'")
                                                                          .replace("”", "'").replace("—", "-") for t in TEXTS]
    for fmt in ("csv", "jsonl", "json", "txt"):
        path = write(tmp_path / f"d.{fmt}", fmt, texts, codec)
        got, bad = read_texts(tmp_path, bpe_dir, {"path": path.name, "encoding": codec})
        expected = [line.strip('"') for line in path.read_bytes().decode(codec).splitlines()[fmt == "csv":]]
        if fmt in ("jsonl", "json"):
            expected = [r["text"] for r in (json.loads(path.read_bytes().decode(codec)) if fmt == "json" else
                                            map(json.loads, path.read_bytes().decode(codec).splitlines()))]
        assert got == expected == texts and bad == [], (codec, fmt)


def test_a_utf16_file_with_a_byte_order_mark_needs_no_setting(tmp_path: Path, bpe_dir: Path):
    for fmt in ("csv", "jsonl", "txt"):
        write(tmp_path / f"d.{fmt}", fmt, TEXTS, "utf-16")  # Python writes the mark
        assert read_texts(tmp_path, bpe_dir, {"path": f"d.{fmt}"}) == (TEXTS, [])


def test_undecodable_bytes_cost_their_row_and_name_the_codec(tmp_path: Path, bpe_dir: Path):
    rows = [t.encode("cp1252") for t in TEXTS[:3]] + [b"bad \x81 byte"]  # 0x81: no cp1252 character
    (tmp_path / "d.txt").write_bytes(b"\n".join(rows) + b"\n")
    texts, bad = read_texts(tmp_path, bpe_dir, {"path": "d.txt", "encoding": "cp1252"})
    assert texts == TEXTS[:3] and bad == [(4, "undecodable bytes: invalid cp1252")]
    (tmp_path / "d.csv").write_bytes(b"text\n" + b"".join(b'"' + row + b'"\n' for row in rows))
    texts, bad = read_texts(tmp_path, bpe_dir, {"path": "d.csv", "encoding": "cp1252"})
    assert texts == TEXTS[:3] and bad == [(5, "undecodable bytes: invalid cp1252")]
    # `auto`: this file is mostly not UTF-8, so cp1252, whose five holes read as latin-1 does.
    texts, bad = read_texts(tmp_path, bpe_dir, {"path": "d.txt"})
    assert texts == TEXTS[:3] + ["bad \x81 byte"] and bad == []


def test_mostly_utf8_stays_utf8_and_quarantines_the_bad_rows(tmp_path: Path, bpe_dir: Path):
    lines = [t.encode("utf-8") for t in TEXTS] + [b"one stray \xe9 byte"]
    (tmp_path / "d.jsonl").write_bytes(b"".join(b'{"text": "' + line + b'"}\n' for line in lines))
    texts, bad = read_texts(tmp_path, bpe_dir, {"path": "d.jsonl"})
    assert texts == TEXTS and [line for line, _ in bad] == [7] and bad[0][1].startswith("undecodable bytes")
    spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.jsonl"}], data={"max_bad_fraction": 0.5})
    (note,) = prep(load_spec(spec)).manifest["stats"]["sources"][0]["notes"]
    assert note == "d.jsonl: UTF-8 with 1 invalid bytes (their rows are quarantined)"


def test_an_unknown_codec_is_a_spec_error_and_parquet_takes_none(tmp_path: Path, bpe_dir: Path):
    with pytest.raises(SpecError, match="unknown text encoding 'latin-11'"):
        load_spec(write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.csv", "encoding": "latin-11"}]))
    import polars as pl

    pl.DataFrame({"text": TEXTS}).write_parquet(tmp_path / "d.parquet")
    with pytest.raises(SourceError, match="does not apply to Parquet"):
        read_texts(tmp_path, bpe_dir, {"path": "d.parquet", "encoding": "latin-1"})
    assert read_texts(tmp_path, bpe_dir, {"path": "d.parquet", "encoding": "utf-8"}) == (TEXTS, [])

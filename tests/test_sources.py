"""Sources: every format, column mapping, globs, weights, max_rows; each kind of unusable row
lands in quarantine with its file, line and reason; source files are never modified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from tiny import write_spec

from ftc.errors import SourceError
from ftc.prep import prep
from ftc.specload import load_spec


def run(tmp: Path, model: Path, sources: list[dict], **tables):
    spec = write_spec(tmp / "spec.toml", model, sources, **{"data": {"max_bad_fraction": 0.9}, **tables})
    return prep(load_spec(spec))


def quarantine(result) -> list[dict]:
    text = (result.path / "quarantine.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_jsonl_bad_rows_quarantined_with_reasons(tmp_path: Path, bpe_dir: Path):
    lines = [
        '{"prompt": "good", "response": "row"}',
        '{"prompt": "broken", ',
        '[1, 2]',
        '{"prompt": 5, "response": "x"}',
        '{"prompt": null, "response": "x"}',
        '{"prompt": "  ", "response": "x"}',
        '{"response": "no prompt"}',
        "",
        '{"prompt": "another", "response": "good row"}',
    ]
    data = ("\n".join(lines) + "\n").encode() + b'{"prompt": "bad \xff byte", "response": "x"}\n'
    (tmp_path / "d.jsonl").write_bytes(data)
    r = run(tmp_path, bpe_dir, [{"path": "d.jsonl", "columns": {"prompt": "prompt", "response": "response"}}])
    got = {q["line"]: q["reason"] for q in quarantine(r)}
    assert got[2].startswith("malformed JSON")
    assert got[3] == "expected a JSON object, found a list"
    assert got[4] == "column 'prompt': expected a string, found a number"
    assert got[5] == "null 'prompt'"
    assert got[6] == "empty 'prompt'"
    assert got[7] == "null 'prompt'"  # a missing key reads as null
    assert got[10].startswith("undecodable bytes")
    assert sorted(got) == [2, 3, 4, 5, 6, 7, 10]  # the blank line 8 is a separator, not a row
    st = r.manifest["stats"]
    assert (st["rows_read"], st["quarantined"], st["kept"]) == (9, 7, 2)
    assert all(q["file"].endswith("d.jsonl") and q["source"] == "d" for q in quarantine(r))


def test_csv_missing_column_null_and_bad_bytes(tmp_path: Path, bpe_dir: Path):
    (tmp_path / "a.csv").write_bytes(b"q,a\nhello,world\nempty,\n\"multi\nline\",ok\nbad \xff,x\n")
    (tmp_path / "b.csv").write_text("question,other\nq1,x\nq2,y\n")
    r = run(tmp_path, bpe_dir, [{"path": "a.csv", "columns": {"prompt": "q", "response": "a"}},
                                {"path": "b.csv", "columns": {"prompt": "question", "response": "answer"}}])
    got = [(Path(q["file"]).name, q["line"], q["reason"]) for q in quarantine(r)]
    assert ("a.csv", 3, "null 'a'") in got
    assert ("a.csv", 5, "undecodable bytes: invalid UTF-8") in got
    assert [g for g in got if g[0] == "b.csv"] == [("b.csv", 2, "missing column 'answer'"), ("b.csv", 3, "missing column 'answer'")]
    assert r.manifest["stats"]["kept"] == 2


def test_too_many_bad_rows_fail_with_summary(tmp_path: Path, bpe_dir: Path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"text": null}\n{"oops\n')
    spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.jsonl"}], data={"max_bad_fraction": 0.5})
    with pytest.raises(SourceError) as e:
        prep(load_spec(spec))
    msg = e.value.render()
    assert "2 of 3 rows (66.7%)" in msg and "d: 2 of 3 rows unusable" in msg and "max_bad_fraction" in msg
    kept = Path(msg.split("the rows and reasons: ")[1].split()[0])
    assert len(kept.read_text().splitlines()) == 2


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json", "parquet", "txt"])
def test_every_format_reads_the_same_rows(tmp_path: Path, bpe_dir: Path, fmt: str):
    texts = [f"document number {i} about packing" for i in range(30)]
    df = pl.DataFrame({"text": texts})
    path = tmp_path / f"d.{fmt}"
    {"csv": lambda: df.write_csv(path), "tsv": lambda: df.write_csv(path, separator="\t"),
     "jsonl": lambda: df.write_ndjson(path), "json": lambda: df.write_json(path),
     "parquet": lambda: df.write_parquet(path), "txt": lambda: path.write_text("\n".join(texts) + "\n")}[fmt]()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    r = run(tmp_path, bpe_dir, [{"path": path.name}], data_split={"valid": 0.0, "test": 0.0})
    assert r.manifest["stats"]["kept"] == 30 and r.manifest["stats"]["quarantined"] == 0
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_messages_globs_weights_and_max_rows(tmp_path: Path, bpe_dir: Path):
    (tmp_path / "parts").mkdir()
    for k in range(3):
        with open(tmp_path / "parts" / f"p{k}.jsonl", "w") as f:
            for i in range(40):
                f.write(json.dumps({"messages": [{"role": "user", "content": f"q{k}-{i}"},
                                                 {"role": "assistant", "content": f"a{k}-{i}"}]}) + "\n")
    r = run(tmp_path, bpe_dir, [{"path": "parts/*.jsonl", "name": "chat", "weight": 2.0},
                                {"path": "parts/p0.jsonl", "name": "capped", "max_rows": 7, "weight": 0.5}],
            data_split={"valid": 0.0, "test": 0.0})
    chat, capped = r.manifest["stats"]["sources"]
    assert chat["files"] == 3 and chat["read"] == 120 and chat["examples"]["train"] == 240
    assert capped["read"] == 7 and 0 <= capped["examples"]["train"] <= 7


def test_hash_split_is_stable_when_rows_are_appended(tmp_path: Path, bpe_dir: Path):
    rows = [json.dumps({"prompt": f"q {i}", "response": f"a {i}"}) for i in range(300)]
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    first = run(tmp_path, bpe_dir, [{"path": "d.jsonl"}], data_split={"valid": 0.2, "test": 0.2})
    (tmp_path / "d.jsonl").write_text("\n".join(reversed(rows + [json.dumps({"prompt": "new", "response": "row"})])) + "\n")
    second = run(tmp_path, bpe_dir, [{"path": "d.jsonl"}], data_split={"valid": 0.2, "test": 0.2})
    import pyarrow as pa

    def examples(result, split):
        with pa.memory_map(str(result.path / f"{split}.arrow")) as src:
            t = pa.ipc.open_stream(src).read_all().to_pydict()
        out = set()
        for ids, lengths in zip(t["input_ids"], t["seq_lengths"], strict=True):
            start = 0
            for n in lengths:
                out.add(tuple(ids[start:start + n]))
                start += n
        return out

    for split in ("valid", "test"):
        assert examples(first, split) <= examples(second, split)
    assert 40 < len(examples(first, "test")) < 80

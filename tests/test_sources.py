"""Sources: every format, column mapping, globs, weights, max_rows; each kind of unusable row
lands in quarantine with its file, line and reason; source files are never modified."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from tiny import read_column, write_spec

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
    # UTF-8 named: an undecodable byte costs its row (`auto` would read this file as cp1252: its
    # only non-ASCII byte is not UTF-8).
    r = run(tmp_path, bpe_dir, [{"path": "d.jsonl", "encoding": "utf-8",
                                 "columns": {"prompt": "prompt", "response": "response"}}])
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
    r = run(tmp_path, bpe_dir, [{"path": "a.csv", "encoding": "utf-8", "columns": {"prompt": "q", "response": "a"}},
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


# ── chat formats ─────────────────────────────────────────────────────────────────────────────

SHAREGPT_NAMES = {"user": "human", "assistant": "gpt", "system": "system"}


def chats(n: int) -> list[list[dict]]:
    return [[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": f"question {i}"},
             {"role": "assistant", "content": f"answer {i}"}] for i in range(n)]


def sharegpt(conv: list[dict], names: dict[str, str] = SHAREGPT_NAMES) -> list[dict]:
    return [{"from": names[m["role"]], "value": m["content"]} for m in conv]


def read_messages(tmp: Path, model: Path, source: dict) -> tuple[list, list]:
    return read_column(tmp, model, source, "messages")


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_sharegpt_reads_as_the_same_messages(tmp_path: Path, bpe_dir: Path, fmt: str):
    """ShareGPT's `conversations: [{from, value}]` in every file format gives the very rows the
    OpenAI form does; a role no name covers is quarantined and counted, by role."""
    convs = chats(12)
    rows = [{"conversations": sharegpt(c)} for c in convs]
    rows[3]["conversations"][1]["from"] = "narrator"
    rows[5]["conversations"][2]["from"] = "chatgpt"  # another assistant name
    df = pl.DataFrame(rows)
    path = tmp_path / f"d.{fmt}"
    {"jsonl": lambda: df.write_ndjson(path), "json": lambda: path.write_text(json.dumps(rows, indent=2)),
     "parquet": lambda: df.write_parquet(path)}[fmt]()
    _jsonl(tmp_path / "openai.jsonl", [{"messages": c} for i, c in enumerate(convs) if i != 3])
    got, bad = read_messages(tmp_path, bpe_dir, {"path": path.name})
    want, _ = read_messages(tmp_path, bpe_dir, {"path": "openai.jsonl"})
    assert got == want and got[0][1] == {"role": "user", "content": "question 0", "extra": None}
    assert bad == [(4, "unknown role 'narrator': column 'conversations'[1]")]
    r = run(tmp_path, bpe_dir, [{"path": path.name}])
    assert r.manifest["stats"]["funnel"][1]["reasons"] == {"unknown role 'narrator'": 1}


def test_messages_mapped_in_columns(tmp_path: Path, bpe_dir: Path):
    names = {"user": "customer", "assistant": "agent", "system": "system"}
    _jsonl(tmp_path / "d.jsonl", [{"dialog": [{"speaker": m["from"], "text": m["value"]} for m in sharegpt(c, names)]}
                                  for c in chats(4)])
    columns = {"messages": "dialog", "role": "speaker", "content": "text",
               "roles": {"user": ["customer"], "assistant": ["agent"]}}
    got, bad = read_messages(tmp_path, bpe_dir, {"path": "d.jsonl", "columns": columns})
    _jsonl(tmp_path / "openai.jsonl", [{"messages": c} for c in chats(4)])
    assert bad == [] and got == read_messages(tmp_path, bpe_dir, {"path": "openai.jsonl"})[0]
    with pytest.raises(Exception, match="go with `messages`"):
        load_spec(write_spec(tmp_path / "bad.toml", bpe_dir, [{"path": "d.jsonl", "columns": {"text": "t", "role": "r"}}]))


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_tool_calls_from_openai_and_sharegpt_train_as_transformers_renders_them(tmp_path: Path):
    """OpenAI messages with `name`, `tool_calls` and tool answers, and the same conversation in
    ShareGPT's `function_call`/`observation` form, give the ids `apply_chat_template` gives."""
    from test_template import TOOL_CONVERSATION, TOOL_TEMPLATE
    from tiny import bpe_model_dir
    from transformers import AutoTokenizer

    model = bpe_model_dir(tmp_path / "m", template=TOOL_TEMPLATE)
    openai = [m for m in TOOL_CONVERSATION]
    call = openai[2]["tool_calls"][0]["function"]
    shared = [{"from": "system", "value": openai[0]["content"]}, {"from": "human", "value": openai[1]["content"]},
              {"from": "function_call", "value": json.dumps(call)}, {"from": "observation", "value": "5"},
              {"from": "gpt", "value": "It is 5."}]
    _jsonl(tmp_path / "openai.jsonl", [{"messages": openai}])
    _jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": shared}])
    ref = AutoTokenizer.from_pretrained(model)
    for name, conv in (("openai", openai), ("sharegpt", [{k: v for k, v in m.items() if k != "name"} for m in openai])):
        r = run(tmp_path, model, [{"path": f"{name}.jsonl"}], data_split={"valid": 0.0, "test": 0.0},
                tokenize={"pack": False})
        with pa.memory_map(str(r.path / "train.arrow")) as src:
            t = pa.ipc.open_stream(src).read_all().to_pydict()
        assert t["input_ids"] == [list(ref.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"])]
        labelled = ref.decode([i for i, lab in zip(t["input_ids"][0], t["labels"][0], strict=True) if lab != -100])
        assert labelled == f'<tool_call>\n{json.dumps(call)}\n</tool_call><|im_end|>It is 5.<|im_end|>'


# ── JSON that goes wrong ─────────────────────────────────────────────────────────────────────

def test_a_truncated_json_array_says_so_where_and_how_to_read_the_rest(tmp_path: Path, bpe_dir: Path):
    records = [{"text": f"record number {i}"} for i in range(5)]
    data = json.dumps(records, indent=1).encode()
    cut = data.index(b'"record number 3') + 5
    (tmp_path / "d.json").write_bytes(data[:cut])
    with pytest.raises(SourceError) as e:
        run(tmp_path, bpe_dir, [{"path": "d.json"}])
    start = data.rindex(b"{", 0, cut)  # where the cut record begins, counted independently
    line = data[:start].count(b"\n") + 1
    assert (f"truncated JSON: the file ends inside record 4, which starts at line {line}, column 2, byte {start}; "
            "3 records are complete") in e.value.message
    assert "max_rows = 3" in e.value.hint
    r = run(tmp_path, bpe_dir, [{"path": "d.json", "max_rows": 3}], data_split={"valid": 0.0, "test": 0.0})
    assert r.manifest["stats"]["kept"] == 3
    (tmp_path / "d.json").write_bytes(data.rstrip()[:-1])  # every record, no closing bracket
    with pytest.raises(SourceError, match="ends after record 5 .* without closing the array; 5 records"):
        run(tmp_path, bpe_dir, [{"path": "d.json"}])


def test_a_malformed_json_record_costs_its_row_and_says_where(tmp_path: Path, bpe_dir: Path):
    text = '[\n {"text": "one"},\n {"text": "two" "oops": 1},\n {"text": "three"}\n]\n'
    (tmp_path / "d.json").write_text(text)
    r = run(tmp_path, bpe_dir, [{"path": "d.json"}], data_split={"valid": 0.0, "test": 0.0})
    byte = text.index('"oops"')
    assert [(q["line"], q["reason"]) for q in quarantine(r)] == [
        (2, f"malformed JSON at line 3, column {byte - text.index('{', 10) + 2}, byte {byte}: Expecting ',' delimiter")]
    assert r.manifest["stats"]["kept"] == 2
    (tmp_path / "d.json").write_text('{"text": "an object, not an array"}')
    with pytest.raises(SourceError, match="holds one array of records.*line 1, column 1, byte 0") as e:
        run(tmp_path, bpe_dir, [{"path": "d.json", "format": "json"}])
    assert ".jsonl" in e.value.hint


def test_json_records_keep_their_numbers_across_batches(tmp_path: Path, bpe_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    from ftc import sources

    monkeypatch.setattr(sources, "CHUNK_ROWS", 4)  # records 1-4, 5-8, 9-12, then an empty batch
    records = [json.dumps({"text": f"record number {i}"}) for i in range(1, 13)]
    records[5] = '{"text": oops}'
    text = "[" + ",\n".join(records) + "]"
    (tmp_path / "d.json").write_text(text)
    r = run(tmp_path, bpe_dir, [{"path": "d.json"}], data_split={"valid": 0.0, "test": 0.0})
    at = text.index("oops")
    where = f"line {text[:at].count(chr(10)) + 1}, column {at - text.rindex(chr(10), 0, at)}, byte {at}"
    assert [(q["line"], q["reason"]) for q in quarantine(r)] == [(6, f"malformed JSON at {where}: Expecting value")]
    assert r.manifest["stats"]["kept"] == 11
    r = run(tmp_path, bpe_dir, [{"path": "d.json", "max_rows": 8}], data_split={"valid": 0.0, "test": 0.0})
    assert (r.manifest["stats"]["rows_read"], r.manifest["stats"]["kept"]) == (8, 7)


def test_a_cut_json_line_says_the_record_ends_early(tmp_path: Path, bpe_dir: Path):
    cut = '{"text": "cut sho'
    (tmp_path / "d.jsonl").write_text('{"text": "fine"}\n' + cut)
    r = run(tmp_path, bpe_dir, [{"path": "d.jsonl"}])
    (q,) = quarantine(r)
    assert q["line"] == 2 and q["reason"].startswith(f"malformed JSON: the line ends inside the record (column {len(cut)})")

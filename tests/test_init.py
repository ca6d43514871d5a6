"""`ftc init DATA_FILE`: each shape the data stage reads → a commented spec that validates and
that `ftc prep` runs as written, with the task's rows; and its one-line errors."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from ftc import prep
from ftc.cli import main
from ftc.specload import load_spec

N = 40


def init(*args: str, input: str | None = None):
    return CliRunner().invoke(main, ["init", *args], input=input)


def made(data: Path, base: Path, *args: str) -> tuple[dict, object]:
    """`ftc init DATA --yes`: the spec's TOML, and the dataset `prep` builds from it."""
    out = data.parent / "spec.toml"
    result = init(str(data), "--yes", "--base", str(base), "--out", str(out), *args)
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stderr
    return tomllib.loads(out.read_text(encoding="utf-8")), prep.prep(load_spec(out))


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def sentences(n: int = N) -> list[str]:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "fine", "tuning", "needs", "clean",
             "data", "and", "careful", "packing"]
    return [" ".join(words[(i + k) % len(words)] for k in range(4 + i % 5)) + f" {i}" for i in range(n)]


# ── causal-lm ────────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("key, role, content, user, bot", [("messages", "role", "content", "user", "assistant"),
                                                            ("conversations", "from", "value", "human", "gpt")])
def test_conversations_are_sft(tmp_path: Path, bpe_dir: Path, key, role, content, user, bot):
    rows = [{key: [{role: user, content: f"question {s}"}, {role: bot, content: f"answer {s}"}], "id": i}
            for i, s in enumerate(sentences())]
    spec, result = made(jsonl(tmp_path / "chat.jsonl", rows), bpe_dir)
    assert spec["model"] == {"base": str(bpe_dir), "task": "causal-lm"}
    assert spec["data"]["sources"] == [{"path": "chat.jsonl", "columns": {"messages": key}}]
    assert spec["tokenize"]["template"] == "auto" and spec["tokenize"]["train_on"] == "completions"
    m = result.manifest
    assert m["task"] == "causal-lm" and m["template"] is not None
    assert m["stats"]["kept"] == N and m["stats"]["quarantined"] == 0


@pytest.mark.parametrize("prompt, response", [("prompt", "response"), ("instruction", "output"),
                                              ("question", "answer")])
def test_prompt_response_pairs_are_sft(tmp_path: Path, bpe_dir: Path, prompt, response):
    frame = pl.DataFrame({prompt: [f"say {s}" for s in sentences()], response: sentences(), "input": [""] * N})
    frame.write_csv(tmp_path / "pairs.csv")
    spec, result = made(tmp_path / "pairs.csv", bpe_dir)
    assert spec["model"]["task"] == "causal-lm"
    assert spec["data"]["sources"][0]["columns"] == {"prompt": prompt, "response": response}
    assert "# Not read: input." in (tmp_path / "spec.toml").read_text()
    assert result.manifest["stats"]["kept"] == N and result.manifest["template"] is not None


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.jsonl"])
def test_plain_text_is_continued_pretraining(tmp_path: Path, bpe_dir: Path, name):
    data = tmp_path / name
    if name.endswith(".txt"):
        data.write_text("\n".join(sentences()) + "\n", encoding="utf-8")
    else:
        jsonl(data, [{"text": s, "source": "web"} for s in sentences()])
    spec, result = made(data, bpe_dir)
    assert spec["model"]["task"] == "causal-lm"
    assert spec["data"]["sources"][0].get("columns") == (None if name.endswith(".txt") else {"text": "text"})
    assert spec["tokenize"]["truncation"] == "chunk"
    m = result.manifest
    assert m["task"] == "causal-lm" and m["template"] is None  # raw text: no chat template
    assert m["stats"]["kept"] == N


# ── classification ───────────────────────────────────────────────────────────────────────────

def test_text_and_label_is_classification_with_the_labels_seen(tmp_path: Path, wordpiece_dir: Path):
    labels = ["positive", "negative", "neutral"]
    pl.DataFrame({"text": sentences(), "label": [labels[i % 3] for i in range(N)]}).write_csv(tmp_path / "rev.csv")
    spec, result = made(tmp_path / "rev.csv", wordpiece_dir)
    assert spec["model"]["task"] == "classification"
    assert spec["model"]["labels"] == ["negative", "neutral", "positive"]
    assert spec["data"]["sources"][0]["columns"] == {"text": "text", "label": "label"}
    assert f"The labels of all {N} rows" in (tmp_path / "spec.toml").read_text()
    assert spec["eval"]["metrics"] == ["accuracy", "f1"]
    m = result.manifest
    assert m["task"] == "classification" and m["labels"] == ["negative", "neutral", "positive"]
    assert m["stats"]["kept"] == N


def test_a_sample_says_it_is_one(tmp_path: Path, wordpiece_dir: Path):
    """Labels from the first rows only: the spec says so, and names integers as indexes."""
    from ftc.scaffold import SAMPLE_ROWS

    n = SAMPLE_ROWS + 50
    jsonl(tmp_path / "big.jsonl", [{"text": f"row {i}", "intent": i % 2} for i in range(n)])
    spec, result = made(tmp_path / "big.jsonl", wordpiece_dir)
    text = " ".join(x.lstrip("# ") for x in (tmp_path / "spec.toml").read_text().splitlines())  # notes unwrapped
    assert spec["model"]["labels"] == ["0", "1"] and spec["data"]["sources"][0]["columns"]["label"] == "intent"
    assert f"the first {SAMPLE_ROWS:,} rows, a sample (add any it missed)" in text and "Integer labels index this list" in text
    assert result.manifest["stats"]["kept"] == n  # the whole file is read, not the sample


def test_task_overrides_the_detected_one(tmp_path: Path, bpe_dir: Path):
    jsonl(tmp_path / "rev.jsonl", [{"text": s, "label": i % 2} for i, s in enumerate(sentences())])
    spec, result = made(tmp_path / "rev.jsonl", bpe_dir, "--task", "causal-lm")
    assert spec["model"]["task"] == "causal-lm" and "labels" not in spec["model"]
    assert spec["data"]["sources"][0]["columns"] == {"text": "text"}
    assert result.manifest["task"] == "causal-lm"


# ── token classification ─────────────────────────────────────────────────────────────────────

def tagged_rows() -> list[dict]:
    return [{"tokens": ["Ann", "met", "Bob", "in", f"Paris{i}"], "tags": ["B-PER", "O", "B-PER", "O", "B-LOC"]}
            for i in range(N)]


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "conll", "conll.txt", "spans"])
def test_tagged_words_are_token_classification(tmp_path: Path, wordpiece_dir: Path, kind):
    rows = tagged_rows()
    if kind == "jsonl":
        data = jsonl(tmp_path / "ner.jsonl", rows)
    elif kind == "parquet":
        data = tmp_path / "ner.parquet"
        pl.DataFrame(rows).write_parquet(data)
    elif kind == "spans":  # "Ann met Bob in ParisN": Ann 0-3, Bob 8-11, ParisN from 15
        data = jsonl(tmp_path / "ner.jsonl", [{"text": " ".join(r["tokens"]), "entities": [
            {"start": 0, "end": 3, "label": "PER"}, {"start": 8, "end": 11, "label": "PER"},
            {"start": 15, "end": 15 + len(r["tokens"][4]), "label": "LOC"}]} for r in rows])
    else:
        data = tmp_path / f"ner.{kind}"
        data.write_text("-DOCSTART- O\n\n" + "\n\n".join("\n".join(f"{w}\t{t}" for w, t in zip(r["tokens"], r["tags"]))
                                                          for r in rows) + "\n", encoding="utf-8")
    spec, result = made(data, wordpiece_dir)
    assert spec["model"]["task"] == "token-classification"
    source = spec["data"]["sources"][0]
    assert source.get("format") == ("conll" if kind == "conll.txt" else None)
    assert source.get("columns") == {"jsonl": {"tokens": "tokens", "tags": "tags"}, "parquet": {
        "tokens": "tokens", "tags": "tags"}, "spans": {"text": "text", "entities": "entities"}}.get(kind)
    assert spec["data"]["tags"]["scheme"] == "IOB2"
    seen = "Entity types seen in the sample: LOC, PER." if kind == "spans" else \
        "Tags seen in the sample: B-LOC, B-PER, O."
    assert seen in " ".join(x.lstrip("# ") for x in (tmp_path / "spec.toml").read_text().splitlines())
    m = result.manifest
    assert m["task"] == "token-classification" and m["stats"]["kept"] == N
    assert set(m["labels"]) == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"}  # each type's I- tag is added


# ── question answering ───────────────────────────────────────────────────────────────────────

def qa_rows() -> list[dict]:
    return [{"id": f"q{i}", "context": f"The fox number {i} lives in Paris near the river.",
             "question": f"Where does fox {i} live?", "answers": {"text": ["Paris"], "answer_start": [
                 len(f"The fox number {i} lives in ")]}} for i in range(N)]


@pytest.mark.parametrize("kind", ["flat", "squad"])
def test_questions_are_question_answering(tmp_path: Path, wordpiece_dir: Path, kind):
    rows = qa_rows()
    if kind == "flat":
        data = jsonl(tmp_path / "qa.jsonl", rows)
    else:
        data = tmp_path / "squad.json"
        data.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
            {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"], "answers": [
                {"text": "Paris", "answer_start": r["answers"]["answer_start"][0]}]}]} for r in rows]}]}))
    spec, result = made(data, wordpiece_dir)
    assert spec["model"]["task"] == "question-answering"
    assert spec["data"]["sources"][0].get("columns") == ({"context": "context", "question": "question",
                                                          "answers": "answers", "id": "id"} if kind == "flat" else None)
    assert spec["tokenize"]["doc_stride"] < spec["tokenize"]["max_length"]
    m = result.manifest
    assert m["task"] == "question-answering" and m["question_answering"]["questions"] == N


# ── the command itself ───────────────────────────────────────────────────────────────────────

def test_default_out_is_the_stem_in_the_current_directory(tmp_path: Path, bpe_dir: Path, monkeypatch):
    (tmp_path / "data").mkdir()
    data = jsonl(tmp_path / "data" / "chat.jsonl", [{"prompt": "hi", "response": s} for s in sentences()])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = init(str(data), "--yes", "--base", str(bpe_dir))
    assert result.exit_code == 0, result.output
    spec = load_spec(work / "chat.toml")
    assert spec.data.sources[0].path == "../data/chat.jsonl"
    assert prep.prep(spec).manifest["stats"]["kept"] == N


def test_asks_for_the_base_model_without_yes(tmp_path: Path, bpe_dir: Path):
    data = jsonl(tmp_path / "chat.jsonl", [{"prompt": "hi", "response": s} for s in sentences()])
    out = tmp_path / "spec.toml"
    result = init(str(data), "--out", str(out), input=f"{bpe_dir}\ny\n")
    assert result.exit_code == 0, result.output
    assert "columns: prompt, response" in result.stderr and "task causal-lm" in result.stderr
    assert load_spec(out).model.base == str(bpe_dir)
    declined = init(str(data), "--out", str(tmp_path / "other.toml"), input=f"{bpe_dir}\nn\n")
    assert declined.exit_code == 1 and not (tmp_path / "other.toml").exists()


def test_an_existing_spec_needs_force(tmp_path: Path, bpe_dir: Path):
    data = jsonl(tmp_path / "chat.jsonl", [{"text": s} for s in sentences()])
    out = tmp_path / "spec.toml"
    out.write_text("# mine\n")
    result = init(str(data), "--yes", "--out", str(out))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.splitlines()[0] == f"error: {out} exists; `ftc init` does not overwrite a spec"
    assert "--force" in result.stderr and out.read_text() == "# mine\n"
    forced = init(str(data), "--yes", "--out", str(out), "--base", str(bpe_dir), "--force")
    assert forced.exit_code == 0 and load_spec(out).model.task == "causal-lm"


@pytest.mark.parametrize("name, content, args, found, hint", [
    ("odd.jsonl", '{"a": "x", "b": "y"}\n', [], "columns: a, b", "run `ftc init` again"),
    ("odd.csv", "left,right\nx,y\n", [], "columns: left, right", "run `ftc init` again"),
    ("chat.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n', ["--task", "token-classification"],
     "columns: messages (it reads as causal-lm)", "token classification reads `tokens` + `tags`"),
])
def test_a_shape_it_cannot_tell_is_one_line_naming_the_columns(tmp_path: Path, name, content, args, found, hint):
    data = tmp_path / name
    data.write_text(content)
    result = init(str(data), "--yes", "--out", str(tmp_path / "spec.toml"), *args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    first, _, said = result.stderr.partition("\n\nhint: ")
    assert first.startswith(f"error: {data}: cannot tell") and first.endswith(found) and "\n" not in first
    assert hint in said
    assert not (tmp_path / "spec.toml").exists()


def test_an_unreadable_file_is_one_line(tmp_path: Path):
    data = tmp_path / "broken.json"
    data.write_text('[{"text": "a"}, {"text": ')
    result = init(str(data), "--yes", "--out", str(tmp_path / "spec.toml"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(f"error: {data}: truncated JSON")
    unknown = tmp_path / "data.xyz"
    unknown.write_text("x")
    result = init(str(unknown), "--yes", "--out", str(tmp_path / "spec.toml"))
    assert result.exit_code == 1 and "unknown extension `.xyz`" in result.stderr and "--format" in result.stderr


def test_help_teaches_the_shapes_and_the_default_out():
    result = CliRunner().invoke(main, ["init", "--help"])
    text = " ".join(result.output.split())  # as wrapped for any terminal width
    assert result.exit_code == 0
    assert "ShareGPT `conversations` → causal-lm" in text and "rows → question-answering" in text
    assert "<DATA_FILE's stem>.toml in the current directory" in text and "--force" in text


# ── preference ───────────────────────────────────────────────────────────────────────────────

def test_unpaired_rows_are_kto(tmp_path: Path, bpe_dir: Path):
    rows = [{"prompt": f"question {s}", "completion": f"answer {s}", "label": i % 2 == 0}
            for i, s in enumerate(sentences())]
    spec, result = made(jsonl(tmp_path / "kto.jsonl", rows), bpe_dir)
    assert spec["model"]["task"] == "preference" and spec["train"]["preference"]["loss"] == "kto"
    assert spec["data"]["sources"][0]["columns"] == {"prompt": "prompt", "completion": "completion", "label": "label"}
    p = result.manifest["preference"]
    assert (p["unpaired_desirable"], p["unpaired_undesirable"]) == (N // 2, N // 2)

"""`model.task = "question-answering"` end to end on a tiny BERT: the data stage's windows equal
transformers' run_qa.py preprocessing, evaluation equals SQuAD's metrics of the pipeline's
answers, the ONNX export passes parity, the torch-free runtime answers as the pipeline does,
and `POST /v1/answer` names what is wrong with a body."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from ftc import build as stages
from ftc import export, prep, runtime
from ftc.cli import main
from ftc.errors import ExportError
from ftc.runtime.serve import make_server
from ftc.specload import load_spec
from ftc.tasks import squad
from test_question_answering import (
    _rows,
    _with_types,
    pipeline_answers,
    run_qa_features,
)
from test_runtime import call
from tiny import write_spec
from transformers import AutoTokenizer

MAX_LEN, STRIDE = 48, 12
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "model", "data", "paris", "capital", "france",
         "clean", "needs", "end"]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _split(path: Path, name: str) -> pa.Table:
    with pa.memory_map(str(path / f"{name}.arrow")) as f:
        return pa.ipc.open_stream(f).read_all()


def qa_rows(n_contexts: int, seed: int = 0) -> list[dict]:
    """Contexts of tiny-vocabulary words, three questions each naming their answer's first word,
    every fifth question without an answer (SQuAD v2)."""
    rng = random.Random(seed)
    rows = []
    for c in range(n_contexts):
        words = [rng.choice(WORDS) for _ in range(rng.randint(12, 50))]
        context = " ".join(words)
        for q in range(3):
            i = rng.randrange(len(words))
            j = min(len(words), i + rng.randint(1, 3))
            start = len(" ".join(words[:i])) + (1 if i else 0)
            answers = {"text": [" ".join(words[i:j])], "answer_start": [start]}
            if (3 * c + q) % 5 == 4:
                answers = {"text": [], "answer_start": []}
            rows.append({"id": f"c{c}q{q}", "question": f"which {words[i]} is it", "context": context,
                         "answers": answers})
    return rows


# ── the data stage ───────────────────────────────────────────────────────────────────────────

def test_prep_windows_equal_run_qa(tmp_path: Path, wordpiece_dir: Path):
    """All kept rows in the training split, in file order: their windows are run_qa.py's."""
    rows = _rows()
    extra = [
        {"id": "located", "question": "Where?", "context": "It is in Paris now.", "answers": ["Paris"]},
        {"id": "absent", "question": "Who?", "context": "Nobody here.", "answers": ["Paris"]},
        {"id": "no-field", "question": "What?", "context": "Some text."},
        {"id": "v2", "question": "Why?", "context": "No reason given.", "answers": []},
    ]
    _jsonl(tmp_path / "qa.jsonl", rows + extra)
    spec = load_spec(write_spec(tmp_path / "spec.toml", wordpiece_dir, [{"path": "qa.jsonl"}],
                                model={"task": "question-answering"}, data={"max_bad_fraction": 0.5},
                                data_split={"valid": 0.0, "test": 0.0},
                                tokenize={"max_length": MAX_LEN, "doc_stride": STRIDE}))
    result = prep.prep(spec)
    m = result.manifest
    assert m["question_answering"] == {"questions": 10, "answerable": 8, "unanswerable": 2, "located_answers": 1,
                                       "max_windows": m["question_answering"]["max_windows"], "doc_stride": STRIDE}
    quarantine = [json.loads(x) for x in (result.path / "quarantine.jsonl").read_text().splitlines()]
    assert [q["line"] for q in quarantine] == [10, 11]
    assert quarantine[0]["reason"] == "answer 0 'Paris' does not occur in its context"
    assert quarantine[1]["reason"].startswith("no `answers` field")
    kept = rows + [{**extra[0], "answers": {"text": ["Paris"], "answer_start": [9]}}, extra[3] | {
        "answers": {"text": [], "answer_start": []}}]
    tok = _with_types(AutoTokenizer.from_pretrained(wordpiece_dir))
    ref = run_qa_features(tok, kept, MAX_LEN, STRIDE)
    train = _split(result.path, "train")
    assert train.column("input_ids").to_pylist() == ref["input_ids"]
    assert train.column("token_type_ids").to_pylist() == ref["token_type_ids"]
    assert train.column("example").to_pylist() == ref["example"]
    assert m["stats"]["splits"]["train"]["windows"] == len(ref["input_ids"]) > len(kept)
    starts, ends = train.column("start_positions").to_pylist(), train.column("end_positions").to_pylist()
    for i, (s, e) in enumerate(zip(starts, ends)):
        if (s, e) != (ref["start"][i], ref["end"][i]):  # run_qa.py's one slip: a start past the last context token
            assert ref["start"][i] == len(ref["input_ids"][i]) - 1 and s == e
    assert sum((s, e) == (ref["start"][i], ref["end"][i]) for i, (s, e) in enumerate(zip(starts, ends))) \
        >= len(starts) - 1
    assert (np.asarray(starts) == 0).sum() == m["stats"]["splits"]["train"]["windows_without_answer"] > 0


def test_token_counts_are_the_whole_question_and_context(tmp_path: Path, wordpiece_dir: Path):
    """`min_tokens` / `max_tokens` count a question with its whole context, before windowing."""
    from types import SimpleNamespace

    import polars as pl
    from ftc import _data
    from ftc.tasks import qa_data

    rows = _rows()
    spec = load_spec(write_spec(tmp_path / "spec.toml", wordpiece_dir, [{"path": "qa.jsonl"}],
                                model={"task": "question-answering"},
                                tokenize={"max_length": MAX_LEN, "doc_stride": STRIDE}))
    run = SimpleNamespace(spec=spec, encoder=_data.DataEncoder((wordpiece_dir / "tokenizer.json").read_text()))
    frame = pl.DataFrame({"text": [r["question"] for r in rows], "text_pair": [r["context"] for r in rows],
                          "answers": [r["answers"] for r in rows]}, schema_overrides={"answers": qa_data.ANSWERS})
    ids, _, status, _, hashes, lengths = qa_data.encode(run, frame)
    tok = _with_types(AutoTokenizer.from_pretrained(wordpiece_dir))
    assert list(lengths) == [len(tok(r["question"].lstrip(), r["context"])["input_ids"]) for r in rows]
    assert max(lengths) > MAX_LEN and list(status) == [0] * len(rows)
    assert [len(w) for w in ids.to_pylist()] == [len(ws) for ws in _windows_per_row(tok, rows)]
    assert hashes[0] == hashes[1] != hashes[3]  # the same context, the same hash


def _windows_per_row(tok, rows: list[dict]) -> list[list]:
    ref = run_qa_features(tok, rows, MAX_LEN, STRIDE)
    return [[w for w, e in enumerate(ref["example"]) if e == i] for i in range(len(rows))]


def test_squad_json_is_read_and_split_by_context(tmp_path: Path, wordpiece_dir: Path):
    """Nested SQuAD: a misplaced answer is quarantined at its question's number; every question
    of a context lands in the same split, and evaluation splits carry the gold answers."""
    rows = qa_rows(40, seed=1)
    by_context: dict[str, list[dict]] = {}
    for r in rows:
        by_context.setdefault(r["context"], []).append(r)
    doc = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [
        {"context": c, "qas": [{"id": r["id"], "question": r["question"], "is_impossible": not r["answers"]["text"],
                                "answers": [{"text": t, "answer_start": s} for t, s in
                                            zip(r["answers"]["text"], r["answers"]["answer_start"])]}
                               for r in qs]} for c, qs in by_context.items()]}]}
    doc["data"][0]["paragraphs"][0]["qas"][1]["answers"] = [{"text": "zebra", "answer_start": 0}]
    doc["data"][0]["paragraphs"][0]["qas"][1]["is_impossible"] = False
    (tmp_path / "squad.json").write_text(json.dumps(doc), encoding="utf-8")
    spec = load_spec(write_spec(tmp_path / "spec.toml", wordpiece_dir, [{"path": "squad.json"}],
                                model={"task": "question-answering"}, data={"max_bad_fraction": 0.1},
                                data_split={"valid": 0.2, "test": 0.3},
                                tokenize={"max_length": MAX_LEN, "doc_stride": STRIDE}))
    result = prep.prep(spec)
    quarantine = [json.loads(x) for x in (result.path / "quarantine.jsonl").read_text().splitlines()]
    assert [q["line"] for q in quarantine] == [2] and "'zebra'" in quarantine[0]["reason"]
    seen: dict[str, str] = {}
    for name in ("valid", "test"):
        t = _split(result.path, name)
        assert t.num_rows > 0
        for ctx in t.column("context").to_pylist():
            assert seen.setdefault(ctx, name) == name
        gold = {r["id"]: r["answers"]["text"] for r in rows}
        assert all(a["text"] == gold[i] for i, a in zip(t.column("id").to_pylist(), t.column("answers").to_pylist()))
    train_ids = _split(result.path, "train").column("input_ids").to_pylist()
    assert train_ids and m_questions(result.manifest) == len(rows) - 1
    assert result.manifest["question_answering"]["unanswerable"] == sum(not r["answers"]["text"] for r in rows)


def m_questions(manifest: dict) -> int:
    return sum(s["examples"] for s in manifest["stats"]["splits"].values())


@pytest.mark.parametrize(("table", "words"), [
    ({"tokenize": {"truncation": "left"}}, "truncation = \"left\""),
    ({"data_clean": {"collapse_whitespace": True}}, "collapse_whitespace rewrite the text"),
    ({"data_clean": {"replace": [{"pattern": "a", "with": "b"}]}}, "replace rewrite the text"),
    ({"data_augment": {"copies": 1, "swap": 0.1}}, "`data.augment` rewrites words"),
    ({"data_balance": {"strategy": "oversample"}}, "question answering has none"),
    ({"data_split": {"by": "random"}}, "splits by the hash of the context"),
    ({"tokenize": {"max_length": 32, "doc_stride": 32}}, "must be below `max_length = 32`"),
    ({"eval": {"metrics": ["accuracy"]}}, "whose metrics are ['exact_match', 'f1']"),
])
def test_spec_refuses_what_cannot_apply(tmp_path: Path, wordpiece_dir: Path, table: dict, words: str):
    from ftc.errors import SpecError

    path = write_spec(tmp_path / "spec.toml", wordpiece_dir, [{"path": "qa.jsonl"}],
                      model={"task": "question-answering"}, **table)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert words in str(e.value) and "Traceback" not in str(e.value)


# ── train, evaluate, export ──────────────────────────────────────────────────────────────────

@pytest.fixture(scope="module")
def qa_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ftc-home")


@pytest.fixture(autouse=True)
def ftc_home(qa_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The module's tests share one store, so the run is trained and exported once."""
    monkeypatch.setenv("FTC_HOME", str(qa_home))
    return qa_home


@pytest.fixture(scope="module")
def qa_build(qa_home: Path, bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> stages.BuildResult:
    folder = tmp_path_factory.mktemp("qa")
    _jsonl(folder / "qa.jsonl", qa_rows(60))
    spec = write_spec(folder / "spec.toml", bert_dir, [{"path": "qa.jsonl"}], model={"task": "question-answering"},
                      tokenize={"max_length": MAX_LEN, "doc_stride": STRIDE},
                      data_split={"valid": 0.0, "test": 0.25},
                      train={"method": "full", "max_steps": 12, "batch_size": 8, "learning_rate": 3e-3,
                             "logging_steps": 50},
                      eval={"metrics": ["exact_match", "f1"], "compare_base": True, "max_answer_length": 5},
                      export={"onnx": True, "quantize": "int8", "rows": 64, "verify": False})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTC_HOME", str(qa_home))
        return stages.build(load_spec(spec))


def _pipeline_model(model_dir: Path):
    import torch
    from transformers import AutoModelForQuestionAnswering

    model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()

    def forward(inputs: dict[str, list[int]]) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            out = model(**{k: torch.tensor([v]) for k, v in inputs.items()})
        return out.start_logits[0].numpy(), out.end_logits[0].numpy()
    return forward, _with_types(AutoTokenizer.from_pretrained(model_dir))


def _test_questions(build: stages.BuildResult) -> list[dict]:
    t = _split(build.data.path, "test").to_pylist()
    first = {}
    for w in t:
        first.setdefault(w["example"], w)
    return list(first.values())


def test_evaluation_equals_squad_metrics_of_the_pipeline(qa_build: stages.BuildResult):
    """The run's test metrics are SQuAD's script over the answers the pipeline's procedure reads
    from the trained model, question by question (no "no answer" offered: v2 data holds some)."""
    m = qa_build.manifest
    forward, tok = _pipeline_model(qa_build.path / "model")
    predictions, references = {}, {}
    for q in _test_questions(qa_build):
        best = pipeline_answers(forward, tok, q["question"], q["context"], max_seq_len=MAX_LEN, doc_stride=STRIDE,
                                top_k=1, max_answer_len=5, handle_impossible_answer=True, align_to_words=True)
        predictions[q["id"]], references[q["id"]] = best[0]["answer"], q["answers"]["text"]
    official = squad.squad_metrics(predictions, references)
    metrics = m["metrics"]
    assert metrics["questions"] == len(references) > 20
    assert metrics["exact_match"] == pytest.approx(official["exact"] / 100)
    assert metrics["f1"] == pytest.approx(official["f1"] / 100)
    assert metrics["unanswerable_questions"] == official["NoAns_total"] > 0
    assert metrics["answerable_f1"] == pytest.approx(official["HasAns_f1"] / 100)
    assert m["base_metrics"]["f1"] != metrics["f1"] and 0 <= m["base_metrics"]["exact_match"] <= 1
    report = (qa_build.path / "report.md").read_text(encoding="utf-8")
    assert "| exact_match |" in report and "## Answers" in report


def test_export_passes_parity_on_start_and_end_logits(qa_build: stages.BuildResult):
    r = qa_build.export
    card = json.loads((r.artifact / "ftc-artifact.json").read_text(encoding="utf-8"))
    assert card["task"] == "question-answering" and card["doc_stride"] == STRIDE and card["unanswerable"] is True
    assert card["variants"] == {"fp32": {"path": "model.onnx"}, "int8": {"path": "model.int8.onnx"}}
    p = card["parity"]
    assert p["fp32"]["passed"] and p["fp32"]["max_abs_diff"] < 1e-4 and p["fp32"]["agreement"] == 1.0
    windows = qa_build.data.manifest["stats"]["splits"]["test"]["windows"]
    assert p["rows"] == min(64, windows) and p["torch"]["accuracy"] == p["fp32"]["accuracy"]
    assert "int8" in p and p["int8"]["reference"] == "fp32"


def test_int4_is_refused(qa_build: stages.BuildResult):
    run = export.find_run(qa_build.path)
    with pytest.raises(ExportError, match="quantized to int8"):
        export.export(run, export.override(run.export, quantize=("int4",)))


# ── the runtime ──────────────────────────────────────────────────────────────────────────────

@pytest.fixture(scope="module")
def reader(qa_build: stages.BuildResult):
    return runtime.load(qa_build.export.artifact, variant="fp32")


def test_runtime_answers_equal_the_pipeline(qa_build: stages.BuildResult, reader):
    forward, tok = _pipeline_model(qa_build.export.path / "merged" if (qa_build.export.path / "merged").is_dir()
                                   else qa_build.path / "model")
    questions = _test_questions(qa_build)[:6] + [{"question": "which fox", "context": " ".join(WORDS * 4)}]
    got = reader.answer([q["question"] for q in questions], [q["context"] for q in questions], top_k=3)
    for q, answers in zip(questions, got):
        ref = pipeline_answers(forward, tok, q["question"], q["context"], max_seq_len=MAX_LEN, doc_stride=STRIDE,
                               top_k=3, max_answer_len=5, handle_impossible_answer=True, align_to_words=True)
        assert [(a.text, a.start, a.end) for a in answers] == [(r["answer"], r["start"], r["end"]) for r in ref]
        assert [a.score for a in answers] == pytest.approx([r["score"] for r in ref], rel=1e-3, abs=1e-6)
        assert all(q["context"][a.start:a.end] == a.text for a in answers)


def test_infer_cli_prints_the_answer(qa_build: stages.BuildResult, reader):
    q = _test_questions(qa_build)[0]
    res = CliRunner().invoke(main, ["infer", str(qa_build.export.artifact), "--variant", "fp32", "--json",
                                    "--input", json.dumps({"question": q["question"], "context": q["context"]})])
    assert res.exit_code == 0, res.output
    best = reader.answer([q["question"]], [q["context"]])[0][0]
    assert json.loads(res.stdout.splitlines()[0]) == {"question": q["question"], "answer": {
        "text": best.text, "score": pytest.approx(best.score), "start": best.start, "end": best.end}}
    res = CliRunner().invoke(main, ["infer", str(qa_build.export.artifact), "--text", "no context"])
    assert res.exit_code != 0 and "takes a `question` and a `context`" in res.output and "Traceback" not in res.output


def test_serve_answer_route(reader, qa_build: stages.BuildResult):
    server = make_server(reader, port=0, quiet=True, max_batch=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = server.url + "/v1/answer"
    try:
        q = _test_questions(qa_build)[:2]
        status, body = call(url, {"question": q[0]["question"], "context": q[0]["context"]})
        best = reader.answer([q[0]["question"]], [q[0]["context"]])[0][0]
        assert status == 200 and body["answers"] == [pytest.approx(best.__dict__)]
        status, body = call(url, {"questions": [x["question"] for x in q], "contexts": [x["context"] for x in q],
                                  "top_k": 2})
        assert status == 200 and len(body["answers"]) == 2 and [len(c) for c in body["candidates"]] == [2, 2]
        for payload, code, words in [
            ({"question": "a"}, 400, "`question` needs `context`"),
            ({"questions": ["a"], "context": "b"}, 400, "`questions` needs `contexts`"),
            ({"question": "a", "context": "b", "contexts": ["c"]}, 400, "`contexts` goes with `questions`"),
            ({"questions": ["a", 3], "contexts": ["b", "c"]}, 400, "`questions[1]` must be a string, not an integer"),
            ({"questions": ["a"], "contexts": ["b", "c"]}, 400, "1 questions but 2 contexts"),
            ({"questions": [], "contexts": []}, 400, "`questions` is empty"),
            ({"questions": ["a"] * 3, "contexts": ["b"] * 3}, 413, "at most 2 per request"),
            ({"question": "a", "context": "b", "top_k": 0}, 400, "`top_k` must be from 1 to 100"),
            ({"question": "a", "context": 5}, 400, "`context` must be a string, not an integer"),
            ({"text": "a"}, 400, "unknown field `text`"),
            ({"question": "fox " * 60, "context": "the dog " * 40}, 400, "a question of 60 tokens leaves no room"),
            ({"question": "fox " * 34, "context": "the dog " * 40}, 400,
             "leaves 11 context tokens per window, not more than doc_stride 12"),
        ]:
            status, body = call(url, payload)
            assert (status, words in body["error"]) == (code, True), body
        status, body = call(server.url + "/v1/classify", {"text": "a"})
        assert status == 422 and "question-answering" in body["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_runtime_imports_no_torch_transformers_or_pyarrow(qa_build: stages.BuildResult):
    script = textwrap.dedent(f"""
        import sys
        from ftc import runtime
        reader = runtime.load({str(qa_build.export.artifact)!r})
        print(reader.answer(["which fox"], ["the quick brown fox jumps"])[0][0].text)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft", "pyarrow"))
        assert not bad, bad
        print("clean")
    """)
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "clean"

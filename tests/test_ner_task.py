"""`model.task = "token-classification"` end to end: sources (CoNLL, tokens + tags, text +
spans) → quarantine and tag repair → ids equal to transformers' run_ner recipe → training →
seqeval's scores → ONNX export with parity → the torch-free tagger equal to transformers'
pipeline, on `ftc infer` and `ftc serve`."""

from __future__ import annotations

import json
import random
import threading
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from tiny import write_spec

from ftc import build as stages
from ftc import prep
from ftc.errors import SourceError
from ftc.rows import load_split
from ftc.specload import load_spec

PEOPLE = ["ada", "alan", "grace", "tim"]
PLACES = ["paris", "berlin", "london"]
FILL = "the quick brown fox jumps over lazy dog model data".split()  # in the tiny vocabulary


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ftc-home")


@pytest.fixture(autouse=True)
def ftc_home(shared_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FTC_HOME", str(shared_home))
    return shared_home


def sentences(n: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """Sentences where a person's name and a place are learnable from the word itself."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(3, 9)):
            r = rng.random()
            if r < 0.2:
                words += [rng.choice(PEOPLE), rng.choice(PEOPLE)]
                tags += ["B-PER", "I-PER"]
            elif r < 0.35:
                words.append(rng.choice(PLACES))
                tags.append("B-LOC")
            else:
                words.append(rng.choice(FILL))
                tags.append("O")
        out.append((words, tags))
    return out


def conll(path: Path, rows: list[tuple[list[str], list[str]]]) -> Path:
    path.write_text("-DOCSTART- O\n\n" + "\n\n".join("\n".join(f"{w} NN {t}" for w, t in zip(*r)) for r in rows)
                    + "\n", encoding="utf-8")
    return path


def recipe(tok, words, tags, labels, max_length):
    """transformers' run_ner.py `tokenize_and_align_labels`, one sentence."""
    enc = tok(words, is_split_into_words=True, truncation=True, max_length=max_length)
    out, previous = [], None
    for w in enc.word_ids():
        out.append(-100 if w is None or w == previous else labels.index(tags[w]))
        previous = w
    return enc["input_ids"], out


def read_split(result: prep.PrepResult, split: str) -> pa.Table:
    with pa.memory_map(str(result.path / result.manifest["files"][split])) as f:
        return pa.ipc.open_stream(f).read_all()


def test_prep_reads_every_shape_repairs_tags_and_matches_run_ner(tmp_path: Path, wordpiece_dir: Path):
    from transformers import AutoTokenizer

    rows = sentences(60)
    conll(tmp_path / "a.conll", rows[:30])
    # tokens + tags as JSON Lines; a wrong row of each kind is quarantined with its line
    lines = [json.dumps({"tokens": w, "tags": t}) for w, t in rows[30:50]]
    lines += [json.dumps({"tokens": ["a", "b"], "tags": ["O"]}), json.dumps({"tokens": ["x"], "tags": [3]}),
              "{not json", json.dumps({"tokens": ["ada"], "tags": ["PERSON"]})]
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # text + character spans (annotation-tool export); one span cuts through a word
    spans = []
    for w, t in rows[50:]:
        text, ents = "", []
        for word, tag in zip(w, t):
            start = len(text) + (1 if text else 0)
            text += (" " if text else "") + word
            if tag.startswith("B-"):
                ents.append([start, start + len(word), tag[2:]])
            elif tag.startswith("I-"):
                ents[-1][1] = start + len(word)
        spans.append({"text": text, "entities": [{"start": s, "end": e, "label": k} for s, e, k in ents]})
    spans.append({"text": "ada went home", "entities": [{"start": 1, "end": 3, "label": "PER"}]})
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(s) + "\n" for s in spans), encoding="utf-8")
    # IOB1 / IO-style tags: an entity opened by I-X is repaired to B-X
    conll(tmp_path / "d.conll", [(["ada", "alan", "went", "to", "paris"], ["I-PER", "I-PER", "O", "O", "I-LOC"])])
    spec = load_spec(write_spec(tmp_path / "spec.toml", wordpiece_dir,
                                [{"path": "a.conll"}, {"path": "b.jsonl"}, {"path": "c.jsonl"}, {"path": "d.conll"}],
                                model={"task": "token-classification"}, tokenize={"max_length": 12},
                                data={"max_bad_fraction": 0.2}, data_split={"valid": 0.0, "test": 0.0}))
    result = prep.prep(spec)
    m = result.manifest
    assert m["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert m["tags_repaired"] == 1
    quarantined = [json.loads(x) for x in (result.path / "quarantine.jsonl").read_text().splitlines()]
    reasons = sorted((Path(q["file"]).name, q["line"], q["reason"].split(":")[0]) for q in quarantined)
    assert reasons == [("b.jsonl", 21, "2 tokens but 1 tags"), ("b.jsonl", 22, "'tags' holds int, not strings (tag ids"),
                       ("b.jsonl", 23, "invalid JSON"), ("b.jsonl", 24, "tag 'PERSON' is not an IOB2 tag (O or B/I-TYPE)"),
                       ("c.jsonl", 11, "entity span")], reasons
    table = read_split(result, "train")
    assert table.num_rows == 61
    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    truncated = 0
    for words, tags, ids, labels in zip(*(table[c].to_pylist() for c in ("words", "tags", "input_ids", "labels"))):
        if words == ["ada", "alan", "went", "to", "paris"]:
            assert tags == ["B-PER", "I-PER", "O", "O", "B-LOC"]
        assert (ids, labels) == recipe(tok, words, tags, m["labels"], 12)
        truncated += len(tok(words, is_split_into_words=True)["input_ids"]) > 12
    assert truncated > 0  # truncation was exercised
    assert m["stats"]["splits"]["train"]["entities"]["PER"] == sum(t.count("B-PER") for _, t in rows) + 1


def test_drop_mode_quarantines_invalid_sequences_and_labels_are_checked(tmp_path: Path, wordpiece_dir: Path):
    rows = sentences(40)
    conll(tmp_path / "a.conll", rows + [(["ada", "paris"], ["O", "I-PER"])])
    base = {"model": {"task": "token-classification", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]},
            "data_split": {"valid": 0.0, "test": 0.0}}
    spec = load_spec(write_spec(tmp_path / "spec.toml", wordpiece_dir, [{"path": "a.conll"}],
                                data={"tags": {"invalid": "drop"}}, **base))
    result = prep.prep(spec)
    assert result.manifest["labels"] == base["model"]["labels"]
    assert read_split(result, "train").num_rows == 40
    bad = json.loads((result.path / "quarantine.jsonl").read_text())
    assert bad["reason"].startswith("invalid tag sequence: O I-PER")
    assert bad["line"] == 3 + sum(len(w) + 1 for w, _ in rows)  # the sentence's first line
    with pytest.raises(Exception, match=r"`model.labels`: label 'PER' is not an IOB2 tag"):
        load_spec(write_spec(tmp_path / "s2.toml", wordpiece_dir, [{"path": "a.conll"}],
                             model={"task": "token-classification", "labels": ["O", "PER"]}))
    with pytest.raises(Exception, match=r"`data.clean.strip_html` rewrites text"):
        load_spec(write_spec(tmp_path / "s3.toml", wordpiece_dir, [{"path": "a.conll"}],
                             model={"task": "token-classification"}, data_clean={"strip_html": True}))


@pytest.fixture(scope="module")
def ner_run(shared_home: Path, bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> stages.BuildResult:
    folder = tmp_path_factory.mktemp("ner")
    conll(folder / "train.conll", sentences(300, seed=1))
    spec = write_spec(folder / "spec.toml", bert_dir, [{"path": "train.conll"}],
                      model={"task": "token-classification"}, tokenize={"max_length": 32},
                      data_split={"valid": 0.1, "test": 0.2},
                      train={"method": "full", "max_steps": 100, "batch_size": 16, "learning_rate": 3e-3,
                             "logging_steps": 100},
                      eval={"metrics": ["precision", "recall", "f1"], "compare_base": True},
                      export={"onnx": True, "quantize": "int8"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTC_HOME", str(shared_home))
        return stages.build(load_spec(spec))


def test_training_learns_and_scores_equal_seqeval(ner_run: stages.BuildResult):
    import torch
    from seqeval.metrics import classification_report, f1_score
    from transformers import AutoModelForTokenClassification

    record = json.loads((ner_run.path / "metrics.json").read_text())
    tuned, base = record["metrics"], record["base_metrics"]
    assert tuned["f1"] > 0.7 > base["f1"] + 0.4, (tuned["f1"], base["f1"])
    report = (ner_run.path / "report.md").read_text()
    assert "## Per entity type" in report and "| PER |" in report
    # the same predictions, scored by seqeval
    model = AutoModelForTokenClassification.from_pretrained(ner_run.export.artifact.parent / "merged").eval()
    labels = ner_run.manifest["labels"]
    ds = load_split(ner_run.data.path, ner_run.data.manifest, "test")
    gold, pred = [], []
    with torch.no_grad():
        for row in ds:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0].numpy()
            keep = np.array(row["labels"]) != -100
            gold.append([labels[t] for t in np.array(row["labels"])[keep]])
            pred.append([labels[t] for t in logits.argmax(-1)[keep]])
    assert tuned["f1"] == pytest.approx(f1_score(gold, pred), abs=1e-9)
    per_type = classification_report(gold, pred, output_dict=True)
    assert tuned["per_type"]["PER"]["recall"] == pytest.approx(per_type["PER"]["recall"], abs=1e-9)


def test_export_parity_and_the_tagger_equals_the_pipeline(ner_run: stages.BuildResult):
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    from ftc import runtime

    art = ner_run.export.artifact
    card = json.loads((art / "ftc-artifact.json").read_text())
    assert card["task"] == "token-classification" and set(card["variants"]) == {"fp32", "int8"}
    assert card["parity"]["fp32"]["passed"] and card["parity"]["int8"]["passed"], card["parity"]
    assert card["parity"]["fp32"]["max_abs_diff"] < 1e-3
    tagger = runtime.load(art, variant="fp32")
    texts = ["ada alan went to paris", "the fox saw grace in london and tim", "model data"]
    model = AutoModelForTokenClassification.from_pretrained(art.parent / "merged").eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ner = pipeline("token-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(art),
                       aggregation_strategy="first", device="cpu")
        want = [ner(t) for t in texts]
    got = tagger.entities(texts)
    assert sum(len(g) for g in got) >= 4
    for g, w in zip(got, want):
        assert [(e["entity_group"], e["start"], e["end"]) for e in g] == \
               [(e["entity_group"], e["start"], e["end"]) for e in w]
        assert np.allclose([e["score"] for e in g], [float(e["score"]) for e in w], atol=1e-4)


def test_infer_and_serve(ner_run: stages.BuildResult):
    from click.testing import CliRunner

    from ftc import runtime
    from ftc.cli import main
    from ftc.runtime.serve import make_server

    art = ner_run.export.artifact
    text = "ada alan went to paris"
    tagger = runtime.load(art)
    want = tagger.entities([text, "model"])  # int8 quantizes activations per batch: batches differ a little
    single = tagger.entities([text])[0]
    assert single and want[1] == []
    out = CliRunner().invoke(main, ["infer", str(art), "--text", text, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output.splitlines()[0]) == {"text": text, "entities": single}
    line = CliRunner().invoke(main, ["infer", str(art), "--text", text]).output.splitlines()[0]
    e = single[0]
    assert line.startswith(f"{e['entity_group']} {text[e['start']:e['end']]!r} [{e['start']}:{e['end']}]"), line
    server = make_server(tagger, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        def post(path: str, body: object) -> tuple[int, dict]:
            req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())
        status, body = post("/v1/entities", {"texts": [text, "model"]})
        assert status == 200 and body["entities"] == json.loads(json.dumps(want))
        assert post("/v1/entities", {"text": text})[1]["entities"] == json.loads(json.dumps([single]))
        assert post("/v1/entities", {"texts": ["ok", 3]}) == (400, {"error": "`texts[1]` must be a string, not an integer"})
        status, body = post("/v1/classify", {"text": "x"})
        assert status == 422 and "token-classification" in body["error"]
    finally:
        server.shutdown()


def test_a_source_without_words_is_a_one_line_error(tmp_path: Path, wordpiece_dir: Path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"sentence": "x"}) + "\n", encoding="utf-8")
    spec = load_spec(write_spec(tmp_path / "spec.toml", wordpiece_dir, [{"path": "a.jsonl"}],
                                model={"task": "token-classification"}))
    with pytest.raises(SourceError, match="cannot tell which keys hold the words and tags; found sentence"):
        prep.prep(spec)

"""The runtime: artifacts verified before loading, classification ids and probabilities equal
to transformers + torch, greedy generation equal to `model.generate`, sampling options, the
CLI, the HTTP server, and a process that refuses torch."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tiny import write_spec

from ftc import build as stages
from ftc import export, runtime
from ftc.cli import main
from ftc.errors import ArtifactError, InferenceError
from ftc.runtime.artifact import MANIFEST, Artifact
from ftc.specload import load_spec
from ftc.runtime.serve import make_server

LABELS = ["neg", "neu", "pos"]
MAX_LENGTH = 16
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Fine", "",
         "Wie geht es dir? Très bien, merci! numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000 and more words here",
         "Emoji 🙂🚀 and symbols © ® ™"]
PAIRS = ["a pair", "User: what is the capital of France? Assistant: Paris is the capital of France.", "x", "",
         "tabs\tand\nnewlines"]
CHATS = [[{"role": "user", "content": "what is the capital of France?"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def add(a, b):"}],
         [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
          {"role": "user", "content": "Wie geht es dir? 🙂"}]]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tiny_export(factory: pytest.TempPathFactory, name: str, base: Path, rows: list[dict], *, max_length: int,
                train: dict, quantize: tuple[str, ...], model: dict | None = None) -> export.ExportResult:
    """A spec over `rows` built for a few steps (`ftc build`) then exported (`ftc export`), in a store of
    its own shared by the session."""
    folder = factory.mktemp(name)
    write_jsonl(folder / "d.jsonl", rows)
    spec = write_spec(folder / "spec.toml", base, [{"path": "d.jsonl"}], model=model,
                      tokenize={"max_length": max_length}, data_split={"valid": 0.0, "test": 0.2},
                      train={**train, "logging_steps": 50})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTC_HOME", str(folder / "home"))
        run = export.find_run(stages.build(load_spec(spec)).path)
        # A run of a few steps may miss int8's agreement threshold; the runtime serves it regardless.
        result = export.export(run, export.override(run.export, verify=False, rows=8, quantize=quantize))
    assert result.artifact is not None
    return result


@pytest.fixture(scope="session")
def cls_export(bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> export.ExportResult:
    """A 3-label BERT classifier trained for a few steps, exported to fp32 and int8 ONNX."""
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog model data".split()
    rows = [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(1, 20))), "label": LABELS[i % 3]}
            for i in range(60)]
    return tiny_export(tmp_path_factory, "cls", bert_dir, rows, max_length=MAX_LENGTH, quantize=("int8",),
                       model={"task": "classification", "labels": LABELS},
                       train={"method": "full", "max_steps": 4, "batch_size": 8, "learning_rate": 1e-3})


@pytest.fixture(scope="session")
def lm_export(llama16_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> export.ExportResult:
    """The Llama fine-tuned with LoRA on chat rows for a few steps, exported to genai fp32 and int4."""
    rng = random.Random(0)
    words = "the model learns to answer short questions about numbers and code".split()
    rows = [{"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(2, 12))),
             "response": " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))} for _ in range(40)]
    return tiny_export(tmp_path_factory, "lm", llama16_dir, rows, max_length=128, quantize=("int4",),
                       train={"method": "lora", "max_steps": 2, "batch_size": 2, "learning_rate": 1e-2})


@pytest.fixture(scope="session")
def cls_artifact(cls_export: export.ExportResult) -> Path:
    return cls_export.artifact


@pytest.fixture(scope="session")
def lm_artifact(lm_export: export.ExportResult) -> Path:
    return lm_export.artifact


@pytest.fixture(scope="session")
def classifier_dir(cls_export: export.ExportResult) -> Path:
    """The trained weights the artifact was exported from (an HF directory with its tokenizer)."""
    return cls_export.path / "merged"


@pytest.fixture(scope="session")
def lm_dir(lm_export: export.ExportResult) -> Path:
    return lm_export.path / "merged"


@pytest.fixture(scope="session")
def classifier(cls_artifact: Path) -> runtime.Classifier:
    model = runtime.load(cls_artifact, variant="fp32")
    assert isinstance(model, runtime.Classifier)
    return model


@pytest.fixture(scope="session")
def generator(lm_artifact: Path) -> runtime.Generator:
    model = runtime.load(lm_artifact, variant="fp32")
    assert isinstance(model, runtime.Generator)
    return model


# ── classification ────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("pairs", [False, True])
def test_classification_ids_equal_autotokenizer(classifier: runtime.Classifier, classifier_dir: Path, pairs: bool):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(classifier_dir)
    expected = tok(TEXTS, PAIRS if pairs else None, truncation=True, max_length=MAX_LENGTH,
                   return_token_type_ids=True)
    got = classifier.encode(TEXTS, PAIRS if pairs else None)
    assert [ids for ids, _ in got] == expected["input_ids"]
    assert [types for _, types in got] == expected["token_type_ids"]
    assert max(len(ids) for ids, _ in got) == MAX_LENGTH  # truncation happened


def test_probabilities_equal_torch_in_input_order(classifier: runtime.Classifier, classifier_dir: Path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(classifier_dir)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    with torch.no_grad():
        logits = model(**tok(TEXTS, PAIRS, truncation=True, max_length=MAX_LENGTH, padding=True,
                             return_token_type_ids=True, return_tensors="pt")).logits
    expected = torch.softmax(logits.double(), -1).numpy()
    predictions = classifier.classify(TEXTS, PAIRS, batch_size=2)  # sorted by length, three batches
    got = np.array([[p.probabilities[label] for label in LABELS] for p in predictions])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [p.label for p in predictions] == [LABELS[i] for i in expected.argmax(-1)]
    assert all(p.score == max(p.probabilities.values()) for p in predictions)


def test_int8_variant_is_close_to_fp32(cls_artifact: Path, classifier: runtime.Classifier):
    default = json.loads((cls_artifact / MANIFEST).read_text())["default"]
    assert runtime.load(cls_artifact).artifact.variant == default
    int8 = runtime.load(cls_artifact, variant="int8")
    assert int8.artifact.model_path.name == "model.int8.onnx"
    a = np.array([list(p.probabilities.values()) for p in int8.classify(TEXTS)])
    b = np.array([list(p.probabilities.values()) for p in classifier.classify(TEXTS)])
    np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-9)
    assert np.abs(a - b).max() < 0.05
    assert classifier.classify([]) == []
    with pytest.raises(InferenceError, match="text pair 1 is int"):
        classifier.classify(["a", "b"], ["c", 2])


# ── generation ────────────────────────────────────────────────────────────────────────────

def test_prompt_and_ids_equal_apply_chat_template(generator: runtime.Generator, lm_artifact: Path, lm_dir: Path):
    import onnxruntime_genai as og
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm_dir)
    genai_tok = og.Tokenizer(generator.model)
    for chat in CHATS:
        text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert generator.render(chat) == text
        ids = generator.encode(chat)
        assert ids == list(tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True)["input_ids"])
        assert [int(i) for i in genai_tok.encode(text)] == ids  # genai's own tokenizer file agrees
    assert generator.encode("plain text") == tok("plain text")["input_ids"]


def test_the_chat_template_is_compiled_once_at_load(lm_artifact: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    """A server renders every request with the template it compiled at start; a template that
    does not compile is refused when the artifact loads, not at the first request."""
    from ftc import _data

    compiled = []
    real = _data.PromptTemplate
    monkeypatch.setattr(_data, "PromptTemplate", lambda *a: compiled.append(a) or real(*a))
    gen = runtime.load(lm_artifact)
    for chat in CHATS * 3:
        gen.render(chat)
    assert len(compiled) == 1
    monkeypatch.undo()
    art = shutil.copytree(lm_artifact, tmp_path / "a")
    card = json.loads((art / MANIFEST).read_text(encoding="utf-8"))
    (art / MANIFEST).write_text(json.dumps({**card, "template": "{% for m in messages %}{{ m.content }"}))
    with pytest.raises(ArtifactError, match="chat template does not compile"):
        runtime.load(art)


def test_greedy_tokens_equal_torch_generate(generator: runtime.Generator, lm_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    for chat in CHATS:
        ids = generator.encode(chat)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=24,
                                 eos_token_id=generator.eos, pad_token_id=0)[0, len(ids):].tolist()
        expected = out[:-1] if out[-1] in generator.eos else out
        got = generator.generate(chat, max_new_tokens=24)
        assert got.token_ids == expected
        assert got.prompt_tokens == len(ids)
        assert got.finish_reason == ("eos" if len(expected) < 24 else "length")


def test_generation_stops_at_any_eos_token(generator: runtime.Generator):
    free = generator.generate(CHATS[0], max_new_tokens=12)
    stop = free.token_ids[4]
    first = free.token_ids.index(stop)
    art = generator.artifact
    stopping = runtime.Generator(Artifact(art.path, {**art.manifest, "eos_token_ids": [stop]}, art.variant,
                                                   art.digest))
    assert stop in stopping.eos
    got = stopping.generate(CHATS[0], max_new_tokens=12)
    assert got.token_ids == free.token_ids[:first] and got.finish_reason == "eos"


def test_sampling_is_seeded_and_narrows_to_greedy(generator: runtime.Generator):
    greedy = generator.generate("The quick", max_new_tokens=16).token_ids
    a = generator.generate("The quick", max_new_tokens=16, temperature=1.0, seed=7).token_ids
    assert generator.generate("The quick", max_new_tokens=16, temperature=1.0, seed=7).token_ids == a
    others = {tuple(generator.generate("The quick", max_new_tokens=16, temperature=1.0, seed=s).token_ids)
              for s in range(3)}
    assert len(others | {tuple(a)}) > 1
    assert generator.generate("The quick", max_new_tokens=16, temperature=1.0, top_p=1e-6, seed=3).token_ids == greedy
    assert generator.generate("The quick", max_new_tokens=16, temperature=1.0, top_k=1, seed=3).token_ids == greedy


def test_generation_options_and_inputs_are_checked(generator: runtime.Generator):
    for kwargs, word in [({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1}, "temperature"),
                         ({"top_p": 0}, "top_p"), ({"top_k": -2}, "top_k")]:
        with pytest.raises(InferenceError, match=word):
            generator.generate("x", **kwargs)
    with pytest.raises(InferenceError, match="no messages"):
        generator.generate([])
    with pytest.raises(InferenceError, match="message 0"):
        generator.generate([{"content": "no role"}])
    with pytest.raises(InferenceError, match="context holds 512"):
        generator.generate("fox " * 600)


def test_int4_variant_generates(lm_artifact: Path):
    int4 = runtime.load(lm_artifact, variant="int4")
    assert int4.artifact.model_path.name == "int4"
    out = int4.generate(CHATS[0], max_new_tokens=8)
    assert 0 < len(out.token_ids) <= 8 or out.finish_reason == "eos"


# ── loading refuses what it cannot verify ─────────────────────────────────────────────────

def test_load_refuses_tampered_missing_and_unlisted_files(cls_artifact: Path, lm_artifact: Path, tmp_path: Path):
    art = shutil.copytree(cls_artifact, tmp_path / "a")
    data = bytearray((art / "model.int8.onnx").read_bytes())
    data[-1] ^= 1
    (art / "model.int8.onnx").write_bytes(data)
    with pytest.raises(ArtifactError, match="`model.int8.onnx` does not match its sha256"):
        runtime.load(art)
    runtime.load(art, variant="fp32")  # the damaged file is not one fp32 reads
    (art / "tokenizer.json").write_text((cls_artifact / "tokenizer.json").read_text() + " ")
    with pytest.raises(ArtifactError, match="`tokenizer.json` does not match"):
        runtime.load(art, variant="fp32")
    (art / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="`model.onnx` is missing"):
        runtime.load(art, variant="fp32")
    lm = shutil.copytree(lm_artifact, tmp_path / "lm")
    (lm / "int4" / "extra.onnx").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="`int4/extra.onnx` is not listed"):
        runtime.load(lm)
    with pytest.raises(ArtifactError, match="no variant `int8`; this artifact has `fp32`, `int4`"):
        runtime.load(lm, variant="int8")
    with pytest.raises(ArtifactError, match="not an ftc artifact"):
        runtime.load(tmp_path)
    manifest = json.loads((lm / MANIFEST).read_text())
    (lm / MANIFEST).write_text(json.dumps({**manifest, "format": "ftc-artifact-v9"}))
    with pytest.raises(ArtifactError, match="ftc-artifact-v9"):
        runtime.load(lm)


def test_the_artifact_is_sealed_by_its_card(cls_artifact: Path, tmp_path: Path):
    """The card's sha256 names the whole artifact: a pinned deployment refuses an edited card
    (swapped labels run silently otherwise); an unlisted file any variant could read is refused;
    a card whose fields have the wrong type is a clear error, not a traceback."""
    from ftc.runtime.artifact import sha256

    art = shutil.copytree(cls_artifact, tmp_path / "a")
    digest = sha256(art / MANIFEST)
    assert runtime.load(art, pin=digest).artifact.digest == digest
    original = (art / MANIFEST).read_bytes()
    card = json.loads(original)
    (art / MANIFEST).write_text(json.dumps({**card, "labels": card["labels"][::-1]}))
    runtime.load(art)  # unpinned, a consistent card still loads
    with pytest.raises(ArtifactError, match="not the pinned"):
        runtime.load(art, pin=digest)
    (art / MANIFEST).write_bytes(original)
    assert "added_tokens.json" not in card["files"]
    (art / "added_tokens.json").write_text('{"[SEP]": 0}')  # a file tokenizers read beside tokenizer.json
    with pytest.raises(ArtifactError, match="`added_tokens.json` is not listed"):
        runtime.load(art, pin=digest)
    (art / "added_tokens.json").unlink()
    for field, value in (("max_length", -1), ("max_length", 1.5), ("labels", [1, 2]), ("eos_token_ids", "x")):
        (art / MANIFEST).write_text(json.dumps({**card, field: value}))
        with pytest.raises(ArtifactError, match=f"`{field}` must be"):
            runtime.load(art)


def test_runtime_never_imports_torch(cls_artifact: Path, lm_artifact: Path):
    """A fresh process where importing torch, transformers or peft fails: both tasks still run."""
    script = textwrap.dedent(f"""
        import sys
        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "peft"):
                    raise ImportError("refused: " + name)
        sys.meta_path.insert(0, Refuse())
        from ftc import runtime
        clf = runtime.load({str(cls_artifact)!r})
        print(clf.classify(["a fine text", "another"])[0].label)
        gen = runtime.load({str(lm_artifact)!r})
        print(gen.generate([{{"role": "user", "content": "hi"}}], max_new_tokens=4, temperature=0.8, seed=1).finish_reason)
        from ftc.runtime import serve
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "peft"))
        assert not bad, bad
        print("clean")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "clean"


# ── the CLI ───────────────────────────────────────────────────────────────────────────────

def test_infer_classification_cli(cls_artifact: Path, classifier: runtime.Classifier, tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(main, ["infer", str(cls_artifact), "--variant", "fp32", "--text", TEXTS[0], "--text",
                               TEXTS[1], "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    expected = classifier.classify(TEXTS[:2])
    assert [r["label"] for r in rows] == [p.label for p in expected]
    assert rows[0]["probabilities"] == pytest.approx(expected[0].probabilities)
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "text_pair": p}) + "\n" for t, p in zip(TEXTS, PAIRS)))
    res = runner.invoke(main, ["infer", str(cls_artifact), "--variant", "fp32", "--file", str(jsonl)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == len(TEXTS)
    assert lines[0].split()[0] == classifier.classify(TEXTS[:1], PAIRS[:1])[0].label
    txt = tmp_path / "in.txt"
    txt.write_text("one text\n\nanother text\n")
    res = runner.invoke(main, ["infer", str(cls_artifact), "--file", str(txt), "--json"])
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 2


def test_infer_generation_cli_and_errors(lm_artifact: Path, generator: runtime.Generator, tmp_path: Path):
    runner = CliRunner()
    res = runner.invoke(main, ["infer", str(lm_artifact), "--variant", "fp32", "--text", "hi",
                               "--max-new-tokens", "6", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)
    assert row["text"] == generator.generate([{"role": "user", "content": "hi"}], max_new_tokens=6).text
    res = runner.invoke(main, ["infer", str(lm_artifact), "--variant", "fp32", "--text", "hi", "--raw",
                               "--max-new-tokens", "6", "--temperature", "0.9", "--top-p", "0.9", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert res.stdout.rstrip("\n") == generator.generate("hi", max_new_tokens=6, temperature=0.9, top_p=0.9,
                                                         seed=3).text
    art = shutil.copytree(lm_artifact, tmp_path / "lm")
    (art / "tokenizer.json").write_text("{}")
    res = runner.invoke(main, ["infer", str(art), "--text", "hi"])
    assert res.exit_code == 1
    assert res.stderr.startswith("error: ") and "`tokenizer.json` does not match" in res.stderr
    assert "Traceback" not in res.output
    res = runner.invoke(main, ["infer", str(lm_artifact)])
    assert res.exit_code == 2 and "--text or --file" in res.stderr


# ── the HTTP server ───────────────────────────────────────────────────────────────────────

def call(url: str, body: object = None, method: str | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def served(request: pytest.FixtureRequest):
    servers = []

    def start(model: runtime.Model, **limits: int) -> str:
        server = make_server(model, port=0, quiet=True, **limits)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.url

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_serve_classification(served, classifier: runtime.Classifier):
    url = served(classifier, max_batch=3, max_bytes=2000)
    assert url.startswith("http://127.0.0.1:")
    assert call(url + "/health") == (200, {"status": "ok", "task": "classification", "variant": "fp32",
                                           "labels": LABELS, "artifact_sha256": classifier.artifact.digest})
    status, body = call(url + "/v1/classify", {"texts": TEXTS[:2], "text_pairs": PAIRS[:2]})
    assert status == 200
    assert body["predictions"] == [p.as_dict() for p in classifier.classify(TEXTS[:2], PAIRS[:2])]
    status, body = call(url + "/v1/classify", {"text": TEXTS[0]})
    assert status == 200 and body["predictions"][0]["label"] == classifier.classify(TEXTS[:1])[0].label
    for payload, status, words in [
        (b"{not json", 400, "malformed JSON"),
        (b"", 400, "empty body"),
        (b"[1, 2]", 400, "expected a JSON object"),
        (json.dumps({"texts": ["a"], "labels": 1}).encode(), 400, "unknown field `labels`"),
        (json.dumps({"texts": "a"}).encode(), 400, "`texts` must be a list, not a string"),
        (json.dumps({"texts": ["a", 3]}).encode(), 400, "`texts[1]` must be a string, not an integer"),
        (json.dumps({"text": "a", "texts": ["b"]}).encode(), 400, "exactly one of `text` and `texts`"),
        (json.dumps({"texts": ["a", "b"], "text_pairs": ["c"]}).encode(), 400, "2 texts but 1 text_pairs"),
        (json.dumps({"texts": []}).encode(), 400, "`texts` is empty"),
        (json.dumps({"texts": ["a"] * 4}).encode(), 413, "at most 3 per request"),
        (json.dumps({"text": "x" * 3000}).encode(), 413, "at most 2000"),
    ]:
        assert call(url + "/v1/classify", raw=payload, method="POST")[0] == status, payload
        assert words in call(url + "/v1/classify", raw=payload, method="POST")[1]["error"]
    assert call(url + "/v1/predict", {"texts": ["a"]})[0] == 404
    status, body = call(url + "/v1/classify")
    assert status == 405 and "takes POST, not GET" in body["error"]
    assert call(url + "/health", {"x": 1})[0] == 405
    status, body = call(url + "/v1/generate", {"prompt": "hi"})
    assert status == 422 and "classification model" in body["error"]
    assert call(url + "/health")[0] == 200  # still serving
    answers: list = [None] * 6
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, call(url + "/v1/classify",
                                                                                 {"texts": TEXTS[i % 5:][:3]})))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a[0] == 200 and a == answers[i % 5] for i, a in enumerate(answers))  # concurrent requests agree


def test_serve_generation(served, generator: runtime.Generator):
    url = served(generator, max_new_tokens=16)
    assert call(url + "/health")[1]["task"] == "causal-lm"
    status, body = call(url + "/v1/generate", {"messages": CHATS[0], "max_new_tokens": 8})
    expected = generator.generate(CHATS[0], max_new_tokens=8)
    assert status == 200 and body == expected.as_dict()
    status, body = call(url + "/v1/generate", {"prompt": "The quick", "max_new_tokens": 8, "temperature": 0.7,
                                               "top_p": 0.9, "seed": 2})
    assert status == 200 and body["text"] == generator.generate("The quick", max_new_tokens=8, temperature=0.7,
                                                                top_p=0.9, seed=2).text
    for payload, words in [({"prompt": "a", "max_new_tokens": 17}, "between 1 and 16"),
                           ({"prompt": "a", "temperature": True}, "`temperature` must be a number, not a boolean"),
                           ({"prompt": "a", "temperature": -1}, "temperature must be 0"),
                           ({"messages": [{"content": "x"}]}, "message 0"),
                           ({"max_new_tokens": 4}, "exactly one of `prompt` and `messages`")]:
        status, body = call(url + "/v1/generate", payload)
        assert status == 400 and words in body["error"], body
    assert call(url + "/v1/classify", {"text": "a"})[0] == 422

"""Domain vocabulary (`tokenize.add_tokens`): ids identical to `AutoTokenizer.add_tokens`, the
new embedding rows and their training, export carrying the extended tokenizer, and
`ftc vocab suggest`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import write_spec
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftc import _data, vocab
from ftc import build as stages
from ftc import rows as stored
from ftc.cli import main
from ftc.errors import FtcError
from ftc.specload import load_spec

ADDED = ["angioplasty", "stent", "<dx>", "The", "Ω-3", "naïve"]  # "The" is in the tiny vocabulary already
PIECES = ADDED + ["angio", "plasty", "sten", "t", " ", "  ", "\n", "<", ">", "dx", "x", "é", "Ω", "-3", "the", "ai"]


def encoder_ids(tokenizer_json: str, texts: list[str], fast: bool) -> tuple[list[list[int]], str]:
    enc = _data.DataEncoder(tokenizer_json, fast=fast)
    ids, _labels, status, _err, _h, _n = enc.encode_text(pa.array(texts, pa.large_string()), 1 << 20, "chunk")
    assert set(pa.array(status).to_pylist()) <= {0, 2}
    return pa.array(ids).to_pylist(), enc.encoder


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def pair(request: pytest.FixtureRequest, bpe_dir: Path, wordpiece_dir: Path):
    path = bpe_dir if request.param == "bpe" else wordpiece_dir
    tok = AutoTokenizer.from_pretrained(path)
    tok.add_tokens(ADDED)
    return path, tok


@pytest.mark.parametrize("fast", [True, False])
@settings(max_examples=100, deadline=None)
@given(texts=st.lists(st.lists(st.sampled_from(PIECES), max_size=30).map("".join), min_size=1, max_size=6))
def test_ids_equal_autotokenizer_add_tokens(pair, fast: bool, texts: list[str]):
    path, reference = pair
    base = Tokenizer.from_file(str(path / "tokenizer.json"))
    grown, new = vocab.extend((path / "tokenizer.json").read_text(encoding="utf-8"), ADDED)
    ids, encoder = encoder_ids(grown, texts, fast)
    bpe = path.name == "bpe"
    assert encoder.startswith("ftc-bpe") == (fast and bpe)  # the exact fast BPE reads the added tokens too
    assert ids == [reference(t)["input_ids"] for t in texts]
    assert [t.token for t in new] == [t for t in ADDED if base.token_to_id(t) is None]
    assert [t.id for t in new] == reference.convert_tokens_to_ids([t.token for t in new])
    assert len(new) < len(ADDED) or not bpe  # "The", which the BPE vocabulary holds, keeps its id


def full_vocabulary(src: Path, dst: Path) -> Path:
    """The tiny Llama with exactly as many embedding rows as its tokenizer has tokens (it has
    spare rows, as many real models do): an added token then needs a new row."""
    shutil.copytree(src, dst)
    model = AutoModelForCausalLM.from_pretrained(src)
    model.resize_token_embeddings(len(AutoTokenizer.from_pretrained(src)))
    model.save_pretrained(dst)
    return dst


@pytest.mark.parametrize("rows", ["spare", "full"])
def test_new_rows_start_as_the_mean_of_their_pieces(tmp_path: Path, llama_dir: Path, rows: str):
    path = llama_dir if rows == "spare" else full_vocabulary(llama_dir, tmp_path / "full")
    base = AutoModelForCausalLM.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    grown, new = vocab.extend((path / "tokenizer.json").read_text(encoding="utf-8"), ADDED)
    n0 = base.get_input_embeddings().weight.shape[0]
    size = Tokenizer.from_str(grown).get_vocab_size(with_added_tokens=True)
    assert (n0 > size) == (rows == "spare")
    vocab.grow(model, new, size)
    assert model.get_input_embeddings().weight.shape[0] == max(n0, size) == model.config.vocab_size
    for w, w0 in ((model.get_input_embeddings().weight, base.get_input_embeddings().weight),
                  (model.get_output_embeddings().weight, base.get_output_embeddings().weight)):  # untied head
        old = [i for i in range(n0) if i not in {t.id for t in new}]
        assert torch.equal(w[old], w0[old])
        for t in new:
            assert len(t.pieces) >= 1
            torch.testing.assert_close(w[t.id], w0[t.pieces].mean(0))


def test_a_lora_build_trains_the_new_rows_and_export_carries_them(tmp_path: Path, llama16_dir: Path):
    from peft import PeftModel

    from ftc import export

    llama16_dir = full_vocabulary(llama16_dir, tmp_path / "base")
    n0 = len(AutoTokenizer.from_pretrained(llama16_dir))
    words = ["angioplasty", "stent", "naïve"]
    texts = [f"the stent after angioplasty was naïve {i}" for i in range(60)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"prompt": t, "response": t[::-1]}) + "\n" for t in texts),
                                      encoding="utf-8")
    spec = write_spec(tmp_path / "spec.toml", llama16_dir, [{"path": "d.jsonl"}],
                      tokenize={"max_length": 128, "add_tokens": words[:2], "add_tokens_file": "tokens.txt"},
                      data_split={"valid": 0.0, "test": 0.1},
                      train={"method": "lora", "max_steps": 4, "batch_size": 4, "learning_rate": 5e-2})
    (tmp_path / "tokens.txt").write_text("# domain words\nnaïve\n\nstent\n", encoding="utf-8")
    run = stages.build(load_spec(spec))
    assert run.data.manifest["added_tokens"] == words
    ref = AutoTokenizer.from_pretrained(llama16_dir)
    ref.add_tokens(words)
    ids = ref.convert_tokens_to_ids(words)
    assert ids == [n0, n0 + 1, n0 + 2]
    train = stored.load_split(run.data.path, run.data.manifest, "train")
    seen = {i for r in range(len(train)) for i in train[r]["input_ids"]}
    assert set(ids) <= seen  # the packed rows hold the new ids
    saved = AutoTokenizer.from_pretrained(run.path / "model")
    assert len(saved) == n0 + 3 and saved.convert_tokens_to_ids(words) == ids

    # the adapter holds trained rows for the new tokens; the base rows under it are rebuilt the same way
    base = vocab.fit(AutoModelForCausalLM.from_pretrained(llama16_dir), run.path / "model")
    start = base.get_input_embeddings().weight[ids].clone()
    tuned = PeftModel.from_pretrained(base, run.path / "model").merge_and_unload()
    assert not torch.allclose(tuned.get_input_embeddings().weight[ids], start)
    assert torch.equal(tuned.get_input_embeddings().weight[:n0], AutoModelForCausalLM.from_pretrained(
        llama16_dir).get_input_embeddings().weight)

    r = export.export(export.find_run(run.path), export.override(export.find_run(run.path).export, onnx=True,
                                                                    rows=4))
    assert r.manifest["parity"]["fp32"]["passed"] and r.manifest["parity"]["fp32"]["agreement"] == 1.0
    assert AutoTokenizer.from_pretrained(r.path / "merged").convert_tokens_to_ids(words) == ids
    assert json.loads((r.path / "merged" / "config.json").read_text(encoding="utf-8"))["vocab_size"] == n0 + 3
    shipped = Tokenizer.from_file(str(r.artifact / "fp32" / "tokenizer.json"))  # what the runtime encodes with
    assert shipped.encode("a stent", add_special_tokens=False).ids[-1] == ids[1]


@pytest.mark.parametrize("method", ["ia3", "prompt-tuning", "freeze"])
def test_methods_that_cannot_train_new_rows_are_refused(tmp_path: Path, llama_dir: Path, method: str):
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], tokenize={"add_tokens": ["stent"]},
                      train={"method": method})
    with pytest.raises(FtcError, match="leaves untrained"):
        load_spec(spec)


def test_a_blank_token_and_an_unreadable_file_are_one_line_errors(tmp_path: Path, llama_dir: Path):
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], tokenize={"add_tokens": ["a", " "]})
    with pytest.raises(FtcError, match=r"add_tokens\[1\]` is blank"):
        load_spec(spec)
    (tmp_path / "t.txt").write_bytes(b"stent\nangio\xff\n")
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], tokenize={"add_tokens_file": "t.txt"})
    with pytest.raises(FtcError, match=r"t.txt:2: not UTF-8"):
        vocab.spec_tokens(load_spec(spec))


def test_vocab_suggest_ranks_split_frequent_words(tmp_path: Path, bpe_dir: Path):
    rows = [{"text": f"the angioplasty stent {i} thrombectomy"} for i in range(12)] + [{"text": "rare zygomorphic"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.jsonl"}], tokenize={"add_tokens": ["stent"]})
    tok = AutoTokenizer.from_pretrained(bpe_dir)
    found = vocab.suggest(load_spec(spec))
    words = [c.word for c in found]
    assert "zygomorphic" not in words and "stent" not in words and "the" not in words  # rare, added, whole
    for c in found:  # the saving is what the tokenizer says each occurrence costs, less the token and its space
        assert c.pieces == len(tok(" " + c.word, add_special_tokens=False)["input_ids"])
        assert c.saved == c.count * (c.pieces - 2) > 0
    assert words[:2] == sorted(["angioplasty", "thrombectomy"], key=lambda w: -[c.saved for c in found
                                                                             if c.word == w][0])
    out = tmp_path / "tokens.txt"
    r = CliRunner().invoke(main, ["vocab", "suggest", str(spec), "--top", "1", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)[0]["word"] == words[0] and out.read_text(encoding="utf-8") == f"{words[0]}\n"


def test_a_classifier_trains_added_tokens_too(tmp_path: Path, bert_dir: Path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    rows = [{"text": f"the stent {'held' if i % 2 else 'failed'} {i}", "label": "pos" if i % 2 else "neg"}
            for i in range(40)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = write_spec(tmp_path / "spec.toml", bert_dir, [{"path": "d.jsonl"}], model={"task": "classification"},
                      tokenize={"max_length": 32, "add_tokens": ["stent"]}, data_split={"valid": 0.0, "test": 0.2},
                      train={"method": "lora", "max_steps": 3, "batch_size": 8, "learning_rate": 5e-2,
                             "lora": {"target_modules": ["query", "value"]}})
    run = stages.build(load_spec(spec))
    new, size = vocab.load(run.path / "model")
    assert [t.token for t in new] == ["stent"] and size == len(AutoTokenizer.from_pretrained(bert_dir)) + 1
    base = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    start = vocab.fit(base, run.path / "model").get_input_embeddings().weight[new[0].id].clone()
    tuned = PeftModel.from_pretrained(base, run.path / "model").merge_and_unload()
    assert not torch.allclose(tuned.get_input_embeddings().weight[new[0].id], start)

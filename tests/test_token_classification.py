"""Token classification against independent references: transformers' `is_split_into_words` +
`word_ids()` recipe for the labels, seqeval for the scores, the transformers pipeline for the
decoded entities."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny import CORPUS

from ftc import _data
from ftc.errors import FtcError, KernelInputError, SourceError
from ftc.tasks import tagging
from ftc.runtime.entities import decode_entities
from ftc.tasks import tagged as tc

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC"]  # B-MISC without I-MISC: stays B on continuations
WORDS = sorted({w for line in CORPUS for w in line.split()}) + [
    "Zürich", "naïve", "don't", "U.S.", "co-operate", "🙂🚀", "supercalifragilistic", "x", "1,000.5", "São"]


def recipe(tok, words, tags, max_length, label_all):
    """transformers' run_ner.py `tokenize_and_align_labels`, row by row."""
    enc = tok(words, is_split_into_words=True, truncation=True, max_length=max_length)
    b_to_i = [LABELS.index(lab.replace("B-", "I-")) if lab.startswith("B-") and lab.replace("B-", "I-") in LABELS
              else i for i, lab in enumerate(LABELS)]
    labels, previous = [], None
    for w in enc.word_ids():
        if w is None:
            labels.append(-100)
        elif w != previous:
            labels.append(tags[w])
        else:
            labels.append(b_to_i[tags[w]] if label_all else -100)
        previous = w
    return enc["input_ids"], labels


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
@pytest.mark.parametrize("label_all", [False, True])
def test_encode_words_equals_the_transformers_recipe(kind, label_all, request):
    from transformers import AutoTokenizer

    model = request.getfixturevalue(f"{kind}_dir")
    tok = AutoTokenizer.from_pretrained(model)
    enc = _data.DataEncoder((model / "tokenizer.json").read_text(encoding="utf-8"))
    rng = random.Random(7)
    rows = [[rng.choice(WORDS) for _ in range(rng.randint(1, 30))] for _ in range(300)]
    tags = [[rng.randrange(len(LABELS)) for _ in r] for r in rows]
    for max_length in (8, 24, 512):
        ids, labels, length = enc.encode_words(pa.array(rows), pa.array(tags, pa.list_(pa.int32())), max_length,
                                               label_all, LABELS)
        ids, labels, length = pa.array(ids).to_pylist(), pa.array(labels).to_pylist(), pa.array(length).to_pylist()
        truncated = 0
        for i, (r, t) in enumerate(zip(rows, tags)):
            assert (ids[i], labels[i]) == recipe(tok, r, t, max_length, label_all), (i, r, t)
            full = len(tok(r, is_split_into_words=True)["input_ids"])
            assert length[i] == full
            truncated += full > max_length
        assert max_length == 512 or truncated > 0  # truncation was exercised


def test_encode_tagged_maps_tag_names_and_reports_problems(wordpiece_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    enc = _data.DataEncoder((wordpiece_dir / "tokenizer.json").read_text(encoding="utf-8"))
    table = tc.check_table(pa.table({"tokens": [["Ana", "visited", "Zürich"]], "tags": [["B-PER", "O", "B-LOC"]]}))
    out = tc.encode_tagged(enc, table, LABELS, 64, label_all_subwords=True)
    assert (out["input_ids"][0].as_py(), out["labels"][0].as_py()) == recipe(
        tok, ["Ana", "visited", "Zürich"], [1, 0, 3], 64, True)
    with pytest.raises(SourceError, match=r"row 1: tag 'B-ORG' is not a label"):
        tc.tag_ids(pa.array([["O"], ["O", "B-ORG"]], pa.list_(pa.large_string())), LABELS)
    with pytest.raises(KernelInputError, match=r"row 1: 2 words but 1 tags"):
        enc.encode_words(pa.array([["a"], ["a", "b"]]), pa.array([[0], [0]], pa.list_(pa.int32())), 16)
    with pytest.raises(KernelInputError, match=r"tag id 6 is not a label id"):
        enc.encode_words(pa.array([["a"]]), pa.array([[6]], pa.list_(pa.int32())), 16, True, LABELS)
    with pytest.raises(KernelInputError, match="needs label_names"):
        enc.encode_words(pa.array([["a"]]), pa.array([[0]], pa.list_(pa.int32())), 16, True)


# --- spans → words ---------------------------------------------------------------------------

piece = st.text(st.characters(categories=["Lu", "Ll", "Nd"]), min_size=1, max_size=6)


@given(st.lists(st.tuples(piece, st.sampled_from([" ", "  ", "\n", "\t "]), st.booleans()), min_size=1, max_size=12),
       st.data())
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_spans_on_word_boundaries_become_bio(parts, data):
    text, starts = "", []
    for word, gap, _ in parts:
        starts.append(len(text))
        text += word + gap
    # Entities: runs of consecutive words, the label drawn per run.
    spans, expected, i = [], ["O"] * len(parts), 0
    while i < len(parts):
        n = data.draw(st.integers(0, 3))
        if n and i + n <= len(parts):
            label = data.draw(st.sampled_from(["PER", "LOC", "ORG-X"]))
            end = starts[i + n - 1] + len(parts[i + n - 1][0])
            # Annotators often select the space after an entity: trimmed, not reported.
            end += data.draw(st.integers(0, len(parts[i + n - 1][1])))
            spans.append({"start": starts[i], "end": end, "label": label})
            expected[i:i + n] = [f"B-{label}"] + [f"I-{label}"] * (n - 1)
            i += n
        else:
            i += 1
    table, problems = tc.spans_to_tagged([text], [spans])
    assert problems == [[]]
    assert table["tokens"][0].as_py() == [w for w, _, _ in parts]
    assert table["tags"][0].as_py() == expected
    assert [text[s:e] for s, e in zip(table["starts"][0].as_py(), table["ends"][0].as_py())] == [w for w, _, _ in parts]


def test_spans_off_word_boundaries_are_reported_not_mangled():
    text = "Dr. Müller-Lüdenscheidt flew to New York City on 3.4.2021 ."
    at = text.index
    spans = [{"start": at("Müller"), "end": at("-"), "label": "PER"},  # part of a hyphenated name: on boundaries
             {"start": at("New"), "end": at(" City"), "label": "LOC"},
             {"start": at("York"), "end": at(" on"), "label": "LOC"},  # overlaps "New York"
             {"start": 1, "end": 3, "label": "X"},  # "r." cuts "Dr"
             {"start": at("3.4"), "end": len(text) + 5, "label": "DATE"}]  # past the end
    table, problems = tc.spans_to_tagged([text], [spans])
    tokens, tags = table["tokens"][0].as_py(), table["tags"][0].as_py()
    assert tokens[:6] == ["Dr", ".", "Müller", "-", "Lüdenscheidt", "flew"]
    assert [t for t, g in zip(tokens, tags) if g != "O"] == ["Müller", "New", "York"]
    assert tags[tokens.index("York")] == "I-LOC" and tags[tokens.index("City")] == "O"
    assert len(problems[0]) == 3
    assert any('"r." cuts through a word: "Dr."' in p for p in problems[0]), problems
    assert any("overlaps" in p for p in problems[0]) and any("outside the text" in p for p in problems[0])


# --- readers ---------------------------------------------------------------------------------

def test_read_conll(tmp_path: Path):
    path = tmp_path / "train.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n \t \n"
                    "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n\n\n-DOCSTART- -X- O\n"
                    "New York\tB-LOC\n", encoding="utf-8")
    table = tc.read_conll(path)
    assert table.schema == tc.TAGGED
    assert table.to_pydict() == {"tokens": [["EU", "rejects"], ["Peter", "Blackburn"], ["New York"]],
                                 "tags": [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC"]]}
    path.write_text("EU B-ORG\nrejects\n", encoding="utf-8")
    with pytest.raises(SourceError, match=rf"{path}:2: expected a token and a tag, found 'rejects'"):
        tc.read_conll(path)


def test_check_table_names_the_bad_row():
    good = pa.table({"tokens": [["a", "b"], []], "tags": [["O", "O"], []], "id": [1, 2]})
    assert tc.check_table(good).to_pydict() == {"tokens": [["a", "b"], []], "tags": [["O", "O"], []]}
    bad = pa.table({"tokens": [["a"], ["a", "b"], ["c"]], "tags": [["O"], ["O"], None]})
    with pytest.raises(SourceError, match=r"row 1: 2 tokens but 1 tags \(2 such rows"):
        tc.check_table(bad)
    with pytest.raises(SourceError, match="not a list"):
        tc.check_table(pa.table({"tokens": ["a b"], "tags": [["O", "O"]]}))
    with pytest.raises(SourceError, match="expected a list of strings"):
        tc.check_table(pa.table({"tokens": [["a"]], "tags": [[3]]}))
    with pytest.raises(SourceError, match="no column 'tags'"):
        tc.check_table(pa.table({"tokens": [["a"]], "ner_tags": [["O"]]}))


# --- schemes, repair, metrics ----------------------------------------------------------------

IOB2_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
IOBES_LABELS = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]


def seqeval_entities(seq, strict_scheme=None):
    from seqeval.metrics.sequence_labeling import get_entities
    from seqeval.scheme import IOB2, IOBES, Tokens

    if strict_scheme is None:
        return {(t, s, e + 1) for t, s, e in get_entities(list(seq))}
    scheme = {"IOB2": IOB2, "IOBES": IOBES}[strict_scheme]
    return {(e.tag, e.start, e.end) for e in Tokens(list(seq), scheme).entities}


def test_check_labels_names_the_offending_label():
    tagging.check_labels(IOBES_LABELS, "IOBES")
    with pytest.raises(FtcError, match=r"label 'E-PER' is not an IOB2 tag"):
        tagging.check_labels(["O", "B-PER", "E-PER"], "IOB2")
    with pytest.raises(FtcError, match=r"label 'PER' is not an IO tag; allowed: O, or I-TYPE"):
        tagging.check_labels(["O", "PER"], "IO")
    with pytest.raises(FtcError, match="unknown tag scheme 'BILOU'"):
        tagging.check_labels(["O"], "BILOU")


@pytest.mark.parametrize(("scheme", "given", "repaired"), [
    ("IOB2", ["I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]),
    ("IOB2", ["B-PER", "I-LOC", "O", "I-LOC"], ["B-PER", "B-LOC", "O", "B-LOC"]),
    ("IOBES", ["B-PER", "O"], ["S-PER", "O"]),
    ("IOBES", ["O", "E-LOC"], ["O", "S-LOC"]),
    ("IOBES", ["B-PER", "I-PER"], ["B-PER", "E-PER"]),
    ("IOBES", ["S-PER", "I-PER", "E-PER"], ["S-PER", "B-PER", "E-PER"]),
])
def test_invalid_sequences_are_repaired_as_seqeval_reads_them(scheme, given, repaired):
    labels = IOB2_LABELS if scheme == "IOB2" else IOBES_LABELS
    valid = ["O", "B-PER", "O"] if scheme == "IOB2" else ["O", "S-PER", "O"]
    check = tagging.check_tags([valid, given], labels, scheme)
    assert (check.tags, check.invalid) == ([valid, repaired], [1])
    ids = tagging.check_tags([[labels.index(t) for t in valid], [labels.index(t) for t in given]], labels, scheme)
    assert ids.tags[1] == [labels.index(t) for t in repaired]
    dropped = tagging.check_tags([given, valid], labels, scheme, on_invalid="drop")
    assert (dropped.tags, dropped.invalid) == ([valid], [0])


@pytest.mark.parametrize("scheme", ["IOB2", "IOBES"])
@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_repair_keeps_seqeval_default_entities_and_makes_them_strict(scheme, data):
    labels = IOB2_LABELS if scheme == "IOB2" else IOBES_LABELS
    seqs = data.draw(st.lists(st.lists(st.sampled_from(labels), max_size=10), max_size=6))
    check = tagging.check_tags(seqs, labels, scheme)
    for i, (before, after) in enumerate(zip(seqs, check.tags)):
        assert seqeval_entities(after) == seqeval_entities(before)
        assert seqeval_entities(after, scheme) == seqeval_entities(after)
        # Invalid exactly when seqeval's strict reading loses or changes an entity the lenient one sees.
        assert (i in check.invalid) == (after != before)
        assert (i in check.invalid) == (seqeval_entities(before, scheme) != seqeval_entities(before)
                                        or tagging.encode_entities(len(before), tagging.entities_lenient(before),
                                                                   scheme) != before)


def test_check_tags_is_fast_enough_for_100k_sentences():
    import time

    rng = random.Random(1)
    seqs = [[rng.randrange(len(IOB2_LABELS)) for _ in range(15)] for _ in range(100_000)]
    t = time.perf_counter()
    check = tagging.check_tags(seqs, IOB2_LABELS, "IOB2")
    assert time.perf_counter() - t < 10  # vectorized: ~1 s on one busy core, with 99% of rows repaired
    assert 0 < len(check.invalid) < len(seqs)


ADVERSARIAL = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "I-ORG-X", "B-ORG-X",
               "B", "I", "E", "S", "B-O", "I-O"]


def assert_scores_equal(ours, y_true, y_pred, **kw):
    """Every figure equal to seqeval's: its default mode, or (`scheme=`) its strict mode."""
    from seqeval.metrics import sequence_labeling, v1

    prfs = v1.precision_recall_fscore_support if kw else sequence_labeling.precision_recall_fscore_support
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p, r, f, s = prfs(y_true, y_pred, average=None, **kw)
        mp, mr, mf, ms = prfs(y_true, y_pred, average="micro", **kw)
        ap, ar, af, _ = prfs(y_true, y_pred, average="macro", **kw)
    per = ours["per_type"]
    assert [per[t]["precision"] for t in sorted(per)] == list(p)
    assert [per[t]["recall"] for t in sorted(per)] == list(r)
    assert [per[t]["f1"] for t in sorted(per)] == list(f)
    assert [per[t]["support"] for t in sorted(per)] == list(s)
    assert (ours["precision"], ours["recall"], ours["f1"], ours["support"]) == (mp, mr, mf, ms)
    macro = ours["macro"]
    assert np.allclose([macro["precision"], macro["recall"], macro["f1"]], [ap, ar, af], rtol=0, atol=0,
                       equal_nan=True)


def paired(pool):
    return st.lists(st.integers(0, 8), min_size=1, max_size=8).flatmap(lambda lens: st.tuples(
        st.tuples(*[st.lists(st.sampled_from(pool), min_size=n, max_size=n) for n in lens]),
        st.tuples(*[st.lists(st.sampled_from(pool), min_size=n, max_size=n) for n in lens])))


@given(paired(ADVERSARIAL))
@settings(max_examples=400, deadline=None)
def test_default_mode_scores_equal_seqeval(pair):
    y_true, y_pred = [list(s) for s in pair[0]], [list(s) for s in pair[1]]
    assert_scores_equal(tagging.entity_scores(y_true, y_pred), y_true, y_pred)


@pytest.mark.parametrize("scheme", ["IOB2", "IOBES"])
@given(data=st.data())
@settings(max_examples=300, deadline=None)
def test_strict_mode_scores_equal_seqeval(scheme, data):
    from seqeval.scheme import IOB2, IOBES

    pool = IOB2_LABELS + ["B-ORG-X", "I-ORG-X", "B", "I"] if scheme == "IOB2" else IOBES_LABELS + ["S", "E-O"]
    pair = data.draw(paired(pool))
    y_true, y_pred = [list(s) for s in pair[0]], [list(s) for s in pair[1]]
    ours = tagging.entity_scores(y_true, y_pred, mode="strict", scheme=scheme)
    assert_scores_equal(ours, y_true, y_pred, scheme={"IOB2": IOB2, "IOBES": IOBES}[scheme])


def test_scores_on_a_known_case_and_strict_rejects_foreign_prefixes():
    y_true = [["O", "B-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    y_pred = [["O", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    assert tagging.entity_scores(y_true, y_pred)["f1"] == 1.0
    strict = tagging.entity_scores(y_true, y_pred, mode="strict")
    assert (strict["precision"], strict["recall"]) == (1.0, 0.5)
    assert strict["per_type"]["MISC"]["recall"] == 0.0
    with pytest.raises(ValueError, match="'E-PER' is not a IOB2 tag"):
        tagging.entity_scores([["E-PER"]], [["O"]], mode="strict")
    with pytest.raises(FtcError, match="differ"):
        tagging.entity_scores([["O"]], [["O", "O"]])


# --- runtime decoding ------------------------------------------------------------------------

TEXTS = CORPUS[:6] + [
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
    "The U.S. Supreme Court ruled 5-4 in Zürich, naïvely.",
    "qwxz unseen zzzz tokens ☃ and emoji 🙂 here",
    "  leading spaces and trailing ones  ",
    "fox",
    "New York, New Jersey and São Paulo are cities; Jean-Luc Picard is not.",
]


def token_classifier(path: Path, tokenizer_dir: Path, vocab: int, seed: int):
    import shutil

    import torch
    from transformers import BertConfig, BertForTokenClassification

    if path != tokenizer_dir:
        shutil.copytree(tokenizer_dir, path, dirs_exist_ok=True)
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=512, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)})
    model = BertForTokenClassification(config)
    with torch.no_grad():  # a random head predicts mostly one label; widen it so every label shows up
        model.classifier.weight.mul_(40)
    model.save_pretrained(path)
    return path, labels


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_decoding_equals_the_transformers_pipeline(kind, request, tmp_path):
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    base = request.getfixturevalue(f"{kind}_dir")
    path, labels = token_classifier(tmp_path / "model", base, 600 if kind == "wordpiece" else 800, seed=3)
    model = AutoModelForTokenClassification.from_pretrained(path).eval()
    hf_tok = AutoTokenizer.from_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the BPE fallback heuristic warns on every call
        ner = pipeline("token-classification", model=model, tokenizer=hf_tok, aggregation_strategy="first",
                       device="cpu")
        expected = [ner(t) for t in TEXTS]
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    found = 0
    for text, want in zip(TEXTS, expected):
        enc = tokenizer.encode(text)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc.ids])).logits[0].numpy()
        got = decode_entities(text, logits, enc, tokenizer, labels)
        assert [{k: e[k] for k in ("entity_group", "word", "start", "end")} for e in got] == \
               [{k: e[k] for k in ("entity_group", "word", "start", "end")} for e in want], text
        assert np.allclose([e["score"] for e in got], [float(e["score"]) for e in want], rtol=0, atol=1e-5)
        found += len(got)
    assert found >= 10  # the comparison saw entities, not only empty lists
    with pytest.raises(FtcError, match="logits of shape"):
        decode_entities(TEXTS[0], np.zeros((3, len(labels))), tokenizer.encode(TEXTS[0]), tokenizer, labels)

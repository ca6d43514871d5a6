"""Extractive question answering: windows equal transformers' run_qa.py recipe, answers equal the
question-answering pipeline's, metrics equal SQuAD's official script, readers quarantine what
they cannot place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from transformers import AutoTokenizer

from ftc import _data
from ftc.errors import FtcError, KernelInputError, SourceError
from ftc.tasks import squad
from ftc.tasks.question_answering import encode_windows, extract_answer

MAX_LEN, STRIDE = 48, 12
SAMPLES = Path(__file__).parents[1] / "specs" / "data"

# Long contexts (several windows each) from the tiny tokenizers' own corpus, so most words are in
# the vocabulary, with answers near window edges, across them, at the very end, and none at all.
PARIS = ("User: what is the capital of France? Assistant: Paris is the capital of France. "
         "The quick brown fox jumps over the lazy dog. " * 4 + "Fine-tuning a model needs clean data.")
FOX = "The quick brown fox jumps over the lazy dog. " * 6 + "Wie geht es dir? Très bien, merci! The end is the dog"
MIXED = "Emoji 🙂🚀 and symbols © ® ™ — “quotes” ‘single’ … tabs\tand\nnewlines. " * 3 + "Très bien, merci!"


def _rows() -> list[dict]:
    def at(context: str, text: str, nth: int = 0) -> dict:
        start = -1
        for _ in range(nth + 1):
            start = context.index(text, start + 1)
        return {"text": [text], "answer_start": [start]}

    return [
        {"id": "a", "question": "What is the capital of France?", "context": PARIS, "answers": at(PARIS, "Paris")},
        {"id": "b", "question": "  Who jumps?", "context": PARIS, "answers": at(PARIS, "the lazy dog", 3)},
        {"id": "c", "question": "What needs clean data?", "context": PARIS, "answers": at(PARIS, "clean data")},
        {"id": "d", "question": "Which animal?", "context": FOX, "answers": at(FOX, "brown fox jumps over", 2)},
        {"id": "e", "question": "What ends it?", "context": FOX, "answers": at(FOX, "dog", 6)},  # last token
        {"id": "f", "question": "Unanswerable?", "context": FOX, "answers": {"text": [], "answer_start": []}},
        {"id": "g", "question": "Which emoji?", "context": MIXED, "answers": at(MIXED, "“quotes”", 1)},
        {"id": "h", "question": "Short?", "context": "Paris.", "answers": at("Paris.", "Paris")},
    ]


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=squad.ROWS)


def run_qa_features(tok, rows: list[dict], max_length: int, stride: int) -> dict:
    """transformers' examples/pytorch/question-answering/run_qa.py, `prepare_train_features` and
    `prepare_validation_features`, unpadded (`pad_on_right`: question first)."""
    questions = [r["question"].lstrip() for r in rows]
    enc = tok(questions, [r["context"] for r in rows], truncation="only_second", max_length=max_length, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
    out = {"start": [], "end": [], "offsets": [], "words": []}
    for i, offsets in enumerate(enc["offset_mapping"]):
        input_ids = enc["input_ids"][i]
        cls_index = input_ids.index(tok.cls_token_id) if tok.cls_token_id is not None else 0
        sequence_ids = enc.sequence_ids(i)
        answers = rows[enc["overflow_to_sample_mapping"][i]]["answers"]
        if len(answers["answer_start"]) == 0:
            out["start"].append(cls_index)
            out["end"].append(cls_index)
        else:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            token_start_index = 0
            while sequence_ids[token_start_index] != 1:
                token_start_index += 1
            token_end_index = len(input_ids) - 1
            while sequence_ids[token_end_index] != 1:
                token_end_index -= 1
            if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
                out["start"].append(cls_index)
                out["end"].append(cls_index)
            else:
                while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                    token_start_index += 1
                out["start"].append(token_start_index - 1)
                while offsets[token_end_index][1] >= end_char:
                    token_end_index -= 1
                out["end"].append(token_end_index + 1)
        # prepare_validation_features: offsets outside the context set to None (here -1).
        out["offsets"].append([o if sequence_ids[k] == 1 else (-1, -1) for k, o in enumerate(offsets)])
        out["words"].append([w if sequence_ids[k] == 1 else -1 for k, w in enumerate(enc.word_ids(i))])
    out |= {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"],
            "example": enc["overflow_to_sample_mapping"]}
    return out


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def tokenizers(request: pytest.FixtureRequest, wordpiece_dir: Path, bpe_dir: Path):
    d = wordpiece_dir if request.param == "wordpiece" else bpe_dir
    return _data.DataEncoder((d / "tokenizer.json").read_text(encoding="utf-8")), _with_types(AutoTokenizer.from_pretrained(d))


def _with_types(tok):
    """The tiny tokenizers, saved without a model class, leave token_type_ids out of their outputs;
    BERT's keep them, and so the run_qa.py recipe and the pipeline see them."""
    tok.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return tok


def _compare(enc, tok, rows: list[dict], max_length: int, stride: int) -> tuple[pa.Table, dict, list[int]]:
    """Windows against run_qa.py's on the same rows; returns both and the windows whose answer
    positions differ, each checked to be run_qa.py's one known slip."""
    windows, errors = encode_windows(enc, _table(rows), max_length=max_length, doc_stride=stride)
    ref = run_qa_features(tok, rows, max_length, stride)
    assert errors.null_count == len(rows)
    assert windows.column("input_ids").to_pylist() == ref["input_ids"]
    assert windows.column("example").to_pylist() == ref["example"]
    assert windows.column("token_type_ids").to_pylist() == ref["token_type_ids"]
    offsets = [list(zip(s, e)) for s, e in zip(windows.column("offset_starts").to_pylist(),
                                                windows.column("offset_ends").to_pylist())]
    assert offsets == [[tuple(o) for o in w] for w in ref["offsets"]]
    assert windows.column("word_ids").to_pylist() == ref["words"]
    starts, ends = windows.column("start_positions").to_pylist(), windows.column("end_positions").to_pylist()
    differ = [i for i in range(len(starts)) if (starts[i], ends[i]) != (ref["start"][i], ref["end"][i])]
    # run_qa.py's start scan runs past the window's last context token into the trailing separator
    # (its own comment: "we could go after the last offset if the answer is the last word"); here the
    # start stays on that token. Only a layout with a separator after the context shows it.
    for i in differ:
        last_ctx = max(k for k, o in enumerate(offsets[i]) if o != (-1, -1))
        assert (starts[i], ends[i]) == (last_ctx, last_ctx) and ref["start"][i] == len(ref["input_ids"][i]) - 1
    return windows, ref, differ


def test_windows_equal_run_qa(tokenizers):
    enc, tok = tokenizers
    rows = _rows()
    windows, ref, differ = _compare(enc, tok, rows, MAX_LEN, STRIDE)
    assert max(np.bincount(ref["example"])) >= 3, "the contexts must make several windows"
    # Row "e" (its answer is the context's last token) is the slip, with the BERT layout only.
    assert ("e" in {rows[ref["example"][i]]["id"] for i in differ}) == (tok.cls_token_id is not None)
    # Every labelled window holds its answer; the unanswerable row and the windows without it are 0.
    starts, ends = windows.column("start_positions").to_pylist(), windows.column("end_positions").to_pylist()
    holding = set()
    for i, (s, e) in enumerate(zip(starts, ends)):
        row = rows[ref["example"][i]]
        if s:
            a0, t0 = row["answers"]["answer_start"][0], row["answers"]["text"][0]
            assert ref["offsets"][i][s][0] <= a0 and ref["offsets"][i][e][1] >= a0 + len(t0)
            holding.add(row["id"])
    assert holding == {"a", "b", "c", "d", "e", "g", "h"}


def test_windows_equal_run_qa_on_squad_sample(tokenizers):
    enc, tok = tokenizers
    got = squad.read_squad_json(SAMPLES / "squad-v1.1-dev-sample.json")
    rows = got.rows.slice(0, 120).to_pylist()
    windows, ref, _ = _compare(enc, tok, rows, 128, 32)
    assert len(ref["input_ids"]) > 2 * len(rows)
    assert sum(1 for s in windows.column("start_positions").to_pylist() if s) >= len(rows)


def test_squad_samples_read_whole():
    """The committed SQuAD v1.1 samples: every question kept, several golds in dev."""
    train = squad.read_squad_json(SAMPLES / "squad-v1.1-train-sample.json")
    dev = squad.read_squad_json(SAMPLES / "squad-v1.1-dev-sample.json")
    assert (train.rows.num_rows, train.bad.num_rows, dev.rows.num_rows, dev.bad.num_rows) == (3807, 0, 1169, 0)
    assert max(len(a["text"]) for a in dev.rows.column("answers").to_pylist()) > 1


def test_windows_errors_name_the_example(wordpiece_dir: Path):
    enc = _data.DataEncoder((wordpiece_dir / "tokenizer.json").read_text(encoding="utf-8"))
    rows = _rows()[:2]
    rows[0] = rows[0] | {"question": "what is the capital of France " * 10}
    windows, errors = encode_windows(enc, _table(rows), max_length=MAX_LEN, doc_stride=STRIDE)
    assert "leaves no room for the context" in errors[0].as_py() and errors[1].as_py() is None
    assert set(windows.column("example").to_pylist()) == {1}
    rows[0] = rows[0] | {"question": "what is the capital of France " * 5}  # 30 tokens: room 15 ≤ stride 20
    _, errors = encode_windows(enc, _table(rows), max_length=MAX_LEN, doc_stride=20)
    assert "doc_stride 20 must be less than" in errors[0].as_py()
    with pytest.raises(KernelInputError, match="doc_stride 48 must be less than max_length 48"):
        encode_windows(enc, _table(rows), max_length=MAX_LEN, doc_stride=MAX_LEN)


# --- metrics: SQuAD's official v2.0 evaluation on cases that fail a near-miss implementation ---

@pytest.mark.parametrize(("prediction", "golds", "exact", "f1"), [
    ("The Cat!", ["cat"], 1, 1.0),  # case, punctuation, article
    ("an apple a day", ["apple day"], 1, 1.0),
    ("theater", ["ater"], 0, 0.0),  # articles only as whole words
    ("A.B.", ["ab"], 1, 1.0),  # punctuation is removed, not turned into spaces
    ("Café—au lait", ["café au lait"], 0, 0.4),  # the em dash is not ASCII punctuation
    ("“Paris”", ["Paris"], 0, 0.0),  # nor are curly quotes
    ("naïve  \u3000 ÉCOLE", ["naïve école"], 1, 1.0),  # Unicode lower case and whitespace
    ("Broncos team", ["Denver Broncos", "Broncos"], 0, 2 / 3),  # best over several golds
    ("the Denver Broncos", ["Broncos", "Denver Broncos"], 1, 1.0),
    ("a a b b b", ["b b c"], 0, 2 / 3),  # token counts: 2 of 3 shared each way
    ("", [], 1, 1.0),  # no answer, rightly
    ("Paris", [], 0, 0.0),  # an answer where there is none
    ("", ["Paris"], 0, 0.0),
    ("", ["the", "!"], 1, 1.0),  # golds that normalise to nothing make the question unanswerable
    ("the", ["Paris"], 0, 0.0),  # a prediction that normalises to nothing is no answer
])
def test_metrics_follow_the_official_script(prediction, golds, exact, f1):
    assert squad.exact_match(prediction, golds) == exact
    assert squad.f1_score(prediction, golds) == pytest.approx(f1)


def test_squad_metrics_v2_totals():
    refs = {"1": ["Denver Broncos"], "2": ["Paris", "Paris, France"], "3": [], "4": []}
    preds = {"1": "Broncos", "2": "paris", "3": "", "4": "Lyon"}
    got = squad.squad_metrics(preds, refs)
    assert got == pytest.approx({
        "exact": 50.0, "f1": 100 * (2 / 3 + 1 + 1 + 0) / 4, "total": 4,
        "HasAns_exact": 50.0, "HasAns_f1": 100 * (2 / 3 + 1) / 2, "HasAns_total": 2,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2,
    })
    assert set(squad.squad_metrics({"1": "Broncos"}, {"1": ["Broncos"]})) == {"exact", "f1", "total", "HasAns_exact",
                                                                             "HasAns_f1", "HasAns_total"}
    with pytest.raises(FtcError, match="no prediction for 1 of 4 questions"):
        squad.squad_metrics({k: v for k, v in preds.items() if k != "3"}, refs)


# --- readers ---

def _squad_doc() -> dict:
    ctx = "Paris is the capital of France. Lyon is not."
    return {"version": "v2.0", "data": [{"title": "France", "paragraphs": [{"context": ctx, "qas": [
        {"id": "q1", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0},
                                                         {"text": "Paris", "answer_start": 0}]},
        {"id": "q2", "question": "Not?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "Lyon", "answer_start": 32}]},
        {"id": "q3", "question": "Off by one?", "answers": [{"text": "Lyon", "answer_start": 31}]},
        {"id": "q4", "question": "Impossible, answered?", "is_impossible": True,
         "answers": [{"text": "Lyon", "answer_start": 32}]},
        {"id": "q5", "question": "Where?", "answers": [{"text": "France", "answer_start": 24}]},
    ]}]}]}


def test_read_squad_json_v1_and_v2(tmp_path: Path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(_squad_doc()), encoding="utf-8")
    got = squad.read_squad_json(path)
    assert got.rows.schema == squad.ROWS
    assert got.rows.column("id").to_pylist() == ["q1", "q2", "q5"]
    assert got.rows.column("answers").to_pylist() == [
        {"text": ["Paris", "Paris"], "answer_start": [0, 0]}, {"text": [], "answer_start": []},
        {"text": ["France"], "answer_start": [24]}]
    assert got.bad.to_pylist() == [
        {"location": "data[0].paragraphs[0].qas[2] (id q3)",
         "reason": "answer 0 'Lyon' is not at answer_start 31 of its context (found ' Lyo')"},
        {"location": "data[0].paragraphs[0].qas[3] (id q4)", "reason": "is_impossible, yet it has answers"}]
    assert got.located == 0


def test_read_squad_json_structure_errors_name_the_place(tmp_path: Path):
    doc = _squad_doc()
    del doc["data"][0]["paragraphs"][0]["qas"][1]["question"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(SourceError, match=r"broken.json: data\[0\].paragraphs\[0\].qas\[1\].question is missing, "
                                          r"expected a str") as e:
        squad.read_squad_json(path)
    assert "\n" not in e.value.message and e.value.hint
    path.write_text('{"data": [{"paragraphs": {}}]}', encoding="utf-8")
    with pytest.raises(SourceError, match=r"data\[0\].paragraphs is a dict, expected a list"):
        squad.read_squad_json(path)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(SourceError, match="cannot read as SQuAD JSON"):
        squad.read_squad_json(path)


def test_flat_jsonl_read_at_once_equals_the_record_reader(tmp_path: Path):
    """Hugging Face's flat SQuAD JSON Lines go through polars whole, checks vectorized; the rows
    and the reasons are the record reader's, row for row."""
    from ftc.encodings import Decoding
    from ftc.tasks import qa_data

    ctx = "Zoë paid 5 € in Paris; Paris is big."
    ok = {"text": ["Paris"], "answer_start": [16]}
    rows = [
        {"id": "a", "context": ctx, "question": "Where?", "answers": ok, "split": "test"},
        {"id": 7, "context": ctx, "question": "Who?", "answers": {"text": ["Zoë", "Zoë paid"], "answer_start": [0, 0]}},
        {"context": ctx, "question": "None?", "answers": {"text": [], "answer_start": []}},  # unanswerable, no id
        {"id": "d", "context": ctx, "question": "Big?", "answers": {"text": ["big"]}},  # located
        {"id": "e", "context": ctx, "question": "Off?", "answers": {"text": ["Paris"], "answer_start": [15]}},
        {"id": "f", "context": ctx, "question": " \t", "answers": ok},
        {"id": "g", "context": ctx, "question": "Empty?", "answers": {"text": [""], "answer_start": [0]}},
        {"id": "h", "context": ctx, "question": "Neg?", "answers": {"text": ["Paris"], "answer_start": [-3]}},
        {"id": "i", "context": ctx, "question": "Odd?", "answers": {"text": ["Paris", "big"], "answer_start": [16]}},
        {"id": "j", "context": ctx, "question": "None left?"},
        {"id": "k", "context": ctx, "question": "Euro?", "answers": {"text": ["5 €"], "answer_start": [9]}},
    ]
    path = tmp_path / "flat.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    names = {k: k for k in ("context", "question", "answers", "id")}
    fast = qa_data._flat_columns(path, names, "split", None)
    assert fast is not None, "the flat shape must take the polars path"
    want, want_bad = qa_data._records(list(range(1, len(rows) + 1)), rows, names, "split")
    assert fast.rows.to_dicts() == want.to_dicts()
    assert sorted(fast.bad.rows()) == sorted(want_bad)
    assert fast.rows["id"].to_list() == ["a", "7", "line 3", "d", "k"]
    assert fast.rows["located"].to_list() == [0, 0, 0, 1, 0]
    assert [line for line, _ in sorted(want_bad)] == [5, 6, 7, 8, 9, 10]
    # Another shape (a blank line: lines would not number rows) is left to the record reader.
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + json.dumps(rows[0]) + "\n", encoding="utf-8")
    assert qa_data._flat_columns(path, names, None, None) is None
    class Cols:
        context = question = answers = id = None
    batches = list(qa_data.read_file(path, "jsonl", Cols, None, Decoding("utf-8"), None))
    assert sum(b.rows.height for b in batches) == 6


def test_normalize_flat_rows():
    ctx = "Paris is the capital of France; Paris is big."
    rows = [
        {"id": 7, "context": ctx, "question": "Q", "answers": {"text": ["Paris", "France"], "answer_start": [0, 24]}},
        {"context": ctx, "question": "Q", "answers": {"text": ["Paris"]}},  # located: first occurrence
        {"context": ctx, "question": "Q", "answer": "big"},
        {"context": ctx, "question": "Q", "answer": ""},  # unanswerable
        {"context": ctx, "question": "Q", "answers": [{"text": "capital", "answer_start": 13}]},
        {"context": ctx, "question": "Q", "answers": ["France"]},
        {"context": ctx, "question": "Q", "answer": "Lyon"},
        {"context": ctx, "question": "Q", "answers": {"text": ["Paris"], "answer_start": [1]}},
        {"context": ctx, "question": "Q", "answers": {"text": ["Paris", "big"], "answer_start": [0]}},
        {"context": ctx, "question": " ", "answer": "Paris"},
        {"context": None, "question": "Q", "answer": "Paris"},
        {"context": ctx, "question": "Q", "answer": 3},
    ]
    got = squad.normalize_rows(rows, lines=list(range(1, len(rows) + 1)))
    assert got.rows.column("id").to_pylist() == ["7", "line 2", "line 3", "line 4", "line 5", "line 6"]
    assert got.rows.column("answers").to_pylist() == [
        {"text": ["Paris", "France"], "answer_start": [0, 24]}, {"text": ["Paris"], "answer_start": [0]},
        {"text": ["big"], "answer_start": [41]}, {"text": [], "answer_start": []},
        {"text": ["capital"], "answer_start": [13]}, {"text": ["France"], "answer_start": [24]}]
    assert got.located == 3
    assert got.bad.to_pylist() == [
        {"location": "line 7", "reason": "answer 0 'Lyon' does not occur in its context"},
        {"location": "line 8", "reason": "answer 0 'Paris' is not at answer_start 1 of its context (found 'aris ')"},
        {"location": "line 9", "reason": "answers has 2 texts but 1 answer_start values"},
        {"location": "line 10", "reason": "empty question"},
        {"location": "line 11", "reason": "context and question must both be strings"},
        {"location": "line 12", "reason": "answer must be a string (found int)"}]


# --- answer extraction against the question-answering pipeline ---

def pipeline_answers(forward, tok, question: str, context: str, *, max_seq_len: int, doc_stride: int, top_k: int,
                     max_answer_len: int, handle_impossible_answer: bool, align_to_words: bool) -> list[dict]:
    """transformers' `QuestionAnsweringPipeline` (4.57: `preprocess` for a fast tokenizer,
    `_forward`, `postprocess`), run step by step. transformers 5 dropped the pipeline class but
    still ships its scoring, `select_starts_ends`, which this calls. `forward`: the model."""
    from transformers.pipelines.document_question_answering import select_starts_ends

    enc = tok(text=question, text_pair=context, padding="do_not_pad", truncation="only_second",
              max_length=max_seq_len, stride=doc_stride, return_token_type_ids=True,
              return_overflowing_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    min_null_score, answers = 1000000, []
    for span in range(len(enc["input_ids"])):
        p_mask = [t != 1 for t in enc.sequence_ids(span)]
        if tok.cls_token_id is not None:
            for cls_index in np.nonzero(np.array(enc["input_ids"][span]) == tok.cls_token_id)[0]:
                p_mask[cls_index] = 0
        start_logits, end_logits = forward({k: enc[k][span] for k in tok.model_input_names})
        pre_topk = top_k * 2 + 10 if align_to_words else top_k
        starts, ends, scores, min_null_score = select_starts_ends(
            start_logits[None], end_logits[None], np.array([p_mask], dtype=np.int64),
            np.array([enc["attention_mask"][span]]), min_null_score, pre_topk, handle_impossible_answer,
            max_answer_len)
        e = enc[span]
        for s, t, score in zip(starts, ends, scores):
            try:
                if not align_to_words:
                    raise ValueError
                start_index = e.word_to_chars(e.token_to_word(s), sequence_index=1)[0]
                end_index = e.word_to_chars(e.token_to_word(t), sequence_index=1)[1]
            except Exception:
                start_index, end_index = e.offsets[s][0], e.offsets[t][1]
            target = context[start_index:end_index]
            same = [a for a in answers if a["answer"].lower() == target.lower()]
            if same:
                same[0]["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": start_index, "end": end_index, "answer": target})
    if handle_impossible_answer:
        answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def qa_model(request: pytest.FixtureRequest, wordpiece_dir: Path, bpe_dir: Path):
    """A tiny BERT question-answering model, random weights, over each tiny tokenizer."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    d = wordpiece_dir if request.param == "wordpiece" else bpe_dir
    tok = _with_types(AutoTokenizer.from_pretrained(d))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128, initializer_range=0.3)
    model = BertForQuestionAnswering(config).eval()
    seen: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def forward(inputs: dict[str, list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """One window through the model (batch of one, no padding); remembered, for speed."""
        key = tuple((k, tuple(v)) for k, v in sorted(inputs.items()) if k != "attention_mask")
        if key not in seen:
            with torch.no_grad():
                out = model(**{k: torch.tensor([v]) for k, v in inputs.items()})
            seen[key] = (out.start_logits[0].numpy(), out.end_logits[0].numpy())
        return seen[key]

    return forward, tok, _data.DataEncoder((d / "tokenizer.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(("top_k", "max_answer_len", "impossible", "align"),
                         [(1, 15, False, True), (3, 4, True, True), (5, 30, True, False), (2, 1, False, False)])
def test_extract_answer_equals_pipeline(qa_model, top_k, max_answer_len, impossible, align):
    forward, tok, enc = qa_model
    rows = _rows()
    windows, _ = encode_windows(enc, _table(rows), max_length=MAX_LEN, doc_stride=STRIDE, train=False)
    assert "start_positions" not in windows.column_names
    by_example = windows.to_pylist()
    for i, row in enumerate(rows):
        mine = [w for w in by_example if w["example"] == i]
        # What the runtime feeds the exported model: the window's ids (and token types, where taken).
        logits = [forward({k: w[k] for k in ("input_ids", "token_type_ids") if k in tok.model_input_names})
                  for w in mine]
        got = extract_answer(row["context"], [{k: np.array(v) for k, v in w.items()} for w in mine],
                             [s for s, _ in logits], [e for _, e in logits], cls_token_id=tok.cls_token_id,
                             top_k=top_k, max_answer_length=max_answer_len, handle_impossible_answer=impossible,
                             align_to_words=align)
        ref = pipeline_answers(forward, tok, row["question"].lstrip(), row["context"], max_seq_len=MAX_LEN,
                               doc_stride=STRIDE, top_k=top_k, max_answer_len=max_answer_len,
                               handle_impossible_answer=impossible, align_to_words=align)
        assert [(a.text, a.start, a.end) for a in got] == [(r["answer"], r["start"], r["end"]) for r in ref], row["id"]
        assert [a.score for a in got] == pytest.approx([r["score"] for r in ref], rel=1e-5, abs=1e-7)
        assert all(row["context"][a.start:a.end] == a.text for a in got)
        assert len(got) == min(top_k, len(ref)) and got[0].score > 0


def test_extract_answer_rejects_mismatched_inputs():
    w = {"input_ids": np.array([2, 5, 3, 7]), "offset_starts": np.array([-1, -1, -1, 0]),
         "offset_ends": np.array([-1, -1, -1, 4]), "word_ids": np.array([-1, -1, -1, 0])}
    with pytest.raises(FtcError, match="1 windows but 2 start and 1 end logits"):
        extract_answer("Word", [w], [np.zeros(4)] * 2, [np.zeros(4)], cls_token_id=2)
    with pytest.raises(FtcError, match="top_k 0"):
        extract_answer("Word", [w], [np.zeros(4)], [np.zeros(4)], cls_token_id=2, top_k=0)
    best = extract_answer("Word", [w], [np.zeros(4)], [np.zeros(4)], cls_token_id=2)
    assert [(a.text, a.start, a.end) for a in best] == [("Word", 0, 4)]


def test_null_answer_scores_the_least_likely_cls_over_windows():
    """By hand: [CLS] q [SEP] "ab" "cd" [SEP] twice; softmaxes over CLS and the context only."""
    w = {"input_ids": np.array([2, 9, 3, 10, 11, 3]), "offset_starts": np.array([-1, -1, -1, 0, 3, -1]),
         "offset_ends": np.array([-1, -1, -1, 2, 5, -1]), "word_ids": np.array([-1, -1, -1, 0, 1, -1])}
    low = (np.array([0, 7, 7, 2, 0, 7.0]), np.array([0, 7, 7, 0, 2, 7.0]))  # question/SEP logits are masked
    high = (np.array([5, 0, 0, 1, 0, 0.0]), np.array([5, 0, 0, 0, 1, 0.0]))
    got = extract_answer("ab cd", [w, w], [low[0], high[0]], [low[1], high[1]], cls_token_id=2, top_k=10,
                         handle_impossible_answer=True)
    e = np.e
    p_low, p_high = 1 / (2 + e**2), e**5 / (e**5 + e + 1)
    # Past the three real spans per window come zero-score ones (the pipeline's too), some empty.
    null = max(a.score for a in got if a.text == "")
    assert null == pytest.approx(p_low**2) and p_high**2 > 0.9  # the lower of the two windows' CLS scores
    # "ab cd" from both windows is one answer, its scores summed.
    both = (e**2 / (2 + e**2)) ** 2 + (e / (e**5 + e + 1)) ** 2
    assert (got[0].text, got[0].start, got[0].end, got[0].score) == ("ab cd", 0, 5, pytest.approx(both))
    assert [a.text for a in got].count("ab cd") == 1 and {a.text for a in got} == {"ab cd", "ab", "cd", ""}

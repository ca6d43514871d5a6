"""Evaluation metrics against sklearn and hand-computed values, and the run report: metrics.json,
report.md and its PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftc import evaluate, report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ── classification ───────────────────────────────────────────────────────────────────────────

@st.composite
def labelled(draw: st.DrawFn) -> tuple[list[int], list[int], int]:
    """Labels and predictions over k classes; predictions often miss whole classes."""
    k = draw(st.integers(1, 6))
    n = draw(st.integers(1, 60))
    y_true = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    allowed = draw(st.lists(st.integers(0, k - 1), min_size=1, max_size=k, unique=True))
    y_pred = draw(st.lists(st.sampled_from(allowed), min_size=n, max_size=n))
    return y_true, y_pred, k


@pytest.mark.filterwarnings("ignore:A single label was found")
@settings(max_examples=200, deadline=None)
@given(labelled())
def test_classification_matches_sklearn(case: tuple[list[int], list[int], int]) -> None:
    skm = pytest.importorskip("sklearn.metrics")
    y_true, y_pred, k = case
    names = [f"c{i}" for i in range(k)]
    got = evaluate.classification_metrics(y_true, y_pred, names)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        assert (got[f"precision_{avg}"], got[f"recall_{avg}"], got[f"f1_{avg}"]) == pytest.approx((p, r, f))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=list(range(k)), zero_division=0)
    for i, name in enumerate(names):
        assert got["per_class"][name] == pytest.approx(
            {"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]})
    assert got["confusion_matrix"] == skm.confusion_matrix(y_true, y_pred, labels=list(range(k))).tolist()
    assert got["support"] == len(y_true)


def test_classification_by_hand() -> None:
    # class 2 is never predicted and never present: 0 in its row, out of the macro average
    m = evaluate.classification_metrics(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1]), ["a", "b", "c"])
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert m["per_class"]["a"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["per_class"]["b"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert m["f1_weighted"] == pytest.approx((0.8 * 3 + 2 / 3) / 4)
    assert m["labels"] == ["a", "b", "c"]


@pytest.mark.parametrize(("y_true", "y_pred", "message"), [
    ([0, 1], [0], "2 labels but 1 predictions"),
    ([0, 2], [0, 1], "a label outside 0..1"),
    ([0, 1], [0, -1], "a prediction outside 0..1"),
])
def test_classification_rejects(y_true: list[int], y_pred: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate.classification_metrics(y_true, y_pred, ["a", "b"])


def test_classification_empty() -> None:
    m = evaluate.classification_metrics([], [], ["a", "b"])
    assert (m["accuracy"], m["f1_macro"], m["f1_weighted"], m["support"]) == (0.0, 0.0, 0.0, 0)
    assert m["confusion_matrix"] == [[0, 0], [0, 0]]


# ── perplexity ───────────────────────────────────────────────────────────────────────────────

def test_perplexity() -> None:
    assert evaluate.perplexity(3 * math.log(5), 3) == pytest.approx(5.0)
    assert evaluate.perplexity(0.0, 10) == 1.0
    assert evaluate.perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        evaluate.perplexity(1.0, 0)


def test_perplexity_weights_tokens_not_batches() -> None:
    # mean NLL over 4 tokens is (3·ln2 + ln8)/4 = 1.5·ln2, not the mean of batch means (ln2 + ln8)/2
    batches = [(3 * math.log(2), 3), (math.log(8), 1)]
    assert evaluate.perplexity_of_batches(batches) == pytest.approx(2 ** 1.5)
    assert evaluate.perplexity_of_batches(iter(batches)) == evaluate.perplexity(3 * math.log(2) + math.log(8), 4)


# ── BLEU and ROUGE ───────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize(("predictions", "references", "expected"), [
    (["the cat sat on the mat"], ["the cat sat on the mat"], 100.0),
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, no brevity penalty: (1/12) ** (1/4)
    (["the cat sat on the mat"], ["the cat sat on a mat"], 100 * (1 / 12) ** 0.25),
    (["dogs bark loudly"], ["the cat sat on the mat"], 0.0),
    # Chinese per character: every n-gram matches, brevity penalty exp(1 - 7/6)
    (["猫坐在垫子上"], ["猫坐在垫子上了"], 100 * math.exp(1 - 7 / 6)),
    ([], [], 0.0),
])
def test_bleu(predictions: list[str], references: list[str], expected: float) -> None:
    assert evaluate.bleu(predictions, references) == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("the cat sat on the mat", "the cat sat on the mat", (1.0, 1.0, 1.0)),
    # P = 1, R = 3/6 → 2/3; bigrams P = 1, R = 2/5 → 4/7; LCS 3 as unigrams
    ("the cat sat", "the cat sat on the mat", (2 / 3, 4 / 7, 2 / 3)),
    ("The Cat", "the cat", (1.0, 1.0, 1.0)),
    # per character: 今天天气 shared (4 of 6), bigrams 今天 天天 天气 (3 of 5), LCS 4
    ("今天天气很好", "今天天气不错", (2 / 3, 3 / 5, 2 / 3)),
    ("猫坐在垫子上", "猫坐在垫子上", (1.0, 1.0, 1.0)),
    ("苹果 apple", "apple 苹果", (1.0, 1 / 2, 2 / 3)),
    ("", "something", (0.0, 0.0, 0.0)),
])
def test_rouge(prediction: str, reference: str, expected: tuple[float, float, float]) -> None:
    got = evaluate.rouge([prediction], [reference])
    assert (got["rouge1"], got["rouge2"], got["rougeL"]) == pytest.approx(expected)


def test_rouge_averages_pairs() -> None:
    got = evaluate.rouge(["a b", "x y"], ["a b", "p q"])
    assert got == pytest.approx({"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5})
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        evaluate.rouge(["a", "b"], ["a"])


def test_cjk_tokens() -> None:
    assert evaluate.cjk_tokens("Hello, 世界! ok_2 ひらがな") == ["hello", "世", "界", "ok_2", "ひ", "ら", "が", "な"]
    assert evaluate.has_cjk(["abc", "中"]) and not evaluate.has_cjk(["abc", "déjà"])


# ── gain ─────────────────────────────────────────────────────────────────────────────────────

def test_gain() -> None:
    base = {"accuracy": 0.5, "perplexity": 9.0, "bleu": 10.0, "support": 40, "labels": ["a"], "f1_macro": math.nan}
    tuned = {"perplexity": 4.5, "accuracy": 0.75, "support": 40, "rouge1": 0.3, "f1_macro": 0.7}
    assert evaluate.gain(base, tuned) == {"perplexity": -4.5, "accuracy": 0.25}


# ── the report ───────────────────────────────────────────────────────────────────────────────

SPEC = '[project]\nname = "demo"\n\n[model]\nbase = "tiny"\ntask = "classification"\n'
LOG_HISTORY = [
    *({"loss": 2.0 / (i + 1), "grad_norm": 1.0, "learning_rate": 1e-4, "epoch": i / 10, "step": 10 * (i + 1)}
      for i in range(6)),
    {"eval_loss": 0.9, "eval_accuracy": 0.6, "epoch": 0.3, "step": 30},
    {"eval_loss": 0.7, "eval_accuracy": 0.7, "epoch": 0.6, "step": 60},
    {"train_runtime": 12.0, "train_loss": 0.8, "epoch": 0.6, "step": 60},
]


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(("timing", "added"), [
    ({"train_seconds": 4.0, "train_tokens": 100, "eval_seconds": 0.0, "eval_tokens": 5}, {"train_tokens_per_second": 25.0}),
    ({"train_seconds": 4.0, "train_tokens": 100, "tokens_per_second": 24.9}, {}),
    ({"train_seconds": 4.0, "train_tokens": 100, "train_tokens_per_second": 1.0}, {}),
    ({"train_tokens": 100}, {}),
])
def test_with_rates(timing: dict, added: dict) -> None:
    assert report.with_rates(timing) == {**timing, **added}


def test_loss_points_and_no_plot(tmp_path: Path) -> None:
    train, evals = report.loss_points(LOG_HISTORY)
    assert [s for s, _ in train] == [10, 20, 30, 40, 50, 60] and evals == [(30, 0.9), (60, 0.7)]
    assert report.loss_curves([{"train_runtime": 1.0, "step": 3}, {"loss": 1.0}], tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()
    only_eval = report.loss_curves([{"eval_loss": 1.0, "step": 5}], tmp_path / "eval.png")
    assert only_eval is not None and is_png(only_eval)


def test_confusion_png_with_chinese_names(tmp_path: Path) -> None:
    path = report.confusion_png([[3, 1], [0, 4]], ["负面", "正面"], tmp_path / "plots" / "cm.png")
    assert is_png(path)


def test_write_report_classification(tmp_path: Path) -> None:
    names = ["neg", "pos", "neutral|mixed"]
    y_true, y_pred = [0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2, 2]
    tuned = evaluate.classification_metrics(y_true, y_pred, names)
    base = evaluate.classification_metrics(y_true, [0] * 7, names)
    run = tmp_path / "run-1"
    keys = {"data": "d" * 16, "train": "t" * 16}
    timing = {"train_seconds": 12.5, "train_tokens": 5000, "eval_seconds": 1.5}
    path = report.write_report(run, spec_text=SPEC, keys=keys, metrics=tuned, base_metrics=base,
                               log_history=LOG_HISTORY, timing=timing, task="classification", names=names)

    assert path == run / "report.md"
    record = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert {"task", "metrics", "base_metrics", "gain", "keys", "timing"} <= record.keys()
    assert record["metrics"]["accuracy"] == pytest.approx(5 / 7)
    assert record["gain"]["accuracy"] == pytest.approx(5 / 7 - 2 / 7)
    assert "support" not in record["gain"]
    assert record["keys"] == keys
    assert record["timing"]["train_tokens_per_second"] == pytest.approx(400.0)

    text = path.read_text(encoding="utf-8")
    for png in (report.LOSS_PNG, report.CONFUSION_PNG):
        assert f"]({png})" in text
        assert is_png(run / png)
    assert "| metric | tuned | base | gain |" in text
    assert "| accuracy | 0.7143 | 0.2857 | +0.4286 |" in text
    assert "| neutral\\|mixed | 1.0000 | 1.0000 | 1.0000 | 2 |" in text  # per class, pipe escaped
    assert "d" * 16 in text and "t" * 16 in text
    assert "| train_tokens_per_second | 400 |" in text and "| train_seconds | 12.5s |" in text
    assert "```toml\n" + SPEC.rstrip("\n") + "\n```" in text


def test_write_report_causal_lm(tmp_path: Path) -> None:
    metrics = {"eval_loss": 1e6, "perplexity": math.inf, "bleu": 12.5, "rouge1": 0.4, "samples": 10}
    spec = 'name = "x"  # a ```fence``` inside\n'
    path = report.write_report(tmp_path, spec_text=spec, keys={"data": "abc"}, metrics=metrics,
                               base_metrics=None, log_history=[], timing={"train_seconds": 3725.0},
                               task="causal-lm", names=None)
    record = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: inf became null
    assert record["metrics"]["perplexity"] is None and record["gain"] is None
    text = path.read_text()
    assert "png" not in text and not list(tmp_path.glob("*.png"))
    assert "| metric | tuned |" in text and "| perplexity (lower is better) | inf |" in text
    assert "| bleu | 12.5000 |" in text and "samples" not in text.split("## Stage keys")[0]
    assert "````toml\n" + spec.rstrip("\n") + "\n````" in text
    assert "1h 02m 05s" in text

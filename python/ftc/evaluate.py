"""Evaluation metrics (README: Training): pure functions
from predictions, references or loss sums to numbers, with no model in sight.

Classification metrics are computed from one confusion matrix in numpy, with sklearn's
semantics (`zero_division=0`, macro averages over the classes seen in the labels or the
predictions); generation metrics lean on `sacrebleu` and `rouge_score`, made to see Chinese.
The training stage runs the model and feeds these; the report stage only formats them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

# Ideographs, kana and hangul: scripts written without spaces between words, scored per
# character (the usual practice for Chinese ROUGE/BLEU, and what sacrebleu's `zh` does).
_CJK = (r"\u2e80-\u2fdf\u3005\u3007\u3021-\u3029\u3040-\u30ff\u3105-\u312f\u31a0-\u31bf\u31f0-\u31ff"
        r"\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002fa1f")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_TOKEN = re.compile(f"[{_CJK}]|[^\\W{_CJK}]+")


# ── classification ───────────────────────────────────────────────────────────────────────────

def confusion_matrix(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                     n_classes: int) -> np.ndarray:
    """Counts of (true, predicted) label pairs: rows are true classes, columns predicted.

    One `bincount` over `true * k + pred`, O(n + k²).

    >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
    [[1, 0], [1, 1]]
    """
    t = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(y_pred, dtype=np.int64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"{len(t)} labels but {len(p)} predictions")
    for name, a in (("label", t), ("prediction", p)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise ValueError(f"a {name} outside 0..{n_classes - 1}: {int(a.min())}..{int(a.max())}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0: sklearn's `zero_division=0`."""
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def classification_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                           names: list[str]) -> dict[str, Any]:
    """Accuracy, macro and weighted precision/recall/F1, per-class figures and the confusion matrix.

    Labels are indices into `names`. As in sklearn with `zero_division=0`, an undefined ratio
    (a class never predicted, or never present) counts 0, and macro averages run over the
    classes present in `y_true` or `y_pred`, so a class absent from a small test split does not
    drag them down; per-class figures and the matrix cover every name.

    >>> m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["neg", "pos"])
    >>> m["accuracy"], round(m["f1_macro"], 4), m["confusion_matrix"]
    (0.75, 0.7333, [[1, 1], [0, 2]])
    """
    cm = confusion_matrix(y_true, y_pred, len(names))
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, predicted + support)  # = 2PR/(P+R), and 0 where both are 0
    seen = (support > 0) | (predicted > 0)
    total = int(support.sum())
    out: dict[str, Any] = {"accuracy": float(tp.sum() / total) if total else 0.0}
    per_metric = (("precision", precision), ("recall", recall), ("f1", f1))
    for metric, values in per_metric:
        out[f"{metric}_macro"] = float(values[seen].mean()) if seen.any() else 0.0
    for metric, values in per_metric:
        out[f"{metric}_weighted"] = float((values * support).sum() / total) if total else 0.0
    out["support"] = total
    out["per_class"] = {
        name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
               "support": int(support[i])}
        for i, name in enumerate(names)
    }
    out["confusion_matrix"] = cm.tolist()
    out["labels"] = list(names)
    return out


# ── language modelling ───────────────────────────────────────────────────────────────────────

def perplexity(total_loss_sum: float, total_tokens: int) -> float:
    """exp of the mean token negative log-likelihood (natural log), over every scored token.

    Summing losses and tokens before dividing weights each token once, whatever the batch
    sizes; averaging per-batch means would not. Overflow is `inf`, not an error.

    >>> round(perplexity(2 * math.log(4), 2), 6)
    4.0
    """
    if total_tokens <= 0:
        raise ValueError("perplexity of no tokens")
    try:
        return math.exp(total_loss_sum / total_tokens)
    except OverflowError:
        return math.inf


def perplexity_of_batches(batches: Iterable[tuple[float, int]]) -> float:
    """Perplexity from per-batch `(loss_sum, n_tokens)` pairs, as an eval loop yields them.

    >>> round(perplexity_of_batches([(math.log(2) * 3, 3), (math.log(2), 1)]), 6)
    2.0
    """
    loss, tokens = 0.0, 0
    for batch_loss, n in batches:
        loss += float(batch_loss)
        tokens += int(n)
    return perplexity(loss, tokens)


# ── generation ───────────────────────────────────────────────────────────────────────────────

def has_cjk(texts: Iterable[str]) -> bool:
    """Whether any text holds a CJK character (then scoring goes per character)."""
    return any(_CJK_CHAR.search(t) for t in texts)


def cjk_tokens(text: str) -> list[str]:
    """Lowercased word tokens, every CJK character a token of its own.

    >>> cjk_tokens("Hello, 世界! ok_2")
    ['hello', '世', '界', 'ok_2']
    """
    return _TOKEN.findall(text.lower())


class _CjkTokenizer:
    """The `tokenize(text)` object `rouge_score` expects."""

    def tokenize(self, text: str) -> list[str]:
        return cjk_tokens(text)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu, 0–100, one reference per prediction); 0 for no pairs.

    sacrebleu's default `13a` tokenizer leaves an unspaced Chinese sentence as one token, so a
    near-perfect Chinese answer scores 0; with any CJK text in the corpus the `zh` tokenizer
    splits Chinese into characters (and tokenizes the rest as `13a` does).

    >>> round(bleu(["the cat sat on the mat"], ["the cat sat on the mat"]), 4)
    100.0
    """
    import sacrebleu

    _check_pairs(predictions, references)
    if not predictions:
        return 0.0
    tokenize = "zh" if has_cjk([*predictions, *references]) else "13a"
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=tokenize).score)


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (0–1) over prediction/reference pairs.

    `rouge_score`'s default tokenizer keeps only `[a-z0-9]` and so drops every Chinese
    character (a Chinese answer scores 0 against itself); `cjk_tokens` keeps words of any
    script and splits CJK into characters, so Chinese is scored on characters. No stemming.

    >>> rouge(["猫坐在垫子上"], ["猫坐在垫子上"])["rouge1"]
    1.0
    """
    from rouge_score import rouge_scorer

    _check_pairs(predictions, references)
    types = ("rouge1", "rouge2", "rougeL")
    if not predictions:
        return dict.fromkeys(types, 0.0)
    scorer = rouge_scorer.RougeScorer(list(types), tokenizer=_CjkTokenizer())
    totals = dict.fromkeys(types, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for t in types:
            totals[t] += scores[t].fmeasure
    return {t: totals[t] / len(predictions) for t in types}


# ── base versus tuned ────────────────────────────────────────────────────────────────────────

def is_metric(value: Any) -> bool:
    """A float worth comparing: not NaN, and not an int, since ints here are counts (`support`)."""
    return isinstance(value, (float, np.floating)) and not math.isnan(float(value))


def gain(base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, float]:
    """`tuned - base` for every float metric both have (`compare_base`), in `tuned`'s order.

    A plain difference: for loss and perplexity a negative gain is the improvement.

    >>> gain({"accuracy": 0.5, "perplexity": 9.0, "support": 4}, {"accuracy": 0.75, "perplexity": 4.5, "support": 4})
    {'accuracy': 0.25, 'perplexity': -4.5}
    """
    return {k: float(v) - float(base[k]) for k, v in tuned.items()
            if k in base and is_metric(v) and is_metric(base[k])}

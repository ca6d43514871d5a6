"""Extractive question answering (SQuAD v1.1 and v2.0 style): windows over long contexts, and
answers read back out of a model's start/end logits.

`encode_windows` runs the Rust kernel (rust/src/windows.rs): the question, then as much of the
context as fits, repeated over overlapping windows. `extract_answer` is numpy only — no torch —
so evaluation and the torch-free runtime share it: the same span scoring, word alignment and
"no answer" handling as transformers' question-answering pipeline, over all of one example's
windows. Reading data and the metrics are in `squad.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ftc import _data
from ftc.errors import FtcError

WINDOW_COLUMNS = ["input_ids", "token_type_ids", "offset_starts", "offset_ends", "word_ids", "example"]
# Logits masked out of the softmax, as the pipeline does (exp underflows to exactly 0).
_MASKED = -10000.0


def encode_windows(encoder: _data.DataEncoder, rows: pa.Table, *, max_length: int = 384, doc_stride: int = 128,
                   train: bool = True) -> tuple[pa.Table, pa.Array]:
    """Rows of `squad.ROWS` → (one row per window, one error or null per example). Windows
    carry `WINDOW_COLUMNS` and, with `train`, `start_positions`/`end_positions`: the first
    answer's first and last token, or 0 (CLS) when the window does not hold all of it or the
    question has no answer. `token_type_ids` are the tokenizer's; a model without them drops them."""
    starts = ends = None
    if train:
        first = [(a["answer_start"][0], a["answer_start"][0] + len(a["text"][0])) if a["text"] else (None, None)
                 for a in rows.column("answers").to_pylist()]
        starts = pa.array([s for s, _ in first], pa.int64())
        ends = pa.array([e for _, e in first], pa.int64())
    *cols, errors = encoder.encode_windows(rows.column("question").combine_chunks(),
                                           rows.column("context").combine_chunks(),
                                           starts, ends, max_length=max_length, doc_stride=doc_stride)
    names = WINDOW_COLUMNS + ["start_positions", "end_positions"]
    table = pa.table({n: pa.array(c) for n, c in zip(names, cols) if c is not None})
    return table, pa.array(errors)


@dataclass(frozen=True)
class Answer:
    """A span of the context (`context[start:end] == text`) and its score; the empty answer
    (`start == end == 0`) is the model's "no answer"."""

    text: str
    start: int
    end: int
    score: float


def _window_spans(start_logits: np.ndarray, end_logits: np.ndarray, allowed: np.ndarray, top_k: int,
                  max_answer_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One window's best (start, end) token pairs and scores, and its null score (the product of
    the probabilities at position 0). Probabilities are softmaxes over the allowed tokens only."""
    probs = []
    for logits in (start_logits, end_logits):
        x = np.where(allowed, logits, _MASKED)
        x = np.exp(x - x.max())
        probs.append(x / x.sum())
    start, end = probs
    null = float(start[0] * end[0])
    start[0] = end[0] = 0.0
    # Spans with end >= start and at most max_answer_length tokens: an upper band of the outer product.
    scores = np.tril(np.triu(np.outer(start, end)), max_answer_length - 1)
    flat = scores.ravel()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    elif flat.size <= top_k:
        order = np.argsort(-flat)
    else:
        part = np.argpartition(-flat, top_k)[:top_k]
        order = part[np.argsort(-flat[part])]
    s, e = np.unravel_index(order, scores.shape)
    keep = allowed[s] & allowed[e]
    s, e = s[keep], e[keep]
    return s, e, scores[s, e], null


def _char_span(s: int, e: int, starts: np.ndarray, ends: np.ndarray, words: np.ndarray,
               align_to_words: bool) -> tuple[int, int]:
    """Token span → character span. Aligned to words, a span covers the whole words its first and
    last token belong to (as far as this window holds them); tokens outside the context (the CLS
    position) fall back to their offsets, which are (0, 0)."""
    if align_to_words and words[s] >= 0 and words[e] >= 0:
        return int(starts[words == words[s]].min()), int(ends[words == words[e]].max())
    return max(int(starts[s]), 0), max(int(ends[e]), 0)


def extract_answer(context: str, windows: Sequence[dict[str, np.ndarray]], start_logits: Sequence[np.ndarray],
                   end_logits: Sequence[np.ndarray], *, cls_token_id: int | None, top_k: int = 1,
                   max_answer_length: int = 15, handle_impossible_answer: bool = False,
                   align_to_words: bool = True) -> list[Answer]:
    """The `top_k` best answers to one question over all its windows, best first.

    `windows`: that example's windows from `encode_windows` (`input_ids`, `offset_starts`,
    `offset_ends`, `word_ids` as arrays); the logits: one 1-d array per window. A span must lie
    in the context and hold at most `max_answer_length` tokens; its score is P(start)·P(end).
    Spans whose texts are equal ignoring case are one answer, their scores summed. With
    `handle_impossible_answer` the empty answer competes with the lowest CLS score (P(start=0)·
    P(end=0)) over the windows, for SQuAD v2."""
    if top_k < 1 or max_answer_length < 1:
        raise FtcError(f"top_k {top_k} and max_answer_length {max_answer_length} must both be at least 1")
    if not (len(windows) == len(start_logits) == len(end_logits)) or not windows:
        raise FtcError(f"{len(windows)} windows but {len(start_logits)} start and {len(end_logits)} end logits",
                       hint="pass one start and one end logit vector per window of the example")
    # Word alignment may merge candidates; draw more per window so that top_k answers remain.
    per_window = top_k * 2 + 10 if align_to_words else top_k
    answers: list[dict] = []
    by_text: dict[str, dict] = {}
    min_null = 1e6
    for w, s_logits, e_logits in zip(windows, start_logits, end_logits):
        starts, ends = np.asarray(w["offset_starts"]), np.asarray(w["offset_ends"])
        allowed = starts >= 0
        if cls_token_id is not None:
            # The pipeline keeps CLS in the softmax: some models point at it for "no answer".
            allowed |= np.asarray(w["input_ids"]) == cls_token_id
        s_idx, e_idx, scores, null = _window_spans(np.asarray(s_logits), np.asarray(e_logits), allowed,
                                                   per_window, max_answer_length)
        min_null = min(min_null, null)
        words = np.asarray(w["word_ids"])
        for s, e, score in zip(s_idx, e_idx, scores):
            lo, hi = _char_span(int(s), int(e), starts, ends, words, align_to_words)
            key = context[lo:hi].lower()
            if key in by_text:
                by_text[key]["score"] += float(score)
            else:
                by_text[key] = {"text": context[lo:hi], "start": lo, "end": hi, "score": float(score)}
                answers.append(by_text[key])
    if handle_impossible_answer:
        answers.append({"text": "", "start": 0, "end": 0, "score": min_null})
    best = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
    return [Answer(**a) for a in best]

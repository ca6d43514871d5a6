"""Extractive question answering data in SQuAD's shape, and SQuAD's metrics.

Readers turn SQuAD's nested JSON (v1.1 and v2.0) and flat rows (`context`, `question`,
`answers` or `answer`) into one row per question: `id, context, question, answers{text,
answer_start}`. An answer is trusted only where the context holds it at `answer_start`;
where `answer_start` is absent it is looked up (first occurrence). A question whose answer
cannot be placed goes to `bad` with the reason, never silently. Unanswerable questions (v2)
keep an empty `answers`.

The metrics are those of SQuAD's official v2.0 evaluation script: answers normalised (lower
case, ASCII punctuation and the articles a/an/the removed, whitespace collapsed), exact match
and token F1 taken as the best over the gold answers, an empty prediction meaning "no answer".
"""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ftc.errors import FtcError, SourceError

ANSWERS = pa.struct([("text", pa.list_(pa.string())), ("answer_start", pa.list_(pa.int32()))])
ROWS = pa.schema([("id", pa.string()), ("context", pa.string()), ("question", pa.string()), ("answers", ANSWERS)])
BAD = pa.schema([("location", pa.string()), ("reason", pa.string())])


@dataclass
class QaRows:
    """Rows in the `ROWS` schema, the quarantined questions (`BAD`: where, why), and how many
    answers had no `answer_start` and were found in their context."""

    rows: pa.Table
    bad: pa.Table
    located: int


class _Collect:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.bad: list[dict[str, str]] = []
        self.located = 0

    def add(self, where: str, qid: str, context: str, question: str, answers: list[tuple[str, int | None]]) -> None:
        """One question; answers as (text, answer_start or None). Quarantined when a check fails."""
        if not question.strip():
            self.bad.append({"location": where, "reason": "empty question"})
            return
        texts, starts = [], []
        for n, (text, start) in enumerate(answers):
            if not text:
                self.bad.append({"location": where, "reason": f"answer {n} has an empty text"})
                return
            if start is None:
                start = context.find(text)
                if start < 0:
                    self.bad.append({"location": where, "reason": f"answer {n} {text[:40]!r} does not occur in its context"})
                    return
                self.located += 1
            elif context[start:start + len(text)] != text:
                found = context[start:start + len(text)]
                self.bad.append({"location": where, "reason": f"answer {n} {text[:40]!r} is not at answer_start {start} "
                                                             f"of its context (found {found[:40]!r})"})
                return
            texts.append(text)
            starts.append(start)
        self.rows.append({"id": qid, "context": context, "question": question,
                          "answers": {"text": texts, "answer_start": starts}})

    def result(self) -> QaRows:
        return QaRows(pa.Table.from_pylist(self.rows, schema=ROWS), pa.Table.from_pylist(self.bad, schema=BAD),
                      self.located)


def _field(obj: Any, key: str, kind: type, path: Path, where: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        found = "missing" if value is None else f"a {type(value).__name__}"
        raise SourceError(f"{path}: {where}.{key} is {found}, expected a {kind.__name__}",
                          hint="SQuAD JSON nests data[].paragraphs[].qas[]; flat rows go through `normalize_rows`")
    return value


def read_squad_json(path: Path) -> QaRows:
    """SQuAD's nested JSON (`data[].paragraphs[].qas[]`, v1.1 or v2.0) → one row per question.
    The document's structure must hold (else `SourceError`, naming the place); a question
    whose answers do not match its context is quarantined."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: cannot read as SQuAD JSON: {str(e).splitlines()[0]}") from None
    out = _Collect()
    for a, article in enumerate(_field(doc, "data", list, path, "document")):
        for p, para in enumerate(_field(article, "paragraphs", list, path, f"data[{a}]")):
            where_p = f"data[{a}].paragraphs[{p}]"
            context = _field(para, "context", str, path, where_p)
            for q, qa in enumerate(_field(para, "qas", list, path, where_p)):
                where = f"{where_p}.qas[{q}]"
                qid = qa.get("id") if isinstance(qa, dict) else None
                qid = str(qid) if isinstance(qid, (str, int)) and not isinstance(qid, bool) else where
                question = _field(qa, "question", str, path, where)
                # v2 marks unanswerable questions; their `answers` may be empty or left out.
                impossible = qa.get("is_impossible") is True
                answers = [] if impossible and "answers" not in qa else _field(qa, "answers", list, path, where)
                if impossible and answers:
                    out.bad.append({"location": f"{where} (id {qid})", "reason": "is_impossible, yet it has answers"})
                    continue
                pairs = []
                for n, ans in enumerate(answers):
                    text = _field(ans, "text", str, path, f"{where}.answers[{n}]")
                    pairs.append((text, _field(ans, "answer_start", int, path, f"{where}.answers[{n}]")))
                out.add(f"{where} (id {qid})", qid, context, question, pairs)
    return out.result()


def _answers(row: Mapping[str, Any]) -> list[tuple[str, int | None]] | str:
    """A flat row's answers as (text, answer_start or None), or why they cannot be read."""
    if "answers" in row and row["answers"] is not None:
        ans = row["answers"]
        if isinstance(ans, Mapping):  # {text: [...], answer_start: [...]}, as in Hugging Face datasets
            texts, starts = ans.get("text"), ans.get("answer_start")
            texts = [texts] if isinstance(texts, str) else list(texts or [])
            starts = [None] * len(texts) if starts is None else [starts] if isinstance(starts, int) else list(starts)
            if len(starts) != len(texts):
                return f"answers has {len(texts)} texts but {len(starts)} answer_start values"
            return list(zip(texts, starts))
        if isinstance(ans, list):  # [{text, answer_start}] as in SQuAD's JSON, or plain strings
            return [(a, None) if isinstance(a, str) else (a.get("text"), a.get("answer_start")) for a in ans]
        return f"answers is a {type(ans).__name__}; expected {{text, answer_start}} or a list"
    answer = row.get("answer")
    if answer is None or answer == "":
        return []  # unanswerable (SQuAD v2)
    return [(answer, None)] if isinstance(answer, str) else f"answer must be a string (found {type(answer).__name__})"


def normalize_rows(rows: Iterable[Mapping[str, Any]], lines: Sequence[int] | None = None) -> QaRows:
    """Flat rows (`context`, `question`, and `answers` or a plain `answer`; `id` optional) → the
    same rows as `read_squad_json`. `lines`: each row's line in its file, for the reasons."""
    out = _Collect()
    for i, row in enumerate(rows):
        where = f"line {lines[i]}" if lines is not None else f"row {i}"
        context, question = row.get("context"), row.get("question")
        answers = _answers(row)
        if not isinstance(context, str) or not isinstance(question, str):
            out.bad.append({"location": where, "reason": "context and question must both be strings"})
        elif isinstance(answers, str):
            out.bad.append({"location": where, "reason": answers})
        elif any(not isinstance(t, str) or not (s is None or isinstance(s, int)) for t, s in answers):
            out.bad.append({"location": where, "reason": "an answer's text must be a string, its answer_start an int"})
        else:
            qid = row.get("id")
            out.add(where, str(qid) if qid is not None else where, context, question, answers)
    return out.result()


# SQuAD's official answer normalisation and scores (v2.0 script; v1.1's where all golds are non-empty).
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop ASCII punctuation, drop a/an/the, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _exact(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def _f1(gold: str, pred: str) -> float:
    gold_toks, pred_toks = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not gold_toks or not pred_toks:  # a "no answer" on either side scores 1 only against another
        return float(gold_toks == pred_toks)
    same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _golds(answers: Sequence[str]) -> list[str]:
    # Golds that normalise to nothing do not count; a question with none left is unanswerable.
    return [a for a in answers if normalize_answer(a)] or [""]


def exact_match(prediction: str, answers: Sequence[str]) -> int:
    """1 when the prediction equals a gold answer after normalisation; `answers` empty = no answer."""
    return max(_exact(g, prediction) for g in _golds(answers))


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """The best token F1 of the prediction against the gold answers."""
    return max(_f1(g, prediction) for g in _golds(answers))


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """SQuAD v2.0's evaluation dictionary (percentages): `exact`, `f1`, `total`, and for each of
    the answerable (`HasAns_`) and unanswerable (`NoAns_`) questions present, their exact, f1
    and total. `references`: each question's gold texts (empty = unanswerable)."""
    missing = [q for q in references if q not in predictions]
    if missing:
        raise FtcError(f"no prediction for {len(missing)} of {len(references)} questions (e.g. {missing[0]!r})",
                       hint="predict every question; an empty string is the 'no answer' prediction")

    def block(ids: list[str], prefix: str = "") -> dict[str, float]:
        exact = sum(exact_match(predictions[q], references[q]) for q in ids)
        f1 = sum(f1_score(predictions[q], references[q]) for q in ids)
        n = len(ids)
        return {f"{prefix}exact": 100.0 * exact / n, f"{prefix}f1": 100.0 * f1 / n, f"{prefix}total": n}

    ids = list(references)
    out = block(ids) if ids else {"exact": 0.0, "f1": 0.0, "total": 0}
    has = [q for q in ids if references[q]]
    no = [q for q in ids if not references[q]]
    if has:
        out |= block(has, "HasAns_")
    if no:
        out |= block(no, "NoAns_")
    return out

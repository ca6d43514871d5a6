"""Extractive question answering over an ONNX graph: (question, context) → answer spans.

Tokenization is the artifact's `tokenizer.json` run by the `tokenizers` library as the
question-answering pipeline's fast tokenizer runs it: question first, `only_second`
truncation to `max_length` with `doc_stride` tokens shared by consecutive windows, every
window kept. The windows of all questions are sorted by length and batched; each question's
answer is read back over its windows by `extract_answer`, the scoring the evaluation used.

    reader = Reader(read(Path("artifact")))
    reader.answer(["Who wrote it?"], ["It was written by Ada."])[0][0].text      # "Ada"
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ftc.errors import ArtifactError, InferenceError
from ftc.runtime.artifact import REEXPORT, Artifact, tokenizer_config
from ftc.runtime.session import KNOWN_INPUTS, encoder_graph
from ftc.tasks.question_answering import Answer, extract_answer

BATCH_SIZE = 32
OUTPUTS = ("start_logits", "end_logits")
REQUEST_FIELDS = {"question": str, "questions": list, "context": str, "contexts": list, "top_k": int,
                  "max_answer_length": int, "handle_impossible_answer": bool}
MAX_ANSWER_LENGTH = 30  # `[eval] max_answer_length`'s default


def _max_answer_length(card: dict[str, Any]) -> int:
    """The longest answer the run was evaluated with: `[eval] max_answer_length` of the spec the
    card carries."""
    try:
        value = tomllib.loads(card.get("spec") or "").get("eval", {}).get("max_answer_length", MAX_ANSWER_LENGTH)
    except tomllib.TOMLDecodeError:
        return MAX_ANSWER_LENGTH
    return value if isinstance(value, int) and value > 0 else MAX_ANSWER_LENGTH


class Reader:
    """An artifact of task `question-answering`, ready to answer."""

    task = "question-answering"

    def __init__(self, artifact: Artifact, threads: int = 0) -> None:
        self.artifact = artifact
        self.session, self.inputs, _ = encoder_graph(artifact.model_path, threads, OUTPUTS, "a reader")
        card = artifact.manifest
        stride = card.get("doc_stride")
        if not isinstance(stride, int) or isinstance(stride, bool) or not 0 < stride < artifact.max_length:
            raise ArtifactError(f"{artifact.path}: `doc_stride` must be an integer from 1 to max_length - 1, "
                                f"not {stride!r}", hint=REEXPORT)
        self.doc_stride = stride
        self.unanswerable = card.get("unanswerable") is True
        self.max_answer_length = _max_answer_length(card)
        config = tokenizer_config(artifact.path)
        self.tokenizer = Tokenizer.from_file(str(artifact.path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.counter = Tokenizer.from_file(str(artifact.path / "tokenizer.json"))  # whole texts: their lengths
        self.counter.no_padding()
        self.counter.no_truncation()
        self.tokenizer.enable_truncation(artifact.max_length, stride=stride, strategy="only_second",
                                         direction="right")
        cls = config.get("cls_token")
        cls = cls.get("content") if isinstance(cls, dict) else cls
        self.cls_token_id = self.tokenizer.token_to_id(cls) if isinstance(cls, str) else None
        self.pad_id = artifact.pad_token_id if artifact.pad_token_id is not None else 0

    def windows(self, question: str, context: str) -> list[dict[str, np.ndarray]]:
        """The question's windows: ids, type ids, and for the context's tokens their character
        offsets and word (-1 elsewhere), as `encode_windows` gives them (its leading spaces
        stripped from the question, as training saw it)."""
        question = question.lstrip()
        limit = self.artifact.max_length
        q, c = (len(e.ids) for e in self.counter.encode_batch([question, context], add_special_tokens=False))
        added = self.tokenizer.num_special_tokens_to_add(True)
        room = limit - added - q
        # The tokenizer fails (no room) or panics (stride) on these; say which instead.
        if q + c + added > limit and room <= self.doc_stride:
            why = "leaves no room for the context" if room <= 0 else \
                f"leaves {room} context tokens per window, not more than doc_stride {self.doc_stride}"
            raise InferenceError(f"a question of {q} tokens {why} in max_length {limit}",
                                 hint="ask a shorter question")
        first = self.tokenizer.encode(question, context)
        out = []
        for enc in [first, *first.overflowing]:
            ctx = np.array([s == 1 for s in enc.sequence_ids])
            offsets = np.array(enc.offsets, dtype=np.int64).reshape(-1, 2)
            words = np.array([-1 if w is None else w for w in enc.word_ids], dtype=np.int64)
            out.append({"input_ids": np.array(enc.ids, dtype=np.int64), "token_type_ids": np.array(enc.type_ids),
                        "offset_starts": np.where(ctx, offsets[:, 0], -1),
                        "offset_ends": np.where(ctx, offsets[:, 1], -1), "word_ids": np.where(ctx, words, -1)})
        return out

    def logits(self, windows: Sequence[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """One padded batch of windows through the graph: start and end logits, [n, width]."""
        width = max(len(w["input_ids"]) for w in windows)
        arrays = {k: np.zeros((len(windows), width), np.int64) for k in KNOWN_INPUTS}
        arrays["input_ids"].fill(self.pad_id)
        for row, w in enumerate(windows):
            n = len(w["input_ids"])
            arrays["input_ids"][row, :n] = w["input_ids"]
            arrays["attention_mask"][row, :n] = 1
            arrays["token_type_ids"][row, :n] = w["token_type_ids"]
        start, end = self.session.run(list(OUTPUTS), {k: arrays[k] for k in self.inputs})
        return start, end

    def answer(self, questions: Sequence[str], contexts: Sequence[str], *, top_k: int = 1,
               max_answer_length: int | None = None, handle_impossible_answer: bool | None = None,
               batch_size: int = BATCH_SIZE) -> list[list[Answer]]:
        """The `top_k` best answers to each question, best first, in input order. An empty
        answer (`""`, 0, 0) is "no answer": offered when the model was trained on questions
        without one, unless `handle_impossible_answer` says otherwise."""
        if len(questions) != len(contexts):
            raise InferenceError(f"{len(questions)} questions but {len(contexts)} contexts; give one context each")
        for what, values in (("question", questions), ("context", contexts)):
            if (i := next((i for i, t in enumerate(values) if not isinstance(t, str)), None)) is not None:
                raise InferenceError(f"{what} {i} is {type(values[i]).__name__}, not a string")
        per_question = [self.windows(q, c) for q, c in zip(questions, contexts, strict=True)]
        flat = [(q, w) for q, ws in enumerate(per_question) for w in ws]
        order = sorted(range(len(flat)), key=lambda i: len(flat[i][1]["input_ids"]))
        starts: list[np.ndarray] = [np.zeros(0)] * len(flat)
        ends: list[np.ndarray] = [np.zeros(0)] * len(flat)
        for at in range(0, len(order), max(1, batch_size)):
            rows = order[at:at + batch_size]
            s, e = self.logits([flat[i][1] for i in rows])
            for r, i in enumerate(rows):
                n = len(flat[i][1]["input_ids"])
                starts[i], ends[i] = s[r, :n], e[r, :n]
        impossible = self.unanswerable if handle_impossible_answer is None else handle_impossible_answer
        out, at = [], 0
        for q, ws in enumerate(per_question):
            span = slice(at, at + len(ws))
            at += len(ws)
            found = extract_answer(contexts[q], ws, starts[span], ends[span], cls_token_id=self.cls_token_id,
                                   top_k=top_k, max_answer_length=max_answer_length or self.max_answer_length,
                                   handle_impossible_answer=impossible)
            out.append(found or [Answer("", 0, 0, 0.0)])  # no span allowed at all: the empty answer
        return out


def serve_answers(server: Any, body: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/answer`: the body checked field by field, then one answer per question."""
    from ftc.runtime.serve import HttpError, checked, json_type, one_of

    checked(body, REQUEST_FIELDS)
    single = one_of(body, "question", "questions") == "question"
    key = "context" if single else "contexts"
    if key not in body:
        raise HttpError(400, f"`{'question' if single else 'questions'}` needs `{key}`")
    if (other := "contexts" if single else "context") in body:
        raise HttpError(400, f"`{other}` goes with `{'questions' if single else 'question'}`; with this one use "
                             f"`{key}`")
    questions = [body["question"]] if single else body["questions"]
    contexts = [body["context"]] if single else body["contexts"]
    if not questions:
        raise HttpError(400, "`questions` is empty")
    if len(questions) > server.max_batch:
        raise HttpError(413, f"{len(questions)} questions; this server takes at most {server.max_batch} "
                             "per request")
    for name, values in (("questions", questions), ("contexts", contexts)):
        if (bad := next((i for i, t in enumerate(values) if not isinstance(t, str)), None)) is not None:
            raise HttpError(400, f"`{name}[{bad}]` must be a string, not {json_type(values[bad])}")
    if len(contexts) != len(questions):
        raise HttpError(400, f"{len(questions)} questions but {len(contexts)} contexts")
    for name in ("top_k", "max_answer_length"):
        if name in body and not 1 <= body[name] <= 100:
            raise HttpError(400, f"`{name}` must be from 1 to 100, not {body[name]}")
    top_k = body.get("top_k", 1)
    with server.lock:
        found = server.model.answer(questions, contexts, top_k=top_k,
                                    max_answer_length=body.get("max_answer_length"),
                                    handle_impossible_answer=body.get("handle_impossible_answer"),
                                    batch_size=server.max_batch)
    answers = [asdict(a[0]) for a in found]
    out: dict[str, Any] = {"answers": answers}
    if top_k > 1:
        out["candidates"] = [[asdict(x) for x in a] for a in found]
    return out


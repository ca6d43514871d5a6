"""Extractive question answering (SQuAD v1.1 and v2.0 style): windows over long contexts, and
answers read back out of a model's start/end logits.

`encode_windows` runs the Rust kernel (rust/src/windows.rs): the question, then as much of the
context as fits, repeated over overlapping windows. `extract_answer` is numpy only — no torch —
so evaluation and the torch-free runtime share it: the same span scoring, word alignment and
"no answer" handling as transformers' question-answering pipeline, over all of one example's
windows. Reading data and the metrics are in `squad.py`; the data stage's side of the task in
`qa_data.py`.

The task (`QuestionAnswering`, registered as `question-answering`): data, one row per window
(`qa_data`); train, a span head (`AutoModelForQuestionAnswering`) on start/end positions;
evaluation, answers read back over each question's windows and scored as SQuAD's script does
(exact match and F1, as fractions); export, one graph with per-token `start_logits` and
`end_logits` (int8 by dynamic quantization), parity on both; runtime, `ftc.runtime.answers.
Reader` and `POST /v1/answer`. This module stays import-light (numpy): the runtime and the
server import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftc.errors import FtcError
from ftc.tasks import Task

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from ftc import _data
    from ftc.spec import Spec

WINDOW_COLUMNS = ["input_ids", "token_type_ids", "offset_starts", "offset_ends", "word_ids", "example"]
# Logits masked out of the softmax, as the pipeline does (exp underflows to exactly 0).
_MASKED = -10000.0


def encode_windows(encoder: _data.DataEncoder, rows: pa.Table, *, max_length: int = 384, doc_stride: int = 128,
                   train: bool = True) -> tuple[pa.Table, pa.Array]:
    """Rows of `squad.ROWS` → (one row per window, one error or null per example). Windows
    carry `WINDOW_COLUMNS` and, with `train`, `start_positions`/`end_positions`: the first
    answer's first and last token, or 0 (CLS) when the window does not hold all of it or the
    question has no answer. `token_type_ids` are the tokenizer's; a model without them drops them."""
    import pyarrow as pa

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


# ── the task ─────────────────────────────────────────────────────────────────────────────────

SAMPLES = 5  # predictions shown in the report


class QuestionAnswering(Task):
    name = "question-answering"
    metrics = ("exact_match", "f1")
    stop_metrics = ("loss",)
    peft_task_type = "QUESTION_ANS"
    endpoint = "/v1/answer"
    pipeline_tag = "question-answering"
    init_metrics = ["exact_match", "f1"]
    init_train = {"method": "full", "epochs": 2, "batch_size": 16, "learning_rate": 1e-4}
    init_max_length = 384
    init_columns = ("`context`, `question`, `answers` ({text: [...], answer_start: [...]}, a list or one string; "
                    "empty: no answer) and `id`; SQuAD's nested JSON needs none")
    init_hint = "question answering reads `context`, `question` and `answers` (or SQuAD's nested JSON)"
    init_unit = "questions"
    init_split_note = ", and question answering splits by context: no context is in two splits"

    def init_lines(self, det: Any, section: str, p: Any, max_length: int) -> None:
        if section == "tokenize":
            p.kv("max_length", max_length, "a window: the question and part of its context (a long one takes several)")
            p.kv("doc_stride", max(8, max_length // 3), "tokens consecutive windows of a long context share")
    graph_outputs = ("start_logits", "end_logits")
    per_token = True

    def check_spec(self, spec: Spec) -> None:
        d, tok = spec.data, spec.tokenize
        if tok.truncation != "right":
            raise ValueError(f"`tokenize.truncation = \"{tok.truncation}\"` does not apply to question answering, "
                             "which cuts long contexts into overlapping windows; set `truncation = \"right\"` and "
                             "size the windows with `max_length` and `doc_stride`")
        if tok.doc_stride >= tok.max_length:
            raise ValueError(f"`tokenize.doc_stride = {tok.doc_stride}` must be below `max_length = "
                             f"{tok.max_length}`: consecutive windows share doc_stride tokens")
        c = d.clean
        from ftc.quality import rewrites

        on = rewrites(c)
        if on:
            raise ValueError(f"`data.clean` {', '.join(on)} rewrite the text, but answers are character offsets "
                             "into the context; remove them (drop rules, limits and dedup still apply)")
        if d.augment.copies:
            raise ValueError("`data.augment` rewrites words, which moves answers out of their offsets; set "
                             "`copies = 0` for question answering")
        if d.balance.strategy != "none":
            raise ValueError("`data.balance` balances classes; question answering has none: remove it")
        if d.split.by == "random":
            raise ValueError("question answering splits by the hash of the context, so that no context is in two "
                             "splits; set `data.split.by = \"hash\"` (or name splits with `data.split.column`)")

    # ── data
    def key_inputs(self, spec: Spec) -> dict[str, Any]:
        return {"reader": 1}  # bumped when what a source reads as changes

    def read_file(self, file: Path, fmt: str, cols: Any, threads: int, split: str | None, decoding: Any,
                  limit: int | None) -> Iterator[Any]:
        from ftc.tasks import qa_data

        return qa_data.read_file(file, fmt, cols, split, decoding, limit)

    def encode(self, run: Any, rows: pl.DataFrame) -> tuple[Any, ...]:
        from ftc.tasks import qa_data

        return qa_data.encode(run, rows)

    def collector(self, run: Any, spool_dir: Path) -> Any:
        from ftc.tasks import qa_data

        return qa_data.Collected()

    def totals(self, splits: dict[str, dict[str, Any]], max_length: int) -> dict[str, Any]:
        return {"examples": sum(s["examples"] for s in splits.values()),
                "windows": sum(s["windows"] for s in splits.values())}

    def describe(self, manifest: dict[str, Any]) -> str:
        qa = manifest["question_answering"]
        return (f"{super().describe(manifest)} · {manifest['stats']['windows']:,} windows · "
                f"{qa['unanswerable']:,} unanswerable · {qa['located_answers']:,} answers located in their context")

    def split_table(self, splits: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        cols = ["split", "questions", "unanswerable", "windows", "no-answer windows", "tokens"]
        return cols, [[n, f"{s['examples']:,}", f"{s['unanswerable']:,}", f"{s['windows']:,}",
                       f"{s['windows_without_answer']:,}", f"{s['tokens']:,}"] for n, s in splits.items()]

    def inspect_rows(self, path: Path, manifest: dict[str, Any], split: str, n: int) -> list[tuple[str, list[str]]]:
        import pyarrow as pa

        from ftc import _data

        enc = _data.DataEncoder((path / "tokenizer.json").read_text(encoding="utf-8"))
        with pa.memory_map(str(path / manifest["files"][split])) as source:
            table = pa.ipc.open_stream(source).read_all().slice(0, n)
        out = []
        for row in table.select(["input_ids", "start_positions", "end_positions", "example"]).to_pylist():
            s, e = row["start_positions"], row["end_positions"]
            answer = enc.decode(row["input_ids"][s:e + 1]) if s else "(no answer in this window)"
            out.append((f"question {row['example']} · answer tokens {s}–{e}",
                        [enc.decode(row["input_ids"]), f"answer: {answer}"]))
        return out

    # ── train
    def load_model(self, model_dir: Path, labels: list[str] | None, pad_id: int | None, **kwargs: Any) -> Any:
        from transformers import AutoModelForQuestionAnswering

        from ftc.train import load_head

        return load_head(AutoModelForQuestionAnswering, model_dir, None, pad_id, **kwargs)

    def collator(self, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        from ftc.collate import PaddedCollator

        return PaddedCollator(pad_id, targets=(("start_positions", "start_positions"),
                                               ("end_positions", "end_positions")))

    def evaluate(self, spec: Spec, model: Any, tokenizer: Any, ds: Any, collator: Callable[..., Any],
                 labels: list[str] | None) -> dict[str, Any]:
        from ftc.tasks import qa_eval

        return qa_eval.evaluate(spec, model, tokenizer, ds, collator)

    def report_sections(self, metrics: dict[str, Any], names: list[str] | None, run_dir: Path) -> list[str]:
        from ftc.tasks import qa_eval

        return qa_eval.report_sections(metrics)

    # ── export
    def auto_class(self) -> Any:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    def parity_feed(self, rows: list[dict[str, Any]], pad_id: int) -> Iterator[tuple[dict[str, Any],
                                                                                  Callable[[np.ndarray], np.ndarray],
                                                                                  np.ndarray]]:
        """Each window's start logits and end logits are two rows of `[n, sequence]` scores,
        their targets the gold start and end token (0 where the window holds no answer).
        Padding is set to one constant in every model, so it is neither scored nor picked."""
        collate = self.collator(pad_id)
        for start in range(0, len(rows), self.parity_batch):
            batch = collate(rows[start:start + self.parity_batch])
            targets = np.concatenate([batch.pop("start_positions").numpy(), batch.pop("end_positions").numpy()])
            valid = batch["attention_mask"].numpy().astype(bool)

            def pick(z: np.ndarray, valid: np.ndarray = valid) -> np.ndarray:
                return np.where(valid[None], z, _MASKED).reshape(-1, z.shape[-1])
            yield batch, pick, targets

    def graph_runner(self, candidate: Path) -> Callable[[dict[str, Any]], np.ndarray]:
        from ftc.runtime.session import session

        sess = session(candidate)
        names = [i.name for i in sess.get_inputs()]

        def run(batch: dict[str, Any]) -> np.ndarray:
            ids = batch["input_ids"].numpy()
            feed = {n: batch[n].numpy() if n in batch else np.zeros_like(ids) for n in names}
            return np.stack(sess.run(list(self.graph_outputs), feed))
        return run

    def torch_logits(self, model: Any, batch: dict[str, Any]) -> np.ndarray:
        out = model(**batch)
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()])

    def card(self, data: dict[str, Any], art: Path) -> dict[str, Any]:
        qa = data["question_answering"]
        return super().card(data, art) | {"doc_stride": qa["doc_stride"], "unanswerable": qa["unanswerable"] > 0}

    # ── runtime
    def runtime(self, artifact: Any, threads: int) -> Any:
        from ftc.runtime.answers import Reader

        return Reader(artifact, threads)

    def infer(self, model: Any, inputs: list[dict[str, Any]], options: dict[str, Any]) -> list[dict[str, Any]]:
        from ftc.errors import InferenceError

        if bad := next((i for i in inputs if not {"question", "context"} <= i.keys()), None):
            raise InferenceError(f"a question-answering model takes a `question` and a `context`; this input has "
                                 f"{', '.join(bad) or 'neither'}",
                                 hint="pass --input '{\"question\": \"...\", \"context\": \"...\"}' or a JSON Lines "
                                      "--file of such objects")
        answers = model.answer([i["question"] for i in inputs], [i["context"] for i in inputs],
                               batch_size=options["batch_size"])
        return [asdict(a[0]) for a in answers]

    def infer_line(self, inp: dict[str, Any], result: dict[str, Any], first: bool) -> str:
        return f"{result['text']}\t{result['score']:.4f}\t{result['start']}:{result['end']}\t{inp['question']}"

    def infer_json(self, inp: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        return {"question": inp["question"], "answer": result}

    def serve(self, server: Any, body: dict[str, Any]) -> dict[str, Any]:
        from ftc.runtime.answers import serve_answers

        return serve_answers(server, body)

TASK = QuestionAnswering()

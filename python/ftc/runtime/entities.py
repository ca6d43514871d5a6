"""Token classification over an ONNX graph: texts → entities with character spans, type and score.

A text is tokenized with the artifact's `tokenizer.json` (the `tokenizers` library, special
tokens added, truncated to the artifact's `max_length` as transformers' pipeline truncates),
run through the graph, and its token logits grouped into entities as transformers'
token-classification pipeline groups them with `aggregation_strategy="first"`
(`decode_entities`). Nothing here imports torch or pyarrow.

    tagger = Tagger(read(Path("artifact")))
    tagger.entities(["Ada Lovelace lived in London."])[0]
    # [{"entity_group": "PER", "score": 0.98, "word": "ada lovelace", "start": 0, "end": 12}, ...]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ftc.errors import ArtifactError, FtcError, InferenceError
from ftc.runtime.artifact import REEXPORT, Artifact, tokenizer_config
from ftc.runtime.classify import classification_tokenizer, softmax
from ftc.runtime.session import KNOWN_INPUTS, encoder_graph

BATCH_SIZE = 16


class Tagger:
    """An artifact of task `token-classification`, ready to find entities."""

    task = "token-classification"

    def __init__(self, artifact: Artifact, threads: int = 0) -> None:
        self.artifact = artifact
        self.session, self.inputs, outputs = encoder_graph(artifact.model_path, threads, ("logits",), "a tagger")
        logits = outputs["logits"]
        if len(logits.shape) != 3:
            raise ArtifactError(f"{artifact.model_path}: the graph has no per-token `logits` output", hint=REEXPORT)
        self.labels = artifact.labels
        if not self.labels or (isinstance(logits.shape[-1], int) and logits.shape[-1] != len(self.labels)):
            raise ArtifactError(f"{artifact.path}: the graph gives {logits.shape[-1]} logits per token but the "
                                f"manifest names {len(self.labels)} tags", hint=REEXPORT)
        self.tokenizer = classification_tokenizer(artifact, tokenizer_config(artifact.path))
        self.pad_id = artifact.pad_token_id if artifact.pad_token_id is not None else 0

    def entities(self, texts: Sequence[str], batch_size: int = BATCH_SIZE) -> list[list[dict[str, Any]]]:
        """The entities of each text, in input order."""
        if (i := next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)) is not None:
            raise InferenceError(f"text {i} is {type(texts[i]).__name__}, not a string")
        encodings = self.tokenizer.encode_batch(list(texts))
        out: list[list[dict[str, Any]]] = [[] for _ in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), max(1, batch_size)):
            rows = order[start:start + batch_size]
            logits = self.logits([encodings[i] for i in rows])
            for r, i in enumerate(rows):
                n = len(encodings[i].ids)
                out[i] = decode_entities(texts[i], logits[r, :n], encodings[i], self.tokenizer, self.labels)
        return out

    def logits(self, encodings: Sequence[Any]) -> np.ndarray:
        """One right-padded batch through the graph: [len(encodings), longest, tags] float32."""
        width = max(len(e.ids) for e in encodings)
        arrays = {k: np.zeros((len(encodings), width), np.int64) for k in KNOWN_INPUTS}
        arrays["input_ids"].fill(self.pad_id)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            arrays["input_ids"][row, :n] = e.ids
            arrays["attention_mask"][row, :n] = 1
            arrays["token_type_ids"][row, :n] = e.type_ids
        return self.session.run(["logits"], {k: arrays[k] for k in self.inputs})[0]


def decode_entities(text: str, logits: np.ndarray, encoding: Any, tokenizer: Tokenizer, id2label: Sequence[str],
                    ignore_labels: Iterable[str] = ("O",)) -> list[dict]:
    """One text's token logits (`[tokens, labels]`, as the model saw `encoding`, a `tokenizers`
    Encoding of `text` with special tokens) → entities `{entity_group, score, word, start, end}`,
    as transformers' token-classification pipeline gives them with `aggregation_strategy="first"`:
    a word takes its first sub-word's label and score, adjacent words of one type group (a B-
    opens a new group), the group's score is the mean of its words'."""
    logits = np.asarray(logits, dtype=np.float32)
    check_logits(logits, encoding, id2label)
    scores = softmax(logits)
    model = tokenizer.model
    # The pipeline's own test of "sub-word": a token whose text differs in length from the
    # characters it covers (`##ing` over "ing") when the model marks continuations, else (no
    # such marker) a token that does not follow a space.
    word_aware = bool(getattr(model, "continuing_subword_prefix", None))
    unk = getattr(model, "unk_token", None)
    unk_id = tokenizer.token_to_id(unk) if unk else None
    decode = tokenizer.decoder.decode if tokenizer.decoder is not None else " ".join
    words: list[dict] = []
    for i, (token, tid, (start, end), special) in enumerate(zip(encoding.tokens, encoding.ids, encoding.offsets,
                                                                 encoding.special_tokens_mask)):
        if special:
            continue
        ref = text[start:end]
        if word_aware:
            subword = len(token) != len(ref)
        else:
            subword = start > 0 and " " not in text[start - 1:start + 1]
        if tid == unk_id:
            token, subword = ref, False
        if subword and words:
            words[-1]["tokens"].append(token)
            words[-1]["end"] = end
        else:
            words.append({"tokens": [token], "scores": scores[i], "start": start, "end": end})
    entities: list[dict] = []
    group: list[dict] = []
    for w in words:
        best = int(w["scores"].argmax())
        w.update(entity=id2label[best], score=w["scores"][best], word=decode(w["tokens"]))
        bi, kind = _bio(w["entity"])
        if group and not (kind == _bio(group[-1]["entity"])[1] and bi != "B"):
            entities.append(_group(group, decode))
            group = []
        group.append(w)
    if group:
        entities.append(_group(group, decode))
    ignore = set(ignore_labels)
    return [e for e in entities if e["entity_group"] not in ignore]


def _bio(label: str) -> tuple[str, str]:
    return (label[0], label[2:]) if label.startswith(("B-", "I-")) else ("I", label)


def _group(words: list[dict], decode: Any) -> dict:
    return {"entity_group": words[0]["entity"].split("-", 1)[-1],
            "score": float(np.mean(np.nanmean([w["score"] for w in words]))),
            "word": decode([w["word"] for w in words]),
            "start": words[0]["start"], "end": words[-1]["end"]}


def check_logits(logits: np.ndarray, encoding: Any, id2label: Sequence[str]) -> None:
    """The logits fit the encoding and the label list; raises FtcError otherwise."""
    if logits.ndim != 2 or logits.shape != (len(encoding.ids), len(id2label)):
        raise FtcError(f"logits of shape {logits.shape}; expected ({len(encoding.ids)}, {len(id2label)}) "
                       "(tokens, labels)", hint="pass one text's logits, without the batch axis")

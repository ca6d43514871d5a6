"""Sequence classification over an ONNX graph: texts (or text pairs) → label + probabilities.

Tokenization is the artifact's own `tokenizer.json` run by the `tokenizers` library with the
settings `AutoTokenizer(texts, text_pair, truncation=True, max_length=...)` uses — special
tokens added, `longest_first` truncation for pairs, the tokenizer's truncation side — so the
ids are the ones the model was trained and checked on. Whatever truncation or padding the
file itself stores is replaced, as transformers replaces it.

Texts are sorted by length and cut into batches of at most `batch_size`, each padded to its
own longest: a long text does not make every short one pay for its padding. The results come
back in input order; probabilities are the softmax of the logits, in float64.

    clf = Classifier(read(Path("artifact")))
    clf.classify(["great film", "dull"])[0].label      # "pos"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from ftc.runtime.session import encoder_graph
from ftc.errors import ArtifactError, InferenceError
from ftc.runtime.artifact import REEXPORT, Artifact, tokenizer_config

BATCH_SIZE = 32


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # the probability of `label`
    probabilities: dict[str, float]  # every label, in the artifact's label order

    def as_dict(self) -> dict[str, object]:
        return {"label": self.label, "score": self.score, "probabilities": self.probabilities}


def classification_tokenizer(artifact: Artifact, config: dict[str, Any]) -> Tokenizer:
    """`tokenizer.json` set up as transformers runs it; `config` is the artifact's tokenizer_config.json."""
    tok = Tokenizer.from_file(str(artifact.path / "tokenizer.json"))
    side = config.get("truncation_side", "right")
    tok.no_padding()  # batches are padded here, after sorting by length
    tok.enable_truncation(artifact.max_length, strategy="longest_first", direction=side)
    return tok


class Classifier:
    """An artifact of task `classification`, ready to classify."""

    task = "classification"

    def __init__(self, artifact: Artifact, threads: int = 0) -> None:
        self.artifact = artifact
        self.session, self.inputs, outputs = encoder_graph(artifact.model_path, threads, ("logits",), "a classifier")
        logits = outputs["logits"]
        config = tokenizer_config(artifact.path)
        self.tokenizer = classification_tokenizer(artifact, config)
        self.pad_left = config.get("padding_side", "right") == "left"
        self.pad_id = artifact.pad_token_id if artifact.pad_token_id is not None else 0
        n = logits.shape[-1]
        self.labels = artifact.labels or ([str(i) for i in range(n)] if isinstance(n, int) else [])
        if not self.labels or (isinstance(n, int) and n != len(self.labels)):
            raise ArtifactError(f"{artifact.path}: the graph gives {n} logits per text but the manifest names "
                                f"{len(artifact.labels)} labels", hint=REEXPORT)

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[tuple[list[int], list[int]]]:
        """(input_ids, token_type_ids) per text, truncated, unpadded."""
        if pairs is not None and len(pairs) != len(texts):
            raise InferenceError(f"{len(texts)} texts but {len(pairs)} text pairs; give one pair per text")
        for what, values in (("text", texts), ("text pair", pairs or [])):
            if (i := next((i for i, t in enumerate(values) if not isinstance(t, str)), None)) is not None:
                raise InferenceError(f"{what} {i} is {type(values[i]).__name__}, not a string")
        batch = self.tokenizer.encode_batch(list(zip(texts, pairs, strict=True)) if pairs is not None else list(texts))
        return [(e.ids, e.type_ids) for e in batch]

    def logits(self, encoded: Sequence[tuple[list[int], list[int]]]) -> np.ndarray:
        """One padded batch through the graph: [len(encoded), num_labels] float32."""
        width = max(len(ids) for ids, _ in encoded)
        arrays = {k: np.zeros((len(encoded), width), np.int64) for k in ("input_ids", "attention_mask",
                                                                         "token_type_ids")}
        arrays["input_ids"].fill(self.pad_id)
        for row, (ids, types) in enumerate(encoded):
            span = slice(width - len(ids), width) if self.pad_left else slice(0, len(ids))
            arrays["input_ids"][row, span] = ids
            arrays["attention_mask"][row, span] = 1
            arrays["token_type_ids"][row, span] = types
        return self.session.run(["logits"], {k: arrays[k] for k in self.inputs})[0]

    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                 batch_size: int = BATCH_SIZE) -> list[Prediction]:
        """A label and the probability of every label per text, in input order."""
        if not texts:
            return []
        encoded = self.encode(texts, pairs)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
        probs = np.empty((len(encoded), len(self.labels)), np.float64)
        for start in range(0, len(order), max(1, batch_size)):
            rows = order[start:start + batch_size]
            probs[rows] = softmax(self.logits([encoded[i] for i in rows]).astype(np.float64))
        return [self._prediction(p) for p in probs]

    def _prediction(self, p: np.ndarray) -> Prediction:
        best = int(p.argmax())
        return Prediction(self.labels[best], float(p[best]), {n: float(x) for n, x in zip(self.labels, p, strict=True)})


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)

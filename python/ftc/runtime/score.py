"""A reward model over an ONNX graph: (prompt, response) → a score.

Each pair is rendered as the data stage rendered training pairs: the user's prompt (a string, or
a list of messages) and the assistant's response through the artifact's chat template, tokenized
by ftc's own encoder (`_data.DataEncoder.encode_chat`), so the ids are those the model was
trained and checked on. A pair longer than the artifact's `max_length` loses the start of its
prompt, as training cut it. Batches are sorted by length and padded to their own longest.

    scorer = Scorer(read(Path("artifact")))
    scorer.score(["2+2?"], ["4"])      # [1.73]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ftc import _data
from ftc.errors import ArtifactError, InferenceError
from ftc.runtime.artifact import REEXPORT, Artifact, tokenizer_config
from ftc.runtime.session import encoder_graph

UNBOUNDED = 1 << 30
MESSAGES = pa.large_list(pa.struct([("role", pa.large_string()), ("content", pa.large_string()),
                                    ("extra", pa.large_string())]))


def render_pairs(encoder: Any, prompts: Sequence[Any], responses: Sequence[str], max_length: int) -> list[np.ndarray]:
    """Token ids of each (prompt, response) through `encoder`'s chat template (`_data.DataEncoder`),
    truncated from the left to `max_length`. A prompt is a string (a user message) or messages."""
    if len(prompts) != len(responses):
        raise InferenceError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows = []
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        head = [{"role": "user", "content": p}] if isinstance(p, str) else p
        if not isinstance(r, str) or not isinstance(head, list) or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in head):
            raise InferenceError(f"pair {i}: the prompt is a string or a list of {{role, content}} messages, "
                                 "the response a string")
        rows.append([{"role": m.get("role", "user"), "content": m["content"], "extra": None} for m in head]
                    + [{"role": "assistant", "content": r, "extra": None}])
    ids, _, status, errors, _, _ = encoder.encode_chat(pa.array(rows, MESSAGES), UNBOUNDED, "right", False)
    ids, errors = pa.array(ids), pa.array(errors)
    if (bad := next((i for i, s in enumerate(np.asarray(status)) if s == 3), None)) is not None:
        raise InferenceError(f"pair {bad}: the chat template refused it: {errors[bad].as_py()}")
    return [np.asarray(ids[i].values, dtype=np.int64)[-max_length:] for i in range(len(rows))]


class Scorer:
    """An artifact of task `reward-model`, ready to score."""

    task = "reward-model"

    def __init__(self, artifact: Artifact, threads: int = 0) -> None:
        from ftc.model import load_tokenizer_info

        self.artifact = artifact
        self.session, self.inputs, outputs = encoder_graph(artifact.model_path, threads, ("logits",), "a reward model")
        if outputs["logits"].shape[-1] != 1:
            raise ArtifactError(f"{artifact.path}: the graph gives {outputs['logits'].shape[-1]} logits per text, "
                                "a reward model one score", hint=REEXPORT)
        if not artifact.template:
            raise ArtifactError(f"{artifact.path}: a reward model's artifact carries its chat template", hint=REEXPORT)
        info = load_tokenizer_info(artifact.path)
        self.encoder = _data.DataEncoder(info.tokenizer_json, artifact.template, info.special_tokens, info.eos_token)
        self.pad_left = tokenizer_config(artifact.path).get("padding_side", "right") == "left"
        self.pad_id = artifact.pad_token_id if artifact.pad_token_id is not None else 0

    def encode(self, prompts: Sequence[Any], responses: Sequence[str]) -> list[np.ndarray]:
        return render_pairs(self.encoder, prompts, responses, self.artifact.max_length)

    def scores(self, encoded: Sequence[np.ndarray]) -> np.ndarray:
        """One padded batch through the graph: a float per sequence."""
        width = max(len(ids) for ids in encoded)
        arrays = {k: np.zeros((len(encoded), width), np.int64) for k in ("input_ids", "attention_mask",
                                                                         "token_type_ids")}
        arrays["input_ids"].fill(self.pad_id)
        for row, ids in enumerate(encoded):
            span = slice(width - len(ids), width) if self.pad_left else slice(0, len(ids))
            arrays["input_ids"][row, span] = ids
            arrays["attention_mask"][row, span] = 1
        return self.session.run(["logits"], {k: arrays[k] for k in self.inputs})[0][:, 0]

    def score(self, prompts: Sequence[Any], responses: Sequence[str], batch_size: int = 16) -> list[float]:
        """A score per (prompt, response), in input order."""
        if not prompts:
            return []
        encoded = self.encode(prompts, responses)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out = np.empty(len(encoded), np.float64)
        for start in range(0, len(order), max(1, batch_size)):
            rows = order[start:start + batch_size]
            out[rows] = self.scores([encoded[i] for i in rows])
        return [float(x) for x in out]

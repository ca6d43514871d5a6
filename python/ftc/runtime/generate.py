"""Text generation with onnxruntime-genai: a prompt or a conversation → the model's answer.

A conversation is rendered by the artifact's chat template with `add_generation_prompt=True`
through the same minijinja renderer that built the training data (`ftc._data`), so a served
prompt is byte for byte the format the model was trained on and what `apply_chat_template`
gives. Ids come from the artifact's `tokenizer.json` (a rendered conversation without added
special tokens, as `apply_chat_template(tokenize=True)`; a plain prompt with them, as a
text-generation pipeline). onnxruntime-genai then runs the decoder with its KV cache:
greedy at temperature 0, else sampling with temperature, top-p and top-k, seeded on request.

Generation stops at any of the artifact's `eos_token_ids` (the template's end of turn and the
tokenizer's EOS): they are laid over genai_config.json's own ids at load, and checked here
too, so a stop token is never part of the answer.

    gen = Generator(read(Path("artifact")))
    gen.generate([{"role": "user", "content": "hi"}], max_new_tokens=64).text
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer

from ftc import _data
from ftc.errors import ArtifactError, InferenceError, TemplateError
from ftc.model import load_tokenizer_info
from ftc.runtime.artifact import REEXPORT, Artifact

Prompt = str | Sequence[Mapping[str, Any]]  # plain text, or chat messages {role, content}


@dataclass(frozen=True)
class Generation:
    text: str
    token_ids: list[int]  # generated ids, the stop token excluded
    prompt_tokens: int
    finish_reason: str  # "eos" (a stop token) or "length" (max_new_tokens or the context)

    def as_dict(self) -> dict[str, object]:
        return {"text": self.text, "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": len(self.token_ids)}


def genai_eos(config: dict[str, Any]) -> list[int]:
    eos = config.get("model", {}).get("eos_token_id", [])
    return [eos] if isinstance(eos, int) else list(eos)


class Generator:
    """An artifact of task `causal-lm`, ready to generate."""

    task = "causal-lm"

    def __init__(self, artifact: Artifact) -> None:
        import onnxruntime_genai as og  # only decoders need it

        self.artifact = artifact
        directory = artifact.model_path
        try:
            own = json.loads((directory / "genai_config.json").read_text(encoding="utf-8"))
            self.eos = sorted(set(genai_eos(own)) | set(artifact.eos_token_ids))
            config = og.Config(str(directory))
            config.overlay(json.dumps({"model": {"eos_token_id": self.eos}}))
            self.model = og.Model(config)
        except (OSError, ValueError, RuntimeError) as e:
            raise ArtifactError(f"{directory}: onnxruntime-genai cannot load it: {e}", hint=REEXPORT) from None
        self.context = int(own["model"].get("context_length") or own.get("search", {}).get("max_length") or 0)
        # `bos_token`, `eos_token`, ... as the chat template sees them, read as the data stage reads them;
        # the same read gives tokenizer.json's text, so the file is not read twice.
        info = load_tokenizer_info(artifact.path)
        self.tokenizer = Tokenizer.from_str(info.tokenizer_json)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.special = info.special_tokens

    def render(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt text of a conversation: the chat template with the assistant header."""
        if not self.artifact.template:
            raise InferenceError("this model has no chat template, so it takes a plain prompt, not messages")
        pairs = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
                raise InferenceError(f"message {i}: expected an object with a string `role`")
            if not isinstance(m.get("content"), str | None):
                raise InferenceError(f"message {i}: `content` must be a string")
            pairs.append((m["role"], m.get("content")))
        if not pairs:
            raise InferenceError("no messages: give at least one {\"role\": \"user\", \"content\": ...}")
        try:
            return _data.render_prompt(self.artifact.template, pairs, self.special)
        except TemplateError as e:  # raise_exception() in the template, for one
            raise InferenceError(f"the chat template refused the messages: {e.message}") from None

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True).ids
        return self.tokenizer.encode(self.render(prompt), add_special_tokens=False).ids

    def generate(self, prompt: Prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None) -> Generation:
        """Greedy when `temperature` is 0; `top_k` 0 and `top_p` 1 leave the distribution whole."""
        import onnxruntime_genai as og

        check_options(max_new_tokens, temperature, top_p, top_k, seed)
        ids = self.encode(prompt)
        if not ids:
            raise InferenceError("the prompt is empty")
        room = self.context - len(ids) if self.context else max_new_tokens
        if room < 1:
            raise InferenceError(f"the prompt has {len(ids)} tokens; the model's context holds {self.context}",
                                 hint="shorten the prompt or the conversation")
        options: dict[str, Any] = {"max_length": len(ids) + min(max_new_tokens, room), "do_sample": temperature > 0}
        if temperature > 0:
            options.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
            if seed is not None:
                options["random_seed"] = int(seed)
        params = og.GeneratorParams(self.model)
        params.set_search_options(**options)
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        out: list[int] = []
        reason = "length"
        stop = set(self.eos)
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in stop:
                reason = "eos"
                break
            out.append(token)
        return Generation(self.tokenizer.decode(out, skip_special_tokens=True), out, len(ids), reason)


# onnxruntime-genai keeps its search options in 32-bit integers: larger ones would wrap or raise.
MAX_OPTION = 2**31 - 1


def check_options(max_new_tokens: int, temperature: float, top_p: float, top_k: int, seed: int | None = None) -> None:
    if not 1 <= max_new_tokens <= MAX_OPTION:
        raise InferenceError(f"max_new_tokens must be between 1 and {MAX_OPTION}, not {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature >= 0):  # NaN compares false: refused here
        raise InferenceError(f"temperature must be 0 (greedy) or a finite number above it, not {temperature}")
    if not 0 < top_p <= 1:
        raise InferenceError(f"top_p must be in (0, 1], not {top_p}")
    if not 0 <= top_k <= MAX_OPTION:
        raise InferenceError(f"top_k must be 0 (off) to {MAX_OPTION}, not {top_k}")
    if seed is not None and not 0 <= seed <= MAX_OPTION:
        raise InferenceError(f"seed must be between 0 and {MAX_OPTION}, not {seed}")

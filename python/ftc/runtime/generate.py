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
too, so a stop token is never part of the answer. It also stops at a `stop` string, which is
left out of the answer too.

`stream()` gives the answer as it grows (what the HTTP server sends as server-sent events):
the ids so far are decoded whole at each token and only the new end is given out (one piece
per token, "" when there is nothing new: the server checks its client between tokens), never a
character whose bytes are not all there yet, nor text that may be the start of a stop string.
`generate()` is a stream read to its end.

The chat template is compiled once, when the generator loads (`_data.PromptTemplate`): a
server renders each request's conversation with it, compiling nothing per request.

    gen = Generator(read(Path("artifact")))
    gen.generate([{"role": "user", "content": "hi"}], max_new_tokens=64).text
    for piece in gen.stream("Once upon", max_new_tokens=64, stop=["\n"]): print(piece, end="")
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
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
    finish_reason: str  # "eos" (a stop token), "stop" (a stop string) or "length" (max_new_tokens or the context)

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
        try:
            self.template = _data.PromptTemplate(artifact.template, info.special_tokens) if artifact.template else None
        except TemplateError as e:
            raise ArtifactError(f"{artifact.path}: its chat template does not compile: {e.message}",
                                hint=REEXPORT) from None

    def render(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt text of a conversation: the chat template with the assistant header."""
        if self.template is None:
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
            return self.template.render(pairs)
        except TemplateError as e:  # raise_exception() in the template, for one
            raise InferenceError(f"the chat template refused the messages: {e.message}") from None

    def encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True).ids
        return self.tokenizer.encode(self.render(prompt), add_special_tokens=False).ids

    def generate(self, prompt: Prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None, stop: Sequence[str] = ()) -> Generation:
        """Greedy when `temperature` is 0; `top_k` 0 and `top_p` 1 leave the distribution whole."""
        stream = self.stream(prompt, max_new_tokens, temperature, top_p, top_k, seed, stop)
        if stream.stop:
            for _ in stream:
                pass
            text = stream.text
        else:  # nothing to watch for: decode once, at the end
            for _ in stream.tokens():
                pass
            text = self.tokenizer.decode(stream.token_ids, skip_special_tokens=True)
        return Generation(text, stream.token_ids, stream.prompt_tokens, stream.finish_reason)

    def stream(self, prompt: Prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
               top_k: int = 0, seed: int | None = None, stop: Sequence[str] = ()) -> Stream:
        """The generation as it goes; a bad option or prompt raises here, before any token."""
        check_options(max_new_tokens, temperature, top_p, top_k, seed)
        if not all(isinstance(s, str) for s in stop):
            raise InferenceError("stop strings must be strings")
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
        return Stream(self, ids, options, [s for s in stop if s])


class Stream:
    """A generation under way. Iterating it yields the answer's new text at each token, "" while
    there is none to give yet (`text` is what it gave so far); `tokens()` yields the ids alone.
    `finish_reason` is set at the end; `close()` (or leaving it unread) stops the decoder, which
    frees its KV cache."""

    def __init__(self, gen: Generator, ids: list[int], options: dict[str, Any], stop: list[str]) -> None:
        self.gen, self.ids, self.options, self.stop = gen, ids, options, stop
        self.prompt_tokens = len(ids)
        self.token_ids: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self.pieces: Iterator[str] | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        if self.pieces is None:
            self.pieces = self._pieces()
        return next(self.pieces)

    def close(self) -> None:
        if self.pieces is not None:
            self.pieces.close()

    def tokens(self) -> Iterator[int]:
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.gen.model)
        params.set_search_options(**self.options)
        generator = og.Generator(self.gen.model, params)
        generator.append_tokens(self.ids)
        eos = set(self.gen.eos)
        while not generator.is_done():
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in eos:
                self.finish_reason = "eos"
                return
            self.token_ids.append(token)
            yield token
        self.finish_reason = "length"

    def _pieces(self) -> Iterator[str]:
        decode = self.gen.tokenizer.decode
        tokens = self.tokens()
        try:
            for _ in tokens:
                full = decode(self.token_ids, skip_special_tokens=True)
                if full.endswith("\ufffd") or not full.startswith(self.text):
                    yield ""  # a character split across tokens, or a decoder still rewriting the end
                    continue
                yield self._release(full, final=False)
                if self.finish_reason == "stop":
                    return
            full = decode(self.token_ids, skip_special_tokens=True)
            if full.startswith(self.text) and (piece := self._release(full, final=True)):
                yield piece
        finally:
            tokens.close()

    def _release(self, full: str, final: bool) -> str:
        """The text of `full` past what was given out, up to a stop string (then finished) or,
        unless `final`, up to where a stop string might be starting."""
        start = len(self.text)
        cut, end = len(full), len(full)
        for s in self.stop:
            at = full.find(s, max(0, start - len(s) + 1))
            if at != -1 and at < cut:
                cut = at
        if cut < len(full):
            self.finish_reason = "stop"
            end = max(cut, start)
        elif not final:
            held = max((k for s in self.stop for k in range(1, len(s)) if full.endswith(s[:k])), default=0)
            end = max(start, len(full) - held)
        piece = full[start:end]
        self.text += piece
        return piece


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

"""OpenAI-compatible routes for a causal-LM artifact, so OpenAI clients and tools talk to `ftc serve`.

    GET  /v1/models            → {"object": "list", "data": [{"id", "object": "model", "created", "owned_by": "ftc"}]}
    GET  /v1/models/{id}       → that one model (404 for another id)
    POST /v1/chat/completions  {"messages", "model", "max_tokens" | "max_completion_tokens", "temperature",
                                "top_p", "top_k", "seed", "stop", "n", "stream", "stream_options"}
    POST /v1/completions       {"prompt", "model", "max_tokens", ... as above}

A request is checked whole before it waits for the model: every field known and of its type
(`null` is a field left out), its values in range; an error is OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, `param` naming the field. What this server
cannot do is refused, not ignored: logprobs, tools, `response_format`, `logit_bias`, non-zero
penalties, `echo`, `suffix`, `best_of` above 1, token-id prompts, image parts. `user`,
`metadata` and `store` are accepted and ignored. The defaults are OpenAI's: temperature 1,
top_p 1, 16 tokens for a completion; a chat answer defaults to the server's `DEFAULT_NEW_TOKENS`.
`model`, when given, must be the served id (`GET /v1/models`): the artifact directory's name,
or its export key for a directory named `artifact`.

`n` answers are generated one after the other, each sampled from its own seed (`seed + i`
when a seed is given). A stop string ends the answer without itself ("stop"); the end of turn
is "stop" too, `max_tokens` or the context "length". Usage counts tokens: the prompt once,
every choice's completion. `stream: true` answers with server-sent events, one per text piece
(`chat.completion.chunk` / `text_completion`), then one per choice with its finish_reason, a
usage chunk when `stream_options.include_usage`, and `data: [DONE]`; the server stops
generating when the client goes away.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ftc import tasks
from ftc.errors import InferenceError
from ftc.runtime.generate import MAX_OPTION

CHAT, COMPLETIONS, MODELS = "/v1/chat/completions", "/v1/completions", "/v1/models"
ROUTES = {MODELS: "GET", CHAT: "POST", COMPLETIONS: "POST"}
MAX_N = 8  # answers per request: they run one after the other, holding the model
MAX_STOP = 4  # stop strings, as OpenAI allows
COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
COMMON = {"model": str, "max_tokens": int, "temperature": float, "top_p": float, "top_k": int, "seed": int,
          "stop": object, "n": int, "stream": bool, "stream_options": dict, "user": str, "metadata": dict,
          "store": bool, "frequency_penalty": float, "presence_penalty": float, "logprobs": object,
          "logit_bias": dict, "best_of": int}
CHAT_FIELDS = COMMON | {"messages": list, "max_completion_tokens": int, "top_logprobs": int, "tools": list,
                        "tool_choice": object, "functions": list, "response_format": dict,
                        "parallel_tool_calls": bool}
COMPLETION_FIELDS = COMMON | {"prompt": object, "echo": bool, "suffix": str}
# Known, but beyond this server: refused unless given as the value that asks for nothing.
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "logprobs": False, "top_logprobs": 0, "best_of": 1,
           "echo": False, "logit_bias": {}, "tools": [], "functions": [], "tool_choice": "none",
           "parallel_tool_calls": False, "response_format": {"type": "text"}}
REASONS = {"eos": "stop", "stop": "stop", "length": "length"}
TYPES = {401: "authentication_error", 404: "not_found_error", 503: "server_error"}


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "invalid_request_error" if status < 500
                                                                  else "server_error"),
                      "param": param, "code": code}}


def model_id(model: Any) -> str:
    path = model.artifact.path.resolve()
    return path.parent.name if path.name == "artifact" else path.name


def model_card(model: Any) -> dict[str, Any]:
    return {"id": model_id(model), "object": "model", "created": int(model.artifact.manifest.get("created") or 0),
            "owned_by": "ftc"}


def serve(server: Any, path: str, body: dict[str, Any]) -> dict[str, Any] | Events:
    """The answer of an OpenAI route: a JSON object, or `Events` to stream (holding the model)."""
    from ftc.runtime.serve import HttpError

    model = server.model
    if path == MODELS:
        return {"object": "list", "data": [model_card(model)]}
    if path.startswith(MODELS + "/"):
        if path[len(MODELS) + 1:] != model_id(model):
            raise HttpError(404, f"no model `{path[len(MODELS) + 1:]}`; this server runs `{model_id(model)}`",
                            param="model", code="model_not_found")
        return model_card(model)
    if not tasks.get(model.task).generates:
        raise HttpError(422, f"this server runs a {model.task} model; {path} needs one that generates text")
    req = parse(server, path, body)
    seed = req.options.pop("seed")
    # Each choice is prepared (rendered, tokenized, checked against the context) before the queue.
    try:
        streams = [model.stream(req.prompt, seed=None if seed is None else seed + i, **req.options)
                   for i in range(req.n)]
    except InferenceError as e:  # the options are checked already: the prompt is at fault
        raise HttpError(400, e.message, param="messages" if path == CHAT else "prompt",
                        code="context_length_exceeded" if "context holds" in e.message else None) from None
    if not req.stream:
        with server.lock:
            return answer(req, streams)
    server.lock.acquire()  # 503 past the queue, before any header is sent
    return Events(events(req, streams), streams, server.lock.release)


class Events:
    """A streamed answer: its payloads, then `close()`, which stops the generations and frees the model."""

    def __init__(self, payloads: Iterator[dict[str, Any] | None], streams: list[Any],
                 release: Callable[[], None]) -> None:
        self.payloads, self.streams, self.release = payloads, streams, release
        self.open = True

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        return self.payloads

    def close(self) -> None:
        if self.open:
            self.open = False
            try:
                self.payloads.close()
                for s in self.streams:
                    s.close()
            finally:
                self.release()


@dataclass
class Request:
    kind: str  # CHAT or COMPLETIONS
    prompt: Any  # messages or text
    options: dict[str, Any]  # Generator.stream's keyword arguments, n's seed aside
    n: int = 1
    stream: bool = False
    usage_chunk: bool = False
    model: str = ""
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))


def parse(server: Any, path: str, body: dict[str, Any]) -> Request:
    """The request, checked whole; an HttpError names the field."""
    from ftc.runtime.serve import DEFAULT_NEW_TOKENS, HttpError, checked

    chat = path == CHAT
    body = {k: v for k, v in body.items() if v is not None}
    checked(body, CHAT_FIELDS if chat else COMPLETION_FIELDS)
    for key, neutral in NEUTRAL.items():
        if key in body and body[key] != neutral:
            raise HttpError(400, f"`{key}` is not supported by this server", param=key)
    served = model_id(server.model)
    if body.get("model", served) != served:
        raise HttpError(404, f"model `{body['model']}` is not served here; this server runs `{served}`",
                        param="model", code="model_not_found")
    if chat:
        prompt = messages(body)
        if "max_tokens" in body and "max_completion_tokens" in body:
            raise HttpError(400, "give `max_completion_tokens` or `max_tokens`, not both", param="max_tokens")
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    else:
        prompt, key = text_prompt(body), "max_tokens"
    limit = server.max_new_tokens
    tokens = body.get(key, min(DEFAULT_NEW_TOKENS if chat else COMPLETION_TOKENS, limit))
    if not 1 <= tokens <= limit:
        raise HttpError(400, f"`{key}` must be between 1 and {limit}, not {tokens}", param=key)
    options: dict[str, Any] = {"max_new_tokens": tokens, "temperature": body.get("temperature", 1.0),
                               "top_p": body.get("top_p", 1.0), "top_k": body.get("top_k", 0),
                               "seed": body.get("seed"), "stop": stops(body)}
    for name, high in (("temperature", 2), ("top_k", MAX_OPTION), ("seed", MAX_OPTION - MAX_N)):
        if (v := options[name]) is not None and not 0 <= v <= high:
            raise HttpError(400, f"`{name}` must be between 0 and {high}, not {v}", param=name)
    if not 0 < options["top_p"] <= 1:
        raise HttpError(400, f"`top_p` must be above 0 and at most 1, not {options['top_p']}", param="top_p")
    n = body.get("n", 1)
    if not 1 <= n <= MAX_N:
        raise HttpError(400, f"`n` must be between 1 and {MAX_N}, not {n}", param="n")
    stream_options = body.get("stream_options", {})
    if stream_options and not body.get("stream"):
        raise HttpError(400, "`stream_options` applies to `stream: true`", param="stream_options")
    if set(stream_options) - {"include_usage"} or not isinstance(stream_options.get("include_usage", False), bool):
        raise HttpError(400, "`stream_options` takes {\"include_usage\": true | false}", param="stream_options")
    return Request(path, prompt, options, n, body.get("stream", False), stream_options.get("include_usage", False),
                   served)


def messages(body: dict[str, Any]) -> list[dict[str, str | None]]:
    """OpenAI messages → {role, content} for the chat template; text parts are joined."""
    from ftc.runtime.serve import HttpError, json_type

    if "messages" not in body:
        raise HttpError(400, "`messages` is required", param="messages")
    out: list[dict[str, str | None]] = []
    for i, m in enumerate(body["messages"]):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise HttpError(400, f"`{where}` must be an object with a string `role`", param=where)
        if unknown := sorted(set(m) - {"role", "content", "name"}):
            key = f"{where}.{unknown[0]}"
            raise HttpError(400, f"`{key}` is not supported by this server", param=key)
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise HttpError(400, f"`{where}.content`: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                "are supported", param=f"{where}.content")
            content = "".join(p["text"] for p in content)
        elif content is not None and not isinstance(content, str):
            raise HttpError(400, f"`{where}.content` must be a string or a list of text parts, not "
                            f"{json_type(content)}", param=f"{where}.content")
        out.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
    if not out:
        raise HttpError(400, "`messages` is empty", param="messages")
    return out


def text_prompt(body: dict[str, Any]) -> str:
    from ftc.runtime.serve import HttpError

    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise HttpError(400, "`prompt` must be a string (or a list of one string; token ids are not supported)",
                        param="prompt")
    return prompt


def stops(body: dict[str, Any]) -> list[str]:
    from ftc.runtime.serve import HttpError

    stop = body.get("stop", [])
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP:
        raise HttpError(400, f"`stop` must be a non-empty string or a list of at most {MAX_STOP}", param="stop")
    return stop


def answer(req: Request, streams: list[Any]) -> dict[str, Any]:
    """The whole response, once every stream has run."""
    choices = []
    for i, s in enumerate(streams):
        for _ in s:
            pass
        reason = REASONS[s.finish_reason]
        choices.append({"index": i, "message": {"role": "assistant", "content": s.text}, "logprobs": None,
                        "finish_reason": reason} if req.kind == CHAT else
                       {"index": i, "text": s.text, "logprobs": None, "finish_reason": reason})
    return {**head(req), "choices": choices, "usage": usage(streams)}


def events(req: Request, streams: list[Any]) -> Iterator[dict[str, Any] | None]:
    """The response as server-sent events' payloads, piece by piece; None for a token that gave
    no text yet (nothing to send, but a moment to see whether the client is still there)."""
    extra = {"usage": None} if req.usage_chunk else {}
    for i, s in enumerate(streams):
        if req.kind == CHAT:
            yield {**head(req), "choices": [delta(i, {"role": "assistant", "content": ""})], **extra}
        for piece in s:
            yield {**head(req), "choices": [delta(i, {"content": piece}) if req.kind == CHAT
                                            else text_choice(i, piece)], **extra} if piece else None
        last = delta(i, {}) if req.kind == CHAT else text_choice(i, "")
        yield {**head(req), "choices": [last | {"finish_reason": REASONS[s.finish_reason]}], **extra}
    if req.usage_chunk:
        yield {**head(req), "choices": [], "usage": usage(streams)}


def head(req: Request) -> dict[str, Any]:
    chat = req.kind == CHAT
    return {"id": ("chatcmpl-" if chat else "cmpl-") + req.id,
            "object": ("chat.completion.chunk" if req.stream else "chat.completion") if chat else "text_completion",
            "created": req.created, "model": req.model, "system_fingerprint": None}


def delta(i: int, content: dict[str, Any]) -> dict[str, Any]:
    return {"index": i, "delta": content, "logprobs": None, "finish_reason": None}


def text_choice(i: int, text: str) -> dict[str, Any]:
    return {"index": i, "text": text, "logprobs": None, "finish_reason": None}


def usage(streams: list[Any]) -> dict[str, int]:
    prompt, completion = streams[0].prompt_tokens, sum(len(s.token_ids) for s in streams)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

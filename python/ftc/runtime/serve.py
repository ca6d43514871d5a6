"""An HTTP JSON API over a loaded model, on the standard library's threading server.

    GET  /health       → {"status": "ok", "task": ..., "variant": ..., "labels": [...] | null,
                          "artifact_sha256": ...}
    POST /v1/classify  {"texts": [...]} or {"text": "..."}, with "text_pairs" / "text_pair"
                       → {"predictions": [{"label", "score", "probabilities"}, ...]}
    POST /v1/generate  {"prompt": "..."} or {"messages": [{"role", "content"}, ...]}, with
                       "max_new_tokens", "temperature", "top_p", "top_k", "seed"
                       → {"text", "finish_reason", "prompt_tokens", "completion_tokens"}
    POST /v1/entities  {"texts": [...]} or {"text": "..."}
                       → {"entities": [[{"entity_group", "score", "word", "start", "end"}, ...], ...]}
    POST /v1/answer    {"question", "context"} or {"questions", "contexts"}, with "top_k",
                       "max_answer_length", "handle_impossible_answer"
                       → {"answers": [{"text", "score", "start", "end"}, ...]}
    GET  /v1/models, POST /v1/chat/completions, POST /v1/completions
                       OpenAI's request and response shapes, streaming included (`openai_api`)

Every answer is JSON (server-sent events for an OpenAI `stream: true`); an error is
{"error": "..."} that names the offending field: 400 a malformed body or a missing, unknown
or mistyped field; 404 an unknown path; 405 a wrong method (with `Allow`); 503 a full queue
(with `Retry-After`); 400 a malformed or negative Content-Length, NaN or infinity, JSON
nested deeper than `MAX_DEPTH`; 411 no Content-Length; 413 a body over `max_bytes` (refused before it
is read) or more texts than `max_batch`; 422 another task's endpoint. Each task (`ftc.tasks`)
serves its own route and validates its own body; the OpenAI routes answer errors in OpenAI's
shape, {"error": {"message", "type", "param", "code"}}. The server binds 127.0.0.1 unless told
otherwise: it has no authentication, so exposing it is a decision.
Model calls run one at a time (`Slots`): on CPU a second concurrent call would only split the
same cores, while requests still parse and validate in their own threads. At most `queue`
requests wait for the model; past that a request is refused at once, 503 with `Retry-After`.
A streaming client that hangs up stops its generation at the next token (a failed write, or
a socket read as ended), freeing the model.
"""

from __future__ import annotations

import json
import math
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ftc import __version__, tasks
from ftc.errors import InferenceError
from ftc.runtime import Model, openai_api

MAX_BATCH = 64
MAX_BYTES = 1 << 20
MAX_NEW_TOKENS = 512
DEFAULT_NEW_TOKENS = 128  # when a request gives none (capped by the server's maximum)
QUEUE = 16  # requests waiting for the model, beyond the one it runs
RETRY_AFTER = 1  # seconds, for a request refused because the queue is full
MAX_DEPTH = 32  # no request needs more; the JSON parser itself would recurse until Python's limit
LENGTH = re.compile(r"[0-9]{1,18}")  # Content-Length: digits only (`int()` also takes "-1", "+5", "1_0")
# The client went away: nothing can be answered, and it is not the server's fault.
DISCONNECTED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)
ENDPOINTS = tasks.endpoints()  # route → the task that serves it
ROUTES = {"/health": "GET"} | dict.fromkeys(ENDPOINTS, "POST") | openai_api.ROUTES
NOUNS = {str: "a string", list: "a list", dict: "an object", int: "an integer", float: "a number",
         bool: "a boolean", type(None): "null"}  # JSON values' types, as errors name them


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}
        self.param, self.code = param, code  # the field at fault and a short code, for OpenAI-shaped errors


class Slots:
    """The model, one call at a time, with at most `queue` requests waiting for it: `with slots:`
    (or `acquire()` … `release()`) raises a 503 with `Retry-After` when the queue is full."""

    def __init__(self, queue: int) -> None:
        self.queue, self.busy, self.waiting = queue, False, 0
        self.cond = threading.Condition()

    def acquire(self) -> None:
        with self.cond:
            if self.busy or self.waiting:
                if self.waiting >= self.queue:
                    raise HttpError(503, f"the model is busy and {self.waiting} requests already wait "
                                    f"(queue {self.queue}); retry shortly", {"Retry-After": str(RETRY_AFTER)},
                                    code="queue_full")
                self.waiting += 1
                try:
                    while self.busy:
                        self.cond.wait()
                finally:
                    self.waiting -= 1
            self.busy = True

    def release(self) -> None:
        with self.cond:
            self.busy = False
            self.cond.notify()

    def __enter__(self) -> Slots:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model: Model, host: str, port: int, max_batch: int, max_bytes: int,
                 max_new_tokens: int, quiet: bool = False, queue: int = QUEUE) -> None:
        self.model, self.max_batch, self.max_bytes, self.max_new_tokens = model, max_batch, max_bytes, max_new_tokens
        self.quiet = quiet
        self.lock = Slots(queue)  # every task's `with server.lock:` waits in this queue
        super().__init__((host, port), Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], DISCONNECTED):
            return  # a client that hangs up is routine: no traceback in the log
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_server(model: Model, host: str = "127.0.0.1", port: int = 8000, max_batch: int = MAX_BATCH,
                max_bytes: int = MAX_BYTES, max_new_tokens: int = MAX_NEW_TOKENS, quiet: bool = False,
                queue: int = QUEUE) -> Server:
    """A bound server (port 0: any free port); call `serve_forever()` on it."""
    return Server(model, host, port, max_batch, max_bytes, max_new_tokens, quiet, queue)


def checked(body: dict[str, Any], allowed: dict[str, type]) -> dict[str, Any]:
    """`body` with every field known and of its type (an int is a float; a bool is neither)."""
    for key, value in body.items():
        want = allowed.get(key)
        if want is None:
            raise HttpError(400, f"unknown field `{key}`; allowed: {', '.join(allowed)}", param=key)
        ok = isinstance(value, int | float) if want is float else isinstance(value, want)
        if not ok or (want in (int, float) and isinstance(value, bool)):
            raise HttpError(400, f"`{key}` must be {NOUNS[want]}, not {json_type(value)}", param=key)
    return body


def one_of(body: dict[str, Any], a: str, b: str) -> str:
    if (a in body) == (b in body):
        raise HttpError(400, f"give exactly one of `{a}` and `{b}`")
    return a if a in body else b


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = f"ftc/{__version__}"
    protocol_version = "HTTP/1.1"
    timeout = 60  # a client that stops sending mid-request does not hold its thread forever

    def do_GET(self) -> None:
        self.route("GET")

    def do_POST(self) -> None:
        self.route("POST")

    def do_PUT(self) -> None:
        self.route("PUT")

    def do_DELETE(self) -> None:
        self.route("DELETE")

    def do_PATCH(self) -> None:
        self.route("PATCH")

    def route(self, method: str) -> None:
        start = time.perf_counter()
        path = urlsplit(self.path).path.rstrip("/") or "/"
        route = openai_api.MODELS if path.startswith(openai_api.MODELS + "/") else path
        openai = route in openai_api.ROUTES
        try:
            if route not in ROUTES:
                raise HttpError(404, f"no endpoint {path}; endpoints: {', '.join(ROUTES)}")
            if method != ROUTES[route]:
                raise HttpError(405, f"{path} takes {ROUTES[route]}, not {method}", {"Allow": ROUTES[route]})
            if path == "/health":
                status, answer = 200, self.health()
            elif openai:
                result = openai_api.serve(self.server, path, self.body() if method == "POST" else {})
                if isinstance(result, openai_api.Events):
                    return self.stream(result, start)
                status, answer = 200, result
            else:
                task = tasks.get(self.server.model.task)
                if path != task.endpoint:
                    raise HttpError(422, f"this server runs a {task.name} model; {path} needs {ENDPOINTS[path]}")
                status, answer = 200, task.serve(self.server, self.body())
        except HttpError as e:
            self.close_connection = True  # an unread body must not be taken for the next request
            status, answer, headers = e.status, {"error": e.message}, e.headers
            if openai:
                answer = openai_api.error(e.status, e.message, e.param, e.code)
        except InferenceError as e:
            status, answer, headers = 400, openai_api.error(400, e.message) if openai else {"error": e.message}, {}
        except DISCONNECTED:
            self.close_connection = True  # hung up while sending its body: no one to answer
            return
        except Exception as e:  # a bug: answer, log, keep serving
            self.log_error("internal error: %r", e)
            self.close_connection = True
            message = f"internal error: {type(e).__name__}"
            status, answer, headers = 500, openai_api.error(500, message) if openai else {"error": message}, {}
        else:
            headers = {}
        self.send(status, answer, headers, start)

    def health(self) -> dict[str, Any]:
        m = self.server.model
        return {"status": "ok", "task": m.task, "variant": m.artifact.variant,
                "labels": getattr(m, "labels", None), "artifact_sha256": m.artifact.digest}

    def body(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if length is None:
            raise HttpError(411, "a Content-Length header is required (chunked bodies are not accepted)")
        if not LENGTH.fullmatch(length.strip()):  # a negative length would read to the end of the stream
            raise HttpError(400, f"bad Content-Length {length[:40]!r}: expected a number of bytes")
        n = int(length)
        if n > self.server.max_bytes:
            raise HttpError(413, f"body of {n} bytes; this server takes at most {self.server.max_bytes}")
        raw = self.rfile.read(n)
        if not raw.strip():
            raise HttpError(400, "empty body: expected a JSON object")
        try:
            body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except UnicodeDecodeError:
            raise HttpError(400, "the body is not UTF-8") from None
        except ValueError as e:
            raise HttpError(400, f"malformed JSON: {e}") from None
        except RecursionError:
            raise HttpError(400, f"JSON nested deeper than {MAX_DEPTH} levels") from None
        if _depth(body) > MAX_DEPTH:
            raise HttpError(400, f"JSON nested deeper than {MAX_DEPTH} levels")
        if (where := _non_finite(body)) is not None:
            raise HttpError(400, f"`{where}`: a number too large to represent")
        if not isinstance(body, dict):
            raise HttpError(400, f"expected a JSON object, found {json_type(body)}")
        return body

    def send(self, status: int, answer: dict[str, Any], headers: dict[str, str], start: float) -> None:
        data = json.dumps(answer, ensure_ascii=False).encode("utf-8")
        self.elapsed = time.perf_counter() - start
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except DISCONNECTED:
            self.close_connection = True  # the client hung up before its answer: nothing to tell it

    def stream(self, events: openai_api.Events, start: float) -> None:
        """Server-sent events in chunked transfer encoding, each `data: {...}` as it comes, then
        `data: [DONE]`; a client gone (a failed write) ends the stream and frees the model."""
        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for payload in events:
                    if payload is None:  # no text this token: only see whether the client is still there
                        if self.gone():
                            raise BrokenPipeError("the client closed the connection")
                        continue
                    self.chunk(b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n")
            except InferenceError as e:  # after the headers, an error can only be an event
                self.chunk(b"data: " + json.dumps(openai_api.error(400, e.message)).encode("utf-8") + b"\n\n")
            self.chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
        except DISCONNECTED:
            self.close_connection = True
        except Exception as e:  # a bug mid-stream: the answer cannot be finished, the connection must go
            self.log_error("internal error while streaming: %r", e)
            self.close_connection = True
        finally:
            events.close()
            self.elapsed = time.perf_counter() - start

    def gone(self) -> bool:
        """The client closed its end: the socket reads as ended (a client sends nothing while it
        waits for its answer, so anything readable is the end or an error)."""
        try:
            if not select.select([self.connection], [], [], 0)[0]:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if not self.server.quiet:
            self.log_message('"%s" %s %.1fms', self.requestline, code, getattr(self, "elapsed", 0) * 1000)


def json_type(v: Any) -> str:
    return NOUNS[type(v)]


def _no_constant(name: str) -> Any:
    """Python's parser takes NaN and Infinity; JSON has neither."""
    raise HttpError(400, f"{name} is not a JSON value: give a finite number")


def _depth(value: Any) -> int:
    """How deeply lists and objects nest, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _non_finite(body: Any) -> str | None:
    """The top-level field holding a number that overflowed to infinity (`1e999`), if any."""
    if isinstance(body, dict):
        for key, v in body.items():
            if isinstance(v, float) and not math.isfinite(v):
                return str(key)
    return None

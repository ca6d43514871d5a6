"""The OpenAI-compatible routes of `ftc serve`, driven by the official `openai` client against a
server on 127.0.0.1: answers equal the runtime's own `generate()`, streaming pieces add up to
the same text, stop strings and `max_tokens` end it with the right finish_reason, errors have
OpenAI's shape and name the field, the queue refuses with 503 + Retry-After when full, and a
client that hangs up mid-stream frees the model."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import openai
import pytest
from test_runtime import CHATS, generator, lm_artifact, lm_export  # noqa: F401  (the tiny exported chat model)

from ftc import runtime
from ftc.runtime.openai_api import model_id
from ftc.runtime.serve import make_server

CHAT = CHATS[1]  # a system prompt; answers with CJK characters


class Paced:
    """The generator, but after each token its streams wait for `gate`, then `delay` seconds: a
    request that holds the model as long as a test needs. `counts` holds each stream's tokens so
    far, `closed` is set when a stream's decoder stops."""

    def __init__(self, gen: runtime.Generator, delay: float = 0.0) -> None:
        self.gen, self.delay = gen, delay
        self.gate = threading.Event()
        self.gate.set()
        self.closed = threading.Event()
        self.counts: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.gen, name)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        stream = self.gen.stream(*args, **kwargs)
        tokens, k = stream.tokens, len(self.counts)
        self.counts.append(0)

        def paced():
            inner = tokens()
            try:
                for token in inner:
                    self.counts[k] += 1
                    yield token
                    self.gate.wait(30)
                    time.sleep(self.delay)
            finally:
                inner.close()
                self.closed.set()

        stream.tokens = paced
        return stream



@pytest.fixture
def lm(request: pytest.FixtureRequest) -> runtime.Generator:
    """test_runtime's `generator` (the tiny exported chat model, fp32), imported above."""
    return request.getfixturevalue("generator")

@pytest.fixture
def served():
    servers = []

    def start(model: Any, **limits: int) -> tuple[Any, openai.OpenAI]:
        server = make_server(model, port=0, quiet=True, **limits)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30)

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def post(url: str, raw: bytes, method: str = "POST") -> tuple[int, dict]:
    req = urllib.request.Request(url, data=raw if method == "POST" else None, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_chat_completion_equals_generate(served, lm: runtime.Generator):
    server, client = served(lm, max_new_tokens=64)
    name = model_id(lm)
    expected = lm.generate(CHAT, max_new_tokens=12)
    r = client.chat.completions.create(model=name, messages=CHAT, max_tokens=12, temperature=0)
    assert r.object == "chat.completion" and r.model == name and len(r.choices) == 1
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected.text != ""
    assert r.choices[0].finish_reason == {"eos": "stop", "length": "length"}[expected.finish_reason]
    assert r.usage.prompt_tokens == len(lm.encode(CHAT)) == expected.prompt_tokens
    assert r.usage.completion_tokens == len(expected.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # n choices, each sampled from its own seed; the model is optional
    a, b = (lm.generate(CHAT, max_new_tokens=8, temperature=0.8, top_p=0.9, seed=s) for s in (5, 6))
    assert a.text != b.text  # else the next check could not tell the seeds apart
    r = client.chat.completions.create(model=name, messages=CHAT, max_tokens=8, temperature=0.8, top_p=0.9, seed=5,
                                       n=2)
    assert [c.message.content for c in r.choices] == [a.text, b.text] and [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens == len(a.token_ids) + len(b.token_ids)
    status, body = post(server.url + "/v1/chat/completions", json.dumps({"messages": CHAT, "max_tokens": 12,
                                                                         "temperature": 0, "stop": None}).encode())
    assert status == 200 and body["choices"][0]["message"]["content"] == expected.text


def test_completions_and_models(served, lm: runtime.Generator):
    server, client = served(lm, max_new_tokens=64)
    name = model_id(lm)
    assert name == lm.artifact.path.parent.name  # an exported artifact: its export key
    expected = lm.generate("The quick", max_new_tokens=10)
    r = client.completions.create(model=name, prompt="The quick", max_tokens=10, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == expected.text
    assert r.usage.prompt_tokens == len(lm.encode("The quick")) and r.usage.completion_tokens == 10
    models = client.models.list().data
    assert [(m.id, m.object, m.owned_by) for m in models] == [(name, "model", "ftc")]
    assert client.models.retrieve(name).id == name
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-4o", prompt="The quick", max_tokens=2)


def test_streaming_adds_up_to_the_answer(served, lm: runtime.Generator):
    _, client = served(lm, max_new_tokens=64)
    name = model_id(lm)
    whole = client.chat.completions.create(model=name, messages=CHAT, max_tokens=40, temperature=0)
    chunks = list(client.chat.completions.create(model=name, messages=CHAT, max_tokens=40, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert len(pieces) > 3 and all(pieces)  # piece by piece, no empty deltas
    assert "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 2) + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    text = client.completions.create(model=name, prompt="The quick", max_tokens=40, temperature=0).choices[0].text
    chunks = list(client.completions.create(model=name, prompt="The quick", max_tokens=40, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage is None
    # the runtime's own stream: characters whole, the same text as generate()
    stream = lm.stream("The quick", max_new_tokens=60)
    got = list(stream)
    assert len(got) in (60, 61) and sum(bool(p) for p in got) > 3  # a piece a token (and the held end)
    assert "".join(got) == lm.generate("The quick", max_new_tokens=60).text
    assert stream.finish_reason == "length"


def test_stop_strings_and_max_tokens(served, lm: runtime.Generator):
    _, client = served(lm, max_new_tokens=64)
    name = model_id(lm)
    full = lm.generate(CHAT, max_new_tokens=30)
    assert len(full.text) > 12 and full.finish_reason == "length"
    stop = full.text[8:11]
    expected = full.text[:full.text.index(stop)]
    r = client.chat.completions.create(model=name, messages=CHAT, max_tokens=30, temperature=0, stop=[stop, "@@@"])
    assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 30
    chunks = list(client.chat.completions.create(model=name, messages=CHAT, max_tokens=30, temperature=0, stop=stop,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert lm.generate(CHAT, max_new_tokens=30, stop=[stop]).text == expected
    r = client.chat.completions.create(model=name, messages=CHAT, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    assert r.choices[0].message.content == lm.generate(CHAT, max_new_tokens=3).text


def test_bad_requests_have_openai_errors_naming_the_field(served, lm: runtime.Generator):
    server, client = served(lm, max_new_tokens=64)
    name = model_id(lm)
    for kwargs, param, words in [
        ({"temperature": 5}, "temperature", "between 0 and 2"),
        ({"top_p": 0}, "top_p", "above 0"),
        ({"max_tokens": 65}, "max_tokens", "between 1 and 64"),
        ({"n": 9}, "n", "between 1 and 8"),
        ({"logprobs": True}, "logprobs", "not supported"),
        ({"extra_body": {"bogus": 1}}, "bogus", "unknown field `bogus`"),
        ({"messages": []}, "messages", "is empty"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
         "messages[0].content", "only text parts"),
        ({"stop": ["a"] * 5}, "stop", "at most 4"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**{"model": name, "messages": CHAT, **kwargs})
        assert e.value.status_code == 400 and e.value.param == param and words in e.value.message, kwargs
        assert e.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=name, prompt=[1, 2, 3])
    assert e.value.param == "prompt"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "fox " * 600}])
    assert e.value.param == "messages" and e.value.code == "context_length_exceeded"
    assert "context holds 512" in e.value.message
    status, body = post(server.url + "/v1/chat/completions", b"{not json")
    assert status == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    assert "malformed JSON" in body["error"]["message"]
    status, body = post(server.url + "/v1/chat/completions", b"", method="GET")
    assert status == 405 and "takes POST" in body["error"]["message"]
    status, body = post(server.url + "/v1/generate", json.dumps({"prompt": "a", "bogus": 1}).encode())
    assert status == 400 and isinstance(body["error"], str)  # the plain routes keep their own shape


def test_a_full_queue_answers_503_with_retry_after(served, lm: runtime.Generator):
    paced = Paced(lm)
    server, client = served(paced, max_new_tokens=64, queue=1)
    name = model_id(lm)
    paced.gate.clear()
    holding = client.chat.completions.create(model=name, messages=CHAT, max_tokens=6, temperature=0, stream=True)
    next(iter(holding))  # the role chunk: it holds the model, stopped at its first token
    waited: list = []
    waiter = threading.Thread(target=lambda: waited.append(
        client.chat.completions.create(model=name, messages=CHAT, max_tokens=6, temperature=0)))
    waiter.start()
    deadline = time.monotonic() + 10
    while server.lock.waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.lock.waiting == 1
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model=name, messages=CHAT, max_tokens=2, temperature=0)
    assert e.value.status_code == 503 and e.value.code == "queue_full"
    assert e.value.response.headers["Retry-After"] == "1"
    status, body = post(server.url + "/v1/generate", json.dumps({"prompt": "a", "max_new_tokens": 2}).encode())
    assert status == 503 and "queue" in body["error"]  # every route waits in the same queue
    paced.gate.set()
    expected = lm.generate(CHAT, max_new_tokens=6).text
    assert "".join(c.choices[0].delta.content or "" for c in holding) == expected
    waiter.join(30)
    assert waited and waited[0].choices[0].message.content == expected


def test_a_client_that_hangs_up_frees_the_model(served, lm: runtime.Generator):
    assert lm.generate(CHAT, max_new_tokens=300).finish_reason == "length"  # it would run 300 tokens
    paced = Paced(lm, delay=0.02)  # 300 tokens: 6 seconds, unless stopped
    server, client = served(paced, max_new_tokens=400, queue=0)
    name = model_id(lm)
    stream = client.chat.completions.create(model=name, messages=CHAT, max_tokens=300, temperature=0, stream=True)
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    stream.close()
    start, answer = time.monotonic(), None
    while answer is None and time.monotonic() - start < 3:
        try:
            answer = client.chat.completions.create(model=name, messages=CHAT, max_tokens=2, temperature=0)
        except openai.APIStatusError as e:
            assert e.status_code == 503
            time.sleep(0.05)
    assert answer is not None and answer.choices[0].message.content == lm.generate(CHAT, max_new_tokens=2).text
    assert paced.closed.is_set() and paced.counts[0] < 300
    assert server.lock.busy is False and server.lock.waiting == 0

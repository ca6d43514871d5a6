"""Fuzzing with hypothesis, bounded for CI: mutated specs through `ftc validate` (and the data
stage when they validate), malformed data files through every reader, and arbitrary HTTP
bodies against `ftc serve`. The property everywhere: a clear error or a result, never a
traceback (an exception that is not an `FtcError`, or a 500)."""

from __future__ import annotations

import json
import math
import shutil
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hardening import raw_request, stub_generator

from ftc.errors import FtcError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "specs" / "example.toml"
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# What a hostile or careless user puts where a value goes.
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]),
    st.text(max_size=40), st.sampled_from(["../../etc/passwd", "/", "~", "a\x00b", "x" * 300, "pkg://nope/x",
                                           "🙂", "", " "]),
    st.lists(st.integers(-5, 5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path of a TOML document (list items by index)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out += [(*prefix, k), *_paths(v, (*prefix, k))]
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


BASE = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
PATHS = _paths(BASE)
NEW_KEYS = [("project", "bogus"), ("train", "learning_rate"), ("train", "max_steps"), ("tokenize", "max_length"),
            ("data", "clean", "near", "num_perm"), ("eval", "max_new_tokens"), ("model", "task"), ("export", "rows")]


def _toml(value: object) -> str:
    return json.dumps(value, ensure_ascii=False).replace("NaN", "nan").replace("Infinity", "inf")


def _set(doc: dict, path: tuple, value: object) -> dict:
    doc = json.loads(json.dumps(doc))
    node = doc
    for k in path[:-1]:
        node = node.setdefault(k, {}) if isinstance(node, dict) else node[k]
    node[path[-1]] = value
    return doc


def _dump(doc: dict) -> str:
    """TOML from a document whose leaves are JSON-like (inline tables and arrays)."""
    lines: list[str] = []

    def table(name: str, t: dict) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, dict) and not (
            isinstance(v, list) and v and all(isinstance(x, dict) for x in v))}
        lines.append(f"[{name}]")
        lines.extend(f"{json.dumps(str(k))} = {_value(v)}" for k, v in scalars.items())
        for k, v in t.items():
            if isinstance(v, dict):
                table(f"{name}.{json.dumps(str(k))}", v)
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                for item in v:
                    lines.append(f"[[{name}.{json.dumps(str(k))}]]")
                    lines.extend(f"{json.dumps(str(a))} = {_value(b)}" for a, b in item.items())

    def _value(v: object) -> str:
        if v is None:
            return '""'
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {_value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ", ".join(_value(x) for x in v) + "]"
        return _toml(v)

    for name, t in doc.items():
        table(json.dumps(str(name)), t) if isinstance(t, dict) else lines.insert(0, f"{json.dumps(str(name))} = "
                                                                                  f"{_value(t)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of specs/ (the example's model and data sit beside it)."""
    return shutil.copytree(ROOT / "specs", tmp_path_factory.mktemp("fuzz") / "specs")


@FUZZ
@given(path=st.sampled_from(PATHS + NEW_KEYS), value=VALUES)
def test_mutated_specs_validate_or_fail_in_one_line(example_dir: Path, path: tuple, value: object):
    from click.testing import CliRunner

    from ftc.cli import main

    spec = example_dir / "fuzzed.toml"
    spec.write_text(_dump(_set(BASE, path, value)), encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", str(spec)])
    assert result.exception is None or isinstance(result.exception, SystemExit), (path, value, result.output)
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1, 2)
    if result.exit_code == 0:  # valid: the data stage reads it or says why not, in one line
        run = CliRunner().invoke(main, ["prep", str(spec)])
        assert run.exception is None or isinstance(run.exception, SystemExit), (path, value, run.output)


FILE_BYTES = st.one_of(
    st.binary(max_size=300),
    st.lists(st.sampled_from([b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
                              b'"content": "yo"}]}', b'{"text": "x"}', b"{", b"[]", b'{"messages": 5}', b"\xff\xfe",
                              b'{"messages": [{"role": "x"}]}', b"\x00", b"", b"a,b\n1,2,3", b'"unterminated']),
             max_size=12).map(lambda xs: b"\n".join(xs)))


@FUZZ
@given(data=FILE_BYTES, ext=st.sampled_from(["jsonl", "json", "csv", "tsv", "txt", "parquet"]))
def test_malformed_data_files_are_quarantined_or_refused_in_one_line(example_dir: Path, data: bytes, ext: str):
    from ftc.prep import prep
    from ftc.specload import load_spec

    (example_dir / f"bad.{ext}").write_bytes(data)
    doc = _set(BASE, ("data", "sources"), [{"path": f"bad.{ext}"}])
    doc = _set(doc, ("data", "max_bad_fraction"), 1.0)
    (example_dir / "bad.toml").write_text(_dump(doc), encoding="utf-8")
    try:
        prep(load_spec(example_dir / "bad.toml"))
    except FtcError:
        pass


BODY = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4),
                                            st.dictionaries(st.sampled_from(["prompt", "messages", "role", "content",
                                                                             "max_new_tokens", "temperature", "top_p",
                                                                             "top_k", "seed", "texts", "x"]),
                                                            inner, max_size=5)), max_leaves=12)


@pytest.fixture(scope="module")
def server():
    import threading

    from ftc.runtime.serve import make_server

    s = make_server(stub_generator(), port=0, quiet=True, max_bytes=2000)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.shutdown()
    s.server_close()


@FUZZ
@given(body=BODY, path=st.sampled_from(["/v1/generate", "/v1/classify", "/health", "/nope"]),
       method=st.sampled_from(["POST", "GET", "PUT"]))
def test_arbitrary_requests_get_an_answer_never_a_500(server, body: object, path: str, method: str):
    raw = json.dumps(body, allow_nan=True).encode() if method != "GET" else b""  # a GET body would be a 2nd request
    status, answer = raw_request(server, f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(raw)}", raw)
    assert status in (200, 400, 404, 405, 411, 413, 422), (status, answer)
    assert status == 200 or "error" in answer

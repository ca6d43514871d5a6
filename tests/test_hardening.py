"""Hostile but realistic inputs: each ends in one clear error, never a traceback, a silent
NaN run, an unbounded allocation or a path outside the store."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tiny import write_spec

from ftc import build as stages
from ftc.errors import BuildError, SpecError
from ftc.specload import load_spec


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "the model learns to answer short questions about numbers and code".split()
    return [{"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(2, 12))),
             "response": " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))} for _ in range(n)]


def chat_spec(tmp_path: Path, base: Path, **tables: dict) -> Path:
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(40)), encoding="utf-8")
    tables.setdefault("tokenize", {"max_length": 128})
    return write_spec(tmp_path / "spec.toml", base, [{"path": "d.jsonl"}], **tables)


# ── a diverged run fails and stores nothing ──────────────────────────────────────────────────

@pytest.mark.parametrize("train", [{"learning_rate": 1e30, "max_grad_norm": 0.0},
                                   {"lora": {"alpha": 1e308}}])
def test_a_diverged_run_fails_and_leaves_nothing_in_the_store(tmp_path: Path, llama_dir: Path, ftc_home: Path,
                                                               train: dict):
    spec = chat_spec(tmp_path, llama_dir, train={"method": "lora", "max_steps": 2, "batch_size": 4, **train})
    with pytest.raises(BuildError, match="diverged") as e:
        stages.build(load_spec(spec))
    assert "learning_rate" in (e.value.hint or "")
    assert not list(ftc_home.glob(f"{stages.RUNS}/**/manifest.json"))
    assert not list(ftc_home.glob("work/*"))


# ── out-of-range values are refused by the schema, with the key named ───────────────────────

@pytest.mark.parametrize(("table", "key", "value"), [
    ("project", "seed", "-1"), ("project", "seed", str(2**32)), ("project", "seed", str(2**62)),
    ("train", "learning_rate", "inf"), ("train", "learning_rate", "nan"), ("train", "epochs", "inf"),
    ("train", "batch_size", str(2**40)), ("train", "max_steps", str(2**40)),
    ("eval", "max_new_tokens", str(2**63 - 1)), ("data_clean_near", "num_perm", "100000000"),
    ("source", "weight", "inf"), ("source", "weight", "1e300"), ("source", "weight", "1e6"),
    ("train_lora", "alpha", "-inf"),
])
def test_out_of_range_values_are_spec_errors(tmp_path: Path, llama_dir: Path, table: str, key: str, value: str):
    """`value` is TOML as written (`inf`, `nan`, integers past 64 bits)."""
    source = {"path": "d.jsonl"}
    tables: dict = {}
    if table == "source":
        source[key] = "@value@"
    elif table != "project":
        tables[table] = {key: "@value@"}
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [source], **tables)
    text = spec.read_text(encoding="utf-8").replace('"@value@"', value)
    if table == "project":
        text = text.replace('name = "test"', f'name = "test"\n{key} = {value}')
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert len(e.value.problems) == 1 and f"{key}`" in e.value.problems[0], e.value.problems


@pytest.mark.parametrize("name", ["../../../x/evil", "a/b", "nul\x00byte", "x" * 300, "", " lead", "..", ".hidden"])
def test_a_project_name_is_a_slug_never_a_path(tmp_path: Path, llama_dir: Path, name: str):
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}])
    text = spec.read_text(encoding="utf-8").replace('name = "test"', f"name = {json.dumps(name)}")
    spec.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match="project.name.*file names"):
        load_spec(spec)


def test_the_quarantine_file_stays_in_the_store(tmp_path: Path, llama_dir: Path, ftc_home: Path):
    from ftc.errors import SourceError
    from ftc.prep import prep

    (tmp_path / "d.jsonl").write_text('{"text": "x"}\nnot json\n', encoding="utf-8")
    spec = load_spec(write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}]))
    evil = spec.model_copy(update={"project": spec.project.model_copy(update={"name": "../../evil"})})
    with pytest.raises(SourceError):
        prep(evil)
    kept = list((ftc_home / "quarantine").iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("_.._evil-")
    assert not list(tmp_path.glob("evil*")) and not list(ftc_home.glob("evil*"))


def test_a_directory_given_as_a_source_is_an_error_not_an_empty_source(tmp_path: Path, llama_dir: Path):
    from ftc.errors import SourceError
    from ftc.prep import prep

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(20)), encoding="utf-8")
    spec = load_spec(write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "data"}]))
    with pytest.raises(SourceError, match="is a directory") as e:
        prep(spec)
    assert "data/*.jsonl" in (e.value.hint or "")
    globbed = load_spec(write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "data/*.jsonl"}]))
    assert prep(globbed).manifest["stats"]["rows_read"] == 20


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00", b"{{ x }}\x00"])
def test_a_binary_template_file_is_a_clear_error(tmp_path: Path, bpe_dir: Path, content: bytes):
    from ftc.errors import ModelError
    from ftc.prep import prep

    (tmp_path / "t.jinja").write_bytes(content)
    (tmp_path / "d.jsonl").write_text(json.dumps(chat_rows(1)[0]) + "\n", encoding="utf-8")
    spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.jsonl"}], tokenize={"template": "t.jinja"})
    with pytest.raises(ModelError, match="tokenize.template.*t.jinja") as e:
        prep(load_spec(spec))
    assert "UTF-8" in (e.value.hint or "")


@pytest.mark.parametrize("task", ["causal-lm", "classification"])
def test_a_weight_that_would_fill_the_disk_is_refused_before_writing(tmp_path: Path, llama_dir: Path,
                                                                     bert_dir: Path, ftc_home: Path,
                                                                     monkeypatch: pytest.MonkeyPatch, task: str):
    from ftc import prep as data_stage
    from ftc.errors import SourceError

    monkeypatch.setattr(data_stage, "_free_bytes", lambda: 200_000)  # a nearly full disk
    rows = [{"text": f"review number {i} was fine", "label": "ab"[i % 2]} for i in range(40)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    base, model = (bert_dir, {"task": "classification"}) if task == "classification" else (llama_dir, None)
    if task == "causal-lm":
        (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in rows))
    spec = write_spec(tmp_path / "spec.toml", base, [{"path": "d.jsonl", "weight": 1.0}], model)
    data_stage.prep(load_spec(spec))  # weight 1 fits
    spec = write_spec(tmp_path / "spec.toml", base, [{"path": "d.jsonl", "weight": 1000.0}], model)
    with pytest.raises(SourceError, match=r"source 'd' with `weight` = 1000: the training split would hold") as e:
        data_stage.prep(load_spec(spec))
    assert "weight" in (e.value.hint or "")
    assert len(list(ftc_home.glob("datasets-*/*/manifest.json"))) == 1  # only the weight-1 dataset



def test_a_disk_that_fills_while_a_split_is_written_is_one_line_and_stores_nothing(
        tmp_path: Path, llama_dir: Path, ftc_home: Path, monkeypatch: pytest.MonkeyPatch):
    import errno
    import os

    from click.testing import CliRunner

    from ftc import spool
    from ftc.cli import main

    def full(fd, data, at):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool.os, "pwrite", full)
    result = CliRunner().invoke(main, ["prep", str(chat_spec(tmp_path, llama_dir))])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "error: the disk is full" in result.output and "$FTC_HOME" in result.output
    assert not list(ftc_home.glob("datasets-*/*/manifest.json"))

# ── no code from a model directory runs unless the spec allows it ────────────────────────────

CUSTOM_CODE = '''
import os
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM

Path(os.environ["FTC_TEST_MARKER"]).write_text("ran")


class CustomConfig(LlamaConfig):
    pass


class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
'''


def remote_code_dir(tmp_path: Path, llama_dir: Path) -> Path:
    import shutil

    model = tmp_path / "custom-model"
    shutil.copytree(llama_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"}
    (model / "config.json").write_text(json.dumps(config))
    (model / "custom.py").write_text(CUSTOM_CODE)
    return model


def test_a_model_that_needs_remote_code_is_refused_before_any_prompt(tmp_path: Path, llama_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    from ftc.errors import ModelError

    monkeypatch.setenv("FTC_TEST_MARKER", str(tmp_path / "marker"))
    monkeypatch.setattr("sys.stdin", None)  # a prompt would fail here, not wait
    spec = chat_spec(tmp_path, remote_code_dir(tmp_path, llama_dir), train={"max_steps": 1})
    with pytest.raises(ModelError, match=r"config.json: the model needs its own Python code .*CustomConfig") as e:
        stages.build(load_spec(spec))
    assert "trust_remote_code = true" in (e.value.hint or "")
    assert not (tmp_path / "marker").exists()


def test_trust_remote_code_is_an_opt_in_recorded_by_the_run(tmp_path: Path, llama_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FTC_TEST_MARKER", str(tmp_path / "marker"))
    spec = chat_spec(tmp_path, remote_code_dir(tmp_path, llama_dir), train={"max_steps": 1, "batch_size": 4})
    text = spec.read_text().replace("[model]\n", "[model]\ntrust_remote_code = true\n")
    spec.write_text(text)
    run = stages.build(load_spec(spec))
    assert (tmp_path / "marker").read_text() == "ran"
    assert run.manifest["trust_remote_code"] is True and run.manifest["inputs"]["model"]["trust_remote_code"] is True


# ── the server: lengths, depth, numbers, clients that hang up ────────────────────────────────

def stub_generator(delay: float = 0.0):
    """Stands in for a loaded decoder: the server's own checks run, no model is needed."""
    import time
    from types import SimpleNamespace

    from ftc.runtime import Generation, Generator

    class Stub(Generator):
        def __init__(self) -> None:
            self.artifact = SimpleNamespace(variant="fp32", template=None, digest="0" * 64)

        def generate(self, prompt, max_new_tokens=128, **options):
            time.sleep(delay)
            return Generation("ok", [1], 1, "eos")

    return Stub()


@pytest.fixture
def stub_server():
    import threading

    from ftc.runtime.serve import make_server

    servers = []

    def start(delay: float = 0.0):
        server = make_server(stub_generator(delay), port=0, quiet=True, max_bytes=1000)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def raw_request(server, head: str, body: bytes = b"") -> tuple[int, dict]:
    import socket

    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("length", ["-1", "+5", "1_0", " 0x10", "9" * 40, "١٢"])
def test_a_negative_or_malformed_content_length_is_400(stub_server, length: str):
    server = stub_server()
    body = b'{"prompt": "hi"}' + b" " * 2000
    status, answer = raw_request(server, f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: {length}", body)
    assert status == 400 and "Content-Length" in answer["error"]


@pytest.mark.parametrize(("body", "field"), [
    ('{"prompt": "hi", "temperature": NaN}', "NaN"), ('{"prompt": "hi", "temperature": Infinity}', "Infinity"),
    ('{"prompt": "hi", "temperature": 1e999}', "temperature"), ('{"prompt": "hi", "top_p": -Infinity}', "Infinity"),
    ('{"prompt": "hi", "temperature": 0.5, "seed": %d}' % 2**70, "seed"),
    ('{"prompt": "hi", "temperature": 0.5, "seed": -1}', "seed"),
    ('{"prompt": "hi", "top_k": %d}' % 2**64, "top_k"), ('{"prompt": "hi", "top_p": 2}', "top_p"),
])
def test_numeric_fields_are_validated_with_the_field_named(stub_server, body: str, field: str):
    server = stub_server()
    status, answer = raw_request(server, f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}",
                                 body.encode())
    assert status == 400 and field in answer["error"], answer


@pytest.mark.parametrize("depth", [33, 100_000])
def test_deeply_nested_json_is_400(stub_server, depth: int):
    server = stub_server()
    server.max_bytes = 1 << 20
    body = ('{"prompt": "hi", "messages": ' + "[" * depth + "]" * depth + "}").encode()
    status, answer = raw_request(server, f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}",
                                 body)
    assert status == 400 and "nested deeper than 32" in answer["error"]


def test_a_client_that_hangs_up_leaves_no_traceback(stub_server, capfd: pytest.CaptureFixture):
    import socket
    import struct
    import time

    server = stub_server(delay=0.3)
    body = b'{"prompt": "hi"}'
    for _ in range(3):
        sock = socket.create_connection(server.server_address[:2], timeout=10)
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        sock.close()
    time.sleep(1.0)
    sock = socket.create_connection(server.server_address[:2], timeout=10)  # a half-sent body, then gone
    sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"pro")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    time.sleep(0.5)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err
    status, _ = raw_request(server, f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}", body)
    assert status == 200  # still serving


def test_cli_refuses_bad_limits_and_seeds_without_a_traceback(tmp_path: Path):
    from click.testing import CliRunner

    from ftc.cli import main

    for args in (["serve", str(tmp_path), "--max-bytes", "nan"], ["serve", str(tmp_path), "--max-bytes", "inf"],
                 ["serve", str(tmp_path), "--max-bytes", "lots"],
                 ["serve", str(tmp_path), "--max-bytes", "-5"],
                 ["infer", str(tmp_path), "--text", "hi", "--seed", str(2**70)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)
        assert ("--max-bytes" if "serve" in args else "--seed") in result.output


def test_a_ragged_csv_row_is_quarantined_with_its_line_not_the_whole_file(tmp_path: Path, llama_dir: Path):
    from ftc.prep import prep

    rows = [f"sentence number {i} about code,{i}" for i in range(30)]
    rows[6] = "a row with one field too many,6,extra"
    (tmp_path / "d.csv").write_text("text,n\n" + "\n".join(rows) + "\n", encoding="utf-8")
    result = prep(load_spec(write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.csv"}])))
    quarantined = [json.loads(x) for x in (result.path / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["line"], q["reason"]) for q in quarantined] == [(8, "ragged row: 3 fields, the header has 2")]
    assert result.manifest["stats"]["kept"] == 29


@pytest.mark.parametrize("value", [["a", "list"], {"a": "struct"}])
def test_a_parquet_column_of_the_wrong_type_names_file_and_column(tmp_path: Path, llama_dir: Path, value):
    import polars as pl

    from ftc.errors import SourceError
    from ftc.prep import prep

    pl.DataFrame({"text": [value] * 3}).write_parquet(tmp_path / "d.parquet")
    spec = load_spec(write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.parquet"}]))
    with pytest.raises(SourceError, match=r"d\.parquet: column 'text' holds .*, not text"):
        prep(spec)


class _Payload:
    def __reduce__(self):  # what a malicious checkpoint does: a call on unpickling
        return (print, ("unpickled: code ran",))


def test_a_pickled_checkpoint_that_would_run_code_is_refused_in_one_line(tmp_path: Path, llama_dir: Path,
                                                                        ftc_home: Path, capfd: pytest.CaptureFixture):
    import pickle
    import shutil

    base = shutil.copytree(llama_dir, tmp_path / "base")
    for f in base.glob("*.safetensors*"):
        f.unlink()
    with open(base / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Payload()}, f)
    spec = load_spec(chat_spec(tmp_path, base, train={"max_steps": 1}))
    with pytest.raises(BuildError, match="holds more than tensors") as e:
        stages.build(spec)
    assert "safetensors" in (e.value.hint or "")
    assert "code ran" not in capfd.readouterr().out


@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_a_row_longer_than_the_limit_is_quarantined_unread(tmp_path: Path, llama_dir: Path, fmt: str):
    from ftc import sources
    from ftc.prep import prep

    huge = "word " * (sources.MAX_ROW_BYTES // 5 + 10)
    texts = [f"a normal line number {i}" for i in range(40)]
    texts[4] = huge
    lines = [json.dumps({"text": t}) if fmt == "jsonl" else t for t in texts]
    (tmp_path / f"d.{fmt}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = prep(load_spec(write_spec(tmp_path / "spec.toml", llama_dir, [{"path": f"d.{fmt}"}],
                                       data_split={"valid": 0.0, "test": 0.0})))
    quarantined = [json.loads(x) for x in (result.path / "quarantine.jsonl").read_text().splitlines()]
    assert [(q["line"], q["reason"].split(":")[0]) for q in quarantined] == [(5, "row longer than 8 MiB")]
    assert result.manifest["stats"]["kept"] == 39

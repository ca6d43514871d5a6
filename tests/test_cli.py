"""The command line: exit codes, stdout/stderr split, summaries and errors as text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import write_spec

FTC = [sys.executable, "-m", "ftc.cli"]


def ftc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*FTC, *args], capture_output=True, text=True, cwd=cwd, env={**os.environ, "NO_COLOR": "1"})


@pytest.fixture
def spec(tmp_path: Path, bpe_dir: Path) -> Path:
    with open(tmp_path / "chat.jsonl", "w") as f:
        for i in range(40):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                             {"role": "assistant", "content": f"hello {i}"}]}) + "\n")
        f.write("{not json\n")
    return write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "chat.jsonl"}], tokenize={"max_length": 128})


def test_schema_is_json_of_every_table():
    schema = json.loads(ftc("schema").stdout)
    assert {"project", "model", "data", "tokenize", "train", "eval", "export"} <= set(schema["properties"])
    assert "learning_rate" in schema["$defs"]["Train"]["properties"]


@pytest.mark.parametrize("cmd", [[], ["validate"], ["prep"], ["inspect"], ["schema"], ["cache"], ["cache", "ls"],
                                 ["cache", "rm"], ["cache", "gc"]])
def test_help_everywhere(cmd):
    out = ftc(*cmd, "--help")
    assert out.returncode == 0 and "Usage:" in out.stdout


def test_validate_reports_without_traceback(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nbase = "m"\n[[data.sources]]\npath = "d.jsonl"\n[train]\nlearning_rat = 1\n')
    out = ftc("validate", str(bad))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "bad.toml:6: `train.learning_rat`: unknown key" in out.stderr
    assert "did you mean `learning_rate`?" in out.stderr
    assert out.stdout == ""


def test_validate_ok(spec: Path):
    out = ftc("validate", str(spec))
    assert out.returncode == 0 and "ok" in out.stderr


def test_prep_json_then_cache_hit(spec: Path):
    first = ftc("prep", str(spec), "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["cache"] == "miss" and data["rows_read"] == 41 and data["quarantined"] == 1 and data["kept"] == 40
    assert {"key", "dataset_dir", "tokens", "packed_rows", "packing_efficiency", "splits"} <= set(data)
    assert "quarantined" in first.stderr and "cache miss" in first.stderr
    second = ftc("prep", str(spec), "--json")
    assert json.loads(second.stdout)["cache"] == "hit" and "cache hit" in second.stderr


def test_build_json_is_the_only_thing_on_stdout(tmp_path: Path, llama_dir: Path):
    """transformers prints its training logs to stdout; `--json` output must still parse."""
    with open(tmp_path / "chat.jsonl", "w") as f:
        for i in range(80):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                             {"role": "assistant", "content": f"hello {i}"}]}) + "\n")
    s = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "chat.jsonl"}], tokenize={"max_length": 128},
                   data_split={"valid": 0.1, "test": 0.1},
                   train={"method": "lora", "max_steps": 2, "batch_size": 2, "logging_steps": 1})
    out = ftc("build", str(s), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["train"]["cache"] == "miss"
    # the training log moved to the run's build.log, not lost
    log = Path(json.loads(out.stdout)["train"]["run_dir"]) / "build.log"
    assert f"log {log}" in out.stderr and '"loss"' not in out.stderr
    assert '"loss"' in log.read_text(encoding="utf-8")


def test_inspect_marks_masked_tokens(spec: Path):
    ftc("prep", str(spec))
    out = ftc("inspect", str(spec), "--rows", "1")
    assert out.returncode == 0, out.stderr
    assert "⟦<|im_start|>system" in out.stderr and "<|im_start|>assistant\n⟧hello" in out.stderr
    assert "train row 0" in out.stderr


def test_inspect_unbuilt_spec_says_what_to_do(spec: Path):
    out = ftc("inspect", str(spec))
    assert out.returncode == 1 and "not built" in out.stderr and "ftc prep" in out.stderr


def test_missing_model_is_one_line_error(tmp_path: Path):
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    s = write_spec(tmp_path / "spec.toml", "no/such/model/dir", [{"path": "d.jsonl"}])
    out = ftc("prep", str(s))
    assert out.returncode == 1 and "Traceback" not in out.stderr and "no/such/model/dir" in out.stderr


def test_cache_ls_rm_gc(spec: Path):
    key = json.loads(ftc("prep", str(spec), "--json").stdout)["key"]
    listed = json.loads(ftc("cache", "ls", "--json").stdout)
    assert [e["key"] for e in listed] == [key]
    assert key[:12] in ftc("cache", "ls").stderr
    assert ftc("cache", "rm", key[:10]).returncode == 0
    assert json.loads(ftc("cache", "ls", "--json").stdout) == []
    assert ftc("cache", "rm", "feedface").returncode == 1
    assert "removed 0" in ftc("cache", "gc").stderr


def test_prep_and_inspect_show_the_funnel_with_examples(tmp_path: Path, bpe_dir: Path):
    rows = [{"prompt": f"question {i}", "response": f"answer number {i}"} for i in range(30)]
    rows += [{"prompt": "QUESTION 3", "response": "answer  number 3"}, {"prompt": "lorem ipsum", "response": "x y"}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    s = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.jsonl"}],
                   data_clean={"dedup": "exact", "drop_if_matches": ["(?i)lorem"]})
    out = ftc("prep", str(s), "--json")
    assert out.returncode == 0, out.stderr
    assert "funnel: read 32 → quarantined −0 → cleaned −1 → deduped −1 → split 30" in out.stderr
    funnel = {f["stage"]: f for f in json.loads(out.stdout)["funnel"]}
    assert funnel["cleaned"]["rules"] == {"drop_if_matches[0]: (?i)lorem": 1}
    assert funnel["deduped"]["rules"] == {"exact": 1}
    shown = ftc("inspect", str(s)).stderr
    assert "deduped: exact: 1" in shown and "(duplicate of d:4)" in shown and "'user: QUESTION 3" in shown


def test_chunking_chat_data_is_refused(tmp_path: Path, bpe_dir: Path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    s = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.jsonl"}], tokenize={"truncation": "chunk"})
    out = ftc("prep", str(s))
    assert out.returncode == 1 and "raw text" in out.stderr


def test_without_the_train_extra_prep_works_and_build_names_the_extra(spec: Path):
    """`pip install ftc` alone (no torch, transformers, peft): the data stage runs, and a command
    that trains says which extra to install, in one line and no traceback."""
    blocker = ("import sys\n"
               "class Absent:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('torch', 'transformers', 'peft', 'datasets', 'accelerate'):\n"
               "            raise ModuleNotFoundError(name, name=name)\n"
               "sys.meta_path.insert(0, Absent())\n"
               "from ftc.cli import main\n"
               "main()\n")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", blocker, *args], capture_output=True, text=True,
                              env={**os.environ, "NO_COLOR": "1"})

    assert run("prep", str(spec)).returncode == 0
    built = run("build", str(spec))
    assert built.returncode == 1 and "Traceback" not in built.stderr
    assert "is not installed" in built.stderr and "pip install 'ftc[train]'" in built.stderr

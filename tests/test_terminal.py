"""`ftc build` on the terminal: its progress and summary, and nothing the libraries print —
warnings, log lines, raw writes to file descriptor 2 and the Trainer's log dicts go to the
run's build.log, or to stderr with `-v`."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftc import train
from ftc.cli import main
from test_train import chat_rows, write_jsonl
from tiny import write_spec

DICT = re.compile(r"\{['\"]\w+['\"]\s*:")  # a printed Python dict or JSON object


@pytest.fixture
def noisy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training meets what libraries do: a FutureWarning, a logging warning, a C-level write."""
    make = train.training_arguments

    def training_arguments(*args, **kwargs):
        warnings.warn("library says this is deprecated", FutureWarning, stacklevel=1)
        logging.getLogger("somelib").warning("somelib: a log line")
        os.write(2, b"c-level noise\n")
        return make(*args, **kwargs)

    monkeypatch.setattr(train, "training_arguments", training_arguments)


def _build(tmp_path: Path, llama_dir: Path, *flags: str):
    write_jsonl(tmp_path / "d.jsonl", chat_rows(40))
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], tokenize={"max_length": 512},
                      train={"max_steps": 4, "batch_size": 4, "logging_steps": 1, "eval_steps": 2})
    return CliRunner().invoke(main, ["build", str(spec), "--json", *flags])


def test_build_prints_no_library_output(tmp_path: Path, llama_dir: Path, noisy: None):
    result = _build(tmp_path, llama_dir)
    assert result.exit_code == 0, result.stderr
    for word in ("Warning", "warning", "Traceback", "somelib", "c-level noise", "deprecated", "Loading weights"):
        assert word not in result.stderr, (word, result.stderr)
    assert not DICT.search(result.stderr), result.stderr
    run = Path(json.loads(result.stdout)["train"]["run_dir"])
    assert f"log {run / 'build.log'}" in result.stderr
    log = (run / "build.log").read_text(encoding="utf-8")
    for line in ("FutureWarning: library says this is deprecated", "somelib WARNING somelib: a log line",
                 "c-level noise"):
        assert line in log, line
    steps = [json.loads(x.split(" INFO ", 1)[1]) for x in log.splitlines() if " ftc.train INFO " in x]
    assert [s["step"] for s in steps if "loss" in s] == [1, 2, 3, 4]
    assert any("eval_loss" in s for s in steps)


def test_verbose_shows_it(tmp_path: Path, llama_dir: Path, noisy: None):
    result = _build(tmp_path, llama_dir, "-v")
    assert result.exit_code == 0, result.stderr
    # transformers' own progress bar, and ftc's record of the Trainer's logs
    assert "Loading weights" in result.stderr
    assert re.search(r'\{"step": 4, "loss"', result.stderr), result.stderr

"""Builds in two processes (gloo on CPU): the same training as one process with the same global
batch, the dataset built once, one run in the store; a killed rank fails the build and the
next build resumes from the last checkpoint; strategies that cannot run here say so."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from tiny import write_spec

from ftc import build as stages
from ftc import store
from ftc.cli import main
from ftc.specload import load_spec

TRAIN = {"method": "lora", "learning_rate": 1e-2, "logging_steps": 1, "lora": {"dropout": 0.0}}


def _spec(folder: Path, llama_dir: Path, name: str, batch_size: int, **train: object) -> Path:
    rng = random.Random(0)
    words = "the model learns to answer short questions about numbers and code".split()
    rows = [{"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(2, 20))),
             "response": " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))} for _ in range(120)]
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return write_spec(folder / f"{name}.toml", llama_dir, [{"path": "d.jsonl"}], tokenize={"max_length": 128},
                      data_split={"valid": 0.0, "test": 0.1},
                      train={**TRAIN, "max_steps": 6, "batch_size": batch_size, **train})


def _ftc(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"FTC_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "ftc.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


def _losses(run: Path) -> list[float]:
    history = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["log_history"]
    return [e["loss"] for e in history if "loss" in e]


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path: Path, llama_dir: Path, ftc_home: Path):
    from safetensors.torch import load_file

    two = _ftc("build", str(_spec(tmp_path, llama_dir, "two", 4)), "--nproc", "2", "--json", home=ftc_home)
    assert two.returncode == 0, two.stderr
    summary = json.loads(two.stdout)
    assert summary["data"]["cache"] == "miss" and "rank" not in two.stderr, two.stderr
    one = stages.build(load_spec(_spec(tmp_path, llama_dir, "one", 8)))
    assert one.data.cache_hit, one.data  # the dataset two processes built, once
    run2 = Path(summary["train"]["run_dir"])
    assert one.path != run2 and store.read_manifest(run2)["inputs"]["distributed"]["global_batch"] == 8
    a, b = _losses(one.path), _losses(run2)
    assert len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5, (a, b)
    wa = load_file(one.path / "model" / "adapter_model.safetensors")
    wb = load_file(run2 / "model" / "adapter_model.safetensors")
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    entries = [e for e in store.entries() if e.bucket == store.DATASETS]
    assert len(entries) == 1 and not list((ftc_home / "runs-v1").glob(".tmp-*"))
    assert (run2 / "report.md").is_file() and (run2 / "model" / "README.md").is_file()
    # a global batch the per-device one cannot make is a different run, not silently the same
    four = _ftc("build", str(_spec(tmp_path, llama_dir, "two", 4)), "--json", home=ftc_home)
    assert json.loads(four.stdout)["train"]["run_dir"] not in (str(run2), str(one.path))


def _rank(launcher: int, rank: int) -> int | None:
    """The pid of the launcher's child process of `rank`."""
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().split()[3]) != launcher:
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(proc.name)
    return None


def test_a_killed_rank_fails_the_build_and_the_next_build_resumes(tmp_path: Path, llama_dir: Path, ftc_home: Path):
    spec = _spec(tmp_path, llama_dir, "long", 4, max_steps=80, save_steps=5, logging_steps=10)
    env = os.environ | {"FTC_HOME": str(ftc_home)}
    launcher = subprocess.Popen([sys.executable, "-m", "ftc.cli", "build", str(spec), "--nproc", "2"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((ftc_home / "work").glob("*/checkpoint-10/trainer_state.json")):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.02)
    pid = _rank(launcher.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _, err = launcher.communicate(timeout=120)
    assert launcher.returncode != 0 and "rank 1 of 2 failed (exit -9)" in err, err
    assert not [e for e in store.entries() if e.bucket == "runs-v1"]  # nothing half-written
    again = _ftc("build", str(spec), "--nproc", "2", "--json", home=ftc_home)
    assert again.returncode == 0, again.stderr
    timing = json.loads(again.stdout)["train"]["timing"]
    assert timing["resumed_from"] is not None and int(timing["resumed_from"].split("-")[1]) >= 10
    assert timing["steps"] == 80


def test_strategies_that_cannot_run_here_say_so(tmp_path: Path, llama_dir: Path):
    for table, message in (({"strategy": "fsdp"}, "shards on GPUs"),
                           ({"strategy": "deepspeed"}, "needs DeepSpeed, which is not installed")):
        spec = _spec(tmp_path, llama_dir, table["strategy"], 4, distributed=table)
        out = CliRunner().invoke(main, ["build", str(spec), "--nproc", "2"])
        assert out.exit_code == 1 and message in out.output and "Traceback" not in out.output, out.output
    spec = _spec(tmp_path, llama_dir, "bad", 4, distributed={"zero_stage": 3})
    out = CliRunner().invoke(main, ["validate", str(spec)])
    assert out.exit_code != 0 and "train.distributed" in out.output and "`zero_stage` is a setting of strategy " \
        "`deepspeed`, not `ddp`" in out.output, out.output


def test_one_process_ignores_the_distributed_table(tmp_path: Path, llama_dir: Path):
    from ftc.model import resolve_model

    plain = load_spec(_spec(tmp_path, llama_dir, "plain", 4))
    ddp = load_spec(_spec(tmp_path, llama_dir, "ddp", 4, distributed={"strategy": "ddp"}))
    model = resolve_model(plain.model.base, plain.root)
    key = lambda s, n: store.key_of(stages.train_inputs(s, "data", model, world_size=n))  # noqa: E731
    assert key(plain, 1) == key(ddp, 1) != key(ddp, 2)
    assert stages.train_inputs(ddp, "data", model, world_size=2)["distributed"]["global_batch"] == 8

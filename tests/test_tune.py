"""`ftc tune`: trials share one dataset, each is a cached build; a killed study continues
without redoing finished trials; pruning stops a trailing trial and stores nothing of it;
`best.toml` is a cache hit on the best trial's run; a bad search space is a spec error."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from tiny import write_spec

from ftc import build as stages
from ftc import prep, store, tune
from ftc.cli import main
from ftc.specload import load_spec

TUNE = """
# the search: learning rate and batch size
[tune]
trials = {trials}
metric = "{metric}"
startup_trials = 1
"train.learning_rate" = {{ log_uniform = [1e-5, 3e-3] }}
"train.batch_size" = {{ choice = [4, 8] }}
"""


def _spec(folder: Path, bert_dir: Path, trials: int = 4, metric: str = "accuracy", valid: float = 0.2) -> Path:
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog model data".split()
    rows = [{"text": " ".join(rng.choice(words) for _ in range(6)) + (" good" if i % 2 else " clean"),
             "label": "pos" if i % 2 else "neg"} for i in range(240)]
    (folder / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    path = write_spec(folder / "spec.toml", bert_dir, [{"path": "d.jsonl"}], model={"task": "classification"},
                      tokenize={"max_length": 32}, data_split={"valid": valid, "test": 0.2},
                      train={"method": "full", "max_steps": 90, "batch_size": 8, "eval_steps": 30,
                             "logging_steps": 30})
    path.write_text(path.read_text(encoding="utf-8") + TUNE.format(trials=trials, metric=metric), encoding="utf-8")
    return path


def test_a_study_shares_one_dataset_and_best_toml_reuses_the_best_run(tmp_path: Path, bert_dir: Path):
    path = _spec(tmp_path, bert_dir)
    out = CliRunner().invoke(main, ["tune", str(path), "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    done = [t for t in summary["trials"] if t["state"] == "complete"]
    assert len(summary["trials"]) == 4 and len(done) >= 2 and all(f"trial {t['number']:>3}" in out.stderr
                                                                   for t in summary["trials"])
    runs = {t["run"] for t in done}
    assert len(runs) == len(done) and len({store.read_manifest(Path(r))["data_key"] for r in runs}) == 1
    assert len([e for e in store.entries() if e.bucket == store.DATASETS]) == 1
    best = summary["best"]
    assert best["value"] == max(t["value"] for t in done) and best["test"]["accuracy"] > 0
    best_spec = load_spec(summary["best_spec"])  # validates; comments and [tune] kept
    assert "# the search" in best_spec.text and best_spec.train.learning_rate == best["params"]["train.learning_rate"]
    again = stages.build(best_spec)
    assert again.cache_hit and str(again.path) == best["run"]
    report = (Path(summary["study"]) / "report.md").read_text(encoding="utf-8")
    assert f"**Best: trial {best['number']}**" in report and (Path(summary["study"]) / "metric.png").is_file()
    rerun = CliRunner().invoke(main, ["tune", str(path), "--json"])  # the study is complete: nothing runs
    assert json.loads(rerun.stdout)["trials"] == summary["trials"]


def test_a_killed_study_continues_without_redoing_finished_trials(tmp_path: Path, bert_dir: Path, ftc_home: Path):
    path = _spec(tmp_path, bert_dir, trials=5)
    s = load_spec(path)
    env = os.environ | {"FTC_HOME": str(ftc_home)}
    proc = subprocess.Popen([sys.executable, "-m", "ftc.cli", "tune", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    study = None
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        if (ftc_home / tune.TUNE).is_dir():
            study = study or tune.open_study(s, prep.dataset_key(s))[0]
            if tune.counted(study) >= 2:
                break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: (t.value, t.user_attrs["run"]) for t in study.get_trials() if t.state.name == "COMPLETE"}
    created = {n: store.read_manifest(Path(run))["created"] for n, (_, run) in before.items()}
    out = CliRunner().invoke(main, ["tune", str(path), "--json"])
    assert out.exit_code == 0, out.output
    trials = json.loads(out.stdout)["trials"]
    assert len([t for t in trials if t["state"] in ("complete", "pruned")]) == 5
    for n, (value, run) in before.items():  # kept as they were, their runs not rebuilt
        assert trials[n]["value"] == value and store.read_manifest(Path(run))["created"] == created[n]


def test_pruning_stops_a_trailing_trial_and_stores_nothing_of_it(tmp_path: Path, bert_dir: Path):
    path = _spec(tmp_path, bert_dir, trials=2, metric="loss")
    s = load_spec(path)
    study, _ = tune.open_study(s, prep.dataset_key(s))
    study.enqueue_trial({"train.learning_rate": 3e-3, "train.batch_size": 8})
    study.enqueue_trial({"train.learning_rate": 1e-5, "train.batch_size": 8})  # barely moves: trails at step 60
    result = tune.tune(s, path, line=lambda _: None)
    states = [t["state"] for t in result.trials]
    assert states == ["complete", "pruned"], result.trials
    assert len([e for e in store.entries() if e.bucket == "runs-v1"]) == 1


def test_a_trial_trailing_only_at_its_last_evaluation_is_kept(tmp_path: Path, bert_dir: Path):
    path = _spec(tmp_path, bert_dir, trials=2, metric="loss")
    text = path.read_text(encoding="utf-8")
    path.write_text(re.sub(r"(?m)^eval_steps = 30$", "eval_steps = 90", text), encoding="utf-8")
    s = load_spec(path)
    assert s.train.eval_steps == s.train.max_steps == 90  # evaluated once, at the end
    study, _ = tune.open_study(s, prep.dataset_key(s))
    study.enqueue_trial({"train.learning_rate": 3e-3, "train.batch_size": 8})
    study.enqueue_trial({"train.learning_rate": 1e-5, "train.batch_size": 8})  # trails, but its training is done
    result = tune.tune(s, path, line=lambda _: None)
    assert [t["state"] for t in result.trials] == ["complete", "complete"], result.trials
    assert result.trials[1]["value"] > result.trials[0]["value"]  # it did trail: the pruner would have said so


def test_a_bad_search_space_is_a_spec_error(tmp_path: Path, bert_dir: Path):
    path = _spec(tmp_path, bert_dir)
    text = path.read_text(encoding="utf-8")
    for wrong, message in (('"train.batch_size"', '"train.lora.rank"'), ('metric = "accuracy"', 'metric = "bleu"')):
        path.write_text(text.replace(*(wrong, message)), encoding="utf-8")
        out = CliRunner().invoke(main, ["validate", str(path)])
        assert out.exit_code != 0 and ("train.lora.rank" in out.output or "bleu" in out.output), out.output
    path.write_text(text.replace("choice = [4, 8]", "choice = [4, 0]"), encoding="utf-8")
    out = CliRunner().invoke(main, ["tune", str(path)])
    assert out.exit_code == 1 and "train.batch_size" in out.output and "Traceback" not in out.output, out.output
    out = CliRunner().invoke(main, ["tune", str(_spec(tmp_path, bert_dir, valid=0.0))])
    assert out.exit_code == 1 and "data.split.valid" in out.output, out.output


def test_jobs_share_the_study_without_repeating_or_overshooting(tmp_path: Path, bert_dir: Path):
    path = _spec(tmp_path, bert_dir, trials=4)
    out = CliRunner().invoke(main, ["tune", str(path), "--jobs", "2", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    trials = summary["trials"]
    assert len(trials) == 4 and len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 4
    assert (Path(summary["study"]) / "worker-1.log").is_file()


def test_edited_data_is_another_study(tmp_path: Path, bert_dir: Path):
    path = _spec(tmp_path, bert_dir)

    def folder() -> Path:
        s = load_spec(path)
        return tune.open_study(s, prep.dataset_key(s))[1]

    before = folder()
    assert folder() == before  # the same spec and data: the same study
    data = tmp_path / "d.jsonl"
    data.write_text(data.read_text(encoding="utf-8") + '{"text": "one more row", "label": "pos"}\n', encoding="utf-8")
    assert folder() != before

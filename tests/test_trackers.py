"""`train.report_to`: the trackers run offline and their files stay with the run; the MLflow
file store is read back with MLflow's own client. Trackers are not part of the run's key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftc import build as stages
from ftc.errors import BuildError
from ftc.specload import load_spec
from test_train import chat_rows, write_jsonl
from tiny import write_spec


def _spec(tmp_path: Path, llama_dir: Path, **train: object) -> Path:
    write_jsonl(tmp_path / "d.jsonl", chat_rows(40))
    return write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], tokenize={"max_length": 512},
                      train={"max_steps": 3, "batch_size": 4, "logging_steps": 1, "learning_rate": 3e-4, **train})


def test_mlflow_file_store_holds_the_training_log(tmp_path: Path, llama_dir: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = stages.build(load_spec(_spec(tmp_path, llama_dir, report_to=["mlflow", "tensorboard"])))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the reader's side of the opt-in
    assert (result.path / "tensorboard").is_dir()
    client = MlflowClient(tracking_uri=(result.path / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("test")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    losses = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")]
    assert [s for s, _ in losses] == [1, 2, 3]
    assert all(0 < v < 20 for _, v in losses)
    assert float(run.data.params["learning_rate"]) == pytest.approx(3e-4)
    # The tracker is not part of the key: asking for TensorBoard alone reuses the run.
    again = stages.build(load_spec(_spec(tmp_path, llama_dir)))
    assert again.cache_hit and again.path == result.path


def test_a_tracker_that_is_not_installed_is_named(tmp_path: Path, llama_dir: Path, monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find(name, *a))
    with pytest.raises(BuildError, match="names wandb, which is not installed") as e:
        stages.build(load_spec(_spec(tmp_path, llama_dir, report_to=["wandb"])))
    assert "pip install wandb" in e.value.render()

"""Model cards (README.md of a run's `model/` and of the merged weights): read back with
huggingface_hub's own parser, their metadata equals the run's files, their loading code loads
the model the run trained. Two tiny runs (a LoRA BERT classifier, a fully fine-tuned Llama)
and one merge, built once for the module in a store its tests share."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from ftc import build as stages
from ftc import export, model_card, store, tasks
from ftc.specload import load_spec
from huggingface_hub import ModelCard
from tiny import write_spec

HUB_NAME = "ftc-tests/tiny-bert"  # what the classifier's base config says it was saved from


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ftc-home")


@pytest.fixture(autouse=True)
def ftc_home(shared_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FTC_HOME", str(shared_home))
    return shared_home


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _build(spec: Path, home: Path) -> export.Run:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTC_HOME", str(home))
        return export.find_run(stages.build(load_spec(spec)).path)


@pytest.fixture(scope="module")
def classifier(shared_home: Path, bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> export.Run:
    """LoRA with settings that are no defaults, two sources, the base evaluated too."""
    folder = tmp_path_factory.mktemp("cls")
    base = shutil.copytree(bert_dir, folder / "bert")
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "_name_or_path": HUB_NAME}))
    words = "the quick brown fox jumps over lazy dog model data".split()
    rows = [{"text": " ".join(words[(i * 7 + j) % len(words)] for j in range(5)) + (" good" if i % 2 else " clean"),
             "label": "pos" if i % 2 else "neg"} for i in range(160)]
    _jsonl(folder / "a.jsonl", rows[:100])
    _jsonl(folder / "b.jsonl", rows[100:])
    spec = write_spec(folder / "spec.toml", base, [{"path": "a.jsonl"}, {"path": "b.jsonl", "name": "extra"}],
                      model={"task": "classification"}, tokenize={"max_length": 32},
                      data_split={"valid": 0.0, "test": 0.25}, eval={"compare_base": True},
                      train={"method": "lora", "max_steps": 4, "batch_size": 8, "learning_rate": 0.02,
                             "logging_steps": 50, "lora": {"r": 4, "alpha": 8, "dropout": 0.1,
                                                           "target_modules": ["query", "value"]}})
    spec.write_text(spec.read_text().replace('name = "test"', 'name = "card-test"\nseed = 7'))
    return _build(spec, shared_home)


@pytest.fixture(scope="module")
def merged(classifier: export.Run, shared_home: Path) -> export.ExportResult:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTC_HOME", str(shared_home))
        return export.export(classifier, export.override(classifier.export, rows=8))


@pytest.fixture(scope="module")
def full_lm(shared_home: Path, llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> export.Run:
    folder = tmp_path_factory.mktemp("lm")
    words = "the model learns to answer short questions about numbers and code".split()
    _jsonl(folder / "chat.jsonl", [{"prompt": " ".join(words[i % 5:i % 5 + 4]), "response": " ".join(words[i % 7:])}
                                   for i in range(40)])
    spec = write_spec(folder / "spec.toml", llama_dir, [{"path": "chat.jsonl"}], tokenize={"max_length": 128},
                      data_split={"valid": 0.0, "test": 0.2},
                      train={"method": "full", "max_steps": 2, "batch_size": 2, "learning_rate": 1e-3,
                             "logging_steps": 50})
    return _build(spec, shared_home)


def _card(folder: Path) -> tuple[dict[str, Any], ModelCard]:
    card = ModelCard((folder / "README.md").read_text(encoding="utf-8"))
    return card.data.to_dict(), card


def _run_metrics(run: export.Run) -> dict[str, Any]:
    return json.loads((run.path / "metrics.json").read_text(encoding="utf-8"))


def _dataset(run: export.Run) -> dict[str, Any]:
    return store.read_manifest(store.lookup(store.DATASETS, run.manifest["data_key"]))


def _trained(run: export.Run) -> Any:
    from transformers import AutoTokenizer

    return export.load_trained(run, AutoTokenizer.from_pretrained(run.path / "model"))


def _floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def _evaluated(card: ModelCard) -> dict[str, float]:
    return {r.metric_type: r.metric_value for r in card.data.eval_results or []}


def _load_with_snippet(card: ModelCard, folder: Path) -> Any:
    """Runs the card's Python block with FOLDER pointing at `folder`; returns its `model`."""
    code = re.search(r"```python\n(.*?)\n```", card.text, re.DOTALL).group(1)
    assert 'FOLDER = "."' in code
    scope: dict[str, Any] = {}
    exec(code.replace('FOLDER = "."', f"FOLDER = {str(folder)!r}"), scope)  # noqa: S102 (our own card)
    return scope["model"].eval()


def _logits(model: Any) -> torch.Tensor:
    ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 20, 21, 22, 3, 0]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=(ids != 0).long()).logits


def test_adapter_card_metadata_is_the_runs(classifier: export.Run):
    meta, card = _card(classifier.path / "model")
    metrics = _run_metrics(classifier)
    assert meta["base_model"] == HUB_NAME and meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-classification" and meta["tags"] == ["ftc", "lora"]
    assert meta["datasets"] == ["a.jsonl", "b.jsonl"]
    assert _evaluated(card) == _floats(metrics["metrics"]) and len(_evaluated(card)) >= 7
    assert {r.dataset_split for r in card.data.eval_results} == {"test"}
    assert meta["model-index"][0]["name"] == "card-test"


def test_adapter_card_body_holds_the_runs_figures(classifier: export.Run):
    _, card = _card(classifier.path / "model")
    body, metrics, data = card.text, _run_metrics(classifier), _dataset(classifier)
    for setting, value in (("lora.r", "4"), ("lora.alpha", "8"), ("lora.dropout", "0.1"), ("learning_rate", "0.02"),
                           ("max_steps", "4"), ("batch_size", "8"), ("max_length", "32"), ("seed", "7"),
                           ("steps trained", str(metrics["timing"]["steps"]))):
        assert f"| {setting} | {value} |" in body
    assert "| adapter target modules | `query, value` |" in body
    assert f"`{classifier.manifest['inputs']['model']['base']}`" in body  # the local path stays in the body
    for name, split in data["stats"]["splits"].items():
        assert re.search(rf"^\| {name} \| {split['examples']:,} \| {split['tokens']:,} \|", body, re.MULTILINE)
    for src in data["stats"]["sources"]:
        e = src["examples"]
        assert f"| {src['name']} | " in body and f"| {e['train']} | {e['valid']} | {e['test']} |" in body
    for name, tuned in _floats(metrics["metrics"]).items():  # tuned and base side by side
        base = metrics["base_metrics"][name]
        assert f"| {name} | {tuned:.4f} | {base:.4f} | {tuned - base:+.4f} |" in body
    assert metrics["keys"]["train"] in body and metrics["keys"]["data"] in body
    assert classifier.spec_text.strip() in body


def test_adapter_card_loading_code_loads_the_trained_model(classifier: export.Run):
    _, card = _card(classifier.path / "model")
    model = _load_with_snippet(card, classifier.path / "model")
    from peft import PeftModel

    assert isinstance(model, PeftModel)
    assert list(model.config.id2label.values()) == classifier.manifest["labels"] == ["neg", "pos"]
    reference = _trained(classifier)
    assert torch.allclose(_logits(model), _logits(reference), atol=1e-5)


def test_merged_card_says_transformers(classifier: export.Run, merged: export.ExportResult):
    folder = merged.path / "merged"
    meta, card = _card(folder)
    assert not (folder / "adapter_config.json").exists()
    assert meta["library_name"] == "transformers" and meta["base_model"] == HUB_NAME
    assert meta["pipeline_tag"] == "text-classification" and meta["tags"] == ["ftc", "lora", "merged"]
    assert _evaluated(card) == _floats(_run_metrics(classifier)["metrics"])
    assert merged.key in card.text and classifier.key in card.text
    model = _load_with_snippet(card, folder)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert torch.allclose(_logits(model), _logits(_trained(classifier)), atol=1e-5)


def test_full_weights_card(full_lm: export.Run, llama_dir: Path):
    meta, card = _card(full_lm.path / "model")
    metrics = _run_metrics(full_lm)
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert meta["tags"] == ["ftc", "full"] and meta["datasets"] == ["chat.jsonl"]
    assert "base_model" not in meta  # a local model that names no hub id: the path is in the body
    assert f"`{llama_dir}`" in card.text
    assert _evaluated(card) == _floats(metrics["metrics"]) and "perplexity" in _evaluated(card)
    assert metrics["base_metrics"] is None and "| metric | tuned |\n" in card.text
    model = _load_with_snippet(card, full_lm.path / "model")
    assert type(model).__name__ == "LlamaForCausalLM"


def test_pipeline_tags_are_the_hubs_and_match_the_model_class():
    from huggingface_hub.inference._generated import types as hub_tasks
    from transformers.pipelines import SUPPORTED_TASKS

    for name in tasks.REGISTRY:
        task = tasks.get(name)
        assert hasattr(hub_tasks, task.pipeline_tag.replace("-", "_")), task.pipeline_tag
        if task.pipeline_tag in SUPPORTED_TASKS:  # transformers 5 no longer ships every pipeline
            assert task.auto_class() in SUPPORTED_TASKS[task.pipeline_tag]["pt"]
    # tasks share a tag only where they share the model class (a reward model is a one-output classifier)
    kinds = {(tasks.get(n).pipeline_tag, tasks.get(n).auto_class()) for n in tasks.REGISTRY}
    assert len({tag for tag, _ in kinds}) == len(kinds) >= 4


def test_base_model_id(tmp_path: Path):
    snapshot = tmp_path / "hub" / "models--org--some-model" / "snapshots" / "abc123"
    assert model_card.base_model_id(snapshot) == ("org/some-model", True)
    local = tmp_path / "local"
    local.mkdir()
    assert model_card.base_model_id(local) == (None, False)
    for name, found in (("/home/me/model", None), ("org/name", "org/name"), ("../x/y", None), ("a/b/c", None)):
        (local / "config.json").write_text(json.dumps({"_name_or_path": name}))
        assert model_card.base_model_id(local) == (found, False)

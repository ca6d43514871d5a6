"""`[train.forgetting]`: the retained data evaluated before and after, replay, and EWC (its
Fisher stored once; its penalty exact for plain weights and LoRA's merged delta; and that it
measurably keeps what the base knew)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from test_train import write_jsonl
from tiny import write_spec

from ftc import build as stages
from ftc import forgetting, store
from ftc.errors import FtcError
from ftc.specload import load_spec

FIRST = "red green blue yellow purple orange black white grey pink".split()
SECOND = "one two three four five six seven eight nine ten".split()


def rows(words: list[str], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randrange(len(words))
        seq = [words[(start + k) % len(words)] for k in range(rng.randint(4, 12))]  # a sequence to learn
        out.append({"prompt": " ".join(seq[:2]), "response": " ".join(seq[2:])})
    return out


@pytest.fixture(scope="module")
def first_task(tmp_path_factory: pytest.TempPathFactory, llama_dir: Path) -> tuple[Path, Path]:
    """A model that learnt the first task (full fine-tune of the tiny Llama), and that task's data."""
    import os

    tmp = tmp_path_factory.mktemp("first")
    old = os.environ.get("FTC_HOME")
    os.environ["FTC_HOME"] = str(tmp / "home")
    try:
        write_jsonl(tmp / "first.jsonl", rows(FIRST, 200, 0))
        spec = write_spec(tmp / "spec.toml", llama_dir, [{"path": "first.jsonl"}], tokenize={"max_length": 128},
                          data_split={"valid": 0.0, "test": 0.1},
                          train={"method": "full", "max_steps": 60, "batch_size": 8, "learning_rate": 3e-3})
        run = stages.build(load_spec(spec))
    finally:
        if old is None:
            del os.environ["FTC_HOME"]
        else:
            os.environ["FTC_HOME"] = old
    return run.path / "model", tmp / "first.jsonl"


def second_spec(tmp: Path, base: Path, first: Path, **forget: object) -> Path:
    tmp.mkdir(exist_ok=True)
    write_jsonl(tmp / "second.jsonl", rows(SECOND, 200, 1))
    (tmp / "first.jsonl").write_bytes(first.read_bytes())
    return write_spec(tmp / "spec.toml", base, [{"path": "second.jsonl"}], tokenize={"max_length": 128},
                      data_split={"valid": 0.0, "test": 0.1}, eval={"compare_base": True},
                      train={"method": "full", "max_steps": 40, "batch_size": 8, "learning_rate": 3e-3,
                             "forgetting": {"retain": [{"path": "first.jsonl"}], **forget}})


def test_ewc_keeps_the_first_task_better_than_none_at_the_same_steps(tmp_path: Path, first_task):
    base, first = first_task
    none = stages.build(load_spec(second_spec(tmp_path / "a", base, first)))
    ewc = stages.build(load_spec(second_spec(tmp_path / "b", base, first,
                                             ewc={"lambda": 2000.0, "fisher_rows": 64})))
    cost = {name: r.manifest["forgetting"]["tuned"]["loss"] - r.manifest["forgetting"]["base"]["loss"]
            for name, r in (("none", none), ("ewc", ewc))}
    assert none.manifest["forgetting"]["base"] == ewc.manifest["forgetting"]["base"]  # the same base, same rows
    assert cost["none"] > 0.3  # the second task made the model forget the first
    assert cost["ewc"] < 0.7 * cost["none"], cost
    for r in (none, ewc):  # both learnt the second task
        assert r.manifest["metrics"]["loss"] < r.manifest["base_metrics"]["loss"] - 0.5
    assert "## Forgetting" in (ewc.path / "report.md").read_text(encoding="utf-8")
    # the Fisher is stored once, and a run with other hyperparameters reuses it
    fishers = [e for e in store.entries() if e.bucket == forgetting.FISHER]
    assert len(fishers) == 1
    stages.build(load_spec(second_spec(tmp_path / "c", base, first, ewc={"lambda": 500.0, "fisher_rows": 64})))
    assert [e.key for e in store.entries() if e.bucket == forgetting.FISHER] == [fishers[0].key]


def test_replay_mixes_the_asked_fraction_of_retained_examples(tmp_path: Path, first_task):
    base, first = first_task
    r = stages.build(load_spec(second_spec(tmp_path, base, first, replay=0.25)))
    replayed = r.manifest["forgetting"]["replayed_examples"]
    own = r.data.manifest["stats"]["splits"]["train"]["examples"]
    assert 0.2 <= replayed / (own + replayed) <= 0.3
    assert not list(store.home().rglob("cache-*.arrow"))  # the store's datasets are read, never written


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_penalty_is_lambda_fisher_times_the_squared_change(llama_dir: Path, method: str):
    import peft
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    fisher = {n: torch.rand(p.shape, generator=g) for n, p in model.named_parameters()}
    if method == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    penalty = forgetting.penalty(model, fisher, 3.0)  # θ₀: the weights as training starts
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.01)
    value = penalty()
    merged = model.merge_and_unload() if method == "lora" else model
    expected = 3.0 * sum((fisher[n] * (p.detach() - base[n]) ** 2).sum() for n, p in merged.named_parameters())
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-7)
    assert float(value) > 0


def test_replay_and_ewc_need_retained_data_and_a_method_with_weights(tmp_path: Path, llama_dir: Path):
    write_jsonl(tmp_path / "d.jsonl", rows(FIRST, 4, 0))
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], train={"forgetting": {"replay": 0.1}})
    with pytest.raises(FtcError, match="give `retain` sources too"):
        load_spec(spec)
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}],
                      train={"method": "ia3", "forgetting": {"retain": [{"path": "d.jsonl"}], "ewc": {"lambda": 1.0}}})
    with pytest.raises(FtcError, match="forgetting.ewc"):
        load_spec(spec)


def test_build_prints_the_retained_data_before_and_after():
    from ftc.cli import _technique_lines

    lines = _technique_lines({"forgetting": {"base": {"loss": 2.7, "perplexity": 15.8, "tokens": 9},
                                             "tuned": {"loss": 3.1, "perplexity": 23.8, "tokens": 9},
                                             "replayed_examples": 1200}})
    assert lines == ["retained · loss 2.7 → 3.1 · perplexity 15.8 → 23.8 · 1,200 examples replayed"]

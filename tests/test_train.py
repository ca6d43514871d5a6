"""The train stage: packed rows train exactly, the methods, the store's reuse, and the CPU
refusals that must come before any work."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from tiny import write_spec

from ftc import build as stages
from ftc import attention, collate, train
from ftc import rows as stored
from ftc.tasks.causal_lm import token_loss
from ftc.errors import BuildError
from ftc.prep import prep
from ftc.specload import load_spec


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "the model learns to answer short questions about numbers and code".split()
    return [{"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(2, 20))),
             "response": " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))} for _ in range(n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("implementation", ["sdpa", "segmented"])
def test_packed_row_loss_equals_each_example_alone(tmp_path: Path, llama_dir: Path, implementation: str):
    """The invariant of packing: per-token losses of a packed row equal those of every
    example run alone (block-diagonal attention, positions restarting, no cross-example label),
    with transformers' block-diagonal mask (sdpa) and with ftc's per-example attention."""
    from transformers import AutoModelForCausalLM

    write_jsonl(tmp_path / "d.jsonl", chat_rows(40))
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], tokenize={"max_length": 512},
                      data_split={"valid": 0.0, "test": 0.0})
    data = prep(load_spec(spec))
    ds = stored.load_split(data.path, data.manifest, "train")
    impl = "sdpa" if implementation == "sdpa" else attention.register_segmented_attention()
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation=impl).eval()
    model.config.use_cache = False
    reference = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa").eval()
    collate_ = collate.PackedCollator(pad_id=0)
    rows = [ds[i] for i in range(min(3, len(ds)))]
    assert all(len(r["seq_lengths"]) >= 3 for r in rows)  # rows really hold several examples
    batch = collate_(rows)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    packed = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:],
                                               ignore_index=-100, reduction="none")
    worst = 0.0
    for r, row in enumerate(rows):
        start = 0
        for n in row["seq_lengths"]:
            ids = torch.tensor(row["input_ids"][start:start + n])[None]
            labels = torch.tensor(row["labels"][start:start + n])[None]
            with torch.no_grad():
                alone_logits = reference(input_ids=ids).logits
            alone = torch.nn.functional.cross_entropy(alone_logits[:, :-1].transpose(1, 2), labels[:, 1:],
                                                      ignore_index=-100, reduction="none")[0]
            mask = labels[0, 1:] != -100
            assert torch.equal(batch["labels"][r, start + 1:start + n] != -100, mask)
            worst = max(worst, float((packed[r, start:start + n - 1][mask] - alone[mask]).abs().max()))
            start += n
    assert worst < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's varlen flash kernel runs on CUDA only")
def test_varlen_attention_equals_sdpa_on_each_segment():
    """On a GPU the packed rows' attention is one varlen flash call: its outputs and gradients
    equal causal SDPA run on each example alone (bf16, grouped KV heads, two rows, a padding
    segment)."""
    g = torch.Generator().manual_seed(0)
    lengths = [[37, 5, 120, 64], [200, 26]]
    n = max(sum(r) for r in lengths) + 3
    pos = torch.stack([torch.cat([torch.arange(k) for k in r + [n - sum(r)]]) for r in lengths]).cuda()
    q, k, v = (torch.randn(2, h, n, 64, generator=g).cuda().bfloat16().requires_grad_() for h in (6, 2, 2))
    kk, vv = k.repeat_interleave(3, 1), v.repeat_interleave(3, 1)
    assert attention._varlen_kernel() is not None, "this torch has no torch.nn.attention.varlen"
    out = attention._varlen(q, kk, vv, pos, None)
    ref = attention._per_segment(q, kk, vv, pos, None, 0.0)
    assert out.shape == ref.shape == (2, n, 6, 64)
    assert float((out.float() - ref.float()).abs().max()) < 2e-2
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
    for a, b in zip(grads, ref_grads, strict=True):
        assert float((a.float() - b.float()).abs().max()) < 5e-2 * max(1.0, float(b.float().abs().max()))


def test_example_batches_hold_batch_size_examples_each_computed_alone(tmp_path: Path, llama_dir: Path):
    """`batch_unit = "examples"`: the packed split seen example by example is exactly its rows
    cut at `seq_lengths`, a batch of k examples joined into one row gives each example's own
    per-token loss, and an epoch takes ceil(examples / batch_size) steps (rows: ceil(rows / bs))."""
    from transformers import AutoModelForCausalLM

    write_jsonl(tmp_path / "d.jsonl", chat_rows(60))
    tables = {"tokenize": {"max_length": 256}, "data_split": {"valid": 0.0, "test": 0.0},
              "train": {"epochs": 1, "batch_size": 4, "logging_steps": 1}}
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], **tables)
    data = prep(load_spec(spec))
    ds = stored.load_split(data.path, data.manifest, "train")
    view = collate.ExampleView(ds)
    expected = [(list(ids), list(labels)) for row in ds for ids, labels in stored.segments(row)]
    assert len(view) == len(expected) == data.manifest["stats"]["splits"]["train"]["examples"] > len(ds)
    assert [(view[i]["input_ids"], view[i]["labels"]) for i in range(len(view))] == expected
    assert all(view[i]["position_ids"] == list(range(len(expected[i][0]))) for i in range(len(view)))

    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation=attention.register_segmented_attention())
    model.eval().config.use_cache = False
    picked = [view[i] for i in (5, 0, 17, 3)]
    batch = collate.FlatCollator(pad_id=0)(picked)
    assert batch["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in picked))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        start = 0
        for e in picked:
            n = len(e["input_ids"])
            alone = model(input_ids=torch.tensor([e["input_ids"]])).logits
            assert torch.allclose(logits[0, start:start + n], alone[0], atol=1e-5)
            start += n

    steps = {}
    for unit in ("examples", "rows"):
        tables["train"]["batch_unit"] = unit
        spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], **tables)
        steps[unit] = stages.build(load_spec(spec)).manifest["timing"]["steps"]
    assert steps == {"examples": -(-len(view) // 4), "rows": -(-len(ds) // 4)}


def test_the_last_checkpoint_is_the_model_unless_the_best_is_asked_for(tmp_path: Path, llama_dir: Path):
    write_jsonl(tmp_path / "d.jsonl", chat_rows(10))
    kept = {}
    for name, extra in (("default", {}), ("keep_best", {"keep_best": True}),
                        ("early", {"early_stopping": {"patience": 2}})):
        spec = load_spec(write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], train=extra))
        for has_eval in (True, False):
            args = train.training_arguments(spec, tmp_path / "out", has_eval, steps_per_epoch=5)
            kept[name, has_eval] = args.load_best_model_at_end
    assert kept == {("default", True): False, ("default", False): False, ("keep_best", True): True,
                    ("keep_best", False): False, ("early", True): True, ("early", False): False}


def test_checkpointing_is_passed_under_the_name_this_transformers_has(tmp_path: Path, llama_dir: Path, monkeypatch):
    """transformers renamed `gradient_checkpointing` to `activation_checkpointing` within 5.x;
    5.17 (a GPU image's) refused the new name, so training failed before its first step."""
    import transformers

    real = transformers.TrainingArguments
    spec = load_spec(write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}],
                                train={"gradient_checkpointing": True}))
    passed = {}
    for name in ("activation_checkpointing", "gradient_checkpointing"):
        fields = {k: v for k, v in real.__dataclass_fields__.items() if k not in {"activation_checkpointing",
                                                                                   "gradient_checkpointing"}}

        class Recorder:
            __dataclass_fields__ = fields | {name: None}

            def __init__(self, **kwargs):
                self.kwargs = kwargs

        monkeypatch.setattr(transformers, "TrainingArguments", Recorder)
        kwargs = train.training_arguments(spec, tmp_path / "out", False, steps_per_epoch=5).kwargs
        passed[name] = {k: v for k, v in kwargs.items() if k.endswith("_checkpointing")}
    assert passed == {"activation_checkpointing": {"activation_checkpointing": True},
                      "gradient_checkpointing": {"gradient_checkpointing": True}}


def test_lora_build_saves_a_peft_adapter_and_reuses_stages(tmp_path: Path, llama_dir: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    write_jsonl(tmp_path / "d.jsonl", chat_rows(80))
    tables = {"tokenize": {"max_length": 128}, "data_split": {"valid": 0.1, "test": 0.1},
              "train": {"method": "lora", "max_steps": 3, "batch_size": 2, "learning_rate": 1e-3,
                        "logging_steps": 1}, "eval": {"compare_base": True}}
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], **tables)
    first = stages.build(load_spec(spec))
    assert not first.cache_hit and first.manifest["timing"]["steps"] == 3
    assert first.manifest["metrics"]["perplexity"] > 1 and first.manifest["base_metrics"]["perplexity"] > 1
    assert (first.path / "report.md").is_file() and (first.path / "metrics.json").is_file()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir), first.path / "model")
    assert any("lora_" in n for n, _ in tuned.named_parameters())
    assert stages.build(load_spec(spec)).cache_hit
    tables["train"]["learning_rate"] = 5e-4
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], **tables)
    data_plan, train_plan = stages.plan(load_spec(spec))
    assert data_plan.cached and not train_plan.cached and "train.learning_rate" in train_plan.why
    second = stages.build(load_spec(spec))
    assert second.data.cache_hit and not second.cache_hit


def test_qlora_on_cpu_fails_before_any_work(tmp_path: Path, llama_dir: Path, ftc_home: Path):
    write_jsonl(tmp_path / "d.jsonl", chat_rows(10))
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], train={"method": "qlora"})
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: QLoRA would run")
    with pytest.raises(BuildError, match="CUDA"):
        stages.build(load_spec(spec))
    assert not (ftc_home / "datasets-v1").exists()


def test_prompt_tuning_refuses_packed_rows(tmp_path: Path, llama_dir: Path):
    write_jsonl(tmp_path / "d.jsonl", chat_rows(10))
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], train={"method": "prompt-tuning"})
    with pytest.raises(BuildError, match="packed rows hold several examples"):
        stages.build(load_spec(spec))


def test_freeze_trains_only_the_top_layers_and_head(llama_dir: Path):
    from transformers import AutoModelForCausalLM

    model = train.freeze_all_but_top(AutoModelForCausalLM.from_pretrained(llama_dir), 1)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("model.layers.1.", "model.norm.", "lm_head.")) for n in names)
    assert any(n.startswith("lm_head.") for n in names) and any(n.startswith("model.layers.1.") for n in names)


def test_classification_build_with_class_weights(tmp_path: Path, bert_dir: Path):
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog model data".split()  # in the tiny vocabulary
    rows = [{"text": " ".join(rng.choice(words) for _ in range(6)) + (" good" if i % 4 else " clean"),
             "label": "pos" if i % 4 else "neg"} for i in range(160)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    spec = write_spec(tmp_path / "spec.toml", bert_dir, [{"path": "d.jsonl"}], model={"task": "classification"},
                      data_balance={"strategy": "class-weights"}, tokenize={"max_length": 32},
                      train={"method": "lora", "epochs": 8, "batch_size": 8, "learning_rate": 1e-2, "keep_best": True,
                             "lora": {"target_modules": ["query", "value"]}})
    r = stages.build(load_spec(spec))
    m = r.manifest["metrics"]
    assert {"accuracy", "f1_macro", "confusion_matrix"} <= set(m)
    assert m["accuracy"] > 0.9  # the label is in the words: a trained head must find it
    history = json.loads((r.path / "metrics.json").read_text())["log_history"]
    assert any("eval_accuracy" in h and "eval_f1" in h for h in history)  # early stopping can watch them
    timing = r.manifest["timing"]  # the validation passes' share of training, apart
    assert 0 < timing["validation_seconds"] < timing["train_seconds"]


def test_early_stopping_stops_and_restores_the_best_checkpoint(tmp_path: Path, llama_dir: Path):
    """A learning rate that makes training diverge: validation loss stops improving at once, so
    training ends after `patience` evaluations without improvement, and the model kept is the
    best one seen (the first evaluation's), not the last."""
    write_jsonl(tmp_path / "d.jsonl", chat_rows(60))
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], tokenize={"max_length": 128},
                      data_split={"valid": 0.2, "test": 0.0},
                      train={"method": "full", "max_steps": 40, "batch_size": 4, "learning_rate": 0.5,
                             "warmup_ratio": 0.0, "scheduler": "constant", "eval_steps": 1,
                             "early_stopping": {"patience": 2, "metric": "eval_loss"}})
    r = stages.build(load_spec(spec))
    evals = [h["eval_loss"] for h in json.loads((r.path / "metrics.json").read_text())["log_history"]
             if "eval_loss" in h]
    best = evals.index(min(evals))
    assert r.manifest["timing"]["steps"] < 40 and len(evals) == best + 3  # stopped 2 evaluations after the best
    valid = stored.load_split(r.data.path, r.data.manifest, "valid")
    from transformers import AutoModelForCausalLM

    kept = AutoModelForCausalLM.from_pretrained(r.path / "model")
    total, count = token_loss(kept, valid, collate.PackedCollator(0), 64)
    # (the Trainer's eval_loss averages batch means, so it is close to the exact mean, not equal)
    assert min(range(len(evals)), key=lambda i: abs(evals[i] - total / count)) == best
    assert abs(total / count - evals[best]) < 0.1


def test_early_stopping_needs_a_validation_split(tmp_path: Path, llama_dir: Path):
    write_jsonl(tmp_path / "d.jsonl", chat_rows(20))
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], data_split={"valid": 0.0},
                      train={"max_steps": 2, "early_stopping": {"patience": 2}})
    with pytest.raises(BuildError, match="validation split"):
        stages.build(load_spec(spec))


@pytest.mark.parametrize(("method", "pack"), [("full", True), ("freeze", True), ("dora", True), ("ia3", True),
                                               ("prompt-tuning", False), ("prefix-tuning", False)])
def test_every_method_trains_and_saves_a_loadable_model(tmp_path: Path, llama_dir: Path, method: str, pack: bool):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    write_jsonl(tmp_path / "d.jsonl", chat_rows(30))
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}],
                      tokenize={"max_length": 256, "pack": pack}, data_split={"valid": 0.0, "test": 0.2},
                      train={"method": method, "max_steps": 2, "batch_size": 2, "trainable_layers": 1})
    r = stages.build(load_spec(spec))
    m = r.manifest
    assert m["timing"]["steps"] == 2 and 0 < m["trainable_parameters"] <= m["parameters"]
    # where it trained, read off the weights: a GPU machine training on its CPU would say so
    gpu, own_weights = torch.cuda.is_available(), method in ("full", "freeze")
    assert (m["timing"]["device"], m["timing"]["dtype"]) == \
        (("cuda:0", "float32" if own_weights else "bfloat16") if gpu else ("cpu", "float32"))
    assert m["metrics"]["perplexity"] > 1
    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    if method in ("full", "freeze"):
        tuned = AutoModelForCausalLM.from_pretrained(r.path / "model")
        changed = [n for n, p in tuned.named_parameters() if not torch.equal(p, base.get_parameter(n))]
        assert changed and (method == "full" or all(n.startswith(("model.layers.1.", "model.norm", "lm_head"))
                                                    for n in changed))
    else:
        PeftModel.from_pretrained(base, r.path / "model")


@pytest.mark.parametrize(("method", "prec", "dtype"), [
    ("full", "bf16", None), ("freeze", "fp16", None), ("full", "fp32", None),
    ("lora", "bf16", "bfloat16"), ("qlora", "bf16", "bfloat16"), ("dora", "fp16", "float16"), ("lora", "fp32", None)])
def test_the_base_keeps_float32_weights_where_they_are_trained(method: str, prec: str, dtype: str | None):
    """Full and freeze train the base's own weights: float32, bf16/fp16 only in the autocast
    compute (on a GPU a bf16 copy made every frozen layer of a `freeze` run differ from the base
    and dropped updates below bf16's resolution). Adapter methods load the frozen base in half."""
    assert train.weights_dtype(method, prec) == dtype


def test_adamw_is_the_kernel_the_trainer_defaults_to(tmp_path: Path, llama_dir: Path):
    """`optimizer = "adamw"` runs what a plain Trainer script gets by default (fused on torch
    2.8+): the per-tensor loop cost a short-text classifier a fifth of its training time."""
    from transformers import TrainingArguments

    spec = load_spec(write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}]))
    args = train.training_arguments(spec, tmp_path / "out", False, steps_per_epoch=5)
    assert str(args.optim) == str(TrainingArguments(output_dir=str(tmp_path / "plain")).optim)


def test_layer_lr_decay_scales_lower_layers(llama_dir: Path):
    from transformers import AutoModelForCausalLM

    groups = train.layer_groups(AutoModelForCausalLM.from_pretrained(llama_dir), 1e-3, 0.5, 0.0)
    assert sorted(g["lr"] for g in groups) == pytest.approx([2.5e-4, 5e-4, 1e-3])  # embeddings, layer 0, top


def test_killed_build_resumes_from_its_last_checkpoint(tmp_path: Path, llama_dir: Path, ftc_home: Path):
    import signal
    import subprocess
    import sys
    import time

    write_jsonl(tmp_path / "d.jsonl", chat_rows(60))
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], tokenize={"max_length": 128},
                      data_split={"valid": 0.0, "test": 0.1},
                      train={"max_steps": 300, "save_steps": 30, "batch_size": 2, "logging_steps": 50})
    proc = subprocess.Popen([sys.executable, "-m", "ftc.cli", "build", str(spec)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list((ftc_home / "work").glob("*/checkpoint-*/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((ftc_home / "work").glob("*/checkpoint-*")), "no checkpoint was written before the kill"
    r = stages.build(load_spec(spec))
    assert not r.cache_hit, "the build finished before it was killed"
    assert r.manifest["timing"]["resumed_from"].startswith("checkpoint-")
    assert r.manifest["timing"]["steps"] == 300
    assert not list((ftc_home / "work").glob("*"))  # the work directory goes once the run is complete


def test_a_rebuild_trains_the_same_model(tmp_path: Path, bert_dir: Path):
    """Same spec, same seed: the same new classification head and the same trained weights."""
    from safetensors.torch import load_file

    rows = [{"text": f"the quick fox {i % 7}", "label": i % 2} for i in range(40)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    spec = write_spec(tmp_path / "spec.toml", bert_dir, [{"path": "d.jsonl"}], model={"task": "classification"},
                      tokenize={"max_length": 16}, eval={"compare_base": True},
                      train={"method": "lora", "max_steps": 2, "batch_size": 8,
                             "lora": {"target_modules": ["query", "value"]}})
    runs = []
    for _ in range(2):
        r = stages.build(load_spec(spec), force=True)
        runs.append((r.manifest["base_metrics"], load_file(r.path / "model" / "adapter_model.safetensors")))
    (base_a, weights_a), (base_b, weights_b) = runs
    assert base_a == base_b
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_a_hub_id_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from ftc.errors import ModelError
    from ftc.model import resolve_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    with pytest.raises(ModelError, match="cannot download from the hub") as e:
        resolve_model("ftc-test-org/no-such-model", tmp_path)
    assert "local directory" in (e.value.hint or "")


@pytest.mark.parametrize("case", ["classifier", "class-weights", "causal-lm"])
def test_accumulated_steps_average_like_one_batch_with_class_weights_and_a_penalty(tmp_path: Path, bert_dir: Path,
                                                                                  llama_dir: Path, case: str):
    """Two accumulated half batches give the gradient of the whole batch, whichever loss runs:
    a classifier head's batch mean (even where the model's forward takes loss kwargs), ftc's
    class-weighted mean, a causal LM's loss over the step's tokens; an EWC-like penalty counts
    once per optimizer step, not once per half."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainingArguments

    from ftc import tasks

    causal = case == "causal-lm"
    task = "causal-lm" if causal else "classification"
    spec = load_spec(write_spec(tmp_path / "spec.toml", llama_dir if causal else bert_dir, [{"path": "d.jsonl"}],
                                model={"task": task}, train={"method": "full", "batch_size": 4}))
    torch.manual_seed(0)
    ids = torch.randint(5, 500, (4, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones(4, 12, dtype=torch.long),
             "labels": torch.where(torch.rand(4, 12) < 0.3, -100, ids) if causal else torch.tensor([0, 1, 1, 0])}
    items = int((batch["labels"][:, 1:] != -100).sum()) if causal else 4
    grads = []
    for accum in (1, 2):
        if causal:
            model = AutoModelForCausalLM.from_pretrained(llama_dir)
            head = model.lm_head
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                bert_dir, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
            torch.manual_seed(1)
            model.classifier.reset_parameters()  # the same head in both runs
            head = model.classifier
        anchor = head.weight.detach().clone() + 0.5
        penalty = lambda h=head, a=anchor: ((h.weight - a) ** 2).sum()  # noqa: E731
        args = TrainingArguments(str(tmp_path / f"o{accum}"), gradient_accumulation_steps=accum, report_to=[],
                                 use_cpu=True, per_device_train_batch_size=4 // accum)
        trainer = train.make_trainer(spec, tasks.get(task), model, args, None, None, lambda r: r,
                                     [1.0, 1.0] if case == "class-weights" else None, penalty=penalty)
        trainer.current_gradient_accumulation_steps = accum
        model.train()
        for part in range(accum):
            half = {k: v[part * 4 // accum:(part + 1) * 4 // accum] for k, v in batch.items()}
            trainer.training_step(model, half, num_items_in_batch=torch.tensor(items))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5), float((grads[0] - grads[1]).abs().max())

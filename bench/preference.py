"""ftc's packed preference training against TRL's `DPOTrainer` (its default padded batches), on the
same pairs and the same tiny model, CPU; and the data stage against TRL's own tokenization.

    .venv/bin/python bench/preference.py [--steps N] [--batch B] [--threads T]

Nothing is downloaded: the pairs are specs/data/pairs.jsonl (800 chatterbot-corpus pairs), the
model a randomly initialised Llama (hidden 128, 2 layers) with a byte-level BPE tokenizer and
SmolLM2's chat template (tests/tiny.py), under bench/out/preference/.

- prep: `ftc prep` of a preference spec (cold store) against `DPOTrainer`'s dataset preparation
  (prompt extraction, chat template, tokenization) of the same pairs as conversations;
- training: both arms take the very same token sequences (ftc's prepared rows, every response
  token labelled, as TRL's completion mask does), the same LoRA (r 16, all linear layers), DPO
  β 0.1, AdamW at 5e-4, seed and sampler order, `--steps` steps of `--batch` pairs; the
  reference is the base with the adapter switched off in both. ftc: one padding-free row per
  step (`PairCollator`, per-sequence attention); TRL: chosen and rejected padded to the longest
  sequence of the step. Useful tokens are the non-pad ones; the loss of each step is printed
  side by side (the same batches: the curves should agree to float error).

Prints a table and writes bench/out/preference.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
WORK = OUT / "preference"
sys.path.insert(0, str(ROOT / "tests"))
from tiny import llama_model_dir, write_spec  # noqa: E402


PAIRS = ROOT / "specs" / "data" / "pairs.jsonl"


def spec_path(model: Path, steps: int, batch: int) -> Path:
    return write_spec(WORK / "spec.toml", model, [{"path": str(PAIRS)}], model={"task": "preference"},
                      tokenize={"max_length": 512}, data_split={"valid": 0.0, "test": 0.0},
                      train={"method": "lora", "max_steps": steps, "batch_size": batch, "learning_rate": 5e-4,
                             "warmup_ratio": 0.0, "scheduler": "constant",
                             "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
                             "preference": {"loss": "dpo", "beta": 0.1}})


def prep_times(spec: Path, model: Path) -> dict[str, float]:
    import os

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from ftc import prep
    from ftc.specload import load_spec

    os.environ["FTC_HOME"] = str(WORK / "home")
    shutil.rmtree(WORK / "home", ignore_errors=True)
    t0 = time.perf_counter()
    prep.prep(load_spec(spec))
    ftc_s = time.perf_counter() - t0
    rows = [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines()]
    conv = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                               "chosen": [{"role": "assistant", "content": r["chosen"]}],
                               "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    args = DPOConfig(output_dir=str(WORK / "trl-prep"), report_to=[], use_cpu=True, bf16=False)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model), args=args, train_dataset=conv.select([0]),
                         processing_class=AutoTokenizer.from_pretrained(model))
    t0 = time.perf_counter()
    trainer._prepare_dataset(conv, trainer.processing_class, args, "train")
    return {"ftc_prep_s": ftc_s, "trl_prep_s": time.perf_counter() - t0}


def pair_rows(spec: Path) -> list[dict]:
    """ftc's prepared training pairs, every response token labelled (as TRL's completion mask)."""
    from ftc import prep
    from ftc.rows import load_split
    from ftc.specload import load_spec

    result = prep.prep(load_spec(spec))
    ds = load_split(result.path, result.manifest, "train")
    return [{"prompt_ids": list(r["prompt_ids"]), "chosen_ids": list(r["chosen_ids"]),
             "rejected_ids": list(r["rejected_ids"]), "chosen_labels": list(r["chosen_ids"]),
             "rejected_labels": list(r["rejected_ids"])} for r in ds]


def run_ftc(spec: Path, model_dir: Path, rows: list[dict]) -> tuple[float, list[float], int]:
    from datasets import Dataset
    from transformers import set_seed

    from ftc import tasks, train
    from ftc.specload import load_spec
    from ftc.tasks.pair_losses import PairCollator

    s = load_spec(spec)
    task = tasks.get("preference")
    set_seed(s.project.seed)  # the LoRA initialisation, as in the TRL arm
    model = train.apply_method(train.load_model(s, task, model_dir, None, 0), s, task)
    args = train.training_arguments(s, WORK / "ftc-run", False, len(rows) // s.train.batch_size)
    args.logging_steps, args.save_strategy, args.report_to = 1, "no", []
    tokens = 0
    collate = PairCollator(0)

    def counting(examples: list[dict]) -> dict:
        nonlocal tokens
        out = collate(examples)
        tokens += int(out["input_ids"].numel())  # one padding-free row: every token is useful
        return out
    trainer = train.make_trainer(s, task, model, args, Dataset.from_list(rows), None, counting, None)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0, [e["loss"] for e in trainer.state.log_history if "loss" in e], tokens


def run_trl(model_dir: Path, rows: list[dict], steps: int, batch: int,
            seed: int) -> tuple[float, list[float], int, int]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(WORK / "trl-run"), report_to=[], use_cpu=True, bf16=False, max_steps=steps,
                     per_device_train_batch_size=batch, learning_rate=5e-4, lr_scheduler_type="constant", beta=0.1, logging_steps=1, save_strategy="no", seed=seed,
                     max_length=None)
    text = Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    set_seed(seed)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=text,
                         processing_class=AutoTokenizer.from_pretrained(model_dir), peft_config=lora)
    trainer.train_dataset = Dataset.from_list([{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                                               for r in rows])
    padded, useful = 0, 0
    collate = trainer.data_collator

    def counting(examples: list[dict]) -> dict:
        nonlocal padded, useful
        out = collate(examples)
        padded += int(out["input_ids"].numel())
        useful += int(out["attention_mask"].sum())
        return out
    trainer.data_collator = counting
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0, [e["loss"] for e in trainer.state.log_history if "loss" in e], useful, padded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    model = WORK / "model"
    if not (model / "config.json").is_file():
        llama_model_dir(model, head_dim=32)
    spec = spec_path(model, a.steps, a.batch)
    figures = prep_times(spec, model)
    rows = pair_rows(spec)
    ftc_s, ftc_loss, useful = run_ftc(spec, model, rows)
    trl_s, trl_loss, trl_useful, padded = run_trl(model, rows, a.steps, a.batch, 42)
    figures |= {"pairs": len(rows), "steps": a.steps, "batch": a.batch, "ftc_train_s": ftc_s, "trl_train_s": trl_s,
                "useful_tokens": useful, "trl_useful_tokens": trl_useful, "trl_padded_tokens": padded,
                "ftc_tokens_per_s": useful / ftc_s, "trl_useful_tokens_per_s": trl_useful / trl_s,
                "ftc_loss": ftc_loss, "trl_loss": trl_loss}
    (OUT / "preference.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")
    print(f"\npreference data: {len(rows)} pairs · ftc prep {figures['ftc_prep_s']:.2f}s · TRL tokenization "
          f"{figures['trl_prep_s']:.2f}s → {figures['trl_prep_s'] / figures['ftc_prep_s']:.2f}×")
    print(f"\nDPO, {a.steps} steps of {a.batch} pairs, tiny Llama, LoRA, CPU")
    print(f"{'arm':<22}{'seconds':>9}{'useful tok/s':>14}{'tokens run':>12}")
    print(f"{'ftc packed':<22}{ftc_s:>9.2f}{useful / ftc_s:>14.0f}{useful:>12,}")
    print(f"{'TRL DPOTrainer padded':<22}{trl_s:>9.2f}{trl_useful / trl_s:>14.0f}{padded:>12,}")
    print(f"ftc / TRL: {(useful / ftc_s) / (trl_useful / trl_s):.2f}× useful tokens/s "
          f"({'the same' if useful == trl_useful else 'NOT the same'} {useful:,} useful tokens in both)")
    print("\nstep  loss ftc   loss TRL")
    for i, (x, y) in enumerate(zip(ftc_loss, trl_loss, strict=False), 1):
        if i <= 5 or i % 5 == 0:
            print(f"{i:>4}  {x:>8.4f}  {y:>8.4f}")
    gap = max((abs(x - y) for x, y in zip(ftc_loss, trl_loss, strict=False)), default=float("nan"))
    print(f"largest per-step loss difference: {gap:.2e}")


if __name__ == "__main__":
    main()

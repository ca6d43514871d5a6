"""The script a practitioner writes for LoRA SFT: TRL's `SFTTrainer` with its defaults (no
packing, completion-only loss, AdamW, linear decay, no warmup), given the same base, LoRA
settings, epochs, batch size, learning rate and max length as the ftc spec.

    python bench/plain_sft.py --base DIR --data DIR --epochs 2 --batch-size 4 --lr 5e-4 --r 16 \
        --alpha 32 --dropout 0.05 --targets all-linear --max-length 512 --seed 0 --out result.json

`--data` holds `train.jsonl` and `test.jsonl`: ftc's examples unpacked, as `input_ids` and
`labels` (-100 off the completions), the pre-tokenized form TRL trains on as is, so both sides
see the same tokens and the same loss mask. Precision is fp32 on both sides (a CPU has no fast
bf16). Writes the test perplexity (token-weighted over the labelled tokens, as ftc's) and the seconds
spent training.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, set_seed
from trl import SFTConfig, SFTTrainer


def perplexity(model: torch.nn.Module, rows: list[dict]) -> float:
    total, count, device = 0.0, 0, next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([r["input_ids"]], device=device)
            labels = torch.tensor([r["labels"]], device=device)
            logits = model(input_ids=ids).logits[0, :-1].float()
            target = labels[0, 1:]
            total += float(torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    return math.exp(total / count)


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("--base", "--data", "--targets", "--out"):
        ap.add_argument(name, required=True)
    for name, kind in (("--epochs", float), ("--batch-size", int), ("--lr", float), ("--r", int), ("--alpha", float),
                       ("--dropout", float), ("--max-length", int), ("--seed", int)):
        ap.add_argument(name, type=kind, required=True)
    a = ap.parse_args()
    data = load_dataset("json", data_files={s: str(Path(a.data) / f"{s}.jsonl") for s in ("train", "test")})
    set_seed(a.seed)
    model = AutoModelForCausalLM.from_pretrained(a.base, dtype=torch.float32)
    targets = a.targets if a.targets == "all-linear" else a.targets.split(",")
    args = SFTConfig(output_dir=str(Path(a.out).with_suffix(".work")), num_train_epochs=a.epochs,
                     per_device_train_batch_size=a.batch_size, learning_rate=a.lr, max_length=a.max_length,
                     seed=a.seed, bf16=False, fp16=False, logging_steps=10, save_strategy="no", report_to=[],
                     disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data["train"],
                         peft_config=LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                                                target_modules=targets, task_type="CAUSAL_LM"))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    ppl = perplexity(trainer.model, list(data["test"]))
    Path(a.out).write_text(json.dumps({"perplexity": ppl, "train_seconds": seconds}))


if __name__ == "__main__":
    main()

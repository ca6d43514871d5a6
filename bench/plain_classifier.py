"""The script a practitioner writes to fine-tune a sequence classifier: HF `Trainer` (+ PEFT for
LoRA) with the library defaults (AdamW, linear decay, no warmup, shuffled batches, dynamic
padding), given the same base, method, LoRA settings, steps, batch size and learning rate as the
ftc spec.

    python bench/plain_classifier.py --base DIR --data DIR --labels a,b --steps 200 --batch-size 16 \
        --lr 1e-3 --method lora --r 8 --alpha 16 --dropout 0.05 --targets query,key,value,dense --seed 0 \
        --out result.json

`--method full` trains every weight (the LoRA arguments are then unused).

`--data` holds `train.jsonl` and `test.jsonl`: rows of `input_ids` and `label`, the very rows
ftc trains and scores on, tokenized exactly as `AutoTokenizer(text, truncation=True,
max_length=...)` would (ftc's ids are tested identical to it), so the two sides differ only in
how they train. Writes the test accuracy, macro-F1 and the seconds spent training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from datasets import load_dataset
from peft import LoraConfig, TaskType, get_peft_model
from sklearn.metrics import accuracy_score, f1_score
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                          TrainingArguments, set_seed)


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("--base", "--data", "--labels", "--targets", "--out"):
        ap.add_argument(name, required=True)
    for name, kind in (("--steps", int), ("--batch-size", int), ("--lr", float), ("--r", int), ("--alpha", float),
                       ("--dropout", float), ("--seed", int)):
        ap.add_argument(name, type=kind, required=True)
    ap.add_argument("--method", choices=["lora", "full"], default="lora")
    a = ap.parse_args()
    labels = a.labels.split(",")
    data = load_dataset("json", data_files={s: str(Path(a.data) / f"{s}.jsonl") for s in ("train", "test")})
    data = data.rename_column("label", "labels")

    set_seed(a.seed)
    tokenizer = AutoTokenizer.from_pretrained(a.base)
    model = AutoModelForSequenceClassification.from_pretrained(
        a.base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    if a.method == "lora":
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=a.r, lora_alpha=a.alpha,
                                                 lora_dropout=a.dropout, target_modules=a.targets.split(",")))
    args = TrainingArguments(output_dir=str(Path(a.out).with_suffix(".work")), max_steps=a.steps,
                             per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=64,
                             learning_rate=a.lr, seed=a.seed, logging_steps=50, save_strategy="no", report_to=[],
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data["train"],
                      data_collator=DataCollatorWithPadding(tokenizer))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        logits = trainer.predict(data["test"]).predictions
    pred, gold = np.asarray(logits).argmax(-1), np.asarray(data["test"]["labels"])
    Path(a.out).write_text(json.dumps({"accuracy": accuracy_score(gold, pred),
                                       "f1": f1_score(gold, pred, average="macro"), "train_seconds": seconds}))


if __name__ == "__main__":
    main()

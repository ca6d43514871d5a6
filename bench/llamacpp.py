"""The GGUF files `ftc export --gguf` writes, run by llama.cpp itself, against PyTorch.

    .venv/bin/pip install llama-cpp-python        # builds llama.cpp (~20 minutes on 2 cores)
    .venv/bin/python bench/llamacpp.py [--rows 32] [--threads 2]

The export's own check reads the files back with transformers' GGUF loader; this one asks the
engine users deploy with (llama.cpp, as Ollama and LM Studio embed it). On the chat-sft run
(specs/chat-sft.toml, built and exported here if the store lacks them), for `--rows` test
conversations: llama.cpp's token ids for the prompt text against the merged model's tokenizer,
then every position's logits against PyTorch's (max and mean |Δ|, argmax agreement), the
perplexity of the answer tokens, and greedy decode speed. Prints a table; writes
bench/out/llamacpp.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TYPES = ("f16", "q8_0", "q4_0")


def exported(threads: int) -> tuple[Path, Path]:
    """(the chat-sft export's artifact, its merged weights), built if missing."""
    from ftc import build, export
    from ftc.specload import load_spec

    run = export.find_run(build.build(load_spec(ROOT / "specs" / "chat-sft.toml"), threads=threads).path)
    result = export.export(run, export.override(run.export, gguf=TYPES, verify=False))
    return result.artifact, result.path / "merged"


def test_rows(n: int) -> list[dict]:
    from ftc import build, rows
    from ftc.specload import load_spec

    data = build.data_stage.prep(load_spec(ROOT / "specs" / "chat-sft.toml"))
    return list(rows.examples(rows.load_split(data.path, data.manifest, "test"), n))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    try:
        from llama_cpp import Llama
    except ImportError:
        sys.exit("llama-cpp-python is not installed: .venv/bin/pip install llama-cpp-python")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    art, merged = exported(a.threads)
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    examples = test_rows(a.rows)
    figures: dict[str, dict] = {}
    for qtype in TYPES:
        llm = Llama(model_path=str(art / "gguf" / f"model-{qtype}.gguf"), logits_all=True, verbose=False,
                    n_ctx=2048, n_threads=a.threads)
        same_ids, diffs, agree, nll, n = 0, [], 0, 0.0, 0
        for ex in examples:
            ids = [int(i) for i in ex["input_ids"]]
            labels = np.asarray(ex["labels"])
            text = tok.decode(ids)
            same_ids += llm.tokenize(text.encode(), add_bos=False, special=True) == ids
            llm.reset()
            llm.eval(ids)
            got = np.asarray(llm.scores[:len(ids)], dtype=np.float64)
            with torch.no_grad():
                ref = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
            diffs.append(np.abs(got - ref))
            agree += int((got.argmax(-1) == ref.argmax(-1)).sum())
            pos = np.flatnonzero(labels[1:] >= 0)
            z = got[pos] - got[pos].max(-1, keepdims=True)
            nll += float((np.log(np.exp(z).sum(-1)) - z[np.arange(len(pos)), labels[pos + 1]]).sum())
            n += len(pos)
        prompt = tok.decode([int(i) for i in examples[0]["input_ids"]][:64])
        t0 = time.perf_counter()
        out = llm.create_completion(prompt, max_tokens=64, temperature=0)
        tokens = out["usage"]["completion_tokens"]
        d = np.concatenate([x.ravel() for x in diffs])
        figures[qtype] = {"ids_identical": f"{same_ids}/{len(examples)}", "max_abs_diff": float(d.max()),
                          "mean_abs_diff": float(d.mean()), "agreement": agree / sum(len(x) for x in diffs),
                          "perplexity": float(np.exp(nll / n)), "tokens_per_second": tokens / (time.perf_counter() - t0),
                          "bytes": (art / "gguf" / f"model-{qtype}.gguf").stat().st_size}
    nll_t, n_t = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            labels = np.asarray(ex["labels"])
            ref = model(input_ids=torch.tensor([[int(i) for i in ex["input_ids"]]])).logits[0].double().numpy()
            pos = np.flatnonzero(labels[1:] >= 0)
            z = ref[pos] - ref[pos].max(-1, keepdims=True)
            nll_t += float((np.log(np.exp(z).sum(-1)) - z[np.arange(len(pos)), labels[pos + 1]]).sum())
            n_t += len(pos)
    torch_ppl = float(np.exp(nll_t / n_t))
    print(f"llama.cpp against PyTorch on {len(examples)} chat-sft test conversations (PyTorch perplexity "
          f"{torch_ppl:.4f})")
    print(f"{'file':<6} {'ids =':>7} {'max |Δ|':>9} {'mean |Δ|':>9} {'agree':>7} {'ppl':>8} {'× torch':>8} "
          f"{'tok/s':>7} {'MB':>6}")
    for q, f in figures.items():
        print(f"{q:<6} {f['ids_identical']:>7} {f['max_abs_diff']:>9.3g} {f['mean_abs_diff']:>9.3g} "
              f"{f['agreement']:>7.2%} {f['perplexity']:>8.4f} {f['perplexity'] / torch_ppl:>8.4f} "
              f"{f['tokens_per_second']:>7.1f} {f['bytes'] / 1e6:>6.0f}")
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "llamacpp.json").write_text(json.dumps({"torch_perplexity": torch_ppl, "files": figures}, indent=2))


if __name__ == "__main__":
    main()

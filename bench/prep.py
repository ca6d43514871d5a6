"""Benchmark `ftc prep` against the data-preparation pipelines users run today.

    .venv/bin/python bench/prep.py [--case prep|dedup|all] [--docs N] [--only ftc|sft|datasets|tokenizers]
                                   [--skip-baselines]

Case `prep` (the default; 200k documents): one synthetic chat corpus (JSONL, a `messages` column)
and one locally trained byte-level BPE tokenizer with SmolLM2's chat template feed every
pipeline; both are cached in bench/out/. Results go to bench/out/prep.json.

  ftc         `ftc prep SPEC --json --force` with 1 and 2 threads, then a warm re-run (cache hit);
              and with 1 thread confined to one core (reading and writing overlap the encoding
              on threads of their own, which `--threads 1` alone leaves free to use a second core)
  sft         TRL `SFTTrainer` construction: assistant-only loss, BFD packing, 2 processes
  datasets    `load_dataset` → `map` (chat template + offsets → completion labels) → TRL
              `pack_dataset(strategy="bfd")`, with 1 and 2 processes
  tokenizers  `Tokenizer.encode_batch_fast` on pre-rendered texts: the floor (no labels, no packing)
  encoder     the encoder alone, one thread, on the rendered corpus: ftc's exact fast BPE, the
              `tokenizers` crate and tiktoken (loaded with the same ranks); every document's ids
              are compared with the `tokenizers` crate's and the differing ones counted

Case `dedup` (100k documents): a synthetic web-like corpus (JSONL, a `text` column; HTML,
stray whitespace, fullwidth characters, 5% exact and 18% near copies) is cleaned (strip HTML,
NFKC, collapse whitespace) and near-deduplicated (Jaccard 0.8 of 5-char shingles, 128
permutations, first occurrence kept). Results go to bench/out/dedup.json.

  ftc kernels  polars read → `_data.TextCleaner` → `_data.Deduper("near")` in batches of 10k,
               with 1 and 2 threads
  datasketch   json.loads → re/html/unicodedata cleaning → datasketch `MinHash.update_batch` per
               text → `MinHashLSH` query-then-insert; 1 process, and a 2-process `Pool` for the
               cleaning and MinHash (the LSH loop stays sequential)
  ftc prep     the same cleaning and dedup in `ftc prep`, then tokenize + pack (once `[data.clean]`
               is built; skipped with its error until then)

It then compares the removed sets and, as ground truth, the exact Jaccard of each removal with
its match, and the share of the injected copies each tool removes by their true similarity.

Each pipeline runs in a fresh process, so its peak memory is its own. "seconds" is the pipeline
itself as each reports or times it (imports and model construction excluded); "process" is the
whole process. Peak RSS is the largest sum of RSS over the process tree (polled every 0.2 s) and,
separately, the kernel's ru_maxrss of the largest single process.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator
from typing import Any
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SEED = 20240611
sys.path.insert(0, str(ROOT / "tests"))
from tiny import SMOL_TEMPLATE  # noqa: E402

# The same rendering as SMOL_TEMPLATE, with the assistant turn (and its <|im_end|>) inside
# `{% generation %}` tags, as TRL's `assistant_only_loss` requires.
SMOL_GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

COMMON_WORDS = """the of and to a in is it you that he was for on are with as his they be at one have this from or
had by hot word but what some we can out other were all there when up use your how said an each she which do their
time if will way about many then them write would like so these her long make thing see him two has look more day
could go come did number sound no most people my over know water than call first who may down side been now find any
new work part take get place made live where after back little only round man year came show every good me give our
under name very through just form sentence great think say help low line differ turn cause much mean before move right
boy old too same tell does set three want air well also play small end put home read hand port large spell add even
land here must big high such follow act why ask men change went light kind off need house picture try us again animal
point mother world near build self earth father head stand own page should country found answer school grow study still
learn plant cover food sun four between state keep eye never last let thought city tree cross farm hard start might
story saw far sea draw left late run while press close night real life few north open seem together next white children
begin got walk example ease paper group always music those both mark often letter until mile river car feet care second
book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure watch color face
wood main enough plain girl usual young ready above ever red list though feel talk bird soon body dog family direct
leave song measure door product black short class wind question happen complete ship area half rock order fire south
problem piece told knew pass since top whole king space heard best hour better true during hundred five remember step
early hold west ground interest reach fast verb sing listen six table travel less morning ten simple several toward war
model data training function value python error file memory system network result method process request server user
explain describe summarize compare analyze consider suggest improve performance language question answer code""".split()
SYLLABLES = ("ba be bi bo cal con de di en er fa for ga in ka la le li lo ma me mi mo na ne ni no pa per pro ra re ri "
             "ro sa se si so ta te ti to tra ver").split()
OPENERS = ["Explain", "Describe", "Write a short note on", "Summarize", "How do I", "Why does", "Compare",
           "Give three examples of", "What is the best way to", "Can you help me with"]
SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a concise assistant. Answer in plain English.",
                  "You are an expert tutor who explains every step carefully."]


def sentence_pool(rng: np.random.Generator, n: int = 200_000) -> list[str]:
    """`n` English-ish sentences: Zipf-distributed words (common English plus a long tail of made-up
    words), capitalized, with commas, numbers and a closing mark; about one in seven ends a paragraph."""
    tail = {"".join(rng.choice(SYLLABLES, size=k)) for k in rng.integers(2, 5, size=12_000)}
    words = np.array(COMMON_WORDS + sorted(tail - set(COMMON_WORDS)))
    weights = 1.0 / np.arange(1, len(words) + 1) ** 1.05
    lengths = rng.integers(5, 24, size=n)
    picks = rng.choice(len(words), size=int(lengths.sum()), p=weights / weights.sum())
    ends = rng.choice([". ", "? ", "! ", ".\n\n"], size=n, p=[0.75, 0.06, 0.04, 0.15])
    pool, at = [], 0
    for length, end in zip(lengths.tolist(), ends.tolist()):
        ws = words[picks[at:at + length]].tolist()
        at += length
        if rng.random() < 0.3:
            ws[rng.integers(1, length)] += ","
        if rng.random() < 0.1:
            ws.insert(int(rng.integers(1, length)), str(int(rng.integers(0, 2025))))
        pool.append(" ".join(ws).capitalize() + end)
    return pool


def generate_docs(n_docs: int, seed: int = SEED) -> Iterator[dict]:
    """`n_docs` conversations (deterministic for a seed): user and assistant contents with lognormal
    character lengths (about 2.2 KB of JSONL per document), 15% with 2–3 exchanges, 10% with a system prompt."""
    rng = np.random.default_rng(seed)
    pool = sentence_pool(rng)
    cum = np.cumsum([0] + [len(s) for s in pool])
    max_span = len(pool) // 2

    def text(chars: float) -> str:
        start = int(rng.integers(0, len(pool) - max_span))
        stop = min(int(np.searchsorted(cum, cum[start] + chars)) + 1, start + max_span)
        return "".join(pool[start:stop]).strip()

    for _ in range(n_docs):
        messages = []
        if rng.random() < 0.10:
            messages.append({"role": "system", "content": str(rng.choice(SYSTEM_PROMPTS))})
        for _ in range(int(rng.integers(2, 4)) if rng.random() < 0.15 else 1):
            prompt = f"{rng.choice(OPENERS)} {text(rng.lognormal(5.2, 0.9)).lower()}"
            messages.append({"role": "user", "content": prompt})
            messages.append({"role": "assistant", "content": text(rng.lognormal(6.79, 0.8))})
        yield {"messages": messages}


def make_corpus(n_docs: int) -> Path:
    """The JSONL corpus of `n_docs` documents, generated once and cached."""
    path = OUT / f"corpus-{n_docs}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for doc in generate_docs(n_docs):
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
        tmp.rename(path)
    return path


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE (ChatML specials, SmolLM2's template) trained on `texts`, as a
    transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = SMOL_TEMPLATE
    return fast


def make_tokenizer(vocab_size: int = 32_000) -> Path:
    """A byte-level BPE tokenizer (ChatML specials, SmolLM2's template) trained on 10k generated
    documents (independent of --docs), saved with `save_pretrained` and cached."""
    path = OUT / f"tokenizer-{vocab_size // 1000}k"
    if (path / "tokenizer.json").exists():
        return path
    fast = train_bpe((m["content"] for d in generate_docs(10_000, SEED + 1) for m in d["messages"]), vocab_size)
    fast.save_pretrained(path)
    return path


def write_spec(corpus: Path, tokenizer: Path, max_length: int, name: str = "bench-prep", extra: str = "") -> Path:
    """The ftc spec: the whole corpus to train, completion-only labels, BFD packing; `extra`
    adds tables (the dedup case's `[data.clean]`)."""
    path = OUT / f"{corpus.stem}.toml"
    path.write_text(f'''[project]
name = "{name}"

[model]
base = "{tokenizer}"

[[data.sources]]
path = "{corpus}"

[data.split]
valid = 0
test = 0
{extra}
[tokenize]
max_length = {max_length}
pack = true
train_on = "completions"
''', encoding="utf-8")
    return path


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants (0 for those that just exited)."""
    total = 0
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in family:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure(cmd: list[str], env: dict[str, str], check: bool = True, cpus: set[int] | None = None) -> dict:
    """Runs `cmd` in a fresh process (on only the cores `cpus`, if given). Returns its wall time,
    stdout, the peak of the process tree's summed RSS (polled every 0.2 s) and ru_maxrss from
    `wait4` (the largest single process among it and its reaped descendants). A failure exits,
    unless `check` is false: then `error` holds the end of its stderr."""
    err_path = OUT / "last-stderr.txt"
    with open(OUT / "last-stdout.txt", "w+b") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT, preexec_fn=pin)
        ps, peak = psutil.Process(proc.pid), 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, tree_rss(ps))
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        stdout = out.read().decode()
    if proc.returncode:
        if check:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err_path.read_text()[-3000:]}")
        return {"error": err_path.read_text()[-3000:]}
    return {"process_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak / 2**20,
            "maxrss_mb": usage.ru_maxrss / 1024, "stdout": stdout}


def worker_sft(corpus: str, tokenizer: str, max_length: int, num_proc: int) -> dict:
    """TRL's own preparation: `SFTTrainer(...)` on the `messages` data (timed with `load_dataset`)."""
    from datasets import load_dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    tok.chat_template = SMOL_GENERATION_TEMPLATE
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=max_length,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    config = SFTConfig(output_dir=str(OUT / "sft-trainer"), max_length=max_length, packing=True,
                       packing_strategy="bfd", assistant_only_loss=True, dataset_num_proc=num_proc,
                       report_to="none", use_cpu=True)
    t0 = time.perf_counter()
    ds = load_dataset("json", data_files=corpus, split="train")
    trainer = SFTTrainer(model=model, args=config, train_dataset=ds, processing_class=tok)
    return {"seconds": time.perf_counter() - t0, **packed_stats(trainer.train_dataset)}


def completion_labels(text: str, messages: list[dict], ids: list[int], offsets: list[tuple[int, int]],
                      eos: str) -> list[int]:
    """Labels for one rendered conversation: token ids inside an assistant content or its end-of-turn
    token, -100 elsewhere. Contents are found in order in the rendered text."""
    spans, cursor = [], 0
    for m in messages:
        start = text.index(m["content"], cursor)
        cursor = start + len(m["content"])
        if m["role"] == "assistant":
            end = text.find(eos, cursor)
            spans.append((start, cursor if end < 0 else end + len(eos)))
    labels, j = [-100] * len(ids), 0
    for t, (s, e) in enumerate(offsets):
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if j < len(spans) and e > spans[j][0]:
            labels[t] = ids[t]
    return labels


def worker_datasets(corpus: str, tokenizer: str, max_length: int, num_proc: int) -> dict:
    """The hand-written `datasets` pipeline: load → map(render + tokenize + labels) → pack_dataset."""
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl.data_utils import pack_dataset

    tok = AutoTokenizer.from_pretrained(tokenizer)

    def encode(batch: dict) -> dict:
        texts = [tok.apply_chat_template(m, tokenize=False) for m in batch["messages"]]
        enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=True, max_length=max_length)
        labels = [completion_labels(*x, tok.eos_token)
                  for x in zip(texts, batch["messages"], enc["input_ids"], enc["offset_mapping"])]
        return {"input_ids": enc["input_ids"], "labels": labels}

    t0 = time.perf_counter()
    ds = load_dataset("json", data_files=corpus, split="train")
    ds = ds.map(encode, batched=True, num_proc=num_proc, remove_columns=ds.column_names)
    ds = pack_dataset(ds, seq_length=max_length, strategy="bfd", map_kwargs={"num_proc": num_proc})
    return {"seconds": time.perf_counter() - t0, **packed_stats(ds)}


def worker_tokenizers(corpus: str, tokenizer: str, max_length: int, num_proc: int) -> dict:
    """The floor: `encode_batch_fast` alone, on texts rendered beforehand (untimed)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    with open(corpus, encoding="utf-8") as f:
        texts = [tok.apply_chat_template(json.loads(line)["messages"], tokenize=False) for line in f]
    fast = Tokenizer.from_file(str(Path(tokenizer) / "tokenizer.json"))
    t0 = time.perf_counter()
    encodings = fast.encode_batch_fast(texts, add_special_tokens=False)
    return {"seconds": time.perf_counter() - t0, "tokens": sum(len(e.ids) for e in encodings), "labelled": None,
            "rows": None}


GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


def tiktoken_encoding(tokenizer_json: str) -> tuple[Any, str]:
    """tiktoken loaded with the tokenizer's own ranks (a token's id is its rank), or None and why
    not. tiktoken merges any adjacent pair whose concatenation is a token, not only the listed
    merges, so its ids can differ; the bench counts where."""
    try:
        import tiktoken
    except ImportError:
        return None, "tiktoken is not installed"
    data = json.loads(tokenizer_json)
    pre = data.get("pre_tokenizer") or {}
    if data.get("normalizer") or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        return None, "not a plain GPT-2 byte-level tokenizer"
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    to_byte = {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}
    added = {t["content"]: t["id"] for t in data["added_tokens"]}
    ranks = {}
    for token, i in data["model"]["vocab"].items():
        if token not in added and all(c in to_byte for c in token):
            ranks[bytes(to_byte[c] for c in token)] = i
    return tiktoken.Encoding("bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=added), ""


def worker_encoder(corpus: str, tokenizer: str, max_length: int, num_proc: int) -> dict:
    """The encoder alone on `num_proc` threads, on the whole corpus rendered beforehand (untimed),
    in chunks: ftc's fast BPE, the `tokenizers` crate through the same harness, and tiktoken with
    the same ranks; every document's ids compared with the `tokenizers` crate's."""
    import pyarrow as pa

    from ftc import _data

    tj = (Path(tokenizer) / "tokenizer.json").read_text(encoding="utf-8")
    fast = _data.DataEncoder(tj, SMOL_TEMPLATE, threads=num_proc)
    slow = _data.DataEncoder(tj, SMOL_TEMPLATE, threads=num_proc, fast=False)
    tik, why = tiktoken_encoding(tj)
    message = pa.struct([("role", pa.large_string()), ("content", pa.large_string())])
    secs = {"ftc-bpe": 0.0, "tokenizers": 0.0, "tiktoken": 0.0}
    differ = {"ftc-bpe": 0, "tiktoken": 0}
    tokens = docs = 0

    def flat(ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        return ids.offsets.to_numpy(), ids.values.to_numpy()

    with open(corpus, encoding="utf-8") as f:
        while chunk := [json.loads(line)["messages"] for _, line in zip(range(20_000), f)]:
            texts = fast.render(pa.array(chunk, pa.large_list(message)))
            out = {}
            for name, enc in (("ftc-bpe", fast), ("tokenizers", slow)):
                t0 = time.perf_counter()
                out[name] = flat(pa.array(enc.encode_text(texts, 1 << 30, "chunk")[0]))
                secs[name] += time.perf_counter() - t0
            (ro, rv), (fo, fv) = out["tokenizers"], out["ftc-bpe"]
            same_len = np.diff(ro) == np.diff(fo)
            mism = np.ones(len(chunk), bool)
            if same_len.all():
                mism = np.add.reduceat(rv != fv, ro[:-1]) > 0 if len(rv) else np.zeros(len(chunk), bool)
                mism[np.diff(ro) == 0] = False
            differ["ftc-bpe"] += int(mism.sum())
            tokens += int(ro[-1])
            docs += len(chunk)
            if tik is not None:
                strs = texts.to_pylist()
                t0 = time.perf_counter()
                ids = tik.encode_batch(strs, num_threads=num_proc, allowed_special="all")
                secs["tiktoken"] += time.perf_counter() - t0
                differ["tiktoken"] += sum(ids[i] != rv[ro[i]:ro[i + 1]].tolist() for i in range(len(chunk)))
    return {"seconds": secs["ftc-bpe"], "tokens": tokens, "labelled": None, "rows": None, "docs": docs,
            "encoders": {k: v for k, v in secs.items() if v or k != "tiktoken"}, "differ": differ,
            "tiktoken": why or "loaded with the tokenizer's ranks", "ftc_encoder": fast.encoder}


def packed_stats(ds) -> dict:
    """Total tokens, labelled tokens and rows of a packed `datasets.Dataset`."""
    import pyarrow.compute as pc

    labels = pc.list_flatten(ds.data.column("labels"))
    return {"tokens": pc.sum(pc.list_value_length(ds.data.column("input_ids"))).as_py(),
            "labelled": pc.sum(pc.not_equal(labels, -100)).as_py(), "rows": len(ds)}


WORKERS = {"sft": worker_sft, "datasets": worker_datasets, "tokenizers": worker_tokenizers, "encoder": worker_encoder}


def run_ftc(spec: Path, threads: int, force: bool, env: dict[str, str], cpus: set[int] | None = None) -> dict:
    """`ftc prep SPEC --json` in a fresh process (on the cores `cpus`, if given); its own
    `seconds` is the pipeline time."""
    cmd = [str(Path(sys.executable).parent / "ftc"), "prep", str(spec), "--json", "--threads", str(threads)]
    m = measure(cmd + ["--force"] * force, env, cpus=cpus)
    summary = json.loads(m.pop("stdout"))
    return {**m, "seconds": summary["seconds"], "tokens": summary["tokens"], "rows": summary["packed_rows"],
            "labelled": sum(s["label_tokens"] for s in summary["splits"].values()), "cache": summary["cache"]}


def run_worker(name: str, corpus: Path, tokenizer: Path | None, max_length: int, num_proc: int,
               env: dict[str, str]) -> dict:
    """One pipeline in a fresh process (this script with --worker) and an empty datasets cache."""
    cache = OUT / "hf-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, __file__, "--worker", name, "--corpus", str(corpus), "--max-length", str(max_length),
           "--num-proc", str(num_proc)] + ["--tokenizer", str(tokenizer)] * (tokenizer is not None)
    m = measure(cmd, {**env, "HF_DATASETS_CACHE": str(cache)})
    return {**m, **json.loads(m.pop("stdout").strip().splitlines()[-1])}


def bench_env() -> dict[str, str]:
    """The environment of every measured process."""
    return {**os.environ, "FTC_HOME": str(OUT / "ftc-home"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "RAYON_RS_NUM_CPUS": "2"}


def run_all(args: argparse.Namespace, corpus: Path, tokenizer: Path) -> dict[str, dict]:
    """Every selected pipeline, in order, keyed by its row label."""
    env = bench_env()

    def wanted(name: str) -> bool:
        return args.only in (None, name) and (name in ("ftc", "encoder") or not args.skip_baselines)

    results = {}
    if wanted("ftc"):
        spec = write_spec(corpus, tokenizer, args.max_length)
        results["ftc prep, 1 thread"] = run_ftc(spec, 1, True, env)
        # `--threads 1` still reads and writes on threads of their own, on the other core: the
        # baseline of scaling is the stage confined to one core
        results["ftc prep, 1 core (1 thread, pinned)"] = run_ftc(spec, 1, True, env, cpus={min(os.sched_getaffinity(0))})
        results["ftc prep, 2 threads"] = run_ftc(spec, 2, True, env)
        results["ftc prep, warm (cache hit)"] = run_ftc(spec, 2, False, env)
        # The same stage with the `tokenizers` crate as its encoder: ftc before the fast path.
        results["ftc prep, 2 threads, tokenizers crate"] = run_ftc(spec, 2, True, {**env, "FTC_ENCODER": "tokenizers"})
    if wanted("sft"):
        results["TRL SFTTrainer prep, 2 proc"] = run_worker("sft", corpus, tokenizer, args.max_length, 2, env)
    if wanted("datasets"):
        for n in (1, 2):
            results[f"datasets map + pack, {n} proc"] = run_worker("datasets", corpus, tokenizer, args.max_length, n,
                                                                   env)
    if wanted("tokenizers"):
        results["tokenizers encode_batch_fast"] = run_worker("tokenizers", corpus, tokenizer, args.max_length, 1, env)
    if wanted("encoder"):  # last: its tables are printed apart (see report_encoder)
        results["encoder alone, 1 thread"] = run_worker("encoder", corpus, tokenizer, args.max_length, 1, env)
    return results


def report_encoder(r: dict) -> dict[str, float]:
    """The encoder-alone table: tokens/s of each encoder on one thread, and the documents whose
    ids differ from the `tokenizers` crate's (ftc's must be 0)."""
    print(f"encoder alone, 1 thread, {r['docs']:,} rendered documents, {r['tokens']:,} tokens "
          f"(ftc: {r['ftc_encoder']}; tiktoken: {r['tiktoken']})")
    base = r["encoders"]["tokenizers"]
    print(f"  {'encoder':<12}{'seconds':>10}{'tokens/s':>14}{'x tokenizers':>14}{'docs differing':>16}")
    for name, secs in r["encoders"].items():
        d = "(reference)" if name == "tokenizers" else f"{r['differ'][name]:,}"
        print(f"  {name:<12}{secs:>10.2f}{r['tokens'] / secs:>14,.0f}{base / secs:>14.2f}{d:>16}")
    print()
    out = {"encoder: ftc-bpe vs tokenizers (x faster)": base / r["encoders"]["ftc-bpe"],
           "encoder: docs differing, ftc-bpe": r["differ"]["ftc-bpe"]}
    if "tiktoken" in r["encoders"]:
        out["encoder: ftc-bpe vs tiktoken (x faster)"] = r["encoders"]["tiktoken"] / r["encoders"]["ftc-bpe"]
        out["encoder: docs differing, tiktoken"] = r["differ"]["tiktoken"]
    return out


def report(results: dict[str, dict], docs: int, max_length: int) -> dict[str, float]:
    """Prints the table and the headline ratios; returns the ratios."""
    header = ("pipeline", "seconds", "process s", "docs/s", "tokens/s", "tokens", "labelled", "rows", "packing",
              "peak RSS MB", "maxrss MB")
    count = lambda n: "-" if n is None else f"{n:,}"  # noqa: E731
    rows = []
    for name, r in results.items():
        r["docs_per_s"] = docs / r["seconds"]
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        r["packing_efficiency"] = r["tokens"] / (r["rows"] * max_length) if r["rows"] else None
        eff = "-" if r["packing_efficiency"] is None else f"{r['packing_efficiency']:.2%}"
        rows.append((name, f"{r['seconds']:.2f}", f"{r['process_s']:.2f}", f"{r['docs_per_s']:,.0f}",
                     f"{r['tokens_per_s']:,.0f}", f"{r['tokens']:,}", count(r["labelled"]), count(r["rows"]), eff,
                     f"{r['peak_rss_mb']:,.0f}", f"{r['maxrss_mb']:,.0f}"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))

    secs = {name: r["seconds"] for name, r in results.items()}
    ftc1, ftc2, warm = (secs.get(f"ftc prep, {k}") for k in ("1 thread", "2 threads", "warm (cache hit)"))
    candidates = {
        "ftc vs SFTTrainer prep (x faster)": (secs.get("TRL SFTTrainer prep, 2 proc"), ftc2),
        "ftc vs datasets, 2 proc (x faster)": (secs.get("datasets map + pack, 2 proc"), ftc2),
        "ftc speed-up, 1 -> 2 threads": (ftc1, ftc2),
        "ftc speed-up, 1 core -> 2 threads on 2 cores": (secs.get("ftc prep, 1 core (1 thread, pinned)"), ftc2),
        "ftc vs ftc with the tokenizers crate (x faster)": (secs.get("ftc prep, 2 threads, tokenizers crate"), ftc2),
    }
    if warm is not None and ftc2 is not None:  # the whole process: a user waits for start-up too
        candidates["ftc warm / cold, whole process"] = (results["ftc prep, warm (cache hit)"]["process_s"],
                                                        results["ftc prep, 2 threads"]["process_s"])
    ratios = {k: a / b for k, (a, b) in candidates.items() if a is not None and b is not None}
    if "ftc prep, 2 threads" in results:
        ratios["ftc peak RSS MB (2 threads)"] = results["ftc prep, 2 threads"]["peak_rss_mb"]
    if ratios:
        print()
    for k, v in ratios.items():
        print(f"{k:<48} {v:,.0f}" if "RSS" in k else f"{k:<48} {v:,.2f}")
    return ratios


# Case `dedup`: cleaning + near-duplicate removal on web-like text ---------------------------

SHINGLE, NUM_PERM, THRESHOLD, BATCH = 5, 128, 0.8, 10_000
FULLWIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)})
TAILS = ["Thanks for reading.", "Read more.", "Share this post!", "Posted in General."]
# Share of words edited in a near copy, by band, and how often each band is drawn: light copies
# stay well above 0.8 Jaccard of 5-char shingles, medium ones straddle it, heavy ones fall below.
EDIT_RATES = [(0.0, 0.02), (0.02, 0.06), (0.06, 0.12), (0.12, 0.25)]
EDIT_BANDS = [0.35, 0.30, 0.20, 0.15]
TAG = re.compile(r"<[^>]+>")


def web_docs(n_docs: int, seed: int = SEED) -> tuple[list[str], np.ndarray]:
    """`n_docs` web-like texts (deterministic for a seed) and, per text, the index of the earlier
    text it copies (-1 for an original). 5% are exact copies, 18% near copies (words substituted,
    deleted or inserted at a rate drawn from EDIT_RATES, 20% re-cased, 30% with a short tail), the
    rest 300–1500 characters of random sentences. Any non-exact text is then dressed: 12% as HTML
    (paragraphs, inline tags, entities), 10% with stray whitespace, 6% with fullwidth words."""
    rng = np.random.default_rng(seed)
    pool = sentence_pool(rng, 100_000)
    words = lambda k: [COMMON_WORDS[i] for i in rng.integers(0, len(COMMON_WORDS), size=k)]  # noqa: E731

    def original() -> str:
        target, out = int(rng.integers(300, 1500)), []
        for i in rng.integers(0, len(pool), size=40).tolist():
            out.append(pool[i])
            if sum(map(len, out)) >= target:
                break
        return "".join(out).strip()

    def near_copy(text: str) -> str:
        ws = text.split(" ")
        lo, hi = EDIT_RATES[rng.choice(len(EDIT_RATES), p=EDIT_BANDS)]
        for _ in range(max(1, round(rng.uniform(lo, hi) * len(ws)))):
            at, op = int(rng.integers(0, len(ws))), rng.random()
            if op < 0.5:
                ws[at] = words(1)[0]
            elif op < 0.8 and len(ws) > 5:
                del ws[at]
            else:
                ws.insert(at, words(1)[0])
        text = " ".join(ws)
        if rng.random() < 0.2:
            text = text.lower() if rng.random() < 0.5 else text.upper()
        return text + " " + TAILS[int(rng.integers(0, len(TAILS)))] if rng.random() < 0.3 else text

    def dress(text: str) -> str:
        r = rng.random()
        if r < 0.12:  # block tags sit next to whitespace, so "\n" (ftc) and "" (re.sub) collapse alike
            ws = text.split(" ")
            for at in rng.integers(0, len(ws), size=int(rng.integers(1, 4))).tolist():
                ws[at] = f"<b>{ws[at]}</b>" if rng.random() < 0.5 else f'<a href="https://example.com/{at}">{ws[at]}</a>'
            text = " ".join(ws).replace(" and ", " &amp; ", 1).replace(", ", ",&nbsp;", 2)
            return "".join(f"<p>{p.strip()}</p>\n" for p in text.split("\n\n") if p.strip())
        if r < 0.22:
            return "\n  " + text.replace(". ", ".  ", 3).replace(" ", "\t", 2) + "  \n"
        if r < 0.28:
            ws = text.split(" ")
            for at in rng.integers(0, len(ws), size=int(rng.integers(2, 12))).tolist():
                ws[at] = ws[at].translate(FULLWIDTH)
            return " ".join(ws)
        return text

    plain, texts, sources = [], [], np.full(n_docs, -1, dtype=np.int64)
    for i in range(n_docs):
        r = rng.random()
        if i and r < 0.23:
            sources[i] = j = int(rng.integers(0, i))
        if i and r < 0.05:
            plain.append(plain[j])
            texts.append(texts[j])
            continue
        plain.append(near_copy(plain[j]) if sources[i] >= 0 else original())
        texts.append(dress(plain[-1]))
    return texts, sources


def make_web_corpus(n_docs: int) -> tuple[Path, np.ndarray]:
    """The JSONL corpus (a `text` column) of `n_docs` web-like texts and the copy sources,
    generated once and cached."""
    path, src_path = OUT / f"web-{n_docs}.jsonl", OUT / f"web-{n_docs}.sources.npy"
    if not (path.exists() and src_path.exists()):
        texts, sources = web_docs(n_docs)
        np.save(src_path, sources)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
        tmp.rename(path)
    return path, np.load(src_path)


def clean_py(text: str) -> str:
    """The cleaning a user writes: tags out, entities decoded, NFKC, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", html.unescape(TAG.sub("", text))).split())


def shingles(text: str) -> set[str]:
    """Character 5-shingles of a cleaned text's dedup key (lowercased; whitespace is collapsed)."""
    key = text.lower()
    return {key[i:i + SHINGLE] for i in range(max(1, len(key) - SHINGLE + 1))}


def minhash(text: str):
    from datasketch import MinHash

    m = MinHash(num_perm=NUM_PERM)
    m.update_batch([s.encode() for s in shingles(text)])
    return m


def worker_dedup_ftc(corpus: str, num_proc: int) -> dict:
    """ftc's kernels: polars reads, `TextCleaner` cleans, `Deduper` checks batches of 10k in order."""
    import polars as pl
    import pyarrow as pa
    from ftc import _data

    t0 = time.perf_counter()
    texts = pl.read_ndjson(corpus, schema={"text": pl.String})["text"].to_arrow()
    t1 = time.perf_counter()
    cleaner = _data.TextCleaner(strip_html=True, normalize="NFKC", collapse_whitespace=True, threads=num_proc)
    cleaned = pa.array(cleaner.clean(texts)[0])
    t2 = time.perf_counter()
    deduper = _data.Deduper("near", threshold=THRESHOLD, shingle=SHINGLE, num_perm=NUM_PERM, threads=num_proc)
    matches = np.concatenate([np.asarray(pa.array(deduper.check(cleaned.slice(i, BATCH))))
                              for i in range(0, len(cleaned), BATCH)])
    t3 = time.perf_counter()
    return {"seconds": t3 - t0, "read_s": t1 - t0, "clean_s": t2 - t1, "dedup_s": t3 - t2,
            "removed": {int(i): [int(matches[i])] for i in np.flatnonzero(matches >= 0)}}


def worker_dedup_datasketch(corpus: str, num_proc: int) -> dict:
    """The Python a user writes: json.loads, `clean_py`, a datasketch MinHash per text (in a
    `Pool` of `num_proc` when above 1), then `MinHashLSH`: a text with any hit is removed (its
    hits are the candidates), else inserted."""
    from datasketch import MinHashLSH

    t0 = time.perf_counter()
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    t1 = time.perf_counter()
    if num_proc == 1:
        cleaned = [clean_py(t) for t in texts]
        t2 = time.perf_counter()
        sigs = [minhash(t) for t in cleaned]
    else:
        with Pool(num_proc) as pool:
            cleaned = pool.map(clean_py, texts, chunksize=1000)
            t2 = time.perf_counter()
            sigs = pool.map(minhash, cleaned, chunksize=256)
    lsh, removed = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM), {}
    for i, m in enumerate(sigs):
        if hits := lsh.query(m):
            removed[i] = hits
        else:
            lsh.insert(i, m)
    t3 = time.perf_counter()
    return {"seconds": t3 - t0, "read_s": t1 - t0, "clean_s": t2 - t1, "dedup_s": t3 - t2, "removed": removed}


DEDUP_WORKERS = {"dedup-ftc": worker_dedup_ftc, "dedup-datasketch": worker_dedup_datasketch}
PREP_ROW = "ftc prep: clean + near dedup + tokenize + pack, 2 threads"


def ftc_row(n: int) -> str:
    return f"ftc kernels: read + clean + near dedup, {n} thread{'s' * (n > 1)}"


def sketch_row(n: int) -> str:
    return f"Python clean + datasketch MinHashLSH, {n} proc"


DEDUP_CLEAN = """
[data.clean]
normalize = "NFKC"
strip_html = true
collapse_whitespace = true
dedup = "near"
"""


def run_dedup(args: argparse.Namespace, corpus: Path) -> dict[str, dict]:
    """Every dedup pipeline, in order, keyed by its row label; a worker's `removed` maps each
    removed text to its candidate originals."""
    env, results = bench_env(), {}
    for n in (1, 2):
        results[ftc_row(n)] = run_worker("dedup-ftc", corpus, None, 0, n, env)
    for n in (1, 2) if not args.skip_baselines else ():
        results[sketch_row(n)] = run_worker("dedup-datasketch", corpus, None, 0, n, env)
    # The whole `ftc prep` with the same cleaning and dedup, while `[data.clean]` is being wired.
    spec = write_spec(corpus, make_tokenizer(), args.max_length, "bench-dedup", DEDUP_CLEAN)
    cmd = [str(Path(sys.executable).parent / "ftc"), "prep", str(spec), "--json", "--threads", "2", "--force"]
    m = measure(cmd, env, check=False)
    if "error" in m:
        print(f"skipped `ftc prep` with [data.clean]: {m['error'].strip().splitlines()[-1]}\n")
    else:
        summary = json.loads(m.pop("stdout"))
        results[PREP_ROW] = {
            **m, "seconds": summary["seconds"], "removed_count": summary["rows_read"] - summary["kept"],
            "tokens": summary["tokens"]}
    return results


def dedup_agreement(corpus: Path, sources: np.ndarray, results: dict[str, dict]) -> dict:
    """How ftc's and datasketch's removals compare, and how similar each removed text truly is to
    its match: the exact Jaccard of 5-char shingle sets of the cleaned keys (ftc's cleaning). For
    datasketch the match is its best candidate by that Jaccard. Recall is measured on the injected
    copies, by their true Jaccard to the text they copy."""
    import pyarrow as pa
    from ftc import _data

    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    cleaner = _data.TextCleaner(strip_html=True, normalize="NFKC", collapse_whitespace=True, threads=2)
    cleaned = pa.array(cleaner.clean(pa.array(texts, pa.large_string()))[0]).to_pylist()
    same_clean = sum(a == clean_py(b) for a, b in zip(cleaned, texts))
    cache: dict[int, set[str]] = {}

    def jaccard(i: int, j: int) -> float:
        a, b = (cache.setdefault(k, shingles(cleaned[k])) for k in (i, j))
        return len(a & b) / len(a | b)

    ftc, sketch = results[ftc_row(2)]["removed"], results.get(sketch_row(1), {}).get("removed")
    sets = {"ftc": ftc} if sketch is None else {"ftc": ftc, "datasketch": sketch}
    out = {"docs": len(texts), "cleaned_identical": same_clean, "removed": {k: len(v) for k, v in sets.items()}}
    for name, removed in sets.items():
        true = [max(jaccard(int(i), c) for c in cands) for i, cands in removed.items()]
        out.setdefault("precision", {})[name] = float(np.mean(np.array(true) >= THRESHOLD)) if true else None
        out.setdefault("true_j_p1_min", {})[name] = [float(np.percentile(true, 1)), min(true)] if true else None
        out.setdefault("originals_removed", {})[name] = int(sum(sources[int(i)] < 0 for i in removed))
    if sketch is not None:
        a, b = set(ftc), set(sketch)
        out["both"], out["sets_jaccard"] = len(a & b), len(a & b) / len(a | b) if a | b else 1.0
        out["datasketch_1_2_proc_identical"] = set(results[sketch_row(2)]["removed"]) == b
    bands = {"J = 1": (1.0, 1.01), "0.9 <= J < 1": (0.9, 1.0), "0.8 <= J < 0.9": (0.8, 0.9),
             "0.7 <= J < 0.8": (0.7, 0.8), "J < 0.7": (0.0, 0.7)}
    copies = np.flatnonzero(sources >= 0)
    true = np.array([jaccard(int(i), int(sources[i])) for i in copies])
    out["recall"] = {}
    for band, (lo, hi) in bands.items():
        members = copies[(true >= lo) & (true < hi)]
        out["recall"][band] = {"copies": len(members), **{name: float(np.mean([str(i) in removed for i in members]))
                                                          if len(members) else None for name, removed in sets.items()}}
    return out


def report_dedup(results: dict[str, dict], agree: dict) -> dict[str, float]:
    """Prints the table, the speed ratios and the agreement; returns the ratios."""
    header = ("pipeline", "seconds", "read s", "clean s", "dedup s", "process s", "docs/s", "removed", "peak RSS MB")
    secs = lambda r, k: f"{r[k]:.2f}" if k in r else "-"  # noqa: E731
    rows = []
    for name, r in results.items():
        r["docs_per_s"] = agree["docs"] / r["seconds"]
        r["removed_count"] = r.get("removed_count", len(r.get("removed", ())))
        rows.append((name, secs(r, "seconds"), secs(r, "read_s"), secs(r, "clean_s"), secs(r, "dedup_s"),
                     secs(r, "process_s"), f"{r['docs_per_s']:,.0f}", f"{r['removed_count']:,}",
                     f"{r['peak_rss_mb']:,.0f}"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))

    s = {name: r["seconds"] for name, r in results.items()}
    candidates = {f"ftc vs datasketch, {n} proc (x faster)": (s.get(sketch_row(n)), s.get(ftc_row(n)))
                  for n in (1, 2)}
    candidates["ftc speed-up, 1 -> 2 threads"] = (s.get(ftc_row(1)), s.get(ftc_row(2)))
    ratios = {k: a / b for k, (a, b) in candidates.items() if a is not None and b is not None}
    print()
    for k, v in ratios.items():
        print(f"{k:<40} {v:,.2f}")
    print(f"{'cleaned texts identical (ftc, Python)':<40} {agree['cleaned_identical']:,} / {agree['docs']:,}")
    names = list(agree["removed"])
    print(f"{'removed':<40} " + "  ".join(f"{n} {agree['removed'][n]:,}" for n in names)
          + (f"  both {agree['both']:,}  Jaccard of the sets {agree['sets_jaccard']:.4f}" if "both" in agree else ""))
    print(f"{'removals with true J >= 0.8':<40} " + "  ".join(f"{n} {agree['precision'][n]:.2%}" for n in names))
    print(f"{'true J of removals: 1st pct / min':<40} "
          + "  ".join(f"{n} {agree['true_j_p1_min'][n][0]:.3f} / {agree['true_j_p1_min'][n][1]:.3f}" for n in names))
    print(f"{'originals removed':<40} " + "  ".join(f"{n} {agree['originals_removed'][n]:,}" for n in names))
    print("\ninjected copies removed, by true Jaccard to the text they copy:")
    print(f"  {'band':<16}{'copies':>8}" + "".join(f"{n:>12}" for n in names))
    for band, r in agree["recall"].items():
        print(f"  {band:<16}{r['copies']:>8,}" + "".join(f"{'-' if r[n] is None else f'{r[n]:.2%}':>12}" for n in names))
    return ratios


def bench_dedup(args: argparse.Namespace) -> None:
    """Case `dedup`: the same cleaning (strip HTML, NFKC, collapse whitespace) and near dedup
    (0.8 Jaccard, 5-char shingles, 128 permutations, first occurrence kept) by ftc's kernels and by
    the Python + datasketch a user writes, each in a fresh process; the table, the ratios, the
    agreement of the removed sets and bench/out/dedup.json."""
    t0 = time.perf_counter()
    corpus, sources = make_web_corpus(args.docs)
    size = corpus.stat().st_size
    print(f"corpus {corpus} ({args.docs:,} docs, {size / 1e6:,.0f} MB, {np.mean(sources >= 0):.0%} copies; "
          f"ready in {time.perf_counter() - t0:.0f}s); {os.cpu_count()} CPUs\n")
    results = run_dedup(args, corpus)
    agree = dedup_agreement(corpus, sources, results)
    ratios = report_dedup(results, agree)
    for r in results.values():
        r.pop("removed", None)
        r.pop("stdout", None)
    summary = {"docs": args.docs, "corpus_bytes": size, "cpus": os.cpu_count(), "threshold": THRESHOLD,
               "shingle": SHINGLE, "num_perm": NUM_PERM, "results": results, "ratios": ratios, "agreement": agree}
    (OUT / "dedup.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"\nwrote {OUT / 'dedup.json'}")


def bench_prep(args: argparse.Namespace) -> None:
    """Case `prep`: tokenize + pack chat data; the table, the ratios and bench/out/prep.json."""
    t0 = time.perf_counter()
    corpus, tokenizer = make_corpus(args.docs), make_tokenizer()
    size = corpus.stat().st_size
    print(f"corpus {corpus} ({args.docs:,} docs, {size / 1e6:,.0f} MB); tokenizer {tokenizer} "
          f"(ready in {time.perf_counter() - t0:.0f}s); {os.cpu_count()} CPUs\n")
    results = run_all(args, corpus, tokenizer)
    encoder = results.pop("encoder alone, 1 thread", None)
    ratios = {**(report_encoder(encoder) if encoder else {}),
              **(report(results, args.docs, args.max_length) if results else {})}
    if encoder:
        results["encoder alone, 1 thread"] = encoder
    summary = {"docs": args.docs, "corpus_bytes": size, "max_length": args.max_length, "cpus": os.cpu_count(),
               "results": results, "ratios": ratios}
    (OUT / "prep.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"\nwrote {OUT / 'prep.json'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=["prep", "dedup", "all"], default="prep", help="which benchmark to run")
    p.add_argument("--docs", type=int, help="documents in the synthetic corpus (prep: 200000, dedup: 100000)")
    p.add_argument("--max-length", type=int, default=2048, help="packed row length")
    p.add_argument("--only", choices=["ftc", *WORKERS], help="prep: run a single pipeline")
    p.add_argument("--skip-baselines", action="store_true", help="run ftc alone")
    p.add_argument("--worker", choices=[*WORKERS, *DEDUP_WORKERS], help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--num-proc", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker in DEDUP_WORKERS:
        print(json.dumps(DEDUP_WORKERS[args.worker](args.corpus, args.num_proc)))
        return
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.corpus, args.tokenizer, args.max_length, args.num_proc)))
        return

    OUT.mkdir(parents=True, exist_ok=True)
    for case, bench, docs in (("prep", bench_prep, 200_000), ("dedup", bench_dedup, 100_000)):
        if args.case in (case, "all"):
            bench(argparse.Namespace(**{**vars(args), "docs": args.docs or docs}))
            print()


if __name__ == "__main__":
    main()

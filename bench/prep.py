"""Benchmark `ftc prep` against the data-preparation pipelines users run today.

    .venv/bin/python bench/prep.py [--docs 200000] [--only ftc|sft|datasets|tokenizers] [--skip-baselines]

One synthetic chat corpus (JSONL, a `messages` column) and one locally trained byte-level BPE
tokenizer with SmolLM2's chat template feed every pipeline; both are cached in bench/out/.
Each pipeline runs in a fresh process, so its peak memory is its own:

  ftc         `ftc prep SPEC --json --force` with 1 and 2 threads, then a warm re-run (cache hit)
  sft         TRL `SFTTrainer` construction: assistant-only loss, BFD packing, 2 processes
  datasets    `load_dataset` → `map` (chat template + offsets → completion labels) → TRL
              `pack_dataset(strategy="bfd")`, with 1 and 2 processes
  tokenizers  `Tokenizer.encode_batch_fast` on pre-rendered texts: the floor (no labels, no packing)

"seconds" is the pipeline itself as each reports or times it (imports and model construction
excluded); "process" is the whole process. Peak RSS is the largest sum of RSS over the process
tree (polled every 0.2 s) and, separately, the kernel's ru_maxrss of the largest single process.
Results go to bench/out/prep.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
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


def make_tokenizer(vocab_size: int = 32_000) -> Path:
    """A byte-level BPE tokenizer (ChatML specials, SmolLM2's template) trained on 10k generated
    documents (independent of --docs), saved with `save_pretrained` and cached."""
    path = OUT / f"tokenizer-{vocab_size // 1000}k"
    if (path / "tokenizer.json").exists():
        return path
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((m["content"] for d in generate_docs(10_000, SEED + 1) for m in d["messages"]), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = SMOL_TEMPLATE
    fast.save_pretrained(path)
    return path


def write_spec(corpus: Path, tokenizer: Path, max_length: int) -> Path:
    """The ftc spec: the whole corpus to train, completion-only labels, BFD packing."""
    path = OUT / f"{corpus.stem}.toml"
    path.write_text(f'''[project]
name = "bench-prep"

[model]
base = "{tokenizer}"

[[data.sources]]
path = "{corpus}"

[data.split]
valid = 0
test = 0

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


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Runs `cmd` in a fresh process. Returns its wall time, stdout, the peak of the process tree's
    summed RSS (polled every 0.2 s) and ru_maxrss from `wait4` (the largest single process among it
    and its reaped descendants)."""
    err_path = OUT / "last-stderr.txt"
    with open(OUT / "last-stdout.txt", "w+b") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
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
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err_path.read_text()[-3000:]}")
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


def packed_stats(ds) -> dict:
    """Total tokens, labelled tokens and rows of a packed `datasets.Dataset`."""
    import pyarrow.compute as pc

    labels = pc.list_flatten(ds.data.column("labels"))
    return {"tokens": pc.sum(pc.list_value_length(ds.data.column("input_ids"))).as_py(),
            "labelled": pc.sum(pc.not_equal(labels, -100)).as_py(), "rows": len(ds)}


WORKERS = {"sft": worker_sft, "datasets": worker_datasets, "tokenizers": worker_tokenizers}


def run_ftc(spec: Path, threads: int, force: bool, env: dict[str, str]) -> dict:
    """`ftc prep SPEC --json` in a fresh process; its own `seconds` is the pipeline time."""
    cmd = [str(Path(sys.executable).parent / "ftc"), "prep", str(spec), "--json", "--threads", str(threads)]
    m = measure(cmd + ["--force"] * force, env)
    summary = json.loads(m.pop("stdout"))
    return {**m, "seconds": summary["seconds"], "tokens": summary["tokens"], "rows": summary["packed_rows"],
            "labelled": sum(s["label_tokens"] for s in summary["splits"].values()), "cache": summary["cache"]}


def run_worker(name: str, corpus: Path, tokenizer: Path, max_length: int, num_proc: int, env: dict[str, str]) -> dict:
    """One baseline in a fresh process (this script with --worker) and an empty datasets cache."""
    cache = OUT / "hf-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, __file__, "--worker", name, "--corpus", str(corpus), "--tokenizer", str(tokenizer),
           "--max-length", str(max_length), "--num-proc", str(num_proc)]
    m = measure(cmd, {**env, "HF_DATASETS_CACHE": str(cache)})
    return {**m, **json.loads(m.pop("stdout").strip().splitlines()[-1])}


def run_all(args: argparse.Namespace, corpus: Path, tokenizer: Path) -> dict[str, dict]:
    """Every selected pipeline, in order, keyed by its row label."""
    env = {**os.environ, "FTC_HOME": str(OUT / "ftc-home"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "RAYON_RS_NUM_CPUS": "2"}

    def wanted(name: str) -> bool:
        return args.only in (None, name) and (name == "ftc" or not args.skip_baselines)

    results = {}
    if wanted("ftc"):
        spec = write_spec(corpus, tokenizer, args.max_length)
        results["ftc prep, 1 thread"] = run_ftc(spec, 1, True, env)
        results["ftc prep, 2 threads"] = run_ftc(spec, 2, True, env)
        results["ftc prep, warm (cache hit)"] = run_ftc(spec, 2, False, env)
    if wanted("sft"):
        results["TRL SFTTrainer prep, 2 proc"] = run_worker("sft", corpus, tokenizer, args.max_length, 2, env)
    if wanted("datasets"):
        for n in (1, 2):
            results[f"datasets map + pack, {n} proc"] = run_worker("datasets", corpus, tokenizer, args.max_length, n,
                                                                   env)
    if wanted("tokenizers"):
        results["tokenizers encode_batch_fast"] = run_worker("tokenizers", corpus, tokenizer, args.max_length, 1, env)
    return results


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
        print(f"{k:<36} {v:,.0f}" if "RSS" in k else f"{k:<36} {v:,.2f}")
    return ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=200_000, help="documents in the synthetic corpus")
    p.add_argument("--max-length", type=int, default=2048, help="packed row length")
    p.add_argument("--only", choices=["ftc", *WORKERS], help="run a single pipeline")
    p.add_argument("--skip-baselines", action="store_true", help="run ftc alone")
    p.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--tokenizer", help=argparse.SUPPRESS)
    p.add_argument("--num-proc", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.corpus, args.tokenizer, args.max_length, args.num_proc)))
        return

    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus, tokenizer = make_corpus(args.docs), make_tokenizer()
    size = corpus.stat().st_size
    print(f"corpus {corpus} ({args.docs:,} docs, {size / 1e6:,.0f} MB); tokenizer {tokenizer} "
          f"(ready in {time.perf_counter() - t0:.0f}s); {os.cpu_count()} CPUs\n")
    results = run_all(args, corpus, tokenizer)
    ratios = report(results, args.docs, args.max_length)
    summary = {"docs": args.docs, "corpus_bytes": size, "max_length": args.max_length, "cpus": os.cpu_count(),
               "results": results, "ratios": ratios}
    (OUT / "prep.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(f"\nwrote {OUT / 'prep.json'}")


if __name__ == "__main__":
    main()

"""Packed vs padded batches for causal-LM SFT on a tiny Llama: useful tokens/s and the loss curves.

    .venv/bin/python bench/train.py [--docs N] [--max-length L] [--rows R] [--threads T] [--no-grouped]
                                    [--no-mask-arm]

Everything is built here, nothing is downloaded: a seeded chat corpus (lognormal lengths,
20–600 tokens, at most 90% of max_length), a byte-level BPE tokenizer trained on it with SmolLM2's chat template, and a
randomly initialised Llama (hidden 256, 4 layers, 4 heads, 2 KV heads) saved next to it, all
under bench/out/train/. `ftc prep` builds the data twice from the same spec, `pack = true` and
`pack = false` (completion-only labels, 5% validation), and every arm trains one epoch over the
same training examples from the same initial weights (AdamW, warm-up then cosine, clip 1.0,
float32, CPU, `--threads` threads):

  padded, shuffled      B examples per batch in seeded random order, right-padded to the longest,
                        attention_mask, pad labels -100: HF Trainer + DataCollatorForSeq2Seq
  padded, grouped       the same with HF's `group_by_length` order (megabatches of 50·B sorted
                        by length): the strongest padded baseline
  packed                R BFD-packed rows of `max_length` per batch, `position_ids` restarting
                        at each example, `use_cache=False`, and ftc's attention for packed rows
                        (`ftc.attention.register_segmented_attention`, what `ftc build` trains with on
                        CPU): SDPA per example, as varlen flash attention does on a GPU, so a row
                        costs Σ len² scores instead of row_len²
  packed, sdpa mask     the same batches with transformers' SDPA and its block-diagonal causal
                        mask: exact too, but it computes all row_len² scores, most of them masked

B is R times the mean number of examples per packed row, so every arm takes about as many
optimizer steps with as many examples per step. The arms are stepped in turn (the one least far
through its epoch goes next) and each step is timed alone, so load from other processes falls
on all of them alike; still, time it on an idle machine (under heavy load the packed arms lose
the most: 1.26× instead of 1.78× in one such run). Useful tokens are the non-pad tokens; the loss is HF's (mean over the
label tokens of a batch); the eval loss is the token-weighted mean over the validation split,
computed the same way for every arm. Before training, the per-token losses of a few packed
rows are checked against each of their examples run alone, and the loss and gradients of a
packed batch against the same examples padded.

Prints a table and the ratios; writes bench/out/train.json and bench/out/train-loss.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
WORK = OUT / "train"
SEED = 20240611
sys.path.insert(0, str(ROOT / "tests"))
from tiny import write_spec  # noqa: E402

from ftc.collate import PackedCollator  # noqa: E402
from ftc.rows import IGNORE  # noqa: E402
from ftc.attention import register_segmented_attention  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from prep import OPENERS, SYSTEM_PROMPTS, sentence_pool, train_bpe  # noqa: E402

CHARS_PER_TOKEN = 3.2  # of the 2k-vocab tokenizer below on this text; only shapes the lengths


# ── corpus, tokenizer, model ─────────────────────────────────────────────────────────────────

def generate_docs(n_docs: int, seed: int, longest: int) -> list[dict]:
    """`n_docs` conversations: a total length drawn lognormal (median 150 tokens, clipped to
    20–`longest`) and split between a user prompt (~25%) and an assistant reply; 15% have 2–3
    exchanges, 10% a system prompt."""
    rng = np.random.default_rng(seed)
    pool = sentence_pool(rng, 20_000)
    cum = np.cumsum([0] + [len(s) for s in pool])

    def text(chars: float) -> str:
        start = int(rng.integers(0, len(pool) - 200))
        stop = int(np.searchsorted(cum, cum[start] + max(chars, 20))) + 1
        return "".join(pool[start:stop]).strip()[:int(max(chars, 20))].strip()

    docs = []
    for _ in range(n_docs):
        tokens = float(np.clip(rng.lognormal(math.log(150), 0.75), 20, longest)) - 30  # template ≈ 30 tokens
        chars = max(tokens, 8) * CHARS_PER_TOKEN
        messages = []
        if rng.random() < 0.10:
            messages.append({"role": "system", "content": str(rng.choice(SYSTEM_PROMPTS))})
        turns = int(rng.integers(2, 4)) if rng.random() < 0.15 else 1
        for _ in range(turns):
            share = chars / turns - 8 * CHARS_PER_TOKEN * (turns > 1)
            user = share * rng.uniform(0.15, 0.35)
            messages.append({"role": "user", "content": f"{rng.choice(OPENERS)} {text(user).lower()}"})
            messages.append({"role": "assistant", "content": text(share - user)})
        docs.append({"messages": messages})
    return docs


def make_corpus(n_docs: int, longest: int) -> tuple[Path, list[dict]]:
    path = WORK / f"chat-{n_docs}-{longest}.jsonl"
    docs = generate_docs(n_docs, SEED, longest)
    if not path.exists():
        path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path, docs


def make_model_dir(corpus: Path, docs: list[dict], max_length: int, vocab_size: int = 2048) -> Path:
    """Tokenizer (byte-level BPE trained on the corpus, ChatML specials, SmolLM2's template) and a
    tiny Llama with seeded random weights, saved together as a model directory (cached)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = WORK / f"llama-{corpus.stem}-{max_length}"
    if (path / "config.json").exists():
        return path
    fast = train_bpe((m["content"] for d in docs for m in d["messages"]), vocab_size)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_length,
                         tie_word_embeddings=True, pad_token_id=fast.pad_token_id, eos_token_id=fast.eos_token_id,
                         bos_token_id=None)
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    fast.save_pretrained(path)
    model.save_pretrained(path)
    return path


# ── data through ftc ─────────────────────────────────────────────────────────────────────────

@dataclass
class Rows:
    """One split of an ftc dataset: per row, int64 arrays."""

    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    position_ids: list[np.ndarray]
    seq_lengths: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.input_ids)

    def examples(self) -> list[tuple[bytes, bytes]]:
        """Every example of every row as (ids, labels) bytes: the multiset a dataset trains on."""
        out = []
        for ids, labels, lens in zip(self.input_ids, self.labels, self.seq_lengths, strict=True):
            for s, e in zip(np.cumsum(lens) - lens, np.cumsum(lens), strict=True):
                out.append((ids[s:e].tobytes(), labels[s:e].tobytes()))
        return out


def read_rows(path: Path) -> Rows:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_stream(source).read_all()

    def column(name: str) -> list[np.ndarray]:
        col = table.column(name).combine_chunks()
        flat, offsets = col.values.to_numpy().astype(np.int64), col.offsets.to_numpy()
        return [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]

    return Rows(*(column(c) for c in ("input_ids", "labels", "position_ids", "seq_lengths")))


def prep_both(corpus: Path, model_dir: Path, max_length: int, threads: int) -> dict[str, dict]:
    """`ftc prep` of one spec with `pack = true` and with `pack = false`; each split's rows."""
    os.environ.setdefault("FTC_HOME", str(OUT / "ftc-home"))
    from ftc.prep import prep
    from ftc.specload import load_spec

    out = {}
    for pack in (True, False):
        spec = write_spec(WORK / f"{corpus.stem}-{'packed' if pack else 'padded'}.toml", model_dir,
                          [{"path": str(corpus)}], data_split={"valid": 0.05, "test": 0},
                          tokenize={"max_length": max_length, "pack": pack, "train_on": "completions"})
        r = prep(load_spec(spec), threads=threads)
        split = r.manifest["stats"]["splits"]["train"]
        print(f"ftc prep pack={str(pack).lower():<5} {r.seconds:6.2f}s{' (cache hit)' if r.cache_hit else ''}  "
              f"train: {split['examples']:,} examples in {split['rows']:,} rows, {split['tokens']:,} tokens, "
              f"{split['label_tokens']:,} labelled  {r.path}")
        out["packed" if pack else "padded"] = {s: read_rows(r.path / f"{s}.arrow") for s in ("train", "valid")}
    return out


# ── batches ──────────────────────────────────────────────────────────────────────────────────

def order_shuffled(n: int, b: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    return [perm[i:i + b] for i in range(0, n, b)]


def order_grouped(lengths: np.ndarray, b: int, rng: np.random.Generator) -> list[np.ndarray]:
    """HF `get_length_grouped_indices`: a random permutation cut into megabatches of 50·B, each
    sorted by length (longest first), the longest example moved to the very front; then cut
    into batches of B."""
    perm = rng.permutation(len(lengths))
    mega = [sorted(perm[i:i + 50 * b], key=lambda j: -lengths[j]) for i in range(0, len(perm), 50 * b)]
    top = int(np.argmax([lengths[m[0]] for m in mega]))
    mega[0][0], mega[top][0] = mega[top][0], mega[0][0]
    flat = np.array([j for m in mega for j in m])
    return [flat[i:i + b] for i in range(0, len(flat), b)]


def collate(rows: Rows, idx: np.ndarray, pad_id: int, packed: bool) -> dict:
    """Rows → a batch padded to its longest row. Packed: ftc's own collator (`position_ids`, no
    mask, padding a segment of its own, first-token labels dropped). Padded: `attention_mask`,
    with the same first-token rule so both arms score the same tokens."""
    import torch

    if packed:
        return PackedCollator(pad_id)([{"input_ids": rows.input_ids[i], "labels": rows.labels[i],
                                        "position_ids": rows.position_ids[i]} for i in idx])
    width = max(len(rows.input_ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for k, i in enumerate(idx):
        n = len(rows.input_ids[i])
        ids[k, :n] = torch.from_numpy(rows.input_ids[i])
        labels[k, :n] = torch.from_numpy(np.where(rows.position_ids[i] == 0, IGNORE, rows.labels[i]))
        mask[k, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# ── training ─────────────────────────────────────────────────────────────────────────────────

@dataclass
class Arm:
    name: str
    rows: Rows
    batches: list[np.ndarray]
    packed: bool
    attention: str = "sdpa"
    model: object = None
    opt: object = None
    sched: object = None
    done: int = 0
    log: dict[str, list] = field(default_factory=lambda: {k: [] for k in (
        "loss", "seconds", "cpu_seconds", "useful", "slots", "label_tokens", "examples")})


def setup(arm: Arm, model_dir: Path, lr: float) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    arm.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=arm.attention)
    arm.model.train()
    arm.opt = torch.optim.AdamW(arm.model.parameters(), lr=lr, weight_decay=0.0)
    total, warm = len(arm.batches), max(1, len(arm.batches) // 20)

    def schedule(step: int) -> float:  # linear warm-up over 5%, then cosine to 10%
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    arm.sched = torch.optim.lr_scheduler.LambdaLR(arm.opt, schedule)


def step(arm: Arm, pad_id: int) -> None:
    import torch

    t0, c0 = time.perf_counter(), time.process_time()
    idx = arm.batches[arm.done]
    batch = collate(arm.rows, idx, pad_id, arm.packed)
    loss = arm.model(**batch, use_cache=False).loss
    loss.backward()
    loss = float(loss.detach())
    torch.nn.utils.clip_grad_norm_(arm.model.parameters(), 1.0)
    arm.opt.step()
    arm.sched.step()
    arm.opt.zero_grad(set_to_none=True)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    useful = sum(len(arm.rows.input_ids[i]) for i in idx)
    for k, v in (("loss", loss), ("seconds", seconds), ("cpu_seconds", cpu), ("useful", useful),
                 ("slots", batch["labels"].numel()), ("label_tokens", int((batch["labels"][:, 1:] != IGNORE).sum())),
                 ("examples", sum(len(arm.rows.seq_lengths[i]) for i in idx))):
        arm.log[k].append(v)
    arm.done += 1


def train_interleaved(arms: list[Arm], pad_id: int) -> None:
    """Steps the arm least far through its epoch until all are done; progress every ~10%."""
    total, shown = sum(len(a.batches) for a in arms), 0
    while (live := [a for a in arms if a.done < len(a.batches)]):
        step(min(live, key=lambda a: a.done / len(a.batches)), pad_id)
        if (done := sum(a.done for a in arms)) * 10 // total > shown:
            shown = done * 10 // total
            print(f"  {shown * 10:3d}%  " + " | ".join(
                f"{a.name} {a.done}/{len(a.batches)} loss {a.log['loss'][-1]:.3f} {sum(a.log['seconds']):.0f}s"
                for a in arms), flush=True)


def eval_loss(model, rows: Rows, pad_id: int, batch_size: int = 16) -> float:
    """Token-weighted mean NLL over the label tokens of `rows` (unpacked, padded, length-sorted)."""
    import torch

    model.eval()
    order = np.argsort([len(x) for x in rows.input_ids])
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            batch = collate(rows, order[s:s + batch_size], pad_id, packed=False)
            labels = batch.pop("labels")
            logits = model(**batch, use_cache=False).logits
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                    ignore_index=IGNORE, reduction="sum")
            total, count = total + float(nll), count + int((labels[:, 1:] != IGNORE).sum())
    model.train()
    return total / count


def token_nll(logits, ids, labels):
    """Per-position NLL of the next label (NaN where there is none), HF's shift."""
    import torch

    nll = torch.full(ids.shape, float("nan"))
    target = labels[1:]
    keep = target != IGNORE
    lp = torch.log_softmax(logits[:-1], -1)
    nll[:-1][keep] = -lp[keep].gather(-1, target[keep, None])[:, 0]
    return nll


def unpack(rows: Rows, idx: np.ndarray) -> Rows:
    """The examples of rows `idx`, one per row."""
    out = Rows([], [], [], [])
    for i in idx:
        ends = np.cumsum(rows.seq_lengths[i])
        for s, e in zip(ends - rows.seq_lengths[i], ends, strict=True):
            out.input_ids.append(rows.input_ids[i][s:e])
            out.labels.append(rows.labels[i][s:e])
            out.position_ids.append(np.arange(e - s))
            out.seq_lengths.append(np.array([e - s]))
    return out


def check_exact(model_dir: Path, rows: Rows, pad_id: int, batch_rows: int, attention: str = "sdpa") -> dict:
    """Packed rows vs their examples, at the initial weights.

    Per token: three rows (first, middle, last: long to short examples) forward, each example's
    losses and logits against the example run alone; the control runs the rows without
    `position_ids` (plain causal attention across examples). Per batch: the first `batch_rows`
    rows as one packed batch and their examples as one padded batch: loss and gradients."""
    import torch
    from transformers import AutoModelForCausalLM

    def load(impl: str):
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=impl)

    model, alone_model = load(attention).eval(), load("sdpa").eval()
    loss_diff = logit_diff = control = 0.0
    picks = sorted({0, len(rows) // 2, len(rows) - 1})
    examples = labelled = 0
    with torch.no_grad():
        for i in picks:
            ids, pos = torch.from_numpy(rows.input_ids[i]), torch.from_numpy(rows.position_ids[i])
            labels = torch.from_numpy(np.where(rows.position_ids[i] == 0, IGNORE, rows.labels[i]))
            packed = model(input_ids=ids[None], position_ids=pos[None], use_cache=False).logits[0]
            mixed = alone_model(input_ids=ids[None], use_cache=False).logits[0]
            nll_p, nll_m = token_nll(packed, ids, labels), token_nll(mixed, ids, labels)
            ends = np.cumsum(rows.seq_lengths[i])
            for s, e in zip(ends - rows.seq_lengths[i], ends, strict=True):
                alone = alone_model(input_ids=ids[None, s:e], use_cache=False).logits[0]
                nll_a = token_nll(alone, ids[s:e], labels[s:e])
                ok = ~torch.isnan(nll_a)
                loss_diff = max(loss_diff, float((nll_p[s:e][ok] - nll_a[ok]).abs().max()))
                logit_diff = max(logit_diff, float((packed[s:e] - alone).abs().max()))
                control = max(control, float((nll_m[s:e][ok] - nll_a[ok]).abs().max()))
                examples, labelled = examples + 1, labelled + int(ok.sum())

    def loss_and_grads(m, batch: dict) -> tuple[float, torch.Tensor]:
        m.train()
        m.zero_grad()
        loss = m(**batch, use_cache=False).loss
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in m.parameters()])

    idx = np.arange(batch_rows)
    loss_p, grad_p = loss_and_grads(model, collate(rows, idx, pad_id, packed=True))
    ex = unpack(rows, idx)
    loss_d, grad_d = loss_and_grads(alone_model, collate(ex, np.arange(len(ex)), pad_id, packed=False))
    first = sum(int(((p == 0) & (lab != IGNORE)).sum()) for p, lab in zip(rows.position_ids, rows.labels, strict=True))
    return {"rows": picks, "examples": examples, "label_tokens": labelled, "max_abs_loss_diff": loss_diff,
            "max_abs_logit_diff": logit_diff, "control_max_abs_loss_diff": control,
            "batch": {"rows": batch_rows, "examples": len(ex), "loss_packed": loss_p, "loss_padded": loss_d,
                      "max_abs_grad_diff": float((grad_p - grad_d).abs().max()),
                      "max_abs_grad": float(grad_d.abs().max())},
            "labelled_first_tokens_in_train": first}


# ── report ───────────────────────────────────────────────────────────────────────────────────

def binned(arm: Arm, edges: np.ndarray) -> np.ndarray:
    """Label-token-weighted mean loss of the steps whose token midpoint falls in each bin."""
    useful, loss, w = (np.array(arm.log[k], float) for k in ("useful", "loss", "label_tokens"))
    mid = np.cumsum(useful) - useful / 2
    b = np.clip(np.searchsorted(edges, mid, side="right") - 1, 0, len(edges) - 2)
    return np.array([np.average(loss[b == k], weights=w[b == k]) if (b == k).any() else np.nan
                     for k in range(len(edges) - 1)])


def summarize(arm: Arm, tail: float = 0.1) -> dict:
    log = {k: np.array(v, float) for k, v in arm.log.items()}
    seconds, useful, slots = log["seconds"].sum(), log["useful"].sum(), log["slots"].sum()
    last = np.cumsum(log["useful"]) > (1 - tail) * useful
    cpu = log["cpu_seconds"].sum()
    return {"steps": len(log["loss"]), "batch": len(arm.batches[0]), "seconds": seconds, "cpu_seconds": cpu,
            "useful_tokens": int(useful), "useful_tokens_per_cpu_s": useful / cpu,
            "slots": int(slots), "label_tokens": int(log["label_tokens"].sum()), "examples": int(log["examples"].sum()),
            "useful_tokens_per_s": useful / seconds, "pad_fraction": 1 - useful / slots,
            "tail_loss": float(np.average(log["loss"][last], weights=log["label_tokens"][last])),
            "final_loss": float(log["loss"][-1])}


def print_table(results: dict[str, dict]) -> None:
    header = ("arm", "batch", "steps", "seconds", "CPU s", "useful tokens", "useful tok/s", "per CPU s", "pad",
              "loss, last 10%", "eval loss")
    rows = [(name, str(r["batch"]), str(r["steps"]), f"{r['seconds']:.1f}", f"{r['cpu_seconds']:.1f}",
             f"{r['useful_tokens']:,}", f"{r['useful_tokens_per_s']:,.0f}", f"{r['useful_tokens_per_cpu_s']:,.0f}",
             f"{r['pad_fraction']:.1%}", f"{r['tail_loss']:.4f}",
             f"{r['eval_loss']:.4f}") for name, r in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))


def print_exactness(exact: dict[str, dict]) -> None:
    for name, e in exact.items():
        g = e["batch"]
        print(f"\nexactness, {name} (packed rows {e['rows']}: {e['examples']} examples, {e['label_tokens']:,} label "
              f"tokens): max |Δ| vs each example alone: token loss {e['max_abs_loss_diff']:.1e}, logit "
              f"{e['max_abs_logit_diff']:.1e}\n  a packed batch of {g['rows']} rows vs its {g['examples']} examples "
              f"padded: loss {g['loss_packed']:.6f} vs {g['loss_padded']:.6f}, max |Δ grad| "
              f"{g['max_abs_grad_diff']:.1e} (max |grad| {g['max_abs_grad']:.1e})")
    e = exact["sdpa"]
    print(f"  control, the same rows without position_ids (attention crosses examples): max |Δ| token loss "
          f"{e['control_max_abs_loss_diff']:.1e}; labelled first tokens in train: {e['labelled_first_tokens_in_train']}")


def compare(results: dict[str, dict], curves: dict[str, np.ndarray], logs: dict[str, dict]) -> dict[str, float]:
    """Prints and returns the speed ratios of every packed arm to every padded one, and how far
    the loss of `packed` is from each padded arm's."""
    ratios = {}
    packs = [n for n in results if n.startswith("packed")]
    pads = [n for n in results if n not in packs]
    for pk in packs:
        for pd in pads:
            ratios[f"{pk} vs {pd}: useful tokens/s (x)"] = (
                results[pk]["useful_tokens_per_s"] / results[pd]["useful_tokens_per_s"])
            ratios[f"{pk} vs {pd}: useful tokens per CPU s (x)"] = (
                results[pk]["useful_tokens_per_cpu_s"] / results[pd]["useful_tokens_per_cpu_s"])
    for pd in pads:
        ratios[f"loss curve, packed - {pd}: mean |Δ| of bins 2-20"] = float(
            np.nanmean(np.abs(curves["packed"][1:] - curves[pd][1:])))
        ratios[f"eval loss, packed - {pd}"] = results["packed"]["eval_loss"] - results[pd]["eval_loss"]
    if "packed, sdpa mask" in results:  # the same batches in the same order: the same training run
        ratios["packed, sdpa mask - packed: max |Δ| of step losses"] = float(np.max(np.abs(
            np.array(logs["packed, sdpa mask"]["loss"]) - np.array(logs["packed"]["loss"]))))
    print()
    width = max(map(len, ratios))
    for k, v in ratios.items():
        print(f"{k:<{width}}  {v:,.2f}" if "(x)" in k else f"{k:<{width}}  {v:+.4f}")
    return ratios


def plot(arms: list[Arm], edges: np.ndarray, curves: dict[str, np.ndarray], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (.venv/bin/pip install matplotlib)")
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    centers = (edges[:-1] + edges[1:]) / 2
    colors = {"padded, shuffled": "tab:red", "padded, grouped": "tab:orange", "packed": "tab:blue",
              "packed, sdpa mask": "tab:green"}
    for arm in arms:
        color, style = colors.get(arm.name, "tab:gray"), "--" if arm.name == "packed, sdpa mask" else "-"
        if arm.name != "packed, sdpa mask":  # its steps are those of `packed`
            left.plot(np.cumsum(arm.log["useful"]), arm.log["loss"], color=color, alpha=0.18, lw=0.8)
        left.plot(centers, curves[arm.name], color=color, ls=style, lw=2, marker="o", ms=3, label=arm.name)
        right.plot(np.cumsum(arm.log["seconds"]), arm.log["loss"], color=color, ls=style, lw=1, label=arm.name)
    left.set(xlabel="useful (non-pad) tokens seen", ylabel="training loss (mean over label tokens)",
             title="loss vs tokens: per step (faint) and binned")
    right.set(xlabel="training seconds", ylabel="training loss", title="loss vs wall time")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


# ── main ─────────────────────────────────────────────────────────────────────────────────────

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=1200, help="conversations in the corpus")
    p.add_argument("--max-length", type=int, default=1024, help="packed row length")
    p.add_argument("--rows", type=int, default=2, help="packed rows per batch (padded batches match its examples)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    p.add_argument("--threads", type=int, default=2, help="torch threads (and ftc prep threads)")
    p.add_argument("--no-grouped", action="store_true", help="skip the group_by_length arm")
    p.add_argument("--no-mask-arm", action="store_true", help="skip the packed arm with transformers' SDPA mask")
    args = p.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    corpus, docs = make_corpus(args.docs, min(600, args.max_length * 9 // 10))
    model_dir = make_model_dir(corpus, docs, args.max_length)
    data = prep_both(corpus, model_dir, args.max_length, args.threads)
    packed, padded = data["packed"]["train"], data["padded"]["train"]
    same = sorted(packed.examples()) == sorted(padded.examples())
    lengths = np.array([len(x) for x in padded.input_ids])
    per_row = len(padded) / len(packed)
    b = max(1, round(args.rows * per_row))
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    pad_id = config.pad_token_id
    print(f"\ncorpus {corpus.name}: {len(docs):,} conversations; train {len(padded):,} examples, "
          f"{lengths.sum():,} tokens (p5 {np.percentile(lengths, 5):.0f}, median {np.median(lengths):.0f}, "
          f"p95 {np.percentile(lengths, 95):.0f}, max {lengths.max()}); valid {len(data['padded']['valid']):,} examples")
    print(f"packed: {len(packed):,} rows of {args.max_length}, {per_row:.2f} examples per row; "
          f"same training examples in both datasets: {same}")
    print(f"batches: packed {args.rows} rows, padded {b} examples (= {args.rows} × {per_row:.2f}); one epoch each; "
          f"AdamW lr {args.lr:g}, {args.threads} threads, float32, sdpa")

    segmented = register_segmented_attention()
    exact = {a: check_exact(model_dir, packed, pad_id, args.rows, a) for a in (segmented, "sdpa")}
    print_exactness(exact)

    rng = lambda: np.random.default_rng(SEED)  # noqa: E731 (each arm draws its own order from the same seed)
    arms = [Arm("padded, shuffled", padded, order_shuffled(len(padded), b, rng()), packed=False)]
    if not args.no_grouped:
        arms.append(Arm("padded, grouped", padded, order_grouped(lengths, b, rng()), packed=False))
    arms.append(Arm("packed", packed, order_shuffled(len(packed), args.rows, rng()), packed=True,
                    attention=segmented))
    if not args.no_mask_arm:
        arms.append(Arm("packed, sdpa mask", packed, order_shuffled(len(packed), args.rows, rng()), packed=True))
    for arm in arms:
        setup(arm, model_dir, args.lr)
    params = sum(x.numel() for x in arms[0].model.parameters())
    valid = data["padded"]["valid"]
    initial = eval_loss(arms[0].model, valid, pad_id)
    load = os.getloadavg()[0]
    print(f"\nmodel: Llama, {params / 1e6:.2f}M parameters, vocab {config.vocab_size}; eval loss at init "
          f"{initial:.4f}; load average {load:.2f}\ntraining (interleaved):")
    t_train = time.perf_counter()
    train_interleaved(arms, pad_id)
    train_wall = time.perf_counter() - t_train

    results = {}
    for arm in arms:
        arm.model.set_attn_implementation("sdpa")  # the eval batches are padded, with an attention mask
        results[arm.name] = {**summarize(arm), "eval_loss": eval_loss(arm.model, valid, pad_id)}
    total = results["packed"]["useful_tokens"]
    edges = np.linspace(0, total, 21)
    curves = {arm.name: binned(arm, edges) for arm in arms}
    print(f"\nload average {load:.2f} → {os.getloadavg()[0]:.2f}; training wall {train_wall:.0f}s\n")
    print_table(results)
    logs = {arm.name: arm.log for arm in arms}
    ratios = compare(results, curves, logs)

    png = OUT / "train-loss.png"
    if plot(arms, edges, curves, png):
        print(f"\nwrote {png}")
    summary = {
        "docs": args.docs, "max_length": args.max_length, "rows_per_batch": args.rows, "padded_batch": b,
        "lr": args.lr, "threads": args.threads, "cpus": os.cpu_count(), "params": params,
        "vocab": config.vocab_size, "train_examples": len(padded), "train_tokens": int(lengths.sum()),
        "packed_rows": len(packed), "same_examples": same, "eval_loss_init": initial, "exactness": exact,
        "results": results, "ratios": ratios, "bins": {"edges": edges.tolist(), **{
            k: [None if np.isnan(x) else float(x) for x in v] for k, v in curves.items()}},
        "steps": logs, "seconds_total": time.perf_counter() - t0,
    }
    (OUT / "train.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"wrote {OUT / 'train.json'} ({time.perf_counter() - t0:.0f}s in all)")


if __name__ == "__main__":
    main()

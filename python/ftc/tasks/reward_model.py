"""`reward-model`: a scalar score per (prompt, response), trained on preference pairs with the
Bradley–Terry loss (docs/architecture.md: Tasks).

Data: pairs (`ftc.tasks.pairs`). Train: the base with a one-output sequence-classification head;
a batch of pairs is chosen₀, rejected₀, chosen₁, … padded (the head reads each sequence's last
token, so every architecture's own pooling applies); loss −log σ(s_c − s_r − m), m each pair's
`margin` where the data gives one, else `train.preference.margin`. Metrics on
the test split: pairwise accuracy (the chosen answer scored higher) and the mean margin. Export:
an ONNX scorer, parity on the order of each held-out pair's two scores. Runtime: `Scorer`
renders (prompt, response) with the training template, `POST /v1/score`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftc.tasks.classification import Classification
from ftc.tasks.pairs import PairTask
from ftc.tasks.pair_losses import bradley_terry, pair_figures

LABELS = ["reward"]  # the head's one output


@dataclass
class PairPaddedCollator:
    """Pair rows → chosen₀, rejected₀, chosen₁, … padded to the longest (`labels`: the preferred
    index of each pair, 0, so the Trainer's evaluation sees a labelled batch; `margin`: each
    pair's, where the data gives them)."""

    pad_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from ftc.collate import PaddedCollator

        seqs = [{"input_ids": np.concatenate([np.asarray(r["prompt_ids"]), np.asarray(r[f"{side}_ids"])])}
                for r in rows for side in ("chosen", "rejected")]
        batch = PaddedCollator(self.pad_id, targets=())(seqs)
        batch["labels"] = torch.zeros(len(rows), dtype=torch.long)
        if "margin" in rows[0]:
            batch["margin"] = torch.as_tensor([r["margin"] for r in rows], dtype=torch.float32)
        return batch


class RewardModel(PairTask, Classification):
    name = "reward-model"
    distills = None
    metrics = ("accuracy",)
    stop_metrics = ("loss", "accuracy")
    own_loss = True
    train_defaults: dict[str, Any] = {}
    endpoint = "/v1/score"
    init_metrics = ["accuracy"]
    init_train = {"method": "lora", "epochs": 1, "batch_size": 8, "learning_rate": 1e-4}
    init_quantize = "int8"

    def check_spec(self, spec: Any) -> None:
        PairTask.check_spec(self, spec)

    def totals(self, splits: dict[str, dict[str, Any]], max_length: int) -> dict[str, Any]:
        return PairTask.totals(self, splits, max_length)

    # ── train
    def load_model(self, model_dir: Path, labels: list[str] | None, pad_id: int | None, **kwargs: Any) -> Any:
        return Classification.load_model(self, model_dir, LABELS, pad_id, **kwargs)

    def load_reference(self, source: Path, manifest: dict[str, Any], pad_id: int | None, **kwargs: Any) -> Any:
        return self.load_model(source, LABELS, pad_id, **kwargs)

    def collator(self, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        return PairPaddedCollator(pad_id)

    def sampling(self, spec: Any) -> str:
        return "random"

    def class_weights(self, manifest: dict[str, Any]) -> list[float] | None:
        return None

    def validation_data(self, ds: Any) -> Any:
        return ds

    def trainer_metrics(self, spec: Any, labels: list[str]) -> Callable[[Any], dict[str, float]] | None:
        return None

    def loss(self, spec: Any, model: Any, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        scores = model(**{k: v for k, v in inputs.items() if k not in ("labels", "margin")}).logits[:, 0].float()
        margin = inputs.get("margin", spec.train.preference.margin or None)  # the data's, else the spec's
        return bradley_terry(scores, margin), {"scores": scores.detach()}

    def evaluate(self, spec: Any, model: Any, tokenizer: Any, ds: Any, collator: Callable[..., Any],
                 labels: list[str] | None) -> dict[str, Any]:
        import torch

        model.eval()
        device = next(model.parameters()).device
        scores, total = [], 0.0
        with torch.no_grad():
            for start in range(0, len(ds), spec.train.batch_size):
                rows = [ds[i] for i in range(start, min(len(ds), start + spec.train.batch_size))]
                batch = {k: v.to(device) for k, v in collator(rows).items()}
                loss, out = self.loss(spec, model, batch)
                total += float(loss) * len(rows)
                scores.append(out["scores"].double().cpu().numpy())
        s = np.concatenate(scores) if scores else np.zeros(0)
        fig = pair_figures(s[0::2], s[1::2])
        return {"loss": total / len(ds) if len(ds) else None, "accuracy": fig["accuracy"], "margin": fig["margin"],
                "score_chosen": fig["chosen"], "score_rejected": fig["rejected"], "pairs": len(s) // 2}

    def report_sections(self, metrics: dict[str, Any], names: list[str] | None, run_dir: Path) -> list[str]:
        if not metrics:
            return []
        rows = [("pairwise accuracy", "accuracy"), ("mean margin", "margin"), ("mean score, chosen", "score_chosen"),
                ("mean score, rejected", "score_rejected")]
        return ["## Reward model", "", f"{metrics.get('pairs', 0):,} test pairs: how often the chosen answer scores "
                "above the rejected one, and by how much.", "", "| figure | value |", "|---|---|",
                *(f"| {label} | {metrics[k]:.4f} |" for label, k in rows if metrics.get(k) is not None), ""]

    # ── export: a scorer; parity on the order of each held-out pair's scores
    def held_out(self, ds: Any, n: int, seed: int, labels: list[str] | None) -> tuple[list[dict[str, Any]],
                                                                                    dict[str, Any]]:
        picked = np.sort(np.random.default_rng(seed).permutation(len(ds))[:n])
        drawn = "seeded random sample of the pairs" if len(picked) < len(ds) else "the whole split"
        return [ds[int(i)] for i in picked], {"of": len(ds), "seed": seed, "drawn": drawn}

    def parity_feed(self, rows: list[dict[str, Any]], pad_id: int) -> Iterator[tuple[dict[str, Any],
                                                                                  Callable[[np.ndarray], np.ndarray],
                                                                                  np.ndarray]]:
        """Pairs, 16 at a time; a pair's two scores are its "classes", the chosen one (0) the target."""
        for start in range(0, len(rows), 16):
            batch = PairPaddedCollator(pad_id)(rows[start:start + 16])
            targets = batch.pop("labels").numpy()
            batch.pop("margin", None)  # the loss's, not the graph's
            yield batch, lambda z: np.asarray(z).reshape(-1, 2), targets

    def card(self, data: dict[str, Any], art: Path) -> dict[str, Any]:
        return Classification.card(self, data, art) | {"template": data.get("template_source")}

    # ── runtime
    def runtime(self, artifact: Any, threads: int) -> Any:
        from ftc.runtime.score import Scorer

        return Scorer(artifact, threads)

    def infer(self, model: Any, inputs: list[dict[str, Any]], options: dict[str, Any]) -> list[dict[str, Any]]:
        from ftc.errors import InferenceError

        if bad := next((i for i in inputs if "response" not in i or not {"prompt", "messages"} & set(i)), None):
            raise InferenceError(f"a reward model scores {{\"prompt\" (or \"messages\"), \"response\"}} objects "
                                 f"(--input or --file); this input has {', '.join(bad) or 'nothing'}")
        scores = model.score([i.get("prompt", i.get("messages")) for i in inputs], [i["response"] for i in inputs],
                             batch_size=options["batch_size"])
        return [{"score": s} for s in scores]

    def infer_line(self, inp: dict[str, Any], result: dict[str, Any], first: bool) -> str:
        return f"{result['score']:.4f}\t{inp['response']}"

    def serve(self, server: Any, body: dict[str, Any]) -> dict[str, Any]:
        from ftc.runtime.serve import HttpError, checked, json_type

        checked(body, {"prompt": str, "response": str, "pairs": list})
        if "pairs" in body:
            items = body["pairs"]
            if not items:
                raise HttpError(400, "`pairs` is empty")
            if len(items) > server.max_batch:
                raise HttpError(413, f"{len(items)} pairs; this server takes at most {server.max_batch} per request")
            for i, item in enumerate(items):
                if not isinstance(item, dict) or not isinstance(item.get("response"), str) \
                        or not isinstance(item.get("prompt"), str):
                    raise HttpError(400, f"`pairs[{i}]` must be {{prompt, response}}, not {json_type(item)}")
        elif "prompt" in body and "response" in body:
            items = [{"prompt": body["prompt"], "response": body["response"]}]
        else:
            raise HttpError(400, "give `prompt` and `response`, or `pairs`: [{prompt, response}, …]")
        with server.lock:
            scores = server.model.score([i["prompt"] for i in items], [i["response"] for i in items],
                                        batch_size=server.max_batch)
        return {"scores": scores}


TASK = RewardModel()

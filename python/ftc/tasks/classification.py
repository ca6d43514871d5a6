"""`classification`: a label (or a label per text pair) per text (docs/architecture.md: Tasks).

Data: texts (and optional second texts) tokenized in Rust; every row is kept in memory until
all labels are known, then split (stratified), weighted, augmented and balanced, one example
per row. Train: a sequence-classification head, shuffled padded batches, optional class
weights; metrics are accuracy, precision/recall/F1 and the confusion matrix. Export: one ONNX
graph (int8 by dynamic quantization), parity on each row's logits. Runtime: `Classifier`,
`POST /v1/classify`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftc.tasks import Progress, Task

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from ftc.spec import Spec

SPLITS = ("train", "valid", "test")
CLASSIFY_FIELDS = {"text": str, "texts": list, "text_pair": str, "text_pairs": list}


@dataclass
class Collected:
    """Classification rows kept in memory until every label is known."""

    texts: list[pl.DataFrame] = field(default_factory=list)  # text (+ text_pair), cleaned; kept to augment
    ids: list[pa.Array] = field(default_factory=list)
    type_ids: list[pa.Array] = field(default_factory=list)
    hashes: list[np.ndarray] = field(default_factory=list)
    labels: list[pl.Series] = field(default_factory=list)
    splits: list[np.ndarray] = field(default_factory=list)  # from a split column, -1 if none
    source: list[np.ndarray] = field(default_factory=list)
    lines: list[np.ndarray] = field(default_factory=list)

    def add(self, run: Any, rows: pl.DataFrame, codes: np.ndarray, ids: pa.Array, second: pa.Array,
            hashes: np.ndarray, idx: int, weight: float, st: Any) -> None:
        if run.augment is not None:  # only augmentation reads the texts again
            self.texts.append(rows.select([k for k in ("text", "text_pair") if k in rows.columns]))
        self.ids.append(ids)
        self.type_ids.append(second)
        self.hashes.append(hashes)
        self.labels.append(rows["label"])
        self.splits.append(codes)
        self.source.append(np.full(rows.height, idx, dtype=np.int32))
        self.lines.append(rows["line"].to_numpy())

    def finish(self, run: Any, stats: list[Any], tmp: Path, threads: int,
               progress: Progress | None) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        import polars as pl
        import pyarrow as pa
        import pyarrow.compute as pc

        from ftc import quality
        from ftc.errors import SourceError
        from ftc.prep import encode_rows, weighted_order

        """Labels to indices, the split, weights, augmentation and balancing over all rows, then
        one Arrow file per split: `input_ids`, `label`, `length` (+ `token_type_ids` for pairs)."""
        spec, c, funnel = run.spec, self, run.funnel
        labels = pl.concat(c.labels) if c.labels else pl.Series("label", [], pl.String)
        names = run.label_names or quality.infer_label_names(set(labels.to_list()))
        if not names:
            raise SourceError("no labelled row survived the data stage: nothing to classify")
        y = quality.label_index(labels, names)
        hashes = np.concatenate(c.hashes) if c.hashes else np.zeros(0, np.uint64)
        codes = np.concatenate(c.splits) if c.splits else np.zeros(0, np.int8)
        source = np.concatenate(c.source) if c.source else np.zeros(0, np.int32)
        lines = np.concatenate(c.lines) if c.lines else np.zeros(0, np.uint64)
        ids = pa.concat_arrays(c.ids) if c.ids else pa.array([], pa.list_(pa.int32()))
        lengths = np.asarray(pc.list_value_length(ids), dtype=np.int32)  # as stored: after truncation
        type_ids = pa.concat_arrays(c.type_ids) if c.type_ids else pa.array([], pa.list_(pa.int32()))
        pairs = any(src.columns.text_pair is not None for src in spec.data.sources)
        free = codes < 0
        sp = spec.data.split
        split = codes.copy()
        if sp.by == "random" and sp.stratify:
            split[free] = quality.stratified_split(y[free], hashes[free], spec)
        else:
            for i in range(len(spec.data.sources)):
                m = free & (source == i)
                split[m] = quality.assign_split(hashes[m], lines[m], i, spec)
        for s_i, s_name in enumerate(SPLITS):
            funnel.splits[s_name] = int((split == s_i).sum())
        # training rows: weights, then augmented copies, then balancing
        train = np.flatnonzero(split == 0)
        order = weighted_order(run, train, hashes, source, lengths)
        parts_ids, parts_types, parts_len = [ids.take(pa.array(order))], [type_ids.take(pa.array(order))], [lengths[order]]
        parts_y, parts_h, parts_src = [y[order]], [hashes[order]], [source[order]]
        if run.augment is not None and len(train):
            originals = pl.concat(c.texts)[train.tolist()]
            for copy in range(1, run.augment.copies + 1):
                new, changed = run.augment.copy(originals, hashes[train], copy)
                funnel.augmented["unchanged"] += int((~changed).sum())
                new, rows = new.filter(pl.Series(changed)), train[changed]
                a_ids, a_types, a_hash, (failed, _), reason = encode_rows(run, new.with_columns(line=pl.lit(0, pl.UInt64)))
                ok = ~reason.removed & ~failed
                funnel.augmented["dropped"] += int((~ok).sum())
                k = pa.array(ok)
                parts_ids.append(pc.filter(a_ids, k))
                parts_types.append(pc.filter(a_types, k))
                parts_len.append(np.asarray(pc.list_value_length(a_ids), dtype=np.int32)[ok])
                parts_y.append(y[rows][ok])
                parts_h.append(a_hash[ok])
                parts_src.append(source[rows][ok])
                funnel.augmented["added"] += int(ok.sum())
        t_ids, t_types = pa.concat_arrays(parts_ids), pa.concat_arrays(parts_types)
        t_len, t_y, t_h, t_src = (np.concatenate(p) for p in (parts_len, parts_y, parts_h, parts_src))
        before = quality.distribution(t_y, names)
        keep, class_weights = quality.balance(t_y, t_h, len(names), spec)
        if spec.data.balance.strategy != "none":
            after = quality.distribution(t_y[keep], names)
            distinct = len(np.unique(keep))
            funnel.balance = {"strategy": spec.data.balance.strategy, "before": before, "after": after,
                              "added": len(keep) - distinct, "removed": len(t_y) - distinct}
        k = pa.array(keep)
        out = {"train": (t_ids.take(k), t_types.take(k), t_len[keep], t_y[keep], t_src[keep])}
        for s_i, s_name in ((1, "valid"), (2, "test")):
            sel = np.flatnonzero(split == s_i)
            out[s_name] = (ids.take(pa.array(sel)), type_ids.take(pa.array(sel)), lengths[sel], y[sel], source[sel])
        splits = {}
        for name, (s_ids, s_types, s_len, s_y, s_src) in out.items():
            for i, st in enumerate(stats):
                st.examples[name] = int((s_src == i).sum())
            cols = {"input_ids": s_ids, "label": pa.array(s_y, pa.int32()), "length": pa.array(s_len, pa.int32())}
            if pairs:
                cols["token_type_ids"] = s_types
            table = pa.table(cols)
            with pa.OSFile(str(tmp / f"{name}.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table, max_chunksize=8192)
            bs = spec.train.batch_size
            unk = run.unk_id
            splits[name] = {
                "unk_tokens": int(np.count_nonzero(np.asarray(s_ids.flatten()) == unk)) if unk is not None else None,
                "examples": len(s_y),
                "rows": len(s_y),
                "tokens": int(s_len.sum()),
                "labels": quality.distribution(s_y, names),
                "max_example_tokens": int(s_len.max()) if len(s_len) else 0,
                "padding_ratio": quality.padding_ratio(s_len, bs, spec.project.seed, bucketed=False),
                "padding_ratio_bucketed": quality.padding_ratio(s_len, bs, spec.project.seed, bucketed=True),
                # the batch size of the build that made the dataset: not a key input (a search over
                # batch sizes reuses one dataset), so the figures say which batches they measure
                "padding_batch": bs,
            }
        extra = {"labels": names, "class_weights": class_weights,
                 "label_distribution": {"train_before_balance": before, "train": splits["train"]["labels"]}}
        return splits, extra, ["input_ids", "label", "length"] + (["token_type_ids"] if pairs else [])


class Classification(Task):
    name = "classification"
    distills = "classes"
    metrics = ("accuracy", "precision", "recall", "f1")
    stop_metrics = ("loss", "accuracy", "f1")
    peft_task_type = "SEQ_CLS"
    # the Trainer's own schedule: on Rotten Tomatoes, 5 seeds, cosine with 3% warmup scored 1.3
    # points below it, and it is what the plain Trainer script runs
    train_defaults = {"scheduler": "linear", "warmup_ratio": 0.0}
    endpoint = "/v1/classify"
    pipeline_tag = "text-classification"
    init_metrics = ["accuracy", "f1"]
    init_columns = ("`text` (+ `text_pair` for sentence pairs) and `label`; or `label = \"...\"` on a source for one "
                    "label per file")
    init_hint = ("classification reads `text` and `label`: rename the columns, or map them in the spec's "
                 "`columns = { text = \"...\", label = \"...\" }`")
    init_rewrites = True

    def init_sample(self, det: Any, rows: list[dict[str, Any]]) -> None:
        from ftc.scaffold import counts, label_text

        det.labels = counts(label_text(r.get(det.columns["label"])) for r in rows)

    def init_lines(self, det: Any, section: str, p: Any, max_length: int) -> None:
        import re

        if section == "model" and det.labels:
            p.note((f"The labels of all {det.rows:,} rows" if det.whole else
                    f"The labels seen in the first {det.rows:,} rows, a sample (add any it missed)")
                   + ": a row whose label is not listed is quarantined; without `labels`, every label the data holds."
                   + (" Integer labels index this list: rename them (e.g. [\"negative\", \"positive\"])."
                      if all(re.fullmatch(r"-?\d+", k) for k in det.labels) else ""))
            p.kv("labels", list(det.labels))
        elif section == "split":
            p.append("")
            if det.labels:
                p.note(f"Labels in {'the data' if det.whole else 'the sample'}: "
                       + ", ".join(f"{k} {n:,}" for k, n in det.labels.items()) + ".")
            p.append("# [data.balance]")
            p.kv("strategy", "class-weights", "or oversample, undersample: for skewed labels", off=True)
        elif section == "tokenize":
            super().init_lines(det, section, p, max_length)
            p.kv("truncation", "right", "or left (keeps a long text's end), drop")

    def check_spec(self, spec: Spec) -> None:
        if spec.tokenize.truncation == "chunk":
            raise ValueError("`tokenize.truncation = \"chunk\"` is for raw text; classification truncates "
                             "`right`, `left` or drops (`drop`)")

    # ── data
    def check_rows(self, run: Any, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        import polars as pl

        from ftc import quality
        from ftc.errors import BuildError

        """Classification rows need a text and a label; with `model.labels` given, an unknown label
        is quarantined."""
        if "text" not in rows.columns:
            raise BuildError("classification reads a `text` column (and optionally `text_pair`); this source maps "
                             "a conversation or prompt/response", hint="map `columns = { text = \"...\", label = \"...\" }`")
        if "label" not in rows.columns:
            raise BuildError("classification needs a label for every row; this source maps none",
                             hint="map a label column (`columns = { text = \"...\", label = \"...\" }`) or give the "
                             "source one `label`")
        rows = rows.with_columns(quality.canonical_labels(rows["label"]))
        if run.label_names is None:
            return rows, pl.DataFrame(schema={"line": pl.UInt64, "reason": pl.String})
        known = quality.label_index(rows["label"], run.label_names) >= 0
        names = ", ".join(run.label_names)
        bad = rows.filter(pl.Series(~known)).select(
            "line", reason=pl.format("unknown label: '{}' (labels: {})", "label", pl.lit(names)))
        return rows.filter(pl.Series(known)), bad

    def encode(self, run: Any, rows: pl.DataFrame) -> tuple[Any, ...]:
        from ftc import quality

        tok = run.spec.tokenize
        pairs = quality.strings(rows["text_pair"]) if "text_pair" in rows.columns else None
        return run.encoder.encode_pairs(quality.strings(rows["text"]), pairs, tok.max_length, tok.truncation)

    def collector(self, run: Any, spool_dir: Path) -> Collected:
        return Collected()

    def describe(self, manifest: dict[str, Any]) -> str:
        train = manifest["stats"]["splits"]["train"]
        pad = (f"padding {train['padding_ratio']:.1%} shuffled → {train['padding_ratio_bucketed']:.1%} length-bucketed"
               f" (batches of {train.get('padding_batch', '?')})" if train["padding_ratio"] is not None
               else "no training rows")
        return f"{super().describe(manifest)} · {len(manifest['labels'])} labels · {pad}"

    def split_table(self, splits: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        from ftc.inspection import distribution_text

        cols = ["split", "examples", "tokens", "padding", "bucketed", "labels"]
        return cols, [[n, f"{s['examples']:,}", f"{s['tokens']:,}",
                       *(f"{s[k]:.1%}" if s[k] is not None else "-" for k in ("padding_ratio", "padding_ratio_bucketed")),
                       distribution_text(s["labels"])] for n, s in splits.items()]

    def inspect_rows(self, path: Path, manifest: dict[str, Any], split: str, n: int) -> list[tuple[str, list[str]]]:
        from ftc.inspection import decode_classification

        return [(f"label {label}", [text]) for label, text in decode_classification(path, manifest, split, n)]

    # ── train
    def load_model(self, model_dir: Path, labels: list[str] | None, pad_id: int | None, **kwargs: Any) -> Any:
        from transformers import AutoModelForSequenceClassification

        from ftc.train import load_head

        assert labels is not None
        return load_head(AutoModelForSequenceClassification, model_dir, labels, pad_id, **kwargs)

    def collator(self, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        from ftc.collate import PaddedCollator

        return PaddedCollator(pad_id)

    def sampling(self, spec: Spec) -> str:
        return "group_by_length" if spec.train.group_by_length else "random"

    def class_weights(self, manifest: dict[str, Any]) -> list[float] | None:
        return manifest.get("class_weights")

    def validation_data(self, ds: Any) -> Any:
        """Length-sorted, as `predict_labels` takes the test split: less padding, and a
        classifier's loss and metrics are per example, so only the time changes."""
        return ds.select(length_order(ds), keep_in_memory=True)  # nothing written into the store

    def trainer_metrics(self, spec: Spec, labels: list[str]) -> Callable[[Any], dict[str, float]]:
        return _validation_metrics

    def evaluate(self, spec: Spec, model: Any, tokenizer: Any, ds: Any, collator: Callable[..., Any],
                 labels: list[str] | None) -> dict[str, Any]:
        from ftc import evaluate

        gold, pred = predict_labels(model, ds, collator, spec.train.batch_size)
        return evaluate.classification_metrics(gold, pred, labels or [])

    def report_sections(self, metrics: dict[str, Any], names: list[str] | None, run_dir: Path) -> list[str]:
        from ftc import report

        return report.class_sections(metrics, names, run_dir)

    # ── export
    def auto_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def held_out(self, ds: Any, n: int, seed: int, labels: list[str] | None) -> tuple[list[dict[str, Any]],
                                                                                    dict[str, Any]]:
        y = ds.data.column("label").to_numpy()
        picked = stratified_sample(y, n, seed)
        names = labels or []
        counts = np.bincount(y[picked], minlength=len(names))
        drawn = "seeded random sample, stratified by label" if len(picked) < len(ds) else "the whole split"
        return [ds[int(i)] for i in picked], {
            "of": len(ds), "seed": seed, "drawn": drawn,
            "labels": {str(names[i]) if i < len(names) else str(i): int(c) for i, c in enumerate(counts)}}

    # ── runtime
    def runtime(self, artifact: Any, threads: int) -> Any:
        from ftc.runtime.classify import Classifier

        return Classifier(artifact, threads)

    def infer(self, model: Any, inputs: list[dict[str, Any]], options: dict[str, Any]) -> list[dict[str, Any]]:
        from ftc.errors import InferenceError

        if bad := next((i for i in inputs if "text" not in i), None):
            raise InferenceError(f"a classifier takes texts; this input has {', '.join(bad)}")
        with_pairs = any("text_pair" in i for i in inputs)
        pairs = [i.get("text_pair", "") for i in inputs] if with_pairs else None
        return [p.as_dict() for p in model.classify([i["text"] for i in inputs], pairs,
                                                    batch_size=options["batch_size"])]

    def infer_line(self, inp: dict[str, Any], result: dict[str, Any], first: bool) -> str:
        probs = " ".join(f"{k}={v:.4f}" for k, v in result["probabilities"].items())
        return f"{result['label']}\t{probs}\t{inp['text']}"

    def serve(self, server: Any, body: dict[str, Any]) -> dict[str, Any]:
        from ftc.runtime.serve import HttpError, checked, json_type, one_of

        checked(body, CLASSIFY_FIELDS)
        single = one_of(body, "text", "texts") == "text"
        texts = [body["text"]] if single else body["texts"]
        pair_key = "text_pair" if single else "text_pairs"
        if (other := "text_pairs" if single else "text_pair") in body:
            raise HttpError(400, f"`{other}` goes with `{'texts' if single else 'text'}`; with this one use "
                                 f"`{pair_key}`")
        pairs = None if pair_key not in body else ([body[pair_key]] if single else body[pair_key])
        if not texts:
            raise HttpError(400, "`texts` is empty")
        if len(texts) > server.max_batch:
            raise HttpError(413, f"{len(texts)} texts; this server takes at most {server.max_batch} per request")
        for key, values in (("texts", texts), ("text_pairs", pairs or [])):
            if (bad := next((i for i, t in enumerate(values) if not isinstance(t, str)), None)) is not None:
                raise HttpError(400, f"`{key}[{bad}]` must be a string, not {json_type(values[bad])}")
        if pairs is not None and len(pairs) != len(texts):
            raise HttpError(400, f"{len(texts)} texts but {len(pairs)} text_pairs")
        with server.lock:
            predictions = server.model.classify(texts, pairs, batch_size=server.max_batch)
        return {"predictions": [p.as_dict() for p in predictions]}


def _validation_metrics(prediction: Any) -> dict[str, float]:
    """The Trainer's validation metrics for classification: eval_accuracy and eval_f1 (macro)."""
    from ftc.evaluate import classification_metrics

    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    pred, gold = np.asarray(logits).argmax(-1), np.asarray(prediction.label_ids)
    m = classification_metrics(gold, pred, [str(i) for i in range(int(np.asarray(logits).shape[-1]))])
    return {"accuracy": m["accuracy"], "f1": m["f1_macro"]}


def predict_labels(model: Any, dataset: Any, collator: Callable[..., Any],
                   batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(gold, predicted) class of every row, in dataset order."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    order = length_order(dataset)
    preds, gold = [], []
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = collator([dataset[int(i)] for i in order[start:start + batch_size]])
            gold.append(batch.pop("labels").numpy())
            batch = {k: v.to(device) for k, v in batch.items()}
            preds.append(model(**batch).logits.argmax(-1).cpu().numpy())
    if not preds:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    back = np.argsort(order, kind="stable")  # dataset order again
    return np.concatenate(gold)[back], np.concatenate(preds)[back]


def length_order(dataset: Any) -> np.ndarray:
    """Row indices, shortest first (stable): batches of them carry less padding, which is
    masked, so only the speed changes."""
    return np.argsort(np.asarray(dataset["length"]), kind="stable").astype(np.int64)


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` rows (all, when there are fewer), each label taking its share of the
    split (largest remainders round), drawn at random within the label; in ascending order."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    kinds, counts = np.unique(labels, return_counts=True)
    exact = n * counts / len(labels)
    quota = np.floor(exact).astype(np.int64)
    quota[np.argsort(-(exact - quota), kind="stable")[:n - int(quota.sum())]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == k))[:q] for k, q in zip(kinds, quota, strict=True)]
    return np.sort(np.concatenate(picked))


TASK = Classification()

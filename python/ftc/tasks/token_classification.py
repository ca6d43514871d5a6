"""`token-classification`: a tag per word — NER, POS, any IOB2 / IOBES / IO tagging
(docs/architecture.md: Tasks).

Data: words and tags from CoNLL files, `tokens` + `tags` list columns, or `text` + character
`entities` spans (`tagged`); tags checked against the scheme, invalid sequences repaired or
quarantined (`tagging`); sub-word labels aligned in Rust; one example per row, kept in memory
until every tag is known. Train: a token-classification head, padded batches, labels -100
off the first sub-word. Metrics: entity precision/recall/F1 as seqeval computes them, per type,
with missed and spurious entities. Export: one ONNX graph with a logit per token, parity on the
labelled tokens. Runtime: `Tagger`, `POST /v1/entities`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftc.rows import IGNORE
from ftc.tasks import Task, tagging

if TYPE_CHECKING:
    import polars as pl

    from ftc.spec import Spec

ENTITY_FIELDS = {"text": str, "texts": list}


class TokenClassification(Task):
    name = "token-classification"
    metrics = ("precision", "recall", "f1", "accuracy")
    stop_metrics = ("loss", "f1")
    peft_task_type = "TOKEN_CLS"
    endpoint = "/v1/entities"
    pipeline_tag = "token-classification"
    init_metrics = ["precision", "recall", "f1"]
    init_columns = ("`tokens` + `tags` (a list of words and one tag per word), or `text` + `entities` (character "
                    "spans {start, end, label}); a CoNLL file needs none")
    init_hint = ("token classification reads `tokens` + `tags` (lists of strings), `text` + `entities` (character "
                 "spans) or CoNLL lines (`--format conll`)")

    def init_sample(self, det: Any, rows: list[dict[str, Any]]) -> None:
        from ftc.scaffold import counts, listed
        from ftc.tasks.tagged import _span

        if "entities" in det.columns:  # spans: their entity types
            spans = (_span(s) for r in rows for s in listed(r.get(det.columns["entities"])))
            det.labels = counts(s["label"] for s in spans if s is not None)
            return
        det.labels = counts(t for r in rows for t in listed(r.get(det.columns.get("tags", "tags"))) if isinstance(t, str))
        det.scheme = "IOBES" if any(t[:2] in ("E-", "S-") for t in det.labels) else "IOB2"

    def init_lines(self, det: Any, section: str, p: Any, max_length: int) -> None:
        spans = "entities" in det.columns
        if section == "model" and det.labels:
            what = "entity types" if spans else "tags"
            p.note(f"{what.capitalize()} seen in the sample: {', '.join(det.labels)}. Unset, `labels` is every tag "
                   "the data holds; set it (e.g. [\"O\", \"B-PER\", \"I-PER\"]) to fix their order and quarantine "
                   "others.")
        elif section == "data":
            p += ["", "[data.tags]"]
            only_i = det.labels and all(t == "O" or t.startswith("I-") for t in det.labels)
            p.kv("scheme", det.scheme or "IOB2", "or IOBES, IO" + ("; spans become IOB2 tags" if spans else "")
                 + ("; the sample's tags are all I-X or O: read as IOB2, each entity's opening I-X is repaired to B-X "
                    "(or read them as IO)" if only_i else ""))
            p.kv("invalid", "repair", "a sequence the scheme forbids: repair, or drop the row")
        elif section == "tokenize":
            super().init_lines(det, section, p, max_length)
            p.kv("truncation", "right", "or drop")
            p.kv("label_all_subwords", False, "true: every sub-word of a word carries its tag")
    per_token = True

    def check_spec(self, spec: Spec) -> None:
        from ftc.tasks.tagged import check_spec

        check_spec(spec)

    # ── data
    def read_file(self, file: Path, fmt: str, cols: Any, threads: int, split: str | None, decoding: Any,
                  limit: int | None) -> Iterator[Any]:
        from ftc.tasks.tagged import read_file

        return read_file(file, fmt, cols, threads, split, decoding, limit)

    def check_rows(self, run: Any, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        from ftc.tasks.tagged import check_rows

        return check_rows(run, rows)

    def encode(self, run: Any, rows: pl.DataFrame) -> tuple[Any, ...]:
        import pyarrow as pa

        from ftc import quality

        tok = run.spec.tokenize
        labels = run.collector.labels
        words = rows["tokens"].to_arrow().cast(pa.large_list(pa.large_string()))
        ids, tags, length = run.encoder.encode_words(words, labels.ids(rows["tags"]), tok.max_length,
                                                    tok.label_all_subwords, labels.names)
        length = np.asarray(length, dtype=np.int64)
        status = np.where((length > tok.max_length) & (tok.truncation == "drop"), 1, 0).astype(np.uint8)
        return (ids, tags, status, pa.nulls(rows.height, pa.string()), quality.content_hashes(rows["text"]), length)

    def collector(self, run: Any, spool_dir: Path) -> Any:
        from ftc.tasks.tagged_splits import Collected

        return Collected(run.spec)

    def describe(self, manifest: dict[str, Any]) -> str:
        train = manifest["stats"]["splits"]["train"]
        return (f"{super().describe(manifest)} · {len(manifest['labels'])} tags ({manifest['tag_scheme']}) · "
                f"{sum(train['entities'].values()):,} training entities")

    def split_table(self, splits: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        from ftc.inspection import distribution_text

        cols = ["split", "examples", "tokens", "padding", "entities"]
        return cols, [[n, f"{s['examples']:,}", f"{s['tokens']:,}",
                       f"{s['padding_ratio']:.1%}" if s["padding_ratio"] is not None else "-",
                       distribution_text(s["entities"])] for n, s in splits.items()]

    def inspect_rows(self, path: Path, manifest: dict[str, Any], split: str, n: int) -> list[tuple[str, list[str]]]:
        """Each sentence with its entities bracketed: `[Ada Lovelace]PER was born in [London]LOC`."""
        import pyarrow as pa

        with pa.memory_map(str(path / manifest["files"][split])) as f:
            table = pa.ipc.open_stream(f).read_all().slice(0, n)
        out = []
        for words, tags, labels in zip(table["words"].to_pylist(), table["tags"].to_pylist(),
                                       table["labels"].to_pylist(), strict=True):
            shown = list(words)
            for kind, first, last in tagging.entities_lenient(tags):
                shown[first] = "[" + shown[first]
                shown[last] += f"]{kind}"
            kept = sum(t != IGNORE for t in labels)  # one per word, unless every sub-word is labelled
            cut = f" · {len(words) - kept} cut by max_length" if kept < len(words) else ""
            out.append((f"{len(words)} words{cut}", [" ".join(shown)]))
        return out

    # ── train
    def load_model(self, model_dir: Path, labels: list[str] | None, pad_id: int | None, **kwargs: Any) -> Any:
        from transformers import AutoModelForTokenClassification

        from ftc.train import load_head

        assert labels is not None
        return load_head(AutoModelForTokenClassification, model_dir, labels, pad_id, **kwargs)

    def collator(self, pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
        from ftc.collate import PaddedCollator

        return PaddedCollator(pad_id, targets=(), token_targets=(("labels", "labels"),))

    def sampling(self, spec: Spec) -> str:
        return "group_by_length" if spec.train.group_by_length else "random"

    def trainer_metrics(self, spec: Spec, labels: list[str]) -> Callable[[Any], dict[str, float]]:
        """Entity F1 on the validation split (`eval_f1`), as the test split is scored."""
        def metrics(prediction: Any) -> dict[str, float]:
            logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
            pred, gold = np.asarray(logits).argmax(-1), np.asarray(prediction.label_ids)
            mask = gold != IGNORE
            scores = tagging.entity_scores([[labels[t] for t in g[m]] for g, m in zip(gold, mask, strict=True)],
                                           [[labels[t] for t in p[m]] for p, m in zip(pred, mask, strict=True)],
                                           spec.eval.mode, spec.data.tags.scheme)
            return {"f1": scores["f1"]}
        return metrics

    def evaluate(self, spec: Spec, model: Any, tokenizer: Any, ds: Any, collator: Callable[..., Any],
                 labels: list[str] | None) -> dict[str, Any]:
        from ftc.tasks.tagged_splits import score

        gold, pred, loss = predict_tags(model, ds, collator, spec.train.batch_size)
        names = labels or []
        return score(ds, [[names[t] for t in g] for g in gold], [[names[t] for t in p] for p in pred],
                     spec.eval.mode, spec.data.tags.scheme, not spec.tokenize.label_all_subwords) | {"loss": loss}

    def report_sections(self, metrics: dict[str, Any], names: list[str] | None, run_dir: Path) -> list[str]:
        from ftc.tasks.tagged_splits import report_sections

        return report_sections(metrics)

    # ── export
    def auto_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def parity_feed(self, rows: list[dict[str, Any]], pad_id: int) -> Iterator[tuple[dict[str, Any],
                                                                                  Callable[[np.ndarray], np.ndarray],
                                                                                  np.ndarray]]:
        """Parity judges the labelled tokens: each is one scored row of [tags] logits."""
        for start in range(0, len(rows), self.parity_batch):
            batch = self.collator(pad_id)(rows[start:start + self.parity_batch])
            labels = batch.pop("labels").numpy()
            mask = labels != IGNORE
            yield batch, lambda z, m=mask: z[m], labels[mask]

    # ── runtime
    def runtime(self, artifact: Any, threads: int) -> Any:
        from ftc.runtime.entities import Tagger

        return Tagger(artifact, threads)

    def infer(self, model: Any, inputs: list[dict[str, Any]], options: dict[str, Any]) -> list[dict[str, Any]]:
        from ftc.errors import InferenceError

        if bad := next((i for i in inputs if "text" not in i), None):
            raise InferenceError(f"a tagger takes texts; this input has {', '.join(bad)}")
        found = model.entities([i["text"] for i in inputs], batch_size=options["batch_size"])
        return [{"entities": e} for e in found]

    def infer_line(self, inp: dict[str, Any], result: dict[str, Any], first: bool) -> str:
        spans = "; ".join(f"{e['entity_group']} {inp['text'][e['start']:e['end']]!r} [{e['start']}:{e['end']}] "
                          f"{e['score']:.3f}" for e in result["entities"])
        return f"{spans or '(no entity)'}\t{inp['text']}"

    def serve(self, server: Any, body: dict[str, Any]) -> dict[str, Any]:
        from ftc.runtime.serve import HttpError, checked, json_type, one_of

        checked(body, ENTITY_FIELDS)
        texts = [body["text"]] if one_of(body, "text", "texts") == "text" else body["texts"]
        if not texts:
            raise HttpError(400, "`texts` is empty")
        if len(texts) > server.max_batch:
            raise HttpError(413, f"{len(texts)} texts; this server takes at most {server.max_batch} per request")
        if (bad := next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)) is not None:
            raise HttpError(400, f"`texts[{bad}]` must be a string, not {json_type(texts[bad])}")
        with server.lock:
            found = server.model.entities(texts, batch_size=server.max_batch)
        return {"entities": found}


def predict_tags(model: Any, dataset: Any, collator: Callable[..., Any],
                 batch_size: int) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """(gold tag ids, predicted tag ids) of every row's labelled tokens, in dataset order, and
    the mean token loss."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    order = np.argsort(np.asarray(dataset["length"]), kind="stable") if len(dataset) else np.zeros(0, np.int64)
    gold: list[np.ndarray] = [np.zeros(0, np.int64)] * len(order)
    pred: list[np.ndarray] = [np.zeros(0, np.int64)] * len(order)
    loss_sum, tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in collator([dataset[int(i)] for i in rows]).items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            mask = labels != IGNORE
            loss_sum += float(torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum"))
            tokens += int(mask.sum())
            best = logits.argmax(-1).cpu().numpy()
            labels_np, mask_np = labels.cpu().numpy(), mask.cpu().numpy()
            for r, i in enumerate(rows):
                gold[int(i)], pred[int(i)] = labels_np[r][mask_np[r]], best[r][mask_np[r]]
    return gold, pred, loss_sum / tokens if tokens else float("nan")


TASK = TokenClassification()

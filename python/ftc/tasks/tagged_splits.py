"""Token classification's split files and scores: the tag list as the data reveals it, kept
rows → `train` / `valid` / `test` Arrow files, and the entity scores with the report's
per-type table and missed / spurious examples.

A split file holds, per sentence: `input_ids`, `labels` (a tag id on each word's first
sub-word, -100 elsewhere), `length` (tokens stored), and `words` / `tags` (the sentence as
read, for `ftc inspect` and the report's examples).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from ftc.rows import IGNORE
from ftc.tasks import tagging
from ftc.tasks.tagged import PREFIXES, tag_ids

SPLITS = ("train", "valid", "test")


class LabelSet:
    """The tag list. Given (`model.labels`), it is fixed; else each entity type seen adds all
    of its scheme's tags (so B-X can continue as I-X and a repair has its B-X), and the final
    list is `O` then the types in order (`final`)."""

    def __init__(self, fixed: list[str] | None, scheme: str) -> None:
        self.fixed, self.scheme = fixed is not None, scheme
        self.names: list[str] = list(fixed) if fixed is not None else ["O"]
        self.types: set[str] = set()

    def add(self, tags: Iterable[str]) -> None:
        if self.fixed:
            return
        for t in sorted({tagging.split_tag(t)[1] for t in tags} - self.types - {""}):
            self.types.add(t)
            self.names += [f"{p}-{t}" for p in PREFIXES[self.scheme]]

    def ids(self, tags: pl.Series) -> pa.Array:
        return tag_ids(tags.to_arrow().cast(pa.large_list(pa.large_string())), self.names)

    def final(self) -> tuple[list[str], np.ndarray]:
        """(the tag list, each provisional id's final id)."""
        if self.fixed:
            return self.names, np.arange(len(self.names))
        names = ["O"] + [f"{p}-{t}" for t in sorted(self.types) for p in PREFIXES[self.scheme]]
        return names, np.array([names.index(n) for n in self.names])


def _remap(labels: pa.Array, remap: np.ndarray) -> pa.Array:
    values = np.asarray(pc.list_flatten(labels), dtype=np.int32).copy()
    kept = values != IGNORE
    values[kept] = remap[values[kept]]
    return pa.ListArray.from_arrays(pc.cast(labels.offsets, pa.int32()), pa.array(values, pa.int32()))


class Collected:
    """Kept sentences, in memory until the tag list is final."""

    def __init__(self, spec: Any) -> None:
        self.labels = LabelSet(spec.model.labels, spec.data.tags.scheme)
        self.parts: list[dict[str, Any]] = []

    def add(self, run: Any, rows: pl.DataFrame, codes: np.ndarray, ids: pa.Array, labels: pa.Array,
            hashes: np.ndarray, idx: int, weight: float, st: Any) -> None:
        self.parts.append({"ids": ids, "labels": labels, "hashes": hashes, "codes": codes,
                           "source": np.full(rows.height, idx, np.int32), "lines": rows["line"].to_numpy(),
                           "words": rows["tokens"].to_arrow(), "tags": rows["tags"].to_arrow()})

    def finish(self, run: Any, stats: list[Any], tmp: Path, threads: int,
               progress: Any) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        from ftc import quality
        from ftc.errors import SourceError
        from ftc.prep import check_output_size

        spec = run.spec
        names, remap = self.labels.final()
        if not self.parts or not sum(len(p["codes"]) for p in self.parts):
            raise SourceError("no tagged sentence survived the data stage: nothing to train on")
        cat = {k: np.concatenate([p[k] for p in self.parts]) for k in ("hashes", "codes", "source", "lines")}
        arrays = {k: pa.concat_arrays([p[k].cast(pa.large_list(pa.large_string())) if k in ("words", "tags") else p[k]
                                       for p in self.parts]) for k in ("ids", "labels", "words", "tags")}
        arrays["labels"] = _remap(arrays["labels"], remap)
        split = cat["codes"].copy()
        for i in range(len(spec.data.sources)):
            m = (split < 0) & (cat["source"] == i)
            split[m] = quality.assign_split(cat["hashes"][m], cat["lines"][m], i, spec)
        lengths = np.asarray(pc.list_value_length(arrays["ids"]), dtype=np.int32)
        weights = np.array([s.weight for s in spec.data.sources])
        splits, columns = {}, ["input_ids", "labels", "length", "words", "tags"]
        for s_i, name in enumerate(SPLITS):
            rows = np.flatnonzero(split == s_i)
            run.funnel.splits[name] = len(rows)
            if name == "train":
                reps = quality.repeats(cat["hashes"][rows], weights[cat["source"][rows]], spec.project.seed)
                check_output_size(run, int((reps * lengths[rows]).sum()), run.names[0], float(weights.max()))
                rows = np.repeat(rows, reps)
                run.funnel.train_weighted = len(rows)
            take = pa.array(rows)
            table = pa.table({"input_ids": arrays["ids"].take(take), "labels": arrays["labels"].take(take),
                              "length": pa.array(lengths[rows], pa.int32()), "words": arrays["words"].take(take),
                              "tags": arrays["tags"].take(take)})
            with pa.OSFile(str(tmp / f"{name}.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table, max_chunksize=8192)
            for i, st in enumerate(stats):
                st.examples[name] = int((cat["source"][rows] == i).sum())
            flat = np.asarray(pc.list_flatten(table["input_ids"].combine_chunks()))
            splits[name] = {
                "examples": len(rows), "rows": len(rows), "tokens": int(lengths[rows].sum()),
                "unk_tokens": int(np.count_nonzero(flat == run.unk_id)) if run.unk_id is not None else None,
                "entities": entity_counts(table["tags"].combine_chunks()),
                "max_example_tokens": int(lengths[rows].max()) if len(rows) else 0,
                "padding_ratio": quality.padding_ratio(lengths[rows], spec.train.batch_size, spec.project.seed,
                                                       bucketed=False),
                "padding_batch": spec.train.batch_size,  # not a key input: which batches the figure measures
            }
        extra = {"labels": names, "tag_scheme": spec.data.tags.scheme,
                 "label_all_subwords": spec.tokenize.label_all_subwords,
                 "tags_repaired": int(run.funnel.changed.get("tags repaired", 0))}
        return splits, extra, columns


def entity_counts(tags: pa.Array) -> dict[str, int]:
    """Entities per type in sentences of tags, as seqeval's default mode reads them: a tag
    other than O opens one at a sentence's start, as B-/S-, after O, E- or S-, or on a change
    of type."""
    lengths = np.asarray(pc.list_value_length(tags))
    first = np.zeros(int(lengths.sum()), bool)
    first[(np.cumsum(lengths) - lengths)[lengths > 0]] = True
    t = pl.col("tag")
    p, k = t.str.slice(0, 1), t.str.slice(2)
    opens = (p != "O") & (pl.col("first") | p.is_in(["B", "S"]) | p.shift(1).is_in(["O", "E", "S"])
                          | (k.shift(1) != k))
    counts = pl.DataFrame({"tag": pl.Series(pc.list_flatten(tags)).cast(pl.String), "first": first}).lazy() \
        .filter(opens).group_by(kind=k).len().sort("kind").collect()
    return dict(zip(counts["kind"].to_list(), counts["len"].to_list(), strict=True))


def score(ds: Any, gold: list[list[str]], pred: list[list[str]], mode: str, scheme: str,
          words_align: bool) -> dict[str, Any]:
    """Entity scores (seqeval's), token accuracy and the first missed / spurious entities, shown
    in their sentence's words when each labelled token is one word (`words_align`)."""
    scores = tagging.entity_scores(gold, pred, mode, scheme)
    tokens = sum(len(g) for g in gold)
    hits = sum(a == b for g, p in zip(gold, pred, strict=True) for a, b in zip(g, p, strict=True))
    missed: list[dict[str, Any]] = []
    spurious: list[dict[str, Any]] = []
    sentences = ds["words"] if words_align and ds is not None and len(gold) else []
    for r, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(missed) >= EXAMPLES and len(spurious) >= EXAMPLES:
            break
        true, found = set(tagging.entities_lenient(g)), set(tagging.entities_lenient(p))
        words = sentences[r] if len(sentences) else None
        for kind, out in ((true - found, missed), (found - true, spurious)):
            for t, s, e in sorted(kind, key=lambda x: x[1]):
                if len(out) < EXAMPLES:
                    out.append({"type": t, "entity": " ".join(words[s:e + 1]) if words else f"tokens {s}–{e}",
                                "sentence": " ".join(words)[:300] if words else ""})
    return {"precision": scores["precision"], "recall": scores["recall"], "f1": scores["f1"],
            "macro_f1": scores["macro"]["f1"], "accuracy": hits / tokens if tokens else float("nan"),
            "per_type": scores["per_type"], "mode": mode,
            "missed": missed, "spurious": spurious}


EXAMPLES = 5  # missed and spurious entities shown in the report


def report_sections(metrics: dict[str, Any]) -> list[str]:
    from ftc.report import _table, fmt

    if "per_type" not in metrics:
        return []
    lines = [f"## Per entity type ({metrics['mode']} mode, as seqeval)", "",
             *_table(["type", "precision", "recall", "f1", "support"],
                     [[t, fmt(m["precision"]), fmt(m["recall"]), fmt(m["f1"]), fmt(m["support"])]
                      for t, m in metrics["per_type"].items()]), ""]
    for key, title in (("missed", "Missed entities (in the gold tags, not predicted)"),
                       ("spurious", "Spurious entities (predicted, not in the gold tags)")):
        if metrics.get(key):
            lines += [f"## {title}", "", *_table(["type", "entity", "sentence"],
                                                 [[e["type"], e["entity"], e["sentence"]] for e in metrics[key]]), ""]
    return lines

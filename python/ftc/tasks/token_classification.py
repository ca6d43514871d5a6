"""The token-classification task (NER, POS): reading tagged sentences, encoding them with
aligned sub-word labels, turning annotation-tool spans into tagged words, and decoding a
model's token logits into entities at serving time.

Tagged data is one table shape everywhere: `tokens` and `tags`, both `list<string>`, one
tag per token. Schemes, repair and metrics live in `tagging`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftc.errors import FtcError, SourceError

TAGGED = pa.schema([("tokens", pa.list_(pa.large_string())), ("tags", pa.list_(pa.large_string()))])
SPANS = pa.large_list(pa.struct([("start", pa.int64()), ("end", pa.int64()), ("label", pa.large_string())]))


def read_conll(path: str | Path, encoding: str = "utf-8") -> pa.Table:
    """A CoNLL-style file: one token per line, the token in the first column and its tag in the
    last (the columns between, POS or chunk tags, are skipped); sentences end at a blank or
    whitespace-only line; `-DOCSTART-` lines are not sentences. Columns are split at tabs when
    the line has one (tokens may then hold spaces), else at whitespace."""
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    sent_tokens: list[str] = []
    sent_tags: list[str] = []
    with open(path, encoding=encoding, newline=None) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                if sent_tokens:
                    tokens.append(sent_tokens)
                    tags.append(sent_tags)
                    sent_tokens, sent_tags = [], []
                continue
            cols = [c.strip() for c in line.split("\t")] if "\t" in line else line.split()
            if cols[0] == "-DOCSTART-":
                continue
            if len(cols) < 2 or not cols[0] or not cols[-1]:
                raise SourceError(f"{path}:{n}: expected a token and a tag, found {line!r}",
                                  hint="one `token … tag` per line, the tag last; a blank line between sentences")
            sent_tokens.append(cols[0])
            sent_tags.append(cols[-1])
    if sent_tokens:
        tokens.append(sent_tokens)
        tags.append(sent_tags)
    return pa.table([pa.array(tokens, TAGGED.field("tokens").type), pa.array(tags, TAGGED.field("tags").type)],
                    schema=TAGGED)


def check_table(table: pa.Table, tokens: str = "tokens", tags: str = "tags") -> pa.Table:
    """A table of `tokens` and `tags` list columns (from JSONL, parquet…) in the TAGGED shape;
    raises SourceError naming the first row whose lists are missing or differ in length."""
    for name in (tokens, tags):
        if name not in table.column_names:
            raise SourceError(f"no column {name!r}; found {', '.join(table.column_names)}",
                              hint="token classification reads a list of tokens and a list of tags per row")
    out = []
    for name in (tokens, tags):
        col = table[name].combine_chunks()
        if not pa.types.is_list(col.type) and not pa.types.is_large_list(col.type):
            raise SourceError(f"column {name!r} is {col.type}, not a list of strings",
                              hint="split the text into tokens first, or give spans (see spans_to_tagged)")
        value = col.type.value_type
        if not (pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_string_view(value)):
            # A cast would quietly turn tag ids into the strings "0", "1"…
            raise SourceError(f"column {name!r} is {col.type}; expected a list of strings",
                              hint="tags given as ids (datasets' ner_tags): map them to label names first")
        out.append(col.cast(TAGGED.field("tokens").type))
    n_tokens, n_tags = (pc.fill_null(pc.list_value_length(c), -1) for c in out)
    bad = pc.indices_nonzero(pc.or_(pc.not_equal(n_tokens, n_tags), pc.equal(n_tokens, -1)))
    if len(bad):
        row = bad[0].as_py()
        raise SourceError(f"row {row}: {n_tokens[row].as_py()} tokens but {n_tags[row].as_py()} tags "
                          f"({len(bad)} such rows; -1 is a missing list)",
                          hint="each token needs exactly one tag")
    return pa.table(out, schema=TAGGED)


def tag_ids(tags: pa.ChunkedArray | pa.Array, labels: Sequence[str]) -> pa.Array:
    """`list<string>` tags → `list<int32>` label ids; raises SourceError on a tag not in `labels`."""
    tags = tags.combine_chunks() if isinstance(tags, pa.ChunkedArray) else tags
    flat = pc.list_flatten(tags)
    ids = pc.index_in(flat, value_set=pa.array(labels, pa.large_string()))
    if ids.null_count:
        first = pc.indices_nonzero(pc.is_null(ids))[0].as_py()
        row = int(np.searchsorted(np.asarray(tags.offsets)[1:], first, side="right"))
        raise SourceError(f"row {row}: tag {flat[first].as_py()!r} is not a label; labels: {', '.join(labels)}",
                          hint="list it in the labels, or fix the data")
    return pa.ListArray.from_arrays(pc.cast(tags.offsets, pa.int32()), ids.cast(pa.int32()))


def encode_tagged(encoder: Any, table: pa.Table, labels: Sequence[str], max_length: int,
                  label_all_subwords: bool = False) -> pa.Table:
    """A TAGGED table → `input_ids`, `labels` (`list<int32>`, -100 on special tokens and
    continuation sub-words) and `length` (tokens before truncation), with the data stage's
    `DataEncoder`."""
    ids, lab, length = encoder.encode_words(table["tokens"].combine_chunks(), tag_ids(table["tags"], labels),
                                            max_length, label_all_subwords, list(labels))
    return pa.table({"input_ids": pa.array(ids), "labels": pa.array(lab), "length": pa.array(length)})


def spans_to_tagged(texts: Sequence[str], spans: Sequence[Sequence[dict]],
                    threads: int = 0) -> tuple[pa.Table, list[list[str]]]:
    """Texts with character-offset entity spans (`[{start, end, label}]`, end exclusive, in
    characters as Python indexes a str: the JSON export of Label Studio or doccano) → a TAGGED
    table with BIO tags plus `starts`/`ends` (each token's character offsets), and per text the
    spans left out (not on word boundaries, overlapping, outside the text), one line each."""
    from ftc import _data

    rows = [[{"start": int(s["start"]), "end": int(s["end"]), "label": str(s["label"])} for s in row]
            for row in spans]
    words, tags, starts, ends, problems = _data.spans_to_words(
        pa.array(texts, pa.large_string()), pa.array(rows, SPANS), threads)
    table = pa.table({"tokens": pa.array(words), "tags": pa.array(tags), "starts": pa.array(starts),
                      "ends": pa.array(ends)})
    return table, pa.array(problems).to_pylist()


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - np.max(logits, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def decode_entities(text: str, logits: np.ndarray, encoding: Any, tokenizer: Any, id2label: Sequence[str],
                    ignore_labels: Iterable[str] = ("O",)) -> list[dict]:
    """One text's token logits (`[tokens, labels]`, as the model saw `encoding`, a `tokenizers`
    Encoding of `text` with special tokens) → entities `{entity_group, score, word, start, end}`,
    as transformers' token-classification pipeline gives them with `aggregation_strategy="first"`:
    a word takes its first sub-word's label and score, adjacent words of one type group (a B-
    opens a new group), the group's score is the mean of its words'."""
    logits = np.asarray(logits, dtype=np.float32)
    check_logits(logits, encoding, id2label)
    scores = _softmax(logits)
    model = tokenizer.model
    # The pipeline's own test of "sub-word": a token whose text differs in length from the
    # characters it covers (`##ing` over "ing") when the model marks continuations, else (no
    # such marker) a token that does not follow a space.
    word_aware = bool(getattr(model, "continuing_subword_prefix", None))
    unk = getattr(model, "unk_token", None)
    unk_id = tokenizer.token_to_id(unk) if unk else None
    decode = tokenizer.decoder.decode if tokenizer.decoder is not None else " ".join
    words: list[dict] = []
    for i, (token, tid, (start, end), special) in enumerate(zip(encoding.tokens, encoding.ids, encoding.offsets,
                                                                 encoding.special_tokens_mask)):
        if special:
            continue
        ref = text[start:end]
        if word_aware:
            subword = len(token) != len(ref)
        else:
            subword = start > 0 and " " not in text[start - 1:start + 1]
        if tid == unk_id:
            token, subword = ref, False
        if subword and words:
            words[-1]["tokens"].append(token)
            words[-1]["end"] = end
        else:
            words.append({"tokens": [token], "scores": scores[i], "start": start, "end": end})
    entities: list[dict] = []
    group: list[dict] = []
    for w in words:
        best = int(w["scores"].argmax())
        w.update(entity=id2label[best], score=w["scores"][best], word=decode(w["tokens"]))
        bi, kind = _bio(w["entity"])
        if group and not (kind == _bio(group[-1]["entity"])[1] and bi != "B"):
            entities.append(_group(group, decode))
            group = []
        group.append(w)
    if group:
        entities.append(_group(group, decode))
    ignore = set(ignore_labels)
    return [e for e in entities if e["entity_group"] not in ignore]


def _bio(label: str) -> tuple[str, str]:
    return (label[0], label[2:]) if label.startswith(("B-", "I-")) else ("I", label)


def _group(words: list[dict], decode: Any) -> dict:
    return {"entity_group": words[0]["entity"].split("-", 1)[-1],
            "score": float(np.mean(np.nanmean([w["score"] for w in words]))),
            "word": decode([w["word"] for w in words]),
            "start": words[0]["start"], "end": words[-1]["end"]}


def check_logits(logits: np.ndarray, encoding: Any, id2label: Sequence[str]) -> None:
    """The logits fit the encoding and the label list; raises FtcError otherwise."""
    if logits.ndim != 2 or logits.shape != (len(encoding.ids), len(id2label)):
        raise FtcError(f"logits of shape {logits.shape}; expected ({len(encoding.ids)}, {len(id2label)}) "
                       "(tokens, labels)", hint="pass one text's logits, without the batch axis")

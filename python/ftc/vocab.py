"""Domain vocabulary (`tokenize.add_tokens`, `add_tokens_file`): the tokens a spec adds, the
base tokenizer extended with them, the embedding rows they get, and the candidates
`ftc vocab suggest` lists.

The tokenizer is extended by the `tokenizers` library's own `add_tokens`, the call behind
`AutoTokenizer.add_tokens`: the data stage's encoders read the same added-token table that
transformers builds at training time, so ids agree by construction (and are tested against it).
A token the base vocabulary already holds keeps its id (it is only split out whole from then on);
a new one gets the next id and an embedding row that starts as the mean of the rows of the pieces
the base tokenizer split it into, so the model first reads the word about as it read its pieces.
The input embeddings and an untied output head are both set that way. The rule is deterministic:
export rebuilds the same base rows from the run's `ftc_vocab.json` before an adapter is loaded
onto them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ftc.errors import BuildError, SourceError
from ftc.spec import Spec

FILE = "ftc_vocab.json"  # beside the run's tokenizer: the new rows and how they were initialised


@dataclass(frozen=True)
class NewToken:
    token: str
    id: int
    pieces: list[int]  # the base tokenizer's ids for the token's text: the rows its row starts from


def spec_tokens(spec: Spec) -> list[str]:
    """`add_tokens`, then the lines of `add_tokens_file`, in order, each once."""
    tokens = list(spec.tokenize.add_tokens)
    if name := spec.tokenize.add_tokens_file:
        path = spec.resolve(name)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SourceError(f"`tokenize.add_tokens_file`: cannot read {path}: {e.strerror or e}",
                              hint="the path is relative to the spec's directory") from None
        except UnicodeDecodeError as e:
            line = path.read_bytes().count(b"\n", 0, e.start) + 1
            raise SourceError(f"`tokenize.add_tokens_file`: {path}:{line}: not UTF-8 (byte {e.start}: {e.reason})",
                              hint="save the token list as UTF-8, one token per line") from None
        tokens += [t for line in text.splitlines() if (t := line.strip()) and not t.startswith("#")]
    return list(dict.fromkeys(tokens))


def extend(tokenizer_json: str, tokens: list[str]) -> tuple[str, list[NewToken]]:
    """The tokenizer (as tokenizer.json text) with `tokens` added, and the tokens that got new ids."""
    from tokenizers import Tokenizer

    if not tokens:
        return tokenizer_json, []
    base, grown = _unpadded(tokenizer_json), Tokenizer.from_str(tokenizer_json)
    grown.add_tokens(tokens)
    new = [NewToken(t, grown.token_to_id(t), base.encode(t, add_special_tokens=False).ids)
           for t in tokens if base.token_to_id(t) is None]
    return grown.to_str(), new


def _unpadded(tokenizer_json: str) -> Any:
    """A `tokenizers.Tokenizer` that encodes a text to its own tokens only: the padding and
    truncation a tokenizer.json may configure (sentence encoders pad to 128) switched off."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.no_padding()
    tok.no_truncation()
    return tok


def add_to(tokenizer: Any, model_dir: Path, tokens: list[str]) -> list[NewToken]:
    """Adds `tokens` to a transformers tokenizer of the base in `model_dir`, as the data stage
    added them to its tokenizer.json; returns the new ones. Ids that differ (a tokenizer whose
    own files disagree) stop the build rather than train on rows that mean other words."""
    if not tokens:
        return []
    new = extend((model_dir / "tokenizer.json").read_text(encoding="utf-8"), tokens)[1]
    tokenizer.add_tokens(tokens)
    if wrong := [t.token for t in new if tokenizer.convert_tokens_to_ids(t.token) != t.id]:
        raise BuildError(f"transformers' tokenizer of {model_dir} gives the added tokens {wrong[:3]} other ids than "
                         "its tokenizer.json does", hint="save the tokenizer again with `save_pretrained`, so that "
                         "tokenizer.json and tokenizer_config.json describe the same vocabulary")
    return new


def grow(model: Any, new: list[NewToken], size: int) -> None:
    """Gives `model` rows for `new` (its embeddings reach `size` rows, never shrink), each the
    mean of its pieces' rows, in the input embeddings and an untied output head."""
    import torch

    if not new:
        return
    emb = model.get_input_embeddings()
    old = emb.weight.shape[0]
    if old < size:
        model.resize_token_embeddings(size, mean_resizing=False)
        emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    matrices = [emb.weight] + ([head.weight] if head is not None and head.weight is not emb.weight else [])
    with torch.no_grad():
        for w in matrices:
            fallback = w[:old].mean(0)  # a token whose text the base encodes to nothing
            for t in new:
                w[t.id] = w[t.pieces].mean(0) if t.pieces else fallback


def trainable_rows(model: Any, ids: list[int]) -> list[int] | dict[str, list[int]] | None:
    """PEFT's `trainable_token_indices` for the rows `ids`: the input embeddings (a head tied to
    them follows), and an untied output head by its module's name."""
    if not ids:
        return None
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is emb.weight:
        return list(ids)
    names = {m: n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    return {names[emb]: list(ids), names[head]: list(ids)}


def save(folder: Path, new: list[NewToken], size: int) -> None:
    if new:
        (folder / FILE).write_text(json.dumps({"vocab_size": size, "tokens": [asdict(t) for t in new]},
                                              ensure_ascii=False, indent=1), encoding="utf-8")


def load(folder: Path) -> tuple[list[NewToken], int]:
    """What `save` wrote in a run's model folder; nothing for a run that added no tokens."""
    path = folder / FILE
    if not path.is_file():
        return [], 0
    data = json.loads(path.read_text(encoding="utf-8"))
    return [NewToken(**t) for t in data["tokens"]], data["vocab_size"]


def fit(model: Any, folder: Path) -> Any:
    """The base `model` given the rows of the tokens the run in `folder` added (what its
    adapter was trained on top of); a run that added none leaves it as it is."""
    new, size = load(folder)
    grow(model, new, size)
    return model


# ── ftc vocab suggest ────────────────────────────────────────────────────────────────────────

WORD = re.compile(r"\w+(?:-\w+)*")  # words and hyphenated compounds; contractions are no domain terms


@dataclass(frozen=True)
class Candidate:
    word: str
    count: int
    pieces: int  # tokens the word costs today, after a space
    saved: int  # tokens saved over the sources were it added (count × what each occurrence saves)


def candidates(texts: Iterable[str], tokenizer_json: str, min_count: int = 5, min_chars: int = 3) -> list[Candidate]:
    """The words of `texts` that the tokenizer splits into the most pieces, weighted by how often
    they occur: those whose addition saves the most tokens, best first. A word is counted as it
    usually appears, after a space; an added token still leaves that space its own token where
    the tokenizer has one (byte-level BPE, SentencePiece), which the saving accounts for."""
    raw: Counter[str] = Counter()
    for text in texts:
        raw.update(WORD.findall(text))
    tok = _unpadded(tokenizer_json)
    counts: Counter[str] = Counter()
    for w, n in raw.items():  # a word as the tokenizer sees it: "It" and "it" are one word to a lower-casing one
        counts[tok.normalizer.normalize_str(w) if tok.normalizer else w] += n
    words = [w for w, n in counts.items() if n >= min_count and len(w) >= min_chars and not w.isdigit()]
    after = 1 + len(tok.encode(" ", add_special_tokens=False).ids)
    out = []
    for w, enc in zip(words, tok.encode_batch([f" {w}" for w in words], add_special_tokens=False), strict=True):
        if (pieces := len(enc.ids)) > after and tok.token_to_id(w) is None:
            out.append(Candidate(w, counts[w], pieces, counts[w] * (pieces - after)))
    return sorted(out, key=lambda c: (-c.saved, c.word))


def suggest(spec: Spec, min_count: int = 5, min_chars: int = 3, threads: int = 0) -> list[Candidate]:
    """`candidates` over every text of the spec's sources, read as the data stage reads them,
    for the base tokenizer with the tokens the spec already adds."""
    from ftc import tasks
    from ftc.model import load_tokenizer_info, resolve_model
    from ftc.sources import read_source, source_files

    info = load_tokenizer_info(resolve_model(spec.model.base, spec.root))
    task = tasks.get(spec.model.task)

    def texts() -> Iterable[str]:
        for src in spec.data.sources:
            for batch in read_source(src, source_files(src, spec.root), threads, None, spec.data.split.column,
                                     task.read_file):
                yield from row_texts(batch.rows)

    return candidates(texts(), extend(info.tokenizer_json, spec_tokens(spec))[0], min_count, min_chars)


def row_texts(rows: Any) -> list[str]:
    """Every text of a batch of source rows: text columns, message contents, word lists."""
    import polars as pl

    out: list[str] = []
    for name, dtype in rows.schema.items():
        col = rows[name]
        if name in ("label", "split", "tags", "line"):
            continue
        if dtype == pl.String:
            out += col.drop_nulls().to_list()
        elif isinstance(dtype, pl.List) and dtype.inner == pl.String:
            out += col.drop_nulls().list.join(" ").to_list()
        elif isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct) and \
                "content" in [f.name for f in dtype.inner.fields]:
            out += col.explode().struct.field("content").drop_nulls().cast(pl.String).to_list()
    return out

"""Tag schemes (IOB2, IOBES, IO): checking a label list, finding and repairing invalid tag
sequences, and entity-level precision/recall/F1 as `seqeval` computes them.

Entities are read the way seqeval reads them, so that the figures ftc reports are the ones a
user gets from the usual evaluation scripts: `default` mode is seqeval's lenient reading (an
`I-X` after `O` starts an entity), `strict` mode its scheme automaton (such an `I-X` is no
entity at all). Repair rewrites an invalid sequence into the canonical one with the entities
of the lenient reading, so a repaired sequence scores the same in both modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ftc.errors import FtcError, SourceError

SCHEMES = {"IOB2": "BIO", "IOBES": "BIOES", "IO": "IO"}  # scheme → prefixes its labels may carry


def split_tag(tag: str) -> tuple[str, str]:
    """`B-PER` → (`B`, `PER`); `O` → (`O`, ``)."""
    return ("O", "") if tag == "O" else (tag[0], tag[2:])


def check_labels(labels: Sequence[str], scheme: str) -> None:
    """Every label is `O` or `P-TYPE` with a prefix of the scheme; raises FtcError naming the first that is not."""
    if scheme not in SCHEMES:
        raise FtcError(f"unknown tag scheme {scheme!r}; allowed: {', '.join(SCHEMES)}",
                       hint="BIO is IOB2, BIOES is IOBES")
    if len(set(labels)) != len(labels):
        raise FtcError(f"the label list repeats a label: {list(labels)}")
    for label in labels:
        if label != "O" and not (len(label) > 2 and label[1] == "-" and label[0] in SCHEMES[scheme]):
            raise FtcError(f"label {label!r} is not an {scheme} tag; allowed: O, or "
                           f"{' / '.join(p + '-TYPE' for p in SCHEMES[scheme] if p != 'O')}",
                           hint="set the scheme the data uses, or map the labels (e.g. PER → I-PER for IO)")


def _transitions(labels: Sequence[str], scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """valid[prev, cur] for label ids (the last row/column is the sentence start), and
    may_end[cur]: the label may close a sentence."""
    parts = [split_tag(t) for t in labels] + [("O", "")]
    n = len(parts)
    valid = np.ones((n, n), dtype=bool)
    may_end = np.ones(n, dtype=bool)
    if scheme == "IO":
        return valid, may_end
    for c, (cp, ct) in enumerate(parts):
        for p, (pp, pt) in enumerate(parts):
            open_same = pp in ("B", "I") and pt == ct
            if cp in ("I", "E"):
                valid[p, c] = open_same
            elif scheme == "IOBES":
                valid[p, c] = pp not in ("B", "I")  # an open entity must close with I/E first
        if scheme == "IOBES":
            may_end[c] = cp not in ("B", "I")
    return valid, may_end


def entities_lenient(seq: Sequence[str]) -> list[tuple[str, int, int]]:
    """seqeval's default reading of one sequence: (type, first, last) with `last` inclusive."""
    chunks, prev_tag, prev_type, begin = [], "O", "", 0
    for i, chunk in enumerate([*seq, "O"]):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if prev_tag in "ES" or (prev_tag in "BI" and tag in "BSO") or (prev_tag not in "O." and prev_type != type_):
            chunks.append((prev_type, begin, i - 1))
        if tag in "BS" or (prev_tag in "ESO" and tag in "EI") or (tag not in "O." and prev_type != type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def encode_entities(n: int, entities: Sequence[tuple[str, int, int]], scheme: str) -> list[str]:
    """Entities (type, first, last) → the canonical tag sequence of length `n`."""
    tags = ["O"] * n
    for type_, first, last in entities:
        for i in range(first, last + 1):
            tags[i] = f"I-{type_}"
        if scheme == "IOB2":
            tags[first] = f"B-{type_}"
        elif scheme == "IOBES":
            if first == last:
                tags[first] = f"S-{type_}"
            else:
                tags[first], tags[last] = f"B-{type_}", f"E-{type_}"
    return tags


@dataclass
class TagCheck:
    """The checked sequences (repaired in place, or without the dropped rows) and the row
    numbers of the invalid ones."""

    tags: list[list]
    invalid: list[int] = field(default_factory=list)
    action: str = "repair"


def _bad_ends(flat: np.ndarray, lengths: np.ndarray, labels: Sequence[str], scheme: str) -> np.ndarray:
    """Per tag: it closes its sentence but the scheme says it may not (IOBES: an open entity)."""
    _, may_end = _transitions(labels, scheme)
    starts = np.cumsum(lengths) - lengths
    ends = (starts + lengths - 1)[lengths > 0]
    out = np.zeros(flat.size, dtype=bool)
    out[ends] = ~may_end[flat[ends]]
    return out


def _invalid_tags(flat: np.ndarray, lengths: np.ndarray, labels: Sequence[str],
                  scheme: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sentences as flat label ids and lengths → (per tag: the scheme forbids it there, each
    sentence's first index, each tag's sentence)."""
    if flat.size and (flat.min() < 0 or flat.max() >= len(labels)):
        raise SourceError(f"tag id {flat.min() if flat.min() < 0 else flat.max()} is outside the label list "
                          f"(0..{len(labels) - 1})")
    valid, _ = _transitions(labels, scheme)
    starts = np.cumsum(lengths) - lengths
    prev = np.concatenate([[len(labels)], flat[:-1]]) if flat.size else flat
    prev[starts[lengths > 0]] = len(labels)  # each sentence starts after an implicit O
    bad = ~valid[prev, flat] | _bad_ends(flat, lengths, labels, scheme)
    return bad, starts, np.repeat(np.arange(len(lengths)), lengths)


def invalid_sentences(flat: np.ndarray, lengths: np.ndarray, labels: Sequence[str], scheme: str) -> np.ndarray:
    """Indexes of the sentences (flat label ids + lengths) the scheme forbids, vectorized: what
    `check_tags` would find, without building Python lists."""
    check_labels(labels, scheme)
    bad, _, rows = _invalid_tags(flat, lengths, labels, scheme)
    return np.unique(rows[bad])


def check_tags(sequences: Sequence[Sequence[int | str]], labels: Sequence[str], scheme: str,
               on_invalid: str = "repair") -> TagCheck:
    """Finds the sequences the scheme does not allow (I-X after O or after another type; in
    IOBES also E-X without B-X, an entity left open…) and repairs them (`on_invalid="repair"`,
    each entity as seqeval's default mode reads it) or drops them (`"drop"`). Sequences are of
    label ids or of label strings, and come back as they went in."""
    if on_invalid not in ("repair", "drop"):
        raise FtcError(f"unknown rule for invalid tag sequences {on_invalid!r}; allowed: repair, drop")
    check_labels(labels, scheme)
    index = {label: i for i, label in enumerate(labels)}
    as_str = any(len(s) and isinstance(s[0], str) for s in sequences)
    try:
        ids = [[index[t] for t in s] for s in sequences] if as_str else sequences
    except KeyError as e:
        row = next(i for i, s in enumerate(sequences) if any(t not in index for t in s))
        raise SourceError(f"row {row}: tag {e.args[0]!r} is not in the label list {list(labels)}",
                          hint="add it to the labels, or fix the data") from None
    lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter((t for s in ids for t in s), dtype=np.int64, count=int(lengths.sum()))
    bad, starts, rows = _invalid_tags(flat, lengths, labels, scheme)
    invalid = sorted(set(rows[bad].tolist()))
    out = [list(s) for s in sequences]
    if on_invalid == "drop":
        dropped = set(invalid)
        return TagCheck([s for i, s in enumerate(out) if i not in dropped], invalid, on_invalid)
    if scheme == "IOB2":
        # An IOB2 sequence is invalid only at an I-X that opens an entity, and seqeval's default
        # mode reads exactly that I-X as the entity's start: B-X in its place is the repair.
        begin = np.array([index.get("B-" + split_tag(t)[1], -1) for t in labels])
        fixed_flat = flat.copy()  # (IOB2 has no forbidden ending: `bad` marks only these I-X)
        fixed_flat[bad] = begin[flat[bad]]
        if (fixed_flat < 0).any():
            at = int(np.argmax(fixed_flat < 0))
            raise SourceError(f"row {rows[at]}: repairing {labels[flat[at]]!r} needs "
                              f"{'B-' + split_tag(labels[flat[at]])[1]!r}, which is not in the label list",
                              hint="list every P-TYPE of the scheme for each entity type")
        for r in invalid:
            fixed = fixed_flat[starts[r]:starts[r] + lengths[r]].tolist()
            out[r] = [labels[t] for t in fixed] if as_str else fixed
        return TagCheck(out, invalid, on_invalid)
    for r in invalid:
        text = [labels[t] for t in ids[r]]
        fixed = encode_entities(len(text), entities_lenient(text), scheme)
        missing = [t for t in fixed if t not in index]
        if missing:
            raise SourceError(f"row {r}: repairing {text} needs {missing[0]!r}, which is not in the label list",
                              hint="list every P-TYPE of the scheme for each entity type")
        out[r] = fixed if as_str else [index[t] for t in fixed]
    return TagCheck(out, invalid, on_invalid)


# Scheme automata of seqeval's strict mode: (previous prefix, current prefix, type) patterns,
# "*" any prefix or type, "=" the same type, "!" another.
_STRICT = {
    "IOB2": ("IOB", {("*", "B", "*")}, {("B", "I", "="), ("I", "I", "=")},
             {("I", "O", "*"), ("I", "I", "!"), ("I", "B", "*"), ("B", "O", "*"), ("B", "I", "!"), ("B", "B", "*")}),
    "IOBES": ("IOBES", {("*", "B", "*"), ("*", "S", "*")},
              {("B", "I", "="), ("B", "E", "="), ("I", "I", "="), ("I", "E", "=")},
              {("S", "*", "*"), ("E", "*", "*")}),
}
_PREFIXES = set("IOBESUL")


def _matches(prev: tuple[str, str], cur: tuple[str, str], patterns: set) -> bool:
    return any(p in ("*", prev[0]) and c in ("*", cur[0]) and (t == "*" or (t == "=") == (prev[1] == cur[1]))
               for p, c, t in patterns)


def entities_strict(seq: Sequence[str], scheme: str) -> list[tuple[str, int, int]]:
    """seqeval's strict reading of one sequence: (type, start, end) with `end` exclusive;
    raises ValueError on a prefix the scheme does not have, as seqeval does."""
    allowed, start, inside, end = _STRICT[scheme]
    tokens = []
    for t in [*seq, "O"]:
        if not t or t[0] not in _PREFIXES or t[0] not in allowed:
            raise ValueError(f"tag {t!r} is not a {scheme} tag; allowed prefixes: {', '.join(allowed)}")
        tokens.append((t[0], t[1:].strip("-") or "_"))
    out, i, prev = [], 0, ("O", "_")
    while i < len(tokens):
        if _matches(prev, tokens[i], start):
            j = i + 1
            while _matches(tokens[j - 1], tokens[j], inside):  # the closing O is never inside
                j += 1
            if _matches(tokens[j - 1], tokens[j], end):
                out.append((tokens[i][1], i, j))
            i = j
        else:
            i += 1
        prev = tokens[i - 1]
    return out


def _prf(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 per entry; 0 where undefined (seqeval's `zero_division="warn"`)."""
    precision = tp / np.where(pred == 0, 1, pred)
    recall = tp / np.where(true == 0, 1, true)
    denom = precision + recall
    f1 = 2 * precision * recall / np.where(denom == 0, 1, denom)
    return precision, recall, f1


def entity_scores(y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], mode: str = "default",
                  scheme: str = "IOB2") -> dict:
    """Entity-level scores of predicted tag sequences, equal to seqeval's: `{"precision",
    "recall", "f1", "support"}` micro-averaged, plus `"macro"` (unweighted mean over entity
    types; NaN without any entity) and `"per_type"` (type → the four figures). `mode="strict"`
    reads entities with the `scheme` automaton (IOB2 or IOBES)."""
    if len(y_true) != len(y_pred) or any(len(t) != len(p) for t, p in zip(y_true, y_pred)):
        raise FtcError("true and predicted tag sequences differ in number or length")
    if mode == "default":
        def spans(ys):  # one sequence, an O between sentences, as seqeval flattens them
            return {(t, s, e) for t, s, e in entities_lenient([tag for y in ys for tag in [*y, "O"]])}
    elif mode == "strict" and scheme in _STRICT:
        def spans(ys):
            return {(t, n, s, e) for n, y in enumerate(ys) for t, s, e in entities_strict(y, scheme)}
    else:
        raise FtcError(f"unknown evaluation mode {mode!r} / scheme {scheme!r}; allowed: default, or strict with "
                       f"{' or '.join(_STRICT)}")
    true, pred = spans(y_true), spans(y_pred)
    types = sorted({e[0] for e in true | pred})
    tp = np.array([len({e for e in true & pred if e[0] == t}) for t in types], dtype=np.int64)
    n_pred = np.array([sum(e[0] == t for e in pred) for t in types], dtype=np.int64)
    n_true = np.array([sum(e[0] == t for e in true) for t in types], dtype=np.int64)
    p, r, f = _prf(tp, n_pred, n_true)
    mp, mr, mf = _prf(np.array([tp.sum()]), np.array([n_pred.sum()]), np.array([n_true.sum()]))
    with np.errstate(invalid="ignore", divide="ignore"):
        macro = {k: float(np.mean(v)) if len(v) else float("nan") for k, v in
                 (("precision", p), ("recall", r), ("f1", f))}
    return {
        "precision": float(mp[0]), "recall": float(mr[0]), "f1": float(mf[0]), "support": int(n_true.sum()),
        "macro": macro,
        "per_type": {t: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                         "support": int(n_true[i])} for i, t in enumerate(types)},
    }

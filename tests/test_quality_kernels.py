"""The cleaning, dedup and augmentation kernels, each rule against a small pure-Python reference."""

from __future__ import annotations

import collections
import html
import math
import random
import re
import string
import unicodedata

import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ftc import _data

HTML, NORMALIZE, CONTROL, REPLACE, WHITESPACE = 1, 2, 4, 8, 16

# Characters Python's unicodedata knows (no unassigned Cn, no surrogates), so the reference
# and the Rust tables agree whatever their Unicode versions.
known_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cn", "Cs"]), max_size=60) | st.sampled_from([
    "", "e\u0301", "\u1e9b\u0323", "ﬁ ligature ＡＢＣ", "\u1100\u1161\u11a8", "Å Å Å", "x²³ ½ ㎏",
    "\x00\x1f\x7f\x85\x9f",
    " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000 ", "\u200b\ufeff\u180e",
])
spacey_text = st.text(st.sampled_from(list("ab \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u2003\u3000\u200bé")), max_size=40)


def arrow(texts: list[str]) -> pa.Array:
    return pa.array(texts, pa.large_string())


def clean(texts: list[str], **rules) -> tuple[list[str], list[int], list[int]]:
    out, changed, dropped = _data.TextCleaner(**rules).clean(arrow(texts))
    return pa.array(out).to_pylist(), pa.array(changed).to_pylist(), pa.array(dropped).to_pylist()


def bits(texts: list[str], refs: list[str], bit: int) -> list[int]:
    return [bit if r != t else 0 for t, r in zip(texts, refs)]


# ---------------------------------------------------------------- cleaning, one rule at a time

INLINE_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*\b[^>]*>|<![^>]*>")
html_piece = st.sampled_from([
    "<b>", "</b>", "<i>", "</i>", '<span class="x">', "</span>", "<a href='u?a=1&b=2'>", "</a>", "<!DOCTYPE html>",
    "&amp;", "&lt;", "&gt;", "&quot;", "&nbsp;", "&#39;", "&eacute;", "&Eacute;", "&amp", "&lt", "&copy", "&notit;",
    "&amplt;", "&#65", "&#x41;", "&#X6a", "&#x80;", "&#0;", "&#xd800;", "&#99999999;", "&#;", "&#xZ;", "&bogus;",
    "a < b", " > ", "&", "&lt;p&gt;", "  ", "\n",
]) | st.text(st.sampled_from(string.ascii_letters + string.digits + " ;#&/=\"'é"), max_size=10)


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(st.lists(html_piece, max_size=10).map("".join), min_size=1, max_size=6))
def test_strip_inline_html_like_python(texts):
    ref = [html.unescape(INLINE_TAG.sub("", t)) for t in texts]
    assert clean(texts, strip_html=True) == (ref, bits(texts, ref, HTML), [-1] * len(texts))


@pytest.mark.parametrize(("text", "want"), [
    ("<p>one</p><p>two</p>", "one\ntwo"),
    ("<P>Up</P>", "Up"),
    ("line1<br>line2<br/>line3<BR />", "line1\nline2\nline3"),
    ("<ul><li>x</li><li>y</li></ul>", "x\ny"),
    ("<h1>Title</h1>body <b>bold</b>", "Title\nbody bold"),
    ("<table><tr><td>1</td><td>2</td></tr></table>", "1\n2"),
    ("<div>  a </div>\n\n \t<div>b  c</div>", "a\nb  c"),
    ("<p>&nbsp;x &amp; y</p>", "x & y"),
    ("x<script>alert(1)</script>y<!-- c\n -->z<style>p{}</style>", "xyz"),
    ("<SCRIPT type='a'>x</SCRIPT >k", "k"),
    ("  <b>keep</b>  spaces ", "  keep  spaces "),  # no block tag: no trimming
    ("a < b &lt c", "a < b < c"),
])
def test_strip_block_html_cases(text, want):
    assert clean([text], strip_html=True)[0] == [want]


@pytest.mark.parametrize("ref", ["&#1;", "&#x0b;", "&#x7f;", "&#xfdd0;", "&#xfffe;"])
def test_numeric_reference_to_invalid_codepoint_like_python(ref):
    assert clean([ref], strip_html=True)[0] == [html.unescape(ref)]


@settings(max_examples=200, deadline=None)
@given(form=st.sampled_from(["NFC", "NFKC"]), texts=st.lists(known_text, min_size=1, max_size=6))
def test_normalize_like_unicodedata(form, texts):
    ref = [unicodedata.normalize(form, t) for t in texts]
    out, changed, _ = clean(texts, normalize=form)
    assert (out, changed) == (ref, bits(texts, ref, NORMALIZE))
    assert clean(out, normalize=form)[:2] == (out, [0] * len(out))  # idempotent


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(known_text | spacey_text, min_size=1, max_size=6))
def test_collapse_whitespace_like_split_join(texts):
    ref = [" ".join(t.split()) for t in texts]
    out, changed, _ = clean(texts, collapse_whitespace=True)
    assert (out, changed) == (ref, bits(texts, ref, WHITESPACE))
    assert clean(out, collapse_whitespace=True)[:2] == (out, [0] * len(out))


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(known_text, min_size=1, max_size=6))
def test_remove_control_like_category_cc(texts):
    ref = ["".join(c for c in t if c in "\t\n\r" or unicodedata.category(c) != "Cc") for t in texts]
    assert clean(texts, remove_control=True) == (ref, bits(texts, ref, CONTROL), [-1] * len(texts))


def python_replacement(rust: str) -> str:
    """`$1` / `${1}` (Rust regex) → `\\g<1>` (Python re)."""
    return re.sub(r"\$\{(\d+)\}|\$(\d+)", lambda m: rf"\g<{m[1] or m[2]}>", rust)


REPLACE_RULES = [
    [(r"[0-9]+", "#")],
    [(r"(a)(b)", "$2$1")],
    [(r"(?i)foo|bar", "baz"), (r"baz", "qux")],  # rules apply in order, each on the last one's output
    [(r"(\w+)@(\w+)\.com", "<${1} at $2>")],
    [(r" +", " "), (r"^ | $", "")],
]
ascii_text = st.text(st.sampled_from(list("abfoAB rFO@.c0123m_")), max_size=40)


@settings(max_examples=150, deadline=None)
@given(rules=st.sampled_from(REPLACE_RULES), texts=st.lists(ascii_text, min_size=1, max_size=6))
def test_replace_like_re_sub(rules, texts):
    ref = list(texts)
    for pattern, with_ in rules:
        ref = [re.sub(pattern, python_replacement(with_), t) for t in ref]
    assert clean(texts, replace=rules) == (ref, bits(texts, ref, REPLACE), [-1] * len(texts))


@settings(max_examples=150, deadline=None)
@given(texts=st.lists(ascii_text, min_size=1, max_size=8))
def test_drop_if_matches_like_re_search_on_final_text(texts):
    patterns = [r"(?i)foo", r"^\d", r"@\w+\.com$", r"a{3}"]
    final = [" ".join(t.split()) for t in texts]
    ref = [next((i for i, p in enumerate(patterns) if re.search(p, t)), -1) for t in final]
    out = clean(texts, collapse_whitespace=True, drop_if_matches=patterns)
    assert out == (final, bits(texts, final, WHITESPACE), ref)


def test_changed_bits_for_every_rule():
    rules = dict(strip_html=True, normalize="NFKC", remove_control=True, replace=[(r"\d+", "0")],
                 collapse_whitespace=True, drop_if_matches=["zzz", "(?i)mail"])
    texts = ["<i>ｍail</i>\x07  me 42\n", "plain", "<b>x</b>", "ﬁ", "a\x00b", "n 7", "a  b", "zzz mail"]
    out, changed, dropped = clean(texts, **rules)
    assert out == ["mail me 0", "plain", "x", "fi", "ab", "n 0", "a b", "zzz mail"]
    assert changed == [HTML | NORMALIZE | CONTROL | REPLACE | WHITESPACE, 0, HTML, NORMALIZE, CONTROL, REPLACE,
                       WHITESPACE, 0]
    assert dropped == [1, -1, -1, -1, -1, -1, -1, 0]


ALL_BUT_HTML = dict(normalize="NFKC", remove_control=True, replace=[(r"[0-9]+", "0"), (r"(?i)x{2,}", "x")],
                    collapse_whitespace=True)


@settings(max_examples=200, deadline=None)
@given(texts=st.lists(known_text | spacey_text, min_size=1, max_size=6),
       rules=st.sampled_from([ALL_BUT_HTML, {**ALL_BUT_HTML, "normalize": "NFC"}]))
def test_all_rules_idempotent_without_controls(texts, rules):
    texts = ["".join(c for c in t if unicodedata.category(c) != "Cc") for t in texts]
    once = clean(texts, **rules)[0]
    assert clean(once, **rules)[:2] == (once, [0] * len(once))


@pytest.mark.parametrize("text", ["e\x00\u0301", "\u1100\x01\u1161"])
def test_all_rules_idempotent_when_a_control_separates_a_composable_pair(text):
    once = clean([text], **ALL_BUT_HTML)[0]
    assert clean(once, **ALL_BUT_HTML)[0] == once


def test_check_regex():
    assert "unclosed group" in _data.check_regex("(")
    assert _data.check_regex("a[") is not None
    for ok in [r"a+", r"(?i)foo|bar", r"\p{Han}+", r"(?P<x>\d{2,3})", r"^\s*$"]:
        assert _data.check_regex(ok) is None
    with pytest.raises(Exception, match="unclosed"):
        _data.TextCleaner(drop_if_matches=["("])


# ---------------------------------------------------------------- dedup

def dedup(texts: list[str], batches: list[int] | None = None, **kw) -> list[int]:
    d = _data.Deduper(**{"mode": "exact", **kw})
    cuts = [0, *(batches or []), len(texts)]
    out: list[int] = []
    for a, b in zip(cuts, cuts[1:]):
        out += pa.array(d.check(arrow(texts[a:b]))).to_pylist()
    return out


def dedup_key(text: str) -> str:
    return " ".join(text.lower().split())


def ref_exact(texts: list[str]) -> list[int]:
    first: dict[str, int] = {}
    return [-1 if first.setdefault(dedup_key(t), i) == i else first[dedup_key(t)] for i, t in enumerate(texts)]


variant_text = st.lists(st.sampled_from(["a", "b", "ab", "A", "B", "aB", "é", "É"]), max_size=3).flatmap(
    lambda words: st.tuples(*[st.sampled_from(["", " ", "  ", "\t", "\n ", "\u3000"]) for _ in range(len(words) + 1)])
    .map(lambda gaps: "".join(g + w for g, w in zip(gaps, [*words, ""]))))


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(variant_text, max_size=30), data=st.data())
def test_exact_dedup_like_first_key(texts, data):
    ref = ref_exact(texts)
    assert dedup(texts) == ref
    cut = data.draw(st.integers(0, len(texts)))
    assert dedup(texts, [cut]) == ref
    kept = [t for t, d in zip(texts, ref) if d == -1]
    assert dedup(kept) == [-1] * len(kept)


def shingles(text: str, k: int = 5) -> set[str]:
    key = dedup_key(text)
    return {key} if len(key) <= k else {key[i:i + k] for i in range(len(key) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b)


def ref_near(texts: list[str], threshold: float) -> list[int]:
    """Greedy: a text duplicates the earliest kept text whose exact shingle Jaccard reaches the threshold."""
    sets, kept, out = [shingles(t) for t in texts], [], []
    for i, s in enumerate(sets):
        j = next((j for j in kept if jaccard(s, sets[j]) >= threshold), None)
        out.append(-1 if j is None else j)
        if j is None:
            kept.append(i)
    return out


def random_words(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))))
    return " ".join(words)


def near_copy(rng: random.Random, text: str) -> str:
    """One character edit, or a case/whitespace variant (equal key)."""
    i, c = rng.randrange(len(text)), rng.choice(string.ascii_lowercase)
    return rng.choice([text[:i] + c + text[i + 1:], text[:i] + c + text[i:], text[:i] + text[i + 1:],
                       text.upper(), text.replace(" ", "  \n")])


@st.composite
def near_corpus(draw) -> list[str]:
    """Clusters of a ~400-char base and near copies (Jaccard ≥ 0.9), unrelated between clusters (≤ 0.3)."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    docs = []
    for _ in range(draw(st.integers(1, 6))):
        base = random_words(rng, 400)
        docs += [base] + [near_copy(rng, base) for _ in range(draw(st.integers(0, 3)))]
    return draw(st.permutations(docs))


# Banding misses a pair with probability about (1 - J^13)^9: 4% at J = 0.9, ~1e-5 at J = 0.975, so copies
# are one edit from their base and the examples are derandomized to keep the test deterministic.
@settings(max_examples=40, deadline=None, derandomize=True)
@given(docs=near_corpus())
def test_near_dedup_like_greedy_jaccard(docs):
    sets = [shingles(t) for t in docs]
    for i in range(len(docs)):
        for j in range(i):
            assert not 0.3 < jaccard(sets[i], sets[j]) < 0.9, "corpus is not well separated"
    ref = ref_near(docs, 0.8)
    assert dedup(docs, mode="near", threshold=0.8) == ref
    assert dedup(docs, [len(docs) // 2], mode="near", threshold=0.8, threads=1) == ref
    kept = [t for t, d in zip(docs, ref) if d == -1]
    assert dedup(kept, mode="near") == [-1] * len(kept)


def test_near_dedup_keeps_the_first_and_ignores_threads():
    rng = random.Random(5)
    base = random_words(rng, 400)
    copy = base[:200] + "x" + base[201:]
    assert dedup([base, copy], mode="near") == [-1, 0]
    assert dedup([copy, base], mode="near") == [-1, 0]
    assert dedup(["short", "SHORT ", "shor"], mode="near") == [-1, 0, -1]  # shorter than a shingle: one shingle
    docs = [random_words(rng, 400) for _ in range(150)]
    docs = [d if i % 3 else near_copy(rng, docs[i // 2]) for i, d in enumerate(docs)]
    one, two = dedup(docs, mode="near", threads=1), dedup(docs, mode="near", threads=2)
    assert one == two == ref_near(docs, 0.8)
    assert sum(d != -1 for d in one) > 20


def test_dedup_rejects_bad_settings():
    for kw in [dict(mode="fuzzy"), dict(mode="near", threshold=1.5), dict(mode="near", shingle=0)]:
        with pytest.raises(Exception, match="bad dedup settings"):
            _data.Deduper(**kw)


# ---------------------------------------------------------------- augmentation

def augment(texts: list[str], keys: list[int], copy: int = 1, **kw) -> list[str]:
    a = _data.Augmenter(**kw)
    return pa.array(a.augment(arrow(texts), pa.array(keys, pa.uint64()), copy)).to_pylist()


SENTENCES = [f"sentence {i}: the quick brown fox, number {i}, jumps over {i % 7} lazy dogs again" for i in range(300)]
SENTENCES += [f"我们喜欢第{i}个例子，因为它很好。" for i in range(100)]
RATES = dict(synonym=0.3, insert=0.2, swap=0.2, delete=0.2,
             synonyms=[("quick", ["fast", "rapid"]), ("喜欢", ["喜爱"])])


def test_augment_is_a_function_of_seed_key_and_copy():
    keys = [(i * 2654435761) % 2**64 for i in range(len(SENTENCES))]
    one = augment(SENTENCES, keys, seed=3, threads=1, **RATES)
    assert one == augment(SENTENCES, keys, seed=3, threads=2, **RATES)
    cut = 137
    assert one == [*augment(SENTENCES[:cut], keys[:cut], seed=3, **RATES),
                   *augment(SENTENCES[cut:], keys[cut:], seed=3, **RATES)]
    assert one[::-1] == augment(SENTENCES[::-1], keys[::-1], seed=3, **RATES)
    assert sum(a != b for a, b in zip(one, augment(SENTENCES, keys, seed=4, **RATES))) > len(SENTENCES) // 2
    assert sum(a != b for a, b in zip(one, augment(SENTENCES, keys, copy=2, seed=3, **RATES))) > len(SENTENCES) // 2
    assert sum(a != t for a, t in zip(one, SENTENCES)) > len(SENTENCES) // 2


word = st.text(st.sampled_from(string.ascii_letters + "é"), min_size=1, max_size=6)
separator = st.sampled_from([" ", "  ", ", ", ". ", " - ", "\n"])
sentence = st.lists(st.tuples(word, separator), min_size=1, max_size=15).map(lambda ws: "".join(w + s for w, s in ws))


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(sentence, min_size=1, max_size=5), seed=st.integers(0, 2**64 - 1))
def test_swap_keeps_words_and_layout(texts, seed):
    out = augment(texts, list(range(len(texts))), swap=0.5, seed=seed)
    for t, o in zip(texts, out):
        assert sorted(re.findall(r"\w+", o)) == sorted(re.findall(r"\w+", t))
        assert re.sub(r"\w+", "w", o) == re.sub(r"\w+", "w", t)  # punctuation and spacing stay put


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(sentence, min_size=1, max_size=5), seed=st.integers(0, 2**64 - 1), p=st.sampled_from([0.5, 1.0]))
def test_delete_never_empties_a_text(texts, seed, p):
    out = augment(texts, list(range(len(texts))), delete=p, seed=seed)
    for t, o in zip(texts, out):
        kept = re.findall(r"\w+", o)
        assert kept and len(kept) <= len(re.findall(r"\w+", t))
        if p == 1.0:
            assert len(kept) == 1


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(sentence, min_size=1, max_size=5), seed=st.integers(0, 2**64 - 1), p=st.sampled_from([0.1, 0.5]))
def test_insert_adds_copies_of_its_own_words(texts, seed, p):
    out = augment(texts, list(range(len(texts))), insert=p, seed=seed)
    for t, o in zip(texts, out):
        before, after = collections.Counter(re.findall(r"\w+", t)), collections.Counter(re.findall(r"\w+", o))
        n = sum(before.values())
        assert after >= before and set(after) == set(before)
        assert after.total() - n == max(1, math.floor(p * n + 0.5))  # Rust rounds half away from zero


def test_augment_rejects_mismatched_keys():
    a = _data.Augmenter(swap=0.5)
    with pytest.raises(Exception, match="differ in length"):
        a.augment(arrow(["a b"]), pa.array([1, 2], pa.uint64()), 1)
    with pytest.raises(Exception, match="Int64"):
        a.augment(arrow(["a b"]), pa.array([1], pa.int64()), 1)


@pytest.mark.parametrize(("text", "want"), [
    ("In fact, good.", "indeed, good."),
    ("in  fact in\tfact", "indeed indeed"),  # the phrase takes the spacing before its first word
    ("in, fact", "inside, fact"),  # punctuation breaks the phrase; the longest key that matches wins
    ("within fact", "within fact"),
    ("我喜欢它", "我喜爱它"),
])
def test_synonyms_at_rate_one_replace_every_match(text, want):
    table = [("in fact", ["indeed"]), ("in", ["inside"]), ("喜欢", ["喜爱"])]
    assert augment([text], [9], synonym=1.0, synonyms=table) == [want]


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(known_text | sentence, min_size=1, max_size=6), seed=st.integers(0, 2**64 - 1))
@example(texts=["  keep  this, as is ", "我很好！\n"], seed=0)
def test_no_rates_no_change(texts, seed):
    assert augment(texts, [seed] * len(texts), seed=seed, synonyms=[("a", ["b"])]) == texts

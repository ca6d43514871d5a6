"""Rendered text and ids identical to `apply_chat_template`; labels cover exactly the
assistant contents and their end-of-turn token."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import LLAMA3_TEMPLATE, SMOL_TEMPLATE, bpe_model_dir
from transformers import AutoTokenizer

from ftc import _data
from ftc.model import load_tokenizer_info

MESSAGE = pa.struct([("role", pa.large_string()), ("content", pa.large_string())])

CONVERSATION = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Germany? Say Paris if unsure."},
    {"role": "assistant", "content": "Berlin."},
]


def as_arrow(convs: list[list[dict]]) -> pa.Array:
    return pa.array(convs, pa.large_list(MESSAGE))


@pytest.fixture(scope="module", params=["smol", "llama3", "chatml", "alpaca"])
def setup(request, tmp_path_factory):
    name = request.param
    template = {"smol": SMOL_TEMPLATE, "llama3": LLAMA3_TEMPLATE}.get(name) or _data.builtin_template(name)
    d = bpe_model_dir(tmp_path_factory.mktemp(name), template=template)
    info = load_tokenizer_info(d)
    enc = _data.DataEncoder(info.tokenizer_json, info.model_template, info.special_tokens, info.eos_token)
    return enc, AutoTokenizer.from_pretrained(d)


def assert_matches(enc, ref, convs):
    rendered = pa.array(enc.render(as_arrow(convs))).to_pylist()
    assert rendered == [ref.apply_chat_template(c, tokenize=False) for c in convs]
    ids, labels, status, _e, _h, _n = (pa.array(a).to_pylist() for a in enc.encode_chat(as_arrow(convs), 1 << 20))
    for conv, i, lab, s in zip(convs, ids, labels, status, strict=True):
        assert i == list(ref.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"])
        answers = [m["content"] for m in conv if m["role"] == "assistant"]
        if not answers:
            assert s == 2  # nothing to train on
            continue
        assert s == 0
        runs, run = [], []
        for tok, lab_ in zip(i, lab, strict=True):
            if lab_ != -100:
                assert lab_ == tok
                run.append(tok)
            elif run:
                runs.append(run)
                run = []
        if run:
            runs.append(run)
        decoded = [ref.decode(r) for r in runs]
        eot = "<|eot_id|>" if "<|eot_id|>" in rendered[0] else ref.eos_token
        stripped = "trim" in (ref.chat_template or "")
        assert decoded == [(a.strip() if stripped else a) + eot for a in answers]


def test_multi_turn_with_system_prompt(setup):
    enc, ref = setup
    assert_matches(enc, ref, [CONVERSATION, CONVERSATION[1:], CONVERSATION[:3]])


content = st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=60)


@settings(max_examples=40, deadline=None)
@given(turns=st.lists(st.tuples(content, content), min_size=1, max_size=3), system=st.none() | content)
def test_random_conversations(setup, turns, system):
    enc, ref = setup
    conv = [{"role": "system", "content": system}] if system else []
    for q, a in turns:
        conv += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    if any(not m["content"].strip() for m in conv):
        return  # trimmed-empty contents have no span to check
    assert_matches(enc, ref, [conv])


def test_answer_repeated_in_user_turn_is_not_labelled(setup):
    enc, ref = setup
    conv = [{"role": "user", "content": "Reply with: yes"}, {"role": "assistant", "content": "yes"}]
    assert_matches(enc, ref, [conv])


def test_train_on_all_labels_every_token(setup):
    enc, _ref = setup
    ids, labels, *_ = (pa.array(a).to_pylist() for a in enc.encode_chat(as_arrow([CONVERSATION]), 4096, "right", True))
    assert ids == labels


def test_template_errors_are_per_row(bpe_dir):
    info = load_tokenizer_info(bpe_dir)
    strict = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{{ m.content }}{% endfor %}"
    enc = _data.DataEncoder(info.tokenizer_json, strict, info.special_tokens, info.eos_token)
    convs = [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
             [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "b"}]]
    _ids, _labels, status, errors, _h, _n = (pa.array(a).to_pylist() for a in enc.encode_chat(as_arrow(convs), 64))
    assert status == [0, 3]
    assert errors[0] is None and "no tools" in errors[1]


def test_tojson_like_transformers(tmp_path):
    template = "{{ messages | tojson }}{{ {'k': [1, 2.5, none, true]} | tojson(indent=2) }}"
    d = bpe_model_dir(tmp_path / "m", template=template)
    info = load_tokenizer_info(d)
    enc = _data.DataEncoder(info.tokenizer_json, info.model_template, info.special_tokens)
    conv = [{"role": "user", "content": "é <b>&'\"\n\t"}]
    ref = AutoTokenizer.from_pretrained(d)
    assert pa.array(enc.render(as_arrow([conv]))).to_pylist() == [ref.apply_chat_template(conv, tokenize=False)]
    assert json.loads(ref.apply_chat_template(conv, tokenize=False).split("]")[0] + "]") == conv


# Qwen2.5's handling of tools, condensed: a tool call is written from `function`, a tool's answer
# goes into a user turn, and a `name` shows in the header.
TOOL_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'assistant' %}<|im_start|>assistant\n{% if m.content %}{{ m.content }}{% endif %}"
    "{% for c in m.tool_calls %}{% if c.function is defined %}{% set c = c.function %}{% endif %}"
    "<tool_call>\n{\"name\": \"{{ c.name }}\", \"arguments\": {{ c.arguments | tojson }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}{% if m.name %} ({{ m.name }}){% endif %}{{ '\\n' + m.content }}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOOL_CONVERSATION = [
    {"role": "system", "content": "You can call tools."},
    {"role": "user", "content": "What is 2+3?", "name": "ann"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"b": 3, "a": 2}}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "5"},
    {"role": "assistant", "content": "It is 5."},
]


def with_extra(convs: list[list[dict]]) -> pa.Array:
    """OpenAI messages as the data stage holds them: role, content, the other keys as JSON."""
    struct = pa.struct([("role", pa.large_string()), ("content", pa.large_string()), ("extra", pa.large_string())])
    rows = [[{"role": m["role"], "content": m.get("content"),
              "extra": json.dumps(rest) if (rest := {k: v for k, v in m.items() if k not in ("role", "content")})
              else None} for m in conv] for conv in convs]
    return pa.array(rows, pa.large_list(struct))


def test_tool_calls_and_names_render_as_transformers_does_and_train_whole(tmp_path):
    d = bpe_model_dir(tmp_path / "m", template=TOOL_TEMPLATE)
    info = load_tokenizer_info(d)
    enc = _data.DataEncoder(info.tokenizer_json, info.model_template, info.special_tokens, info.eos_token)
    ref = AutoTokenizer.from_pretrained(d)
    expected = ref.apply_chat_template(TOOL_CONVERSATION, tokenize=False)
    assert pa.array(enc.render(with_extra([TOOL_CONVERSATION]))).to_pylist() == [expected]
    assert '<|im_start|>user (ann)\n' in expected and '{"name": "add", "arguments": {"b": 3, "a": 2}}' in expected
    ids, labels, status, errors, *_ = (pa.array(a).to_pylist()[0] for a in enc.encode_chat(with_extra([TOOL_CONVERSATION]), 4096))
    assert status == 0 and errors is None
    assert ids == list(ref.apply_chat_template(TOOL_CONVERSATION, tokenize=True, return_dict=True)["input_ids"])
    runs, run = [], []
    for tok, lab in zip(ids, labels, strict=True):
        if lab != -100:
            run.append(tok)
        elif run:
            runs, run = [*runs, run], []
    decoded = [ref.decode(r) for r in runs + ([run] if run else [])]
    call = '<tool_call>\n{"name": "add", "arguments": {"b": 3, "a": 2}}\n</tool_call><|im_end|>'
    assert decoded == [call, "It is 5.<|im_end|>"]


def test_tool_calls_or_answers_the_template_drops_fail_their_row(bpe_dir):
    info = load_tokenizer_info(bpe_dir)  # SmolLM2's template: no tool calls
    enc = _data.DataEncoder(info.tokenizer_json, info.model_template, info.special_tokens, info.eos_token)
    alpaca = _data.DataEncoder(info.tokenizer_json, _data.builtin_template("alpaca"), info.special_tokens, info.eos_token)
    said = [m | {"content": "Let me add them."} if "tool_calls" in m else m for m in TOOL_CONVERSATION]
    _i, _l, status, errors, *_ = (pa.array(a).to_pylist() for a in enc.encode_chat(with_extra([said]), 4096))
    assert status == [3] and "does not render tool calls" in errors[0]
    tool_answer = [m for m in TOOL_CONVERSATION if "tool_calls" not in m]
    _i, _l, status, errors, *_ = (pa.array(a).to_pylist() for a in alpaca.encode_chat(with_extra([tool_answer]), 4096))
    assert status == [3] and "does not render 'tool' messages" in errors[0]

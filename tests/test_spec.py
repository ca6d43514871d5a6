"""Spec errors: every problem at once, each with key path, TOML line, found/allowed, typo hints."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftc.errors import SpecError
from ftc.specload import key_lines, load_spec

BAD = """\
[project]
name = "x"

[model]
task = "causal"

[[data.sources]]
path = "a.jsonl"
colums = { text = "t" }

[[data.sources]]
path = "b.jsonl"
weight = -1
columns = { txt = "t" }

[data.clean]
drop_if_matches = ["(unclosed"]
replace = [{ pattern = "ok", with = "x" }, { pattern = "[z-a]", with = "y" }]

[data.split]
valid = 0.6
test = 0.5

[tokenize]
max_length = "long"

[train]
learning_rat = 2e-4
method = "loar"
lora = { r = 0, alpha = 16 }
"""


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("spec") / "bad.toml"
    path.write_text(BAD)
    with pytest.raises(SpecError) as e:
        load_spec(path)
    return e.value.problems


@pytest.mark.parametrize("line, key, needles", [
    (4, "model.base", ["missing required key"]),
    (5, "model.task", ['found: "causal"', "allowed: causal-lm, classification", "did you mean `causal-lm`?"]),
    (9, "data.sources[0].colums", ["unknown key `colums`", "did you mean `columns`?"]),
    (13, "data.sources[1].weight", ["greater than 0", "found: -1"]),
    (14, "data.sources[1].columns.txt", ["unknown key `txt`", "did you mean `text`?"]),
    (17, "data.clean.drop_if_matches", ["invalid regex '(unclosed'"]),
    (18, "data.clean.replace[1].pattern", ["invalid regex '[z-a]'"]),
    (20, "data.split", ["leaves nothing to train on"]),
    (25, "tokenize.max_length", ["valid integer", 'found: "long"']),
    (28, "train.learning_rat", ["unknown key", "allowed: method, epochs", "did you mean `learning_rate`?"]),
    (29, "train.method", ['found: "loar"', "did you mean `lora`?"]),
    (30, "train.lora.r", ["greater than 0", "found: 0"]),
])
def test_each_error_names_key_and_line(problems, line, key, needles):
    matching = [p for p in problems if p.split("\n")[0].split(": ")[1] == f"`{key}`"]
    assert len(matching) == 1, problems
    assert f"bad.toml:{line}: `{key}`" in matching[0]
    for needle in needles:
        assert needle in matching[0]


def test_all_errors_reported_at_once(problems):
    assert len(problems) == 12


def test_valid_spec_has_defaults(tmp_path: Path):
    p = tmp_path / "ok.toml"
    p.write_text('[model]\nbase = "m"\n\n[[data.sources]]\npath = "d.jsonl"\n')
    spec = load_spec(p)
    assert spec.tokenize.max_length == 2048 and spec.train.method == "lora" and spec.data.split.by == "hash"
    assert spec.root == tmp_path


def test_task_defaults_yield_to_what_the_spec_writes(tmp_path: Path):
    """A classifier's schedule defaults to the Trainer's own (linear, no warmup), kept out of the
    keys the spec set; a decoder keeps the schema's; a written key wins either way."""
    head = '[model]\nbase = "m"\ntask = "{task}"\n{labels}\n[[data.sources]]\npath = "d.jsonl"\n'
    cls, lm = (head.format(task=t, labels='labels = ["a", "b"]' if t == "classification" else "")
               for t in ("classification", "causal-lm"))
    for name, text, expected in [("c", cls, ("linear", 0.0)), ("l", lm, ("cosine", 0.03)),
                                 ("w", cls + '\n[train]\nscheduler = "cosine"\n', ("cosine", 0.0))]:
        (tmp_path / f"{name}.toml").write_text(text)
        spec = load_spec(tmp_path / f"{name}.toml")
        assert (spec.train.scheduler, spec.train.warmup_ratio) == expected
        assert ("scheduler" in spec.train.model_fields_set) == (name == "w")


def test_toml_syntax_error_and_missing_file(tmp_path: Path):
    p = tmp_path / "broken.toml"
    p.write_text("[model\nbase = 1\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(p)
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "absent.toml")


def test_key_lines_handles_dotted_keys_and_tables():
    text = '[a]\nx.y = 1\n[[b.c]]\nz = { w = 2 }\n[[b.c]]\nz = 3\n[b.c.d]\nq = 4\n'
    lines = key_lines(text)
    assert lines[("a", "x", "y")] == 2
    assert lines[("b", "c", 0, "z", "w")] == 4
    assert lines[("b", "c", 1, "z")] == 6
    assert lines[("b", "c", 1, "d", "q")] == 8

"""The store: a hit on re-run, a miss when any key input changes, nothing after a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny import bpe_model_dir, write_spec

from ftc import spool
from ftc import store
from ftc.prep import prep
from ftc.specload import load_spec


@pytest.fixture
def project(tmp_path: Path) -> Path:
    model = bpe_model_dir(tmp_path / "model")
    with open(tmp_path / "data.jsonl", "w") as f:
        for i in range(50):
            f.write(json.dumps({"prompt": f"question {i}", "response": f"answer {i}"}) + "\n")
    write_spec(tmp_path / "spec.toml", model, [{"path": "data*.jsonl"}], tokenize={"max_length": 128})
    return tmp_path


def build(project: Path):
    return prep(load_spec(project / "spec.toml"))


def test_second_run_is_a_hit(project: Path):
    first, second = build(project), build(project)
    assert not first.cache_hit and second.cache_hit
    assert first.key == second.key and first.path == second.path
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["inputs"]["sources"][0][0]["file"] == "data.jsonl"
    assert manifest["stats"]["kept"] == 50


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    i = data.index(b"answer 7") + len("answer ")
    data[i] = ord("8")
    path.write_bytes(bytes(data))


CHANGES = {
    "one byte of a source": lambda p: _flip_byte(p / "data.jsonl"),
    "the template": lambda p: (p / "model" / "chat_template.jinja").write_text(
        (p / "model" / "chat_template.jinja").read_text() + "{# changed #}"),
    "the tokenizer": lambda p: (p / "model" / "tokenizer.json").write_text(
        (p / "model" / "tokenizer.json").read_text().replace('"<|im_end|>"', '"<|im_stop|>"')),
    "the spec's template choice": lambda p: _edit(p, "max_length = 128", 'max_length = 128\ntemplate = "chatml"'),
    "[tokenize]": lambda p: _edit(p, "max_length = 128", "max_length = 96"),
    "[data]": lambda p: _edit(p, "[tokenize]", "[data]\nmax_bad_fraction = 0.5\n\n[tokenize]"),
    "a new file in the source's glob": lambda p: _add_file(p),
}


def _add_file(project: Path) -> None:
    (project / "data-more.jsonl").write_text('{"prompt": "p", "response": "r"}\n')


def _edit(project: Path, old: str, new: str) -> None:
    spec = project / "spec.toml"
    text = spec.read_text()
    assert old in text
    spec.write_text(text.replace(old, new))


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_key_input_change_is_a_miss(project: Path, change: str):
    first = build(project)
    CHANGES[change](project)
    second = build(project)
    assert not second.cache_hit and second.key != first.key


def test_training_settings_do_not_change_the_key(project: Path):
    first = build(project)
    _edit(project, "[tokenize]", "[train]\nlearning_rate = 1e-5\nepochs = 1\n\n[export]\nonnx = true\n\n[tokenize]")
    assert build(project).key == first.key


def test_crash_mid_write_leaves_no_entry(project: Path, monkeypatch: pytest.MonkeyPatch):
    real = spool.write_split

    def crash_after_first(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(spool, "write_split", crash_after_first)
    with pytest.raises(OSError, match="simulated"):
        build(project)
    assert store.entries() == []
    assert not [p for p in (store.home() / store.DATASETS).iterdir() if not p.name.endswith(".lock")]
    monkeypatch.setattr(spool, "write_split", real)
    assert not build(project).cache_hit


def test_killed_build_leftovers_are_not_entries_and_gc_removes_them(project: Path):
    result = build(project)
    # What a `kill -9` mid-write leaves: a temp directory of a dead process, without manifest.
    leftover = result.path.parent / f".tmp-{result.key[:16]}-999999999-deadbeef"
    leftover.mkdir()
    (leftover / "train.arrow").write_bytes(b"partial")
    assert [e.key for e in store.entries()] == [result.key]
    removed, _ = store.gc()
    assert removed == 1 and not leftover.exists() and result.path.exists()


def test_gc_never_removes_what_a_build_holds_and_collects_abandoned_checkpoints(project: Path):
    """A dataset a training run reads and the checkpoints it writes are held by locks; `gc
    --older-than 0` skips them, and takes them once released. Checkpoints nobody holds (a killed
    build's) are listed as abandoned and collected."""
    data = build(project)
    running, killed = store.home() / store.WORK / "a", store.home() / store.WORK / "b"
    for d in (running, killed):
        d.mkdir(parents=True)
        (d / "checkpoint-1").write_bytes(b"weights")
    with store.lock(store.WORK, "a"), store.lock(store.DATASETS, data.key, shared=True):
        assert store.abandoned() == [killed]
        store.gc(older_than_days=0)
        assert data.path.is_dir() and running.is_dir() and not killed.exists()
    assert store.abandoned() == [running]
    store.gc(older_than_days=0)
    assert not data.path.exists() and not running.exists()


def test_incomplete_entry_is_rebuilt(project: Path):
    result = build(project)
    os.remove(result.path / "manifest.json")  # as if an older ftc crashed before the manifest
    again = build(project)
    assert not again.cache_hit and (again.path / "manifest.json").is_file()


def test_outputs_open_in_polars_and_datasets(project: Path):
    import datasets
    import polars as pl

    r = build(project)
    ds = datasets.Dataset.from_file(str(r.path / "train.arrow"))
    assert set(ds.column_names) == {"input_ids", "labels", "position_ids", "seq_lengths"}
    df = pl.read_ipc_stream(r.path / "train.arrow")
    assert df.height == ds.num_rows == r.manifest["stats"]["splits"]["train"]["rows"]
    assert df.schema["input_ids"] == pl.List(pl.Int32)


def test_a_package_source_has_one_key_wherever_the_package_is_installed(tmp_path: Path, monkeypatch):
    """Two checkouts, each with its own environment, share the dataset they both build."""
    import importlib
    import sys

    from ftc.prep import resolve_inputs

    rows = "".join(json.dumps({"text": f"row {i} of the packaged data"}) + "\n" for i in range(20))
    keys = []
    for site in ("env-a", "env-b"):
        pkg = tmp_path / site / "site-packages" / "ftc_test_rows"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("", encoding="utf-8")
        (pkg / "data" / "rows.jsonl").write_text(rows, encoding="utf-8")
        monkeypatch.syspath_prepend(str(pkg.parent))
        importlib.invalidate_caches()
        project = tmp_path / f"checkout-{site}"
        project.mkdir()
        spec = load_spec(write_spec(project / "spec.toml", bpe_model_dir(tmp_path / f"tok-{site}"),
                                    [{"path": "pkg://ftc_test_rows/data/rows.jsonl"}]))
        _, _, _, inputs = resolve_inputs(spec)
        assert inputs["sources"][0][0]["file"] == "pkg://ftc_test_rows/data/rows.jsonl"
        keys.append(store.key_of(inputs))
        sys.path.remove(str(pkg.parent))
    assert keys[0] == keys[1]

"""`[train.distill]`: the divergences against a direct computation from full logits, the
teacher's stored predictions (once, bit-identical, reused with no teacher loaded), causal-LM and
classifier students, an earlier run as the teacher, and the refusals."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch
from test_train import chat_rows, write_jsonl
from tiny import bpe_model_dir, llama_model_dir, write_spec

from ftc import build as stages
from ftc import distill, store
from ftc.errors import FtcError
from ftc.rows import IGNORE
from ftc.specload import load_spec


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny Llama (other weights) with the student's tokenizer."""
    return llama_model_dir(tmp_path_factory.mktemp("teacher"), seed=7)


@pytest.mark.parametrize("kind", ["forward-kl", "reverse-kl", "jsd"])
def test_kd_loss_with_k_covering_the_vocabulary_is_the_exact_divergence(kind: str):
    g = torch.Generator().manual_seed(0)
    b, w, v, t = 2, 7, 11, 2.5
    student, teacher = torch.randn(b, w, v, generator=g) * 3, torch.randn(b, w, v, generator=g) * 3
    labels = torch.randint(0, v, (b, w), generator=g)
    labels[0, :3] = IGNORE
    top = torch.log_softmax(teacher / t, -1).topk(v, -1)  # stored as the teacher pass stores it, k = V
    got = distill.kd_loss(student, labels, top.indices, top.values, kind, t)
    keep = labels[:, 1:] != IGNORE
    log_q = torch.log_softmax(student[:, :-1][keep] / t, -1)
    log_p = torch.log_softmax(teacher[:, :-1][keep] / t, -1)
    p, q = log_p.exp(), log_q.exp()
    if kind == "forward-kl":
        per = (p * (log_p - log_q)).sum(-1)
    elif kind == "reverse-kl":
        per = (q * (log_q - log_p)).sum(-1)
    else:
        m = (p + q) / 2
        per = 0.5 * (p * (log_p - m.log())).sum(-1) + 0.5 * (q * (log_q - m.log())).sum(-1)
    torch.testing.assert_close(got, per.mean() * t * t, rtol=1e-5, atol=1e-6)
    assert float(got) > 0
    # the same for a classifier: one position per row, every class
    cls_top = torch.log_softmax(teacher[:, 0] / t, -1)[:, None]
    ids = torch.arange(v).expand(b, 1, v)
    per0 = distill.kd_loss(student[:, 0], labels[:, 0], ids, cls_top, kind, t)
    assert float(per0) > 0


def causal_spec(folder: Path, student: Path, teacher: Path | str, **distill_table: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "d.jsonl", chat_rows(80))
    table = {"teacher": str(teacher), "top_k": 8, "temperature": 2.0, "alpha": 0.5, **distill_table}
    return write_spec(folder / "spec.toml", student, [{"path": "d.jsonl"}], tokenize={"max_length": 128},
                      data_split={"valid": 0.0, "test": 0.1},
                      train={"method": "lora", "max_steps": 4, "batch_size": 4, "learning_rate": 1e-2,
                             "distill": table})


def test_a_causal_student_learns_from_a_stored_teacher_reused_without_loading_it(
        tmp_path: Path, llama_dir: Path, teacher_dir: Path, monkeypatch: pytest.MonkeyPatch):
    run = stages.build(load_spec(causal_spec(tmp_path / "a", llama_dir, teacher_dir)))
    d = run.manifest["distill"]
    assert d["teacher"]["perplexity"] > 1 and d["student_alone"]["perplexity"] > 1
    assert d["student_alone"] != run.manifest["metrics"]  # the two students trained differently
    report = (run.path / "report.md").read_text(encoding="utf-8")
    assert "## Distillation" in report and "student alone" in report
    entries = [e for e in store.entries() if e.bucket == distill.TEACHERS]
    assert len(entries) == 1
    preds = store.read_manifest(entries[0].path)
    assert preds["width"] == 8 and preds["rows"] == run.data.manifest["stats"]["splits"]["train"]["rows"]

    def no_teacher(*_a: object, **_k: object) -> None:
        raise AssertionError("the teacher was loaded again")

    monkeypatch.setattr(distill, "load_teacher", no_teacher)
    other = stages.build(load_spec(causal_spec(tmp_path / "b", llama_dir, teacher_dir, alpha=0.9)))
    assert not other.cache_hit and other.manifest["distill"]["teacher"] == d["teacher"]


def test_the_stored_teacher_is_bit_identical_across_runs(tmp_path: Path, llama_dir: Path, teacher_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch):
    files = []
    for home in ("h1", "h2"):
        monkeypatch.setenv("FTC_HOME", str(tmp_path / home))
        stages.build(load_spec(causal_spec(tmp_path / home, llama_dir, teacher_dir, compare=False)))
        entry = next(e for e in store.entries() if e.bucket == distill.TEACHERS)
        files.append((entry.key, (entry.path / distill.FILE).read_bytes()))
    assert files[0] == files[1] and len(files[0][1]) > 1000


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path: Path, llama_dir: Path):
    other = tmp_path / "other"
    shutil.copytree(llama_dir, other)
    for f in other.glob("tokenizer*"):
        f.unlink()
    bpe_model_dir(other, vocab_size=300)
    with pytest.raises(FtcError, match="its tokenizer is not the student's"):
        stages.build(load_spec(causal_spec(tmp_path / "s", llama_dir, other, compare=False)))


def test_a_classifier_distils_an_earlier_run(tmp_path: Path, bert_dir: Path):
    rng = random.Random(0)
    words = "the quick brown fox jumps over lazy dog model data".split()
    rows = [{"text": " ".join(rng.choice(words) for _ in range(6)) + (" good" if i % 2 else " clean"),
             "label": "pos" if i % 2 else "neg"} for i in range(120)]
    write_jsonl(tmp_path / "d.jsonl", rows)
    train = {"method": "lora", "max_steps": 30, "batch_size": 8, "learning_rate": 1e-2,
             "lora": {"target_modules": ["query", "value"]}}
    tables = {"model": {"task": "classification", "labels": ["neg", "pos"]}, "tokenize": {"max_length": 32},
              "data_split": {"valid": 0.1, "test": 0.2}}
    teacher = stages.build(load_spec(write_spec(tmp_path / "teacher.toml", bert_dir, [{"path": "d.jsonl"}],
                                                train=train, **tables)))
    student = stages.build(load_spec(write_spec(
        tmp_path / "student.toml", bert_dir, [{"path": "d.jsonl"}], **tables,
        train={**train, "max_steps": 10, "eval_steps": 5,  # validation batches carry no teacher
               "distill": {"teacher": teacher.key[:12], "temperature": 1.0}})))
    d = student.manifest["distill"]
    assert d["teacher"]["accuracy"] == teacher.manifest["metrics"]["accuracy"]  # the run, merged, as it scored
    assert 0 <= d["student_alone"]["accuracy"] <= 1 and "## Distillation" in (student.path / "report.md").read_text()
    entry = next(e for e in store.entries() if e.bucket == distill.TEACHERS)
    assert store.read_manifest(entry.path)["width"] == 2


def test_distill_applies_to_causal_lm_and_classification_only(tmp_path: Path, bert_dir: Path):
    write_jsonl(tmp_path / "d.jsonl", [{"tokens": ["a"], "tags": ["O"]}])
    spec = write_spec(tmp_path / "spec.toml", bert_dir, [{"path": "d.jsonl"}],
                      model={"task": "token-classification"}, train={"distill": {"teacher": str(bert_dir)}})
    with pytest.raises(FtcError, match="train.distill"):
        load_spec(spec)

"""Preference pairs (`reward-model`, `preference`): reading every shape, ids against
`apply_chat_template`, the split by prompt, packed log-probs against each sequence alone, the
DPO family against TRL's trainers on the same batch, the stored reference, a reward model
exported and scored without torch."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny import llama_model_dir, write_spec

from ftc import build as stages
from ftc import prep, store
from ftc.errors import FtcError
from ftc.rows import IGNORE, load_split
from ftc.specload import load_spec
from ftc.tasks import pair_losses
from ftc.tasks import preference as preference_task

WORDS = "the model learns to answer short questions about numbers and code well badly".split()


def pair_rows(n: int, seed: int = 0, prompts: int | None = None) -> list[dict]:
    """Pairs whose chosen answer says "well" and rejected "badly": a preference a tiny model learns."""
    rng = random.Random(seed)
    heads = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12))) for _ in range(prompts or n)]
    rows = []
    for i in range(n):
        body = " ".join(rng.choice(WORDS[:-2]) for _ in range(rng.randint(1, 10)))
        rows.append({"prompt": heads[i % len(heads)], "chosen": f"{body} well", "rejected": f"{body} badly"})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pair_spec(folder: Path, base: Path, task: str, rows: list[dict] | None = None, max_length: int = 96,
              **train: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "pairs.jsonl", rows if rows is not None else pair_rows(48))
    table = {"method": "lora", "max_steps": 6, "batch_size": 4, "learning_rate": 5e-3, **train}
    return write_spec(folder / "spec.toml", base, [{"path": "pairs.jsonl"}], model={"task": task},
                      tokenize={"max_length": max_length}, data_split={"valid": 0.0, "test": 0.25}, train=table)


# ── data

def test_every_pair_shape_reads_to_the_ids_apply_chat_template_gives(tmp_path: Path, llama_dir: Path):
    from transformers import AutoTokenizer

    conv = [{"role": "user", "content": "add two numbers"}, {"role": "assistant", "content": "use code"},
            {"role": "user", "content": "and then?"}]
    rows = [
        {"prompt": "what is the model", "chosen": "it learns", "rejected": "it answers"},
        {"prompt": conv, "chosen": [{"role": "assistant", "content": "then return"}],
         "rejected": [{"role": "assistant", "content": "then stop"}]},
        {"chosen": [*conv, {"from": "gpt", "value": "numbers"}], "rejected": [*conv, {"role": "assistant",
                                                                                   "content": "code"}]},
        {"chosen": "\n\nHuman: short questions\n\nAssistant: good answers",
         "rejected": "\n\nHuman: short questions\n\nAssistant: bad answers"},
        {"prompt": "same", "chosen": "x", "rejected": "x"},  # identical: quarantined
        {"prompt": "empty", "chosen": " ", "rejected": "x"},  # empty: quarantined
        {"chosen": [conv[0], {"role": "assistant", "content": "a"}],
         "rejected": [conv[2], {"role": "assistant", "content": "b"}]},
    ]
    spec = load_spec(pair_spec(tmp_path, llama_dir, "preference", rows, 512, max_steps=1))
    spec.data.split.__dict__.update(test=0.0)
    spec.data.__dict__["max_bad_fraction"] = 0.9
    result = prep.prep(spec)
    reasons = [json.loads(line)["reason"] for line in (result.path / "quarantine.jsonl").read_text().splitlines()]
    assert sorted(reasons) == sorted(["identical chosen and rejected", "empty response",
                                      "chosen and rejected conversations differ before their last message: no "
                                      "shared prompt"])
    ds = load_split(result.path, result.manifest, "train")
    assert len(ds) == 4
    tok = AutoTokenizer.from_pretrained(llama_dir)
    wanted = [
        ([{"role": "user", "content": "what is the model"}], "it learns", "it answers"),
        (conv, "then return", "then stop"),
        (conv, "numbers", "code"),
        ([{"role": "user", "content": "short questions"}], "good answers", "bad answers"),
    ]
    got = {tok.decode(r["prompt_ids"] + r["chosen_ids"]): r for r in ds}
    for head, chosen, rejected in wanted:
        for side, answer in (("chosen", chosen), ("rejected", rejected)):
            ids = tok.apply_chat_template(head + [{"role": "assistant", "content": answer}], tokenize=True,
                                          return_dict=False)
            row = got[tok.decode(tok.apply_chat_template(head + [{"role": "assistant", "content": chosen}],
                                                         tokenize=True, return_dict=False))]
            assert row["prompt_ids"] + row[f"{side}_ids"] == list(ids)
            labels = np.asarray(row[f"{side}_labels"])
            labelled = [i for i, lab in zip(row[f"{side}_ids"], labels, strict=True) if lab != IGNORE]
            assert tok.decode(labelled).startswith(answer)  # only the last answer (and its end of turn) learns
            assert tok.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")  # the prompt ends at the header


def test_pairs_split_by_prompt_and_truncate_the_prompt_first(tmp_path: Path, llama_dir: Path):
    rows = pair_rows(200, prompts=40)
    rows[0]["prompt"] = " ".join(["numbers"] * 150)  # longer than max_length alone
    spec = load_spec(pair_spec(tmp_path, llama_dir, "preference", rows, 256))
    result = prep.prep(spec)
    prompts: dict[str, set[str]] = {}
    for split in ("train", "test"):
        ds = load_split(result.path, result.manifest, split)
        for r in ds:
            prompts.setdefault(str(r["prompt_ids"][-20:]), set()).add(split)
            assert len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])) <= 256
    assert all(len(s) == 1 for s in prompts.values())  # no prompt in two splits
    assert {s for v in prompts.values() for s in v} == {"train", "test"}
    p = result.manifest["preference"]
    assert p["truncated_prompts"] == 1 and p["pairs"] == 200
    assert p["prompts"] == 41  # the long one is a prompt of its own


# ── training maths

def test_packed_pair_logps_equal_each_sequence_alone(llama_dir: Path):
    from transformers import AutoModelForCausalLM

    model = preference_task.TASK.load_model(llama_dir, None, 0).eval()
    alone_model = AutoModelForCausalLM.from_pretrained(llama_dir, attn_implementation="eager").eval()
    rng = np.random.default_rng(0)
    rows = [{"prompt_ids": rng.integers(5, 700, rng.integers(2, 9)).tolist(),
             "chosen_ids": rng.integers(5, 700, rng.integers(1, 8)).tolist(),
             "rejected_ids": rng.integers(5, 700, rng.integers(1, 8)).tolist()} for _ in range(5)]
    for r in rows:
        r["chosen_labels"], r["rejected_labels"] = list(r["chosen_ids"]), list(r["rejected_ids"])
        r["rejected_labels"][0] = IGNORE  # a masked response token stays out of the sum
    batch = pair_losses.PairCollator(0)(rows)
    assert batch["input_ids"].shape[0] == 1 and int(batch["seq_lengths"].sum()) == batch["input_ids"].shape[1]
    with torch.no_grad():
        sums, counts = pair_losses.sequence_logps(model(input_ids=batch["input_ids"],
                                                        position_ids=batch["position_ids"]).logits,
                                                  batch["labels"], batch["seq_lengths"])
        for k, r in enumerate(rows):
            for j, side in enumerate(("chosen", "rejected")):
                ids = torch.as_tensor([r["prompt_ids"] + r[f"{side}_ids"]])
                logp = torch.log_softmax(alone_model(ids).logits[0, :-1].double(), -1)
                lab = np.r_[[IGNORE] * len(r["prompt_ids"]), r[f"{side}_labels"]][1:]
                want = sum(float(logp[t, lab[t]]) for t in range(len(lab)) if lab[t] != IGNORE)
                assert abs(float(sums[2 * k + j]) - want) < 1e-5 * max(1.0, abs(want))
                assert int(counts[2 * k + j]) == int((lab != IGNORE).sum())


@pytest.fixture(scope="module")
def ref_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama_model_dir(tmp_path_factory.mktemp("ref"), seed=7)


def _trl_rows(n: int = 4) -> list[dict]:
    rng = np.random.default_rng(1)
    return [{"prompt_ids": rng.integers(5, 700, rng.integers(2, 9)).tolist(),
             "chosen_ids": rng.integers(5, 700, rng.integers(1, 8)).tolist(),
             "rejected_ids": rng.integers(5, 700, rng.integers(1, 8)).tolist()} for _ in range(n)]


@pytest.mark.parametrize(("ours", "theirs"), [("dpo", "sigmoid"), ("ipo", "ipo")])
def test_dpo_and_ipo_equal_trl_dpo_trainer_on_the_same_batch(tmp_path: Path, llama_dir: Path, ref_dir: Path,
                                                             ours: str, theirs: str):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    policy, ref = (AutoModelForCausalLM.from_pretrained(d) for d in (llama_dir, ref_dir))
    args = DPOConfig(output_dir=str(tmp_path), loss_type=[theirs], beta=0.3, report_to=[], use_cpu=True,
                     bf16=False)  # fp32 on both sides
    text = Dataset.from_list([{"prompt": "the model", "chosen": " learns", "rejected": " code"}] * 2)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=text,
                         processing_class=AutoTokenizer.from_pretrained(llama_dir))
    rows = _trl_rows()
    with torch.no_grad():
        want = float(trainer.compute_loss(policy, trainer.data_collator(rows)))
    for r in rows:
        r["chosen_labels"], r["rejected_labels"] = r["chosen_ids"], r["rejected_ids"]
    packed = preference_task.TASK.load_model(llama_dir, None, 0).eval()
    ref_packed = preference_task.TASK.load_model(ref_dir, None, 0).eval()
    batch = pair_losses.PairCollator(0)(rows)
    with torch.no_grad():
        logps, counts, _ = preference_task.pair_logps(packed, batch, False)
        batch["ref_logps"], _, _ = preference_task.pair_logps(ref_packed, batch, False)
        got, _ = pair_losses.preference_loss(ours, logps, counts, batch["ref_logps"], 0.3)
    assert abs(float(got) - want) < 1e-5 * max(1.0, abs(want))
    assert want > 0.01


def test_simpo_and_orpo_equal_trl_cpo_and_orpo(llama_dir: Path):
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.orpo import ORPOTrainer

    g = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 9, (8,), generator=g).double()
    logps = -torch.rand(8, generator=g, dtype=torch.float64) * 3 * counts
    avg_c, avg_r = logps[0::2] / counts[0::2], logps[1::2] / counts[1::2]
    cpo = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=0.7, beta=2.0, label_smoothing=0.1,
                          accelerator=SimpleNamespace(device="cpu"))
    want, *_ = CPOTrainer.cpo_loss(cpo, avg_c, avg_r)
    got, _ = pair_losses.preference_loss("simpo", logps, counts, None, 2.0, 0.1, gamma=0.7)
    torch.testing.assert_close(got, want.mean(), rtol=1e-6, atol=1e-8)
    orpo = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device="cpu"))
    ratio, *_ = ORPOTrainer.odds_ratio_loss(orpo, avg_c, avg_r)
    nll = -logps[0::2].sum() / counts[0::2].sum()  # TRL's NLL: the mean over the chosen tokens
    got, _ = pair_losses.preference_loss("orpo", logps, counts, None, 0.25)
    torch.testing.assert_close(got, nll - ratio.mean(), rtol=1e-6, atol=1e-8)


# ── builds

def test_dpo_with_an_adapter_learns_the_preference(tmp_path: Path, llama_dir: Path):
    spec = load_spec(pair_spec(tmp_path, llama_dir, "preference", max_steps=12, learning_rate=2e-2,
                               preference={"loss": "dpo", "beta": 0.5}))
    run = stages.build(spec)
    m = run.manifest["metrics"]
    assert m["pairs"] == run.data.manifest["stats"]["splits"]["test"]["pairs"] > 0
    assert m["accuracy"] > 0.8 and m["margin"] > 0  # "well" over "badly", on test prompts never trained on
    assert "## Preference" in (run.path / "report.md").read_text(encoding="utf-8")
    assert not [e for e in store.entries() if e.bucket == preference_task.REFERENCES]  # the adapter is switched off


def test_full_tuning_stores_the_reference_once_and_reuses_it(tmp_path: Path, llama_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch):
    first = stages.build(load_spec(pair_spec(tmp_path / "a", llama_dir, "preference", method="full",
                                             learning_rate=1e-3, preference={"loss": "ipo", "beta": 0.5})))
    entries = [e for e in store.entries() if e.bucket == preference_task.REFERENCES]
    assert len(entries) == 1 and store.read_manifest(entries[0].path)["pairs"] == 48
    assert first.manifest["metrics"]["accuracy"] >= 0.0

    def no_reference(*_a: object, **_k: object) -> None:
        raise AssertionError("the reference was computed again")

    monkeypatch.setattr(preference_task, "_write_reference", no_reference)
    other = stages.build(load_spec(pair_spec(tmp_path / "b", llama_dir, "preference", method="full",
                                             learning_rate=1e-3, preference={"loss": "dpo", "beta": 0.1})))
    assert not other.cache_hit


def test_reference_free_losses_train_and_pair_options_are_checked(tmp_path: Path, llama_dir: Path):
    run = stages.build(load_spec(pair_spec(tmp_path / "s", llama_dir, "preference",
                                           preference={"loss": "orpo", "beta": 0.2})))
    assert run.manifest["metrics"]["loss"] > 0
    with pytest.raises(FtcError, match="train.preference"):
        load_spec(write_spec(tmp_path / "c.toml", llama_dir, [{"path": "pairs.jsonl"}],
                             train={"preference": {"loss": "dpo"}}))
    with pytest.raises(FtcError, match=r"maps completion: columns of preference pairs"):
        load_spec(write_spec(tmp_path / "k.toml", llama_dir, [{"path": "pairs.jsonl", "columns": {
            "prompt": "q", "completion": "a"}}]))
    with pytest.raises(FtcError, match="prepends virtual tokens"):
        load_spec(pair_spec(tmp_path / "p", llama_dir, "preference", method="prompt-tuning"))


def test_a_reward_model_ranks_pairs_and_its_onnx_scorer_matches_torch(tmp_path: Path, llama_dir: Path):
    from ftc import export
    from ftc.runtime.artifact import read
    from ftc.runtime.score import Scorer

    spec_path = pair_spec(tmp_path, llama_dir, "reward-model", max_steps=16, learning_rate=2e-2)
    run = stages.build(load_spec(spec_path))
    m = run.manifest["metrics"]
    assert m["accuracy"] > 0.8 and m["margin"] > 0
    assert "## Reward model" in (run.path / "report.md").read_text(encoding="utf-8")
    found = export.find_run(run.path)
    art = export.export(found, export.override(found.export, quantize=("int8",)))
    assert art.manifest["parity"]["int8"]["accuracy"] == 1.0  # each held-out pair in the same order as torch's
    scorer = Scorer(read(art.artifact, variant="fp32"))
    prompts = ["what is the model", "the code"]
    good = scorer.score(prompts, ["it learns well", "numbers well"])
    bad = scorer.score(prompts, ["it learns badly", "numbers badly"])
    assert all(g > b for g, b in zip(good, bad, strict=True))
    # the same pairs through the merged PyTorch weights
    from transformers import AutoModelForSequenceClassification

    merged = AutoModelForSequenceClassification.from_pretrained(art.path / "merged").eval()
    ids = scorer.encode(prompts, ["it learns well", "numbers well"])
    with torch.no_grad():
        want = [float(merged(torch.as_tensor(i)[None]).logits[0, 0]) for i in ids]
    assert np.allclose(good, want, atol=1e-4)
    # `ftc infer` and `POST /v1/score` on the same artifact
    import threading
    import urllib.request

    from click.testing import CliRunner

    from ftc.cli import main
    from ftc.runtime.serve import make_server

    out = CliRunner().invoke(main, ["infer", str(art.artifact), "--variant", "fp32", "--json", "--input",
                                    json.dumps({"prompt": prompts[0], "response": "it learns well"})])
    assert out.exit_code == 0, out.output
    assert abs(json.loads(out.output.splitlines()[0])["score"] - good[0]) < 1e-5
    bad_input = CliRunner().invoke(main, ["infer", str(art.artifact), "--text", "no response"])
    assert bad_input.exit_code != 0 and "response" in bad_input.output and "Traceback" not in bad_input.output
    server = make_server(scorer, port=0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        req = urllib.request.Request(server.url + "/v1/score", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"pairs": [{"prompt": p, "response": "numbers well"}
                                                                for p in prompts]}).encode())
        with urllib.request.urlopen(req, timeout=30) as r:
            scores = json.loads(r.read())["scores"]
        assert len(scores) == 2 and abs(scores[1] - good[1]) < 1e-5
    finally:
        server.shutdown()
        server.server_close()


def test_win_rate_interval_is_wilsons():
    from scipy.stats import binomtest

    from ftc.tasks.judge import win_rate

    tuned, base = np.r_[np.ones(13), np.zeros(7)], np.full(20, 0.5)
    got = win_rate(tuned, base)
    ci = binomtest(13, 20).proportion_ci(method="wilson")
    assert got["win_rate"] == 0.65 and (got["wins"], got["ties"], got["losses"]) == (13, 0, 7)
    assert abs(got["win_rate_low"] - ci.low) < 1e-6 and abs(got["win_rate_high"] - ci.high) < 1e-6
    assert win_rate(np.zeros(4), np.zeros(4))["win_rate"] == 0.5  # ties count half


def test_a_reward_model_judges_a_policy_the_same_from_its_run_and_its_artifact(tmp_path: Path, llama_dir: Path):
    from ftc import export

    rm = stages.build(load_spec(pair_spec(tmp_path / "rm", llama_dir, "reward-model", max_steps=16,
                                          learning_rate=2e-2)))
    found = export.find_run(rm.path)
    art = export.export(found, export.override(found.export, onnx=True))
    results = []
    policy = pair_spec(tmp_path / "judged", llama_dir, "preference")
    with policy.open("a", encoding="utf-8") as f:  # a judge given as a spec: `ftc plan` lists its stages first
        f.write(f'\n[eval]\njudge = "{tmp_path / "rm" / "spec.toml"}"\n')
    assert [(s.stage, s.cached) for s in stages.plan(load_spec(policy))] == [
        ("judge data", True), ("judge train", True), ("data", False), ("train", False)]
    for i, judge in enumerate((str(rm.path), str(art.artifact))):
        spec = pair_spec(tmp_path / f"dpo{i}", llama_dir, "preference", max_steps=8, learning_rate=2e-2,
                         preference={"loss": "dpo", "beta": 0.5})
        with spec.open("a", encoding="utf-8") as f:
            f.write(f'\n[eval]\njudge = "{judge}"\nsamples = 6\nmax_new_tokens = 8\n')
        results.append(stages.build(load_spec(spec)))
    a, b = (r.manifest["metrics"] for r in results)
    assert a["judged"] == 6 and a["wins"] + a["ties"] + a["losses"] == 6
    assert a["win_rate_low"] <= a["win_rate"] <= a["win_rate_high"]
    assert a["accuracy"] == b["accuracy"] and a["loss"] == b["loss"]  # a judge does not change the training
    # the same answers (same training, greedy), judged in PyTorch and by onnxruntime: the same verdicts
    assert (a["wins"], a["ties"], a["losses"]) == (b["wins"], b["ties"], b["losses"])
    assert abs(a["judge_mean_tuned"] - b["judge_mean_tuned"]) < 1e-3
    assert len(a["judge_examples"]) == 3
    assert "### Win rate" in (results[0].path / "report.md").read_text(encoding="utf-8")
    with pytest.raises(FtcError, match="eval.judge"):
        load_spec(pair_spec(tmp_path / "rm2", llama_dir, "reward-model").parent / "spec.toml")  # fine alone
        bad = pair_spec(tmp_path / "bad", llama_dir, "reward-model")
        with bad.open("a", encoding="utf-8") as f:
            f.write('\n[eval]\njudge = "x"\n')
        load_spec(bad)


def test_ranked_lists_become_pairs_best_vs_rest_or_all(tmp_path: Path, llama_dir: Path):
    rows = [{"question": f"rank these {i}", "answers": ["a fine answer", "a poor answer", "the best answer", "tie"],
             "ratings": [2, 1, 3, 1]} for i in range(8)]
    counts = {}
    for mode in ("best-vs-rest", "all"):
        folder = tmp_path / mode
        folder.mkdir()
        write_jsonl(folder / "ranked.jsonl", rows)
        spec = write_spec(folder / "spec.toml", llama_dir, [{"path": "ranked.jsonl", "columns": {
            "prompt": "question", "responses": "answers", "scores": "ratings", "pairs": mode}}],
            model={"task": "reward-model"}, tokenize={"max_length": 256}, data_split={"valid": 0.0, "test": 0.0},
            data_clean={"dedup": "none"})
        result = prep.prep(load_spec(spec))
        ds = load_split(result.path, result.manifest, "train")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(llama_dir)
        got = {tuple(tok.decode(r[f"{side}_ids"]).split("<|im_end|>")[0] for side in ("chosen", "rejected"))
               for r in ds}
        counts[mode] = len(ds) // 8
        best = {("the best answer", x) for x in ("a fine answer", "a poor answer", "tie")}
        assert got == (best if mode == "best-vs-rest" else best | {("a fine answer", "a poor answer"),
                                                                   ("a fine answer", "tie")})
    assert counts == {"best-vs-rest": 3, "all": 5}  # the two equal scores (1, 1) state no preference


def test_datasets_without_pair_columns_keep_their_keys():
    from ftc import store

    spec = load_spec(Path(__file__).parent.parent / "specs" / "quickstart.toml")
    dumped = spec.data.model_dump(mode="json", by_alias=True, exclude=prep._unset_later_keys(spec))
    assert not set(dumped["sources"][0]["columns"]) & set(prep.LATER_COLUMN_KEYS)
    # the quickstart's dataset key as it was before preference pairs existed
    assert store.key_of(dumped) == "e51ca633ede2c4ddcae6e9c6acadc209278d7ffad33194bc3ccfbbed87a25357"


def kto_both(tmp_path: Path, llama_dir: Path, ref_dir: Path, rows: list[dict], answers: list[list[int]],
             labels: list[bool], beta: float, weights: tuple[float, float]) -> tuple[float, float]:
    """(ftc's KTO loss of the packed `rows`, `KTOTrainer.compute_loss` of the same sequences:
    each row's prompt with its `answers` entry, labelled, and its KL sequence the prompt with the
    next row's answer)."""
    from datasets import Dataset
    from torch.nn.utils.rnn import pad_sequence
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    policy, ref = (AutoModelForCausalLM.from_pretrained(d) for d in (llama_dir, ref_dir))
    args = KTOConfig(output_dir=str(tmp_path), beta=beta, desirable_weight=weights[0], undesirable_weight=weights[1],
                     report_to=[], use_cpu=True, bf16=False, per_device_train_batch_size=2)
    text = Dataset.from_list([{"prompt": "the model", "completion": " learns", "label": True},
                              {"prompt": "the code", "completion": " numbers", "label": False}])
    trainer = KTOTrainer(model=policy, ref_model=ref, args=args, train_dataset=text,
                         processing_class=AutoTokenizer.from_pretrained(llama_dir))

    def padded(seqs: list[tuple[list[int], list[int]]]) -> dict:
        ids = [torch.as_tensor(p + c) for p, c in seqs]
        comp = [torch.as_tensor([0] * len(p) + [1] * len(c)) for p, c in seqs]
        return {"input_ids": pad_sequence(ids, batch_first=True),
                "completion_mask": pad_sequence(comp, batch_first=True),
                "attention_mask": pad_sequence([torch.ones_like(i) for i in ids], batch_first=True)}

    prompts = [r["prompt_ids"] for r in rows for side in ("chosen", "rejected") if r[f"{side}_ids"]]
    main = padded(list(zip(prompts, answers, strict=True)))
    nexts = [r["chosen_ids"] or r["rejected_ids"] for r in rows[1:] + rows[:1]]
    kl = padded([(r["prompt_ids"], o) for r, o in zip(rows, nexts, strict=True)])
    batch = main | {f"KL_{k}": v for k, v in kl.items()} | {"label": torch.tensor(labels)}
    with torch.no_grad():
        want = float(trainer.compute_loss(policy, batch))
    packed = pair_losses.PairCollator(0, mismatched=True)(rows)
    p = SimpleNamespace(loss="kto", beta=beta, label_smoothing=0.0, gamma=0.5, sft_weight=0.0,
                        desirable_weight=weights[0], undesirable_weight=weights[1])
    with torch.no_grad():
        packed["ref_logps"], _, _ = preference_task.pair_logps(preference_task.TASK.load_model(ref_dir, None, 0).eval(),
                                                                packed, False)
        got, _ = preference_task._loss(p, preference_task.TASK.load_model(llama_dir, None, 0).eval(), packed)
    return float(got), want


def test_kto_equals_trl_kto_trainer_on_the_same_batch(tmp_path: Path, llama_dir: Path, ref_dir: Path):
    """Each pair's chosen answer desirable, its rejected one undesirable; the KL estimate on
    pair i's prompt with pair i+1's chosen answer: TRL's batch is built from the same sequences."""
    rows = _trl_rows()
    for r in rows:
        r["chosen_labels"], r["rejected_labels"] = r["chosen_ids"], r["rejected_ids"]
    # ftc packs chosen₀, rejected₀, chosen₁, …; TRL's batch holds the same sequences in that order
    answers = [r[f"{side}_ids"] for r in rows for side in ("chosen", "rejected")]
    got, want = kto_both(tmp_path, llama_dir, ref_dir, rows, answers, [True, False] * 4, 0.3, (1.0, 0.7))
    assert abs(got - want) < 1e-5 * max(1.0, abs(want))
    assert 0.05 < want < 1


def test_kto_trains_with_an_adapter_and_refuses_a_stored_reference(tmp_path: Path, llama_dir: Path):
    run = stages.build(load_spec(pair_spec(tmp_path / "k", llama_dir, "preference", max_steps=4,
                                           preference={"loss": "kto", "beta": 0.5})))
    assert run.manifest["metrics"]["loss"] > 0 and 0 <= run.manifest["metrics"]["accuracy"] <= 1
    with pytest.raises(FtcError, match="adapter switched off"):
        load_spec(pair_spec(tmp_path / "f", llama_dir, "preference", method="full", preference={"loss": "kto"}))


def test_a_dpo_policy_exports_as_a_decoder_with_parity_on_chosen_answers(tmp_path: Path, llama16_dir: Path):
    from ftc import export

    run = stages.build(load_spec(pair_spec(tmp_path, llama16_dir, "preference", max_steps=3)))
    found = export.find_run(run.path)
    art = export.export(found, export.override(found.export, quantize=("int8",), rows=6))
    p = art.manifest["parity"]
    assert p["rows"] == 6 and p["int8"]["passed"] and p["fp32"]["passed"]
    assert (art.artifact / "fp32" / "genai_config.json").is_file()


# ── unpaired rows (KTO) and per-pair margins

def unpaired_rows(n: int, seed: int = 0) -> list[dict]:
    """KTO's shape: one completion per row, desirable ("well") or not ("badly")."""
    rows = []
    for i, r in enumerate(pair_rows(n, seed)):
        good = i % 3 != 0  # twice as many desirable as not: the two sides are not paired up
        rows.append({"prompt": r["prompt"], "completion": r["chosen" if good else "rejected"], "label": good})
    return rows


def test_unpaired_rows_read_one_sided_and_train_only_with_kto(tmp_path: Path, llama_dir: Path):
    from transformers import AutoTokenizer

    rows = unpaired_rows(60) + [{"prompt": "p", "completion": "c", "label": "maybe"},  # not a boolean
                                {"prompt": "p", "completion": " ", "label": True},  # empty
                                {"completion": "c", "label": False},  # no prompt
                                {"prompt": "csv-style", "completion": "strings", "label": "False"}]
    folder = tmp_path / "kto"
    spec = load_spec(pair_spec(folder, llama_dir, "preference", rows, 512, max_steps=3,
                               preference={"loss": "kto", "beta": 0.5}))
    spec.data.__dict__["max_bad_fraction"] = 0.5
    result = prep.prep(spec)
    reasons = sorted(json.loads(line)["reason"] for line in (result.path / "quarantine.jsonl").read_text().splitlines())
    assert [r.split(" (")[0].split(":")[0] for r in reasons] == ["`label` must be true or false", "an unpaired "
                                                                 "`completion` answers a `prompt`", "empty response"]
    p = result.manifest["preference"]
    assert (p["unpaired_desirable"], p["unpaired_undesirable"]) == (40, 21)
    tok = AutoTokenizer.from_pretrained(llama_dir)
    seen = 0
    for split in ("train", "test"):
        for r in load_split(result.path, result.manifest, split):
            side = "chosen" if r["chosen_ids"] else "rejected"
            assert not r["rejected_ids" if side == "chosen" else "chosen_ids"]  # one side only
            text = tok.decode(r[f"{side}_ids"])
            assert ("well" in text) == (side == "chosen")
            head = tok.decode(r["prompt_ids"]).split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
            answer = text.split("<|im_end|>")[0]
            conv = [{"role": "user", "content": head}, {"role": "assistant", "content": answer}]
            want = tok.apply_chat_template(conv, tokenize=True, return_dict=False)
            assert r["prompt_ids"] + r[f"{side}_ids"] == list(want)
            seen += 1
    assert seen == 61
    run = stages.build(spec)  # the same data trains with kto ...
    m = run.manifest["metrics"]
    assert m["loss"] > 0 and m["accuracy"] is None and np.isfinite(m["margin"])
    for task, loss in (("preference", "dpo"), ("reward-model", "dpo")):  # ... and nothing else
        other = load_spec(pair_spec(tmp_path / f"{task}-{loss}", llama_dir, task, rows, preference={"loss": loss}))
        other.data.__dict__["max_bad_fraction"] = 0.5
        with pytest.raises(FtcError, match=r"unpaired rows \(40 desirable, 21 undesirable"):
            stages.build(other)


def test_kto_on_unpaired_rows_equals_trl_kto_trainer(tmp_path: Path, llama_dir: Path, ref_dir: Path):
    """Three desirable and two undesirable answers, each row's KL sequence its prompt with the
    next row's answer: TRL's batch is built from the same sequences, labelled per row."""
    labels = [True, False, True, True, False]
    rows, answers = [], []
    for r, good in zip(_trl_rows(5), labels, strict=True):
        answer = r["chosen_ids"]
        answers.append(answer)
        rows.append({"prompt_ids": r["prompt_ids"], "chosen_ids": answer if good else [],
                     "chosen_labels": answer if good else [], "rejected_ids": [] if good else answer,
                     "rejected_labels": [] if good else answer})
    assert pair_losses.PairCollator(0)(rows)["sides"].tolist() == [0, 1, 0, 0, 1]
    got, want = kto_both(tmp_path, llama_dir, ref_dir, rows, answers, labels, 0.2, (1.3, 0.8))
    assert abs(got - want) < 1e-5 * max(1.0, abs(want))
    assert 0.05 < want < 2
    p = SimpleNamespace(loss="dpo", beta=0.2, label_smoothing=0.0, gamma=0.5, sft_weight=0.0, desirable_weight=1.0,
                        undesirable_weight=1.0)
    with pytest.raises(ValueError, match="unpaired answers train with kto only"):
        preference_task._loss(p, preference_task.TASK.load_model(llama_dir, None, 0).eval(),
                              pair_losses.PairCollator(0)(rows))


def test_a_reward_model_takes_each_pairs_margin_from_the_data(tmp_path: Path, llama_dir: Path):
    from ftc.tasks import reward_model

    rows = [r | {"margin": float(i % 4)} for i, r in enumerate(pair_rows(48))]
    spec = load_spec(pair_spec(tmp_path / "m", llama_dir, "reward-model", rows, max_steps=2,
                               preference={"margin": 9.0}))
    result = prep.prep(spec)
    ds = load_split(result.path, result.manifest, "train")
    assert sorted(set(ds["margin"])) == [0.0, 1.0, 2.0, 3.0]
    batch = reward_model.PairPaddedCollator(0)([ds[i] for i in range(4)])
    model = reward_model.TASK.load_model(llama_dir, None, 0).eval()
    with torch.no_grad():
        loss, out = reward_model.TASK.loss(spec, model, batch)
    s = out["scores"].double()
    want = -torch.nn.functional.logsigmoid(s[0::2] - s[1::2] - torch.as_tensor(ds["margin"][:4])).mean()
    assert abs(float(loss) - float(want)) < 1e-6  # the data's margins, not the spec's 9
    assert stages.build(spec).manifest["metrics"]["pairs"] > 0
    rows[0].pop("margin")
    with pytest.raises(FtcError, match="47 pairs give a `margin` and 1 do"):
        prep.prep(load_spec(pair_spec(tmp_path / "mixed", llama_dir, "reward-model", rows)))

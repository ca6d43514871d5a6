"""`[eval] judge`: a reward model scores the tuned and the base policy's greedy answers to the
test prompts; the win rate says how often the tuned answer scores higher (docs/architecture.md:
Tasks).

The judge is an exported reward-model artifact (run by onnxruntime, as `ftc serve` runs it), an
ftc `reward-model` run (its directory or key prefix: merged onto its base, in PyTorch), or the
spec of one (`judge = "reward.toml"`: its run, built first when the store lacks it). Either
way each (prompt, answer) is rendered with the judge's own chat template from the prompt's
messages, which the held-out splits keep, so a judge with another tokenizer reads its own tokens.
The base's answers are generated before training (`before_training`), the tuned model's at
evaluation; ties count half. The interval is Wilson's, 95%.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftc.rows import IGNORE

EXAMPLES = 3  # the report's answers where the judge's scores differ most


@dataclass
class Judge:
    name: str
    score: Callable[[list[Any], list[str]], list[float]]  # (prompts as messages, answers) → scores


def judge_spec(spec: Any) -> Any | None:
    """`eval.judge` when it names a spec file: that spec, loaded (else None)."""
    path = spec.resolve(spec.eval.judge) if spec.eval.judge else None
    if path is None or path.suffix != ".toml" or not path.is_file():
        return None
    from ftc.specload import load_spec

    return load_spec(path)


def load_judge(spec: Any) -> Judge:
    """`eval.judge` → a scorer; a one-line error when it names no reward model."""
    from ftc.errors import BuildError
    from ftc.runtime.artifact import MANIFEST

    name = spec.eval.judge
    path = spec.resolve(name)
    for art in (path, path / "artifact"):
        if (art / MANIFEST).is_file():
            from ftc.runtime.artifact import read
            from ftc.runtime.score import Scorer

            artifact = read(art)
            if artifact.task != "reward-model":  # an artifact card's task: the one place it is named
                raise BuildError(f"`eval.judge = \"{name}\"` is a {artifact.task} artifact, not a reward model",
                                 hint="export a `model.task = \"reward-model\"` run and give its artifact")
            scorer = Scorer(artifact)
            return Judge(name, lambda prompts, answers: scorer.score(prompts, answers))
    from ftc import distill

    if (given := judge_spec(spec)) is not None:  # a spec: the run it builds (a cache hit once built)
        from ftc import build

        return Judge(name, _torch_scorer(build.build(given).path, name, spec.tokenize.max_length))
    run = distill.find_run(spec, name, "eval.judge")
    if run is None:
        raise BuildError(f"`eval.judge = \"{name}\"`: neither an artifact nor an ftc run",
                         hint="give a reward-model run (its directory or key prefix, `ftc cache ls`) or its "
                         "exported artifact directory")
    return Judge(name, _torch_scorer(run, name, spec.tokenize.max_length))


def _torch_scorer(run: Path, name: str, max_length: int) -> Callable[[list[Any], list[str]], list[float]]:
    import torch
    from transformers import AutoTokenizer

    from ftc import _data, distill, store
    from ftc.collate import PaddedCollator
    from ftc.errors import BuildError
    from ftc.model import load_tokenizer_info
    from ftc.rows import pad_id
    from ftc.runtime.score import render_pairs
    from ftc.tasks import reward_model

    manifest = store.read_manifest(run)
    if manifest.get("task") != reward_model.TASK.name:
        raise BuildError(f"`eval.judge = \"{name}\"` is a {manifest.get('task')} run, not a reward model",
                         hint="train one with `model.task = \"reward-model\"` on preference pairs")
    model_dir = run / "model"
    info = load_tokenizer_info(model_dir)
    template = (model_dir / "ftc_template.jinja").read_text(encoding="utf-8")
    encoder = _data.DataEncoder(info.tokenizer_json, template, info.special_tokens, info.eos_token)
    pad = pad_id(AutoTokenizer.from_pretrained(model_dir)) or 0
    base = Path(manifest["base"]) if (model_dir / "adapter_config.json").is_file() else None
    model = distill.load_teacher(distill.Teacher(model_dir, base, {}), reward_model.TASK, reward_model.LABELS, pad)

    def score(prompts: list[Any], answers: list[str]) -> list[float]:
        ids = render_pairs(encoder, prompts, answers, max_length)
        out = []
        with torch.no_grad():
            for s in range(0, len(ids), 16):
                batch = PaddedCollator(pad, targets=())([{"input_ids": i} for i in ids[s:s + 16]])
                out += model(**batch).logits[:, 0].double().tolist()
        return out
    return score


def prompts_of(ds: Any, n: int) -> list[dict[str, Any]]:
    """The first `n` held-out pairs' prompts: ids (what the policy continues) and messages."""
    return [{"ids": list(r["prompt_ids"]), "messages": r["prompt"],
             "end": next((int(t) for t in reversed(r["chosen_labels"]) if t != IGNORE), None)}
            for r in (ds[i] for i in range(min(n, len(ds))))]


def answers(model: Any, tokenizer: Any, items: list[dict[str, Any]], max_new_tokens: int,
            batch_size: int) -> list[str]:
    """Greedy answers to each prompt, decoded."""
    from ftc import generate
    from ftc.rows import pad_id

    stops = generate.stop_tokens(tokenizer, [i["end"] for i in items if i["end"] is not None])
    out = generate.generate(model, [generate.Completion(i["ids"], []) for i in items], pad_id=pad_id(tokenizer),
                            stops=stops, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [tokenizer.decode(o, skip_special_tokens=True).strip() for o in out]


def win_rate(tuned: np.ndarray, base: np.ndarray) -> dict[str, Any]:
    """How often the tuned answer scores above the base's (ties half), with Wilson's 95% interval."""
    n = len(tuned)
    wins, ties = int((tuned > base + 1e-9).sum()), int((np.abs(tuned - base) <= 1e-9).sum())
    rate = (wins + ties / 2) / n if n else float("nan")
    z = 1.959964
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n) if n else float("nan")
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n) if n else float("nan")
    return {"win_rate": rate, "win_rate_low": max(0.0, centre - half), "win_rate_high": min(1.0, centre + half),
            "wins": wins, "ties": ties, "losses": n - wins - ties, "judged": n}


def judged(spec: Any, model: Any, tokenizer: Any, ds: Any) -> dict[str, Any]:
    """The win rate of `model`'s answers over the base's (the split's `base_answer` column)."""
    judge = load_judge(spec)
    items = prompts_of(ds, spec.eval.samples)
    tuned = answers(model, tokenizer, items, spec.eval.max_new_tokens, spec.train.batch_size)
    base = [ds[i]["base_answer"] for i in range(len(items))]
    prompts = [i["messages"] for i in items]
    s_tuned, s_base = np.asarray(judge.score(prompts, tuned)), np.asarray(judge.score(prompts, base))
    order = np.argsort(-np.abs(s_tuned - s_base), kind="stable")[:EXAMPLES]
    examples = [{"prompt": items[i]["messages"][-1]["content"][-300:], "base": base[i], "tuned": tuned[i],
                 "base_score": float(s_base[i]), "tuned_score": float(s_tuned[i])} for i in order]
    return {"judge": judge.name, **win_rate(s_tuned, s_base), "judge_mean_tuned": float(s_tuned.mean()),
            "judge_mean_base": float(s_base.mean()), "judge_examples": examples}

"""Model cards: the `README.md` of a run's `model/` and of the merged weights, with the
Hugging Face Hub's metadata in YAML front matter, so either folder is ready to push
(README: Training).

Every figure comes from the run itself: the dataset manifest (sources, rows per split), the
train stage's effective inputs (method, settings, seed), `metrics.json` (the evaluation, the
stage keys, the steps trained) and the folder the card describes (an `adapter_config.json`
makes it a PEFT adapter). `facts` reads them; `render` is a pure function of the facts.

`base_model` must be a hub id for the Hub to link it, so a local or `pkg://` base is named by
what is known of it: the hub cache folder it was downloaded into, else its config's
`_name_or_path`; the path the spec gave stays in the card's body.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftc import __version__, tasks
from ftc.evaluate import is_metric
from ftc.report import fenced, fmt, results_table

CARD = "README.md"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


@dataclass(frozen=True)
class Facts:
    name: str  # the project
    task: str
    pipeline_tag: str
    auto_class: str  # transformers' Auto class of the task's model
    adapter: dict[str, Any] | None  # adapter_config.json, when the folder holds an adapter
    spec_base: str  # `model.base` as the spec wrote it
    base_dir: str  # the files trained from
    base_id: str | None  # the base's hub id, where known
    base_exact: bool  # base_id names the very files trained from (downloaded from the hub)
    train: dict[str, Any]  # the effective `[train]` table
    seed: int
    data: dict[str, Any]  # the dataset manifest
    split_table: tuple[list[str], list[list[str]]]  # the task's summary of the splits
    metrics: dict[str, Any]  # metrics.json
    spec_text: str | None
    export_key: str | None  # merged weights: the export that wrote them


def write(dest: Path, run_dir: Path, inputs: dict[str, Any], data: dict[str, Any], base_dir: Path | str,
          export_key: str | None = None) -> Path:
    """Writes `dest/README.md` for the run in `run_dir` (its metrics.json written): `inputs`
    are the train stage's key inputs, `data` the dataset manifest. Returns the card's path."""
    path = dest / CARD
    path.write_text(render(facts(dest, run_dir, inputs, data, base_dir, export_key)), encoding="utf-8")
    return path


def facts(dest: Path, run_dir: Path, inputs: dict[str, Any], data: dict[str, Any], base_dir: Path | str,
          export_key: str | None = None) -> Facts:
    task = tasks.get(data["task"])
    adapter = dest / "adapter_config.json"
    spec = run_dir / "spec.toml"
    base_id, exact = base_model_id(Path(base_dir))
    return Facts(
        name=data.get("name", ""), task=task.name, pipeline_tag=task.pipeline_tag,
        auto_class=task.auto_class().__name__,
        adapter=json.loads(adapter.read_text(encoding="utf-8")) if adapter.is_file() else None,
        spec_base=inputs["model"]["base"], base_dir=str(base_dir), base_id=base_id, base_exact=exact,
        train=inputs["train"], seed=inputs["seed"], data=data,
        split_table=task.split_table(data["stats"]["splits"]),
        metrics=json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")),
        spec_text=spec.read_text(encoding="utf-8") if spec.is_file() else None, export_key=export_key)


def base_model_id(base_dir: Path) -> tuple[str | None, bool]:
    """(the base's hub id, whether it names these very files): a hub download lives in the
    cache's `models--<org>--<name>` folder; otherwise the config's `_name_or_path` names what
    the files were saved from, when that is a hub id."""
    for part in base_dir.parts:
        if part.startswith("models--") and "--" in part[8:]:
            return part[8:].replace("--", "/", 1), True
    try:
        name = json.loads((base_dir / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None, False
    ok = isinstance(name, str) and HUB_ID.fullmatch(name) and ".." not in name and "--" not in name
    return (name, False) if ok else (None, False)


# ── the card ─────────────────────────────────────────────────────────────────────────────────

def sources(data: dict[str, Any]) -> list[str]:
    """The spec's sources, as written (a source of several paths gives each)."""
    out: list[str] = []
    for s in data["inputs"]["data"]["sources"]:
        out += s["path"] if isinstance(s["path"], list) else [s["path"]]
    return out


def eval_split(data: dict[str, Any]) -> str:
    """The split the run was evaluated on: test, else validation (as the train stage picks)."""
    return "test" if data["stats"]["splits"]["test"]["examples"] else "valid"


def scores(metrics: dict[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items() if is_metric(v)}


def metadata(f: Facts) -> dict[str, Any]:
    """The front matter, as the Hub reads it."""
    meta: dict[str, Any] = {}
    if f.base_id:
        meta["base_model"] = f.base_id
    meta |= {"library_name": "peft" if f.adapter else "transformers", "pipeline_tag": f.pipeline_tag,
             "tags": ["ftc", f.train["method"], *(["merged"] if f.export_key else [])], "datasets": sources(f.data)}
    tuned = scores(f.metrics.get("metrics"))
    if tuned:
        src = sources(f.data)
        meta["model-index"] = [{"name": f.name or "ftc-run", "results": [{
            "task": {"type": f.pipeline_tag, "name": f.task},
            "dataset": {"type": src[0] if len(src) == 1 else f.name, "name": f"{f.name}: {', '.join(src)}",
                        "split": eval_split(f.data)},
            "metrics": [{"type": k, "name": k, "value": v} for k, v in tuned.items()]}]}]
    return meta


def method_settings(train: dict[str, Any], adapter: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """The method's own settings: PEFT's where the spec gives them, with the modules the
    adapter was actually applied to."""
    method = train["method"]
    rows: list[tuple[str, Any]] = []
    if method in ("lora", "dora", "qlora"):
        rows += [(f"lora.{k}", v) for k, v in train["lora"].items()]
    elif method in ("prompt-tuning", "prefix-tuning"):
        rows += [("prompt.num_virtual_tokens", train["prompt"]["num_virtual_tokens"])]
    elif method == "freeze":
        rows += [("trainable_layers", train["trainable_layers"])]
    if adapter and adapter.get("target_modules"):
        targets = adapter["target_modules"]
        rows.append(("adapter target modules", ", ".join(sorted(targets)) if isinstance(targets, list) else targets))
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows)]


def training(f: Facts) -> list[str]:
    t, timing = f.train, f.metrics.get("timing", {})
    length = ("max_steps", t["max_steps"]) if t.get("max_steps") else ("epochs", t["epochs"])
    rows = [("method", t["method"]), *method_settings(t, f.adapter), ("learning_rate", t["learning_rate"]),
            ("scheduler", t["scheduler"]), ("warmup_ratio", t["warmup_ratio"]), ("weight_decay", t["weight_decay"]),
            ("optimizer", t["optimizer"]), length, ("steps trained", timing.get("steps")),
            ("batch_size", t["batch_size"]), ("grad_accum", t["grad_accum"]), ("precision", t["precision"]),
            ("max_length", f.data["max_length"]), *([("template", f.data["template"])] if f.data.get("template") else []),
            ("seed", f.seed), ("train seconds", timing.get("train_seconds"))]
    return _table(["setting", "value"], [[k, _value(v)] for k, v in rows])


def _value(v: Any) -> str:
    """A setting as written: numbers in full (`2e-05`, not rounded away), the rest as code."""
    if v is None:
        return fmt(v)
    return format(v, "g") if isinstance(v, (int, float)) and not isinstance(v, bool) else f"`{v}`"


def data_section(f: Facts) -> list[str]:
    st = f.data["stats"]
    paths = [s["path"] for s in f.data["inputs"]["data"]["sources"]]
    rows = [[s["name"], f"`{p}`", f"{s['read']:,}", f"{s['kept']:,}", *(f"{s['examples'].get(k, 0):,}"
                                                                        for k in ("train", "valid", "test"))]
            for s, p in zip(st["sources"], paths, strict=True)]
    lines = [*_table(["source", "path", "read", "kept", "train", "valid", "test"], rows), "",
             "Rows per split (after cleaning, dedup, weighting and balancing):", "", *_table(*f.split_table)]
    if labels := f.data.get("labels"):
        lines += ["", f"Labels ({len(labels)}): " + ", ".join(f"`{x}`" for x in labels)]
    return lines


def loading(f: Facts) -> list[str]:
    """Code that loads the folder as `library_name` says."""
    labels = f.data.get("labels")
    head = (", num_labels=len(labels), id2label=dict(enumerate(labels)), "
            "label2id={n: i for i, n in enumerate(labels)}") if labels else ""
    lines = ['FOLDER = "."  # this folder, or its hub id once pushed']
    tokenizer = "tokenizer = AutoTokenizer.from_pretrained(FOLDER)"
    if f.adapter:
        base = f.base_id if f.base_exact and f.base_id else f.base_dir
        lines = ["from peft import PeftModel", f"from transformers import {f.auto_class}, AutoTokenizer", "", *lines,
                 f"BASE = {base!r}  # the base it was trained from (`{f.spec_base}`)"]
        if labels:
            lines.append(f"labels = {labels!r}")
        lines.append(f"base = {f.auto_class}.from_pretrained(BASE{head})")
        if f.data.get("added_tokens"):  # the base needs the rows of the tokens the run added first
            lines += [tokenizer, "base.resize_token_embeddings(len(tokenizer))  # the adapter holds their rows"]
        lines.append("model = PeftModel.from_pretrained(base, FOLDER)")
    else:
        lines = [f"from transformers import {f.auto_class}, AutoTokenizer", "", *lines,
                 f"model = {f.auto_class}.from_pretrained(FOLDER)"]
    if tokenizer not in lines:
        lines.append(tokenizer)
    return fenced("\n".join(lines), "python")


def evaluation(f: Facts) -> list[str]:
    tuned, base = f.metrics.get("metrics") or {}, f.metrics.get("base_metrics")
    split = eval_split(f.data)
    against = "; base: the base model on the same split, gain: tuned − base" if base is not None else ""
    return [f"On the held-out {split} split ({f.data['stats']['splits'][split]['examples']:,} examples){against}.",
            "", *results_table(tuned, base)]


def rebuilding(f: Facts) -> list[str]:
    keys = f.metrics.get("keys", {})
    rows = [["ftc", __version__], *([s, f"`{k}`"] for s, k in keys.items()),
            *([["export", f"`{f.export_key}`"]] if f.export_key else [])]
    lines = [("Every stage is keyed by the content of its inputs: the same spec, sources and base model "
              "rebuild this run (`ftc build spec.toml`)."), "", *_table(["", "value"], rows)]
    return lines + ["", *fenced(f.spec_text, "toml")] if f.spec_text else lines


def render(f: Facts) -> str:
    """The card: YAML front matter, then what was trained, on what, how it scored, how to load
    it and how to rebuild it."""
    import yaml  # transformers' dependency: the train and export stages have it

    method, run = f.train["method"], f.metrics.get("keys", {}).get("train", "")
    if f.adapter:
        what = f"the `{method}` adapter (PEFT)"
    elif f.export_key:
        what = f"the merged weights (the `{method}` result folded into the base by `ftc export`)"
    else:
        what = f"the fine-tuned weights (`{method}`)"
    lines = ["---", yaml.safe_dump(metadata(f), sort_keys=False, allow_unicode=True).rstrip("\n"), "---", "",
             f"# {f.name or 'ftc run'}", "",
             (f"A `{f.task}` model built by ftc {__version__}: this folder holds {what} of run `{run[:12]}`, "
              f"fine-tuned from `{f.spec_base}`."), "",
             "## Base model", "", f"- as the spec gives it: `{f.spec_base}`", f"- files trained from: `{f.base_dir}`"]
    if f.base_id:
        how = "the hub download it was read from" if f.base_exact else "its config's `_name_or_path`"
        lines.append(f"- hub id: `{f.base_id}` ({how})")
    sections = [("Training", training(f)), ("Data", data_section(f)), ("Evaluation", evaluation(f)),
                ("How to load", loading(f)), ("Rebuilding", rebuilding(f))]
    for title, body in sections:
        lines += ["", f"## {title}", "", *body]
    return "\n".join(lines).rstrip("\n") + "\n"

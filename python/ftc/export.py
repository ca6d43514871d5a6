"""The export stage: a trained run → merged weights and a verified ONNX artifact (README: Export).

    run ─► merge the adapter (PEFT merge_and_unload, CPU, fp32) ─► merged/ (safetensors)
        ─► ONNX fp32, then int8 / int4 (ftc.onnx_export)     ─► artifact/
        ─► parity on held-out test rows: fp32 against the trained PyTorch model, each
           quantized variant against fp32, and the task metric of all of them

The key hashes the train key and the effective `[export]` table, so changing only export
settings retrains nothing, and an unchanged export is a cache hit. An entry
`artifacts-v1/<key>/` holds `manifest.json`, `merged/` (an HF directory, when `merge = true`)
and `artifact/`: the deployable directory described by `ftc-artifact.json`, which holds no
torch weights. With `verify = true` nothing is published unless every variant passes.
"""

from __future__ import annotations

import json
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftc import __version__, onnx_export, store
from ftc.errors import ExportError
from ftc.model import check_remote_code
from ftc.parity import Parity
from ftc.runtime.artifact import FORMAT, MANIFEST, sha256  # the format loading checks
from ftc.spec import Export
from ftc.train import IGNORE, load_classifier, pad_id, segments

ARTIFACTS = "artifacts-v1"
RUNS = "runs-v1"
GPTQ_GROUP = 32  # the builder's int4 block size on CPU
UNMERGEABLE = ("prompt-tuning", "prefix-tuning")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
Progress = Callable[[str, int, int | None], None]  # (phase, advance, total), as in ftc.prep


@dataclass(frozen=True)
class Run:
    path: Path
    manifest: dict[str, Any]
    spec_text: str | None  # spec.toml as written (runs built before it was kept have none)
    export: Export  # the run's `[export]` table

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def trust_remote_code(self) -> bool:
        """What the spec allowed when the run was trained (runs from before it was recorded: no)."""
        return self.manifest.get("trust_remote_code") is True


@dataclass
class ExportResult:
    key: str
    path: Path  # the store entry
    artifact: Path | None  # its `artifact/`, when ONNX was asked for
    cache_hit: bool
    manifest: dict[str, Any]
    seconds: float


def find_run(target: str | Path) -> Run:
    """A run directory, or a unique prefix of a run key in the store."""
    path = Path(target).expanduser()
    if not (path / store.MANIFEST).is_file():
        matches = [e for e in store.entries() if e.bucket == RUNS and e.key.startswith(str(target))]
        if len(matches) != 1:
            what = "no run" if not matches else f"{len(matches)} runs"
            raise ExportError(f"`{target}`: {what} in the store at {store.home()} match",
                              hint="give a run directory or more characters of its key (`ftc cache ls`)")
        path = matches[0].path
    manifest = json.loads((path / store.MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format") != RUNS:
        raise ExportError(f"{path} is not a run directory (its manifest is not `{RUNS}`)",
                          hint="export takes what `ftc build` made: `$FTC_HOME/runs-v1/<key>`")
    spec_file = path / "spec.toml"
    text = spec_file.read_text(encoding="utf-8") if spec_file.is_file() else None
    table = tomllib.loads(text).get("export", {}) if text else {}
    return Run(path, manifest, text, Export.model_validate(table))


def variants(settings: Export) -> list[str]:
    """fp32 and the quantized precisions asked for, in that order."""
    q = settings.quantize
    asked = [] if q == "none" else [q] if isinstance(q, str) else list(q)
    return ["fp32", *dict.fromkeys(asked)]


def override(settings: Export, *, onnx: bool = False, quantize: tuple[str, ...] = (), opset: int | None = None,
             rows: int | None = None, verify: bool | None = None) -> Export:
    """`ftc export` flags over the run's `[export]` table: `--onnx`, `--int8` or `--int4` set
    ONNX on with exactly the precisions named; anything not given keeps the table's value."""
    update: dict[str, Any] = {}
    if onnx or quantize:
        update |= {"onnx": True, "quantize": list(quantize)}
    update |= {k: v for k, v in (("opset", opset), ("rows", rows), ("verify", verify)) if v is not None}
    return Export.model_validate({**settings.model_dump(), **update})


def export_inputs(run_key: str, settings: Export) -> dict[str, Any]:
    """The key's inputs: the run, `[export]`, and what makes the graphs from them: the
    exporters' versions and ftc's recipe (bumped when ftc changes how it calls them)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(package: str) -> str | None:
        try:
            return version(package)
        except PackageNotFoundError:
            return None

    tools = {p: installed(p) for p in ("torch", "onnxruntime", "onnxruntime-genai")}
    return {"format": ARTIFACTS, "recipe": onnx_export.RECIPE, "tools": tools, "run": run_key,
            "export": settings.model_dump(mode="json")}


def export(run: Run, settings: Export | None = None, *, spec_text: str | None = None,
           progress: Progress | None = None, force: bool = False) -> ExportResult:
    """Exports `run` with `settings` (default: the run's own `[export]` table)."""
    t0 = time.perf_counter()
    settings = settings or run.export
    check(run, settings)
    inputs = export_inputs(run.key, settings)
    key = store.key_of(inputs)
    if not force and (hit := store.lookup(ARTIFACTS, key)):
        return _result(key, hit, True, t0)
    with store.lock(ARTIFACTS, key):
        if not force and (hit := store.lookup(ARTIFACTS, key)):
            return _result(key, hit, True, t0)
        with store.staging(ARTIFACTS, key) as tmp:
            manifest = _export(run, settings, inputs, key, spec_text or run.spec_text, tmp, progress or _quiet)
            manifest["seconds"] = round(time.perf_counter() - t0, 3)
            store.write_json(tmp / store.MANIFEST, manifest)
    return _result(key, store.entry_dir(ARTIFACTS, key), False, t0)


def _result(key: str, path: Path, hit: bool, t0: float) -> ExportResult:
    manifest = json.loads((path / store.MANIFEST).read_text(encoding="utf-8"))
    artifact = path / "artifact" if (path / "artifact").is_dir() else None
    return ExportResult(key, path, artifact, hit, manifest, time.perf_counter() - t0)


def _quiet(phase: str, advance: int, total: int | None) -> None:
    pass


def check(run: Run, settings: Export) -> None:
    """What must hold before any work starts."""
    check_remote_code(_weights_dir(run), run.trust_remote_code)
    method = run.manifest["method"]
    if method in UNMERGEABLE:
        raise ExportError(f"`train.method = \"{method}\"` cannot be merged into the model: it learns virtual "
                          "token embeddings fed in front of every input, not changes to the weights, so no "
                          "plain model (and no ONNX graph a runtime can feed text) reproduces it",
                          hint="export is for methods whose result is weights: retrain with `lora` (or `dora`, "
                          "`ia3`, `full`, `freeze`); the adapter itself loads with `PeftModel.from_pretrained`")
    if settings.onnx and run.task == "classification" and "int4" in variants(settings):
        raise ExportError("`[export] quantize = \"int4\"` is weight-only quantization for decoders; a "
                          "classification encoder is quantized to int8", hint="set `quantize = \"int8\"`")
    if settings.onnx and run.task == "causal-lm":
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(_weights_dir(run), trust_remote_code=run.trust_remote_code)
        onnx_export.check_decoder(config)


def _weights_dir(run: Run) -> Path:
    model = run.path / "model"
    return Path(run.manifest["base"]) if (model / "adapter_config.json").is_file() else model


# ── the stage ────────────────────────────────────────────────────────────────────────────────

def _export(run: Run, settings: Export, inputs: dict[str, Any], key: str, spec_text: str | None, tmp: Path,
            progress: Progress) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run.path / "model", trust_remote_code=run.trust_remote_code)
    data_dir, data = _dataset(run)
    held_out = _held_out(run, data_dir, data, settings.rows)
    merged_dir = tmp / "merged" if settings.merge else tmp / ".merged"
    progress("merge", 0, 1)
    model = merge(load_trained(run, tokenizer))
    model.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    progress("merge", 1, 1)
    art = tmp / "artifact"
    names = variants(settings) if settings.onnx else []
    eos = eos_token_ids(tokenizer, model, held_out.end_tokens)
    candidates: dict[str, Any] = {}
    if names:
        art.mkdir()
        for name in names:
            progress(f"onnx {name}", 0, 1)
            candidates[name] = _make_variant(run, name, model, merged_dir, art, settings, eos, (data_dir, data), progress)
            progress(f"onnx {name}", 1, 1)
        for f in TOKENIZER_FILES:
            if (merged_dir / f).is_file():
                shutil.copy2(merged_dir / f, art / f)
    del model  # merge_and_unload changed the loaded weights: the reference is loaded afresh
    reference = load_trained(run, tokenizer)
    if not names:  # merged weights only: they are what is checked
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        auto = AutoModelForSequenceClassification if run.task == "classification" else AutoModelForCausalLM
        candidates["merged"] = auto.from_pretrained(merged_dir, attn_implementation="eager",
                                                    trust_remote_code=run.trust_remote_code).eval()
    if not settings.merge:
        shutil.rmtree(merged_dir)
    parity = Parity(run.task, held_out, reference, candidates, pad_id(tokenizer)).measure(progress)
    failures = parity.judge(settings)
    if failures and settings.verify:
        raise ExportError(parity.explain(failures, held_out.split),
                          hint="loosen the thresholds in `[export]` (max_abs_diff, max_confident_flips, near_tie, "
                          "max_accuracy_drop, max_perplexity_ratio, min_agreement), drop the failing quantization, "
                          "or set `verify = false` (`--no-verify`) to publish with the figures recorded")
    figures = parity.figures()
    if names:
        card = artifact_card(run, settings, tokenizer, data, names, figures, eos, key, spec_text, art)
        store.write_json(art / MANIFEST, card)
    return {"key": key, "name": run.manifest.get("name", ""), "format": ARTIFACTS, "ftc_version": __version__,
            "created": time.time(), "run": run.key, "task": run.task, "method": run.manifest["method"],
            "variants": names, "merged": settings.merge, "parity": figures, "failures": failures,
            "inputs": inputs}


def load_trained(run: Run, tokenizer: Any) -> Any:
    """The run's model as trained, on CPU in fp32 with eager attention: the reference every
    export is compared with, and the graph the legacy ONNX exporter traces."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": "eager",
                              "trust_remote_code": run.trust_remote_code}
    source = _weights_dir(run)
    if run.task == "classification":
        model = load_classifier(source, run.manifest["labels"], **kwargs)  # the head comes with the adapter
        if model.config.pad_token_id is None:
            model.config.pad_token_id = pad_id(tokenizer)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if source != run.path / "model":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, run.path / "model")
    return model.eval()


def merge(model: Any) -> Any:
    """A PEFT model with its adapter (LoRA, DoRA, IA3) folded into the base weights; a plain
    model (full, freeze) as it is."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def _make_variant(run: Run, name: str, model: Any, merged_dir: Path, art: Path, settings: Export,
                  eos: list[int], dataset: tuple[Path, dict[str, Any]], progress: Progress) -> Any:
    if run.task == "causal-lm":  # a genai directory per precision, built from the merged checkpoint
        onnx_export.build_decoder(merged_dir, art / name, name, eos)
        if name == "int4" and settings.int4_method == "gptq":
            _gptq(model, art / name, calibration(*dataset, settings.calibration_rows), progress)
        return art / name
    path = art / ("model.onnx" if name == "fp32" else f"model.{name}.onnx")
    if name == "fp32":
        onnx_export.export_classifier(model, path, classifier_inputs(model), settings.opset)
    else:
        onnx_export.quantize_int8(art / "model.onnx", path)
    return path


def calibration(data_dir: Path, data: dict[str, Any], n: int) -> list[Any]:
    """The first `n` training examples' ids, each a 1-D tensor: what GPTQ measures layer inputs on
    (never the held-out rows the parity check scores)."""
    import torch

    from ftc.build import load_split

    return [torch.as_tensor(np.asarray(e["input_ids"])) for e in _examples(load_split(data_dir, data, "train"), n)]


def _gptq(model: Any, folder: Path, examples: list[Any], progress: Progress) -> None:
    """Re-round the builder's int4 weights with GPTQ, calibrated on `examples`."""
    import torch

    from ftc import gptq

    targets = onnx_export.nbits_targets(folder, model, GPTQ_GROUP)
    linears = {n: model.get_submodule(n) for names in targets.values() for n in names}
    advance = _advancer(progress, "gptq calibration", len(examples))
    moments = gptq.second_moments(model, linears, examples, advance)
    advance = _advancer(progress, "gptq", len(targets))
    codes = {}
    for node, names in targets.items():
        parts = [gptq.quantize(linears[n].weight, moments[n], group=GPTQ_GROUP) for n in names]
        codes[node] = gptq.Codes(*(torch.cat(t) for t in zip(*((c.q, c.scale, c.zero) for c in parts), strict=True)))
        advance(1)
    onnx_export.write_nbits(folder, codes, GPTQ_GROUP)


def _advancer(progress: Progress, phase: str, total: int) -> Callable[[int], None]:
    progress(phase, 0, total)
    return lambda n: progress(phase, n, total)


def classifier_inputs(model: Any) -> list[str]:
    """input_ids, attention_mask, and token_type_ids for models that take them (BERT-like)."""
    import inspect

    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    return ["input_ids", "attention_mask", *(["token_type_ids"] if takes_types else [])]


# ── held-out rows ────────────────────────────────────────────────────────────────────────────

@dataclass
class HeldOut:
    split: str
    rows: list[dict[str, Any]]  # classification rows, or one causal-lm example per row
    end_tokens: list[int]  # last labelled token of each causal-lm example: the template's end of turn
    sample: dict[str, Any] | None = None  # how the rows were drawn, for the card


def _dataset(run: Run) -> tuple[Path, dict[str, Any]]:
    data_dir = store.lookup(store.DATASETS, run.manifest["data_key"])
    if data_dir is None:
        raise ExportError(f"the dataset of run {run.key[:12]} is no longer in the store (removed by `ftc cache`?); "
                          "the parity check needs its held-out rows", hint="`ftc prep` the run's spec again: "
                          "the same inputs rebuild the same dataset")
    return data_dir, json.loads((data_dir / store.MANIFEST).read_text(encoding="utf-8"))


def _held_out(run: Run, data_dir: Path, data: dict[str, Any], n: int) -> HeldOut:
    """A seeded sample of `n` rows of the whole test split (else validation): in file order the
    first rows can all be of one kind (one class, the longest examples, which packing puts
    first), and every variant is measured on this same sample."""
    from ftc.build import load_split

    for split in ("test", "valid"):
        if (ds := load_split(data_dir, data, split)) is not None:
            break
    else:
        raise ExportError("the run's dataset has no test or validation rows to check the export on",
                          hint="set `data.split.test` above 0 and rebuild, or `verify = false`")
    seed = int(data.get("inputs", {}).get("seed", 0))
    if run.task == "classification":
        labels = ds.data.column("label").to_numpy()
        picked = stratified_sample(labels, n, seed)
        names = run.manifest.get("labels") or []
        counts = np.bincount(labels[picked], minlength=len(names))
        sample = {"split": split, "of": len(ds), "seed": seed,
                  "drawn": "seeded random sample, stratified by label" if len(picked) < len(ds) else "the whole split",
                  "labels": {str(names[i]) if i < len(names) else str(i): int(c) for i, c in enumerate(counts)}}
        return HeldOut(split, [ds[int(i)] for i in picked], [], sample)
    rows, total = _sampled_examples(ds, n, seed)
    sample = {"split": split, "of": total, "seed": seed,
              "drawn": "seeded random sample of the examples" if len(rows) < total else "the whole split"}
    return HeldOut(split, rows, sorted({int(r["labels"][-1]) for r in rows if r["labels"][-1] >= 0}), sample)


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` rows (all, when there are fewer), each label taking its share of the
    split (largest remainders round), drawn at random within the label; in ascending order."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    kinds, counts = np.unique(labels, return_counts=True)
    exact = n * counts / len(labels)
    quota = np.floor(exact).astype(np.int64)
    quota[np.argsort(-(exact - quota), kind="stable")[:n - int(quota.sum())]] += 1
    picked = [rng.permutation(np.flatnonzero(labels == k))[:q] for k, q in zip(kinds, quota, strict=True)]
    return np.sort(np.concatenate(picked))


def _sampled_examples(ds: Any, n: int, seed: int) -> tuple[list[dict[str, Any]], int]:
    """`n` examples drawn at random from every example of the split (packed rows hold several),
    and how many there are; an example with nothing to score is passed over."""
    lengths = [ls or [len(ds[r]["input_ids"])] for r, ls in enumerate(ds.data.column("seq_lengths").to_pylist())]
    where = [(r, start, k) for r, ls in enumerate(lengths)
             for start, k in zip(np.cumsum([0, *ls])[:-1].tolist(), ls, strict=True)]
    rows: list[tuple[int, int, dict[str, Any]]] = []
    for i in np.random.default_rng(seed).permutation(len(where)):
        r, start, k = where[i]
        row = ds[r]
        lab = np.asarray(row["labels"][start:start + k]).copy()
        lab[0] = IGNORE  # as in training: only the previous example could predict it
        if (lab != IGNORE).any():
            rows.append((r, start, {"input_ids": np.asarray(row["input_ids"][start:start + k]), "labels": lab}))
            if len(rows) == n:
                break
    return [e for *_, e in sorted(rows, key=lambda t: t[:2])], len(where)


def _examples(ds: Any, n: int) -> Iterator[dict[str, Any]]:
    """Packed rows → their examples, each alone (positions restart, so each is exactly the
    sequence the packed row computed), with at least one labelled token after the first."""
    count = 0
    for row in ds:
        for seg, lab in segments(row):
            lab = lab.copy()
            lab[0] = IGNORE  # as in training: only the previous example could predict it
            if (lab != IGNORE).any():
                yield {"input_ids": seg, "labels": lab}
                count += 1
                if count >= n:
                    return


# ── the artifact ─────────────────────────────────────────────────────────────────────────────

def eos_token_ids(tokenizer: Any, model: Any, end_tokens: list[int]) -> list[int]:
    """Where the exported decoder stops: as `ftc build`'s evaluation does (`stop_tokens`), plus
    the generation config's EOS."""
    from ftc.generate import stop_tokens

    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return stop_tokens(tokenizer, end_tokens, gen if isinstance(gen, list) else [gen] if isinstance(gen, int) else [])


def artifact_card(run: Run, settings: Export, tokenizer: Any, data: dict[str, Any], names: list[str],
                  figures: dict[str, Any], eos: list[int], key: str, spec_text: str | None, art: Path) -> dict[str, Any]:
    """`ftc-artifact.json`: what a runtime needs to serve the directory, and the proof."""
    classify = run.task == "classification"
    paths = {n: ("model.onnx" if n == "fp32" else f"model.{n}.onnx") if classify else n for n in names}
    passed = [n for n in names if figures[n]["passed"]] or ["fp32"]
    inputs = ["input_ids", "attention_mask"]
    if classify:
        from ftc.onnx_export import session

        inputs = [i.name for i in session(art / "model.onnx", threads=1).get_inputs()]
    return {
        "format": FORMAT, "ftc_version": __version__, "created": time.time(), "task": run.task,
        "labels": run.manifest.get("labels"), "max_length": data["max_length"],
        "template": None if classify else data.get("template_source"),
        "inputs": inputs, "pad_token_id": pad_id(tokenizer), "eos_token_ids": eos,
        "variants": {n: {"path": p} for n, p in paths.items()},
        "default": min(passed, key=lambda n: _bytes(art / paths[n])),
        "files": file_hashes(art), "spec": spec_text, "run": run.key, "export_key": key, "parity": figures,
    }


def _bytes(path: Path) -> int:
    """A variant's size: a directory's files, or a graph and its external data."""
    files = path.rglob("*") if path.is_dir() else path.parent.glob(path.name + "*")
    return sum(f.stat().st_size for f in files if f.is_file())


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` but ftc-artifact.json, by relative POSIX path."""
    return {f.relative_to(root).as_posix(): sha256(f)
            for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)}


def copy_out(result: ExportResult, out: Path) -> Path:
    """The deliverable (the artifact, or the merged weights alone) copied to `out`, which must
    not exist or be empty."""
    src = result.artifact or result.path / "merged"
    if not src.is_dir():
        raise ExportError("this export has neither an artifact nor merged weights to copy",
                          hint="export with `--onnx` or with `[export] merge = true`")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty", hint="give a new or empty directory to `--out`")
    shutil.copytree(src, out, dirs_exist_ok=True)
    return out

"""The export stage: a trained run → merged weights and a verified ONNX artifact (README: Export).

    run ─► merge the adapter (PEFT merge_and_unload, CPU, fp32) ─► merged/ (safetensors)
        ─► ONNX fp32, then int8 / int4 (ftc.onnx_export)     ─► artifact/
        ─► GGUF f16 / q8_0 / q4_0 and a Modelfile (decoders)  ─► artifact/gguf/
        ─► parity on held-out test rows: fp32 against the trained PyTorch model, each
           quantized variant against fp32, each GGUF file (read back by transformers)
           against PyTorch, and the task metric of all of them

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftc import __version__, gguf_export, model_card, onnx_export, store, tasks, vocab
from ftc.errors import ExportError
from ftc.model import check_remote_code
from ftc.parity import Parity
from ftc.rows import load_split, pad_id
from ftc.runtime.artifact import FORMAT, MANIFEST, sha256  # the format loading checks
from ftc.spec import Export

ARTIFACTS = "artifacts-v1"
RUNS = "runs-v1"
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
    def task(self) -> tasks.Task:
        return tasks.get(self.manifest["task"])

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
    manifest = store.read_manifest(path)
    if manifest.get("format") != RUNS:
        raise ExportError(f"{path} is not a run directory (its manifest is not `{RUNS}`)",
                          hint="export takes what `ftc build` made: `$FTC_HOME/runs-v1/<key>`")
    spec_file = path / "spec.toml"
    text = spec_file.read_text(encoding="utf-8") if spec_file.is_file() else None
    return Run(path, manifest, text, Export.model_validate(_spec_table(spec_file, text).get("export", {})))


def _spec_table(file: Path, text: str | None) -> dict[str, Any]:
    """The run's spec as written: TOML, or JSON for a spec built in Python (`Spec.text`)."""
    if not text:
        return {}
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        try:
            return json.loads(text)
        except ValueError:
            raise ExportError(f"{file}: cannot read the run's spec: {e}",
                              hint="restore the file as `ftc build` wrote it, or build the run again") from None


def variants(settings: Export) -> list[str]:
    """fp32 and the quantized precisions asked for, in that order."""
    q = settings.quantize
    asked = [] if q == "none" else [q] if isinstance(q, str) else list(q)
    return ["fp32", *dict.fromkeys(asked)]


def override(settings: Export, *, onnx: bool = False, quantize: tuple[str, ...] = (), gguf: tuple[str, ...] = (),
             opset: int | None = None, rows: int | None = None, verify: bool | None = None) -> Export:
    """`ftc export` flags over the run's `[export]` table: `--onnx`, `--int8` or `--int4` set
    ONNX on with exactly the precisions named, `--gguf` the GGUF types (and ONNX off, unless
    named too); anything not given keeps the table's value."""
    update: dict[str, Any] = {}
    if onnx or quantize:
        update |= {"onnx": True, "quantize": list(quantize)}
    if gguf:
        update |= {"gguf": list(gguf)} | ({} if onnx or quantize else {"onnx": False})
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

    def make(tmp: Path) -> dict[str, Any]:
        # Held while exporting: `ftc cache gc` leaves the run and its dataset alone.
        with store.lock(RUNS, run.key, shared=True), store.lock(store.DATASETS, run.manifest["data_key"], shared=True):
            manifest = _export(run, settings, inputs, key, spec_text or run.spec_text, tmp, progress or _quiet)
        manifest["seconds"] = round(time.perf_counter() - t0, 3)
        return manifest

    return _result(key, *store.build_once(ARTIFACTS, key, make, force=force), t0)


def _result(key: str, path: Path, hit: bool, t0: float) -> ExportResult:
    manifest = store.read_manifest(path)
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
    run.task.check_export(settings, _weights_dir(run), run.trust_remote_code)
    if settings.gguf:
        if not run.task.generates:
            raise ExportError(f"`[export] gguf` is for decoders that generate text (llama.cpp, Ollama); this run's "
                              f"task is {run.task.name}", hint="export ONNX instead (`--onnx`)")
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(_weights_dir(run), trust_remote_code=run.trust_remote_code)
        gguf_export.check(config, run.path / "model" / "tokenizer.json")


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
    task = run.task
    merged_dir = tmp / "merged" if settings.merge else tmp / ".merged"
    progress("merge", 0, 1)
    model = merge(load_trained(run, tokenizer))
    model.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    model_card.write(merged_dir, run.path, run.manifest["inputs"], data, run.manifest["base"], export_key=key)
    progress("merge", 1, 1)
    art = tmp / "artifact"
    names = variants(settings) if settings.onnx else []
    eos = eos_token_ids(tokenizer, model, task.end_tokens(held_out.rows))
    candidates: dict[str, Any] = {}
    if names:
        art.mkdir()
        for name in names:
            progress(f"onnx {name}", 0, 1)
            candidates[name] = task.make_variant(name, model, merged_dir, art, settings, eos,
                                                 lambda: load_split(data_dir, data, "train"),
                                                 progress)
            progress(f"onnx {name}", 1, 1)
        for f in TOKENIZER_FILES:
            if (merged_dir / f).is_file():
                shutil.copy2(merged_dir / f, art / f)
    if settings.gguf:
        art.mkdir(exist_ok=True)
        tokenizer.chat_template = data.get("template_source") or tokenizer.chat_template  # as the run trained
        candidates |= gguf_export.write_all(model, tokenizer, run.path / "model" / "tokenizer.json", art,
                                            settings.gguf, run.manifest.get("name") or run.key[:12], progress)
    del model  # merge_and_unload changed the loaded weights: the reference is loaded afresh
    reference = load_trained(run, tokenizer)
    if not candidates:  # merged weights only: they are what is checked
        candidates["merged"] = task.auto_class().from_pretrained(merged_dir, attn_implementation="eager",
                                                                 trust_remote_code=run.trust_remote_code).eval()
    if not settings.merge:
        shutil.rmtree(merged_dir)
    parity = Parity(run.task, held_out, reference, candidates, pad_id(tokenizer)).measure(progress)
    failures = parity.judge(settings)
    if settings.gguf:
        failures += gguf_export.check_tokenizer(art, tokenizer, held_out.rows)
    if failures and settings.verify:
        raise ExportError(parity.explain(failures, held_out.split),
                          hint="loosen the thresholds in `[export]` (max_abs_diff, max_confident_flips, near_tie, "
                          "max_accuracy_drop, max_perplexity_ratio, min_agreement), drop the failing quantization, "
                          "or set `verify = false` (`--no-verify`) to publish with the figures recorded")
    figures = parity.figures()
    if settings.gguf:
        gguf_export.finish(art, tokenizer, figures, eos, data["max_length"])
    if names or settings.gguf:
        card = artifact_card(run, settings, tokenizer, data, names, figures, eos, key, spec_text, art)
        store.write_json(art / MANIFEST, card)
    return {"key": key, "name": run.manifest.get("name", ""), "format": ARTIFACTS, "ftc_version": __version__,
            "created": time.time(), "run": run.key, "task": task.name, "method": run.manifest["method"],
            "variants": names, "gguf": settings.gguf, "merged": settings.merge, "parity": figures, "failures": failures,
            "inputs": inputs}


def load_trained(run: Run, tokenizer: Any) -> Any:
    """The run's model as trained, on CPU in fp32 with eager attention: the reference every
    export is compared with, and the graph the legacy ONNX exporter traces."""
    import torch

    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": "eager",
                              "trust_remote_code": run.trust_remote_code}
    source = _weights_dir(run)
    # a new head comes with the adapter; merged weights hold their own
    model = run.task.load_reference(source, run.manifest, pad_id(tokenizer), **kwargs)
    if source != run.path / "model":
        from peft import PeftModel

        model = PeftModel.from_pretrained(vocab.fit(model, run.path / "model"), run.path / "model")
    return model.eval()


def merge(model: Any) -> Any:
    """A PEFT model with its adapter (LoRA, DoRA, IA3) folded into the base weights; a plain
    model (full, freeze) as it is."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


# ── held-out rows ────────────────────────────────────────────────────────────────────────────

@dataclass
class HeldOut:
    split: str
    rows: list[dict[str, Any]]  # as the task's `parity_feed` takes them
    sample: dict[str, Any] | None = None  # how the rows were drawn, for the card


def _dataset(run: Run) -> tuple[Path, dict[str, Any]]:
    data_dir = store.lookup(store.DATASETS, run.manifest["data_key"])
    if data_dir is None:
        raise ExportError(f"the dataset of run {run.key[:12]} is no longer in the store (removed by `ftc cache`?); "
                          "the parity check needs its held-out rows", hint="`ftc prep` the run's spec again: "
                          "the same inputs rebuild the same dataset")
    return data_dir, store.read_manifest(data_dir)


def _held_out(run: Run, data_dir: Path, data: dict[str, Any], n: int) -> HeldOut:
    """A seeded sample of `n` rows of the whole test split (else validation), drawn by the task:
    in file order the first rows can all be of one kind (one class, the longest examples, which
    packing puts first), and every variant is measured on this same sample."""
    for split in ("test", "valid"):
        if (ds := load_split(data_dir, data, split)) is not None:
            break
    else:
        raise ExportError("the run's dataset has no test or validation rows to check the export on",
                          hint="set `data.split.test` above 0 and rebuild, or `verify = false`")
    seed = int(data.get("inputs", {}).get("seed", 0))
    rows, sample = run.task.held_out(ds, n, seed, run.manifest.get("labels"))
    return HeldOut(split, rows, {"split": split, **sample})


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
    task = run.task
    paths = {n: task.variant_path(n) for n in names}
    passed = [n for n in names if figures[n]["passed"]] or names[:1]
    return {
        "format": FORMAT, "ftc_version": __version__, "created": time.time(), "task": task.name,
        "labels": run.manifest.get("labels"), "max_length": data["max_length"], **task.card(data, art),
        "pad_token_id": pad_id(tokenizer), "eos_token_ids": eos,
        "variants": {n: {"path": p} for n, p in paths.items()},
        "default": min(passed, key=lambda n: _bytes(art / paths[n])) if passed else None,
        **({"gguf": gguf_export.card(art, figures)} if (art / gguf_export.DIR).is_dir() else {}),
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

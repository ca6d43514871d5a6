"""The content-addressed store at `$FTC_HOME` (default `~/.cache/ftc`).

Layout: `<bucket>/<key>/` per entry (e.g. `datasets-v1/3f2a…/`). A key is the sha256 of the
canonical JSON of exactly the stage's inputs (sorted keys, no whitespace), never Python's
`hash()`. An entry is built in a temporary directory beside its target, fsynced, and renamed:
a directory under its key is complete by construction, and a crash leaves only a `.tmp-*`
directory that `gc` removes. A per-key lock file keeps two concurrent builds from clashing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftc.errors import StoreError

DATASETS = "datasets-v1"
MODELS = "models-v1"  # HF directories converted from GGUF files
MANIFEST = "manifest.json"
WORK = "work"  # checkpoints of runs being trained (or killed): `work/<train key>/`
WORK_LOCKS = ".work-locks"  # their locks, apart: `work/` holds checkpoint directories only


def home() -> Path:
    return Path(os.environ.get("FTC_HOME") or Path.home() / ".cache" / "ftc").expanduser().absolute()


def key_of(inputs: Any) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def entry_dir(bucket: str, key: str) -> Path:
    return home() / bucket / key


def lookup(bucket: str, key: str) -> Path | None:
    """The entry's directory if it is complete (its manifest is written last, inside the rename)."""
    d = entry_dir(bucket, key)
    return d if (d / MANIFEST).is_file() else None


@contextmanager
def lock(bucket: str, key: str, *, shared: bool = False) -> Iterator[None]:
    """A lock on one key: exclusive to build or remove it (a second build of the same key
    waits, then finds it cached), shared to read it (a build reading a dataset, an export
    reading a run), so `gc` and `rm` never take an entry from under a reader."""
    root = _lock_dir(bucket)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the store at {root}: {e}", hint="set FTC_HOME to a writable directory") from None
    with open(root / f".{key}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _lock_dir(bucket: str) -> Path:
    """Where a bucket's lock files live: beside its entries, but apart for `work/`, which holds
    checkpoint directories only."""
    return home() / (WORK_LOCKS if bucket == WORK else bucket)


def _busy(bucket: str, key: str) -> bool:
    """Whether some process holds the key's lock (building, reading or training it)."""
    path = _lock_dir(bucket) / f".{key}.lock"
    if not path.is_file():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


@contextmanager
def staging(bucket: str, key: str) -> Iterator[Path]:
    """A temporary directory that becomes the entry when the block exits without error."""
    target = entry_dir(bucket, key)
    tmp = target.parent / f".tmp-{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for p in tmp.iterdir():
            _fsync(p)
        _fsync(tmp)
        if target.exists():  # a stale, incomplete entry (no manifest) from an older layout
            shutil.rmtree(target)
        os.rename(tmp, target)
        _fsync(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_once(bucket: str, key: str, make: Callable[[Path], dict[str, Any] | None], *,
               force: bool = False) -> tuple[Path, bool]:
    """The entry `bucket/key`, built by `make(tmp)` unless it is already complete: look up, lock,
    look up again (a concurrent build may have finished it while this one waited), build in a
    temporary directory, rename. `make` returns the manifest, written last; `None` when it wrote
    its own. Returns (the entry's directory, whether it was a cache hit)."""
    if not force and (hit := lookup(bucket, key)):
        return hit, True
    with lock(bucket, key):
        if not force and (hit := lookup(bucket, key)):
            return hit, True
        with staging(bucket, key) as tmp:
            manifest = make(tmp)
            if manifest is not None:
                write_json(tmp / MANIFEST, manifest)
    return entry_dir(bucket, key), False


def read_manifest(path: Path) -> dict[str, Any]:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Entry:
    bucket: str
    key: str
    path: Path
    size: int
    created: float
    name: str


def entries() -> list[Entry]:
    out = []
    root = home()
    if not root.is_dir():
        return out
    for bucket in sorted(p for p in root.iterdir() if p.is_dir()):
        for d in sorted(bucket.iterdir()):
            if d.name.startswith(".") or not (d / MANIFEST).is_file():
                continue
            try:
                manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
            except ValueError:
                manifest = {}
            size = tree_size(d)
            out.append(Entry(bucket.name, d.name, d, size, manifest.get("created", d.stat().st_mtime),
                             manifest.get("name", "")))
    return out


def find(prefix: str) -> Entry:
    matches = [e for e in entries() if e.key.startswith(prefix)]
    if not matches:
        raise StoreError(f"no store entry matches `{prefix}`", hint="`ftc cache ls` lists the entries")
    if len(matches) > 1:
        raise StoreError(f"`{prefix}` matches {len(matches)} entries", hint="give more characters of the key")
    return matches[0]


def remove(entry: Entry) -> None:
    with lock(entry.bucket, entry.key):
        shutil.rmtree(entry.path)


def abandoned() -> list[Path]:
    """Checkpoint directories of builds that no process is running: killed or failed builds.
    A rebuild of the same spec resumes from them; `gc` removes them."""
    root = home() / WORK
    if not root.is_dir():
        return []
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and not _busy(WORK, d.name))


def gc(older_than_days: float | None = None) -> tuple[int, int]:
    """Removes leftovers of interrupted builds (temporary directories, abandoned checkpoints)
    and, if asked, entries older than N days; never what a running build holds. Returns
    (directories removed, bytes freed)."""
    removed, freed = 0, 0
    root = home()
    if not root.is_dir():
        return 0, 0
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    left = set(abandoned())
    for bucket in (p for p in root.iterdir() if p.is_dir()):
        for d in bucket.iterdir():
            stale_tmp = d.name.startswith(".tmp-") and not _pid_alive(d.name)
            entry = d.is_dir() and not d.name.startswith(".")
            too_old = cutoff is not None and entry and d.stat().st_mtime < cutoff
            if stale_tmp:
                freed += _remove_tree(d)
                removed += 1
            elif d in left or too_old:
                locks = _lock_dir(bucket.name)
                locks.mkdir(exist_ok=True)
                with open(locks / f".{d.name}.lock", "a") as f:
                    try:  # held: a build or a reader is using it
                        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    freed += _remove_tree(d)
                    removed += 1
                    fcntl.flock(f, fcntl.LOCK_UN)
    return removed, freed


def tree_size(d: Path) -> int:
    """Bytes of every file under `d`."""
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def _remove_tree(d: Path) -> int:
    size = tree_size(d)
    shutil.rmtree(d, ignore_errors=True)
    return size


def _pid_alive(tmp_name: str) -> bool:
    try:
        pid = int(tmp_name.split("-")[2])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return pid != os.getpid()

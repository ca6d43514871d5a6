"""What a long command shows on the terminal: its own progress and summary, nothing else.

The libraries a build runs print to the terminal on their own: transformers' and
bitsandbytes' log lines, FutureWarnings, tqdm bars, the Trainer's log dicts. `captured` sends
all of it to a log file instead (`$FTC_HOME/logs/`, and the run directory keeps a copy), at
both levels it can come from: Python's `sys.stdout`/`sys.stderr`, logging and warnings, and the
process's file descriptors 1 and 2, where C extensions and handlers bound to the real stderr
write. ftc's own warnings (`FtcWarning`) still reach the terminal. `-v` shows everything as it
comes, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from ftc.errors import FtcWarning

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def log_path(command: str) -> Path:
    """A new log file for one command: `$FTC_HOME/logs/<command>-<time>-<pid>.log`."""
    from ftc import store

    folder = store.home() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


@contextlib.contextmanager
def captured(log: Path, verbose: bool = False) -> Iterator[TextIO]:
    """Library output → `log` while the block runs; yields the stream for people's text (the
    terminal's stderr). `verbose`: nothing is captured, and ftc's own log lines show too."""
    ftc_log = logging.getLogger("ftc")
    ftc_log.setLevel(logging.INFO)
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        ftc_log.addHandler(handler)
        try:
            yield sys.stderr
        finally:
            ftc_log.removeHandler(handler)
        return
    with open(log, "a", encoding="utf-8", buffering=1) as f, _descriptors(f) as term, _python_level(f, term):
        yield term


@contextlib.contextmanager
def _descriptors(f: TextIO) -> Iterator[TextIO]:
    """fds 1 and 2 → `f`; yields a stream on the terminal's stderr as it was."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    term: TextIO = sys.stderr
    saved: list[tuple[int, int]] = []
    try:
        if sys.stderr.fileno() == 2:  # a real stderr: its descriptor is about to be redirected
            term = open(os.dup(2), "w", encoding=sys.stderr.encoding or "utf-8", errors="replace",  # noqa: SIM115
                        buffering=1)
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor (a test runner's)
        pass
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            saved.append((fd, os.dup(fd)))
            os.dup2(f.fileno(), fd)
    try:
        yield term
    finally:
        for stream in (sys.stdout, sys.stderr, f):
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        if term is not sys.stderr:
            term.close()


@contextlib.contextmanager
def _python_level(f: TextIO, term: TextIO) -> Iterator[None]:
    """sys.stdout/stderr, logging (the root's handlers) and warnings → `f`; `FtcWarning` → `term`."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    handler = logging.StreamHandler(f)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    show = warnings.showwarning

    def showwarning(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
                    line: str | None = None) -> None:
        if issubclass(category, FtcWarning):
            term.write(f"warning: {message}\n")
        else:
            f.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = showwarning
    try:
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield
    finally:
        warnings.showwarning = show
        root.handlers, root.level = handlers, level
        # A library imported meanwhile bound its handlers to the redirected stream (transformers'
        # default handler is `StreamHandler(sys.stderr)`): point them back at the terminal.
        for logger in [root, *logging.Logger.manager.loggerDict.values()]:
            for h in getattr(logger, "handlers", ()):
                if isinstance(h, logging.StreamHandler) and h.stream is f:
                    h.setStream(sys.stderr)

"""The one place an onnxruntime session is made: export's parity check, the runtime and the
server all run a graph the same way (CPU provider, quiet optimizer, a thread count)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # the optimizer's fused graphs warn about unused initializers
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

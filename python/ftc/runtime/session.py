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


KNOWN_INPUTS = {"input_ids", "attention_mask", "token_type_ids"}  # what an encoder graph may take


def encoder_graph(path: Path, threads: int, outputs: tuple[str, ...], what: str) -> tuple[Any, list[str], dict[str, Any]]:
    """An encoder task's graph (`what`: "a classifier", "a tagger"…) → (its session, its input
    names, its outputs by name). A graph onnxruntime cannot load, that takes other inputs than
    `KNOWN_INPUTS` or lacks one of `outputs` is a one-line `ArtifactError`."""
    from ftc.errors import ArtifactError
    from ftc.runtime.artifact import REEXPORT

    try:
        sess = session(path, threads)
    except Exception as e:  # onnxruntime raises its own untyped errors for a bad graph
        raise ArtifactError(f"{path}: onnxruntime cannot load it: {e}", hint=REEXPORT) from None
    inputs = [i.name for i in sess.get_inputs()]
    if unknown := set(inputs) - KNOWN_INPUTS:
        raise ArtifactError(f"{path}: unexpected graph inputs {sorted(unknown)}; {what} takes "
                            f"{sorted(KNOWN_INPUTS)}", hint=REEXPORT)
    found = {o.name: o for o in sess.get_outputs()}
    if missing := [o for o in outputs if o not in found]:
        raise ArtifactError(f"{path}: the graph has no {', '.join(f'`{m}`' for m in missing)} output", hint=REEXPORT)
    return sess, inputs, found

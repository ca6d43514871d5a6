"""The runtime: an exported artifact served with onnxruntime, tokenizers and numpy alone.

Nothing here imports torch, transformers or peft (a test refuses them and runs both tasks),
so a deployment carries only `pip install ftc`'s runtime dependencies; onnxruntime-genai is
imported only to load a decoder.

    from ftc import runtime
    clf = runtime.load("artifact")                    # verified against its sha256 hashes
    clf.classify(["great film"])[0].probabilities      # {"neg": 0.03, "pos": 0.97}
    gen = runtime.load("chat-artifact", variant="int4")
    gen.generate([{"role": "user", "content": "hi"}], temperature=0.7, top_p=0.9, seed=1).text
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Union

from ftc.runtime.artifact import Artifact, read
from ftc.runtime.classify import Classifier, Prediction
from ftc.runtime.generate import Generation, Generator

if TYPE_CHECKING:  # each task's module loads only when its artifact does
    from ftc.runtime.answers import Reader
    from ftc.runtime.entities import Tagger

Model = Union[Classifier, Generator, "Tagger", "Reader"]

__all__ = ["Artifact", "Classifier", "Generation", "Generator", "Model", "Prediction", "load"]


def load(path: str | Path, variant: str | None = None, threads: int = 0, pin: str | None = None) -> Model:
    """The artifact at `path`, its hashes checked, as its task's model: a `Classifier`, a
    `Generator`, a `Tagger` (entities) or a `Reader` (answers).

    `variant` picks `fp32`, `int8` or `int4` (default: the artifact's `default`); `threads`
    sets onnxruntime's intra-op threads for a classifier (0: one per core); `pin`, the sha256
    of the artifact's card, refuses any other artifact.
    """
    from ftc import tasks

    artifact = read(Path(path), variant, pin)
    model: Model = tasks.get(artifact.task).runtime(artifact, threads)
    return model

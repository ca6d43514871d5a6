"""The `FtcError` family. The CLI prints these as one clear message (no traceback) and exits 1."""

from __future__ import annotations


class FtcError(Exception):
    """A reported error: bad input, a failed check. `hint` is printed after a blank line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        text = f"error: {self.message}"
        return f"{text}\n\nhint: {self.hint}" if self.hint else text


class SpecError(FtcError):
    """The spec is invalid; `problems` holds every issue found, each already formatted."""

    def __init__(self, path: str, problems: list[str]) -> None:
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{path}: {len(problems)} {noun}\n\n" + "\n\n".join(problems))
        self.problems = problems

    def render(self) -> str:
        return self.message


class SourceError(FtcError):
    """A data source cannot be read, or too many of its rows are unusable."""


class ModelError(FtcError):
    """The base model (or its tokenizer) cannot be found or loaded."""


class BuildError(FtcError):
    """A stage failed for a reason other than its inputs."""


class StoreError(FtcError):
    """The store at `$FTC_HOME` is unusable or an entry is missing."""


class ExportError(FtcError):
    """A run cannot be exported, or an exported model fails its parity check."""


class ArtifactError(FtcError):
    """An exported artifact is missing, of an unknown format, or fails its hash check."""


class InferenceError(FtcError):
    """A request the loaded model cannot serve: the wrong task, an empty input, too long a prompt."""

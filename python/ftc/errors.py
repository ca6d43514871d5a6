"""The `FtcError` family. The CLI prints these as one clear message (no traceback) and exits 1."""

from __future__ import annotations


class FtcWarning(UserWarning):
    """Something the user should know that does not stop the command: it reaches the terminal
    even while library warnings go to the log (`ftc.terminal`)."""


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


class KernelError(FtcError):
    """A data kernel (the Rust extension) refused its input; raised from Rust by kind."""

    HINT: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint if hint is not None else self.HINT)


class TokenizerError(KernelError):
    """The tokenizer file cannot be loaded."""

    HINT = ("the model's tokenizer.json must be one the `tokenizers` library reads: check `model.base`, or "
            "save the tokenizer again with `save_pretrained`")


class TemplateError(KernelError):
    """The chat template does not compile or refused a conversation."""

    HINT = "check `tokenize.template` (a built-in name, a .jinja file, or the model's own template)"


class KernelInputError(KernelError):
    """Arguments or rows a kernel cannot take."""


class KernelIOError(KernelError):
    """A file a kernel reads or writes failed."""

    HINT = "check that the path exists, is readable, and that the disk has room"

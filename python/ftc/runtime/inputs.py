"""Inputs of `ftc infer --file`: one text per line, or JSON Lines of objects.

A `.jsonl` / `.json` file, or any file whose first line opens an object, is read as JSON Lines:
each object has `text` (+ `text_pair`), `messages` (a conversation), `prompt` (raw text),
`question` + `context` (question answering) or `prompt` / `messages` + `response` (a reward
model); `--input` gives one such object.
Otherwise every line is one text. Blank lines are not inputs, as in the data stage.

    read_inputs(Path("in.jsonl"))   # [{"text": "great film"}, {"messages": [...]}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftc.errors import InferenceError

KINDS = {"text": str, "text_pair": str, "messages": list, "prompt": str, "question": str, "context": str,
         "response": str}  # a reward model scores `prompt` (or `messages`) + `response`


def read_inputs(file: Path) -> list[dict[str, Any]]:
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InferenceError(f"{file}: cannot read: {e}") from None
    first = next((line for line in lines if line.strip()), "")
    if file.suffix not in (".jsonl", ".json") and not first.lstrip().startswith("{"):
        return [{"text": line} for line in lines if line.strip()]
    return [_object(file, n, line) for n, line in enumerate(lines, 1) if line.strip()]


def _object(file: Path, n: int, line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise InferenceError(f"{file}:{n}: malformed JSON: {e}") from None
    return _checked(obj, f"{file}:{n}")


def parse_input(text: str) -> dict[str, Any]:
    """`--input`: one JSON object."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise InferenceError(f"--input {text[:40]!r}: malformed JSON: {e}") from None
    return _checked(obj, "--input")


def _checked(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or not {"text", "messages", "prompt", "question"} & obj.keys():
        raise InferenceError(f"{where}: expected an object with `text`, `messages`, `prompt` or `question`")
    picked = {k: v for k, v in obj.items() if k in KINDS}
    for key, value in picked.items():
        if not isinstance(value, KINDS[key]):
            raise InferenceError(f"{where}: `{key}` must be a {KINDS[key].__name__}")
    return picked

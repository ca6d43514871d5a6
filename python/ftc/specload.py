"""Spec loading: TOML → `Spec`, with every problem reported at once, each with its key path,
TOML line, what was found, what is allowed, and a close match for a typo.

tomllib gives no positions, so `key_lines` scans the text for table headers and keys; it
only has to find lines, not parse values.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ftc.errors import SpecError
from ftc.spec import Spec

Loc = tuple[str | int, ...]

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r'^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\'))*)\s*=')
_INLINE_KEY = re.compile(r"[{,]\s*([A-Za-z0-9_-]+)\s*=")


def _parts(dotted: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.split(r"\.(?=(?:[^\"']*[\"'][^\"']*[\"'])*[^\"']*$)", dotted)]


def key_lines(text: str) -> dict[Loc, int]:
    """Maps key paths (with array-of-tables indices) to 1-based line numbers."""
    lines: dict[Loc, int] = {}
    table: Loc = ()
    counts: dict[Loc, int] = {}
    for no, line in enumerate(text.splitlines(), start=1):
        if m := _HEADER.match(line):
            path = tuple(_parts(m.group(2)))
            if m.group(1) == "[[":
                idx = counts.get(path, -1) + 1
                counts[path] = idx
                table = (*path, idx)
            else:
                table = _with_indices(path, counts)
            lines.setdefault(table, no)
            continue
        if m := _KEY.match(line):
            key = (*table, *_parts(m.group(1)))
            lines.setdefault(key, no)
            rest = line[m.end():]
            for sub in _INLINE_KEY.finditer(rest):
                lines.setdefault((*key, sub.group(1)), no)
            if rest.lstrip().startswith("["):
                for i, _ in enumerate(re.finditer(r"\{", rest)):
                    lines.setdefault((*key, i), no)
    return lines


def _with_indices(path: Loc, counts: dict[Loc, int]) -> Loc:
    """`[data.sources.columns]` after `[[data.sources]]` belongs to the last source."""
    out: list[str | int] = []
    for part in path:
        out.append(part)
        if (idx := counts.get(tuple(out))) is not None:
            out.append(idx)
    return tuple(out)


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int | None:
    for n in range(len(loc), 0, -1):
        if (line := lines.get(loc[:n])) is not None:
            return line
    return None


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The pydantic model that holds the last key of `loc` (to suggest its field names)."""
    model: Any = Spec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    for arg in typing.get_args(tp) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        if (inner := _unwrap(arg)) is not None and isinstance(inner, type):
            return inner
    if isinstance(tp, type | types.GenericAlias):
        return tp
    return None


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return "a table" if v else "an empty table"
    s = repr(v) if not isinstance(v, str) else f'"{v}"'
    return s if len(s) < 80 else s[:77] + "..."


def _problem(err: dict[str, Any], lines: dict[Loc, int], spec_path: str) -> str:
    loc: Loc = tuple(err["loc"])
    # Union branches add type names to the path (e.g. `str`, `list[str]`); drop them.
    loc = tuple(p for p in loc if isinstance(p, int) or ("[" not in p and p not in {"str", "int", "float", "bool"}))
    if loc and isinstance(loc[-1], str) and loc[-1].startswith("function-"):
        loc = loc[:-1]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or "(top level)"
    line = _line_of(loc, lines)
    where = f"{spec_path}:{line}" if line else spec_path
    kind, msg = err["type"], err["msg"].removeprefix("Value error, ")
    found = err.get("input")
    hint = None
    if kind == "extra_forbidden":
        model = _model_at(loc)
        allowed = [f.alias or n for n, f in model.model_fields.items()] if model else []
        head = f"unknown key `{loc[-1]}`"
        detail = f"  allowed: {', '.join(allowed)}" if allowed else ""
        if close := difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6):
            hint = f"did you mean `{close[0]}`?"
        body = f"{where}: `{key}`: {head}\n{detail}"
    elif kind == "missing":
        body = f"{where}: `{key}`: missing required key"
    else:
        body = f"{where}: `{key}`: {msg}\n  found: {_fmt(found)}"
        if kind in ("literal_error", "enum") and isinstance(found, str):
            allowed = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
            body += f"\n  allowed: {', '.join(allowed)}"
            if close := difflib.get_close_matches(found, allowed, n=1, cutoff=0.5):
                hint = f"did you mean `{close[0]}`?"
    hint = hint or _BOUND_HINTS.get(key) or _BOUND_HINTS.get(kind)
    return f"{body}\n\n  hint: {hint}" if hint else body


_BOUND_HINTS = {
    "project.seed": "a seed is 0 to 2³²−1, the range numpy and torch accept",
    "finite_number": "NaN and infinity are not values here: give a finite number",
    "less_than_equal": "the bound keeps a run within what one machine can hold and finish; a larger value "
                       "would run out of memory, disk or time",
}


def load_spec(path: str | Path) -> Spec:
    """Reads and validates a spec; raises `SpecError` with every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(str(path), [f"{path}: cannot read: {e}"]) from None
    return spec_from_text(text, path)


def spec_from_text(text: str, path: Path) -> Spec:
    """A spec's TOML `text` as if read from `path` (relative paths resolve beside it)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(str(path), [f"{path}: not valid TOML: {e}"]) from None
    try:
        spec = Spec.model_validate(raw)
    except ValidationError as e:
        lines = key_lines(text)
        errors = e.errors(include_url=False)
        errors.sort(key=lambda err: _line_of(tuple(err["loc"]), lines) or 0)
        problems = [_problem(err, lines, str(path)) for err in errors]
        raise SpecError(str(path), problems) from None
    spec._root = path.resolve().parent
    spec._text = text
    return spec

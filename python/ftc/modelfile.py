"""An Ollama `Modelfile` beside the GGUF files: `ollama create NAME -f Modelfile` serves them.

Ollama formats a conversation with a Go template, not the Jinja chat template the model was
trained with, so the template is derived from the Jinja one: conversations of marker contents
are rendered with `apply_chat_template`, and the text around each marker is what a message of
that role is wrapped in (`Wrapping`). Most templates (ChatML, Llama 3, Mistral, Gemma, ...)
wrap each role the same way at every turn, so the wrappings are exact. They are checked: the
Go template's own rendering (`Wrapping.render`) must give, byte for byte, what the Jinja
template gives on conversations the wrappings were not derived from. A template that depends
on more (a message's position beyond the first, tool calls) fails that check, and the
Modelfile then carries no TEMPLATE: Ollama reads the chat template embedded in the GGUF file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Messages = list[dict[str, str]]
S, U, A, U2, A2 = "\u27e6sys\u27e7", "\u27e6u1\u27e7", "\u27e6a1\u27e7", "\u27e6u2\u27e7", "\u27e6a2\u27e7"


@dataclass(frozen=True)
class Wrapping:
    """What the chat template writes around each message, by role."""

    first: str  # before a conversation without a system message (a default system prompt, BOS)
    system: tuple[str, str]
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str  # the assistant header the prompt ends with

    def render(self, messages: Messages) -> str:
        """A conversation as the Go template renders it, with the generation prompt."""
        out = [] if messages and messages[0]["role"] == "system" else [self.first]
        for m in messages:
            before, after = getattr(self, m["role"])
            out += [before, m["content"], after]
        return "".join([*out, self.generation])

    def go(self) -> str:
        """The same, as Ollama's Go template over `.Messages`."""
        lit = lambda s: s.replace("{{", '{{ "{{" }}')  # noqa: E731  a literal `{{` in the text
        branches = "".join(f'{{{{ {"if" if i == 0 else "else if"} eq $m.Role "{role}" }}}}{lit(getattr(self, role)[0])}'
                           f"{{{{ $m.Content }}}}{lit(getattr(self, role)[1])}"
                           for i, role in enumerate(("system", "user", "assistant")))
        return (f'{{{{ range $i, $m := .Messages }}}}{{{{ if and (eq $i 0) (ne $m.Role "system") }}}}'
                f"{lit(self.first)}{{{{ end }}}}{branches}{{{{ end }}}}{{{{ end }}}}{lit(self.generation)}")


def wrapping(tokenizer: Any) -> Wrapping | None:
    """The chat template's wrappings, or None when no exact ones exist."""
    render = lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)  # noqa: E731
    conv = [{"role": "system", "content": S}, {"role": "user", "content": U}, {"role": "assistant", "content": A}]
    try:
        x0, rest = _cut(render(conv + [{"role": "user", "content": U2}], True), S)
        x1, rest = _cut(rest, U)
        x2, rest = _cut(rest, A)
        x3, gen_tail = _cut(rest, U2)
        user_end = _after(render(conv[:2], False), U)
        assistant_end = _after(render(conv, False), A)
        first = _before(render(conv[1:2], True), U)
        user_before = _strip_start(x3, assistant_end)
        w = Wrapping(first=_strip_end(first, user_before), system=(x0, _strip_end(x1, user_before)),
                     user=(user_before, user_end), assistant=(_strip_start(x2, user_end), assistant_end),
                     generation=_strip_start(gen_tail, user_end))
    except Exception:  # noqa: BLE001  a marker dropped, an ending not shared, or raise_exception() in the template
        return None
    return w if all(w.render(c) == render(c, True) for c in _checks()) else None


def _checks() -> list[Messages]:
    """Conversations the wrappings were not derived from: three turns, with and without system."""
    turns = [("user", "Hi there"), ("assistant", "Hello! How can I help?"), ("user", "Name a prime."),
             ("assistant", "7"), ("user", "And another?")]
    chat = [{"role": r, "content": c} for r, c in turns]
    return [chat, [{"role": "system", "content": "Be brief."}, *chat], chat[:1]]


def _cut(text: str, marker: str) -> tuple[str, str]:
    before, found, after = text.partition(marker)
    if not found:
        raise ValueError(marker)
    return before, after


def _before(text: str, marker: str) -> str:
    return _cut(text, marker)[0]


def _after(text: str, marker: str) -> str:
    return _cut(text, marker)[1]


def _strip_start(text: str, prefix: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(prefix)
    return text[len(prefix):]


def _strip_end(text: str, suffix: str) -> str:
    if not text.endswith(suffix):
        raise ValueError(suffix)
    return text[:len(text) - len(suffix)]


def modelfile(gguf: str, others: Sequence[str], tokenizer: Any, eos_ids: list[int], context: int) -> str:
    """The Modelfile text: FROM the GGUF file `gguf` (the others named in a comment), the
    derived TEMPLATE, and a stop parameter for every token the export stops on."""
    lines = ["# Ollama: `ollama create NAME -f Modelfile`, then `ollama run NAME`.",
             f"# Written by ftc export; the other GGUF files here: {', '.join(others) or 'none'} (edit FROM to use one)."]
    lines += [f"FROM ./{gguf}", f"PARAMETER num_ctx {context}"]
    for i in eos_ids:
        lines.append(f"PARAMETER stop {json.dumps(tokenizer.convert_ids_to_tokens(i))}")
    w = wrapping(tokenizer) if tokenizer.chat_template else None
    if w is not None and '"""' not in w.go():
        lines.append(f'TEMPLATE """{w.go()}"""')
    else:
        lines.append("# No TEMPLATE: the chat template cannot be written as Ollama's, which then reads the one in "
                     "the GGUF file.")
    return "\n".join(lines) + "\n"

"""`{name}` placeholders in a number's instructions, greeting and voicemail message, filled from a call's context.

A placeholder with no value in the context is refused before dialling: a customer must never hear a
literal `{name}`. Only `{identifier}` is a placeholder; `{{` and `}}` are literal braces, as in
`str.format`, and nothing else is interpreted (no attributes, indexes or format specs from an operator's text).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class MissingPlaceholder(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def placeholders(text: str) -> list[str]:
    """The placeholder names in `text`, in order of first use."""
    names = [m.group(1) for m in PLACEHOLDER.finditer(text) if m.group(1)]
    return list(dict.fromkeys(names))


def fill(text: str, context: Mapping[str, str]) -> str:
    """`text` with each `{name}` replaced by `context[name]`; raises `MissingPlaceholder` for the first without one."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        if name not in context:
            raise MissingPlaceholder(name)
        return context[name]

    return PLACEHOLDER.sub(value, text)

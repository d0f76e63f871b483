"""Client text shown back in error messages, cut to a sane length.

A request can name a model, a file or a content type with 100 KB of text; echoing it in
full would make every error answer (and log line) as big as the attack. Every message that
repeats client input passes it through ``clip`` first.
"""

from __future__ import annotations

SHOWN_CHARS = 64
_SCALARS = (str, int, float, bool, type(None))


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` itself when short, else its start and how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """Any client JSON value for a message, clipped: scalars as text, containers by their type only.

    ``str()`` of a client's list or dict is as big as the list, and for one nested a thousand
    deep it raises ``RecursionError``; a message needs neither.
    """
    if isinstance(value, _SCALARS):
        return clip(value if isinstance(value, str) else repr(value), limit)
    return f"a JSON {'array' if isinstance(value, list) else 'object' if isinstance(value, dict) else type(value).__name__}"

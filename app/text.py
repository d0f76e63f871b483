"""Client text shown back in error messages, cut to a sane length.

A request can name a model, a file or a content type with 100 KB of text; echoing it in
full would make every error answer (and log line) as big as the attack. Every message that
repeats client input passes it through ``clip`` first.
"""

from __future__ import annotations

SHOWN_CHARS = 64


def clip(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` itself when short, else its start and how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…(+{len(text) - limit} chars)"

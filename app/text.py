"""Small text helpers shared by the core and the front doors."""

from __future__ import annotations

ECHO_LIMIT = 64  # longest client-supplied string repeated back in an error message


def shorten(value: object, limit: int = ECHO_LIMIT) -> str:
    """``value`` as text, cut to ``limit`` characters with an ellipsis: a client string
    echoed in an error message can never make the answer (or the log) arbitrarily long."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"

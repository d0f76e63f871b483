"""What every front door reads the same way: versions and labels, base64, deadlines.

Each door (our REST API in ``app.views``, TF Serving in ``app.tfserving``, KServe v2 in
``app.kserve``) only finds these values in its own wire format and calls here, so the rules
cannot drift between doors. Errors are domain exceptions (``BadVersion``, ``BadBase64``):
a door adds where in its request the value was and answers with its own status for the
kind (``app.kinds``). Readiness is ``Services.ready()``, one rule for every door too.
"""

from __future__ import annotations

import base64
import binascii
import time

from .registry import BadVersion, one_of
from .text import clip

__all__ = ["BadBase64", "BadVersion", "decode_base64", "deadline", "one_of", "version_number", "version_or_label"]

MAX_VERSION_DIGITS = 18  # a version is an int64 in TF Serving's protos; 18 digits always fit
_URLSAFE = str.maketrans("-_", "+/")


class BadBase64(ValueError):
    """Not base64 in either alphabet (the message says why, e.g. the length)."""


def version_number(raw: str) -> int:
    """A version written in a request (query, path or proto string): ``0`` to 18 digits."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > MAX_VERSION_DIGITS:
        raise BadVersion(f"version must be a non-negative integer of at most {MAX_VERSION_DIGITS} digits, "
                         f"got {clip(raw)!r}")
    return int(raw)


def version_or_label(version: str | None, label: str | None) -> tuple[int | None, str | None]:
    """(version, label) from a request's two optional fields; empty counts as not given."""
    version, label = version or None, label or None
    one_of(version, label)
    return (None if version is None else version_number(version)), label


def decode_base64(text: str) -> bytes:
    """Base64 in the standard or the URL-safe alphabet, padding optional, whitespace ignored.

    The most lenient of what the doors accepted before (TF Serving's REST door stripped line
    breaks, common in pasted base64; KServe clients send URL-safe): now every door's rule.
    """
    cleaned = "".join(text.split()).translate(_URLSAFE)
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadBase64(str(exc)) from None


def deadline(timeout_s: float, *, started: float | None = None, remaining: float | None = None) -> float:
    """When a request must be answered (``time.monotonic()``): ``timeout_s`` after it started
    (HTTP: when the app got it, ``observe``), or the caller's own gRPC deadline when shorter."""
    start = time.monotonic() if started is None else started
    return start + (timeout_s if remaining is None else max(0.0, min(timeout_s, remaining)))

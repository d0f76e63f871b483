"""Read a JPEG's EXIF Orientation tag from its header, in microseconds, without decoding.

Phones store a portrait photo sideways and say so in the tag; TensorFlow's decoders do not
read it, so the graph turns the image upright itself from the value read here (see
``app.preprocessing``). Only the markers before the image data are walked, and only IFD0
of the EXIF block is read: the tag lives there, and nothing else is needed.

Values (EXIF 2.3, what Pillow's ``ImageOps.exif_transpose`` undoes)::

    1 upright        2 mirrored        3 rotated 180      4 flipped vertically
    5 transposed     6 rotated 90 CW   7 transversed      8 rotated 90 CCW
"""

from __future__ import annotations

import struct

import numpy as np

UPRIGHT = 1
_ORIENTATION_TAG = 0x0112
_SOS, _EOI, _APP1 = 0xDA, 0xD9, 0xE1
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length field


def jpeg_orientation(data: bytes) -> int:
    """The Orientation tag (1–8) of a JPEG's EXIF block; 1 when absent, invalid, or not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return UPRIGHT
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return UPRIGHT  # not at a marker: a damaged header; the strict check reports it
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (_SOS, _EOI):
            return UPRIGHT  # image data begins: no EXIF before it
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if marker == _APP1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            return _orientation_in_tiff(data[pos + 10 : pos + 2 + length])
        pos += 2 + length
    return UPRIGHT


def _orientation_in_tiff(tiff: bytes) -> int:
    """Tag 0x0112 of IFD0 in a TIFF structure (EXIF's container)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return UPRIGHT
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return UPRIGHT
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            break
        tag, kind, _n = struct.unpack_from(order + "HHI", tiff, entry)
        if tag == _ORIENTATION_TAG:
            if kind != 3:  # SHORT, as the standard says
                return UPRIGHT
            (value,) = struct.unpack_from(order + "H", tiff, entry + 8)
            return value if 1 <= value <= 8 else UPRIGHT
    return UPRIGHT


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Undo an orientation on a ``[h, w, c]`` array, as ``app.preprocessing.upright`` does in the graph."""
    if orientation in (5, 6, 7, 8):
        pixels = pixels.transpose(1, 0, 2)
    flips = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation, ())
    return np.flip(pixels, flips) if flips else pixels

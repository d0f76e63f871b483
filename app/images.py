"""Check uploaded images before TensorFlow decodes them, and bound what decoding may cost.

Protocol-free: every front door hands ``(name, bytes)`` pairs to ``check_images`` and gets
``Upload`` objects ready for the graph, or a domain exception naming the upload. Nothing
here decodes more than it must::

    (name, bytes) ─ header (Pillow, no pixels): format, width × height ─ per-image limits
      ─ request budget: Σ width × height ≤ max_request_pixels, before ANY decode
      ─ prepare ─┬─ JPEG, the models allow a scaled decode: ONE strict libjpeg decode at the
                 │    smallest scale that covers the models' input, turned upright (EXIF),
                 │    passed on as pixels (corrupt/truncated → refused)
                 ├─ other JPEG: strict libjpeg check at 1/8 scale; the graph decodes it
                 ├─ PNG (every colour type and depth), uncompressed 24/32-bit BMP, still WebP
                 │    without alpha: unchanged; the graph decodes it
                 └─ GIF, animated WebP, WebP with alpha, every other BMP: decoded by Pillow
                      (an animation's first frame only), alpha dropped, passed on as pixels

"Passed on as pixels": ``Upload.decoded`` holds the RGB array and the graph takes it as it is
(``app.preprocessing``: only crop and resize follow), so nothing is decoded twice. ``Upload.data``
still gives such an upload as an uncompressed BMP, built on demand, for tools and tests.

The graph decodes with ``channels=3``; what it gets from here, it decodes right, in every
colour mode. One rule for alpha, in every format: it is dropped and each pixel keeps the
colour stored under it. That is what TensorFlow's PNG decoder does with ``channels=3`` (and
Keras's ``load_img``, which calls Pillow's ``convert("RGB")``), so the Pillow path does the
same. 16-bit PNGs become 8 bits in the graph by their high byte (v >> 8).

Why the first frame is decoded here: TensorFlow's GIF decoder decodes *every* frame even
when only the first is kept (a 1.4 MB GIF of 300 frames at 2000×2000 cost 9–20 s and
+2.25 GB), and it refuses animated WebP. Pillow reads frame 0 without touching the rest,
so an animation costs what its first frame costs, and the budget counts exactly that.

Why WebP with alpha and most BMPs go through Pillow too: TensorFlow's WebP decoder refuses
a WebP with alpha when asked for 3 channels ("Number of channels requested does not match
input"), and its BMP decoder reads the pixel bytes by bits per pixel alone: it refuses 1-,
4- and 16-bit BMPs and reads an 8-bit BMP's palette indices as gray levels. libpng decodes
every PNG colour type and depth itself, so PNGs, still RGB WebPs and plain 24/32-bit BMPs
(the common ones) keep the fast path: no decode here, the graph's one decode.

Why JPEGs are checked strictly: libjpeg only *warns* about corrupt or truncated entropy
data and fills the damage with grey, so TensorFlow would classify filler pixels. simplejpeg
(libjpeg-turbo with warnings as errors) decodes at 1/8 scale (the entropy data is read in
full, the inverse DCT is 64× smaller): measured 0.4 ms for a 450×300 photo and 37 ms for a
noisy 3 MB 12 MP photo, against 140–200 ms for TensorFlow's full decode and resize.

Why a JPEG is decoded here when the models allow a scaled decode (``recipes.scaled_decode``):
the strict check must read all of the entropy data anyway, and for a 12 MP phone photo
that is most of the decode (~40 ms). Decoding once, at the scale the graph would have
chosen, instead of checking here and decoding again in the graph, halves that cost. The
graph then takes the ~500×380 decoded pixels as they are (a copy).

``PixelBudget`` bounds the pixels being decoded by all requests at once, so several big
but legal requests queue for memory instead of all taking it together.

Exceptions (all ``ImageError``; ``errors`` maps them to HTTP)::

    ImageError
     ├── EmptyImage            the upload has no bytes
     ├── NotAnImage            Pillow does not recognise it
     ├── CorruptImage          it is damaged: truncated, corrupt data, or no pixels
     ├── UnsupportedFormat     a real image in a format we do not serve (TIFF, ...)
     ├── ImageTooLarge         over max_image_bytes or max_image_pixels
     ├── TooManyImages         more uploads than max_images_per_request
     └── RequestTooLarge       Σ pixels over max_request_pixels
    DecodeBusy                 no room in the process-wide pixel budget before the deadline
"""

from __future__ import annotations

import io
import struct
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from .config import Settings
from .exif import jpeg_orientation, upright
from .text import clip

# What the graph's tf.io.decode_image reads (checked in tests): Pillow format -> shown name.
SUPPORTED_FORMATS = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}


class ImageError(ValueError):
    """An upload cannot be served; the message names it."""


class EmptyImage(ImageError):
    pass


class NotAnImage(ImageError):
    pass


class CorruptImage(ImageError):
    pass


class UnsupportedFormat(ImageError):
    pass


class ImageTooLarge(ImageError):
    pass


class TooManyImages(ImageError):
    pass


class RequestTooLarge(ImageError):
    pass


class DecodeBusy(Exception):
    """The process is decoding as many pixels as it may; retry shortly (a load condition)."""


@dataclass(frozen=True, slots=True)
class Upload:
    name: str  # how the client knows it (clipped): file name, "body", or "instances[i]"
    encoded: bytes | None  # what the graph decodes: the upload itself; None when ``decoded`` here
    format: str  # the upload's own format ("gif" stays "gif" after the first frame is taken)
    width: int
    height: int
    decoded: np.ndarray | None = None  # uint8 [height, width, 3] RGB, upright: decoded here, fed to the graph as is

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def data(self) -> bytes:
        """The upload as the graph could decode it: its own bytes, or (decoded here) its pixels as
        an uncompressed BMP, built on each call: for tools and tests; requests feed ``decoded``."""
        if self.encoded is not None:
            return self.encoded
        assert self.decoded is not None
        buffer = io.BytesIO()
        Image.fromarray(self.decoded).save(buffer, format="BMP")
        return buffer.getvalue()


def check_image_count(count: int, limit: int) -> None:
    """``max_images_per_request``: the core checks it here, and each door calls this too with a
    count read from its wire format, before it builds ``count`` objects."""
    if count > limit:
        raise TooManyImages(f"{count} images in one request; the limit is {limit}")


def check_images(
    raw: Sequence[tuple[str, bytes]], settings: Settings, *, jpeg_min_size: tuple[int, int] | None = None
) -> list[Upload]:
    """All uploads of a request, checked and ready for the graph, in order.

    Every header is read and every limit checked before the first pixel is decoded.
    ``jpeg_min_size`` (height, width), when every model the request goes to allows a scaled
    decode: JPEGs are decoded here, once, at the smallest scale that still covers it.
    """
    check_image_count(len(raw), settings.max_images_per_request)
    headers = [_read_header(clip(name), data, settings) for name, data in raw]
    total = sum(upload.pixels for upload in headers)
    if total > settings.max_request_pixels:
        biggest = max(headers, key=lambda upload: upload.pixels)
        raise RequestTooLarge(
            f"the request's images have {total:,} pixels together; the limit is {settings.max_request_pixels:,} "
            f"(largest: '{biggest.name}', {biggest.width}x{biggest.height}); send fewer or smaller images per request"
        )
    return [_prepare(upload, jpeg_min_size) for upload in headers]


def _read_header(name: str, data: bytes, settings: Settings) -> Upload:
    """Format and size from the header alone; refuse what TF would choke on or what is too big."""
    if not data:
        raise EmptyImage(f"upload '{name}' is empty")
    if len(data) > settings.max_image_bytes:
        raise ImageTooLarge(f"upload '{name}' is {len(data)} bytes; the limit is {settings.max_image_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image_format, (width, height) = image.format or "", image.size
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"upload '{name}' has too many pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise NotAnImage(f"upload '{name}' is not a recognised image") from None
    if image_format not in SUPPORTED_FORMATS:
        raise UnsupportedFormat(
            f"upload '{name}' is {image_format or 'an unknown format'}; supported: "
            + ", ".join(SUPPORTED_FORMATS.values())
        )
    if width * height > settings.max_image_pixels:
        raise ImageTooLarge(
            f"upload '{name}' is {width}x{height} pixels; the limit is {settings.max_image_pixels} pixels"
        )
    if width == 0 or height == 0:
        raise CorruptImage(f"upload '{name}' has no pixels ({width}x{height})")
    return Upload(name=name, encoded=data, format=SUPPORTED_FORMATS[image_format], width=width, height=height)


def _prepare(upload: Upload, jpeg_min_size: tuple[int, int] | None) -> Upload:
    if upload.format == "jpeg":
        if jpeg_min_size is not None and _decodes_to_rgb(upload):
            return _decode_jpeg_scaled(upload, jpeg_min_size)
        _check_jpeg(upload)
    elif upload.format != "png":
        return _decoded_unless_the_graph_can(upload)
    return upload


def _decodes_to_rgb(upload: Upload) -> bool:
    """YCbCr and gray JPEGs; CMYK/YCCK ones go to the graph, which converts them."""
    try:
        return simplejpeg.decode_jpeg_header(upload.data)[2] in ("YCbCr", "Gray")
    except (ValueError, RuntimeError):
        return False  # the strict check will say what is wrong


def _decode_jpeg_scaled(upload: Upload, min_size: tuple[int, int]) -> Upload:
    """Strict libjpeg decode at the smallest scale covering ``min_size`` once upright, as pixels."""
    orientation = jpeg_orientation(upload.data)
    height, width = min_size if orientation < 5 else min_size[::-1]  # 5–8 are stored turned
    pixels = _strict_jpeg_decode(upload, colorspace="RGB", min_height=height, min_width=width)
    return _as_pixels(upload, upright(pixels, orientation))


def _check_jpeg(upload: Upload) -> None:
    """Decode at 1/8 scale with libjpeg's warnings as errors: corrupt or truncated data fails."""
    _strict_jpeg_decode(upload, colorspace="GRAY", min_height=1, min_width=1)


def _strict_jpeg_decode(upload: Upload, **options: object) -> np.ndarray:
    """simplejpeg (libjpeg-turbo) with its warnings as errors: a damaged JPEG is a ``CorruptImage``."""
    try:
        return simplejpeg.decode_jpeg(upload.data, strict=True, **options)
    except (ValueError, RuntimeError) as exc:
        raise CorruptImage(f"upload '{upload.name}' is a damaged JPEG ({clip(str(exc), 120)})") from None


def _decoded_unless_the_graph_can(upload: Upload) -> Upload:
    """GIF, WebP, BMP: unchanged where TensorFlow decodes them right with ``channels=3``, else
    frame 0 decoded by Pillow alone, alpha dropped, as an uncompressed BMP for the graph."""
    try:
        with Image.open(io.BytesIO(upload.data)) as image:
            if _the_graph_decodes(upload, image):
                return upload
            frame = image.convert("RGB")  # loads frame 0 only; drops alpha, keeps the colour under it
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise CorruptImage(f"upload '{upload.name}' is a damaged {upload.format.upper()} ({clip(str(exc), 120)})") from None
    return _as_pixels(upload, np.asarray(frame))


def _the_graph_decodes(upload: Upload, image: Image.Image) -> bool:
    """Still WebP without alpha (Pillow opens it as RGB when libwebp reports no alpha, the
    flag TensorFlow's WebP decoder reads), and uncompressed 24/32-bit BMP."""
    if upload.format == "webp":
        return getattr(image, "n_frames", 1) == 1 and image.mode == "RGB"
    if upload.format == "bmp":
        return _plain_bmp(upload.data)
    return False  # GIF


def _plain_bmp(data: bytes) -> bool:
    """24 or 32 bits per pixel, uncompressed (BI_RGB), in a Windows info header (40+ bytes):
    the BMPs whose pixel bytes are the colours, all TensorFlow's BMP decoder reads."""
    if len(data) < 34:
        return False
    (header_size,) = struct.unpack_from("<I", data, 14)
    bits, compression = struct.unpack_from("<HI", data, 28)
    return header_size >= 40 and bits in (24, 32) and compression == 0


def _as_pixels(upload: Upload, rgb: np.ndarray) -> Upload:
    """The upload, decoded here: uint8 [h, w, 3] RGB pixels the graph takes as they are."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    return Upload(name=upload.name, encoded=None, format=upload.format, width=width, height=height, decoded=rgb)


class PixelBudget:
    """Pixels that all requests together may be decoding at once (``max_inflight_pixels``).

    A request holds its pixel count while its images are decoded and classified; one that
    does not fit waits, and fails with ``DecodeBusy`` at its deadline. A request alone always
    fits (``max_request_pixels`` ≤ the budget is enforced by the settings), so nothing
    starves while the process is otherwise idle.
    """

    def __init__(self, limit: int, *, clock=time.monotonic) -> None:
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()
        self._clock = clock

    @property
    def used(self) -> int:
        return self._used

    @contextmanager
    def hold(self, pixels: int, *, deadline: float) -> Iterator[None]:
        with self._cond:
            while self._used and self._used + pixels > self.limit:
                remaining = deadline - self._clock()
                if remaining <= 0 or not self._cond.wait(remaining):
                    if self._used and self._used + pixels > self.limit:
                        raise DecodeBusy(
                            f"the service is decoding {self._used:,} pixels for other requests; "
                            f"this request's {pixels:,} do not fit in {self.limit:,} before its deadline"
                        )
            self._used += pixels
        try:
            yield
        finally:
            with self._cond:
                self._used -= pixels
                self._cond.notify_all()

"""Turn an HTTP request into checked image uploads, before any TensorFlow work.

Three forms are accepted: multipart/form-data (field ``image``, one or more files), a raw
body with ``Content-Type: image/*``, and JSON ``{"instances": [{"b64": "..."}]}``.

Each upload's header is read with Pillow (no pixel decoding), so an unknown format, an
empty file, or a decompression bomb (a small file claiming billions of pixels) is refused
cheaply with a 4xx that names the upload. Truncated or corrupt pixel data is only found by
the real decode in the graph; the servable reports it per image.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from flask import Request
from PIL import Image, UnidentifiedImageError

from app.config import Settings
from app.errors import BadRequest, InvalidImage, PayloadTooLarge, UnsupportedMediaType

# What tf.io.decode_image reads (checked in tests): Pillow format name -> shown name.
SUPPORTED_FORMATS = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "BMP": "bmp", "WEBP": "webp"}
FIELD = "image"


@dataclass(frozen=True, slots=True)
class Upload:
    name: str  # how the client knows it: file name, "body", or "instances[i]"
    data: bytes
    format: str
    width: int
    height: int


def read_uploads(request: Request, settings: Settings) -> list[Upload]:
    """All images of the request, checked, in upload order."""
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        raw = _from_multipart(request)
    elif mimetype.startswith("image/"):
        raw = [("body", request.get_data(cache=False))]
    elif mimetype == "application/json":
        raw = _from_json(request)
    else:
        shown = mimetype or "none"
        raise UnsupportedMediaType(
            f"unsupported Content-Type '{shown}': send multipart/form-data with field 'image', "
            "a raw image/* body, or application/json {\"instances\": [{\"b64\": ...}]}"
        )
    if not raw:
        raise BadRequest("no image in the request", code="no_image")
    if len(raw) > settings.max_images_per_request:
        raise PayloadTooLarge(
            f"{len(raw)} images in one request; the limit is {settings.max_images_per_request}",
            code="too_many_images",
        )
    return [check_image(name, data, settings) for name, data in raw]


def check_image(name: str, data: bytes, settings: Settings) -> Upload:
    """Read the image header only; refuse what TF would choke on or what is too big."""
    if not data:
        raise InvalidImage(f"upload '{name}' is empty", code="empty_image")
    if len(data) > settings.max_image_bytes:
        raise PayloadTooLarge(
            f"upload '{name}' is {len(data)} bytes; the limit is {settings.max_image_bytes}", code="image_too_large"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image_format, (width, height) = image.format or "", image.size
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"upload '{name}' has too many pixels", code="image_too_large") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InvalidImage(f"upload '{name}' is not a recognised image") from None
    if image_format not in SUPPORTED_FORMATS:
        raise UnsupportedMediaType(
            f"upload '{name}' is {image_format or 'an unknown format'}; supported: "
            + ", ".join(SUPPORTED_FORMATS.values()),
            code="unsupported_image_format",
        )
    if width * height > settings.max_image_pixels:
        raise PayloadTooLarge(
            f"upload '{name}' is {width}x{height} pixels; the limit is {settings.max_image_pixels} pixels",
            code="image_too_large",
        )
    if width == 0 or height == 0:
        raise InvalidImage(f"upload '{name}' has no pixels ({width}x{height})")
    return Upload(name=name, data=data, format=SUPPORTED_FORMATS[image_format], width=width, height=height)


def _from_multipart(request: Request) -> list[tuple[str, bytes]]:
    files = request.files.getlist(FIELD)
    if not files:
        others = sorted(set(request.files) | set(request.form))
        hint = f" (found fields: {', '.join(others)})" if others else ""
        raise BadRequest(f"no file in form field '{FIELD}'{hint}", code="no_image")
    return [(f.filename or f"{FIELD}[{i}]", f.read()) for i, f in enumerate(files)]


def _from_json(request: Request) -> list[tuple[str, bytes]]:
    body = request.get_json(silent=True)
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list):
        raise BadRequest('JSON body must be {"instances": [{"b64": "<base64 image>"}, ...]}')
    raw = []
    for i, instance in enumerate(instances):
        name = f"instances[{i}]"
        encoded = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(encoded, str):
            raise BadRequest(f'{name} must be an object {{"b64": "<base64 image>"}}')
        try:
            raw.append((name, base64.b64decode(encoded, validate=True)))
        except (binascii.Error, ValueError):
            raise InvalidImage(f"{name}: 'b64' is not valid base64") from None
    return raw

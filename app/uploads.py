"""Turn an HTTP request into checked image uploads, before any TensorFlow work.

Three forms are accepted: multipart/form-data (field ``image``, one or more files), a raw
body with ``Content-Type: image/*``, and JSON ``{"instances": [{"b64": "..."}]}``.

This module only takes the request apart; the inference core checks every upload
(``images.check_images``: header, limits, pixel budget, strict JPEG, first frames) for all
front doors alike.
"""

from __future__ import annotations

from flask import Request

from . import wire
from .errors import BadRequest, InvalidImage, UnsupportedMediaType
from .text import clip

FIELD = "image"


def read_uploads(request: Request) -> list[tuple[str, bytes]]:
    """All images of the request as ``(name, bytes)``, in upload order (the core checks them)."""
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        raw = _from_multipart(request)
    elif mimetype.startswith("image/"):
        raw = [("body", request.get_data(cache=False))]
    elif mimetype == "application/json":
        raw = _from_json(request)
    else:
        shown = clip(mimetype) or "none"
        raise UnsupportedMediaType(
            f"unsupported Content-Type '{shown}': send multipart/form-data with field 'image', "
            "a raw image/* body, or application/json {\"instances\": [{\"b64\": ...}]}"
        )
    if not raw:
        raise BadRequest("no image in the request", code="no_image")
    return raw


def _from_multipart(request: Request) -> list[tuple[str, bytes]]:
    files = request.files.getlist(FIELD)
    if not files:
        others = sorted({name or "(no name)" for name in (*request.files, *request.form)})
        hint = f" (found fields: {clip(', '.join(others))})" if others else ""
        raise BadRequest(f"no file in form field '{FIELD}'{hint}", code="no_image")
    return [(f.filename or f"{FIELD}[{i}]", f.read()) for i, f in enumerate(files)]


def _from_json(request: Request) -> list[tuple[str, bytes]]:
    shape = 'JSON body must be {"instances": [{"b64": "<base64 image>"}, ...]}'
    try:
        body = wire.load_json(request.get_data(cache=False))  # counted first: JsonTooLarge is a 413
    except wire.BadJson as exc:
        raise BadRequest(f"body is not valid JSON ({exc}); {shape}") from None
    instances = body.get("instances") if isinstance(body, dict) else None
    if not isinstance(instances, list):
        raise BadRequest(shape)
    raw = []
    for i, instance in enumerate(instances):
        name = f"instances[{i}]"
        encoded = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(encoded, str):
            raise BadRequest(f'{name} must be an object {{"b64": "<base64 image>"}}')
        try:
            raw.append((name, wire.decode_base64(encoded)))
        except wire.BadBase64 as exc:
            raise InvalidImage(f"{name}: 'b64' is not valid base64 ({exc})") from None
    return raw

"""Errors as exceptions, turned into JSON HTTP answers in exactly one place.

Every error answer has the shape ``{"error": {"code": "...", "message": "..."}}``.

``ApiError`` subclasses carry their HTTP status and are raised by the HTTP layer. Domain
exceptions from the servable, registry and batcher know nothing of HTTP: ``app.kinds`` gives
each a kind and a code, and ``STATUS`` below is this door's kind → HTTP status table.
Anything else is a bug: logged with its traceback, answered with a plain 500 that leaks
nothing.

Under a borrowed protocol's prefix (``/v1`` TF Serving, ``/v2`` KServe v2) an error that no
blueprint handled (no route matched, a method not allowed, a bug) answers in that protocol's
shape, ``{"error": "<message>"}``, which both share: a TF Serving or Triton client parses it.
Under ``/v1`` a path no route takes, or a method it does not allow, is TF Serving's HTTP
handler's 400 ``Malformed request: GET /v1/foo``.
"""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from . import observe
from .kinds import DOMAIN, Kind, describe
from .text import clip

log = logging.getLogger(__name__)


class ApiError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = headers or {}


class BadRequest(ApiError):
    status_code = 400
    code = "bad_request"


class InvalidImage(ApiError):
    status_code = 400
    code = "invalid_image"


class UnsupportedMediaType(ApiError):
    status_code = 415
    code = "unsupported_media_type"


class ServiceUnavailable(ApiError):
    status_code = 503
    code = "unavailable"


# Our REST API: kind -> HTTP status.
STATUS: dict[Kind, int] = {
    Kind.INVALID: 400,
    Kind.TOO_LARGE: 413,
    Kind.UNSUPPORTED: 415,
    Kind.NOT_FOUND: 404,
    Kind.OVERLOADED: 503,
    Kind.UNAVAILABLE: 503,
    Kind.DEADLINE: 504,
    Kind.INTERNAL: 500,
}


PROTOCOL_PREFIXES = ("/v1", "/v2")  # TF Serving REST, KServe v2 REST: errors are {"error": "<message>"}


def under_protocol_prefix(path: str) -> bool:
    """Whether ``path`` is a borrowed protocol's, as a client sees it (leading slashes merged)."""
    path = "/" + path.lstrip("/")
    return any(path == prefix or path.startswith(prefix + "/") for prefix in PROTOCOL_PREFIXES)


def _under_tfserving(path: str) -> bool:
    path = "/" + path.lstrip("/")
    return path == "/v1" or path.startswith("/v1/")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> ResponseReturnValue:
    if under_protocol_prefix(request.path):
        observe.current().error_code = code  # counted as our own errors are (app.observe)
        return jsonify(error=message), status, headers or {}
    return jsonify(error={"code": code, "message": message}), status, headers or {}


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> ResponseReturnValue:
        return error_response(exc.status_code, exc.code, exc.message, exc.headers)

    for exc_type in DOMAIN:
        app.register_error_handler(exc_type, _domain_error)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> ResponseReturnValue:
        code = (exc.name or "error").lower().replace(" ", "_")
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            code, message = _too_large()
        if status in (404, 405) and _under_tfserving(request.path):
            status, code, message = 400, "malformed_request", f"Malformed request: {request.method} {clip(request.path)}"
        return error_response(status, code, message)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> ResponseReturnValue:
        log.exception("unhandled error")
        return error_response(500, "internal", "internal server error")


def _too_large() -> tuple[str, str]:
    """Werkzeug raises the same 413 for a long body and for a form with too many parts."""
    limit = request.max_content_length
    if request.content_length is None or limit is None or request.content_length <= limit:
        return "too_many_parts", (
            f"the form has more than {request.max_form_parts} parts or a text field over "
            f"{request.max_form_memory_size} bytes; send at most max_images_per_request files in field 'image'"
        )
    return "payload_too_large", f"request body is {request.content_length} bytes; the limit is {limit} (max_body_bytes)"


def _domain_error(exc: BaseException) -> ResponseReturnValue:
    described = describe(exc)
    assert described is not None  # registered for DOMAIN's types only
    status = STATUS[described.kind]
    if status == 500:  # a server fault; 503/504 are load, not bugs
        log.error("%s: %s", described.code, exc)
    return error_response(status, described.code, str(exc), {"Retry-After": "1"} if described.retry else None)

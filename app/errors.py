"""Errors as exceptions, turned into JSON HTTP answers in exactly one place.

Every error answer has the shape ``{"error": {"code": "...", "message": "..."}}``.

``ApiError`` subclasses carry their HTTP status and are raised by the HTTP layer. Domain
exceptions from the servable, registry and batcher know nothing of HTTP; ``_DOMAIN`` below
maps them to a status and code. Anything else is a bug: logged with its traceback, answered
with a plain 500 that leaks nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from app import images
from app.batching import BatcherClosed, DeadlineExceeded, QueueFull
from app.registry import BadModelSelection, ModelNotFound, ModelUnavailable, NoModels, VersionNotFound
from app.servable import ModelRunError, UndecodableImage

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


# Domain exception -> (status, code, extra headers).
_DOMAIN: dict[type[BaseException], tuple[int, str, dict[str, str]]] = {
    BadModelSelection: (400, "bad_model_selection", {}),
    ModelNotFound: (404, "model_not_found", {}),
    VersionNotFound: (404, "version_not_found", {}),
    ModelUnavailable: (503, "model_unavailable", {"Retry-After": "1"}),
    NoModels: (503, "no_models", {}),
    UndecodableImage: (400, "invalid_image", {}),
    images.EmptyImage: (400, "empty_image", {}),
    images.NotAnImage: (400, "invalid_image", {}),
    images.CorruptImage: (400, "invalid_image", {}),
    images.UnsupportedFormat: (415, "unsupported_image_format", {}),
    images.ImageTooLarge: (413, "image_too_large", {}),
    images.TooManyImages: (413, "too_many_images", {}),
    images.RequestTooLarge: (413, "request_too_large", {}),
    images.DecodeBusy: (503, "overloaded", {"Retry-After": "1"}),
    QueueFull: (503, "overloaded", {"Retry-After": "1"}),
    DeadlineExceeded: (504, "deadline_exceeded", {}),
    BatcherClosed: (503, "unavailable", {"Retry-After": "1"}),
    ModelRunError: (500, "model_error", {}),
}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> ResponseReturnValue:
    return jsonify(error={"code": code, "message": message}), status, headers or {}


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> ResponseReturnValue:
        return error_response(exc.status_code, exc.code, exc.message, exc.headers)

    for exc_type, (status, code, headers) in _DOMAIN.items():
        app.register_error_handler(exc_type, _domain_handler(status, code, headers))

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> ResponseReturnValue:
        code = (exc.name or "error").lower().replace(" ", "_")
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            code, message = _too_large()
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


def _domain_handler(status: int, code: str, headers: dict[str, str]) -> Any:
    def handle(exc: BaseException) -> ResponseReturnValue:
        if status == 500:  # a server fault; 503/504 are load, not bugs
            log.error("%s: %s", code, exc)
        return error_response(status, code, str(exc), headers)

    return handle

"""What waitress answers itself, in the app's JSON error shape.

waitress answers some requests before the app sees them: a body over ``max_body_bytes``
(413), headers over ``max_header_bytes`` (431), malformed HTTP (400), transfer codings it does
not implement (501), and, from ``app/http_server.py``, a client cut off by its deadline (408),
an HTTP version other than 1.0/1.1 (505) and a request the shutdown's grace period cut short
(503). waitress's own answers are plain text; here every error a client gets has the app's
shape, ``{"error": {"code": ..., "message": ...}}`` (``app/errors.py``), and counts in
``graphserve_errors_total`` as the app's own errors do. ``JsonErrorTask`` replaces waitress's
``ErrorTask`` (it is ``Channel.error_task_class``); the waitress internals it uses are listed
in ``app/waitress_internals.py``.
"""

from __future__ import annotations

import json

from waitress.task import ErrorTask
from waitress.utilities import Error as WaitressError

from .config import Settings

MESSAGE_LIMIT = 200  # characters of a client's own bytes echoed back in an error message


class RequestTimeout(WaitressError):
    code = 408
    reason = "Request Timeout"


class ShuttingDown(WaitressError):
    code = 503
    reason = "Service Unavailable"


class VersionNotSupported(WaitressError):
    code = 505
    reason = "HTTP Version Not Supported"


_CODES = {400: "bad_request", 408: "request_timeout", 413: "payload_too_large", 431: "headers_too_large",
          500: "internal", 501: "not_implemented", 503: "unavailable", 505: "http_version_not_supported"}


def _cut(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + "..."


class JsonErrorTask(ErrorTask):
    """waitress's ``ErrorTask``, answering in the app's JSON error shape (and counting it)."""

    def execute(self) -> None:
        error = self.request.error
        server = self.channel.server
        code = _CODES.get(error.code, "error")
        message = _error_message(error, server.settings)
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        if error.code == 503:
            self.response_headers.append(("Retry-After", "1"))
        self.set_close_on_finish()
        self.content_length = len(body)
        server.count_error(code)
        self.write(body)


def _error_message(error: WaitressError, settings: Settings) -> str:
    if error.code == 413:
        return f"request body is larger than the configured limit (max_body_bytes = {settings.max_body_bytes})"
    if error.code == 431:
        return ("request headers are larger than the configured limit "
                f"(max_header_bytes = {settings.max_header_bytes})")
    if error.code == 400:
        return f"malformed HTTP request: {_cut(str(error.body))}"
    return _cut(str(error.body))

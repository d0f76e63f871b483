"""Admin endpoints: ``POST /admin/reload``. They exist only when ``admin_token`` is set
(``GRAPHSERVE_ADMIN_TOKEN``); without one every ``/admin/...`` path answers 404
``admin_disabled``, saying how to turn them on (a plain "not found" sent users hunting for a typo).

Each call needs ``Authorization: Bearer <token>``: 401 without it, 403 with a wrong one
(compared in constant time). ``check_token`` is that check for every door that takes the token
(the KServe v2 repository API's load and unload, over REST and gRPC)::

    curl -X POST -H "Authorization: Bearer $GRAPHSERVE_ADMIN_TOKEN" http://127.0.0.1:8080/admin/reload

The answer (200) says what the reload did::

    {"loaded": [{"model": "m", "version": 3}], "unloaded": [{"model": "m", "version": 1}],
     "refused": [{"model": "m", "version": 4, "reason": "..."}],
     "changed": [{"model": "m", "version": 2, "action": "kept", "reason": "..."}], "seconds": 1.2}

It never holds a server thread longer than ``reload_wait_s``: past it, 503 ``reload_running``
(the round carries on; ``GET /models`` shows its outcome). Concurrent calls share one round.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue

from .config import Settings
from .errors import ApiError
from .services import current

bp = Blueprint("admin", __name__, url_prefix="/admin")


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class ReloadRunning(ApiError):
    status_code = 503
    code = "reload_running"


class AdminDisabled(ApiError):
    status_code = 404
    code = "admin_disabled"


def init_app(app: Flask, settings: Settings) -> None:
    if settings.admin_token:
        app.register_blueprint(bp)
        return

    message = disabled_message(settings)

    def disabled(rest: str = "") -> ResponseReturnValue:
        raise AdminDisabled(message)

    for rule in ("/admin", "/admin/", "/admin/<path:rest>"):
        app.add_url_rule(rule, "admin_disabled", disabled, methods=["GET", "POST", "PUT", "DELETE", "PATCH"],
                         strict_slashes=False)


def disabled_message(settings: Settings) -> str:
    """What an admin call answers while no token is set: how to turn the endpoints on."""
    polling = (f"new versions in the graphs folder are loaded without it: it is polled every "
               f"{settings.poll_interval_s:g} s" if settings.poll_interval_s > 0
               else "polling the graphs folder is off too: --poll-interval-s N turns it on")
    return ("the admin endpoints are off: start the server with GRAPHSERVE_ADMIN_TOKEN=<token> in its "
            f"environment, then send 'Authorization: Bearer <token>' ({polling})")


def check_token(authorization: str, settings: Settings) -> None:
    """The admin check of every door: ``AdminDisabled`` while no token is set, ``Unauthorized``
    without ``Bearer <token>``, ``Forbidden`` with a wrong one (compared in constant time).
    ``authorization`` is the HTTP header (or the gRPC ``authorization`` metadata) as sent."""
    expected = settings.admin_token
    if not expected:
        raise AdminDisabled(disabled_message(settings))
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "admin endpoints need 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    if not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Forbidden("wrong admin token")


@bp.before_request
def _check_token() -> None:
    check_token(request.headers.get("Authorization", ""), current().settings)


@bp.post("/reload")
def reload() -> ResponseReturnValue:
    """Re-read graphs/ and every versions.json; load, switch, drain and unload; say what happened."""
    services = current()
    wait = services.settings.reload_wait_s
    try:
        report = services.reconciler.reload(wait)
    except TimeoutError:
        raise ReloadRunning(f"the reload is still running after {wait:g} s (reload_wait_s); it carries on: "
                            "GET /models shows each version's state", headers={"Retry-After": "5"}) from None
    return jsonify(report.to_json())

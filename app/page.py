"""``GET /``: a small web page to try the models, served by the app itself.

The page is static (``app/static``: one HTML file, one script, one stylesheet, no build
step) and talks to the service through the public API only: ``GET /models`` for the model
list, ``POST /image_classification`` to classify, ``GET /stats`` for the live panel. So it
shows what any client would see, errors included, and needs nothing the API does not offer.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, jsonify, request, send_from_directory
from flask.typing import ResponseReturnValue

STATIC = Path(__file__).parent / "static"
# served under /ui/, nothing else in the folder is; the types are fixed here, not guessed from
# the host's mime.types, because nosniff makes a browser refuse a script with the wrong one
ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}
ASSET_MAX_AGE_S = 300  # brief: a new release shows within minutes even without a reload
# Everything the page loads comes from this origin; no inline script or style, so a string
# from the server can never run as code even if it slipped past textContent.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

bp = Blueprint("page", __name__)


def _harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.get("/")
def index() -> ResponseReturnValue:
    if _wants_json():  # KServe v1's liveness probe: GET / answers {"status": "alive"}
        response = jsonify(status="alive")
        response.headers["Vary"] = "Accept"
        return response
    # max_age=0 with an ETag: the browser revalidates the HTML each time (a 304 is cheap), so
    # it always names the assets of the running release.
    response = send_from_directory(STATIC, "index.html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Vary"] = "Accept"
    return _harden(response)


def _wants_json() -> bool:
    """``Accept`` prefers JSON to HTML (``*/*`` and browsers get the page)."""
    accept = request.accept_mimetypes
    return accept.quality("application/json") > accept.quality("text/html") or (
        accept.best_match(["text/html", "application/json"]) == "application/json")


@bp.get("/ui/<name>")
def asset(name: str) -> ResponseReturnValue:
    if name not in ASSETS:
        abort(404)
    return _harden(send_from_directory(STATIC, name, mimetype=ASSETS[name], max_age=ASSET_MAX_AGE_S))

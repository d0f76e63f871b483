"""graphserve: serve TensorFlow image classifiers from frozen graphs, several side by side.

``create_app`` is the application factory. ``graphserve serve`` (``python -m app`` in the
checkout) runs it in our hardened waitress server (``app/lifecycle.py``), with the deadlines,
the SIGTERM drain, gRPC and JSON errors; plain ``waitress-serve --call`` would run it without
them. Tests call ``create_app({"GRAPHS_DIR": tmp_path})``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .config import Settings

if TYPE_CHECKING:  # Flask is imported by create_app, so the core (app.inference) imports without it
    from flask import Flask


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings, error handlers, every model loaded and warm, the services
    object (``app.services.services_of(app)``), routes."""
    from .memory import limit_malloc_arenas

    limit_malloc_arenas()  # before TensorFlow and the request threads allocate
    from flask import Flask

    from . import admin, errors, observe, views  # TensorFlow loads here, not on `import app`
    from .services import EXTENSION, Services

    settings = Settings.from_env().replace(test_config or {})
    app = Flask(__name__, static_folder=None)  # app/static is served by app/page.py only
    # No 308 redirects with an HTML body: "//" and a decoded "%2F" reach the routes as they are,
    # and each door answers them in its own shape (a 400 or 404).
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["MAX_FORM_PARTS"] = settings.max_images_per_request + 16  # files plus a few fields
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep models in the order asked
    errors.init_app(app)
    observe.init_app(app)  # every request of every blueprint: counted, one log line
    app.extensions[EXTENSION] = Services.start(settings)  # the models load here
    app.register_blueprint(views.bp)
    from . import page

    app.register_blueprint(page.bp)  # GET /: the web page (app/static), over the public API
    from .kserve import rest as kserve_rest

    app.register_blueprint(kserve_rest.bp)  # KServe v2 REST: /v2/...
    from .tfserving import rest as tfserving_rest

    app.register_blueprint(tfserving_rest.bp)  # TF Serving REST: /v1/models/...
    admin.init_app(app, settings)  # only when an admin token is set
    return app

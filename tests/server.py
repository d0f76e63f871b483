"""Run the app under the service's own server (``app/lifecycle.py``) on 127.0.0.1 and a free port."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from flask import Flask

from app.lifecycle import GraphServer, build_server
from app.services import services_of


@contextlib.contextmanager
def serving(app: Flask, **overrides: Any) -> Iterator[GraphServer]:
    """The running server (``server.port``; ``server.shutdown()`` drains it); settings may be overridden."""
    settings = services_of(app).settings.replace(overrides)
    server = build_server(app, settings, host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, kwargs={"close_models": False}, name="graphserve-test", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown("test finished")
        server.shutdown("test finished")  # a second call: do not wait out a grace period
        thread.join(timeout=10)
        services_of(app).draining.clear()


@contextlib.contextmanager
def running(app: Flask, threads: int = 16, **overrides: Any) -> Iterator[str]:
    with serving(app, threads=threads, **overrides) as server:
        yield f"http://127.0.0.1:{server.port}"

"""Run the app under a real waitress server on 127.0.0.1 and a free port, for a test's lifetime."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import waitress
from flask import Flask


@contextlib.contextmanager
def running(app: Flask, threads: int = 16) -> Iterator[str]:
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads)
    thread = threading.Thread(target=server.run, name="waitress-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        server.close()
        thread.join(timeout=5)

"""Run the service with waitress: ``python -m app --host 127.0.0.1 --port 8080 --graphs-dir graphs``.

The same as ``graphserve serve`` (one implementation, in ``app/cli.py``). Every flag is
optional and also settable as ``GRAPHSERVE_<NAME>`` in the environment (flags win). Flask's
debug server is never used: ``app/lifecycle.py`` runs waitress (``app/http_server.py``), and SIGTERM or SIGINT drain the
requests in flight before the process exits 0.
"""

from __future__ import annotations

import sys

from .cli import serve

if __name__ == "__main__":
    sys.exit(serve(prog="python -m app"))

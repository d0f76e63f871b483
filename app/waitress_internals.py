"""The waitress internals the HTTP server relies on, and the check that they are still there.

waitress's public API (``serve``, ``create_server``, ``Adjustments``) cannot give each request a
deadline, answer its own errors in JSON, accept more than one connection per loop turn, serve
sockets bound before the models loaded, or drain on SIGTERM. ``app/http_server.py`` (with
``app/http_errors.py``) does these by subclassing waitress's connection, task and server
classes and reading their private state; ``app/lifecycle.py`` turns waitress's loop through it.
None of that is a promise waitress makes, so ``check_waitress_internals()`` verifies every piece
when the server is built (``listen()`` calls it first, before any port is bound or model
loaded) and raises ``RuntimeError`` naming what changed and the installed waitress version. A
module or class that is gone already fails at import, naming itself; the check catches the
quiet changes, an attribute, method or parameter renamed or removed, which would otherwise
show up as an ``AttributeError`` in the middle of a drain, or as a deadline that never fires.

Checked against waitress ``CHECKED_WAITRESS_VERSION``, the pin in ``requirements.txt`` (a test
keeps the two equal). After an upgrade that fails the check: keep the old pin, or update
``app/http_server.py`` / ``app/http_errors.py``, this list and ``CHECKED_WAITRESS_VERSION``.

What is used, and why:

Connection: ``waitress.channel.HTTPChannel``, subclassed as ``Channel``
  ``__init__(server, sock, addr, adj, map)``  ``Channel`` starts its deadline clock, then calls it
  ``task_class``, ``error_task_class``       where ``Task`` and ``JsonErrorTask`` plug in
  ``parser_class``                           builds the 408/503 request answered from the loop thread
  ``request``                                the request still arriving: the sweep's deadlines apply to it
  ``requests``                               complete requests, queued or in service: busy, not idle
  ``requests_lock``                          taken to drop a half-received request that is cut off
  ``received(data)``                         wrapped: a later request's clock starts at its first byte
  ``service()``                              wrapped: 505 for other HTTP versions, requests in service
  ``total_outbufs_len``                      an answer is still being sent (flush, slow readers)
  ``will_close``, ``close_when_flushed``     close a connection now, or once its answer is sent
  ``last_activity``                          since when a client has not read its answer
  ``handle_close()``                         closes idle connections in the drain
  ``server``, ``adj`` (set in ``__init__``)  the tasks reach our ``Server`` and its settings
Request: ``waitress.parser.HTTPRequestParser``
  ``error``, ``version``                     set to answer 505/400/408/503 through the error task
  ``headers_finished``                       which deadline applies (headers, or the whole request)
  ``close()``                                frees a half-received request's body buffer
Tasks: ``waitress.task``
  ``ErrorTask.execute()``                    replaced: the JSON error body, counted in metrics
  ``WSGITask.build_response_header()``       wrapped: ``Connection: close`` while draining
  ``Task.write()``, ``wrote_header``         wrapped: a worker's first byte claims the answer (vs. a 503)
  ``Task(channel, request)``, ``service()``  the loop thread answers a cut-off client itself
  ``set_close_on_finish()``, ``status``,     how ``JsonErrorTask`` writes its answer
  ``response_headers``, ``content_length``
Errors: ``waitress.utilities.Error`` (``code``, ``reason``, ``body``): our 408/503/505 subclass it;
  ``waitress.channel.ClientDisconnected`` stops a worker writing what the loop answered 503.
Server: ``waitress.server.BaseWSGIServer`` (through ``TcpWSGIServer``), subclassed as ``Server``
  ``__init__(map, dispatcher, adj, sockinfo,  serve the sockets ``listen()`` bound before the models
  _sock, bind_socket)``                      loaded (waitress's ``create_server`` passes ``adj.sockets`` so)
  ``readable()``                             called every loop turn: the deadline sweep runs from it
  ``maintenance(now)``                       waitress's idle sweep, replaced by ``Server.sweep``
  ``handle_accept()`` (one per call),        accept up to 256 queued connections a turn, within
  ``accepting``, ``_map``                    ``connection_limit`` (``_map``: every open connection)
  ``active_channels``                        the sweep and the drain walk the connections
  ``trigger``, ``trigger._physical_pull()``  wake the loop from a signal handler (``pull_trigger()``
                                             takes a lock a signal handler must not wait on)
  ``pull_trigger()``                         wrapped: a wake-up after the loop closed is ignored
  ``effective_host``, ``effective_port``     the address actually bound (port 0 in tests)
Loop: ``waitress.wasyncore`` (waitress's copy of asyncore)
  ``poll2(timeout, map)``                    one loop turn (poll(), beyond 1024 descriptors)
  ``close_all(map)``                         closes every connection at the end
  ``dispatcher.close()``                     stops listening without closing the trigger pipe
                                             (``Server.close()`` would; the workers still wake it)
Workers: ``waitress.task.ThreadedTaskDispatcher``
  ``set_thread_count(n)``                    one pool of worker threads for every listening socket
  ``shutdown(cancel_pending, timeout)``      after the drain: queued requests cancelled, 1 s at most

``Adjustments`` options are waitress's documented settings and fail loudly by themselves (an
unknown one raises ``ValueError``), so they are not checked here.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from importlib import metadata
from typing import Any

log = logging.getLogger("graphserve.server")

CHECKED_WAITRESS_VERSION = "3.0.2"


def waitress_version() -> str:
    try:
        return metadata.version("waitress")
    except metadata.PackageNotFoundError:  # pragma: no cover - waitress imported from a source tree
        return "(unknown version)"


def check_waitress_internals() -> None:
    """Raise ``RuntimeError`` if any waitress internal listed above is missing or changed shape."""
    missing = missing_waitress_internals()
    version = waitress_version()
    if missing:
        raise RuntimeError(
            f"waitress {version} lacks internals the HTTP server relies on (checked against waitress "
            f"{CHECKED_WAITRESS_VERSION}): {'; '.join(missing)}. Install waitress=={CHECKED_WAITRESS_VERSION} "
            "(requirements.txt) or update app/http_server.py and app/http_errors.py (the internals they use are "
            "listed in app/waitress_internals.py)")
    if version != CHECKED_WAITRESS_VERSION:
        log.warning("waitress %s is not the version its internals were checked against (%s); the check passed",
                    version, CHECKED_WAITRESS_VERSION)


def missing_waitress_internals() -> list[str]:
    """What ``check_waitress_internals`` finds missing, one phrase each; empty when all is there."""
    from waitress import channel, parser, server, task, trigger, utilities, wasyncore

    missing: list[str] = []

    def attributes(owner: Any, *names: str) -> None:
        missing.extend(f"{_name(owner)}.{name}" for name in names if not hasattr(owner, name))

    def set_in_init(cls: Any, *names: str) -> None:
        """Instance attributes ``cls.__init__`` sets: read from its code, so no socket is needed."""
        code = getattr(cls.__init__, "__code__", None)
        used = set(code.co_names) if code is not None else set()
        missing.extend(f"{_name(cls)}.{name} (set by __init__)" for name in names if name not in used)

    def parameters(owner: Any, function: str, *names: str) -> None:
        try:
            known: Mapping[str, Any] = inspect.signature(getattr(owner, function)).parameters
        except (AttributeError, TypeError, ValueError):
            known = {}
        missing.extend(f"{_name(owner)}.{function}() parameter {name!r}" for name in names if name not in known)

    connection = channel.HTTPChannel
    attributes(connection, "task_class", "error_task_class", "parser_class", "request", "received", "service",
               "total_outbufs_len", "will_close", "close_when_flushed", "last_activity", "handle_close")
    set_in_init(connection, "requests", "requests_lock", "server", "adj")
    parameters(connection, "__init__", "server", "sock", "addr", "adj", "map")
    attributes(parser.HTTPRequestParser, "error", "version", "headers_finished", "close")

    attributes(task.Task, "service", "write", "wrote_header", "set_close_on_finish", "status", "content_length")
    set_in_init(task.Task, "channel", "request", "response_headers")
    parameters(task.Task, "__init__", "channel", "request")
    attributes(task.ErrorTask, "execute")
    attributes(task.WSGITask, "build_response_header")
    attributes(utilities.Error, "code", "reason")
    set_in_init(utilities.Error, "body")
    attributes(channel, "ClientDisconnected")

    base = server.BaseWSGIServer
    attributes(base, "readable", "maintenance", "handle_accept", "accepting", "pull_trigger")
    set_in_init(base, "trigger", "active_channels", "effective_host", "effective_port")
    parameters(base, "__init__", "map", "dispatcher", "adj", "sockinfo", "_sock", "bind_socket")
    parameters(base, "maintenance", "now")
    attributes(trigger.trigger, "_physical_pull")

    attributes(wasyncore, "poll2", "close_all")
    attributes(wasyncore.dispatcher, "close")
    set_in_init(wasyncore.dispatcher, "_map")
    parameters(wasyncore, "poll2", "timeout", "map")
    attributes(task.ThreadedTaskDispatcher, "set_thread_count", "shutdown")
    parameters(task.ThreadedTaskDispatcher, "shutdown", "cancel_pending", "timeout")
    return missing


def _name(owner: Any) -> str:
    """``waitress.channel.HTTPChannel``, ``waitress.wasyncore.poll2``, ``waitress.wasyncore``."""
    qualname = getattr(owner, "__qualname__", None)
    return f"{owner.__module__}.{qualname}" if qualname else owner.__name__

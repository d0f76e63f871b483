"""One way every request is observed, whatever door it came in by: metrics and one log line.

HTTP (every blueprint: our REST API, TF Serving REST, KServe v2 REST, the page, admin):
``init_app`` registers one before/after hook. A door tells it what the request did through
``current()``, one ``Observation`` per request (the models that answered, the image count, the
stage timings, and an error code when the answer's JSON does not carry one, as TF Serving's
and v2's string errors do not)::

    observe.current().models = selected.models

gRPC (TF Serving and KServe v2 servicers): ``rpc(...)`` runs the call, parsing of the
request bytes included (``app/grpc_server.py`` wraps every method in it), turns an exception
into the status the door's ``answer`` gives it (a bug is logged with its traceback and answered
INTERNAL), counts it and logs its line, then aborts the call with that status (its message
clipped to ``MAX_DETAILS`` characters: it travels in the trailers). A servicer method tells it
what the call did through ``current_rpc()``, as HTTP doors do through ``current()``.

The log line (logger ``graphserve.request``, level ``log_requests``; health and metrics
probes are not logged)::

    method=POST path=/image_classification status=200 models=digits8 images=1 ms=4.21 checks_ms=0.31 ...
    method=gRPC path=/tensorflow.serving.PredictionService/Predict status=OK models=digits8 images=1 ms=5.02
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from flask import Flask, Response, current_app, g, request

from . import wire
from .services import Services, services_of
from .text import clip

log = logging.getLogger(__name__)
request_log = logging.getLogger("graphserve.request")
UNLOGGED = ("/metrics", "/healthz", "/readyz")
T = TypeVar("T")
# A door's translation of an exception: (gRPC code, HTTP status its protocol gives it, message); None: a bug.
Answer = Callable[[BaseException], "tuple[grpc.StatusCode, int, str] | None"]
MAX_DETAILS = 1024  # a gRPC status message's characters: it goes back in HTTP/2 trailers, whose size peers cap
_rpc_observation: ContextVar[Observation | None] = ContextVar("graphserve_rpc_observation", default=None)


@dataclass
class Observation:
    """What one request did, filled in by the door that served it."""

    started: float = field(default_factory=time.perf_counter)
    arrived: float = field(default_factory=time.monotonic)  # the clock of deadlines (``http_deadline``)
    models: list[tuple[str, int]] = field(default_factory=list)  # (model, version) that answered
    images: int = 0
    timing: list[tuple[str, float]] = field(default_factory=list)  # (stage, seconds), also Server-Timing
    error_code: str | None = None  # when the error body has no {"code": ...}


def current() -> Observation:
    """This HTTP request's observation (made by the before-request hook)."""
    observation = g.get("observation")
    if observation is None:
        observation = g.observation = Observation()
    return observation


def init_app(app: Flask) -> None:
    app.before_request(_start)
    app.after_request(_record)


def _start() -> None:
    g.observation = Observation()


def _record(response: Response) -> Response:
    """Count every answer and log one line per request (logfmt), errors included."""
    observation = current()
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    error_code = None
    if response.status_code >= 400 and response.is_json:
        error = (response.get_json(silent=True) or {}).get("error")
        error_code = error.get("code") if isinstance(error, dict) else observation.error_code
    services = services_of(current_app)
    services.metrics.observe_request(endpoint, response.status_code, observation.models, error_code)
    level = services.settings.request_log_level
    if level is not None and endpoint not in UNLOGGED and request_log.isEnabledFor(level):
        timing = " ".join(f"{name}_ms={value * 1000:.2f}" for name, value in observation.timing)
        request_log.log(
            level,
            "method=%s path=%s status=%d models=%s images=%d ms=%.2f%s%s",
            request.method, request.path, response.status_code,
            ",".join(name for name, _ in observation.models) or "-", observation.images,
            (time.perf_counter() - observation.started) * 1000,
            f" error={error_code}" if error_code else "", f" {timing}" if timing else "",
        )
    return response


def server_timing(timing: list[tuple[str, float]]) -> str:
    """The ``Server-Timing`` header for (stage, seconds) pairs: browsers and ``curl -v`` show it."""
    return ", ".join(f"{name};dur={value * 1000:.3f}" for name, value in timing)


def current_rpc() -> Observation:
    """This gRPC call's observation (``rpc`` makes it; outside a call, a throwaway one)."""
    observation = _rpc_observation.get()
    return Observation() if observation is None else observation


def rpc(services: Services, protocol: str, path: str, context: grpc.ServicerContext, answer: Answer,
        run: Callable[[Observation], T]) -> T:
    """Run one gRPC call: ``run(observation)``, counted and logged; an error aborts the call
    with the status ``answer`` gives it. ``path`` is ``/package.Service/Method``."""
    observation = Observation()
    token = _rpc_observation.set(observation)
    code, status, message = grpc.StatusCode.OK, 200, ""
    try:
        return run(observation)
    except Exception as exc:  # noqa: BLE001 - every error becomes a status
        found = answer(exc)
        if found is None:
            log.exception("unhandled error in %s", path)
            code, status, message = grpc.StatusCode.INTERNAL, 500, "internal server error"
        else:
            code, status, message = found
            if status == 500:
                log.error("%s: %s", path, clip(message, MAX_DETAILS))
    finally:
        _rpc_observation.reset(token)
        ok = code is grpc.StatusCode.OK
        services.metrics.observe_rpc(protocol, path.rsplit("/", 1)[-1], code.name, status,
                                     observation.models, None if ok else code.name.lower())
        level = services.settings.request_log_level
        if level is not None and request_log.isEnabledFor(level):
            request_log.log(level, "method=gRPC path=%s status=%s models=%s images=%d ms=%.2f", path, code.name,
                            ",".join(name for name, _ in observation.models) or "-", observation.images,
                            (time.perf_counter() - observation.started) * 1000)
    context.abort(code, clip(message, MAX_DETAILS))
    raise AssertionError("unreachable")  # context.abort raises


def grpc_deadline(context: grpc.ServicerContext, timeout_s: float) -> float:
    """A gRPC call's deadline (monotonic): its own, when shorter than ``request_timeout_s``."""
    remaining: Any = context.time_remaining()
    return wire.deadline(timeout_s, remaining=remaining)


def http_deadline(timeout_s: float) -> float:
    """This HTTP request's deadline (monotonic): ``timeout_s`` after the app got it, on every door."""
    return wire.deadline(timeout_s, started=current().arrived)

"""The process's one gRPC server: every gRPC protocol (TF Serving, KServe v2) is a service on it.

``python -m app`` serves gRPC on ``settings.host:settings.grpc_port`` (``--grpc-port`` /
``GRAPHSERVE_GRPC_PORT``; default 8500, TF Serving's own gRPC port; 0: off) beside the HTTP
server: ``app/lifecycle.py``'s ``listen`` binds it with ``listen_grpc`` before the models load,
``GraphServer`` installs the services with ``install_services``, starts it in
``run()`` and stops it in the SIGTERM drain (``server.stop(grace)``: no new RPCs, the ones in
flight get the grace period).

Requests and responses are limited to ``settings.grpc_max_message_bytes`` (default 32 MiB,
the HTTP body limit; grpcio's own default is 4 MiB in): a larger one fails with
RESOURCE_EXHAUSTED. RPCs run on a thread pool of ``settings.threads`` workers, like waitress.

How a protocol adds itself: write ``install(server, services)`` in its own module; it calls
``add_servicer`` below with the wheel's ``add_*Servicer_to_server``, a servicer whose methods
are plain ``(request, context)`` ones, its protocol label and its error table; then add its
``module:function`` to ``SERVICES``. Nothing else here knows about any protocol::

    def install(server: grpc.Server, services: Services) -> None:
        add_servicer(server, prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
                     PredictionServicer(services), services=services, protocol=PROTOCOL, answer=_answer)

``add_servicer`` owns every method's deserialization, so no client bytes reach grpcio's own
parse: each handler takes the raw bytes, and the request message is parsed inside the counted
call (``app.observe.rpc``). Bytes that are not the method's message answer INVALID_ARGUMENT,
counted under the protocol and method and logged as the one request line (grpcio's default
would be INTERNAL "Exception deserializing request!", uncounted, with a traceback). A method
of the service the servicer does not implement answers UNIMPLEMENTED the same way; an unknown
method path stays grpcio's UNIMPLEMENTED.

Tests start one on an ephemeral port: ``server, port = start_grpc_server(app)``, then
``server.stop(None)``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import TYPE_CHECKING, Any

import grpc

from . import observe
from .config import Settings
from .layout import SERVICE

if TYPE_CHECKING:
    from flask import Flask

    from .services import Services

log = logging.getLogger("graphserve.grpc")

Installer = Callable[[grpc.Server, "Services"], None]

# One entry per gRPC protocol, "module:function"; each adds its servicers to the server. Imported
# by install_services only: their protos import TensorFlow, and binding comes before that.
SERVICES: list[str] = [
    f"{SERVICE}.tfserving.grpc:install",  # tensorflow.serving.PredictionService, tensorflow.serving.ModelService
    f"{SERVICE}.kserve.grpc:install",  # inference.GRPCInferenceService (KServe v2 / Open Inference Protocol)
]


class Undecodable(ValueError):
    """Request bytes that do not parse as the method's message: the client's error."""


class Unimplemented(Exception):
    """A method of the service that the servicer does not implement."""


def add_servicer(server: grpc.Server, add_to_server: Callable[[Any, Any], None], servicer: Any, *,
                 services: Services, protocol: str, answer: observe.Answer) -> None:
    """Add ``servicer`` as the wheel's ``add_to_server`` would, every method wrapped to parse its
    own request bytes inside ``observe.rpc`` (counted under ``protocol``, errors by ``answer``)."""
    add_to_server(servicer, _Owning(server, _Owner(services, protocol, answer)))


_HANDLERS = {  # (request streaming, response streaming) -> grpc's handler constructor
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class _Owner:
    """Turns a wheel's method handler into one that deserializes inside the counted call."""

    def __init__(self, services: Services, protocol: str, answer: observe.Answer) -> None:
        self.services, self.protocol, self.door_answer = services, protocol, answer

    def answer(self, exc: BaseException) -> tuple[grpc.StatusCode, int, str] | None:
        if isinstance(exc, Undecodable):
            return grpc.StatusCode.INVALID_ARGUMENT, 400, str(exc)
        if isinstance(exc, Unimplemented):
            return grpc.StatusCode.UNIMPLEMENTED, 501, str(exc)
        return self.door_answer(exc)

    def own(self, path: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kind = (handler.request_streaming, handler.response_streaming)
        behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
        if _from_wheel(behavior):  # the generated base class's stub: not implemented
            def refuse(request: Any, context: grpc.ServicerContext) -> Any:
                return observe.rpc(self.services, self.protocol, path, context, self.answer, _unimplemented(path))

            return _HANDLERS[kind](refuse, request_deserializer=None, response_serializer=handler.response_serializer)
        if kind != (False, False) or handler.unary_unary is None:
            return handler  # no streaming method is implemented; left as grpcio serves it
        method, parse = handler.unary_unary, handler.request_deserializer

        def call(raw: bytes, context: grpc.ServicerContext) -> Any:
            return observe.rpc(self.services, self.protocol, path, context, self.answer,
                               lambda observation: method(_parse(parse, raw, path), context))

        return grpc.unary_unary_rpc_method_handler(call, request_deserializer=None,
                                                   response_serializer=handler.response_serializer)


def _from_wheel(behavior: Any) -> bool:
    function = getattr(behavior, "__func__", behavior)
    return str(getattr(function, "__module__", "")).endswith("_pb2_grpc")


def _unimplemented(path: str) -> Callable[[observe.Observation], Any]:
    def run(observation: observe.Observation) -> Any:
        raise Unimplemented(f"method {path} is not implemented by this server")

    return run


def _parse(parse: Callable[[bytes], Any] | None, raw: bytes, path: str) -> Any:
    if parse is None:
        return raw
    try:
        return parse(raw)
    except Exception as exc:  # noqa: BLE001 - DecodeError, and whatever else a parser raises on bad bytes
        kind = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
        name = getattr(kind, "full_name", "request message")
        raise Undecodable(f"the request to {path} is not a valid {name} ({len(raw)} bytes): {exc}") from None


class _Generic(grpc.GenericRpcHandler):
    """A wheel's generic handler, its method handlers owned (made once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler, owner: _Owner) -> None:
        self.inner, self.owner = inner, owner
        self.owned: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        path: str = handler_call_details.method
        owned = self.owned.get(path)
        if owned is None:
            handler = self.inner.service(handler_call_details)
            if handler is None:
                return None  # an unknown method: grpcio answers UNIMPLEMENTED
            owned = self.owned[path] = self.owner.own(path, handler)
        return owned


class _Owning:
    """What a wheel's ``add_*Servicer_to_server`` sees as the server: it adds owned handlers."""

    def __init__(self, server: grpc.Server, owner: _Owner) -> None:
        self.server, self.owner = server, owner

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(tuple(_Generic(h, self.owner) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        owned = {name: self.owner.own(f"/{service}/{name}", h) for name, h in handlers.items()}
        self.server.add_registered_method_handlers(service, owned)


def new_grpc_server(settings: Settings) -> grpc.Server:
    """A gRPC server with no services yet, not bound, not started."""
    limit = settings.grpc_max_message_bytes
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0),  # a second server on a taken port fails instead of sharing it
        ],
    )


def install_services(server: grpc.Server, services: Services) -> None:
    """Every service of ``SERVICES``, on a server that has not started (bound or not)."""
    for entry in SERVICES:
        module, _, function = entry.partition(":")
        install: Installer = getattr(importlib.import_module(module), function)
        install(server, services)


def create_grpc_server(app: Flask, settings: Settings | None = None) -> grpc.Server:
    """A gRPC server for ``app``'s services with every service of ``SERVICES``; not bound, not started."""
    from .services import services_of

    services = services_of(app)
    server = new_grpc_server(settings or services.settings)
    install_services(server, services)
    return server


def bind(server: grpc.Server, host: str, port: int) -> int:
    """Listen on ``host:port`` (0: an ephemeral port) without TLS; return the port bound."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio >= 1.50 raises instead of returning 0
        raise OSError(f"cannot listen for gRPC on {address}: {exc}") from exc
    if not bound:
        raise OSError(f"cannot listen for gRPC on {address}")
    return bound


def listen_grpc(settings: Settings, *, host: str, port: int) -> tuple[grpc.Server, int] | None:
    """A server bound to ``host:port``, before any model loads (a taken port fails in
    seconds), and the port bound; None when the port is 0 (gRPC off). ``install_services``
    adds the services once the app exists."""
    if port == 0:
        return None
    server = new_grpc_server(settings)
    return server, bind(server, host, port)


def start_grpc_server(app: Flask, settings: Settings | None = None, *, host: str = "127.0.0.1",
                      port: int = 0) -> tuple[grpc.Server, int]:
    """Tests: a started server on ``host`` and an ephemeral port; ``server.stop(None)`` when done."""
    server = create_grpc_server(app, settings)
    bound = bind(server, host, port)
    server.start()
    return server, bound

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

How a protocol adds itself: write ``install(server, services)`` in its own module (it calls the
wheel's ``add_*Servicer_to_server(servicer, server)`` with a servicer that holds the services
object, ``app.services``), and
add its ``module:function`` to ``SERVICES`` below. Nothing else here knows about any protocol::

    def install(server: grpc.Server, services: Services) -> None:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(services), server)

Tests start one on an ephemeral port: ``server, port = start_grpc_server(app)``, then
``server.stop(None)``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING

import grpc

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

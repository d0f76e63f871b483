"""The process's one gRPC server: every gRPC protocol (TF Serving, KServe v2) is a service on it.

``python -m app`` serves gRPC on ``settings.host:settings.grpc_port`` (``--grpc-port`` /
``GRAPHSERVE_GRPC_PORT``; default 8500, TF Serving's own gRPC port; 0: off) beside the HTTP
server: ``app/server.py``'s ``GraphServer`` builds it with ``build_grpc_server``, starts it in
``run()`` and stops it in the SIGTERM drain (``server.stop(grace)``: no new RPCs, the ones in
flight get the grace period).

Requests and responses are limited to ``settings.grpc_max_message_bytes`` (default 32 MiB,
the HTTP body limit; grpcio's own default is 4 MiB in): a larger one fails with
RESOURCE_EXHAUSTED. RPCs run on a thread pool of ``settings.threads`` workers, like waitress.

How a protocol adds itself: write ``install(server, app)`` in its own module (it calls the
wheel's ``add_*Servicer_to_server(servicer, server)`` with a servicer that holds ``app``), and
add that function to ``SERVICES`` below. Nothing else here knows about any protocol::

    def install(server: grpc.Server, app: Flask) -> None:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(app), server)

Tests start one on an ephemeral port: ``server, port = start_grpc_server(app)``, then
``server.stop(None)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures

import grpc
from flask import Flask

from app.config import Settings
from app.kserve import grpc as kserve_grpc
from app.tfserving import grpc as tfserving_grpc

log = logging.getLogger("graphserve.grpc")

Installer = Callable[[grpc.Server, Flask], None]

# One entry per gRPC protocol; each adds its servicers to the server.
SERVICES: list[Installer] = [
    tfserving_grpc.install,  # tensorflow.serving.PredictionService, tensorflow.serving.ModelService
    kserve_grpc.install,  # inference.GRPCInferenceService (KServe v2 / Open Inference Protocol)
]


def create_grpc_server(app: Flask, settings: Settings | None = None) -> grpc.Server:
    """A gRPC server with every service of ``SERVICES`` installed; not bound, not started."""
    settings = settings or app.extensions["settings"]
    limit = settings.grpc_max_message_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0),  # a second server on a taken port fails instead of sharing it
        ],
    )
    for install in SERVICES:
        install(server, app)
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


def build_grpc_server(app: Flask, settings: Settings | None = None, *, host: str | None = None,
                      port: int | None = None) -> tuple[grpc.Server, int] | None:
    """The server bound to ``host:port`` (default ``settings.host:settings.grpc_port``) and that
    port, not started; None when the port is 0 (gRPC off)."""
    settings = settings or app.extensions["settings"]
    port = settings.grpc_port if port is None else port
    if port == 0:
        return None
    server = create_grpc_server(app, settings)
    return server, bind(server, settings.host if host is None else host, port)


def start_grpc_server(app: Flask, settings: Settings | None = None, *, host: str = "127.0.0.1",
                      port: int = 0) -> tuple[grpc.Server, int]:
    """Tests: a started server on ``host`` and an ephemeral port; ``server.stop(None)`` when done."""
    server = create_grpc_server(app, settings)
    bound = bind(server, host, port)
    server.start()
    return server, bound

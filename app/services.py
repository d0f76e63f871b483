"""The one services object: what every front door and the process lifecycle share.

Built once at start-up (``Services.start``: the models are loaded and warm when it returns)
and handed to whoever needs it: the Flask app keeps it at ``app.extensions["graphserve"]``
(``services_of(app)``, ``current()`` inside a request), and the gRPC servicers and the
HTTP server take it directly, so nothing finds shared state by a string key or through the
web framework::

    services = Services.start(Settings(graphs_dir="graphs"))
    with services.core.select("digits8") as selected:
        ...
    services.close(timeout=5)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import memory
from .config import Settings
from .engines import warm_up_runtime
from .inference import InferenceCore
from .metrics import Metrics
from .reconcile import Reconciler
from .registry import ModelRegistry

if TYPE_CHECKING:
    from flask import Flask

EXTENSION = "graphserve"


@dataclass
class Services:
    settings: Settings
    registry: ModelRegistry  # what is served; requests borrow handles from it
    reconciler: Reconciler  # start-up load, reload, polling
    core: InferenceCore  # the protocol-free inference every door calls
    metrics: Metrics
    draining: threading.Event = field(default_factory=threading.Event)  # set on SIGTERM: /readyz says 503

    @classmethod
    def start(cls, settings: Settings) -> Services:
        """Load every wanted version (strict unless ``strict_startup`` is off), start polling."""
        metrics = Metrics()
        registry = ModelRegistry(settings)
        reconciler = Reconciler(registry, settings, on_batch=metrics.observe_batch)
        reconciler.residency.on_load = metrics.observe_load
        if reconciler.residency.limited:  # models are measured for the budget: the runtimes' own start-up first
            warm_up_runtime(settings.engine)
            memory.freeze_runtime()  # and versions that come and go stay collectable
        reconciler.load_all()
        memory.settle_heap()  # full collections would walk TensorFlow's objects: ~300 ms each
        reconciler.residency.prefill()  # with a memory budget: what fits, after the service is ready
        reconciler.start_polling(settings.poll_interval_s)
        metrics.watch(registry, reconciler.residency)
        core = InferenceCore(registry, settings=settings, on_model=metrics.observe_model)
        return cls(settings=settings, registry=registry, reconciler=reconciler, core=core, metrics=metrics)

    def ready(self) -> bool:
        """Some version answers and the process is not draining."""
        return not self.draining.is_set() and self.registry.ready()

    def close(self, timeout: float | None = 30.0) -> bool:
        """Drain and close every model (see ``ModelRegistry.close``)."""
        return self.registry.close(timeout)


def services_of(app: Flask | Any) -> Services:
    return app.extensions[EXTENSION]


def current() -> Services:
    """The services of the app handling this request."""
    from flask import current_app

    return services_of(current_app)

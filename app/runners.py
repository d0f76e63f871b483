"""Building a loaded version's runner: batched by the manifest's knobs, or direct.

Beside the registry rather than in it: the registry only serves and hands out handles;
what a handle runs with is decided once, here, when a version is loaded (``app.reconcile``).
"""

from __future__ import annotations

import functools

from .batching import Batcher, DirectRunner, Runner
from .config import Settings
from .registry import BatchObserver, ModelHandle
from .servable import Item, Row, Servable


def build_handle(servable: Servable, settings: Settings, on_batch: BatchObserver | None = None) -> ModelHandle:
    """The version's runner (a ``Batcher`` with the manifest's knobs, or a ``DirectRunner`` when
    batching is off) around its servable, as one handle."""
    bound = None
    if on_batch is not None:
        bound = functools.partial(on_batch, servable.name, servable.version)
    name = f"{servable.name}/{servable.version}"
    runner: Runner[Item, Row]
    if not settings.batching:
        runner = DirectRunner(servable.predict, name=name, on_batch=bound)
    else:
        knobs = servable.manifest.batching
        runner = Batcher(
            servable.predict,
            name=name,
            max_batch_size=knobs.max_batch_size,
            batch_timeout_s=knobs.batch_timeout_ms / 1000.0,
            max_queue=knobs.max_queue,
            workers=knobs.workers,
            on_batch=bound,
            allowed_batch_sizes=knobs.allowed_batch_sizes,
        )
    return ModelHandle(servable, runner)

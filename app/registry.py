"""The model registry: which servables are live, and how a request reaches each one.

``registry.init_app(app)`` discovers and loads every model under ``GRAPHS_DIR`` at start-up
and stores the registry at ``app.extensions["models"]``. A request borrows a ``ModelHandle``
with ``get``/``resolve``; the handle bundles the servable with its batcher (or a direct,
in-thread runner when batching is off). Handles are swapped atomically under a lock, so a
later reload can replace a model while requests that already hold the old handle finish.

Exceptions: ``ModelNotFound`` (unknown name), ``NoModels`` (nothing is being served).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Sequence

from flask import Flask

from app.batching import Batcher, Completed
from app.config import Settings
from app.discovery import discover
from app.memory import configure_gpus
from app.servable import Item, Row, Servable, SessionOptions, load_servable
from app.text import clip

log = logging.getLogger(__name__)

EXTENSION = "models"


class ModelNotFound(LookupError):
    pass


class NoModels(LookupError):
    pass


class BadModelSelection(ValueError):
    """``model=`` names no model at all (e.g. ``model=,``)."""


@dataclass
class ModelHandle:
    """What a request uses: a servable plus the way to run it (batched or direct)."""

    servable: Servable
    batcher: Batcher[Item, Row] | None
    state: str = "ready"
    on_batch: Callable[[int], None] | None = None  # direct mode's batch observer (the batcher has its own)

    @property
    def name(self) -> str:
        return self.servable.name

    def submit(self, items: Sequence[Item], *, deadline: float | None = None) -> list[Future[Completed[Row]]]:
        """One future per item. Without a batcher the work runs right here, in the caller's thread."""
        if self.batcher is not None:
            return self.batcher.submit(items, deadline=deadline)
        started = time.perf_counter()
        rows = self.servable.predict(items)
        elapsed = time.perf_counter() - started
        if self.on_batch is not None:
            self.on_batch(len(rows))
        futures: list[Future[Completed[Row]]] = []
        for row in rows:
            future: Future[Completed[Row]] = Future()
            if isinstance(row, BaseException):
                future.set_exception(row)  # as the batcher does: a bad item fails only itself
            else:
                future.set_result(Completed(value=row, queue_seconds=0.0, run_seconds=elapsed, batch_size=len(rows)))
            futures.append(future)
        return futures

    def queue_depth(self) -> int:
        return self.batcher.queue_depth() if self.batcher is not None else 0

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.servable.close()


BatchObserver = Callable[[str, int, int], None]  # (model, version, batch size)


class ModelRegistry:
    def __init__(self, settings: Settings, *, on_batch: BatchObserver | None = None) -> None:
        self._settings = settings
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._handles: dict[str, ModelHandle] = {}

    # -- lifecycle -------------------------------------------------------------------

    def load_all(self) -> None:
        """Load every discovered model; the first failure stops start-up (and unloads the rest)."""
        options = SessionOptions(
            intra_op_threads=self._settings.intra_op_threads,
            inter_op_threads=self._settings.inter_op_threads,
            gpu_memory_fraction=self._settings.gpu_memory_fraction or None,
        )
        configure_gpus()  # before any Session: memory growth, never grab the whole card
        try:
            for spec in discover(self._settings.graphs_dir):
                self.put(self._make_handle(load_servable(spec, options)))
        except BaseException:
            self.close()
            raise
        if not self._handles:
            log.warning("no models found under %s", self._settings.graphs_dir)

    def _make_handle(self, servable: Servable) -> ModelHandle:
        on_batch = None
        if self._on_batch is not None:
            observe, name, version = self._on_batch, servable.name, servable.version

            def on_batch(size: int, *_timings: float) -> None:
                observe(name, version, size)

        if not self._settings.batching:
            return ModelHandle(servable=servable, batcher=None, on_batch=on_batch)
        knobs = servable.manifest.batching
        batcher: Batcher[Item, Row] = Batcher(
            servable.predict,
            name=f"{servable.name}/{servable.version}",
            max_batch_size=knobs.max_batch_size,
            batch_timeout_s=knobs.batch_timeout_ms / 1000.0,
            max_queue=knobs.max_queue,
            workers=knobs.workers,
            on_batch=on_batch,
        )
        return ModelHandle(servable=servable, batcher=batcher)

    def put(self, handle: ModelHandle) -> None:
        """Serve ``handle`` under its name, atomically replacing (and then closing) any older one."""
        with self._lock:
            old = self._handles.get(handle.name)
            self._handles = {**self._handles, handle.name: handle}
        if old is not None:
            old.close()

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, {}
        for handle in handles.values():
            handle.close()

    # -- lookups (lock-free: the dict is replaced, never mutated) ----------------------

    def handles(self) -> list[ModelHandle]:
        return list(self._handles.values())

    def get(self, name: str) -> ModelHandle:
        handle = self._handles.get(name)
        if handle is None:
            known = ", ".join(sorted(self._handles)) or "none"
            raise ModelNotFound(f"unknown model '{clip(name)}' (served: {clip(known, 200)})")
        return handle

    def resolve(self, selector: str | None) -> list[ModelHandle]:
        """``None``/empty: the default model, or the only one, or all; ``all``; or ``a,b,c``."""
        handles = self._handles
        if not handles:
            raise NoModels("no models are being served")
        selector = (selector or "").strip() or self._settings.default_model
        if not selector or selector == "all":
            return [handles[name] for name in sorted(handles)]
        names = list(dict.fromkeys(part.strip() for part in selector.split(",") if part.strip()))
        if not names:
            raise BadModelSelection(f"model={clip(selector)!r} names no model; give one or more names, or 'all'")
        return [self.get(name) for name in names]

    def ready(self) -> bool:
        handles = self._handles
        return bool(handles) and all(h.state == "ready" for h in handles.values())


def init_app(app: Flask, settings: Settings, *, on_batch: BatchObserver | None = None) -> ModelRegistry:
    registry = ModelRegistry(settings, on_batch=on_batch)
    registry.load_all()
    app.extensions[EXTENSION] = registry
    return registry


def get_registry(app: Flask) -> ModelRegistry:
    return app.extensions[EXTENSION]

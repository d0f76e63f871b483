"""Building a loaded version's runner: batched by the manifest's knobs, or direct.

Beside the registry rather than in it: the registry only serves and hands out handles;
what a handle runs with is decided once, here, when a version is loaded (``app.reconcile``).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from .batching import Batcher, DirectRunner, Runner
from .config import Settings
from .registry import BatchObserver, ModelHandle, TensorRequest, TensorRow
from .servable import Servable

T = TypeVar("T")
R = TypeVar("R")


def build_handle(servable: Servable, settings: Settings, on_batch: BatchObserver | None = None) -> ModelHandle:
    """The version's runner (a ``Batcher`` with the manifest's knobs, or a ``DirectRunner`` when
    batching is off) around its servable, as one handle; its signatures' runners, the same way,
    are made on first use (``ModelHandle.signature_runner``)."""
    bound = None
    if on_batch is not None:
        bound = functools.partial(on_batch, servable.name, servable.version)
    name = f"{servable.name}/{servable.version}"

    def runner(predict: Callable[[list[T]], Sequence[R | BaseException]], name: str, *, batched: bool,
               pad: bool) -> Runner[T, R]:
        if not settings.batching or not batched:
            return DirectRunner(predict, name=name, on_batch=bound)
        knobs = servable.manifest.batching
        return Batcher(
            predict,
            name=name,
            max_batch_size=knobs.max_batch_size,
            batch_timeout_s=knobs.batch_timeout_ms / 1000.0,
            max_queue=knobs.max_queue,
            workers=knobs.workers,
            on_batch=bound,
            allowed_batch_sizes=knobs.allowed_batch_sizes if pad else None,
        )

    def signature_runner(signature: str) -> Runner[TensorRequest, TensorRow]:
        return runner(functools.partial(run_requests, servable, signature), f"{name}/{signature}",
                      batched=servable.signatures[signature].batched, pad=False)

    return ModelHandle(servable, runner(servable.predict, name, batched=True, pad=True), signature_runner)


def run_requests(servable: Servable, signature: str, requests: Sequence[TensorRequest]) -> list[TensorRow]:
    """One batch of a signature's requests: those with the same outputs asked and the same
    trailing shapes are stacked along dimension 0 and run in one ``sess.run``, then split back
    in order. A group that fails runs again request by request, so a bad one fails alone."""
    results: list[Any] = [None] * len(requests)
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    stackable = servable.signatures[signature].batched
    for i, request in enumerate(requests):
        key = (request.outputs, tuple((f.shape[1:], f.dtype) for f in request.feeds)) if stackable else (i,)
        groups[key].append(i)
    for members in groups.values():
        if len(members) > 1:
            try:
                rows = [len(requests[i].feeds[0]) for i in members]
                feeds = [np.concatenate(parts) for parts in zip(*(requests[i].feeds for i in members))]
                outputs = servable.run_signature(signature, feeds, requests[members[0]].outputs)
                if all(len(output) == sum(rows) for output in outputs):
                    bounds = np.cumsum(rows)[:-1]
                    split = [np.split(output, bounds) for output in outputs]
                    for j, i in enumerate(members):
                        results[i] = [parts[j] for parts in split]
                    continue
            except Exception:  # noqa: BLE001 - run each alone: the bad one fails by itself
                pass
        for i in members:
            try:
                results[i] = servable.run_signature(signature, requests[i].feeds, requests[i].outputs)
            except Exception as exc:  # noqa: BLE001 - this request's own error, answered to it alone
                results[i] = exc
    return results

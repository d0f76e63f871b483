"""Per-model dynamic batching: many request threads in, one ``predict(list)`` call out.

Request threads ``submit()`` items and get one ``concurrent.futures.Future`` per item.
Items wait in one FIFO queue (a deque under a ``threading.Condition``). Worker threads
take turns as the *collector*: the collector waits for the first item, then for more until
it has ``max_batch_size`` of them or ``batch_timeout_s`` has passed since the oldest one was
queued, takes them, hands the collector role to the next idle worker and calls ``predict``
on the batch. Row ``i`` of the result goes to item ``i``'s future; an exception instance in
a row fails only that item, and an exception raised by ``predict`` (or a result of the
wrong length) fails the whole batch. Every future is resolved, whatever happens.

The knobs, with TensorFlow Serving's names for them:

``max_batch_size``  (``max_batch_size``)       most items in one ``predict`` call.
``batch_timeout_s`` (``batch_timeout_micros``) longest wait for a batch to fill. On CPU a
                    zero timeout is often best: take what is queued and run at once, so a
                    batch forms naturally from what arrived while the previous one ran.
``max_queue``       (``max_enqueued_batches``, but counted in items) beyond this ``submit``
                    raises ``QueueFull`` instead of letting a backlog grow (HTTP 503).
``workers``         (``num_batch_threads``)    concurrent ``predict`` calls; TensorFlow
                    releases the GIL, so two can help even on a small CPU.
``allowed_batch_sizes`` (the same)           pad each batch up to the next of these sizes
                    (repeating its last item; the padding rows' results are dropped), so a
                    model compiled per input shape (XLA) sees only these shapes. The largest
                    must equal ``max_batch_size``. None: batches run as they form.

Keep the number of client (request) threads at about twice ``max_batch_size``.

``DirectRunner`` is the same interface without a queue (batching off): ``submit`` runs the
one ``predict`` call in the caller's thread. Both are ``Runner``s, so the registry and the
inference core never ask which one they have, and both report each ``predict`` call to the
same observer, ``on_batch(batch_size, queue_seconds, run_seconds)``.

Exceptions (all ``BatchingError``): ``QueueFull`` (refused at submit, nothing queued),
``DeadlineExceeded`` (waited past its deadline, never run), ``BatcherClosed`` (stopped).

Example::

    batcher = Batcher(servable.run, name="mobilenet/1", max_batch_size=32, batch_timeout_s=0)
    [future] = batcher.submit([image_bytes], deadline=time.monotonic() + 2.0)
    row = future.result().value
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
T_in = TypeVar("T_in", contravariant=True)  # a Runner only takes items in


class BatchingError(Exception):
    """Base class of the batcher's errors."""


class QueueFull(BatchingError):
    """``submit`` refused: the queue has no room for all of the items (none were queued)."""


class DeadlineExceeded(BatchingError):
    """The item was still queued after its deadline; it was not run."""


class BatcherClosed(BatchingError):
    """The batcher is closed: queued items fail with this and ``submit`` raises it."""


@dataclass(frozen=True, slots=True)
class Completed(Generic[R]):
    """One item's result and how it got there."""

    value: R  # this item's row of the predict result
    queue_seconds: float  # from submit to the start of the predict call that ran it
    run_seconds: float  # duration of that predict call
    batch_size: int  # number of items in that predict call


BatchObserver = Callable[[int, float, float], None]  # (batch size, longest queue wait, run seconds)


class Runner(Protocol[T_in, R]):
    """How a servable is run: ``Batcher`` (queued, batched) or ``DirectRunner`` (in the caller)."""

    name: str

    def submit(self, items: Sequence[T_in], *, deadline: float | None = None) -> list[Future[Completed[R]]]: ...

    def queue_depth(self) -> int: ...

    def close(self, timeout: float | None = 5.0) -> None: ...


class _Item(Generic[T, R]):
    __slots__ = ("value", "future", "enqueued", "deadline")

    def __init__(self, value: T, enqueued: float, deadline: float | None) -> None:
        self.value = value
        self.future: Future[Completed[R]] = Future()
        self.enqueued = enqueued
        self.deadline = deadline


class Batcher(Generic[T, R]):
    """Batches items for ``predict`` on ``workers`` daemon threads; see the module docstring.

    ``predict(items)`` returns one result per item, in order; an exception instance as a
    result fails that item only. ``on_batch(batch_size, max_queue_seconds, run_seconds)``
    is called after each ``predict`` call (for metrics); its exceptions are logged.
    ``clock`` gives the times used for deadlines, timings and the batch timeout.
    """

    def __init__(
        self,
        predict: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        name: str,
        max_batch_size: int = 32,
        batch_timeout_s: float = 0.001,
        max_queue: int = 256,
        workers: int = 1,
        clock: Callable[[], float] = time.monotonic,
        on_batch: BatchObserver | None = None,
        allowed_batch_sizes: Sequence[int] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or workers < 1:
            raise ValueError("max_batch_size, max_queue and workers must be >= 1")
        if allowed_batch_sizes is not None:
            allowed = list(allowed_batch_sizes)
            if not allowed or allowed[0] < 1 or any(a >= b for a, b in zip(allowed, allowed[1:])):
                raise ValueError(f"allowed_batch_sizes must be increasing sizes >= 1, got {allowed!r}")
            if allowed[-1] != max_batch_size:
                raise ValueError(
                    f"the largest allowed batch size ({allowed[-1]}) must equal max_batch_size ({max_batch_size})"
                )
        self.allowed_batch_sizes = None if allowed_batch_sizes is None else tuple(allowed_batch_sizes)
        if not batch_timeout_s >= 0:
            raise ValueError(f"batch_timeout_s must be >= 0, got {batch_timeout_s!r}")
        self.name = name
        self.max_batch_size = max_batch_size
        self.batch_timeout_s = batch_timeout_s
        self.max_queue = max_queue
        self._predict = predict
        self._on_batch = on_batch
        self._clock = clock
        self._queue: deque[_Item[T, R]] = deque()
        self._cond = threading.Condition(threading.Lock())  # guards _queue and _closed
        self._collector = threading.Lock()  # held by the one worker forming the next batch
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, items: Sequence[T], *, deadline: float | None = None) -> list[Future[Completed[R]]]:
        """Queue all of ``items`` or none (``QueueFull``); one future per item, in order.

        ``deadline`` is an absolute ``clock()`` time: an item not yet taken for a batch by
        then fails with ``DeadlineExceeded`` instead of being run.
        """
        now = self._clock()
        entries: list[_Item[T, R]] = [_Item(value, now, deadline) for value in items]
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"batcher {self.name} is closed")
            depth = len(self._queue)
            if depth + len(entries) > self.max_queue:
                raise QueueFull(
                    f"batcher {self.name}: {len(entries)} items do not fit "
                    f"({depth} of {self.max_queue} queued)"
                )
            self._queue.extend(entries)
            # Only the collector ever waits on _cond: for a first item (queue was empty) or
            # for a full batch. Other submits need not wake it.
            if depth == 0 or depth + len(entries) >= self.max_batch_size:
                self._cond.notify()
        return [entry.future for entry in entries]

    def queue_depth(self) -> int:
        """Items queued and not yet taken for a batch."""
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float | None = 5.0) -> None:
        """Fail queued items with ``BatcherClosed`` and stop the workers once the batches
        in hand are done (waiting up to ``timeout`` seconds for that). Idempotent."""
        with self._cond:
            already, self._closed = self._closed, True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        if not already:
            log.info("batcher %s closed, failing %d queued items", self.name, len(pending))
        _fail(pending, BatcherClosed, f"batcher {self.name} is closed")
        end = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(None if end is None else max(0.0, end - time.monotonic()))
                if thread.is_alive():
                    log.warning("batcher %s: %s still running after close", self.name, thread.name)

    # Worker side -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._collector:
                taken = self._take_batch()
            if taken is None:
                return
            batch, expired = taken
            if expired:
                _fail(expired, DeadlineExceeded, f"batcher {self.name}: deadline passed in queue")
            # A caller may have cancelled its future; from here on no one can.
            batch = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if batch:
                try:
                    self._run(batch)
                except BaseException:  # a bug here must not kill the worker or leak futures
                    log.exception("batcher %s: worker error", self.name)
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(BatchingError(f"{self.name}: internal error"))

    def _take_batch(self) -> tuple[list[_Item[T, R]], list[_Item[T, R]]] | None:
        """Wait for a batch and take it from the queue: (to run, expired); None if closed."""
        queue, cond, max_size = self._queue, self._cond, self.max_batch_size
        with cond:
            while not queue and not self._closed:
                cond.wait()
            if self.batch_timeout_s > 0 and queue:
                end = queue[0].enqueued + self.batch_timeout_s  # FIFO: [0] is the oldest
                while len(queue) < max_size and not self._closed:
                    remaining = end - self._clock()
                    if remaining <= 0 or not cond.wait(remaining):
                        break  # (a timed-out wait ends it even if clock() is frozen)
            if self._closed:
                return None  # close() has failed whatever was queued
            now = self._clock()
            batch: list[_Item[T, R]] = []
            expired: list[_Item[T, R]] = []
            while queue and len(batch) < max_size:
                item = queue.popleft()
                if item.deadline is not None and now > item.deadline:
                    expired.append(item)
                else:
                    batch.append(item)
            return batch, expired

    def _run(self, batch: list[_Item[T, R]]) -> None:
        """Call predict on the batch and resolve every future of it."""
        n = len(batch)
        clock = self._clock
        start = clock()
        results: Sequence[R | BaseException]
        values = [item.value for item in batch]
        padded = _padded_size_of(n, self.allowed_batch_sizes)
        values += [values[-1]] * (padded - n)  # padding rows: the last item again
        try:
            results = self._predict(values)
            if len(results) != padded:
                raise BatchingError(
                    f"batcher {self.name}: predict returned {len(results)} results "
                    f"for a batch of {padded}"
                )
            results = results[:n]  # the padding rows' results are dropped
        except BaseException as exc:  # noqa: BLE001 - fanned out to the batch's futures
            results = [exc] * n
        run_seconds = clock() - start
        for item, result in zip(batch, results):
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(Completed(result, start - item.enqueued, run_seconds, n))
        if self._on_batch is not None:
            try:
                # FIFO: the first item has waited longest.
                self._on_batch(n, start - batch[0].enqueued, run_seconds)
            except Exception:
                log.exception("batcher %s: on_batch hook failed", self.name)


def _padded_size_of(n: int, allowed: tuple[int, ...] | None) -> int:
    """The smallest allowed batch size >= ``n`` (``n`` itself when any size is allowed)."""
    if allowed is None:
        return n
    return next((size for size in allowed if size >= n), n)


def _fail(items: list[_Item[T, R]], error: type[BatchingError], message: str) -> None:
    """Fail queued (not yet running) items; one exception each, as waiters re-raise it."""
    for item in items:
        if item.future.set_running_or_notify_cancel():
            item.future.set_exception(error(message))


class DirectRunner(Generic[T, R]):
    """``Batcher``'s interface without the queue: ``submit`` calls ``predict(items)`` once,
    in the calling thread, and returns already-resolved futures (batching off).

    An item whose ``deadline`` has passed before the call fails with ``DeadlineExceeded``;
    ``on_batch`` sees the call as a batch with zero queue time.
    """

    def __init__(
        self,
        predict: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self._predict = predict
        self._clock = clock
        self._on_batch = on_batch
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, items: Sequence[T], *, deadline: float | None = None) -> list[Future[Completed[R]]]:
        if self._closed:
            raise BatcherClosed(f"runner {self.name} is closed")
        futures: list[Future[Completed[R]]] = [Future() for _ in items]
        start = self._clock()
        if deadline is not None and start > deadline:
            for future in futures:
                future.set_exception(DeadlineExceeded(f"runner {self.name}: deadline passed before the run"))
            return futures
        values = list(items)
        try:
            results: Sequence[R | BaseException] = self._predict(values)
            if len(results) != len(values):
                raise BatchingError(
                    f"runner {self.name}: predict returned {len(results)} results for a batch of {len(values)}"
                )
        except BaseException as exc:  # noqa: BLE001 - as the batcher: every item gets the error
            results = [exc] * len(values)
        run_seconds = self._clock() - start
        for future, result in zip(futures, results):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(Completed(result, 0.0, run_seconds, len(values)))
        if self._on_batch is not None and values:
            try:
                self._on_batch(len(values), 0.0, run_seconds)
            except Exception:
                log.exception("runner %s: on_batch hook failed", self.name)
        return futures

    def queue_depth(self) -> int:
        return 0

    def close(self, timeout: float | None = 5.0) -> None:
        """Refuse new work; a call in progress finishes in its own thread."""
        self._closed = True

"""The model registry (TF Serving's *manager*): which versions are served, and borrowing them.

The registry only serves and hands out handles. What it serves is published by
``app.reconcile`` (start-up, reload, polling), whose loaded versions run on the runners
``app.runners`` builds; ``app.services`` wires them together at start-up.

Versions are keyed by (model, version). Each loaded version is a ``ModelHandle``: its
servable, its runner (a ``Batcher``, or a ``DirectRunner`` when batching is off) and a count
of the requests holding it. A request borrows the handles it needs for as long as it runs::

    with registry.borrow("digits8", version_label="stable") as [handle]:
        futures = handle.submit(items, deadline=deadline)
        ...                                  # the version stays alive until the block ends

A new snapshot replaces the last atomically (``publish``); lookups never lock. A version
switched away from stops taking new requests at once and is closed only when its last
borrower has returned (*drain*). ``close(timeout)`` drains everything the same way:
graceful shutdown calls it.

Version states, as ``GET /models`` shows them: ``loading``, ``available``, ``unloading``,
``failed`` (with ``reason``), and ``unloaded``: known and wanted but not in memory (with a
memory budget, or unloaded through the repository API). A version that is ``on_demand``
(``unloaded`` or being loaded for a request) is loaded by the first request that needs it:
``acquire`` asks ``on_cold`` (``app.residency``) and waits, up to the request's deadline.

Exceptions (all ``LookupError``): ``ModelNotFound`` (unknown name), ``VersionNotFound`` (no
such version or label served), ``ModelUnavailable`` (the model has no available version),
``NoModels`` (nothing is being served), ``BadModelSelection`` (``model=,``: names nothing);
``ModelOverBudget`` (a ``ModelUnavailable``: the version alone is larger than the memory budget).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batching import Batcher, BatcherClosed, Completed, DeadlineExceeded, Runner
from .config import Settings
from .servable import Item, Row, Servable
from .text import clip

log = logging.getLogger(__name__)

LOADING, AVAILABLE, UNLOADING, FAILED, UNLOADED = "loading", "available", "unloading", "failed", "unloaded"


class ModelLookupError(LookupError):
    """A request's model cannot answer; ``model`` names it (as data: doors and logs need not
    parse the message)."""

    def __init__(self, message: str, *, model: str | None = None) -> None:
        super().__init__(message)
        self.model = model


class ModelNotFound(ModelLookupError):
    pass


class VersionNotFound(ModelLookupError):
    pass


class ModelUnavailable(ModelLookupError):
    pass


class ModelOverBudget(ModelUnavailable):
    """The version alone needs more memory than the whole budget: it is never loaded."""


class NoModels(LookupError):
    pass


class ColdVersion(Exception):
    """Internal to ``acquire``: the version asked for loads on demand (not an error for doors)."""

    def __init__(self, name: str, version: int) -> None:
        super().__init__(f"{name}/{version} is not loaded")
        self.name, self.version = name, version


# on_cold(model, version, deadline): load it (or wait for the load under way); raises a
# ModelLookupError subclass (or DeadlineExceeded) when it cannot be loaded in time
ColdLoader = Callable[[str, int, float], None]


class BadModelSelection(ValueError):
    """``model=`` names no model (``model=,``) or has an empty name (``model=a,``)."""


class BadVersion(BadModelSelection):
    """A version that is not a number, or a version and a label both (``app.wire`` parses them)."""


def one_of(version: object, label: str | None) -> None:
    """Every door's rule: a request names a version, a label, or neither (the newest)."""
    if version is not None and label is not None:
        raise BadVersion("give a version or a version label, not both")


# (model, version, batch size, longest queue wait s, run s): every runner's observer, model bound
BatchObserver = Callable[[str, int, int, float, float], None]


@dataclass(frozen=True, slots=True)
class TensorRequest:
    """One request to a signature: its arrays (in the signature's input order, checked) and the
    outputs it asked for. A batch item of the signature's runner (``app.runners.run_requests``)."""

    feeds: list[np.ndarray]
    outputs: tuple[str, ...]


TensorRow = list[np.ndarray]  # the outputs asked, in order (or an exception instance: that request failed)


class ModelHandle:
    """One loaded version: servable + runner + the count of requests holding it.

    ``acquire``/``release`` bracket a request; once ``retire`` is called, ``acquire`` fails
    (the registry then looks again and finds the version that replaced this one) and
    ``wait_idle`` returns when the last holder has released it.
    """

    def __init__(
        self, servable: Servable, runner: Runner[Item, Row],
        make_signature_runner: Callable[[str], Runner[TensorRequest, TensorRow]] | None = None,
    ) -> None:
        self.servable = servable
        self.runner = runner
        self._make_signature_runner = make_signature_runner
        self._signature_runners: dict[str, Runner[TensorRequest, TensorRow]] = {}
        self._runners_lock = threading.Lock()
        self.state = AVAILABLE
        self._refs = 0
        self._retired = False
        self._idle = threading.Condition(threading.Lock())
        self._closed = threading.Event()
        self.last_used = time.monotonic()  # least recently used goes first when room is needed
        self.resident = False  # never unloaded to make room (``versions.json`` "resident")
        self.on_closed: list[Callable[[], None]] = []  # e.g. its memory reservation, given back
        self.reservation: Any = None  # its bytes in the memory budget (``app.budget.Reservation``)

    @property
    def name(self) -> str:
        return self.servable.name

    @property
    def version(self) -> int:
        return self.servable.version

    @functools.cached_property
    def labels(self) -> list[str]:
        """Every class's label in class-id order, built once per loaded version."""
        return [self.servable.label(i) for i in range(self.servable.num_classes)]

    @property
    def batching(self) -> bool:
        return isinstance(self.runner, Batcher)

    @property
    def in_flight(self) -> int:
        return self._refs

    def submit(self, items: Sequence[Item], *, deadline: float | None = None) -> list[Future[Completed[Row]]]:
        """One future per item, from this version's runner (batched or direct)."""
        return self.runner.submit(items, deadline=deadline)

    def signature_runner(self, signature: str) -> Runner[TensorRequest, TensorRow]:
        """The runner of one of the servable's signatures, made on first use (most models are
        asked by images only) and closed with the handle."""
        runner = self._signature_runners.get(signature)
        if runner is None:
            with self._runners_lock:
                runner = self._signature_runners.get(signature)
                if runner is None:
                    if self._make_signature_runner is None:
                        raise BatcherClosed(f"model '{self.name}' version {self.version} takes no tensors now")
                    runner = self._signature_runners[signature] = self._make_signature_runner(signature)
        return runner

    def queue_depth(self) -> int:
        return self.runner.queue_depth() + sum(r.queue_depth() for r in list(self._signature_runners.values()))

    def acquire(self) -> bool:
        with self._idle:
            if self._retired:
                return False
            self._refs += 1
            self.last_used = time.monotonic()
            return True

    def release(self) -> None:
        with self._idle:
            if self._refs == 0:  # a bug in the caller; going negative would stall every drain
                log.error("%s/%s released more often than acquired", self.name, self.version)
                return
            self._refs -= 1
            if self._refs == 0:
                self._idle.notify_all()

    def retire(self) -> None:
        """Take no new requests from now on; those holding the handle carry on."""
        with self._idle:
            self._retired = True
            self.state = UNLOADING

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no request holds the handle; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._refs == 0, timeout)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    def close(self) -> None:
        """Stop the runner (queued items, if any, fail), then close the session. Closed even
        when one of them raises (the error is raised after), so nobody waits on it forever."""
        self.retire()
        with self._runners_lock:
            runners: list[Runner[Any, Any]] = [self.runner, *self._signature_runners.values()]
            self._signature_runners.clear()
            self._make_signature_runner = None  # none is made from here on
        try:
            for runner in runners:
                runner.close()
        finally:
            try:
                self.servable.close()
            finally:
                self._closed.set()
                for done in self.on_closed:
                    done()

    def __repr__(self) -> str:
        return f"<ModelHandle {self.name}/{self.version} {self.state} refs={self._refs}>"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    reason: str | None = None
    handle: ModelHandle | None = None
    fingerprint: tuple[Any, ...] = ()
    on_demand: bool = False  # unloaded or loading, and a request may load it (``acquire``)
    over_budget: bool = False  # failed: larger than the whole memory budget


@dataclass(frozen=True)
class ModelEntry:
    """One model in a snapshot: every version we know of, and its labels."""

    name: str
    versions: dict[int, VersionStatus] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the model folder or its versions.json is wrong (last reload)

    def available(self) -> dict[int, ModelHandle]:
        """Versions that take requests, ascending (computed once per snapshot: the hot path reads it)."""
        return self._available

    @functools.cached_property
    def _available(self) -> dict[int, ModelHandle]:
        return {v: s.handle for v, s in sorted(self.versions.items()) if s.state == AVAILABLE and s.handle}

    def default(self) -> ModelHandle | None:
        available = self.available()
        return available[max(available)] if available else None

    def loadable(self) -> list[int]:
        """Versions a request may load (``on_demand``), ascending."""
        return sorted(v for v, s in self.versions.items() if s.on_demand)


class ModelRegistry:
    """Which versions are served, as one immutable snapshot, and the borrowing of them.

    Reads never lock: ``publish`` replaces the snapshot under a lock, readers take whatever
    snapshot is current. ``app.reconcile`` decides what to publish.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()  # guards replacing the snapshot
        self._models: dict[str, ModelEntry] = {}  # replaced, never mutated: lock-free reads
        self.closing = threading.Event()
        self._on_close: list[Callable[[float | None], None]] = []
        self.on_cold: ColdLoader | None = None  # set by ``app.residency``: loads on demand
        self.hits = 0  # requests whose versions were loaded already (a metric: an unlocked count)

    @property
    def snapshot(self) -> dict[str, ModelEntry]:
        """The current models by name (never mutated: a new dict replaces it)."""
        return self._models

    def publish(self, name: str, change: Callable[[ModelEntry], ModelEntry | None]) -> bool:
        """Replace one model's entry in a new snapshot (atomically for readers); False once closed."""
        with self._lock:
            if self.closing.is_set():
                return False
            models = dict(self._models)
            updated = change(models.get(name, ModelEntry(name=name)))
            if updated is None or (not updated.versions and updated.error is None):
                models.pop(name, None)
            else:
                models[name] = updated
            self._models = models
            return True

    def on_close(self, stop: Callable[[float | None], None]) -> None:
        """``stop(deadline)`` runs after ``close`` has drained: the reconciler's threads end there."""
        self._on_close.append(stop)

    # -- lifecycle -------------------------------------------------------------------

    def close(self, timeout: float | None = 30.0) -> bool:
        """Stop taking requests, wait up to ``timeout`` s for those in flight (the drain), then
        close every runner and session. True if every request finished in time."""
        self.closing.set()
        with self._lock:
            entries, self._models = self._models, {}
        handles = [s.handle for e in entries.values() for s in e.versions.values() if s.handle is not None]
        for handle in handles:
            handle.retire()
        end = None if timeout is None else time.monotonic() + timeout
        drained = True
        for handle in handles:
            left = None if end is None else max(0.0, end - time.monotonic())
            if not handle.wait_idle(left):
                drained = False
                log.warning("closing %s/%s with %d request(s) still in flight", handle.name, handle.version,
                            handle.in_flight)
            try:
                handle.close()
            except Exception:  # noqa: BLE001 - one session failing to close must not keep the others open
                log.exception("closing %s/%s failed", handle.name, handle.version)
        for stop in self._on_close:
            stop(end)
        return drained

    # -- borrowing (lock-free: the snapshot is replaced, never mutated) ----------------

    @contextlib.contextmanager
    def borrow(
        self, models: str | Sequence[str] | None = None, *, version: int | None = None,
        version_label: str | None = None, deadline: float | None = None,
    ) -> Iterator[list[ModelHandle]]:
        """The handles a request asked for, held (kept alive) until the block ends."""
        handles = self.acquire(models, version=version, version_label=version_label, deadline=deadline)
        try:
            yield handles
        finally:
            for handle in handles:
                handle.release()

    def acquire(
        self, models: str | Sequence[str] | None = None, *, version: int | None = None,
        version_label: str | None = None, deadline: float | None = None, loads: dict[str, float] | None = None,
    ) -> list[ModelHandle]:
        """Like ``borrow`` without the block: the caller must ``release()`` each handle.

        A version that loads on demand is loaded first (``on_cold``), waiting at most until
        ``deadline`` (``time.monotonic()``; default: ``request_timeout_s`` from now); the
        seconds each model waited for its load are added to ``loads``."""
        if deadline is None:
            deadline = time.monotonic() + self._settings.request_timeout_s
        loads = {} if loads is None else loads
        while True:
            try:
                handles = self.resolve(models, version=version, version_label=version_label)
            except ColdVersion as cold:
                self._load_cold(cold, deadline, loads)
                continue
            held: list[ModelHandle] = []
            for handle in handles:
                if not handle.acquire():
                    break  # retired between the lookup and now: a newer snapshot replaces it
                held.append(handle)
            else:
                if not loads:
                    self.hits += 1
                return handles
            for handle in held:
                handle.release()
            if self.closing.is_set():
                raise NoModels("the service is shutting down")

    def _load_cold(self, cold: ColdVersion, deadline: float, loads: dict[str, float]) -> None:
        if self.on_cold is None:
            raise ModelUnavailable(f"model '{cold.name}' version {cold.version} is not loaded", model=cold.name)
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"model '{cold.name}' was not loaded within the request's deadline")
        waited = time.perf_counter()
        self.on_cold(cold.name, cold.version, deadline)
        loads[cold.name] = loads.get(cold.name, 0.0) + time.perf_counter() - waited

    def resolve(
        self, models: str | Sequence[str] | None = None, *, version: int | None = None,
        version_label: str | None = None,
    ) -> list[ModelHandle]:
        """Handles (not held) for one model name, a list of names, or None: every image model
        with an available version. ``version``/``version_label`` apply to every model named;
        without them each model's highest available version answers. (A selector such as
        ``a,b`` or ``all`` is our REST door's grammar: ``app.views.model_names``.)"""
        snapshot = self._models
        if not snapshot:
            raise NoModels("no models are being served")
        one_of(version, version_label)
        if models is None:  # every image model loaded now: "all" of our API (a tensor-only model takes no images)
            names = [name for name, entry in sorted(snapshot.items())
                     if (default := entry.default()) is not None and default.servable.takes_images]
            if not names:
                raise NoModels("no image model has an available version")
        else:
            names = [models] if isinstance(models, str) else list(dict.fromkeys(models))
        return [self._pick(snapshot, name, version, version_label) for name in names]

    def _pick(self, models: dict[str, ModelEntry], name: str, version: int | None, label: str | None) -> ModelHandle:
        entry = models.get(name)
        if entry is None or all(status.state == UNLOADING for status in entry.versions.values()):
            # unknown, or removed and only draining: not served any more
            known = ", ".join(sorted(n for n, e in models.items() if e.available() or e.loadable())) or "none"
            raise ModelNotFound(f"unknown model '{clip(name)}' (served: {clip(known, 200)})", model=name)
        available = entry.available()
        served = ", ".join(map(str, sorted({*available, *entry.loadable()}))) or "none"
        if label is not None:
            if label not in entry.labels:
                labels = ", ".join(sorted(entry.labels)) or "none"
                raise VersionNotFound(
                    f"model '{name}' has no version label '{clip(label)}' (labels: {labels}; versions served: {served})",
                    model=name,
                )
            version = entry.labels[label]
        if version is not None:
            if version in available:
                return available[version]
            status = entry.versions.get(version)
            if status is not None:
                _not_loaded(name, status)
            state = f" (it is {status.state})" if status is not None else ""
            via = f"label '{label}' points at " if label is not None else ""
            raise VersionNotFound(
                f"model '{name}': {via}version {clip(str(version))} is not served{state}; versions served: {served}",
                model=name,
            )
        newest = max({*available, *entry.loadable()}, default=None)
        if newest is None:
            for status in entry.versions.values():
                if status.over_budget or status.state == UNLOADED:
                    _not_loaded(name, status)
            states = ", ".join(f"{v}: {s.state}" for v, s in entry.versions.items()) or "no versions"
            raise ModelUnavailable(f"model '{name}' has no available version ({states})", model=name)
        if newest in available:
            return available[newest]
        raise ColdVersion(name, newest)

    def get(self, name: str, version: int | None = None) -> ModelHandle:
        """A model's handle (its default version unless ``version``), not held: for tests and tools."""
        return self._pick(self._models, name, version, None)

    # -- reading -----------------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        """Every model we know of, sorted by name, with all its versions' states."""
        return [entry for _, entry in sorted(self._models.items())]

    def handles(self) -> list[ModelHandle]:
        """Every loaded version (available or unloading), sorted by (model, version)."""
        return [s.handle for e in self.entries() for _, s in sorted(e.versions.items()) if s.handle is not None]

    def model_states(self) -> dict[str, str]:
        """Per model: ``available`` if some version answers, else the state of its newest version."""
        states = {}
        for entry in self.entries():
            if entry.available():
                states[entry.name] = AVAILABLE
            elif entry.versions:
                states[entry.name] = entry.versions[max(entry.versions)].state
            else:
                states[entry.name] = FAILED
        return states

    def ready(self) -> bool:
        """Some version answers or loads on its first request. (Start-up loads what it must
        before serving; a version that a reload is loading or has refused does not make a
        serving process unready.)"""
        return not self.closing.is_set() and any(e.available() or e.loadable() for e in self._models.values())


def _not_loaded(name: str, status: VersionStatus) -> None:
    """For a version that is not in memory, raise what a request for it gets (``ColdVersion``:
    load it); return for the other states (the caller says it is not served)."""
    if status.on_demand:
        raise ColdVersion(name, status.version)
    if status.over_budget:
        raise ModelOverBudget(f"model '{name}' version {status.version}: {status.reason}", model=name)
    if status.state == UNLOADED:
        raise ModelUnavailable(f"model '{name}' version {status.version} is unloaded"
                               f"{f' ({status.reason})' if status.reason else ''}", model=name)

"""Which versions are in memory: load on first request, unload the least recently used.

With a memory budget (``memory_budget_mb``) the reconciler loads only the *resident* versions
(``versions.json`` ``"resident"``) and lists the others as ``unloaded``, on demand; a request
for one (``ModelRegistry.acquire`` → ``ensure``) loads it, and every request for it waits for
that one load. A load first reserves the version's bytes in the ``MemoryBudget``; when they
do not fit, idle versions are unloaded, least recently used first, never a resident one and
never one a request holds (they drain exactly as on a reload). The bytes come back when the
session has closed, so the reserved total (what the process holds for its models) never
passes the budget, however many cold requests arrive at once. At most ``concurrent_loads``
loads run at once, requests' loads ahead of the start-up prefill (which loads, by name, what
fits without unloading anything, after the service is ready).

Without a budget nothing is unloaded to make room; the repository API (``unload``/``load``,
behind the admin token) works either way: an unloaded model answers 503 until loaded again.

Every load and unload is counted by reason (``events``): ``request`` / ``prefill`` /
``startup`` / ``admin`` loads, ``evicted`` / ``admin`` / ``reload`` unloads, ``failed``.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import memory
from .batching import DeadlineExceeded
from .budget import KnownSize, MemoryBudget, MiB, Reservation, SizeBook
from .config import Settings
from .discovery import ModelSource
from .manifest import GRAPH_FILE
from .registry import (
    AVAILABLE,
    FAILED,
    LOADING,
    UNLOADED,
    ModelHandle,
    ModelNotFound,
    ModelOverBudget,
    ModelRegistry,
    ModelUnavailable,
    NoModels,
    VersionStatus,
)
from .servable import ModelLoadError

log = logging.getLogger(__name__)

Key = tuple[str, int]
Need = tuple[int, int]  # (host bytes, GPU allocator bytes)
REQUEST, PREFILL = 0, 1  # load priorities: a waiting request first
PREFILL_REASON = "prefill"
SHRINK_AT_MOST = 0.8  # a version's remembered size falls by at most this factor per load
RESERVE_MARGIN = 1.25  # a measured size is reserved with this margin until the load measures again
ON_DEMAND_REASON = "not loaded: loads on its first request (memory budget)"
ADMIN_REASON = "unloaded through the repository API; POST /v2/repository/models/{name}/load loads it"
# A version loads through this: (source, version) -> a warm handle (``Reconciler.build``).
Loader = Callable[[ModelSource, int], ModelHandle]


def lower_thread_priority(nice: int) -> None:
    """Run this thread's work (a load, an unload) after request threads' on a busy machine
    (Linux: per-thread nice; ``loader_nice``). Threads it starts inherit it."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        log.debug("cannot lower the thread's priority: %s", exc)


class Residency:
    """Loads on demand within the budget, unloads to make room (see the module docstring)."""

    def __init__(self, registry: ModelRegistry, settings: Settings, load: Loader,
                 sources: Callable[[str], ModelSource | None]) -> None:
        self.registry = registry
        self.settings = settings
        budget_mb = settings.memory_budget_mb
        limit = budget_mb * MiB if budget_mb > 0 else None
        # on a GPU the same budget bounds the allocator's bytes too (TensorFlow's own figures)
        self.budget = MemoryBudget(limit, limit if limit is not None and gpu_present() else None)
        self.book = SizeBook(read_timeout_s=settings.file_read_timeout_s)
        self._load = load
        self._sources = sources
        self._lock = threading.Lock()
        self._jobs: dict[Key, Future[None]] = {}
        self._queue: queue.PriorityQueue[tuple[int, int, Key, Future[None], str]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._evicting: set[ModelHandle] = set()
        self._pinned: set[str] = set()  # models unloaded through the repository API
        self.events: Counter[tuple[str, str]] = Counter()  # (loads|unloads, reason) -> count
        self.misses = 0  # requests that had to wait for a load (hits: ``ModelRegistry.hits``)
        self.on_load: Callable[[str, float], None] | None = None  # (reason, seconds): the load histogram
        self._workers: list[threading.Thread] = []  # started by the first load on demand
        registry.on_cold = self.ensure
        registry.on_close(self._stop)

    @property
    def limited(self) -> bool:
        return self.budget.limit is not None

    # -- what the reconciler asks ---------------------------------------------------------

    def wants_loaded(self, source: ModelSource, version: int) -> bool:
        """Load this aspired version now (start-up, reload)? Else it is listed ``unloaded``."""
        if source.name in self._pinned:
            return False
        return not self.limited or source.policy.is_resident(version)

    def cold_status(self, source: ModelSource, version: int, fingerprint: tuple[Any, ...]) -> VersionStatus:
        """How an aspired version that is not loaded is listed."""
        if source.name in self._pinned:
            return VersionStatus(version, UNLOADED, reason=ADMIN_REASON.format(name=source.name),
                                 fingerprint=fingerprint)
        known = self.size(source, version)
        if not self.budget.fits_alone(known.nbytes, known.device):
            return VersionStatus(version, FAILED, reason=self._too_big(known), fingerprint=fingerprint,
                                 over_budget=True)
        return VersionStatus(version, UNLOADED, reason=ON_DEMAND_REASON, fingerprint=fingerprint, on_demand=True)

    def load_now(self, source: ModelSource, version: int, *, reason: str = "startup") -> ModelHandle:
        """Reserve (unloading idle versions if needed, waiting at most ``request_timeout_s``),
        load and measure one version; ``ModelLoadError`` when it cannot fit or load. Without a
        budget nothing is reserved or remembered (and the graph is not read twice)."""
        if not self.limited:
            started = time.perf_counter()
            handle = self._load(source, version)
            self.events["loads", reason] += 1
            if self.on_load is not None:
                self.on_load(reason, time.perf_counter() - started)
            return handle
        known = self.size(source, version)
        what = f"{source.name}/{version}"
        if not self.budget.fits_alone(known.nbytes, known.device):
            raise ModelLoadError(source.name, source.versions[version], self._too_big(known))
        try:
            reservation = self._reserve(what, self._to_reserve(known),
                                        time.monotonic() + self.settings.request_timeout_s, evict=True)
        except ModelUnavailable as exc:
            raise ModelLoadError(source.name, source.versions[version], str(exc)) from None
        return self._measured_load(source, version, reservation, known, reason)

    @property
    def pinned(self) -> frozenset[str]:
        return frozenset(self._pinned)

    def unload_changed(self, handle: ModelHandle) -> None:
        """A loaded, non-resident version whose files changed: unlisted and closed after its drain."""
        with self._lock:
            if handle not in self._evicting:
                self._evict(handle, "reload")

    def size(self, source: ModelSource, version: int) -> KnownSize:
        """Its last measured size, else the estimate; on a GPU a version placed there (not on
        ``/CPU:...``) is estimated to take as much of the GPU as of the host until measured."""
        known = self.book.size(Path(source.versions[version]) / GRAPH_FILE)
        on_gpu = not (source.policy.device or "").upper().startswith("/CPU")
        if self.budget.device_limit is not None and not known.measured and on_gpu:
            return replace(known, device=known.nbytes)
        return known

    def _to_reserve(self, known: KnownSize) -> Need:
        """What a load reserves until it has measured: a measured size with ``RESERVE_MARGIN``
        (RSS growth varies ±30 % between loads of one model on a busy machine; never past what
        the resident versions leave), else the graph's estimate (high already)."""
        if not known.measured:
            return known.nbytes, known.device
        host, device = self._resident_bytes()
        return (_with_margin(known.nbytes, self.budget.limit, host),
                _with_margin(known.device, self.budget.device_limit, device))

    def _resident_bytes(self) -> Need:
        residents = [h for h in self.registry.handles() if h.resident]
        return sum(_reserved(h)[0] for h in residents), sum(_reserved(h)[1] for h in residents)

    # -- loading on demand ------------------------------------------------------------------

    def ensure(self, name: str, version: int, deadline: float) -> None:
        """``ModelRegistry.on_cold``: load ``name``/``version`` (one load, however many wait)
        and return once it is published, or raise what the request should answer."""
        job = self._submit((name, version), REQUEST, "request")
        with self._lock:
            self.misses += 1
        try:
            job.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            raise DeadlineExceeded(f"model '{name}' version {version} was still loading at the request's "
                                   "deadline; it goes on loading, retry shortly") from None

    def prefill(self) -> None:
        """After start-up: load, by name, the on-demand versions that fit without unloading any."""
        if not self.limited:
            return
        for entry in self.registry.entries():
            for version in entry.loadable():
                self._submit((entry.name, version), PREFILL, "prefill")

    def _submit(self, key: Key, priority: int, reason: str) -> Future[None]:
        with self._lock:
            if not self._workers:
                self._workers = [threading.Thread(target=self._work, name=f"graphserve-cold-load-{i}", daemon=True)
                                 for i in range(self.settings.concurrent_loads)]
                for worker in self._workers:
                    worker.start()
            job = self._jobs.get(key)
            if job is None or job.done():
                job = self._jobs[key] = Future()
                self._queue.put((priority, next(self._order), key, job, reason))
            return job

    def _stop(self, end: float | None) -> None:
        """The registry has closed: the workers end (after the load each may be running)."""
        with self._lock:
            workers = list(self._workers)
        for _ in workers:
            self._queue.put((-1, next(self._order), ("", 0), Future(), "stop"))
        for worker in workers:
            worker.join(None if end is None else max(0.0, end - time.monotonic()))

    def _work(self) -> None:
        lower_thread_priority(self.settings.loader_nice)
        while True:
            _, _, key, job, reason = self._queue.get()
            if reason == "stop":
                return
            if self.registry.closing.is_set():
                job.set_exception(NoModels("the service is shutting down"))
                continue
            try:
                self._load_on_demand(key, reason)
            except BaseException as exc:  # noqa: BLE001 - handed to every request waiting on it
                job.set_exception(exc)
            else:
                job.set_result(None)
            finally:
                with self._lock:
                    if self._jobs.get(key) is job:
                        del self._jobs[key]

    def _load_on_demand(self, key: Key, reason: str) -> None:
        name, version = key
        entry = self.registry.snapshot.get(name)
        status = entry.versions.get(version) if entry is not None else None
        source = self._sources(name)
        if status is None or not status.on_demand or source is None or version not in source.versions:
            return  # loaded, removed or refused meanwhile: the request looks again
        known = self.size(source, version)
        if not self.budget.fits_alone(known.nbytes, known.device):
            self._set(name, replace(status, state=FAILED, on_demand=False, over_budget=True,
                                    reason=self._too_big(known)), only_if=status)
            raise ModelOverBudget(f"model '{name}' version {version}: {self._too_big(known)}", model=name)
        if reason == PREFILL_REASON:
            reservation = self.budget.reserve(f"{name}/{version}", *self._to_reserve(known))
            if reservation is None:
                return  # does not fit now: its first request loads it
        else:
            reservation = self._reserve(f"{name}/{version}", self._to_reserve(known),
                                        time.monotonic() + self.settings.request_timeout_s, evict=True)
        loading = replace(status, state=LOADING, reason=None)
        if not self._set(name, loading, only_if=status):
            reservation.release()
            return
        try:
            handle = self._measured_load(source, version, reservation, known, reason)
        except (ModelLoadError, OSError) as exc:
            log.error("model %s version %d failed to load on demand: %s", name, version, exc)
            self.events["loads", "failed"] += 1
            self._set(name, replace(loading, state=FAILED, on_demand=False, reason=str(exc)), only_if=loading)
            raise ModelUnavailable(f"model '{name}' version {version} failed to load: {exc}", model=name) from None
        except BaseException:
            self._set(name, status, only_if=loading)
            raise
        if not self._set(name, VersionStatus(version, AVAILABLE, handle=handle, fingerprint=status.fingerprint),
                         only_if=loading):
            handle.close()  # removed or changed on disk while it loaded: nobody will serve it
            return
        if (self.budget.free() or 0) < 0 or (self.budget.device_free() or 0) < 0:
            self._make_room((0, 0), time.monotonic())  # measured larger than reserved: back under the budget

    def _measured_load(self, source: ModelSource, version: int, reservation: Reservation, known: KnownSize,
                       reason: str) -> ModelHandle:
        started = time.perf_counter()
        try:
            handle = self._load(source, version)
        except BaseException:
            reservation.release()
            raise
        measured, device = max(measured_bytes(handle), 1), max(measured_device_bytes(handle), 0)
        if known.measured:
            # at most 20 % below what it took before: memory other versions freed meanwhile
            # (their sessions closing) makes a load read small, and the budget would overbook;
            # a reading that was too high comes down over a few loads
            measured = max(measured, int(known.nbytes * SHRINK_AT_MOST))
            device = max(device, int(known.device * SHRINK_AT_MOST))
        reservation.resize(measured, device)
        handle.reservation = reservation
        handle.on_closed.append(reservation.release)
        handle.resident = self.limited and source.policy.is_resident(version)
        if self.limited:
            self.book.remember(Path(source.versions[version]) / GRAPH_FILE, measured, device)
        seconds = time.perf_counter() - started
        self.events["loads", reason] += 1
        if self.on_load is not None:
            self.on_load(reason, seconds)
        if self.limited:
            log.info("loaded model %s version %d (%s) in %.2f s: %.1f MiB; budget %.1f of %.1f MiB in use",
                     source.name, version, reason, seconds, measured / MiB, self.budget.in_use / MiB,
                     (self.budget.limit or 0) / MiB)
        if not self.budget.fits_alone(measured, device):
            handle.close()
            reason_text = self._too_big(KnownSize(measured, measured=True, device=device))
            raise ModelLoadError(source.name, source.versions[version], reason_text)
        return handle

    # -- making room ----------------------------------------------------------------------

    def _reserve(self, what: str, need: Need, end: float, *, evict: bool) -> Reservation:
        nbytes, device = need
        resident, resident_device = self._resident_bytes()
        for size, limit, held, kind in ((nbytes, self.budget.limit, resident, "memory"),
                                        (device, self.budget.device_limit, resident_device, "GPU memory")):
            if limit is not None and size > limit - held:  # nothing that may be unloaded would make room
                raise ModelUnavailable(
                    f"{what} needs {size / MiB:.0f} MiB of {kind}; the budget is {limit / MiB:.0f} MiB and resident "
                    f"versions hold {held / MiB:.0f} MiB of it (raise memory_budget_mb or mark fewer resident)",
                    model=what.split("/")[0])
        while True:
            reservation = self.budget.reserve(what, nbytes, device)
            if reservation is not None:
                return reservation
            if self.registry.closing.is_set():
                raise NoModels("the service is shutting down")
            if evict:
                self._make_room(need, end)
            left = end - time.monotonic()
            if left <= 0:
                held_now = ", ".join(f"{r.what} {r.nbytes / MiB:.0f} MiB" for r in self.budget.reservations())
                raise ModelUnavailable(
                    f"no room in the memory budget ({(self.budget.limit or 0) / MiB:.0f} MiB) for {what} "
                    f"({nbytes / MiB:.0f} MiB) within {self.settings.request_timeout_s:g} s: the loaded versions "
                    f"are resident or answering requests ({held_now})", model=what.split("/")[0])
            self.budget.wait_for_change(min(0.05, left))

    def _make_room(self, need: Need, end: float) -> None:
        """Unload idle versions, least recently used first, until ``need`` (host, GPU bytes)
        more would fit once those already unloading have closed."""
        with self._lock:
            free = (self.budget.free(), self.budget.device_free())
            releasing = [_reserved(h) for h in self._evicting]
            short = [size - room - sum(r[i] for r in releasing) if room is not None else 0
                     for i, (size, room) in enumerate(zip(need, free))]
            for handle in self._idle_by_age():
                if max(short) <= 0:
                    break
                held = _reserved(handle)
                if not any(s > 0 and h > 0 for s, h in zip(short, held)):
                    continue  # frees nothing that is short
                short = [s - h for s, h in zip(short, held)]
                self._evict(handle, "evicted")

    def _idle_by_age(self) -> list[ModelHandle]:
        idle = [status.handle for entry in self.registry.entries() for status in entry.versions.values()
                if status.state == AVAILABLE and status.handle is not None]
        return sorted((h for h in idle if not h.resident and h.in_flight == 0 and h.queue_depth() == 0
                       and h not in self._evicting), key=lambda h: h.last_used)

    def _evict(self, handle: ModelHandle, reason: str) -> None:
        """Unlist the version (``unloaded``), let its requests finish, close it (caller holds the lock)."""
        pinned = handle.name in self._pinned
        cold_reason = ADMIN_REASON.format(name=handle.name) if pinned else ON_DEMAND_REASON

        def unlist(entry: Any) -> Any:
            status = entry.versions.get(handle.version)
            if status is None or status.handle is not handle:
                return entry
            cold = VersionStatus(handle.version, UNLOADED, reason=cold_reason, fingerprint=status.fingerprint,
                                 on_demand=not pinned)
            return replace(entry, versions={**entry.versions, handle.version: cold})

        self._evicting.add(handle)
        self.registry.publish(handle.name, unlist)
        handle.retire()
        self.events["unloads", reason] += 1
        log.info("unloading model %s version %d (%s; idle since %.1f s)", handle.name, handle.version, reason,
                 time.monotonic() - handle.last_used)
        threading.Thread(target=self._close_when_idle, args=(handle,), daemon=True,
                         name=f"unload-{handle.name}-{handle.version}").start()

    def _close_when_idle(self, handle: ModelHandle) -> None:
        lower_thread_priority(self.settings.loader_nice)
        handle.wait_idle()
        started = time.perf_counter()
        rss = memory.rss_bytes()
        try:
            handle.close()
        except Exception:  # noqa: BLE001 - gone from the snapshot either way
            log.exception("unloading model %s version %d failed", handle.name, handle.version)
        finally:
            with self._lock:
                self._evicting.discard(handle)
        closed = time.perf_counter()
        memory.settle_heap()  # its cycles collected (frozen objects never are), the rest frozen again
        settled = time.perf_counter()
        memory.release_free_memory()  # and the freed heap back to the OS
        log.info("unloaded model %s version %d: closed in %.3f s, heap settled in %.3f s, trimmed in %.3f s; "
                 "RSS %+.1f MiB", handle.name, handle.version, closed - started, settled - closed,
                 time.perf_counter() - settled, (memory.rss_bytes() - rss) / MiB)

    # -- the repository API ------------------------------------------------------------------

    def unload_model(self, name: str) -> None:
        """Unload every loaded version of ``name`` (they drain); it stays unloaded until
        ``load_model``, a restart, or new versions on disk are loaded by it."""
        entry = self._entry(name)
        with self._lock:
            self._pinned.add(name)
            for status in entry.versions.values():
                if status.state == AVAILABLE and status.handle is not None and status.handle not in self._evicting:
                    self._evict(status.handle, "admin")
        reason = ADMIN_REASON.format(name=name)
        self.registry.publish(name, lambda e: replace(e, versions={
            v: replace(s, on_demand=False, reason=reason) if s.on_demand else s for v, s in e.versions.items()}))

    def load_model(self, name: str, timeout: float) -> None:
        """Load the versions of ``name`` that are unloaded (waiting up to ``timeout`` s)."""
        entry = self._entry(name)
        with self._lock:
            self._pinned.discard(name)
        self.registry.publish(name, lambda e: replace(e, versions={
            v: replace(s, on_demand=True, reason=ON_DEMAND_REASON) if s.state == UNLOADED else s
            for v, s in e.versions.items()}))
        deadline = time.monotonic() + timeout
        jobs = [self._submit((name, v), REQUEST, "admin") for v, s in sorted(entry.versions.items()) if s.state == UNLOADED]
        for job in jobs:
            try:
                job.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                raise DeadlineExceeded(f"model '{name}' was still loading after {timeout:.3g} s (reload_wait_s, or the "
                                       "call's deadline); it goes on loading: POST /v2/repository/index shows "
                                       "its state") from None
            except (ModelUnavailable, NoModels, DeadlineExceeded):
                pass  # its state says why; judged below with the others
        failed = [s for s in self._entry(name).versions.values() if s.state == FAILED]
        if failed and not self._entry(name).available():
            raise ModelUnavailable(f"model '{name}' failed to load: {failed[0].reason}", model=name)

    def _entry(self, name: str) -> Any:
        entry = self.registry.snapshot.get(name)
        if entry is None or not entry.versions:
            raise ModelNotFound(f"unknown model '{name}'", model=name)
        return entry

    # -- reading ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The budget as ``/stats`` shows it."""
        limit = self.budget.limit
        return {
            "memory_budget_bytes": limit,
            "reserved_bytes": self.budget.in_use,
            "peak_reserved_bytes": self.budget.peak,
            "reservations": {r.what: r.nbytes for r in self.budget.reservations()},
            **({"gpu_budget_bytes": self.budget.device_limit, "gpu_reserved_bytes": self.budget.device_in_use,
                "gpu_peak_reserved_bytes": self.budget.device_peak,
                "gpu_reservations": {r.what: r.device for r in self.budget.reservations()}}
               if self.budget.device_limit is not None else {}),
            "loads": {reason: n for (kind, reason), n in sorted(self.events.items()) if kind == "loads"},
            "unloads": {reason: n for (kind, reason), n in sorted(self.events.items()) if kind == "unloads"},
            "hits": self.registry.hits,
            "misses": self.misses,
        }

    def _set(self, name: str, status: VersionStatus, *, only_if: VersionStatus) -> bool:
        """Publish ``status`` for its version if the version is still ``only_if``; True if so."""
        changed = False

        def change(entry: Any) -> Any:
            nonlocal changed
            if entry.versions.get(status.version) is not only_if:
                return entry
            changed = True
            return replace(entry, versions={**entry.versions, status.version: status})

        return self.registry.publish(name, change) and changed

    def _too_big(self, known: KnownSize) -> str:
        how = "measured at its last load" if known.measured else "estimated from its graph"
        size, kind = known.nbytes, ""
        if self.budget.device_limit is not None and known.device > self.budget.device_limit:
            size, kind = known.device, " of GPU memory"
        return (f"needs {size / MiB:.0f} MiB{kind} ({how}), more than the whole memory budget "
                f"({(self.budget.limit or 0) / MiB:.0f} MiB, memory_budget_mb): it is not loaded")


def _with_margin(size: int, limit: int | None, resident: int) -> int:
    """``size`` with ``RESERVE_MARGIN``, but not past what the resident versions leave of ``limit``."""
    wanted = int(size * RESERVE_MARGIN)
    return wanted if limit is None else max(size, min(wanted, limit - resident))


def measured_bytes(handle: ModelHandle) -> int:
    """What loading the version cost: RSS growth over load and warm-up (a test's fake has none)."""
    stats = getattr(handle.servable, "stats", None)
    return stats.rss_cost if stats is not None else 0


def measured_device_bytes(handle: ModelHandle) -> int:
    """What loading the version cost the GPU allocator (0 without a GPU)."""
    stats = getattr(handle.servable, "stats", None)
    return (stats.gpu_cost or 0) if stats is not None else 0


def gpu_present() -> bool:
    return memory.gpu_memory() is not None


def _reserved(handle: ModelHandle) -> Need:
    """(host, GPU) bytes the handle holds in the budget."""
    reservation = handle.reservation
    if isinstance(reservation, Reservation) and not reservation.released:
        return reservation.nbytes, reservation.device
    return 0, 0

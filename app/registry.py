"""The model registry (TF Serving's *manager*): which versions are served, and borrowing them.

``registry.init_app(app, settings)`` loads what ``discovery`` finds under ``GRAPHS_DIR``
(strictly: the first broken version stops start-up, unless ``strict_startup`` is off) and
stores the registry at ``app.extensions["models"]``.

Versions are keyed by (model, version). Each loaded version is a ``ModelHandle``: its
servable, its runner (a ``Batcher``, or a ``DirectRunner`` when batching is off) and a count
of the requests holding it. A request borrows the handles it needs for as long as it runs::

    with registry.borrow("digits8", version_label="stable") as [handle]:
        futures = handle.submit(items, deadline=deadline)
        ...                                  # the version stays alive until the block ends

``reload()`` reconciles the registry with the disk: new versions are loaded and warmed up on
a low-priority loader thread, then switched in atomically (one immutable snapshot replaces
the last; lookups never lock); versions no longer wanted stop taking new requests at once
and are closed (runner, then session) only when their last borrower has returned (*drain*).
A version that fails to load is refused with one log line, listed as ``failed`` with its
reason, and the versions already serving keep serving. ``close(timeout)`` drains everything
the same way: graceful shutdown calls it.

Version states, as ``GET /models`` shows them: ``loading``, ``available``, ``unloading``,
``failed`` (with ``reason``).

Exceptions (all ``LookupError``): ``ModelNotFound`` (unknown name), ``VersionNotFound`` (no
such version or label served), ``ModelUnavailable`` (the model has no available version),
``NoModels`` (nothing is being served), ``BadModelSelection`` (``model=,``: names nothing).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from app.batching import Batcher, Completed, DirectRunner, Runner
from app.config import Settings
from app.discovery import DiscoveryError, ModelSource, fingerprint, scan
from app.memory import configure_gpus
from app.servable import Item, ModelLoadError, Placement, Row, Servable, SessionOptions, load_servable
from app.text import clip

log = logging.getLogger(__name__)

EXTENSION = "models"
LOADING, AVAILABLE, UNLOADING, FAILED = "loading", "available", "unloading", "failed"


class ModelNotFound(LookupError):
    pass


class VersionNotFound(LookupError):
    pass


class ModelUnavailable(LookupError):
    pass


class NoModels(LookupError):
    pass


class BadModelSelection(ValueError):
    """``model=`` names no model (``model=,``) or has an empty name (``model=a,``)."""


# (model, version, batch size, longest queue wait s, run s): every runner's observer, model bound
BatchObserver = Callable[[str, int, int, float, float], None]


class ModelHandle:
    """One loaded version: servable + runner + the count of requests holding it.

    ``acquire``/``release`` bracket a request; once ``retire`` is called, ``acquire`` fails
    (the registry then looks again and finds the version that replaced this one) and
    ``wait_idle`` returns when the last holder has released it.
    """

    def __init__(self, servable: Servable, runner: Runner[Item, Row]) -> None:
        self.servable = servable
        self.runner = runner
        self.state = AVAILABLE
        self._refs = 0
        self._retired = False
        self._idle = threading.Condition(threading.Lock())
        self._closed = threading.Event()

    @property
    def name(self) -> str:
        return self.servable.name

    @property
    def version(self) -> int:
        return self.servable.version

    @property
    def batching(self) -> bool:
        return isinstance(self.runner, Batcher)

    @property
    def in_flight(self) -> int:
        return self._refs

    def submit(self, items: Sequence[Item], *, deadline: float | None = None) -> list[Future[Completed[Row]]]:
        """One future per item, from this version's runner (batched or direct)."""
        return self.runner.submit(items, deadline=deadline)

    def queue_depth(self) -> int:
        return self.runner.queue_depth()

    def acquire(self) -> bool:
        with self._idle:
            if self._retired:
                return False
            self._refs += 1
            return True

    def release(self) -> None:
        with self._idle:
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
        """Stop the runner (queued items, if any, fail), then close the session."""
        self.retire()
        self.runner.close()
        self.servable.close()
        self._closed.set()

    def __repr__(self) -> str:
        return f"<ModelHandle {self.name}/{self.version} {self.state} refs={self._refs}>"


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    reason: str | None = None
    handle: ModelHandle | None = None
    fingerprint: tuple[Any, ...] = ()


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


@dataclass
class ReloadReport:
    loaded: list[dict[str, Any]] = field(default_factory=list)
    unloaded: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "unloaded": self.unloaded, "refused": self.refused,
                "seconds": round(self.seconds, 3)}


class ModelRegistry:
    def __init__(
        self,
        settings: Settings,
        *,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._settings = settings
        self._on_batch = on_batch
        self._lock = threading.Lock()  # guards replacing the snapshot
        self._reload_lock = threading.Lock()  # one reconcile at a time
        self._models: dict[str, ModelEntry] = {}  # replaced, never mutated: lock-free reads
        self._last_errors: dict[str, str] = {}
        self._closing = threading.Event()
        self._unloaders: list[threading.Thread] = []
        self._loader: ThreadPoolExecutor | None = None
        self._poller: threading.Thread | None = None
        self._options = SessionOptions(
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            gpu_memory_fraction=settings.gpu_memory_fraction or None,
        )

    # -- lifecycle -------------------------------------------------------------------

    def load_all(self) -> None:
        """Start-up: load every wanted version in this thread. Strict by default: the first
        failure stops start-up (and unloads what was loaded)."""
        configure_gpus()  # before any Session: memory growth, never grab the whole card
        strict = self._settings.strict_startup
        try:
            self._reconcile(strict=strict)
        except BaseException:
            self.close(timeout=0)
            raise
        if not self._models:
            log.warning("no models found under %s", self._settings.graphs_dir)

    def reload(self, timeout: float | None = None) -> ReloadReport:
        """Re-read the graphs directory and every ``versions.json``; load what is new on the
        loader thread, switch, and unload what is no longer wanted (after its drain)."""
        if self._closing.is_set():
            raise NoModels("the registry is shutting down")
        return self._loader_pool().submit(self._reconcile, strict=False).result(timeout)

    def start_polling(self, interval_s: float) -> None:
        """Reload every ``interval_s`` seconds on a daemon thread until ``close``."""
        if interval_s <= 0 or self._poller is not None:
            return

        def poll() -> None:
            while not self._closing.wait(interval_s):
                try:
                    report = self.reload()
                    if report.loaded or report.unloaded:
                        log.info("poll: %s", report.to_json())
                except (NoModels, CancelledError):  # closing
                    return
                except Exception:
                    log.exception("poll: reload failed")

        self._poller = threading.Thread(target=poll, name="graphserve-poll", daemon=True)
        self._poller.start()

    def close(self, timeout: float | None = 30.0) -> bool:
        """Stop taking requests, wait up to ``timeout`` s for those in flight (the drain), then
        close every runner and session. True if every request finished in time."""
        self._closing.set()
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
            handle.close()
        for thread in list(self._unloaders):
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
        if self._loader is not None:
            self._loader.shutdown(wait=False, cancel_futures=True)
        return drained

    # -- borrowing (lock-free: the snapshot is replaced, never mutated) ----------------

    @contextlib.contextmanager
    def borrow(
        self, selector: str | None = None, *, version: int | None = None, version_label: str | None = None
    ) -> Iterator[list[ModelHandle]]:
        """The handles a request asked for, held (kept alive) until the block ends."""
        handles = self.acquire(selector, version=version, version_label=version_label)
        try:
            yield handles
        finally:
            for handle in handles:
                handle.release()

    def acquire(
        self, selector: str | None = None, *, version: int | None = None, version_label: str | None = None
    ) -> list[ModelHandle]:
        """Like ``borrow`` without the block: the caller must ``release()`` each handle."""
        while True:
            handles = self.resolve(selector, version=version, version_label=version_label)
            held: list[ModelHandle] = []
            for handle in handles:
                if not handle.acquire():
                    break  # retired between the lookup and now: a newer snapshot replaces it
                held.append(handle)
            else:
                return handles
            for handle in held:
                handle.release()
            if self._closing.is_set():
                raise NoModels("the service is shutting down")

    def resolve(
        self, selector: str | None = None, *, version: int | None = None, version_label: str | None = None
    ) -> list[ModelHandle]:
        """Handles for ``selector`` (not held). ``None``/empty: the default model, else all;
        ``all``; or ``a,b,c``. ``version``/``version_label`` apply to every model named;
        without them each model's highest available version answers."""
        models = self._models
        if not models:
            raise NoModels("no models are being served")
        if version is not None and version_label is not None:
            raise BadModelSelection("give version or version_label, not both")
        if selector is None or selector == "":
            selector = self._settings.default_model or "all"
        if selector.strip() == "all":
            names = [name for name, entry in sorted(models.items()) if entry.available()]
            if not names:
                raise NoModels("no model has an available version")
        else:
            names = [part.strip() for part in selector.split(",")]
            if not any(names):
                raise BadModelSelection(f"model={clip(selector)!r} names no model; give one or more names, or 'all'")
            if not all(names):
                raise BadModelSelection(
                    f"model={clip(selector)!r} has an empty name; give names separated by single commas, or 'all'"
                )
            names = list(dict.fromkeys(names))
        return [self._pick(models, name, version, version_label) for name in names]

    def _pick(self, models: dict[str, ModelEntry], name: str, version: int | None, label: str | None) -> ModelHandle:
        entry = models.get(name)
        if entry is None or all(status.state == UNLOADING for status in entry.versions.values()):
            # unknown, or removed and only draining: not served any more
            known = ", ".join(sorted(n for n, e in models.items() if e.available())) or "none"
            raise ModelNotFound(f"unknown model '{clip(name)}' (served: {clip(known, 200)})")
        available = entry.available()
        served = ", ".join(map(str, available)) or "none"
        if label is not None:
            if label not in entry.labels:
                labels = ", ".join(sorted(entry.labels)) or "none"
                raise VersionNotFound(
                    f"model '{name}' has no version label '{clip(label)}' (labels: {labels}; versions served: {served})"
                )
            version = entry.labels[label]
        if version is not None:
            if version not in available:
                status = entry.versions.get(version)
                state = f" (it is {status.state})" if status is not None else ""
                via = f"label '{label}' points at " if label is not None else ""
                raise VersionNotFound(
                    f"model '{name}': {via}version {clip(str(version))} is not served{state}; versions served: {served}"
                )
            return available[version]
        handle = entry.default()
        if handle is None:
            states = ", ".join(f"{v}: {s.state}" for v, s in entry.versions.items()) or "no versions"
            raise ModelUnavailable(f"model '{name}' has no available version ({states})")
        return handle

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
        """Some version answers. (Start-up loads everything before serving; a version that a
        reload is loading or has refused does not make a serving process unready.)"""
        return not self._closing.is_set() and any(entry.available() for entry in self._models.values())

    # -- reconciling -------------------------------------------------------------------

    def _loader_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._loader is None:
                self._loader = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="graphserve-loader", initializer=self._lower_priority
                )
            return self._loader

    def _lower_priority(self) -> None:
        """Run reloads at a lower CPU priority than request threads (Linux: per-thread nice)."""
        nice = self._settings.loader_nice
        if nice <= 0 or not hasattr(os, "setpriority"):
            return
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as exc:
            log.debug("cannot lower the loader thread's priority: %s", exc)

    def _reconcile(self, *, strict: bool) -> ReloadReport:
        """Make what is served match what is on disk. ``strict`` raises the first error."""
        with self._reload_lock:
            started = time.perf_counter()
            report = ReloadReport()
            try:
                sources, errors = scan(self._settings.graphs_dir, strict=strict)
            except DiscoveryError as exc:
                if strict:
                    raise
                self._refuse(report, "*", None, str(exc))
                return report
            broken = {}
            for error in errors:
                name = _model_of(error, self._settings.graphs_dir)
                broken[name] = str(error)
                self._refuse(report, name, None, str(error))
            found = {source.name: source for source in sources}
            for name in sorted(set(found) | set(self._models)):
                if self._closing.is_set():
                    break
                if name in broken:
                    self._publish(name, lambda e, reason=broken[name]: replace(e, error=reason))
                    continue
                source = found.get(name)
                self._reconcile_model(name, source, report, strict=strict)
            report.seconds = time.perf_counter() - started
            return report

    def _reconcile_model(self, name: str, source: ModelSource | None, report: ReloadReport, *, strict: bool) -> None:
        """Load what the policy wants, switch, unload what it no longer wants (one model).

        A refused version does not count towards the policy: with "latest 2" and versions
        1, 2 serving, a broken 3 leaves 1 and 2 serving. A refused version is retried once
        its files change (so polling does not log the same failure forever).
        """
        entry = self._models.get(name, ModelEntry(name=name))
        on_disk = source.versions if source is not None else {}
        self._last_errors.pop(name, None)
        failed: dict[int, VersionStatus] = {
            v: status for v, status in entry.versions.items()
            if status.state == FAILED and v in on_disk and status.fingerprint == fingerprint(on_disk[v])
        }
        loaded: dict[int, ModelHandle] = {}
        try:
            aspired = self._load_wanted(name, source, entry, failed, loaded, report, strict=strict)
        except BaseException:
            for handle in loaded.values():  # start-up stops: close what this model had loaded
                handle.close()
            raise
        self._switch(name, source, aspired, on_disk, failed, loaded, report)

    def _load_wanted(
        self, name: str, source: ModelSource | None, entry: ModelEntry, failed: dict[int, VersionStatus],
        loaded: dict[int, ModelHandle], report: ReloadReport, *, strict: bool,
    ) -> list[int]:
        """Load the versions the policy wants that are not loaded; return what it wants."""
        on_disk = source.versions if source is not None else {}
        policy = source.policy if source is not None else None
        current = entry.available()
        if policy is not None:
            # a version wanted again while it still drains from an earlier reload: let its last
            # requests finish (they have deadlines) and its session close, then load it afresh
            wanted = set(policy.select([v for v in on_disk if v not in failed]))
            for v, status in entry.versions.items():
                if status.state == UNLOADING and status.handle is not None and v in wanted:
                    if not status.handle.wait_closed(self._settings.request_timeout_s + 5):
                        self._warn(name, f"version {v} is still draining; it is loaded again by a later reload")
        draining = {v for v, st in entry.versions.items() if st.state == UNLOADING and st.handle and not st.handle.closed}
        while True:  # each round either loads or refuses at least one version, or ends
            aspired = policy.select([v for v in on_disk if v not in failed]) if policy is not None else []
            todo = [v for v in aspired if v not in loaded and v not in current and v not in draining]
            if not todo:
                break
            for version in todo:
                assert source is not None
                marks = fingerprint(on_disk[version])
                self._publish(name, lambda e, v=version: _with_version(e, VersionStatus(v, LOADING)))
                try:
                    handle = self._make_handle(load_servable(source.spec(version), self._options, _placement(source)))
                except ModelLoadError as exc:
                    if strict:
                        raise
                    log.error("refused model %s version %d: %s", name, version, exc)
                    failed[version] = VersionStatus(version, FAILED, reason=str(exc), fingerprint=marks)
                    self._publish(name, lambda e, st=failed[version]: _with_version(e, st))
                    report.refused.append({"model": name, "version": version, "reason": str(exc)})
                    continue
                except BaseException:
                    self._publish(name, lambda e, v=version: _without_version(e, v))
                    raise
                loaded[version] = handle
                report.loaded.append({"model": name, "version": version})
        return aspired

    def _switch(
        self, name: str, source: ModelSource | None, aspired: list[int], on_disk: dict[int, Any],
        failed: dict[int, VersionStatus], loaded: dict[int, ModelHandle], report: ReloadReport,
    ) -> None:
        """Publish the model's new snapshot, then retire what it no longer serves."""
        policy = source.policy if source is not None else None
        current = self._models.get(name, ModelEntry(name=name)).available()
        serving = {v: h for v, h in current.items() if v in aspired and v in on_disk}
        serving.update(loaded)
        if not serving and policy is not None and policy.select(list(on_disk)):
            # availability first: nothing the policy wants could be loaded, so the newest
            # version that serves (and is still on disk) keeps serving
            fallback = [v for v in current if v in on_disk]
            if fallback:
                serving = {fallback[-1]: current[fallback[-1]]}
        retired = [h for v, h in current.items() if v not in serving]
        wanted = set(policy.select(list(on_disk))) if policy is not None else set()
        labels = dict(policy.labels) if policy is not None else {}

        def switch(now: ModelEntry) -> ModelEntry:
            # versions still draining from an earlier reload stay listed until they are closed
            versions = {v: status for v, status in now.versions.items() if status.state == UNLOADING}
            versions.update({v: status for v, status in failed.items() if v in wanted})
            versions.update({v: VersionStatus(v, AVAILABLE, handle=h) for v, h in serving.items()})
            versions.update({h.version: VersionStatus(h.version, UNLOADING, handle=h) for h in retired})
            return ModelEntry(name=name, versions=dict(sorted(versions.items())), labels=labels)

        if not self._publish(name, switch):  # closed while loading: nobody will serve these
            for handle in loaded.values():
                handle.close()
            return
        if policy is not None and policy.policy == "specific":
            missing = [v for v in policy.versions if v not in on_disk]
            if missing:
                self._warn(name, f"versions.json asks for version(s) {', '.join(map(str, missing))}, "
                                 f"not on disk (versions: {', '.join(map(str, on_disk)) or 'none'})")
        for label, version in labels.items():
            if version not in serving:
                self._warn(name, f"label '{label}' points at version {version}, which is not served "
                                 f"(served: {', '.join(map(str, sorted(serving))) or 'none'})")
        # unload what was switched away from, once its last request is answered
        for handle in retired:
            handle.retire()
            report.unloaded.append({"model": name, "version": handle.version})
            self._unload_when_idle(handle)

    def _unload_when_idle(self, handle: ModelHandle) -> None:
        def unload() -> None:
            self._lower_priority()  # freeing a session's memory is background work too
            handle.wait_idle()
            handle.close()
            log.info("unloaded model %s version %d", handle.name, handle.version)
            self._publish(handle.name, lambda e: _without_version(e, handle.version, only=handle))

        thread = threading.Thread(target=unload, name=f"unload-{handle.name}-{handle.version}", daemon=True)
        self._unloaders = [t for t in self._unloaders if t.is_alive()] + [thread]
        thread.start()

    def _publish(self, name: str, change: Callable[[ModelEntry], ModelEntry | None]) -> bool:
        """Replace one model's entry in a new snapshot (atomically for readers); False once closed."""
        with self._lock:
            if self._closing.is_set():
                return False
            models = dict(self._models)
            updated = change(models.get(name, ModelEntry(name=name)))
            if updated is None or (not updated.versions and updated.error is None):
                models.pop(name, None)
            else:
                models[name] = updated
            self._models = models
            return True

    def _refuse(self, report: ReloadReport, model: str, version: int | None, reason: str) -> None:
        report.refused.append({"model": model, **({"version": version} if version is not None else {}),
                               "reason": reason})
        if self._last_errors.get(model) != reason:  # one line per new problem, not one per poll
            self._last_errors[model] = reason
            log.error("refused %s: %s", "every model" if model == "*" else f"model {model}", reason)

    def _warn(self, model: str, message: str) -> None:
        """Log a warning once per distinct message, not once per poll."""
        key = f"warning:{model}:{message}"
        if key not in self._last_errors:
            self._last_errors[key] = message
            log.warning("model %s: %s", model, message)

    def _make_handle(self, servable: Servable) -> ModelHandle:
        on_batch = None
        if self._on_batch is not None:
            on_batch = functools.partial(self._on_batch, servable.name, servable.version)
        name = f"{servable.name}/{servable.version}"
        runner: Runner[Item, Row]
        if not self._settings.batching:
            runner = DirectRunner(servable.predict, name=name, on_batch=on_batch)
        else:
            knobs = servable.manifest.batching
            runner = Batcher(
                servable.predict,
                name=name,
                max_batch_size=knobs.max_batch_size,
                batch_timeout_s=knobs.batch_timeout_ms / 1000.0,
                max_queue=knobs.max_queue,
                workers=knobs.workers,
                on_batch=on_batch,
                allowed_batch_sizes=knobs.allowed_batch_sizes,
            )
        return ModelHandle(servable, runner)


def _placement(source: ModelSource) -> Placement:
    return Placement(device=source.policy.device, gpu_memory_mb=source.policy.gpu_memory_mb)


def _with_version(entry: ModelEntry, status: VersionStatus) -> ModelEntry:
    return replace(entry, versions=dict(sorted({**entry.versions, status.version: status}.items())))


def _without_version(entry: ModelEntry, version: int, only: ModelHandle | None = None) -> ModelEntry:
    status = entry.versions.get(version)
    if status is None or (only is not None and status.handle is not only):
        return entry
    return replace(entry, versions={v: s for v, s in entry.versions.items() if v != version})


def _model_of(error: DiscoveryError, graphs_dir: str) -> str:
    """The model folder an error is about (its path's first part under graphs_dir)."""
    from pathlib import Path

    path = getattr(error, "path", None)
    if path is None:
        text = str(error)
        path = text.split("'")[1] if text.count("'") >= 2 else text
    try:
        return Path(path).resolve().relative_to(Path(graphs_dir).resolve()).parts[0]
    except (ValueError, IndexError):
        return str(path)


def init_app(app: Any, settings: Settings, *, on_batch: BatchObserver | None = None) -> ModelRegistry:
    registry = ModelRegistry(settings, on_batch=on_batch)
    registry.load_all()
    registry.start_polling(settings.poll_interval_s)
    app.extensions[EXTENSION] = registry
    return registry


def get_registry(app: Any) -> ModelRegistry:
    return app.extensions[EXTENSION]

"""Reconciling (TF Serving's *source* and *aspired versions*): make what is served match the disk.

``load_all()`` at start-up (strict by default: the first failure stops start-up),
``reload()`` on demand (``POST /admin/reload``) and every ``poll_interval_s`` (the poller):
new versions are loaded and warmed up on a low-priority loader thread, then switched in
atomically (``ModelRegistry.publish``: one immutable snapshot replaces the last); versions no
longer wanted stop taking new requests at once and are closed (runner, then session) only
when their last borrower has returned (*drain*). A version that fails to load is refused
with one log line, listed as ``failed`` with its reason, and the versions already serving
keep serving. A refused version is retried once its files change.

What a changing folder cannot do (see docs/operations.md, "Reload"):

- a model folder that changes under the scan (a version removed mid-listing) is skipped for
  that round and listed in ``refused``; the other models are applied;
- files are read only if regular and within ``file_read_timeout_s`` (``app.model_files``), and
  the scan of graphs/ is bounded the same way on its own thread, so a FIFO, a device or a hung
  mount refuses a version (or the round) instead of blocking the loader;
- a served version whose files change (``discovery.fingerprint``) is loaded again as a new
  load: if that works it is switched in and the old one drains, else the old one keeps
  serving and the failure is its ``reason`` (``changed`` in the report);
- concurrent reloads share one pending round, and ``reload(timeout)`` stops waiting, never
  the round.

The registry (``app.registry``) only serves and hands out handles; the runners a handle
runs with are built by ``app.runners``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from . import memory, model_files
from .config import Settings
from .discovery import DiscoveryError, ModelSource, scan
from .memory import configure_gpus
from .registry import (
    AVAILABLE,
    FAILED,
    LOADING,
    UNLOADED,
    UNLOADING,
    BatchObserver,
    ModelEntry,
    ModelHandle,
    ModelRegistry,
    NoModels,
    VersionStatus,
)
from .residency import Residency, lower_thread_priority
from .runners import build_handle
from .servable import ModelLoadError, Placement, Servable, SessionOptions, load_servable

log = logging.getLogger(__name__)


@dataclass
class ReloadReport:
    loaded: list[dict[str, Any]] = field(default_factory=list)
    unloaded: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    changed: list[dict[str, Any]] = field(default_factory=list)  # served versions whose files changed
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "unloaded": self.unloaded, "refused": self.refused,
                "changed": self.changed, "seconds": round(self.seconds, 3)}


class Reconciler:
    """Keeps the registry's versions matching the disk: loads, switches, drains, unloads.

    One reconcile at a time, on a single low-priority loader thread; a poller thread calls
    it every ``poll_interval_s``; each unloaded version closes on its own thread once its
    last request is answered. The registry's ``close`` stops all of it (``on_close``).
    """

    def __init__(self, registry: ModelRegistry, settings: Settings, *, on_batch: BatchObserver | None = None) -> None:
        self.registry = registry
        self._settings = settings
        self._on_batch = on_batch
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()  # one reconcile at a time
        self._last_errors: dict[str, str] = {}
        self._unloaders: list[threading.Thread] = []
        self._unloaders_lock = threading.Lock()
        self._loader: ThreadPoolExecutor | None = None
        self._pending: Future[ReloadReport] | None = None  # the last round asked for
        self._pending_lock = threading.Lock()
        self._scan_idle = threading.Lock()  # held while a scan runs: a hung one is never doubled
        self._poller: threading.Thread | None = None
        self._options = SessionOptions(
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            gpu_memory_fraction=settings.gpu_memory_fraction or None,
        )
        self._sources: dict[str, ModelSource] = {}  # the last scan's, for loads on demand
        self._starting = False
        self.residency = Residency(registry, settings, self._build, lambda name: self._sources.get(name))
        registry.on_close(self._stop)

    @property
    def _closing(self) -> threading.Event:
        return self.registry.closing

    @property
    def _models(self) -> dict[str, ModelEntry]:
        return self.registry.snapshot

    def _publish(self, name: str, change: Callable[[ModelEntry], ModelEntry | None]) -> bool:
        return self.registry.publish(name, change)

    def _make_handle(self, servable: Servable) -> ModelHandle:
        return build_handle(servable, self._settings, self._on_batch)

    def _stop(self, end: float | None) -> None:
        """The registry is closed and drained: join the unloaders, stop the loader."""
        with self._unloaders_lock:
            unloaders = list(self._unloaders)
        for thread in unloaders:
            thread.join(None if end is None else max(0.0, end - time.monotonic()))
        if self._loader is not None:
            self._loader.shutdown(wait=False, cancel_futures=True)

    def load_all(self) -> None:
        """Start-up: load every wanted version in this thread. Strict by default: the first
        failure stops start-up (and unloads what was loaded)."""
        configure_gpus()  # before any Session: memory growth, never grab the whole card
        strict = self._settings.strict_startup
        self._starting = True
        try:
            self._reconcile(strict=strict)
        except BaseException:
            self.registry.close(timeout=0)
            raise
        finally:
            self._starting = False
        if not self._models:
            log.warning("no models found under %s", self._settings.graphs_dir)

    def reload(self, timeout: float | None = None) -> ReloadReport:
        """Re-read the graphs directory and every ``versions.json``; load what is new on the
        loader thread, switch, and unload what is no longer wanted (after its drain).

        Callers that arrive while a round is queued share it (it starts after them, so it
        sees what they changed): at most one round runs and one waits, however many call. Past
        ``timeout`` s this raises ``TimeoutError``; the round carries on and its outcome
        shows in ``GET /models``."""
        if self._closing.is_set():
            raise NoModels("the registry is shutting down")
        with self._pending_lock:
            pending = self._pending
            if pending is None or pending.running() or pending.done():
                pending = self._pending = self._loader_pool().submit(self._reconcile, strict=False)
        return pending.result(timeout)

    def start_polling(self, interval_s: float) -> None:
        """Reload every ``interval_s`` seconds on a daemon thread until ``close``."""
        if interval_s <= 0 or self._poller is not None:
            return

        def poll() -> None:
            while not self._closing.wait(interval_s):
                try:
                    report = self.reload(self._settings.reload_wait_s)
                    if report.loaded or report.unloaded or report.changed:
                        log.info("poll: %s", report.to_json())
                except (NoModels, CancelledError):  # closing
                    return
                except TimeoutError:
                    log.warning("poll: the reload is still running after %g s", self._settings.reload_wait_s)
                except Exception:
                    log.exception("poll: reload failed")

        self._poller = threading.Thread(target=poll, name="graphserve-poll", daemon=True)
        self._poller.start()


    def _loader_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._loader is None:
                self._loader = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="graphserve-loader", initializer=self._lower_priority
                )
            return self._loader

    def _lower_priority(self) -> None:
        """Run reloads at a lower CPU priority than request threads."""
        lower_thread_priority(self._settings.loader_nice)

    def _reconcile(self, *, strict: bool) -> ReloadReport:
        """Make what is served match what is on disk. ``strict`` raises the first error."""
        with self._reload_lock:
            started = time.perf_counter()
            report = ReloadReport()
            try:
                sources, errors = self._scan(strict=strict)
            except DiscoveryError as exc:
                if strict:
                    raise
                self._refuse(report, "*", None, str(exc))
                return report
            broken = {}
            for error in errors:
                name = error.model or "*"
                broken[name] = str(error)
                self._refuse(report, name, None, str(error))
            found = {source.name: source for source in sources}
            self._sources = found  # replaced, never mutated: a load on demand reads it meanwhile
            for name in sorted(set(found) | set(self._models)):
                if self._closing.is_set():
                    break
                if name in broken:
                    self._publish(name, functools.partial(replace, error=broken[name]))
                    continue
                source = found.get(name)
                try:
                    self._reconcile_model(name, source, report, strict=strict)
                except Exception as exc:
                    if strict:
                        raise
                    # one model's surprise (its folder changed mid-load) must not stop the others
                    log.exception("reload of model %s failed; it keeps what it served", name)
                    self._refuse(report, name, None, f"reload failed, kept what was served: {exc}")
            if report.loaded:
                memory.settle_heap()
            report.seconds = time.perf_counter() - started
            return report

    def _scan(self, *, strict: bool) -> tuple[list[ModelSource], list[DiscoveryError]]:
        """``discovery.scan`` on a daemon thread, waited for at most ``file_read_timeout_s``: a
        hung mount holds that one thread (no second scan starts while it hangs; a daemon, so
        it does not hold up the process's exit), never the loader."""
        graphs_dir, timeout = self._settings.graphs_dir, self._settings.file_read_timeout_s
        if not self._scan_idle.acquire(blocking=False):
            raise DiscoveryError(f"the last scan of '{graphs_dir}' is still blocked (a hung mount?): "
                                 "nothing changed this round")

        def work() -> tuple[list[ModelSource], list[DiscoveryError]]:
            try:
                return scan(graphs_dir, strict=strict, read_timeout_s=timeout)
            finally:
                self._scan_idle.release()

        try:
            return model_files.bounded(work, timeout_s=timeout, what=f"scanning '{graphs_dir}'")
        except DiscoveryError:
            raise
        except model_files.ReadTimedOut:
            raise DiscoveryError(f"scanning '{graphs_dir}' took over {timeout:g} s (file_read_timeout_s; "
                                 "a hung mount?): nothing changed this round") from None
        except OSError as exc:  # graphs/ itself changed under the listing
            raise DiscoveryError(f"cannot scan '{graphs_dir}': {exc}") from None

    def _reconcile_model(self, name: str, source: ModelSource | None, report: ReloadReport, *, strict: bool) -> None:
        """Load what the policy wants, switch, unload what it no longer wants (one model).

        A refused version does not count towards the policy: with "latest 2" and versions
        1, 2 serving, a broken 3 leaves 1 and 2 serving. A refused version is retried once
        its files change (so polling does not log the same failure forever).
        """
        entry = self._models.get(name, ModelEntry(name=name))
        on_disk = source.versions if source is not None else {}
        marks = source.marks if source is not None else {}
        self._last_errors.pop(name, None)
        failed: dict[int, VersionStatus] = {
            v: status for v, status in entry.versions.items()
            if status.state == FAILED and v in on_disk and status.fingerprint == marks.get(v)
        }
        loaded: dict[int, ModelHandle] = {}
        fresh: dict[int, VersionStatus] = {}  # the serving statuses this round sets (fingerprint, reason)
        try:
            self._reload_changed(name, source, entry, loaded, fresh, report)
            aspired = self._load_wanted(name, source, entry, failed, loaded, fresh, report, strict=strict)
        except BaseException:
            for handle in loaded.values():  # start-up stops: close what this model had loaded
                handle.close()
            raise
        self._switch(name, source, aspired, on_disk, failed, loaded, fresh, report)

    def _reload_changed(
        self, name: str, source: ModelSource | None, entry: ModelEntry, loaded: dict[int, ModelHandle],
        fresh: dict[int, VersionStatus], report: ReloadReport,
    ) -> None:
        """Served versions whose files changed on disk: load the new content as a new load
        (switched in by ``_switch``, the old one drains); if it fails, the old one keeps
        serving with the failure as its reason, and is tried again once its files change again."""
        if source is None:
            return
        for v, status in entry.versions.items():
            marks = source.marks.get(v)
            if status.state != AVAILABLE or status.handle is None or marks is None or status.fingerprint == marks:
                continue
            if v not in source.aspired():
                continue  # switched away from anyway
            if not self.residency.wants_loaded(source, v):
                self.residency.unload_changed(status.handle)  # its next request loads the new content
                report.changed.append({"model": name, "version": v, "action": "unloaded"})
                continue
            log.warning("model %s version %d: its files changed on disk; loading them again", name, v)
            try:
                handle = self._load(source, v)
            except (ModelLoadError, OSError) as exc:
                reason = f"files changed on disk and the new content was refused ({exc}); still serving what was loaded"
                log.error("model %s version %d: %s", name, v, reason)
                fresh[v] = VersionStatus(v, AVAILABLE, reason=reason, handle=status.handle, fingerprint=marks)
                report.changed.append({"model": name, "version": v, "action": "kept", "reason": str(exc)})
                continue
            loaded[v] = handle
            fresh[v] = VersionStatus(v, AVAILABLE, handle=handle, fingerprint=marks)
            report.changed.append({"model": name, "version": v, "action": "reloaded"})
            report.loaded.append({"model": name, "version": v})

    def _load(self, source: ModelSource, version: int) -> ModelHandle:
        """A version the policy wants loaded now, within the memory budget (``app.residency``)."""
        return self.residency.load_now(source, version, reason="startup" if self._starting else "reload")

    def _build(self, source: ModelSource, version: int) -> ModelHandle:
        """Load, warm up and wrap one version in its runner (every load ends here)."""
        servable = load_servable(source.spec(version), self._options, _placement(source),
                                 read_timeout_s=self._settings.file_read_timeout_s, engine=self._settings.engine)
        return self._make_handle(servable)

    def _load_wanted(
        self, name: str, source: ModelSource | None, entry: ModelEntry, failed: dict[int, VersionStatus],
        loaded: dict[int, ModelHandle], fresh: dict[int, VersionStatus], report: ReloadReport, *, strict: bool,
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
            todo = [v for v in aspired if v not in loaded and v not in current and v not in draining
                    and source is not None and self.residency.wants_loaded(source, v)]
            if not todo:
                break
            for version in todo:
                assert source is not None
                marks = source.marks.get(version, ())
                self._publish(name, functools.partial(_with_version, status=VersionStatus(version, LOADING)))
                try:
                    handle = self._load(source, version)
                except (ModelLoadError, OSError) as exc:  # OSError: its folder went away mid-load
                    if strict:
                        raise
                    log.error("refused model %s version %d: %s", name, version, exc)
                    failed[version] = VersionStatus(version, FAILED, reason=str(exc), fingerprint=marks)
                    self._publish(name, functools.partial(_with_version, status=failed[version]))
                    report.refused.append({"model": name, "version": version, "reason": str(exc)})
                    continue
                except BaseException:
                    self._publish(name, functools.partial(_without_version, version=version))
                    raise
                loaded[version] = handle
                fresh[version] = VersionStatus(version, AVAILABLE, handle=handle, fingerprint=marks)
                report.loaded.append({"model": name, "version": version})
        return aspired

    def _switch(
        self, name: str, source: ModelSource | None, aspired: list[int], on_disk: dict[int, Any],
        failed: dict[int, VersionStatus], loaded: dict[int, ModelHandle], fresh: dict[int, VersionStatus],
        report: ReloadReport,
    ) -> None:
        """Publish the model's new snapshot, then retire what it no longer serves (and the old
        handles of versions loaded again because their files changed: they drain unlisted)."""
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
        retired = [h for v, h in current.items() if serving.get(v) is not h]
        wanted = set(policy.select(list(on_disk))) if policy is not None else set()
        labels = dict(policy.labels) if policy is not None else {}

        def switch(now: ModelEntry) -> ModelEntry:
            # versions still draining from an earlier reload stay listed until they are closed
            versions = {v: status for v, status in now.versions.items() if status.state == UNLOADING}
            versions.update({v: status for v, status in failed.items() if v in wanted})
            versions.update({v: _serving_status(now, fresh, v, h) for v, h in serving.items()})
            versions.update({h.version: VersionStatus(h.version, UNLOADING, handle=h)
                             for h in retired if h.version not in serving})
            versions.update(self._not_loaded(source, now, aspired, versions, retired))
            return ModelEntry(name=name, versions=dict(sorted(versions.items())), labels=labels)

        if not self._publish(name, switch):  # closed while loading: nobody will serve these
            for handle in loaded.values():
                handle.close()
            return
        for label, version in labels.items():
            if version not in serving and not (self.residency.limited and version in aspired):
                self._warn(name, f"label '{label}' points at version {version}, which is not served "
                                 f"(served: {', '.join(map(str, sorted(serving))) or 'none'})")
        # unload what was switched away from, once its last request is answered
        for handle in retired:
            handle.retire()
            if handle.version not in serving:  # else: replaced by its own new content
                report.unloaded.append({"model": name, "version": handle.version})
            self._unload_when_idle(handle)

    def _not_loaded(self, source: ModelSource | None, now: ModelEntry, aspired: list[int],
                    listed: dict[int, VersionStatus], retired: list[ModelHandle]) -> dict[int, VersionStatus]:
        """Aspired versions this round did not load (with a budget; or unloaded through the
        repository API): a load on demand that finished or runs meanwhile is kept, the rest
        listed ``unloaded`` (or ``failed``: larger than the whole budget)."""
        if source is None:
            return {}
        statuses = {}
        for v in aspired:
            if v in listed or v not in source.versions:
                continue
            status = now.versions.get(v)
            marks = source.marks.get(v, ())
            if status is not None and status.state in (AVAILABLE, LOADING) and status.handle not in retired:
                statuses[v] = status  # loaded (or loading) on demand while this round ran
            elif status is not None and (status.state == UNLOADED or status.over_budget) and status.fingerprint == marks:
                statuses[v] = status  # as it was (the repository API's unload and load change it)
            else:
                statuses[v] = self.residency.cold_status(source, v, marks)
        return statuses

    def _unload_when_idle(self, handle: ModelHandle) -> None:
        def unload() -> None:
            self._lower_priority()  # freeing a session's memory is background work too
            handle.wait_idle()
            try:
                handle.close()
                log.info("unloaded model %s version %d", handle.name, handle.version)
            except Exception:  # noqa: BLE001 - still gone from the snapshot: a reload may load it again
                log.exception("unloading model %s version %d failed", handle.name, handle.version)
            self._publish(handle.name, lambda e: _without_version(e, handle.version, only=handle))
            memory.settle_heap()  # its cycles collected, the rest kept out of every collection

        thread = threading.Thread(target=unload, name=f"unload-{handle.name}-{handle.version}", daemon=True)
        with self._unloaders_lock:  # started before it is listed: _stop joins only started threads
            thread.start()
            self._unloaders = [t for t in self._unloaders if t.is_alive()] + [thread]

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


def _placement(source: ModelSource) -> Placement:
    return Placement(device=source.policy.device, gpu_memory_mb=source.policy.gpu_memory_mb)


def _serving_status(now: ModelEntry, fresh: dict[int, VersionStatus], version: int, handle: ModelHandle) -> VersionStatus:
    """A serving version's status: set this round, else kept as it was (fingerprint, reason)."""
    for status in (fresh.get(version), now.versions.get(version)):
        if status is not None and status.handle is handle and status.state == AVAILABLE:
            return status
    return VersionStatus(version, AVAILABLE, handle=handle)


def _with_version(entry: ModelEntry, status: VersionStatus) -> ModelEntry:
    return replace(entry, versions=dict(sorted({**entry.versions, status.version: status}.items())))


def _without_version(entry: ModelEntry, version: int, only: ModelHandle | None = None) -> ModelEntry:
    status = entry.versions.get(version)
    if status is None or (only is not None and status.handle is not only):
        return entry
    return replace(entry, versions={v: s for v, s in entry.versions.items() if v != version})

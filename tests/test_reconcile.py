"""Unit tests for app.reconcile (Reconciler, ReloadReport), on a real graphs folder in tmp_path
and a fake loader instead of TensorFlow.

The folders are laid out as app/discovery.py reads them (graphs/<model>/<version>/model.pb +
model.json, optional versions.json), so discovery, version policies, fingerprints and the
switch/drain logic all run for real. Only the expensive step is faked: ``load_servable`` (the
GraphDef import, Session and warm-up) is replaced in ``app.reconcile`` by ``FakeLoader``, which
reads the version's real manifest (``app.manifest``, pure Python) and refuses a version whose
model.pb says ``broken``, with the ``ModelLoadError`` the real loader raises. (``Reconciler``
has no loader parameter, so a monkeypatch is the seam; ``configure_gpus`` is patched too.)

Covered: load_all loading what each policy wants (with placement and session options), strict
and lenient start-up, reload adding / dropping versions and models with a ReloadReport of what
changed, a refused version (the others keep serving; retried only when its files change), a
broken versions.json or a vanished graphs folder at reload, the drain of switched-away versions,
close during a load, and the poller stopping on close.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import app.reconcile as reconcile_module
from app import manifest as manifest_lib
from app import model_files
from app.config import Settings
from app.discovery import PolicyError
from app.reconcile import Reconciler, ReloadReport
from app.registry import (
    AVAILABLE,
    FAILED,
    LOADING,
    UNLOADING,
    ModelHandle,
    ModelNotFound,
    ModelRegistry,
    ModelUnavailable,
    NoModels,
)
from app.servable import ModelLoadError, Placement, ServableSpec, SessionOptions
from tests.test_registry import WAIT, FakeServable, eventually

MANIFEST = {"input": {"tensor": "x:0", "height": 1, "width": 1, "channels": 1}, "output": {"tensor": "y:0"},
            "batching": {"workers": 1}}


def write_version(root: Path, model: str, version: int, *, graph: bytes = b"fake graph") -> Path:
    """graphs/<model>/<version>/ with a model.pb and a valid model.json, written in place."""
    folder = root / model / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / manifest_lib.MANIFEST_FILE).write_text(json.dumps(MANIFEST), encoding="utf-8")
    (folder / manifest_lib.GRAPH_FILE).write_bytes(graph)
    return folder


def write_policy(root: Path, model: str, data: dict[str, Any] | str) -> None:
    text = data if isinstance(data, str) else json.dumps(data)
    (root / model / "versions.json").write_text(text, encoding="utf-8")


class FakeLoader:
    """Stands in for ``app.servable.load_servable``: same arguments, same refusals, no TensorFlow.

    A model.pb that starts with ``broken`` is refused; while ``gate`` is clear a load blocks
    (after setting ``entered``), so a test can act while a version is being loaded.
    """

    def __init__(self) -> None:
        self.loads: list[tuple[str, int]] = []
        self.made: dict[tuple[str, int], list[FakeServable]] = {}
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, spec: ServableSpec, options: SessionOptions | None = None,
                 placement: Placement | None = None, *, read_timeout_s: float = 10.0,
                 engine: str = "tensorflow") -> FakeServable:
        self.loads.append((spec.name, spec.version))
        self.entered.set()
        assert self.gate.wait(WAIT), "test never opened the loader's gate"
        try:
            manifest = manifest_lib.load(spec.manifest_path)
        except manifest_lib.ManifestError as exc:
            raise ModelLoadError(spec.name, spec.manifest_path, str(exc)) from None
        if model_files.read_regular(spec.graph_path, timeout_s=read_timeout_s).startswith(b"broken"):
            raise ModelLoadError(spec.name, spec.graph_path, "cannot parse GraphDef")
        servable = FakeServable(spec, manifest=manifest, placement=placement, options=options)
        self.made.setdefault((spec.name, spec.version), []).append(servable)
        return servable

    def last(self, name: str, version: int) -> FakeServable:
        return self.made[name, version][-1]


@pytest.fixture
def graphs(tmp_path: Path) -> Path:
    root = tmp_path / "graphs"
    root.mkdir()
    return root


@pytest.fixture
def loader(monkeypatch: pytest.MonkeyPatch) -> FakeLoader:
    fake = FakeLoader()
    monkeypatch.setattr(reconcile_module, "load_servable", fake)
    monkeypatch.setattr(reconcile_module, "configure_gpus", lambda: [])
    return fake


@pytest.fixture
def make(graphs: Path, loader: FakeLoader) -> Iterator[Callable[..., Reconciler]]:
    """Build reconcilers over ``graphs`` (no batching, no poller, no nice); close them all at teardown."""
    made: list[Reconciler] = []

    def factory(**overrides: Any) -> Reconciler:
        on_batch = overrides.pop("on_batch", None)
        settings = Settings(graphs_dir=str(graphs), batching=False, poll_interval_s=0, loader_nice=0,
                            request_timeout_s=1.0).replace(overrides)
        reconciler = Reconciler(ModelRegistry(settings), settings, on_batch=on_batch)
        made.append(reconciler)
        return reconciler

    yield factory
    loader.gate.set()
    for reconciler in made:
        reconciler.registry.close(timeout=WAIT)


def served(registry: ModelRegistry) -> dict[str, dict[int, str]]:
    """Every model's versions and their states, as ``GET /models`` shows them."""
    return {e.name: {v: s.state for v, s in e.versions.items()} for e in registry.entries()}


def available(registry: ModelRegistry) -> dict[str, list[int]]:
    return {e.name: list(e.available()) for e in registry.entries() if e.available()}


def gone(registry: ModelRegistry, name: str, version: int) -> Callable[[], bool]:
    """True once ``name``/``version`` has left the snapshot (its drain and close are done)."""
    return lambda: version not in getattr(registry.snapshot.get(name), "versions", {})


def changes(report: ReloadReport) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, Any]]]:
    return ([(d["model"], d["version"]) for d in report.loaded], [(d["model"], d["version"]) for d in report.unloaded],
            [(d["model"], d.get("version")) for d in report.refused])


# -- start-up -------------------------------------------------------------------------------


def test_load_all_loads_every_version_each_policy_wants(graphs: Path, loader: FakeLoader,
                                                        make: Callable[..., Reconciler]) -> None:
    for model, versions in {"latest2": [1, 2, 3], "every": [1, 2], "picked": [1, 2, 3], "plain": [1, 2]}.items():
        for version in versions:
            write_version(graphs, model, version)
    write_policy(graphs, "latest2", {"policy": "latest", "num_versions": 2, "labels": {"stable": 2, "canary": 3},
                                     "device": "/gpu:1", "gpu_memory_mb": 256})
    write_policy(graphs, "every", {"policy": "all"})
    write_policy(graphs, "picked", {"policy": "specific", "versions": [1, 3]})
    reconciler = make(intra_op_threads=2, inter_op_threads=1)
    reconciler.load_all()
    registry = reconciler.registry
    assert sorted(loader.loads) == [("every", 1), ("every", 2), ("latest2", 2), ("latest2", 3),
                                    ("picked", 1), ("picked", 3), ("plain", 2)]  # plain: latest 1 by default
    assert available(registry) == {"every": [1, 2], "latest2": [2, 3], "picked": [1, 3], "plain": [2]}
    assert all(state == AVAILABLE for versions in served(registry).values() for state in versions.values())
    assert registry.snapshot["latest2"].labels == {"stable": 2, "canary": 3}
    assert registry.get("latest2") is not None and registry.resolve("latest2", version_label="stable")[0].version == 2
    placed = loader.last("latest2", 3)
    assert placed.placement == Placement(device="/GPU:1", gpu_memory_mb=256)
    assert loader.last("plain", 2).placement == Placement()
    assert placed.options == SessionOptions(intra_op_threads=2, inter_op_threads=1, gpu_memory_fraction=None)
    with registry.borrow("picked", version=1) as [handle]:
        assert handle.servable is loader.last("picked", 1)
        assert handle.submit([b"x"])[0].result(WAIT).value == ("picked", 1, b"x")


def test_load_all_with_no_models_serves_nothing_and_says_so(make: Callable[..., Reconciler],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    reconciler = make()
    with caplog.at_level(logging.WARNING, logger="app.reconcile"):
        reconciler.load_all()
    assert reconciler.registry.snapshot == {} and not reconciler.registry.ready()
    assert "no models found" in caplog.text


def test_strict_start_up_raises_the_load_error_and_closes_what_it_loaded(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)  # loaded first (models load in name order)
    write_version(graphs, "b", 1, graph=b"broken!")
    reconciler = make(strict_startup=True)
    with pytest.raises(ModelLoadError, match=r"model 'b': .*model\.pb: cannot parse GraphDef") as info:
        reconciler.load_all()
    assert info.value.model == "b"
    assert loader.last("a", 1).closed.is_set()
    assert reconciler.registry.closing.is_set() and reconciler.registry.snapshot == {}
    with pytest.raises(NoModels):
        reconciler.reload()


def test_strict_start_up_raises_a_layout_error_before_loading_anything(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    write_version(graphs, "b", 1)
    write_policy(graphs, "b", "{not json")
    with pytest.raises(PolicyError, match=r"b/versions\.json: not valid JSON") as info:
        make().load_all()
    assert info.value.model == "b" and loader.loads == []


def test_lenient_start_up_refuses_a_broken_version_and_serves_the_rest(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    write_version(graphs, "a", 2, graph=b"broken")  # the newest: wanted by "latest 1", refused
    write_version(graphs, "b", 1)
    write_version(graphs, "c", 1, graph=b"broken")  # c's only version
    reconciler = make(strict_startup=False)
    reconciler.load_all()
    registry = reconciler.registry
    # a refused version does not count towards the policy: a/1 serves in a/2's place
    assert served(registry) == {"a": {1: AVAILABLE, 2: FAILED}, "b": {1: AVAILABLE}, "c": {1: FAILED}}
    assert loader.loads == [("a", 2), ("a", 1), ("b", 1), ("c", 1)]
    reason = registry.snapshot["a"].versions[2].reason
    assert reason is not None and "cannot parse GraphDef" in reason
    assert registry.get("a").version == 1 and registry.ready()
    with pytest.raises(ModelUnavailable, match="1: failed"):
        registry.resolve("c")


# -- reload ---------------------------------------------------------------------------------


def test_reload_picks_up_a_new_version_and_drops_a_removed_one(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    write_version(graphs, "a", 2)
    reconciler = make()
    reconciler.load_all()
    registry = reconciler.registry
    assert available(registry) == {"a": [2]}

    write_version(graphs, "a", 3)
    report = reconciler.reload()
    assert changes(report) == ([("a", 3)], [("a", 2)], [])
    assert available(registry) == {"a": [3]}
    assert eventually(gone(registry, "a", 2))
    assert loader.last("a", 2).close_calls == 1

    shutil.rmtree(graphs / "a" / "3")  # the newest is taken away: the one before serves again
    report = reconciler.reload()
    assert changes(report) == ([("a", 2)], [("a", 3)], [])
    assert len(loader.made["a", 2]) == 2  # loaded afresh: the first one was closed
    assert registry.get("a").servable is loader.last("a", 2)
    assert eventually(gone(registry, "a", 3)) and loader.last("a", 3).closed.is_set()
    json_report = report.to_json()
    assert set(json_report) == {"loaded", "unloaded", "refused", "changed", "seconds"}
    assert json_report["loaded"] == [{"model": "a", "version": 2}] and json_report["seconds"] >= 0


def test_a_reload_with_nothing_changed_reports_nothing_and_loads_nothing(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    before = reconciler.registry.get("a")
    report = reconciler.reload()
    assert changes(report) == ([], [], []) and loader.loads == [("a", 1)]
    assert reconciler.registry.get("a") is before


def test_a_new_model_appears_and_a_removed_model_goes_after_its_drain(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    registry = reconciler.registry
    write_version(graphs, "b", 4)
    shutil.rmtree(graphs / "a")
    [held] = registry.acquire("a")
    report = reconciler.reload()
    assert changes(report) == ([("b", 4)], [("a", 1)], [])
    with pytest.raises(ModelNotFound):
        registry.resolve("a")  # only draining: not served to new requests
    assert served(registry)["a"] == {1: UNLOADING}
    assert not loader.last("a", 1).closed.is_set()  # its last request is still running
    held.release()
    assert eventually(lambda: "a" not in registry.snapshot)
    assert loader.last("a", 1).closed.is_set() and available(registry) == {"b": [4]}


def test_a_version_held_by_a_request_is_closed_only_after_its_release(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    registry = reconciler.registry
    old = loader.last("a", 1)
    first, second = registry.acquire("a")[0], registry.acquire("a")[0]
    write_version(graphs, "a", 2)
    assert changes(reconciler.reload()) == ([("a", 2)], [("a", 1)], [])
    with registry.borrow("a") as [fresh]:
        assert fresh.version == 2  # new requests go to the new version at once
    assert served(registry)["a"] == {1: UNLOADING, 2: AVAILABLE}
    assert first.submit([b"late"])[0].result(WAIT).value == ("a", 1, b"late")  # the old one still answers
    first.release()
    assert not old.closed.wait(0.05)  # one request still holds it
    second.release()
    assert old.closed.wait(WAIT)
    assert eventually(gone(registry, "a", 1)) and old.close_calls == 1


def test_a_version_wanted_again_while_it_drains_is_loaded_afresh(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    registry = reconciler.registry
    [held] = registry.acquire("a")
    write_version(graphs, "a", 2)
    reconciler.reload()  # 1 drains behind the held request
    shutil.rmtree(graphs / "a" / "2")
    reports: list[ReloadReport] = []
    reloader = threading.Thread(target=lambda: reports.append(reconciler.reload()))
    reloader.start()  # waits (up to request_timeout_s + 5) for version 1 to finish draining
    held.release()
    reloader.join(WAIT + 6)
    assert not reloader.is_alive()
    assert changes(reports[0]) == ([("a", 1)], [("a", 2)], [])
    first, second = loader.made["a", 1]
    assert first.closed.is_set() and not second.closed.is_set()
    assert registry.get("a").servable is second


def test_a_version_that_fails_at_reload_is_refused_and_the_others_keep_serving(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    write_version(graphs, "b", 1)
    reconciler = make()
    reconciler.load_all()
    registry = reconciler.registry
    write_version(graphs, "a", 2, graph=b"broken")
    write_version(graphs, "b", 2)
    report = reconciler.reload()
    assert changes(report) == ([("b", 2)], [("b", 1)], [("a", 2)])
    assert "cannot parse GraphDef" in report.refused[0]["reason"]
    assert served(registry)["a"] == {1: AVAILABLE, 2: FAILED}
    assert registry.get("a").version == 1 and not loader.last("a", 1).closed.is_set()

    assert changes(reconciler.reload()) == ([], [], [])  # unchanged files: not retried on every poll
    assert loader.loads.count(("a", 2)) == 1

    write_version(graphs, "a", 2, graph=b"fixed graph, a different size")  # its files change: retried
    report = reconciler.reload()
    assert changes(report) == ([("a", 2)], [("a", 1)], [])
    assert loader.loads.count(("a", 2)) == 2
    assert available(registry)["a"] == [2]


def test_a_broken_versions_json_at_reload_keeps_the_model_serving(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    write_version(graphs, "b", 1)
    reconciler = make()
    reconciler.load_all()
    registry = reconciler.registry
    write_policy(graphs, "a", {"policy": "newest"})
    write_version(graphs, "a", 2)  # not loaded: a's policy cannot be read
    write_version(graphs, "b", 2)  # b is reconciled all the same
    report = reconciler.reload()
    assert changes(report) == ([("b", 2)], [("b", 1)], [("a", None)])
    assert "field 'policy'" in report.refused[0]["reason"]
    entry = registry.snapshot["a"]
    assert entry.error is not None and "versions.json" in entry.error
    assert list(entry.available()) == [1] and registry.get("a").version == 1

    write_policy(graphs, "a", {"policy": "latest"})
    report = reconciler.reload()
    assert changes(report) == ([("a", 2)], [("a", 1)], [])
    assert registry.snapshot["a"].error is None


def test_a_vanished_graphs_folder_at_reload_changes_nothing(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    before = reconciler.registry.snapshot
    shutil.rmtree(graphs)
    report = reconciler.reload()
    assert changes(report) == ([], [], [("*", None)])
    assert "does not exist" in report.refused[0]["reason"]
    assert reconciler.registry.snapshot is before and not loader.last("a", 1).closed.is_set()


def test_label_warnings_are_logged_once_not_on_every_reload(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler], caplog: pytest.LogCaptureFixture,
) -> None:
    write_version(graphs, "a", 1)
    write_version(graphs, "a", 2)
    write_policy(graphs, "a", {"labels": {"old": 1}})  # latest 1 serves 2 only
    reconciler = make()
    with caplog.at_level(logging.WARNING, logger="app.reconcile"):
        reconciler.load_all()
        reconciler.reload()
        reconciler.reload()
    warnings = [r.getMessage() for r in caplog.records if "label 'old'" in r.getMessage()]
    assert warnings == ["model a: label 'old' points at version 1, which is not served (served: 2)"]


def test_the_batch_observer_is_bound_to_each_version(graphs: Path, make: Callable[..., Reconciler]) -> None:
    write_version(graphs, "a", 3)
    calls: list[tuple[Any, ...]] = []
    reconciler = make(on_batch=lambda *args: calls.append(args))
    reconciler.load_all()
    with reconciler.registry.borrow("a") as [handle]:
        assert [f.result(WAIT).value for f in handle.submit([b"1", b"2"])] == [("a", 3, b"1"), ("a", 3, b"2")]
    assert [args[:3] for args in calls] == [("a", 3, 2)]


def test_load_all_uses_batching_when_it_is_on(graphs: Path, make: Callable[..., Reconciler]) -> None:
    write_version(graphs, "a", 1)
    reconciler = make(batching=True)
    reconciler.load_all()
    handle: ModelHandle = reconciler.registry.get("a")
    assert handle.batching
    assert handle.submit([b"x"])[0].result(WAIT).value == ("a", 1, b"x")


# -- closing --------------------------------------------------------------------------------


def test_close_during_a_load_closes_the_new_version_instead_of_serving_it(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    registry = reconciler.registry
    write_version(graphs, "a", 2)
    loader.gate.clear()
    loader.entered.clear()
    reports: list[ReloadReport] = []
    reloader = threading.Thread(target=lambda: reports.append(reconciler.reload()))
    reloader.start()
    assert loader.entered.wait(WAIT)  # the loader thread is inside load_servable for a/2
    assert served(registry)["a"] == {1: AVAILABLE, 2: LOADING}
    assert registry.close(timeout=WAIT)
    loader.gate.set()
    reloader.join(WAIT)
    assert not reloader.is_alive()
    assert loader.last("a", 1).closed.is_set()
    assert loader.last("a", 2).closed.is_set()  # loaded after close: nobody will serve it
    assert registry.snapshot == {}


def test_reload_after_close_is_refused(graphs: Path, make: Callable[..., Reconciler]) -> None:
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    reconciler.registry.close(timeout=WAIT)
    with pytest.raises(NoModels, match="shutting down"):
        reconciler.reload()


def test_polling_picks_up_a_new_version_and_its_thread_ends_on_close(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler],
) -> None:
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    before = set(threading.enumerate())
    reconciler.start_polling(0.01)
    reconciler.start_polling(0.01)  # a second start does not start a second poller
    pollers = [t for t in set(threading.enumerate()) - before if t.name == "graphserve-poll"]
    assert len(pollers) == 1 and pollers[0].daemon
    write_version(graphs, "a", 2)
    assert eventually(lambda: available(reconciler.registry).get("a") == [2])
    # let version 1's unloader finish before closing (closing while it starts: the last test)
    assert eventually(gone(reconciler.registry, "a", 1))
    assert reconciler.registry.close(timeout=WAIT)
    pollers[0].join(WAIT)
    assert not pollers[0].is_alive()
    assert loader.last("a", 2).closed.is_set()


def test_polling_off_starts_no_thread(graphs: Path, make: Callable[..., Reconciler]) -> None:
    reconciler = make()
    before = set(threading.enumerate())
    reconciler.start_polling(0)
    assert not [t for t in set(threading.enumerate()) - before if t.name == "graphserve-poll"]


def test_close_while_a_reload_starts_an_unloader_does_not_raise(
    graphs: Path, loader: FakeLoader, make: Callable[..., Reconciler], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A poll's reload switches versions on the loader thread while SIGTERM's close runs: the
    close must not fail. The unloader's start is held open (100 ms at most) for the close to land
    in: a thread listed before it is started made ``_stop``'s join raise "cannot join thread
    before it is started" (fixed: started, then listed, under a lock)."""
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    starting, go = threading.Event(), threading.Event()

    class GatedThread(threading.Thread):
        def start(self) -> None:
            if self.name.startswith("unload-"):
                starting.set()
                go.wait(0.1)  # bounded: a close that (rightly) waits for the start cannot deadlock it
            super().start()

    monkeypatch.setattr(reconcile_module, "threading", types.SimpleNamespace(
        Thread=GatedThread, Lock=threading.Lock, get_native_id=threading.get_native_id))
    write_version(graphs, "a", 2)
    reloader = threading.Thread(target=reconciler.reload)
    reloader.start()
    try:
        assert starting.wait(WAIT)  # a/2 is switched in; a/1's unloader is about to start
        reconciler.registry.close(timeout=WAIT)
    finally:
        go.set()
        reloader.join(WAIT)
    assert loader.last("a", 1).closed.is_set() and loader.last("a", 2).closed.is_set()

"""Unit tests for app.registry (ModelRegistry, ModelHandle) and app.runners.build_handle.

Driven by fake servables, the way tests/test_batching.py drives the batcher with a fake
predict: the registry only ever reads a servable's ``name``, ``version``, ``label(i)``,
``num_classes`` and calls ``close()`` (``build_handle`` adds ``predict`` and
``manifest.batching``), so ``FakeServable`` has exactly those and no TensorFlow session.
Snapshots are published by hand with ``ModelRegistry.publish``, as ``app.reconcile`` does.

Covered: lookup by model / version / label and the latest-version default; every not-found
error and what it says; ``acquire`` by name, list of names and None, all or nothing; a held
handle keeping its version alive across a publish; close (drain, timeout, ``on_close``);
readers never blocked by, nor seeing a half-made, publish. Concurrency is made deterministic
with Events; the only waits are short negative checks ("still blocked after 50 ms").
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from app.batching import Batcher, BatcherClosed, DirectRunner, QueueFull
from app.config import Settings
from app.manifest import BatchingSpec, InputSpec, Manifest, OutputSpec
from app.registry import (
    AVAILABLE,
    FAILED,
    LOADING,
    UNLOADING,
    BadModelSelection,
    ModelEntry,
    ModelHandle,
    ModelNotFound,
    ModelRegistry,
    ModelUnavailable,
    NoModels,
    VersionNotFound,
    VersionStatus,
)
from app.runners import build_handle
from app.servable import ServableSpec

WAIT = 5.0  # generous bound for anything that should happen "at once"
BLOCKED = 0.05  # how long a negative check ("it is still waiting") gives a wrong implementation


def eventually(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``predicate`` (every 5 ms) until it holds or ``timeout`` passes."""
    done = threading.Event()
    deadline = threading.Timer(timeout, done.set)
    deadline.start()
    try:
        while not predicate():
            if done.wait(0.005):
                return predicate()
        return True
    finally:
        deadline.cancel()


def fake_manifest(batching: BatchingSpec | None = None) -> Manifest:
    return Manifest(input=InputSpec("x:0", 1, 1, 1), output=OutputSpec("y:0"),
                    batching=batching or BatchingSpec(workers=1))


class FakeServable:
    """What the registry, runners and reconciler use of a ``Servable``, without TensorFlow.

    ``predict`` answers ``(name, version, item)`` per item, so a test can see which version
    answered; ``close`` is counted and must not be called twice.
    """

    takes_images = True
    signatures: dict[str, Any] = {}

    def __init__(self, spec: ServableSpec, *, manifest: Manifest | None = None,
                 labels: Sequence[str] | None = None, placement: Any = None, options: Any = None) -> None:
        self.spec = spec
        self.manifest = manifest or fake_manifest()
        self.labels = list(labels) if labels is not None else None
        self.num_classes = len(self.labels) if self.labels else 3
        self.placement = placement
        self.options = options
        self.node_count = 1
        self.label_calls = 0
        self.predicted: list[list[Any]] = []
        self.close_calls = 0
        self.closed = threading.Event()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.spec.version

    def label(self, class_id: int) -> str:
        self.label_calls += 1
        return self.labels[class_id] if self.labels else str(class_id)

    def predict(self, items: Sequence[Any]) -> list[Any]:
        assert not self.closed.is_set(), f"{self.name}/{self.version} predicted after close"
        self.predicted.append(list(items))
        return [(self.name, self.version, item) for item in items]

    def close(self) -> None:
        self.close_calls += 1
        self.closed.set()

    def __repr__(self) -> str:
        return f"<FakeServable {self.name}/{self.version}>"


def fake_servable(name: str, version: int, **kwargs: Any) -> FakeServable:
    return FakeServable(ServableSpec(name=name, version=version, directory=Path("/nowhere") / name / str(version)),
                        **kwargs)


def make_handle(name: str, version: int, **kwargs: Any) -> ModelHandle:
    servable = fake_servable(name, version, **kwargs)
    return ModelHandle(servable, DirectRunner(servable.predict, name=f"{name}/{version}"))  # type: ignore[arg-type]


def fake_of(handle: ModelHandle) -> FakeServable:
    servable = handle.servable
    assert isinstance(servable, FakeServable)
    return servable


def entry(name: str, handles: Sequence[ModelHandle] = (), *, states: dict[int, str] | None = None,
          labels: dict[str, int] | None = None, error: str | None = None) -> ModelEntry:
    """A model's entry: ``handles`` available, ``states`` extra versions without a handle."""
    versions = {h.version: VersionStatus(h.version, h.state, handle=h) for h in handles}
    for version, state in (states or {}).items():
        versions[version] = VersionStatus(version, state, reason="broken" if state == FAILED else None)
    return ModelEntry(name=name, versions=dict(sorted(versions.items())), labels=labels or {}, error=error)


def serve(registry: ModelRegistry, model: ModelEntry) -> None:
    assert registry.publish(model.name, lambda _old: model)


@pytest.fixture
def registry() -> Iterator[ModelRegistry]:
    made = ModelRegistry(Settings())
    yield made
    made.close(timeout=WAIT)


@pytest.fixture
def abc(registry: ModelRegistry) -> dict[tuple[str, int], ModelHandle]:
    """a: versions 1-3 (labels stable=1, canary=3); b: version 1; c: only a failed version 1."""
    handles = {(n, v): make_handle(n, v) for n, v in [("a", 1), ("a", 2), ("a", 3), ("b", 1)]}
    serve(registry, entry("a", [handles["a", v] for v in (1, 2, 3)], labels={"stable": 1, "canary": 3}))
    serve(registry, entry("b", [handles["b", 1]]))
    serve(registry, entry("c", states={1: FAILED}))
    return handles


# -- lookup ---------------------------------------------------------------------------------


def test_lookup_by_model_version_and_label(registry: ModelRegistry, abc: dict[tuple[str, int], ModelHandle]) -> None:
    assert registry.resolve("a") == [abc["a", 3]]  # no version asked: the newest available
    assert registry.resolve("a", version=1) == [abc["a", 1]]
    assert registry.resolve("a", version=2) == [abc["a", 2]]
    assert registry.resolve("a", version_label="stable") == [abc["a", 1]]
    assert registry.resolve("a", version_label="canary") == [abc["a", 3]]
    assert registry.get("a") is abc["a", 3] and registry.get("a", 1) is abc["a", 1]
    assert registry.get("b") is abc["b", 1]
    assert all(h.in_flight == 0 for h in abc.values())  # resolve and get hold nothing


def test_the_default_is_the_newest_version_that_is_available(registry: ModelRegistry) -> None:
    one, two = make_handle("m", 1), make_handle("m", 2)
    draining = make_handle("m", 5)
    draining.retire()
    serve(registry, entry("m", [one, two, draining], states={3: FAILED, 4: LOADING}))
    assert registry.get("m") is two  # 3 failed, 4 loading, 5 unloading: none of them answers
    assert registry.entries()[0].available() == {1: one, 2: two}
    two.retire()
    serve(registry, entry("m", [one, two, draining], states={3: FAILED, 4: LOADING}))
    assert registry.get("m") is one


@pytest.mark.parametrize(
    ("ask", "error", "fragments"),
    [
        ({"models": "zz"}, ModelNotFound, ["unknown model 'zz'", "served: a, b"]),
        ({"models": "a", "version": 9}, VersionNotFound, ["model 'a'", "version 9 is not served", "served: 1, 2, 3"]),
        ({"models": "a", "version_label": "beta"}, VersionNotFound,
         ["no version label 'beta'", "labels: canary, stable"]),
        ({"models": "c"}, ModelUnavailable, ["model 'c' has no available version", "1: failed"]),
        ({"models": "c", "version": 1}, VersionNotFound, ["version 1 is not served (it is failed)"]),
        ({"models": ["b", "zz"]}, ModelNotFound, ["unknown model 'zz'"]),
        ({"models": "a", "version": 1, "version_label": "stable"}, BadModelSelection, ["not both"]),
    ],
)
def test_not_found_errors_say_what_was_asked_and_what_is_served(
    registry: ModelRegistry, abc: dict[tuple[str, int], ModelHandle], ask: dict[str, Any],
    error: type[Exception], fragments: list[str],
) -> None:
    with pytest.raises(error) as info:
        registry.acquire(**ask)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert all(h.in_flight == 0 for h in abc.values())  # a refused request holds nothing


def test_a_label_pointing_at_a_version_not_served_is_version_not_found(registry: ModelRegistry) -> None:
    serve(registry, entry("m", [make_handle("m", 2)], states={1: FAILED}, labels={"old": 1}))
    with pytest.raises(VersionNotFound, match=r"label 'old' points at version 1 is not served \(it is failed\)"):
        registry.resolve("m", version_label="old")


def test_a_model_that_only_drains_is_not_found_and_nothing_served_is_no_models(registry: ModelRegistry) -> None:
    with pytest.raises(NoModels):
        registry.resolve("a")
    with pytest.raises(NoModels):
        registry.resolve(None)
    old = make_handle("gone", 1)
    old.retire()
    serve(registry, entry("gone", [old]))  # removed from disk, its last requests finishing
    with pytest.raises(ModelNotFound, match="unknown model 'gone'"):
        registry.resolve("gone")
    with pytest.raises(NoModels, match="no image model has an available version"):
        registry.resolve(None)
    assert registry.model_states() == {"gone": UNLOADING}


def test_registry_errors_are_lookup_errors_except_a_bad_selection() -> None:
    for cls in (ModelNotFound, VersionNotFound, ModelUnavailable, NoModels):
        assert issubclass(cls, LookupError)
    assert issubclass(BadModelSelection, ValueError) and not issubclass(BadModelSelection, LookupError)


def test_not_found_errors_carry_the_model_name_as_data(
    registry: ModelRegistry, abc: dict[tuple[str, int], ModelHandle],
) -> None:
    asks: list[tuple[dict[str, Any], str]] = [
        ({"models": "zz"}, "zz"), ({"models": "a", "version": 9}, "a"), ({"models": "a", "version_label": "beta"}, "a"),
        ({"models": "c"}, "c"), ({"models": ["b", "zz"]}, "zz"),
    ]
    for ask, model in asks:
        with pytest.raises(LookupError) as info:
            registry.resolve(**ask)
        assert getattr(info.value, "model", None) == model, ask  # a door or log need not parse the message


# -- acquire / borrow -----------------------------------------------------------------------


def test_acquire_by_name_list_or_none(registry: ModelRegistry, abc: dict[tuple[str, int], ModelHandle]) -> None:
    a3, b1 = abc["a", 3], abc["b", 1]
    assert registry.acquire("b") == [b1]
    assert b1.in_flight == 1
    # a list keeps its order, once per name; None is every model with an available version (c has none)
    assert registry.acquire(["b", "a", "b"]) == [b1, a3]
    assert registry.acquire(None) == [a3, b1]
    assert (a3.in_flight, b1.in_flight) == (2, 3)
    assert registry.acquire(("a", "b"), version=1) == [abc["a", 1], b1]  # version applies to every name
    for handle in [b1, b1, a3, b1, a3, abc["a", 1], b1]:
        handle.release()
    assert all(h.in_flight == 0 for h in abc.values())


def test_acquire_of_several_models_is_all_or_nothing(registry: ModelRegistry,
                                                     abc: dict[tuple[str, int], ModelHandle]) -> None:
    with pytest.raises(VersionNotFound):
        registry.acquire(["b", "a"], version=2)  # b has no version 2: a/2 must not stay held
    assert all(h.in_flight == 0 for h in abc.values())


def test_borrow_releases_on_exit_and_on_error(registry: ModelRegistry, abc: dict[tuple[str, int], ModelHandle]) -> None:
    with registry.borrow("a", version_label="stable") as [handle]:
        assert handle is abc["a", 1] and handle.in_flight == 1
        [future] = handle.submit([b"x"])
        assert future.result(WAIT).value == ("a", 1, b"x")
    assert handle.in_flight == 0
    with pytest.raises(RuntimeError, match="request failed"):
        with registry.borrow(["a", "b"]) as handles:
            assert [h.in_flight for h in handles] == [1, 1]
            raise RuntimeError("request failed")
    assert all(h.in_flight == 0 for h in abc.values())


def test_acquire_that_meets_a_just_retired_handle_looks_again(registry: ModelRegistry) -> None:
    """Between the lock-free lookup and the acquire, a reload may switch and retire the version
    found: acquire must let go of what it holds and find the version that replaced it."""
    old_a, b = make_handle("a", 1), make_handle("b", 1)
    new_a = make_handle("a", 2)
    serve(registry, entry("a", [old_a]))
    serve(registry, entry("b", [b]))
    lookups: list[list[ModelHandle]] = []
    resolve = registry.resolve

    def racing_resolve(*args: Any, **kwargs: Any) -> list[ModelHandle]:
        found = resolve(*args, **kwargs)
        lookups.append(found)
        if len(lookups) == 1:  # a reload switches a to version 2 right after this lookup
            old_a.retire()
            serve(registry, entry("a", [old_a, new_a]))
        return found

    registry.resolve = racing_resolve  # type: ignore[method-assign]
    assert registry.acquire(["b", "a"]) == [b, new_a]
    assert lookups == [[b, old_a], [b, new_a]]
    assert (b.in_flight, old_a.in_flight, new_a.in_flight) == (1, 0, 1)  # b held once, not twice
    b.release()
    new_a.release()


# -- a held version lives on across a publish; close drains --------------------------------


def test_a_held_handle_keeps_its_version_alive_while_a_new_version_is_published(registry: ModelRegistry) -> None:
    one, two = make_handle("m", 1), make_handle("m", 2)
    serve(registry, entry("m", [one]))
    [held] = registry.acquire("m")
    assert held is one
    # what a reload does: publish the new snapshot, then retire what it switched away from
    one.retire()
    serve(registry, entry("m", [one, two]))
    assert registry.get("m") is two
    with registry.borrow("m") as [fresh]:
        assert fresh is two
    assert not one.acquire()  # retired: takes no new request...
    assert one.state == UNLOADING
    [future] = held.submit([b"late"])  # ...but the one holding it carries on, on version 1
    assert future.result(WAIT).value == ("m", 1, b"late")
    assert not one.wait_idle(timeout=0)
    assert not fake_of(one).closed.is_set()
    held.release()
    assert one.wait_idle(timeout=0)


def test_close_waits_for_the_last_holder_before_closing_a_version(registry: ModelRegistry) -> None:
    one = make_handle("m", 1)
    serve(registry, entry("m", [one]))
    first, second = registry.acquire("m")[0], registry.acquire("m")[0]
    stopped: list[float | None] = []
    registry.on_close(lambda end: stopped.append(end))
    results: list[bool] = []
    closer = threading.Thread(target=lambda: results.append(registry.close(timeout=WAIT)))
    closer.start()
    assert eventually(lambda: one.state == UNLOADING)  # closing: every version retired, the drain begun
    with pytest.raises(NoModels):
        registry.acquire("m")  # closing: no new request gets a version
    assert not registry.publish("m", lambda e: e) and not registry.ready()
    first.release()
    closer.join(BLOCKED)
    assert closer.is_alive() and not fake_of(one).closed.is_set()  # one holder left
    assert not stopped  # on_close runs after the drain
    second.release()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert results == [True]
    assert fake_of(one).close_calls == 1 and one.closed
    assert len(stopped) == 1 and stopped[0] is not None  # the drain's deadline
    with pytest.raises(BatcherClosed):
        one.submit([b"x"])  # the runner is closed too


def test_close_with_a_request_past_the_timeout_closes_anyway_and_says_so(
    registry: ModelRegistry, caplog: pytest.LogCaptureFixture,
) -> None:
    one = make_handle("m", 1)
    serve(registry, entry("m", [one]))
    registry.acquire("m")
    with caplog.at_level(logging.WARNING, logger="app.registry"):
        assert registry.close(timeout=0.01) is False
    assert fake_of(one).closed.is_set()
    assert "closing m/1 with 1 request(s) still in flight" in caplog.text
    assert registry.snapshot == {} and registry.handles() == []
    one.release()


def test_close_also_closes_versions_still_draining(registry: ModelRegistry) -> None:
    old, new = make_handle("m", 1), make_handle("m", 2)
    old.retire()
    serve(registry, entry("m", [old, new]))
    assert registry.close(timeout=WAIT)
    assert fake_of(old).closed.is_set() and fake_of(new).closed.is_set()


# -- snapshots ------------------------------------------------------------------------------


def test_readers_are_not_blocked_by_a_publish_and_never_see_it_half_done(registry: ModelRegistry) -> None:
    one, two, other = make_handle("m", 1), make_handle("m", 2), make_handle("n", 1)
    serve(registry, entry("m", [one]))
    before = registry.snapshot
    entered, proceed = threading.Event(), threading.Event()

    def slow_change(old: ModelEntry) -> ModelEntry:
        entered.set()
        assert proceed.wait(WAIT)
        return entry("m", [one, two])

    publisher = threading.Thread(target=registry.publish, args=("m", slow_change))
    publisher.start()
    assert entered.wait(WAIT)  # the publish holds the registry's lock now
    with registry.borrow("m") as [handle]:  # lock-free: does not wait for the publish
        assert handle is one
    assert registry.snapshot is before and list(before["m"].versions) == [1]
    # a second publish queues behind the first rather than interleaving with it
    second = threading.Thread(target=registry.publish, args=("n", lambda _e: entry("n", [other])))
    second.start()
    second.join(BLOCKED)
    assert second.is_alive() and "n" not in registry.snapshot
    proceed.set()
    publisher.join(WAIT)
    second.join(WAIT)
    assert registry.get("m") is two and registry.get("n") is other
    assert list(before) == ["m"] and list(before["m"].versions) == [1]  # the old snapshot never changed
    with pytest.raises(dataclasses.FrozenInstanceError):
        before["m"].error = "x"  # type: ignore[misc]


def test_a_publish_that_raises_changes_nothing(registry: ModelRegistry) -> None:
    serve(registry, entry("m", [make_handle("m", 1)]))
    before = registry.snapshot

    def broken(_old: ModelEntry) -> ModelEntry:
        raise RuntimeError("reconcile bug")

    with pytest.raises(RuntimeError):
        registry.publish("m", broken)
    assert registry.snapshot is before
    assert registry.publish("m", lambda e: e)  # the lock was released


def test_publish_drops_empty_entries_and_keeps_broken_ones(registry: ModelRegistry) -> None:
    seen: list[ModelEntry] = []

    def record(old: ModelEntry) -> ModelEntry:
        seen.append(old)
        return entry("m", [make_handle("m", 1)])

    serve(registry, entry("gone", [make_handle("gone", 1)]))
    assert registry.publish("m", record)
    assert seen == [ModelEntry(name="m")]  # a model not yet known starts from an empty entry
    assert registry.publish("gone", lambda _e: None)
    assert registry.publish("x", lambda _e: ModelEntry(name="x"))  # no versions, no error: not listed
    assert sorted(registry.snapshot) == ["m"]
    assert registry.publish("bad", lambda _e: ModelEntry(name="bad", error="versions.json: not valid JSON"))
    assert sorted(registry.snapshot) == ["bad", "m"]
    assert registry.model_states() == {"bad": FAILED, "m": AVAILABLE}
    with pytest.raises(ModelNotFound):
        registry.resolve("bad")


def test_handles_states_and_readiness(registry: ModelRegistry) -> None:
    a1, a2, b1 = make_handle("a", 1), make_handle("a", 2), make_handle("b", 1)
    assert not registry.ready()
    a1.retire()
    serve(registry, entry("b", [b1]))
    serve(registry, entry("a", [a2, a1], states={3: LOADING}))
    serve(registry, entry("c", states={1: FAILED, 2: LOADING}))
    assert registry.handles() == [a1, a2, b1]  # available and unloading, by (model, version)
    assert [e.name for e in registry.entries()] == ["a", "b", "c"]
    assert registry.model_states() == {"a": AVAILABLE, "b": AVAILABLE, "c": LOADING}
    assert registry.ready()
    serve(registry, entry("b", states={1: FAILED}))
    serve(registry, entry("a", [a1]))
    assert not registry.ready()  # nothing answers: draining or failed only
    assert registry.model_states() == {"a": UNLOADING, "b": FAILED, "c": LOADING}


# -- ModelHandle and build_handle -----------------------------------------------------------


def test_a_handle_counts_its_holders_and_refuses_new_ones_once_retired() -> None:
    handle = make_handle("m", 4, labels=["cat", "dog"])
    assert (handle.name, handle.version, handle.state) == ("m", 4, AVAILABLE)
    assert handle.labels == ["cat", "dog"] and handle.labels is handle.labels
    assert fake_of(handle).label_calls == 2  # built once per loaded version, not per request
    assert handle.acquire() and handle.acquire() and handle.in_flight == 2
    handle.retire()
    assert not handle.acquire() and handle.in_flight == 2 and handle.state == UNLOADING
    handle.release()
    assert not handle.wait_idle(timeout=0)
    handle.release()
    assert handle.wait_idle(timeout=0)
    assert not handle.closed and not handle.wait_closed(timeout=0)
    handle.close()
    assert handle.closed and handle.wait_closed(timeout=0) and fake_of(handle).close_calls == 1
    assert "m/4" in repr(handle)


def test_wait_idle_wakes_when_the_last_holder_releases() -> None:
    handle = make_handle("m", 1)
    assert handle.acquire()
    idle = threading.Event()

    def wait() -> None:
        if handle.wait_idle(WAIT):
            idle.set()

    waiter = threading.Thread(target=wait)
    waiter.start()
    assert not idle.wait(BLOCKED)
    handle.release()
    assert idle.wait(WAIT)
    waiter.join(WAIT)


BatchCall = tuple[str, int, int, float, float]


def recorder() -> tuple[list[BatchCall], Callable[..., None]]:
    calls: list[BatchCall] = []
    return calls, lambda *args: calls.append(args)


def test_build_handle_runs_directly_when_batching_is_off() -> None:
    calls, on_batch = recorder()
    handle = build_handle(fake_servable("m", 2), Settings(batching=False), on_batch)  # type: ignore[arg-type]
    assert isinstance(handle.runner, DirectRunner) and not handle.batching
    futures = handle.submit([b"1", b"2"])
    assert [f.result(WAIT).value for f in futures] == [("m", 2, b"1"), ("m", 2, b"2")]
    assert [(name, version, size) for name, version, size, _q, _r in calls] == [("m", 2, 2)]
    handle.close()
    assert fake_of(handle).closed.is_set()


def test_build_handle_batches_with_the_manifests_knobs() -> None:
    knobs = BatchingSpec(max_batch_size=2, batch_timeout_ms=0, max_queue=3, workers=1)
    calls, on_batch = recorder()
    servable = fake_servable("m", 7, manifest=fake_manifest(knobs))
    handle = build_handle(servable, Settings(batching=True), on_batch)  # type: ignore[arg-type]
    try:
        assert isinstance(handle.runner, Batcher) and handle.batching
        assert "batcher-m/7-0" in {t.name for t in threading.enumerate()}  # workers=1: one thread
        assert "batcher-m/7-1" not in {t.name for t in threading.enumerate()}
        with pytest.raises(QueueFull):
            handle.submit([b"1", b"2", b"3", b"4"])  # more than max_queue=3
        futures = handle.submit([b"1", b"2", b"3"])
        assert [f.result(WAIT).value for f in futures] == [("m", 7, b"1"), ("m", 7, b"2"), ("m", 7, b"3")]
        assert all(len(batch) <= 2 for batch in servable.predicted)  # max_batch_size=2
        assert {(name, version) for name, version, *_ in calls} == {("m", 7)}
        assert sum(size for _n, _v, size, _q, _r in calls) == 3
    finally:
        handle.close()
    assert "batcher-m/7-0" not in {t.name for t in threading.enumerate()}
    assert servable.close_calls == 1


def test_a_session_that_fails_to_close_does_not_keep_the_others_open(
    registry: ModelRegistry, caplog: pytest.LogCaptureFixture,
) -> None:
    broken, fine = make_handle("a", 1), make_handle("b", 1)

    def fail() -> None:
        raise RuntimeError("session close failed")

    fake_of(broken).close = fail  # type: ignore[method-assign]
    serve(registry, entry("a", [broken]))
    serve(registry, entry("b", [fine]))
    assert registry.close(timeout=WAIT)
    assert broken.closed and fine.closed  # marked closed even though its session raised
    assert fake_of(fine).close_calls == 1
    assert "closing a/1 failed" in caplog.text


def test_an_extra_release_is_logged_and_does_not_stall_the_drain(
    registry: ModelRegistry, caplog: pytest.LogCaptureFixture,
) -> None:
    handle = make_handle("a", 1)
    serve(registry, entry("a", [handle]))
    [held] = registry.acquire("a")
    held.release()
    held.release()  # one too many: a caller's bug
    assert handle.in_flight == 0
    assert "released more often than acquired" in caplog.text
    started = time.monotonic()
    assert registry.close(timeout=WAIT) and time.monotonic() - started < 1.0

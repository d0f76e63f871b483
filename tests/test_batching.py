"""Tests for app.batching, driven by fake predict functions (no TensorFlow).

Batch formation is made deterministic by holding the worker inside a first predict call
(``hold``) while more items queue up behind it, then releasing it; deadlines and timings
use an injected clock. No test relies on a sleep.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from typing import Any

import pytest

from app.batching import (
    Batcher,
    BatcherClosed,
    BatchingError,
    Completed,
    DeadlineExceeded,
    DirectRunner,
    QueueFull,
)

WAIT = 5.0  # generous bound for anything that should happen "at once"
HELD = -1  # the item used to keep the worker busy in hold()


class FakePredict:
    """Records every batch; returns ``fn(x)`` per item. While ``gate`` is clear, calls block."""

    def __init__(self, fn: Callable[[Any], Any] = lambda x: x * 10) -> None:
        self.fn = fn
        self.batches: list[list[Any]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.gate.wait(WAIT), "test never released the gate"
        return [self.fn(x) for x in items]

    def seen(self) -> list[Any]:
        return [x for batch in self.batches for x in batch]


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make() -> Iterator[Callable[..., Batcher[Any, Any]]]:
    """Build batchers; at teardown open every gate and close them all."""
    made: list[tuple[Batcher[Any, Any], Any]] = []

    def factory(predict: Any, **kwargs: Any) -> Batcher[Any, Any]:
        kwargs.setdefault("name", "test")
        kwargs.setdefault("batch_timeout_s", 0)
        batcher: Batcher[Any, Any] = Batcher(predict, **kwargs)
        made.append((batcher, predict))
        return batcher

    yield factory
    for batcher, predict in made:
        if isinstance(predict, FakePredict):
            predict.gate.set()
        batcher.close(timeout=WAIT)


def hold(batcher: Batcher[Any, Any], predict: FakePredict) -> Future[Completed[Any]]:
    """Park the (single) worker inside predict([HELD]) so that later submits queue up."""
    predict.gate.clear()
    predict.entered.clear()
    [future] = batcher.submit([HELD])
    assert predict.entered.wait(WAIT)
    assert batcher.queue_depth() == 0
    return future


def values(futures: list[Future[Completed[Any]]]) -> list[Any]:
    return [f.result(WAIT).value for f in futures]


def test_batches_fill_up_to_max_size_in_fifo_order(make: Any) -> None:
    predict = FakePredict()
    batcher = make(predict, max_batch_size=4)
    held = hold(batcher, predict)
    futures = [f for i in range(10) for f in batcher.submit([i])]
    assert batcher.queue_depth() == 10
    predict.gate.set()
    assert values(futures) == [i * 10 for i in range(10)]
    assert held.result(WAIT).batch_size == 1
    assert predict.batches == [[HELD], [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [f.result().batch_size for f in futures] == [4] * 8 + [2] * 2


def test_one_submit_may_be_split_across_batches(make: Any) -> None:
    predict = FakePredict()
    batcher = make(predict, max_batch_size=3)
    hold(batcher, predict)
    futures = batcher.submit([1, 2]) + batcher.submit([3, 4, 5])
    predict.gate.set()
    assert values(futures) == [10, 20, 30, 40, 50]
    assert predict.batches[1:] == [[1, 2, 3], [4, 5]]


def test_zero_timeout_runs_a_lone_item_at_once(make: Any) -> None:
    predict = FakePredict()
    batcher = make(predict, max_batch_size=32, batch_timeout_s=0)
    [future] = batcher.submit([7])
    assert future.result(WAIT).value == 70  # would time out if it waited for a full batch
    assert predict.batches == [[7]]


def test_batch_collects_across_submits_until_full(make: Any) -> None:
    # A timeout far longer than the test: the batch can only run because it filled up.
    predict = FakePredict()
    batcher = make(predict, max_batch_size=3, batch_timeout_s=60.0)
    futures = [f for i in range(3) for f in batcher.submit([i])]
    assert values(futures) == [0, 10, 20]
    assert predict.batches == [[0, 1, 2]]


def test_partial_batch_runs_when_the_timeout_expires(make: Any) -> None:
    predict = FakePredict()
    timeout = 0.05
    batcher = make(predict, max_batch_size=32, batch_timeout_s=timeout)
    start = time.monotonic()
    futures = batcher.submit([1, 2])
    assert values(futures) == [10, 20]  # ran without a full batch (else: TimeoutError)
    elapsed = time.monotonic() - start
    assert predict.batches == [[1, 2]]
    # It did wait for more items (a timeout ignored would run it at once) ...
    assert futures[0].result().queue_seconds >= timeout * 0.9
    assert elapsed >= timeout * 0.9
    # ... but not much longer than the timeout (bound generous for slow CI machines).
    assert elapsed < 2.0


def test_each_caller_gets_its_own_rows(make: Any) -> None:
    predict = FakePredict(fn=lambda x: ("row", x))
    batcher = make(predict, max_batch_size=8, batch_timeout_s=0.001, max_queue=10_000)
    n_threads, per_thread = 16, 25
    barrier = threading.Barrier(n_threads)
    errors: list[str] = []

    def client(t: int) -> None:
        barrier.wait(WAIT)
        for k in range(per_thread):
            mine = [(t, k, 0), (t, k, 1)]
            got = values(batcher.submit(mine))
            if got != [("row", x) for x in mine]:
                errors.append(f"thread {t} sent {mine}, got {got}")

    threads = [threading.Thread(target=client, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 2)
    assert not errors
    assert not any(thread.is_alive() for thread in threads)
    seen = predict.seen()
    assert len(seen) == len(set(seen)) == n_threads * per_thread * 2
    assert max(len(b) for b in predict.batches) <= 8


def test_an_exception_row_fails_only_its_item(make: Any) -> None:
    def predict(items: list[int]) -> list[Any]:
        return [ValueError(f"bad {x}") if x < 0 else x * 10 for x in items]

    batcher = make(predict, max_batch_size=8)
    ok1, bad, ok2 = batcher.submit([1, -1, 2])
    assert ok1.result(WAIT).value == 10
    assert ok2.result(WAIT).value == 20
    with pytest.raises(ValueError, match="bad -1"):
        bad.result(WAIT)
    assert ok1.result().batch_size == 3


def test_a_raising_predict_fails_the_whole_batch_and_the_worker_goes_on(make: Any) -> None:
    calls: list[list[int]] = []

    def predict(items: list[int]) -> list[int]:
        calls.append(items)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return items

    batcher = make(predict, max_batch_size=8)
    futures = batcher.submit([1, 2, 3])
    for future in futures:
        with pytest.raises(RuntimeError, match="boom"):
            future.result(WAIT)
    assert values(batcher.submit([4])) == [4]


def test_wrong_length_output_fails_the_batch_clearly(make: Any) -> None:
    batcher = make(lambda items: items[:-1], max_batch_size=8, name="m/1")
    for future in batcher.submit([1, 2, 3]):
        with pytest.raises(BatchingError, match=r"m/1: predict returned 2 results for a batch of 3"):
            future.result(WAIT)


def test_full_queue_refuses_a_submit_atomically(make: Any) -> None:
    predict = FakePredict()
    batcher = make(predict, max_batch_size=8, max_queue=4)
    hold(batcher, predict)  # the batch in hand does not count against max_queue
    accepted = batcher.submit([1, 2, 3])
    with pytest.raises(QueueFull):
        batcher.submit([100, 101])  # 3 + 2 > 4: neither item is queued
    assert batcher.queue_depth() == 3
    accepted += batcher.submit([4])  # exactly full is fine
    with pytest.raises(QueueFull):
        batcher.submit([102])
    predict.gate.set()
    assert values(accepted) == [10, 20, 30, 40]
    assert predict.seen() == [HELD, 1, 2, 3, 4]


def test_a_submit_larger_than_the_queue_is_refused(make: Any) -> None:
    predict = FakePredict()
    batcher = make(predict, max_queue=4)
    with pytest.raises(QueueFull):
        batcher.submit(range(5))
    assert values(batcher.submit([1])) == [10]
    assert predict.seen() == [1]


def test_expired_items_fail_without_being_run(make: Any) -> None:
    clock = FakeClock(100.0)
    predict = FakePredict()
    batcher = make(predict, max_batch_size=8, clock=clock)
    hold(batcher, predict)
    early = batcher.submit([1, 2], deadline=101.0)
    no_deadline = batcher.submit([3])
    late = batcher.submit([4], deadline=110.0)
    clock.now = 105.0  # the worker picks the next batch at 105
    predict.gate.set()
    for future in early:
        with pytest.raises(DeadlineExceeded):
            future.result(WAIT)
    assert values(no_deadline + late) == [30, 40]
    assert predict.batches == [[HELD], [3, 4]]


def test_an_item_exactly_at_its_deadline_still_runs(make: Any) -> None:
    clock = FakeClock(100.0)
    predict = FakePredict()
    batcher = make(predict, clock=clock)
    hold(batcher, predict)
    futures = batcher.submit([1], deadline=105.0)
    clock.now = 105.0
    predict.gate.set()
    assert values(futures) == [10]


def test_close_fails_queued_items_finishes_the_batch_in_hand_and_refuses_more(make: Any) -> None:
    predict = FakePredict()
    batcher = make(predict, max_batch_size=8, name="m")
    held = hold(batcher, predict)
    queued = batcher.submit([1, 2, 3])
    closer = threading.Thread(target=batcher.close)
    closer.start()
    for future in queued:
        with pytest.raises(BatcherClosed):
            future.result(WAIT)  # failed while the worker is still busy
    with pytest.raises(BatcherClosed):
        batcher.submit([4])
    predict.gate.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert held.result(WAIT).value == HELD * 10
    assert predict.seen() == [HELD]
    assert batcher.queue_depth() == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("batcher-m-")]
    batcher.close()  # idempotent
    with pytest.raises(BatcherClosed):
        batcher.submit([5])


def test_close_leaves_no_future_unresolved_under_concurrent_submits(make: Any) -> None:
    batcher = make(FakePredict(), max_batch_size=4, max_queue=64, workers=2)
    futures: list[Future[Completed[Any]]] = []
    enough = threading.Event()

    def client() -> None:
        while True:
            try:
                futures.extend(batcher.submit([1, 2, 3]))
            except QueueFull:
                pass
            except BatcherClosed:
                return
            if len(futures) >= 300:
                enough.set()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert enough.wait(WAIT)
    batcher.close()
    for thread in threads:
        thread.join(WAIT)
    done, not_done = wait(futures, timeout=WAIT)
    assert not not_done
    for future in done:
        exc = future.exception()
        assert exc is None or isinstance(exc, BatcherClosed), exc
        if exc is None:
            assert future.result().value in (10, 20, 30)


def test_a_cancelled_future_is_not_run(make: Any) -> None:
    predict = FakePredict()
    batcher = make(predict, max_batch_size=8)
    hold(batcher, predict)
    gone, kept = batcher.submit([1, 2])
    assert gone.cancel()
    predict.gate.set()
    assert kept.result(WAIT).value == 20
    assert predict.batches[1:] == [[2]]


def test_completed_carries_the_timings_and_batch_size(make: Any) -> None:
    clock = FakeClock(0.0)
    observed: list[tuple[int, float, float]] = []

    class Timed(FakePredict):
        def __call__(self, items: list[Any]) -> list[Any]:
            out = super().__call__(items)
            clock.now += 0.5  # every predict call "takes" half a second
            return out

    predict = Timed()
    batcher = make(predict, max_batch_size=8, clock=clock,
                   on_batch=lambda *args: observed.append(args))
    held = hold(batcher, predict)  # submitted and started at t=0
    clock.now = 10.0
    a, b = batcher.submit(["a", "b"])  # queued at t=10
    clock.now = 12.0
    predict.gate.set()  # held batch ends at 12.5; the next one starts at 12.5
    assert held.result(WAIT) == Completed(HELD * 10, 0.0, 12.5, 1)
    assert a.result(WAIT) == Completed("a" * 10, 2.5, 0.5, 2)
    assert b.result(WAIT) == Completed("b" * 10, 2.5, 0.5, 2)
    batcher.close()
    assert observed == [(1, 0.0, 12.5), (2, 2.5, 0.5)]


def test_real_clock_timings_are_sane(make: Any) -> None:
    def predict(items: list[int]) -> list[int]:
        time.sleep(0.01)
        return items

    batcher = make(predict, max_batch_size=8)
    done = batcher.submit([1, 2])[0].result(WAIT)
    assert done.batch_size == 2
    assert 0 <= done.queue_seconds < WAIT
    assert 0.009 <= done.run_seconds < WAIT


def test_a_failing_on_batch_hook_is_logged_and_ignored(make: Any, caplog: Any) -> None:
    def on_batch(*args: Any) -> None:
        raise RuntimeError("metrics down")

    batcher = make(FakePredict(), on_batch=on_batch)
    with caplog.at_level(logging.ERROR, logger="app.batching"):
        assert values(batcher.submit([1])) == [10]
        assert values(batcher.submit([2])) == [20]
        batcher.close()
    assert "on_batch hook failed" in caplog.text


def test_several_workers_run_batches_concurrently(make: Any) -> None:
    both_in_predict = threading.Barrier(2)

    def predict(items: list[int]) -> list[int]:
        both_in_predict.wait(WAIT)  # breaks (and fails the batch) unless two run at once
        return items

    batcher = make(predict, max_batch_size=1, workers=2, name="two")
    names = {t.name for t in threading.enumerate()}
    assert {"batcher-two-0", "batcher-two-1"} <= names
    futures = batcher.submit([1]) + batcher.submit([2])
    assert sorted(values(futures)) == [1, 2]


@pytest.mark.parametrize(
    "kwargs",
    [{"max_batch_size": 0}, {"max_queue": 0}, {"workers": 0}, {"batch_timeout_s": -1.0}],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Batcher(lambda items: items, name="bad", **kwargs)


def test_direct_runner_has_the_batchers_submit():
    """Batching off: the same submit, futures and observer, the work done in the caller's thread."""
    batches: list[tuple[int, float, float]] = []
    clock = iter([10.0, 10.5]).__next__
    runner = DirectRunner(lambda items: [x * 2 if x else ValueError("zero") for x in items], name="t",
                          clock=clock, on_batch=lambda *args: batches.append(args))
    futures = runner.submit([1, 0, 3])
    assert futures[0].result().value == 2 and futures[2].result().value == 6
    assert futures[0].result().batch_size == 3 and futures[0].result().run_seconds == 0.5
    with pytest.raises(ValueError):
        futures[1].result()
    assert batches == [(3, 0.0, 0.5)]
    late = DirectRunner(lambda items: items, name="late", clock=lambda: 5.0).submit([1], deadline=4.0)
    with pytest.raises(DeadlineExceeded):
        late[0].result()
    runner.close()
    with pytest.raises(BatcherClosed):
        runner.submit([1])

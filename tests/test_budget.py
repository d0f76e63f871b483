"""More models than memory: the budget, loads on first request, least-recently-used unloads.

Real digit graphs and real Sessions. A digit model's RSS growth is a few MB and noisy, so
what a load measures is fixed (``sized``: every load "measured" 40 MiB; the sizes before the
first load are written beside the models as a previous run would have, ``SizeBook.remember``):
which models fit is then exact, and the reservations, not RSS readings, are what these tests
count. The restart test measures for real.
"""

from __future__ import annotations

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from app import create_app
from app.batching import DeadlineExceeded
from app.budget import MiB, SizeBook, estimate_bytes
from app.registry import AVAILABLE, FAILED, UNLOADED
from app.services import services_of
from tests.digits import png_bytes, write_model
from tests.server import running

SIZE = 40 * MiB  # every model, as remembered; a budget of 100 MiB holds two


def models_dir(root: Path, weights, names: list[str], *, size: int = SIZE, resident: tuple[str, ...] = ()) -> Path:
    book = SizeBook()
    for i, name in enumerate(names):
        directory = write_model(root, name, weights, size=8 if i % 2 == 0 else 16)
        book.remember(directory / "model.pb", size)
        if name in resident:
            (root / name / "versions.json").write_text(json.dumps({"resident": True}))
    return root


def make(root: Path, budget_mb: int = 100, **settings):
    return create_app({"GRAPHS_DIR": str(root), "MEMORY_BUDGET_MB": budget_mb, "POLL_INTERVAL_S": 0, **settings})


def classify(client, digits, model: str, k: int = 0):
    return client.post(f"/image_classification?model={model}", data=png_bytes(digits.test_images[k]),
                       content_type="image/png")


def states(app) -> dict[str, str]:
    return {e.name: e.versions[1].state for e in services_of(app).registry.entries()}


def wait_prefill(app, timeout: float = 30.0) -> None:
    """Until the start-up prefill has loaded what fits (its queue is empty and nothing loads)."""
    residency = services_of(app).reconciler.residency
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if residency._queue.empty() and not residency._jobs:
            return
        time.sleep(0.02)
    raise AssertionError("the prefill did not finish")


@pytest.fixture()
def sized(monkeypatch) -> None:
    monkeypatch.setattr("app.residency.measured_bytes", lambda handle: SIZE)


@pytest.fixture()
def six(tmp_path, digit_weights, sized) -> Path:
    return models_dir(tmp_path / "graphs", digit_weights, [f"m{i}" for i in range(6)])


def test_without_a_budget_everything_loads_at_start(six) -> None:
    app = make(six, budget_mb=0)
    try:
        assert set(states(app).values()) == {AVAILABLE}
        assert services_of(app).reconciler.residency.budget.limit is None
    finally:
        services_of(app).registry.close()


def test_start_up_fills_the_budget_by_name_and_lists_the_rest_unloaded(six, digits) -> None:
    app = make(six)
    try:
        wait_prefill(app)
        assert states(app) == {"m0": AVAILABLE, "m1": AVAILABLE, **{f"m{i}": UNLOADED for i in range(2, 6)}}
        listing = app.test_client().get("/models").get_json()
        cold = next(m for m in listing["models"] if m["name"] == "m4")
        assert cold["state"] == UNLOADED and "first request" in cold["versions"][0]["reason"]
        assert app.test_client().get("/readyz").status_code == 200
    finally:
        services_of(app).registry.close()


def test_a_cold_model_loads_on_its_first_request_and_says_so_in_its_timing(six, digits) -> None:
    app = make(six)
    try:
        wait_prefill(app)
        client = app.test_client()
        answer = classify(client, digits, "m5")
        assert answer.status_code == 200, answer.get_json()
        body = answer.get_json()["models"]["m5"]
        assert body["time_ms"]["load"] > 0
        assert "m5.load;dur=" in answer.headers["Server-Timing"]
        again = classify(client, digits, "m5").get_json()["models"]["m5"]
        assert "load" not in again["time_ms"]  # loaded now: a hit
        assert states(app)["m5"] == AVAILABLE
        assert states(app)["m0"] == UNLOADED  # the least recently used made room
        stats = client.get("/stats").get_json()["memory_budget"]
        assert stats["loads"]["request"] == 1 and stats["unloads"]["evicted"] >= 1
        assert stats["reserved_bytes"] <= 100 * MiB and stats["misses"] == 1
        metrics = client.get("/metrics").get_data(as_text=True)
        assert 'graphserve_model_loads_total{reason="request"} 1.0' in metrics
        assert 'graphserve_model_latency_seconds_count{model="m5",stage="load",version="1"} 1.0' in metrics
        assert "graphserve_memory_budget_bytes 1.048576e+08" in metrics
    finally:
        services_of(app).registry.close()


def test_concurrent_cold_requests_never_reserve_past_the_budget(six, digits) -> None:
    """Twelve threads asking six models at random, two fitting at once: every answer is right, each
    load happens once per miss window, and the reservations never pass the budget."""
    app = make(six, THREADS=16)
    residency = services_of(app).reconciler.residency
    try:
        wait_prefill(app)
        with running(app) as url:
            photo, png = png_bytes(digits.test_images[0]), {"Content-Type": "image/png"}

            def top1(name: str) -> tuple[int, str | None]:
                answer = requests.post(f"{url}/image_classification?model={name}", data=photo, headers=png,
                                       timeout=60)
                ok = answer.status_code == 200
                return answer.status_code, answer.json()["models"][name]["results"][0]["top_k"][0]["label"] if ok else None

            # m0, m2, m4 are the same 8x8 model, m1, m3, m5 the same 16x16 one (loaded now: m0, m1)
            expected = {f"m{i}": top1(f"m{i % 2}")[1] for i in range(6)}
            rng = random.Random(7)
            plan = [rng.choice([f"m{i}" for i in range(6)]) for _ in range(96)]

            def ask(name: str) -> int:
                status, label = top1(name)
                assert status != 200 or label == expected[name]
                return status

            with ThreadPoolExecutor(12) as pool:
                codes = list(pool.map(ask, plan))
        assert codes == [200] * len(plan)
        assert residency.budget.peak <= 100 * MiB
        assert residency.budget.in_use <= 100 * MiB
        loaded = [h for h in services_of(app).registry.handles() if h.state == AVAILABLE]
        assert len(loaded) <= 2
        assert residency.events["loads", "request"] >= 4  # at least the four cold ones loaded
    finally:
        services_of(app).registry.close()


def test_a_version_a_request_holds_is_never_unloaded(six, digits) -> None:
    app = make(six)
    core = services_of(app).core
    try:
        wait_prefill(app)
        client = app.test_client()
        with core.select("m0") as held:  # a request holding m0 (budget: m0 + one more)
            [handle] = held.handles
            for name in ("m2", "m3", "m4"):
                assert classify(client, digits, name).status_code == 200
                assert not handle.closed and states(app)["m0"] == AVAILABLE
        assert classify(client, digits, "m5").status_code == 200
        assert states(app)["m0"] == UNLOADED  # released: now it may go
    finally:
        services_of(app).registry.close()


def test_resident_versions_load_first_and_stay(tmp_path, digit_weights, digits, sized) -> None:
    root = models_dir(tmp_path / "graphs", digit_weights, ["a", "b", "c", "z"], resident=("z",))
    app = make(root)
    try:
        assert states(app)["z"] == AVAILABLE  # loaded before start-up returned
        client = app.test_client()
        for name in ("a", "b", "c", "a", "c"):
            assert classify(client, digits, name).status_code == 200
            assert states(app)["z"] == AVAILABLE
        residency = services_of(app).reconciler.residency
        assert residency.events["unloads", "evicted"] >= 3
    finally:
        services_of(app).registry.close()


def test_a_version_larger_than_the_whole_budget_is_refused_at_scan_and_answers_at_once(
        tmp_path, digit_weights, digits, sized) -> None:
    root = models_dir(tmp_path / "graphs", digit_weights, ["small"])
    big = write_model(root, "big", digit_weights, size=16)  # another graph: copies of one share their size
    SizeBook().remember(big / "model.pb", 300 * MiB)
    app = make(root)
    try:
        client = app.test_client()
        status = services_of(app).registry.snapshot["big"].versions[1]
        assert status.state == FAILED and status.over_budget
        started = time.monotonic()
        answer = classify(client, digits, "big")
        assert time.monotonic() - started < 5
        assert answer.status_code == 503
        error = answer.get_json()["error"]
        assert error["code"] == "model_over_budget" and "300 MiB" in error["message"]
        assert "100 MiB" in error["message"]
        assert classify(client, digits, "small").status_code == 200
    finally:
        services_of(app).registry.close()


def test_sizes_measured_at_load_are_remembered_across_restarts(tmp_path, digit_weights) -> None:
    root = tmp_path / "graphs"
    directory = write_model(root, "fresh", digit_weights, size=8)
    before = SizeBook().size(directory / "model.pb")
    assert not before.measured and before.nbytes == estimate_bytes((directory / "model.pb").stat().st_size)
    app = make(root, budget_mb=500)
    try:
        wait_prefill(app)
        [handle] = services_of(app).registry.handles()
        measured = handle.reservation.nbytes
    finally:
        services_of(app).registry.close()
    after = SizeBook().size(directory / "model.pb")  # a new process would read the same file
    assert after.measured and after.nbytes == measured
    (directory / "model.pb").write_bytes((directory / "model.pb").read_bytes())  # new content: measured again
    assert not SizeBook().size(directory / "model.pb").measured or \
        (directory / "model.pb").stat().st_mtime_ns == json.loads(
            (directory / ".graphserve-cache" / "memory.json").read_text())["graph"].split("-")[1]


def test_a_load_slower_than_the_deadline_answers_504_and_finishes_for_the_next(six, digits, monkeypatch) -> None:
    app = make(six, REQUEST_TIMEOUT_S=1.0)
    residency = services_of(app).reconciler.residency
    try:
        wait_prefill(app)
        build = residency._load
        gate = threading.Event()

        def slow(source, version):
            gate.wait(5)  # hold the load past the request's 1 s deadline
            return build(source, version)

        monkeypatch.setattr(residency, "_load", slow)
        client = app.test_client()
        answer = classify(client, digits, "m4")
        assert answer.status_code == 504 and answer.get_json()["error"]["code"] == "deadline_exceeded"
        gate.set()
        end = time.monotonic() + 10
        while states(app)["m4"] != AVAILABLE and time.monotonic() < end:
            time.sleep(0.02)
        assert classify(client, digits, "m4").status_code == 200
        assert residency.events["loads", "request"] == 1  # one load for both requests
    finally:
        services_of(app).registry.close()


def test_a_changed_cold_or_loaded_version_is_served_with_its_new_content(six, digit_weights, digits) -> None:
    app = make(six)
    try:
        wait_prefill(app)
        client = app.test_client()
        old = classify(client, digits, "m0").get_json()["models"]["m0"]["results"][0]["top_k"]
        # m0 (loaded) and m4 (cold) get new content: m0 is unloaded, both load it on their next request
        for name in ("m0", "m4"):
            write_model(six, name, (digit_weights[0] * 0, digit_weights[1] * 0 + 1), size=8)
        report = services_of(app).reconciler.reload()
        assert {"model": "m0", "version": 1, "action": "unloaded"} in report.changed
        for name in ("m0", "m4"):
            answer = classify(client, digits, name).get_json()["models"][name]["results"][0]["top_k"]
            assert all(abs(s["score"] - 0.1) < 1e-6 for s in answer), answer  # the new, flat model
        assert old[0]["score"] > 0.5
    finally:
        services_of(app).registry.close()


def test_the_repository_load_waits_its_timeout_then_says_the_load_goes_on(six, digits, monkeypatch) -> None:
    app = make(six)
    residency = services_of(app).reconciler.residency
    try:
        wait_prefill(app)
        residency.unload_model("m0")
        assert states(app)["m0"] == UNLOADED
        assert classify(app.test_client(), digits, "m0").status_code == 503  # unloaded: not loaded on demand
        build, gate = residency._load, threading.Event()
        monkeypatch.setattr(residency, "_load", lambda source, version: gate.wait(5) and build(source, version))
        with pytest.raises(DeadlineExceeded, match="goes on loading"):
            residency.load_model("m0", timeout=0.3)
        gate.set()
        end = time.monotonic() + 10
        while states(app)["m0"] != AVAILABLE and time.monotonic() < end:
            time.sleep(0.02)
        assert classify(app.test_client(), digits, "m0").status_code == 200
    finally:
        services_of(app).registry.close()


def test_on_a_gpu_the_budget_bounds_the_allocator_too(tmp_path, digit_weights, digits, monkeypatch) -> None:
    """No GPU here: the allocator's figures are what a GPU load would report (TensorFlow's
    ``get_memory_info`` growth); what is tested is that the budget holds on both at once."""
    monkeypatch.setattr("app.residency.gpu_present", lambda: True)
    monkeypatch.setattr("app.residency.measured_bytes", lambda handle: 10 * MiB)
    monkeypatch.setattr("app.residency.measured_device_bytes", lambda handle: 60 * MiB)
    root, book = tmp_path / "graphs", SizeBook()
    for i, name in enumerate(["g0", "g1", "g2"]):
        directory = write_model(root, name, digit_weights, size=8 if i % 2 == 0 else 16)
        book.remember(directory / "model.pb", 10 * MiB, 60 * MiB)  # host room for ten, GPU room for one
    app = make(root)
    try:
        wait_prefill(app)
        assert states(app) == {"g0": AVAILABLE, "g1": UNLOADED, "g2": UNLOADED}
        client = app.test_client()
        for name in ("g1", "g2", "g0"):
            assert classify(client, digits, name).status_code == 200
            assert [n for n, state in states(app).items() if state == AVAILABLE] == [name]
        stats = client.get("/stats").get_json()["memory_budget"]
        assert stats["gpu_budget_bytes"] == 100 * MiB and stats["gpu_peak_reserved_bytes"] <= 100 * MiB
        assert stats["reserved_bytes"] == 10 * MiB and stats["unloads"]["evicted"] == 3
        assert "graphserve_gpu_memory_reserved_bytes 6.291456e+07" in client.get("/metrics").get_data(as_text=True)
    finally:
        services_of(app).registry.close()


def test_reloads_beside_cold_loads_lose_no_answer_and_leak_no_reservation(six, digits) -> None:
    """Reload rounds while cold requests load and unload versions: every answer is 200, and once
    quiet, what the budget holds is exactly what the loaded versions hold (nothing leaked)."""
    app = make(six, THREADS=8)
    services = services_of(app)
    residency = services.reconciler.residency
    try:
        wait_prefill(app)
        stop = threading.Event()

        def reloads() -> None:
            while not stop.is_set():
                services.reconciler.reload()

        reloader = threading.Thread(target=reloads)
        reloader.start()
        try:
            with running(app) as url:
                photo, png = png_bytes(digits.test_images[0]), {"Content-Type": "image/png"}
                rng = random.Random(3)
                plan = [f"m{rng.randrange(6)}" for _ in range(48)]

                def ask(name: str) -> int:
                    return requests.post(f"{url}/image_classification?model={name}", data=photo, headers=png,
                                         timeout=60).status_code

                with ThreadPoolExecutor(6) as pool:
                    codes = list(pool.map(ask, plan))
        finally:
            stop.set()
            reloader.join()
        assert codes == [200] * len(plan)
        end = time.monotonic() + 10
        while residency._evicting and time.monotonic() < end:  # unloads still closing
            time.sleep(0.02)
        held = sum(h.reservation.nbytes for h in services.registry.handles() if h.reservation is not None)
        assert residency.budget.in_use == held <= 100 * MiB
        assert residency.budget.peak <= 100 * MiB
    finally:
        services_of(app).registry.close()


def test_a_request_waiting_for_a_load_is_answered_when_the_service_shuts_down(six, digits, monkeypatch) -> None:
    app = make(six)
    residency = services_of(app).reconciler.residency
    wait_prefill(app)
    build, gate = residency._load, threading.Event()
    monkeypatch.setattr(residency, "_load", lambda source, version: gate.wait(10) and build(source, version))
    answers: list[int] = []
    waiting = threading.Thread(target=lambda: answers.append(classify(app.test_client(), digits, "m5").status_code))
    waiting.start()
    time.sleep(0.3)  # the request is waiting for m5's load
    closer = threading.Thread(target=services_of(app).registry.close, kwargs={"timeout": 5})
    closer.start()
    time.sleep(0.2)
    gate.set()  # the load finishes after the registry closed: nobody serves it
    waiting.join(15)
    closer.join(15)
    assert not waiting.is_alive() and answers and answers[0] == 503

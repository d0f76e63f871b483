"""A reload that a changing folder cannot break (issue 24), on real folders in tmp_path.

Each test reproduces one way the folder changed under a reload before this was hardened:

1. a model or version folder vanishing mid-scan or mid-load (it aborted the whole round and
   ``/admin/reload`` answered 500): now that model is skipped for the round, the others applied;
2. a ``specific`` policy naming versions not on disk (it unloaded the model): now refused like
   a bad label, the served versions stay;
3. a FIFO (or a hung mount) among a version's files (it blocked the loader, the poller and every
   ``/admin/reload`` forever): now only regular files are read, each within a time bound, and
   ``/admin/reload`` answers within ``reload_wait_s``;
4. a served version's files changed in place (unloaded, or ignored and reported nowhere): now
   loaded again as a new load; if that fails the old one keeps serving, with the reason shown.

The reconciler tests use ``tests.test_reconcile``'s loader loader (no TensorFlow); the server
tests run the real digit graphs behind a real waitress server on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

import app.discovery as discovery_module
import app.reconcile as reconcile_module
from app import create_app, model_files
from app.discovery import PolicyError, scan
from app.reconcile import Reconciler
from app.registry import AVAILABLE
from app.servable import ModelLoadError, ServableSpec, load_servable
from app.services import services_of
from tests import test_reconcile
from tests.digits import png_bytes
from tests.server import running
from tests.test_reconcile import FakeLoader, available, changes, write_policy, write_version
from tests.test_registry import WAIT
from tests.test_versions import policy, publish

AUTH = {"Authorization": "Bearer t"}

# The reconciler tests' fixtures (a graphs folder, the fake loader, reconcilers over both), shared.
graphs, loader, make = test_reconcile.graphs, test_reconcile.loader, test_reconcile.make


def within(seconds: float, work: Callable[[], Any]) -> Any:
    """``work()``, failing the test (instead of hanging the suite) if it takes longer."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result(seconds)


def serving_a_and_b(graphs: Path, make: Callable[..., Reconciler], *publish: str) -> Reconciler:
    """Models a and b served at version 1; version 2 of each model in ``publish`` written, not loaded."""
    for model in ("a", "b"):
        write_version(graphs, model, 1)
    reconciler = make()
    reconciler.load_all()
    for model in publish:
        write_version(graphs, model, 2)
    return reconciler


# -- 1. a folder vanishing mid-scan or mid-load ------------------------------------------------


def test_a_model_folder_vanishing_mid_scan_skips_that_model_and_applies_the_others(
        graphs: Path, make: Callable[..., Reconciler], monkeypatch: pytest.MonkeyPatch) -> None:
    reconciler = serving_a_and_b(graphs, make, "a", "b")
    original = discovery_module._read_model

    def vanishing(model_dir: Path, read_timeout_s: float) -> Any:
        if model_dir.name == "b":
            shutil.rmtree(model_dir)  # listed by the scan, gone when it is read
        return original(model_dir, read_timeout_s)

    monkeypatch.setattr(discovery_module, "_read_model", vanishing)
    report = reconciler.reload()
    loaded, _, refused = changes(report)
    assert loaded == [("a", 2)] and refused == [("b", None)]
    assert "changed while it was read" in report.refused[0]["reason"]
    assert available(reconciler.registry) == {"a": [2], "b": [1]}  # b keeps serving this round
    assert "changed while it was read" in (reconciler.registry.snapshot["b"].error or "")
    monkeypatch.setattr(discovery_module, "_read_model", original)
    reconciler.reload()  # the next round sees b gone: it goes, as documented
    assert "b" not in available(reconciler.registry)


def test_a_load_failing_with_an_os_error_refuses_that_version_only(
        graphs: Path, make: Callable[..., Reconciler], loader: FakeLoader, monkeypatch: pytest.MonkeyPatch) -> None:
    reconciler = serving_a_and_b(graphs, make, "a", "b")

    def vanished(spec: ServableSpec, *args: Any, **kwargs: Any) -> Any:
        if spec.name == "a":
            raise FileNotFoundError(2, "No such file or directory", str(spec.graph_path))
        return loader(spec, *args, **kwargs)

    monkeypatch.setattr(reconcile_module, "load_servable", vanished)
    report = reconciler.reload()
    assert changes(report) == ([("b", 2)], [("b", 1)], [("a", 2)])
    assert available(reconciler.registry) == {"a": [1], "b": [2]}


def test_one_models_unexpected_error_does_not_stop_the_others(
        graphs: Path, make: Callable[..., Reconciler], monkeypatch: pytest.MonkeyPatch) -> None:
    reconciler = serving_a_and_b(graphs, make, "b")
    original = reconciler._reconcile_model

    def surprise(name: str, *args: Any, **kwargs: Any) -> None:
        if name == "a":
            raise RuntimeError("something nobody expected")
        original(name, *args, **kwargs)

    monkeypatch.setattr(reconciler, "_reconcile_model", surprise)
    report = reconciler.reload()
    assert changes(report) == ([("b", 2)], [("b", 1)], [("a", None)])
    assert available(reconciler.registry) == {"a": [1], "b": [2]}


def test_files_vanishing_after_they_were_read_do_not_fail_a_real_load(
        make_graphs_dir: Callable[[], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import app.servable as servable_module

    graphs = make_graphs_dir()
    folder = graphs / "digits8" / "1"
    original = servable_module._read_labels

    def then_vanish(spec: ServableSpec, timeout_s: float) -> Any:
        labels = original(spec, timeout_s)
        shutil.rmtree(spec.directory)  # everything is read: the folder going now changes nothing
        return labels

    monkeypatch.setattr(servable_module, "_read_labels", then_vanish)
    servable = load_servable(ServableSpec("digits8", 1, folder))
    try:
        assert servable.stats.graph_bytes > 0 and not folder.exists()
    finally:
        servable.close()
    with pytest.raises(ModelLoadError, match="manifest file is missing"):
        load_servable(ServableSpec("digits8", 1, folder))


# -- 2. a policy naming versions not on disk ----------------------------------------------------


@pytest.mark.parametrize("versions", [[7], [1, 7]])
def test_a_specific_policy_naming_a_missing_version_is_refused_and_serving_stays(
        graphs: Path, make: Callable[..., Reconciler], versions: list[int]) -> None:
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    write_policy(graphs, "a", {"policy": "specific", "versions": versions})
    report = reconciler.reload()
    assert changes(report) == ([], [], [("a", None)])
    assert "field 'versions': version 7 is not on disk (versions: 1)" in report.refused[0]["reason"]
    assert available(reconciler.registry) == {"a": [1]}
    assert "version 7 is not on disk" in (reconciler.registry.snapshot["a"].error or "")


def test_a_specific_policy_naming_a_missing_version_stops_a_strict_start(graphs: Path) -> None:
    write_version(graphs, "a", 1)
    write_policy(graphs, "a", {"policy": "specific", "versions": [1, 7]})
    with pytest.raises(PolicyError, match=r"field 'versions': version 7 is not on disk"):
        scan(graphs)


# -- 3. FIFOs, devices and hung mounts ----------------------------------------------------------


@pytest.mark.parametrize("name", ["model.pb", "model.json", "labels.txt", "versions.json"])
def test_a_fifo_is_never_opened_for_reading(tmp_path: Path, name: str) -> None:
    fifo = tmp_path / name
    os.mkfifo(fifo)
    with pytest.raises(model_files.NotRegularFile, match="a FIFO"):
        within(5, lambda: model_files.read_regular(fifo, timeout_s=2))


def test_a_device_or_folder_is_not_read(tmp_path: Path) -> None:
    with pytest.raises(model_files.NotRegularFile, match="character device"):
        model_files.read_regular(Path("/dev/zero"))
    with pytest.raises(model_files.NotRegularFile, match="a folder"):
        model_files.read_regular(tmp_path)


def test_a_hung_read_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(model_files, "_read", lambda path: release.wait(WAIT) and b"")  # a stuck mount
    started = time.monotonic()
    try:
        with pytest.raises(model_files.ReadTimedOut, match="no answer within 0.2 s"):
            model_files.read_regular(tmp_path / "model.pb", timeout_s=0.2)
        assert time.monotonic() - started < 2
    finally:
        release.set()


@pytest.mark.parametrize("name", ["model.pb", "model.json", "versions.json"])
def test_a_fifo_in_a_new_version_refuses_it_without_blocking(
        graphs: Path, make: Callable[..., Reconciler], name: str) -> None:
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    folder = write_version(graphs, "a", 2)
    target = graphs / "a" / name if name == "versions.json" else folder / name
    target.unlink(missing_ok=True)
    os.mkfifo(target)
    report = within(10, reconciler.reload)
    assert report.loaded == [] and len(report.refused) == 1
    assert "FIFO" in report.refused[0]["reason"]
    assert available(reconciler.registry) == {"a": [1]}


def test_a_hung_scan_ends_the_round_within_the_bound(
        graphs: Path, make: Callable[..., Reconciler], monkeypatch: pytest.MonkeyPatch) -> None:
    write_version(graphs, "a", 1)
    reconciler = make(file_read_timeout_s=0.3)
    reconciler.load_all()
    release = threading.Event()
    original = reconcile_module.scan
    monkeypatch.setattr(reconcile_module, "scan", lambda *a, **k: release.wait(WAIT) and original(*a, **k))
    try:
        report = within(5, reconciler.reload)
        assert changes(report) == ([], [], [("*", None)]) and "took over 0.3 s" in report.refused[0]["reason"]
        assert available(reconciler.registry) == {"a": [1]}
    finally:
        release.set()


def test_concurrent_reloads_share_a_pending_round(graphs: Path, make: Callable[..., Reconciler],
                                                  loader: FakeLoader) -> None:
    write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    write_version(graphs, "a", 2)
    loader.gate.clear()
    with ThreadPoolExecutor(20) as pool:
        first = pool.submit(reconciler.reload)
        assert loader.entered.wait(WAIT)  # round 1 is loading a/2
        rest = [pool.submit(reconciler.reload) for _ in range(19)]
        time.sleep(0.5)
        loader.gate.set()
        reports = [first.result(WAIT)] + [f.result(WAIT) for f in rest]
    assert reports[0].loaded == [{"model": "a", "version": 2}]
    assert len({id(r) for r in reports[1:]}) == 1  # the 19 late callers shared one round
    assert loader.loads == [("a", 1), ("a", 2)]


# -- 4. a served version's files changing in place ----------------------------------------------


def change_graph(folder: Path) -> None:
    (folder / "model.pb").write_bytes(b"broken: garbage written in place")


def graph_to_folder(folder: Path) -> None:
    (folder / "model.pb").unlink()
    (folder / "model.pb").mkdir()


def manifest_to_folder(folder: Path) -> None:
    (folder / "model.json").unlink()
    (folder / "model.json").mkdir()


@pytest.mark.parametrize("damage", [change_graph, graph_to_folder, manifest_to_folder])
def test_a_served_version_whose_files_break_keeps_serving_and_says_why(
        graphs: Path, make: Callable[..., Reconciler], loader: FakeLoader, damage: Callable[[Path], None]) -> None:
    folder = write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    serving = reconciler.registry.get("a")
    damage(folder)
    report = reconciler.reload()
    assert report.loaded == [] and report.unloaded == []
    assert [(c["model"], c["version"], c["action"]) for c in report.changed] == [("a", 1, "kept")]
    assert reconciler.registry.get("a") is serving
    status = reconciler.registry.snapshot["a"].versions[1]
    assert status.state == AVAILABLE and "files changed on disk" in (status.reason or "")
    assert reconciler.reload().changed == []  # tried once per change, not on every poll


def test_a_served_version_whose_files_change_is_loaded_again_and_the_old_drains(
        graphs: Path, make: Callable[..., Reconciler], loader: FakeLoader) -> None:
    folder = write_version(graphs, "a", 1)
    reconciler = make()
    reconciler.load_all()
    old = reconciler.registry.get("a")
    change_graph(folder)
    assert reconciler.reload().changed[0]["action"] == "kept"
    (folder / "model.pb").write_bytes(b"a fixed graph")
    report = reconciler.reload()
    assert [(c["model"], c["version"], c["action"]) for c in report.changed] == [("a", 1, "reloaded")]
    new = reconciler.registry.get("a")
    assert new is not old and new.servable is loader.last("a", 1)
    assert reconciler.registry.snapshot["a"].versions[1].reason is None
    assert old.wait_closed(WAIT)  # drained, then closed
    assert reconciler.reload().changed == []


# -- through a real server: no 500, no hang, no 404 -------------------------------------------


def hammer(url: str, digits: Any, stop: threading.Event, statuses: list[int]) -> None:
    with requests.Session() as session:
        while not stop.is_set():
            response = session.post(f"{url}/image_classification?model=d", data=png_bytes(digits.test_images[0]),
                                    headers={"Content-Type": "image/png"}, timeout=30)
            statuses.append(response.status_code)


def test_concurrent_admin_reloads_while_a_version_folder_comes_and_goes_never_500(
        tmp_path: Path, digit_weights: Any, digits: Any) -> None:
    graphs = tmp_path / "graphs"
    publish(graphs, "d", 1, digit_weights)
    publish(graphs, "e", 1, digit_weights)
    policy(graphs, "d", {"policy": "all"})
    app = create_app({"GRAPHS_DIR": str(graphs), "ADMIN_TOKEN": "t", "POLL_INTERVAL_S": 0})
    stop = threading.Event()
    (graphs / "d" / "1").rename(graphs / "d" / ".spare")
    shutil.copytree(graphs / "d" / ".spare", graphs / "d" / "1")

    def churn() -> None:  # a version folder appearing and vanishing under every scan
        while not stop.is_set():
            shutil.copytree(graphs / "d" / ".spare", graphs / "d" / ".2.in")
            (graphs / "d" / ".2.in").rename(graphs / "d" / "2")
            time.sleep(0.01)
            shutil.rmtree(graphs / "d" / "2")

    try:
        with running(app, threads=32) as url:
            churner = threading.Thread(target=churn)
            churner.start()
            with ThreadPoolExecutor(25) as pool:
                answers = list(pool.map(lambda _: requests.post(f"{url}/admin/reload", headers=AUTH, timeout=60),
                                        range(100)))
            stop.set()
            churner.join(WAIT)
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        stop.set()
        services_of(app).registry.close()
    assert sorted({a.status_code for a in answers}) == [200]
    assert all(set(a.json()) >= {"loaded", "unloaded", "refused", "changed"} for a in answers)


def test_no_request_fails_while_the_policy_and_served_files_go_bad(
        tmp_path: Path, digit_weights: Any, digits: Any) -> None:
    graphs = tmp_path / "graphs"
    folder = publish(graphs, "d", 1, digit_weights)
    app = create_app({"GRAPHS_DIR": str(graphs), "ADMIN_TOKEN": "t", "POLL_INTERVAL_S": 0})
    stop = threading.Event()
    statuses: list[int] = []
    steps = []
    try:
        with running(app, threads=16) as url:
            clients = [threading.Thread(target=hammer, args=(url, digits, stop, statuses)) for _ in range(3)]
            for client in clients:
                client.start()

            def reload() -> dict[str, Any]:
                time.sleep(0.3)
                response = requests.post(f"{url}/admin/reload", headers=AUTH, timeout=60)
                assert response.status_code == 200, response.text
                return response.json()

            policy(graphs, "d", {"policy": "specific", "versions": [7]})  # 2: names nothing on disk
            steps.append(reload())
            (graphs / "d" / "versions.json").unlink()
            graph = (folder / "model.pb").read_bytes()
            (folder / "model.pb").write_bytes(b"\x00garbage\xff" * 10)  # 4: garbage in place
            steps.append(reload())
            kept = requests.get(f"{url}/stats", timeout=10).json()["models"]["d"]["versions"]["1"]
            (folder / "model.pb").unlink()
            (folder / "model.pb").mkdir()  # 4: model.pb replaced by a folder
            steps.append(reload())
            (folder / "model.pb").rmdir()
            (folder / "model.pb").write_bytes(graph)  # repaired: loaded again, switched in
            steps.append(reload())
            models = requests.get(f"{url}/models", timeout=10).json()["models"]
            time.sleep(0.3)
            stop.set()
            for client in clients:
                client.join(WAIT)
    finally:
        stop.set()
        services_of(app).registry.close()
    assert "version 7 is not on disk" in steps[0]["refused"][0]["reason"]
    assert [[c["action"] for c in s["changed"]] for s in steps[1:]] == [["kept"], ["kept"], ["reloaded"]]
    assert models[0]["versions"] == [{"version": 1, "state": "available"}]
    assert kept["state"] == "available" and "files changed on disk" in kept["reason"]  # /stats says it too
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_admin_reload_answers_within_its_bound_and_health_stays_up(
        tmp_path: Path, digit_weights: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    graphs = tmp_path / "graphs"
    publish(graphs, "d", 1, digit_weights)
    app = create_app({"GRAPHS_DIR": str(graphs), "ADMIN_TOKEN": "t", "POLL_INTERVAL_S": 0, "RELOAD_WAIT_S": 0.5})
    release = threading.Event()
    real = reconcile_module.load_servable

    def stuck(spec: ServableSpec, *args: Any, **kwargs: Any) -> Any:
        release.wait(WAIT)  # a load that takes its time (a slow mount)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(reconcile_module, "load_servable", stuck)
    publish(graphs, "d", 2, digit_weights)
    try:
        with running(app, threads=8) as url:
            with ThreadPoolExecutor(6) as pool:
                started = time.monotonic()
                pending = [pool.submit(requests.post, f"{url}/admin/reload", headers=AUTH, timeout=30)
                           for _ in range(6)]
                answers = [p.result() for p in pending]
                assert time.monotonic() - started < 10
                assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
            assert {a.status_code for a in answers} == {503}
            assert {a.json()["error"]["code"] for a in answers} == {"reload_running"}
            release.set()  # the round carries on and switches to version 2; a later call answers 200
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if requests.post(f"{url}/admin/reload", headers=AUTH, timeout=60).status_code == 200:
                    break
                time.sleep(0.2)
            versions = requests.get(f"{url}/models", timeout=10).json()["models"][0]["versions"]
            assert {v["version"]: v["state"] for v in versions}[2] == "available"
    finally:
        release.set()
        services_of(app).registry.close()


def test_a_fifo_labels_file_in_a_new_version_is_refused_over_http(
        tmp_path: Path, digit_weights: Any) -> None:
    graphs = tmp_path / "graphs"
    publish(graphs, "d", 1, digit_weights)
    app = create_app({"GRAPHS_DIR": str(graphs), "ADMIN_TOKEN": "t", "POLL_INTERVAL_S": 0})
    staged = graphs / "d" / ".2.writing"
    shutil.copytree(graphs / "d" / "1", staged)
    (staged / "labels.txt").unlink(missing_ok=True)
    os.mkfifo(staged / "labels.txt")
    staged.rename(graphs / "d" / "2")
    try:
        with running(app, threads=8) as url:
            answer = requests.post(f"{url}/admin/reload", headers=AUTH, timeout=30)
            assert answer.status_code == 200
            refused = answer.json()["refused"]
            assert [(r["model"], r["version"]) for r in refused] == [("d", 2)] and "FIFO" in refused[0]["reason"]
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
    finally:
        services_of(app).registry.close()


def test_a_strict_start_up_still_fails_loudly_on_a_fifo_manifest(
        graphs: Path, make: Callable[..., Reconciler]) -> None:
    folder = write_version(graphs, "a", 1)
    (folder / "model.json").unlink()
    os.mkfifo(folder / "model.json")
    with pytest.raises(ModelLoadError, match="not a regular file"):
        within(10, make().load_all)

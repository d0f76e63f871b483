"""Several versions per model: discovery, versions.json, selection, /models, reload, drain, admin auth."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import pytest

from app import create_app
from app.config import Settings
from app.discovery import PolicyError, parse_policy, scan
from app.services import services_of
from tests.digits import png_bytes, write_model


def publish(root: Path, name: str, version: int, weights, *, size: int = 8, broken: bool = False) -> Path:
    """Write a version beside the model folder, then rename it into place (the publishing rule)."""
    staging = root / name / f".{version}.writing"
    write_model(staging, "m", weights, size=size, version=version)
    if broken:
        (staging / "m" / str(version) / "model.pb").write_bytes(b"\x00not a graph\xff" * 8)
    target = root / name / str(version)
    (staging / "m" / str(version)).rename(target)
    shutil.rmtree(staging)
    return target


def policy(root: Path, name: str, data: dict) -> None:
    (root / name / "versions.json").write_text(json.dumps(data))


def post(client, digits, query: str = "", k: int = 0):
    return client.post(f"/image_classification{query}", data=png_bytes(digits.test_images[k]),
                       content_type="image/png")


def error(response) -> tuple[int, str, str]:
    body = response.get_json()["error"]
    return response.status_code, body["code"], body["message"]


@pytest.fixture()
def versioned(tmp_path, digit_weights):
    """graphs/ with model 'd' (versions 1 and 2, both served, labelled) and 'other'."""
    root = tmp_path / "graphs"
    publish(root, "d", 1, digit_weights)
    publish(root, "d", 2, digit_weights, size=16)
    publish(root, "other", 1, digit_weights)
    policy(root, "d", {"policy": "latest", "num_versions": 2, "labels": {"stable": 1, "canary": 2}})
    return root


@pytest.fixture()
def make_app():
    apps = []

    def make(root: Path, **config):
        # These tests reload by hand and check each report: the default poller would race them.
        app = create_app({"GRAPHS_DIR": str(root), "POLL_INTERVAL_S": 0, **config})
        apps.append(app)
        return app

    yield make
    for app in apps:
        services_of(app).registry.close()


# -- discovery and versions.json --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        ([], None, "JSON object"),
        ({"policy": "newest"}, "policy", "latest, all, specific"),
        ({"policy": "latest", "num_versions": 0}, "num_versions", ">= 1"),
        ({"num_versions": "2"}, "num_versions", "integer"),
        ({"policy": "all", "num_versions": 2}, "num_versions", "only used with policy 'latest'"),
        ({"policy": "specific"}, "versions", "non-empty list"),
        ({"policy": "specific", "versions": [1, "2"]}, "versions[1]", "integer"),
        ({"versions": [1]}, "versions", "only used with policy 'specific'"),
        ({"labels": ["stable"]}, "labels", "object"),
        ({"labels": {"stable": True}}, "labels.stable", "integer"),
        ({"labels": {"bad name!": 1}}, "labels.bad name!", "label names"),
        ({"labels": {"canary": 3}}, "labels.canary", "version 3 is not on disk (versions: 1, 2)"),
        ({"device": "GPU0"}, "device", "/GPU:0"),
        ({"gpu_memory_mb": 0}, "gpu_memory_mb", ">= 1"),
        ({"polcy": "all"}, "polcy", "unknown field"),
    ],
)
def test_policy_errors_name_the_file_and_field(data, field, fragment):
    with pytest.raises(PolicyError) as info:
        parse_policy(data, "graphs/d/versions.json", available=[1, 2])
    assert info.value.field == field
    assert str(info.value).startswith("graphs/d/versions.json") and fragment in str(info.value)


def test_policies_select_versions():
    assert parse_policy({}).select([3, 1, 2]) == [3]
    assert parse_policy({"policy": "latest", "num_versions": 2}).select([3, 1, 2]) == [2, 3]
    assert parse_policy({"policy": "all"}).select([3, 1]) == [1, 3]
    assert parse_policy({"policy": "specific", "versions": [1, 5]}).select([1, 2, 3]) == [1]
    placed = parse_policy({"device": "/gpu:1", "gpu_memory_mb": 512})
    assert (placed.device, placed.gpu_memory_mb) == ("/GPU:1", 512)


def test_hidden_temporary_and_incomplete_folders_are_ignored(tmp_path, digit_weights):
    publish(tmp_path, "d", 1, digit_weights)
    write_model(tmp_path / "d" / ".2.writing-abc", "x", digit_weights, size=8)  # hidden: being written
    shutil.copytree(tmp_path / "d" / "1", tmp_path / "d" / "_3")
    shutil.copytree(tmp_path / "d" / "1", tmp_path / "d" / "4.tmp")
    shutil.copytree(tmp_path / "d" / "1", tmp_path / "d" / "٣")  # Arabic-Indic digit: not an ASCII version
    (tmp_path / "d" / "5").mkdir()  # no model.pb (yet)
    shutil.copytree(tmp_path / "d", tmp_path / ".d-copy")
    (sources, errors) = scan(tmp_path)
    assert [(s.name, list(s.versions)) for s in sources] == [("d", [1])] and errors == []


def test_specific_versions_missing_on_disk_stop_start_up_like_a_bad_label(versioned, make_app):
    """A policy naming a version that is not on disk is refused (as a label is), never half-applied."""
    policy(versioned, "d", {"policy": "specific", "versions": [1, 7]})
    with pytest.raises(PolicyError, match=r"d/versions\.json.*7"):
        make_app(versioned)


def test_a_bad_policy_stops_start_up_with_file_and_field(versioned, make_app):
    policy(versioned, "d", {"policy": "latest", "num_versions": 2, "labels": {"stable": 9}})
    with pytest.raises(PolicyError, match=r"d/versions\.json: field 'labels\.stable': version 9 is not on disk"):
        make_app(versioned)


# -- selecting a version -------------------------------------------------------------------------------


def test_version_and_label_selection_and_404s(versioned, make_app, digits):
    client = make_app(versioned).test_client()
    version = lambda query: post(client, digits, query).get_json()["models"]["d"]["version"]  # noqa: E731
    assert version("?model=d") == 2
    assert version("?model=d&version=1") == 1
    assert version("?model=d&version_label=stable") == 1
    assert version("?model=d&version_label=canary") == 2
    assert version("?model=d&version=") == 2  # empty: not given
    status, code, message = error(post(client, digits, "?model=d&version=3"))
    assert (status, code) == (404, "version_not_found") and "version 3" in message and "served: 1, 2" in message
    status, code, message = error(post(client, digits, "?model=d&version_label=beta"))
    assert (status, code) == (404, "version_not_found") and "'beta'" in message and "canary, stable" in message
    assert error(post(client, digits, "?model=d&version=x"))[:2] == (400, "bad_version")
    assert error(post(client, digits, "?model=d&version=" + "9" * 5000))[:2] == (400, "bad_version")
    assert version("?model=%20d%20&version_label=stable") == 1  # spaces around a name are ignored
    assert post(client, digits, "?model=all%20").status_code == 200
    assert error(post(client, digits, "?model=d&version=1&version_label=stable"))[:2] == (400, "bad_version")
    # a version applies to every model named: 'other' has no version 2
    assert error(post(client, digits, "?model=d,other&version=2"))[:2] == (404, "version_not_found")
    form = client.post("/image_classification", content_type="multipart/form-data",
                       data={"image": [(__import__("io").BytesIO(png_bytes(digits.test_images[0])), "a.png")],
                             "model": "d", "version_label": "stable"})
    assert form.get_json()["models"]["d"]["version"] == 1


@pytest.mark.parametrize("selector", ["%2C", "%20%2C%20", "d%2C", "%2Cd", "d%2C%2Cother", "%20"])
def test_empty_model_selections_are_400(versioned, make_app, digits, selector):
    client = make_app(versioned).test_client()
    status, code, message = error(post(client, digits, f"?model={selector}"))
    assert (status, code) == (400, "bad_model_selection") and ("names no model" in message or "empty name" in message)


def test_echoed_client_strings_are_cut_to_64_characters(versioned, make_app, digits):
    client = make_app(versioned).test_client()
    for query in (f"?model={'m' * 3000}", f"?model=d&version_label={'m' * 3000}", f"?model=d&version={'9' * 3000}",
                  f"?model=d&top_k={'m' * 3000}"):
        message = error(post(client, digits, query))[2]
        assert "m" * 64 + "…(+2936 chars)" in message or "9" * 64 + "…(+2936 chars)" in message, message
        assert "m" * 65 not in message and "9" * 65 not in message and len(message) < 400


def test_models_lists_versions_states_and_labels(versioned, make_app, digits):
    client = make_app(versioned).test_client()
    d, other = client.get("/models").get_json()["models"]
    assert (d["name"], d["version"], d["state"], d["input"]["height"]) == ("d", 2, "available", 16)
    assert d["versions"] == [{"version": 1, "state": "available"}, {"version": 2, "state": "available"}]
    assert d["labels"] == {"stable": 1, "canary": 2}
    assert other["versions"] == [{"version": 1, "state": "available"}] and other["labels"] == {}


def test_metrics_and_stats_keep_versions_apart(versioned, make_app, digits):
    client = make_app(versioned).test_client()
    for _ in range(3):
        post(client, digits, "?model=d&version=1")
    post(client, digits, "?model=d")
    stats = client.get("/stats").get_json()["models"]["d"]
    assert stats["version"] == 2 and stats["latency_ms"]["count"] == 1
    assert stats["versions"]["1"]["latency_ms"]["count"] == 3 and stats["versions"]["1"]["requests"] == {"200": 3}
    assert stats["versions"]["2"]["requests"] == {"200": 1}
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'graphserve_model_requests_total{model="d",status="200",version="1"} 3.0' in metrics
    assert 'graphserve_model_requests_total{model="d",status="200",version="2"} 1.0' in metrics


# -- placement ---------------------------------------------------------------------------------------


def test_a_gpu_device_falls_back_to_cpu_with_a_warning(versioned, make_app, digits, caplog):
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("this machine has a GPU: the fallback is for CPU-only machines")
    policy(versioned, "other", {"device": "/GPU:1", "gpu_memory_mb": 256})
    with caplog.at_level(logging.WARNING, logger="app.servable"):
        client = make_app(versioned).test_client()
    assert any("device /GPU:1 is not available" in r.getMessage() and "/CPU:0" in r.getMessage()
               for r in caplog.records)
    assert post(client, digits, "?model=other").status_code == 200
    (model,) = [m for m in client.get("/models").get_json()["models"] if m["name"] == "other"]
    assert model["device"] == "/CPU:0"


# -- admin and reload ------------------------------------------------------------------------------------


def test_admin_endpoints_need_the_token(versioned, make_app):
    off = make_app(versioned).test_client()  # no token: no endpoint, and the 404 says how to turn it on
    for method, path in [("post", "/admin/reload"), ("get", "/admin"), ("post", "/admin/"), ("delete", "/admin/x/y")]:
        status, code, message = error(getattr(off, method)(path))
        assert (status, code) == (404, "admin_disabled") and "GRAPHSERVE_ADMIN_TOKEN=<token>" in message, path
        assert "polling the graphs folder is off too" in message
    polled = make_app(versioned, POLL_INTERVAL_S=5).test_client()
    assert "it is polled every 5 s" in error(polled.post("/admin/reload"))[2]
    client = make_app(versioned, ADMIN_TOKEN="s3cret").test_client()
    missing = client.post("/admin/reload")
    assert error(missing)[:2] == (401, "unauthorized") and missing.headers["WWW-Authenticate"] == "Bearer"
    assert error(client.post("/admin/reload", headers={"Authorization": "Basic s3cret"}))[:2] == (401, "unauthorized")
    assert error(client.post("/admin/reload", headers={"Authorization": "Bearer nope"}))[:2] == (403, "forbidden")
    ok = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.get_json() == {**ok.get_json(), "loaded": [], "unloaded": [], "refused": []}


def test_reload_adds_refuses_and_removes_versions(versioned, make_app, digit_weights, digits, caplog):
    app = make_app(versioned, ADMIN_TOKEN="t")
    client = app.test_client()
    reload = lambda: client.post("/admin/reload", headers={"Authorization": "Bearer t"}).get_json()  # noqa: E731
    served = lambda: post(client, digits, "?model=d").get_json()["models"]["d"]["version"]  # noqa: E731
    # a broken version 3: refused with one log line, shown failed; 1 and 2 keep serving
    publish(versioned, "d", 3, digit_weights, broken=True)
    with caplog.at_level(logging.ERROR, logger="app.registry"):
        report = reload()
    assert report["loaded"] == [] and report["unloaded"] == []
    assert [(r["model"], r["version"]) for r in report["refused"]] == [("d", 3)]
    assert "model.pb" in report["refused"][0]["reason"]
    assert len([r for r in caplog.records if "refused model d version 3" in r.getMessage()]) == 1
    assert served() == 2
    d = client.get("/models").get_json()["models"][0]
    assert [(v["version"], v["state"]) for v in d["versions"]] == [(1, "available"), (2, "available"), (3, "failed")]
    assert "model.pb" in d["versions"][2]["reason"]
    again = reload()  # unchanged files: not retried, not logged again
    assert (again["loaded"], again["unloaded"], again["refused"]) == ([], [], [])
    assert len([r for r in caplog.records if "refused model d version 3" in r.getMessage()]) == 1
    # a good version 4: loaded, answers; the policy keeps two working versions, so 1 goes
    (held,) = services_of(app).registry.acquire("d", version=1)  # a request still on 1 while it is unloaded
    publish(versioned, "d", 4, digit_weights)
    report = reload()
    assert report["loaded"] == [{"model": "d", "version": 4}] and report["unloaded"] == [{"model": "d", "version": 1}]
    assert served() == 4
    # removing version 4 rolls back to 2 and 1, which the policy wants again: 1 is still
    # draining, so the reload waits for its last request and loads it afresh
    shutil.rmtree(versioned / "d" / "4")
    __import__("threading").Timer(0.3, held.release).start()
    report = reload()
    assert report["unloaded"] == [{"model": "d", "version": 4}] and report["loaded"] == [{"model": "d", "version": 1}]
    assert served() == 2
    # a new model appears, a removed model goes
    publish(versioned, "late", 1, digit_weights)
    shutil.rmtree(versioned / "other")
    report = reload()
    assert report["loaded"] == [{"model": "late", "version": 1}]
    assert report["unloaded"] == [{"model": "other", "version": 1}]
    assert error(post(client, digits, "?model=other"))[:2] == (404, "model_not_found")
    assert post(client, digits, "?model=late").status_code == 200
    # a broken versions.json: refused, and what serves keeps serving
    (versioned / "d" / "versions.json").write_text("{nope")
    report = reload()
    assert report["refused"][0]["model"] == "d" and "versions.json" in report["refused"][0]["reason"]
    assert served() == 2


def test_an_unloaded_version_is_closed_only_after_its_last_request(versioned, make_app, digits):
    app = make_app(versioned)
    registry = services_of(app).registry
    (held,) = registry.acquire("d", version=1)  # a request still running on version 1
    policy(versioned, "d", {"policy": "latest", "num_versions": 1})
    report = services_of(app).reconciler.reload()
    assert report.unloaded == [{"model": "d", "version": 1}]
    client = app.test_client()
    assert error(post(client, digits, "?model=d&version=1"))[:2] == (404, "version_not_found")  # no new requests
    d = client.get("/models").get_json()["models"][0]
    assert [(v["version"], v["state"]) for v in d["versions"]] == [(1, "unloading"), (2, "available")]
    time.sleep(0.2)
    assert not held.closed
    assert held.servable.run([png_bytes(digits.test_images[0])]).shape == (1, 10)  # its session still works
    held.release()  # the last request answered: now it is closed, then dropped from the listing

    def listed() -> list[int]:
        return [v["version"] for v in client.get("/models").get_json()["models"][0]["versions"]]

    for _ in range(250):  # the unloader closes the session first, then publishes the listing
        if held.closed and listed() == [2]:
            break
        time.sleep(0.02)
    assert held.closed and held.servable.session._closed  # noqa: SLF001
    assert listed() == [2]


def test_a_version_wanted_again_while_draining_is_loaded_afresh(versioned, make_app, digits):
    import threading

    services = services_of(make_app(versioned))
    registry = services.registry
    (held,) = registry.acquire("d", version=1)
    policy(versioned, "d", {"policy": "latest", "num_versions": 1})
    assert services.reconciler.reload().unloaded == [{"model": "d", "version": 1}]
    policy(versioned, "d", {"policy": "latest", "num_versions": 2})  # changed back before 1 has drained
    threading.Timer(0.3, held.release).start()
    report = services.reconciler.reload()  # waits for 1's last request and its close, then loads it again
    assert report.loaded == [{"model": "d", "version": 1}] and held.closed
    assert registry.get("d", 1) is not held and registry.get("d", 1).servable.run(
        [png_bytes(digits.test_images[0])]).shape == (1, 10)


def test_close_drains_in_flight_requests_before_closing_sessions(versioned, make_app):
    registry = services_of(make_app(versioned)).registry
    (held,) = registry.acquire("other")
    started = time.monotonic()
    assert registry.close(timeout=0.3) is False  # one request never returned: closed after the timeout
    assert time.monotonic() - started >= 0.3 and held.closed
    held.release()
    registry = services_of(make_app(versioned)).registry
    assert registry.close(timeout=5) is True


def test_a_version_frozen_into_the_folder_is_served_without_a_restart_by_default(versioned, digit_weights, digits):
    """No flag, no token: the default settings poll the folder, as TF Serving does."""
    app = create_app({"GRAPHS_DIR": str(versioned)})
    try:
        client = app.test_client()
        publish(versioned, "other", 2, digit_weights, size=16)
        deadline = time.monotonic() + 4 * Settings().poll_interval_s + 10
        while time.monotonic() < deadline:
            if post(client, digits, "?model=other").get_json()["models"]["other"]["version"] == 2:
                break
            time.sleep(0.2)
        assert post(client, digits, "?model=other").get_json()["models"]["other"]["version"] == 2
    finally:
        services_of(app).registry.close()


def test_polling_picks_up_a_published_version(versioned, make_app, digit_weights, digits):
    client = make_app(versioned, POLL_INTERVAL_S=0.2).test_client()
    publish(versioned, "other", 2, digit_weights, size=16)
    for _ in range(100):
        if post(client, digits, "?model=other").get_json()["models"]["other"]["version"] == 2:
            break
        time.sleep(0.1)
    assert post(client, digits, "?model=other").get_json()["models"]["other"]["version"] == 2


def test_lenient_start_up_refuses_a_broken_version_and_serves_the_rest(versioned, make_app, digit_weights, digits):
    publish(versioned, "d", 3, digit_weights, broken=True)
    with pytest.raises(Exception, match=r"model 'd'.*3.*model\.pb"):
        make_app(versioned)
    client = make_app(versioned, STRICT_STARTUP="false").test_client()
    assert post(client, digits, "?model=d").get_json()["models"]["d"]["version"] == 2
    d = client.get("/models").get_json()["models"][0]
    assert [(v["version"], v["state"]) for v in d["versions"]] == [(1, "available"), (2, "available"), (3, "failed")]
    assert client.get("/readyz").status_code == 200

"""KServe v2's model repository extension (Triton's index, load, unload) over REST and gRPC.

Real servers on 127.0.0.1 (waitress through ``tests.server.running``, the process's gRPC
server) and real clients: ``tritonclient.http`` / ``tritonclient.grpc``'s
``get_model_repository_index``, ``load_model`` and ``unload_model``, ``requests`` for the
bodies tritonclient never sends. Small digit graphs, loaded in well under a second each.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import grpc
import pytest
import requests

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from app import create_app  # noqa: E402
from app.budget import MiB, SizeBook  # noqa: E402
from app.grpc_server import start_grpc_server  # noqa: E402
from app.registry import AVAILABLE  # noqa: E402
from app.services import services_of  # noqa: E402
from tests.digits import png_bytes, write_model, write_two_versions  # noqa: E402
from tests.server import running  # noqa: E402

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}  # gRPC metadata keys are lower case


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, digit_weights) -> Path:
    """digits8 (one version) and twin (versions 1 and 2)."""
    root = tmp_path_factory.mktemp("repository")
    write_model(root, "digits8", digit_weights, size=8)
    write_two_versions(root, "twin", digit_weights)
    return root


@pytest.fixture(scope="module")
def admin_app(repository):
    application = create_app({"GRAPHS_DIR": str(repository), "ADMIN_TOKEN": TOKEN, "POLL_INTERVAL_S": 0})
    yield application
    services_of(application).registry.close()


@pytest.fixture(scope="module")
def url(admin_app):
    with running(admin_app, threads=4) as base:
        yield base


@pytest.fixture(scope="module")
def grpc_port(admin_app):
    server, port = start_grpc_server(admin_app)
    yield port
    server.stop(None)


@pytest.fixture(scope="module")
def http_client(url):
    client = tritonhttp.InferenceServerClient(url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(grpc_port):
    client = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(grpc_port):
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def photo(digits) -> str:
    return base64.b64encode(png_bytes(digits.test_images[0])).decode()


def infer(url: str, model: str, photo: str) -> requests.Response:
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [photo]}]}
    return requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=30)


def index(url: str, body: object = None) -> list[dict]:
    answer = requests.post(f"{url}/v2/repository/index", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def states(url: str) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m["name"], m["version"]): (m["state"], m["reason"]) for m in index(url)}


def post(url: str, path: str, body: object = None, headers: dict | None = None, data: bytes | None = None):
    return requests.post(f"{url}/v2/repository{path}", json=body, data=data, headers=headers, timeout=30)


# -- the index --------------------------------------------------------------------------------

def test_index_lists_every_version_with_its_state(http_client, grpc_client, stub, url):
    every = [{"name": "digits8", "version": "1", "state": "READY", "reason": ""},
             {"name": "twin", "version": "1", "state": "READY", "reason": ""},
             {"name": "twin", "version": "2", "state": "READY", "reason": ""}]
    assert http_client.get_model_repository_index() == every  # tritonclient posts an empty body, no token
    assert index(url, {"ready": True}) == every
    listed = grpc_client.get_model_repository_index().models
    assert [(m.name, m.version, m.state, m.reason) for m in listed] == [tuple(m.values()) for m in every]
    ready = stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(ready=True), timeout=10).models
    assert [m.name for m in ready] == ["digits8", "twin", "twin"]


def test_model_repository_is_advertised(http_client, grpc_client):
    assert "model_repository" in http_client.get_server_metadata()["extensions"]
    assert "model_repository" in grpc_client.get_server_metadata().extensions


# -- unload and load --------------------------------------------------------------------------

def test_unload_answers_503_until_loaded_again_over_rest(http_client, url, photo):
    assert infer(url, "twin", photo).status_code == 200
    http_client.unload_model("twin", headers=AUTH)  # sends {"parameters": {"unload_dependents": false}}
    try:
        refused = infer(url, "twin", photo)
        assert refused.status_code == 503, refused.text
        assert "unloaded through the repository API" in refused.json()["error"]
        listed = states(url)
        for version in ("1", "2"):
            state, reason = listed[("twin", version)]
            assert state == "UNAVAILABLE" and "unloaded through the repository API" in reason
        assert listed[("digits8", "1")] == ("READY", "")  # the other model is untouched
        assert [m["name"] for m in index(url, {"ready": True})] == ["digits8"]
        assert infer(url, "digits8", photo).status_code == 200
        ours = requests.get(f"{url}/models", timeout=10).json()["models"]
        assert {v["state"] for m in ours if m["name"] == "twin" for v in m["versions"]} == {"unloaded"}
    finally:
        http_client.load_model("twin", headers=AUTH)
    assert states(url)[("twin", "2")] == ("READY", "")
    answer = infer(url, "twin", photo)
    assert answer.status_code == 200 and answer.json()["model_version"] == "2"
    http_client.load_model("twin", headers=AUTH)  # loaded already: nothing to do, still 200


def test_unload_and_load_over_grpc(grpc_client, stub, url, photo):
    grpc_client.unload_model("digits8", headers=GRPC_AUTH)
    try:
        assert infer(url, "digits8", photo).status_code == 503
        with pytest.raises(InferenceServerException) as info:
            grpc_client.infer("digits8", [_image_input(photo)])
        assert info.value.status() == "StatusCode.UNAVAILABLE"
        listed = {(m.name, m.version): m for m in grpc_client.get_model_repository_index().models}
        assert listed[("digits8", "1")].state == "UNAVAILABLE"
        assert "unloaded through the repository API" in listed[("digits8", "1")].reason
        assert not grpc_client.is_model_ready("digits8")
    finally:
        grpc_client.load_model("digits8", headers=GRPC_AUTH)
    assert grpc_client.is_model_ready("digits8")
    assert infer(url, "digits8", photo).status_code == 200


def _image_input(photo: str):
    import numpy as np

    tensor = tritongrpc.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([base64.b64decode(photo)], dtype=object))
    return tensor


def test_a_load_that_fails_is_503_and_the_index_says_why(tmp_path, digit_weights, digits):
    root = tmp_path / "graphs"
    write_model(root, "digits8", digit_weights, size=8)
    app = create_app({"GRAPHS_DIR": str(root), "ADMIN_TOKEN": TOKEN, "POLL_INTERVAL_S": 0})
    try:
        with running(app, threads=2) as url:
            assert post(url, "/models/digits8/unload", headers=AUTH).status_code == 200
            (root / "digits8" / "1" / "model.pb").write_bytes(b"not a graph")
            failed = post(url, "/models/digits8/load", headers=AUTH)
            assert failed.status_code == 503, failed.text
            assert "failed to load" in failed.json()["error"] and "not a GraphDef" in failed.json()["error"]
            state, reason = states(url)[("digits8", "1")]
            assert state == "UNAVAILABLE" and "not a GraphDef" in reason
    finally:
        services_of(app).registry.close()


def test_a_load_past_its_wait_is_504_and_goes_on(admin_app, url, stub, monkeypatch):
    """The door's wait (reload_wait_s, or the gRPC call's deadline) and its answer when the
    residency's wait runs out (a fake here; tests/test_budget.py runs out a real one)."""
    from app.batching import DeadlineExceeded

    waits = []

    def slow(name: str, timeout: float) -> None:
        waits.append(timeout)
        raise DeadlineExceeded(f"model '{name}' was still loading after {timeout:.3g} s; it goes on loading")

    monkeypatch.setattr(services_of(admin_app).reconciler.residency, "load_model", slow)
    answer = post(url, "/models/digits8/load", headers=AUTH)
    assert answer.status_code == 504 and "it goes on loading" in answer.json()["error"]
    with pytest.raises(grpc.RpcError) as info:
        stub.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="digits8"), timeout=5,
                                 metadata=list(GRPC_AUTH.items()))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "it goes on loading" in info.value.details()
    assert 55 < waits[0] <= 60 and waits[1] < 6  # reload_wait_s; the gRPC call's own deadline (5 s) when shorter


# -- with a memory budget: versions not in memory are listed, and load on demand ---------------

def test_with_a_memory_budget_the_index_shows_versions_that_load_on_demand(tmp_path, digit_weights, digits,
                                                                         monkeypatch):
    monkeypatch.setattr("app.residency.measured_bytes", lambda handle: 40 * MiB)  # digit models: a few noisy MB
    root = tmp_path / "graphs"
    book = SizeBook()
    for i, name in enumerate(["m0", "m1", "m2"]):
        directory = write_model(root, name, digit_weights, size=8 if i % 2 == 0 else 16)
        book.remember(directory / "model.pb", 40 * MiB)  # as a last run measured it: two fit in 100 MiB
    app = create_app({"GRAPHS_DIR": str(root), "MEMORY_BUDGET_MB": 100, "POLL_INTERVAL_S": 0, "ADMIN_TOKEN": TOKEN})
    try:
        _wait_for_loaded(app, 2)
        photo = base64.b64encode(png_bytes(digits.test_images[0])).decode()
        with running(app, threads=2) as url:
            listed = states(url)
            assert listed[("m0", "1")] == listed[("m1", "1")] == ("READY", "")
            state, reason = listed[("m2", "1")]
            assert state == "UNAVAILABLE" and "loads on its first request" in reason
            assert [m["name"] for m in index(url, {"ready": True})] == ["m0", "m1"]
            status = requests.get(f"{url}/v1/models/m2", timeout=10).json()["model_version_status"]
            assert [s["state"] for s in status] == ["START"]  # TF Serving: tracked, no action taken yet

            answer = infer(url, "m2", photo)  # the cold version loads for its first request
            assert answer.status_code == 200, answer.text
            listed = states(url)
            assert listed[("m2", "1")] == ("READY", "")
            assert sorted(s for s, _ in listed.values()) == ["READY", "READY", "UNAVAILABLE"]  # one made room

            assert post(url, "/models/m2/unload", headers=AUTH).status_code == 200
            assert "unloaded through the repository API" in states(url)[("m2", "1")][1]
            assert infer(url, "m2", photo).status_code == 503  # pinned: not loaded on demand any more
            assert post(url, "/models/m2/load", headers=AUTH).status_code == 200
            assert states(url)[("m2", "1")] == ("READY", "")
    finally:
        services_of(app).registry.close()


def _wait_for_loaded(app, count: int, timeout: float = 30.0) -> None:
    """Until the start-up prefill has loaded ``count`` versions."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        loaded = [s for e in services_of(app).registry.entries() for s in e.versions.values() if s.state == AVAILABLE]
        if len(loaded) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {count} versions loaded within {timeout} s")


# -- the admin token --------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["load", "unload"])
def test_rest_load_and_unload_need_the_admin_token(url, action):
    missing = post(url, f"/models/digits8/{action}")
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json() == {"error": "admin endpoints need 'Authorization: Bearer <token>'"}
    wrong = post(url, f"/models/digits8/{action}", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.json()) == (403, {"error": "wrong admin token"})
    unknown = post(url, f"/models/nope/{action}", headers={"Authorization": "Bearer nope"})
    assert unknown.status_code == 403  # the token before the name: no probing for model names
    basic = post(url, f"/models/digits8/{action}", headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    right = post(url, "/models/digits8/load", headers=AUTH)  # load only: the state stays as it was
    assert (right.status_code, right.json()) == (200, {})


@pytest.mark.parametrize("method", ["RepositoryModelLoad", "RepositoryModelUnload"])
def test_grpc_load_and_unload_need_the_admin_token(stub, method):
    request = getattr(service_pb2, f"{method}Request")(model_name="digits8")
    call = getattr(stub, method)
    with pytest.raises(grpc.RpcError) as missing:
        call(request, timeout=10)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer <token>" in missing.value.details()
    with pytest.raises(grpc.RpcError) as wrong:
        call(request, timeout=10, metadata=[("authorization", "Bearer nope")])
    assert (wrong.value.code(), wrong.value.details()) == (grpc.StatusCode.PERMISSION_DENIED, "wrong admin token")
    load = service_pb2.RepositoryModelLoadRequest(model_name="digits8")
    stub.RepositoryModelLoad(load, timeout=10, metadata=list(GRPC_AUTH.items()))


def test_without_an_admin_token_load_and_unload_are_off_and_the_index_is_open(app, channel):
    """The session's app has no admin token: every admin call answers as /admin does."""
    with running(app, threads=2) as url:
        for action in ("load", "unload"):
            off = post(url, f"/models/digits8/{action}", headers=AUTH)
            assert off.status_code == 404
            assert "GRAPHSERVE_ADMIN_TOKEN=<token>" in off.json()["error"]
        assert {m["name"] for m in index(url)} == {"digits8", "digits16"}
        assert "model_repository" in requests.get(f"{url}/v2", timeout=10).json()["extensions"]
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as off_grpc:
        stub.RepositoryModelUnload(service_pb2.RepositoryModelUnloadRequest(model_name="digits8"), timeout=10,
                                   metadata=list(GRPC_AUTH.items()))
    assert off_grpc.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "GRAPHSERVE_ADMIN_TOKEN" in off_grpc.value.details()
    assert len(stub.RepositoryIndex(service_pb2.RepositoryIndexRequest(), timeout=10).models) == 2


# -- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["load", "unload"])
@pytest.mark.parametrize("name", ["nope", "all", "digits8,twin"])
def test_unknown_model_is_404_and_not_found(url, stub, action, name):
    answer = post(url, f"/models/{name}/{action}", headers=AUTH)
    assert answer.status_code == 404
    assert answer.json()["error"].startswith(f"unknown model '{name}' (the repository holds: digits8, twin)")
    method = "RepositoryModelLoad" if action == "load" else "RepositoryModelUnload"
    request = getattr(service_pb2, f"{method}Request")(model_name=name)
    with pytest.raises(grpc.RpcError) as info:
        getattr(stub, method)(request, timeout=10, metadata=list(GRPC_AUTH.items()))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "unknown model" in info.value.details()


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/index", {"ready": "yes"}, "Invalid value for 'ready': expected a boolean"),
    ("/index", [True], "must be a JSON object"),
    ("/index", {"redy": True}, "unknown field 'redy'"),
    ("/models/digits8/load", b"{not json", "not valid JSON"),
    ("/models/digits8/load", {"parameters": {"config": "{}"}}, "'config' is not supported"),
    ("/models/digits8/load", {"parameters": {"file:1/model.pb": "AAAA"}}, "is not supported"),
    ("/models/digits8/load", {"parameters": {"unload_dependents": True}}, "unknown parameter 'unload_dependents'"),
    ("/models/digits8/load", {"parameters": []}, "'parameters' must be an object"),
    ("/models/digits8/unload", {"parameters": {"unload_dependents": "no"}}, "Unable to parse 'unload_dependents'"),
    ("/models/digits8/unload", {"parameters": {"force": True}}, "unknown parameter 'force'"),
    ("/models/digits8/unload", {"parametres": {}}, "unknown field 'parametres'"),
])
def test_bad_bodies_are_400_in_the_v2_shape(url, admin_app, path, body, message):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = post(url, path, data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert list(answer.json()) == ["error"] and message in answer.json()["error"]
    assert services_of(admin_app).registry.snapshot["digits8"].available()  # nothing was unloaded


def test_tritonclient_load_with_a_config_is_refused(http_client, grpc_client):
    with pytest.raises(InferenceServerException, match="'config' is not supported") as rest:
        http_client.load_model("digits8", headers=AUTH, config="{}")
    assert rest.value.status() == "400"
    with pytest.raises(InferenceServerException, match="'config' is not supported") as rpc:
        grpc_client.load_model("digits8", headers=GRPC_AUTH, config="{}")
    assert rpc.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_grpc_refuses_another_repository_and_a_wrongly_typed_parameter(stub):
    auth = list(GRPC_AUTH.items())
    for call, request in [
        (stub.RepositoryIndex, service_pb2.RepositoryIndexRequest(repository_name="elsewhere")),
        (stub.RepositoryModelLoad, service_pb2.RepositoryModelLoadRequest(model_name="digits8",
                                                                          repository_name="elsewhere")),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=10, metadata=auth)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'repository_name' specification is not supported" in info.value.details()
    unload = service_pb2.RepositoryModelUnloadRequest(model_name="digits8")
    unload.parameters["unload_dependents"].int64_param = 1
    with pytest.raises(grpc.RpcError) as typed:
        stub.RepositoryModelUnload(unload, timeout=10, metadata=auth)
    assert typed.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "boolean" in typed.value.details()


def test_the_index_takes_post_only(url):
    assert requests.get(f"{url}/v2/repository/index", timeout=10).status_code == 405

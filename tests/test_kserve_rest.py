"""KServe v2 REST, with the official ``tritonclient.http`` client on a real server, and raw bodies."""

from __future__ import annotations

import base64
import gzip
import importlib.metadata
import json
import zlib

import numpy as np
import pytest
import requests

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from app.services import services_of  # noqa: E402
from tests.digits import LABELS, png_bytes  # noqa: E402
from tests.helpers import own_api_scores  # noqa: E402
from tests.server import running  # noqa: E402


@pytest.fixture(scope="module")
def url(app):
    with running(app, threads=4) as base:
        yield base


@pytest.fixture(scope="module")
def triton(url):
    client = tritonhttp.InferenceServerClient(url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def photos(digits) -> list[bytes]:
    return [png_bytes(image) for image in digits.test_images[:3]]


@pytest.fixture(scope="module")
def expected(url, photos) -> dict[str, np.ndarray]:
    """Every class's score per photo and model, from our own API (top_k = every class)."""
    scores = {}
    for model in ("digits8", "digits16"):
        scores[model] = own_api_scores(url, model, photos)
    return scores


def _image_input(photos: list[bytes], binary: bool = True):
    tensor = tritonhttp.InferInput("image", [len(photos)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(photos, dtype=object))
    else:  # JSON: graphserve reads BYTES strings as base64
        tensor.set_data_from_numpy(np.array([base64.b64encode(p) for p in photos], dtype=object), binary_data=False)
    return tensor


def test_health_and_server_metadata(triton, url):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    metadata = triton.get_server_metadata()
    assert metadata["name"] == "graphserve"
    assert metadata["version"] == importlib.metadata.version("graphserve")  # the package's, not "1"
    assert {"binary_tensor_data", "classification"} <= set(metadata["extensions"])
    bodies = {"/v2/health/live": {"live": True}, "/v2/health/ready": {"ready": True},
              "/v2/models/digits8/ready": {"name": "digits8", "ready": True}}  # what KServe's SDK parses
    for path, body in bodies.items():
        answer = requests.get(f"{url}{path}", timeout=5)
        assert (answer.status_code, answer.json()) == (200, body), path
    answer = requests.get(f"{url}/v2/models/nope/ready", timeout=5)
    assert answer.status_code == 400 and "unknown model 'nope'" in answer.json()["error"]
    assert answer.json()["ready"] is False


def test_not_ready_while_draining(app, client):
    draining = services_of(app).draining
    draining.set()
    try:
        answer = client.get("/v2/health/ready")
    finally:
        draining.clear()
    assert answer.status_code == 400 and "not ready" in answer.get_json()["error"]
    assert client.get("/v2/health/ready").status_code == 200


def test_model_metadata_and_ready(triton):
    metadata = triton.get_model_metadata("digits8")
    assert metadata == {
        "name": "digits8",
        "versions": ["1"],
        "platform": "tensorflow_graphdef",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]},  # Triton's: dims [1], batched
                   {"name": "input", "datatype": "FP32", "shape": [-1, 64]}],  # the graph's own tensor
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert triton.get_model_metadata("digits16", model_version="1")["versions"] == ["1"]
    assert triton.is_model_ready("digits8")
    assert triton.is_model_ready("digits16", "1")
    assert not triton.is_model_ready("nope")
    assert not triton.is_model_ready("digits8", "7")
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        triton.get_model_metadata("nope")
    assert info.value.status() == "404"


@pytest.mark.parametrize("model", ["digits8", "digits16"])
def test_infer_binary_default_matches_our_api(triton, photos, expected, model):
    result = triton.infer(model, [_image_input(photos)])  # binary in, binary out (tritonclient's default)
    scores = result.as_numpy("scores")
    assert scores.dtype == np.float32 and scores.shape == (3, 10)
    np.testing.assert_allclose(scores, expected[model], atol=1e-5)
    assert result.get_response()["model_version"] == "1"


def test_infer_json_and_compressed(triton, photos, expected):
    outputs = [tritonhttp.InferRequestedOutput("scores", binary_data=False)]
    for compression in (None, "gzip", "deflate"):
        result = triton.infer("digits8", [_image_input(photos, binary=False)], model_version="1", outputs=outputs,
                              request_compression_algorithm=compression, request_id="r1")
        response = result.get_response()
        assert response["id"] == "r1" and "data" in response["outputs"][0]
        np.testing.assert_allclose(result.as_numpy("scores"), expected["digits8"], atol=1e-5)


def test_classification_extension(triton, photos, expected):
    for binary in (True, False):
        outputs = [tritonhttp.InferRequestedOutput("scores", binary_data=binary, class_count=3)]
        result = triton.infer("digits16", [_image_input(photos)], outputs=outputs)
        labels = result.as_numpy("scores")
        assert labels.shape == (3, 3)
        for row, scores in zip(labels, expected["digits16"]):
            best = np.argsort(-scores, kind="stable")[:3]
            text = [v.decode() if isinstance(v, bytes) else v for v in row]
            assert [int(t.split(":")[1]) for t in text] == list(best)
            assert [t.split(":", 2)[2] for t in text] == [LABELS[i] for i in best]
            np.testing.assert_allclose([float(t.split(":")[0]) for t in text], scores[best], atol=1e-5)


def test_plain_json_with_curl_shape(url, photos, expected):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.urlsafe_b64encode(photos[0]).decode().rstrip("=")]}]}
    answer = requests.post(f"{url}/v2/models/digits8/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/json")
    output = answer.json()["outputs"][0]
    assert output["name"] == "scores" and output["datatype"] == "FP32" and output["shape"] == [1, 10]
    np.testing.assert_allclose(output["data"], expected["digits8"][0], atol=1e-5)


def _post(url: str, path: str, body: bytes, **headers: str) -> requests.Response:
    return requests.post(f"{url}{path}", data=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("path", "tensor", "status", "message"),
    [
        ("/v2/models/nope/infer", {}, 404, "unknown model 'nope'"),
        ("/v2/models/digits8/versions/9/infer", {}, 404, "version 9 is not served"),
        ("/v2/models/all/infer", {}, 404, "unknown model 'all'"),
        ("/v2/models/digits8/infer", {"name": "images"}, 400, "unexpected inference input 'images'"),
        ("/v2/models/digits8/infer", {"name": "input"}, 400, "unexpected datatype BYTES for inference input 'input'"),
        ("/v2/models/digits8/infer", {"datatype": "UINT8"}, 400, "it must be BYTES"),
        ("/v2/models/digits8/infer", {"data": ["%%%"]}, 400, "not valid base64"),
        ("/v2/models/digits8/infer", {"data": [base64.b64encode(b"not an image").decode()]}, 400, "image"),
        ("/v2/models/digits8/infer", {"shape": [2]}, 400, "the shape says 2 elements"),
    ],
)
def test_errors(url, photos, path, tensor, status, message):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(photos[0]).decode()], **tensor}]}
    answer = _post(url, path, json.dumps(body).encode(), **{"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and message in answer.json()["error"]


def test_errors_from_the_client(triton, photos):
    with pytest.raises(InferenceServerException, match="unexpected inference output 'labels'") as info:
        triton.infer("digits8", [_image_input(photos)], outputs=[tritonhttp.InferRequestedOutput("labels")])
    assert info.value.status() == "400"
    bad = tritonhttp.InferInput("image", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"\x89PNG\r\n\x1a\n broken"], dtype=object))
    with pytest.raises(InferenceServerException, match="image") as info:
        triton.infer("digits8", [bad])
    assert info.value.status() == "400"


def test_malformed_bodies(url, photos):
    raw = len(photos[0]).to_bytes(4, "little") + photos[0]
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    ok = _post(url, "/v2/models/digits8/infer", header + raw, **{"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200 and "data" in ok.json()["outputs"][0]
    cases = [
        (header + raw[:-1], {"Inference-Header-Content-Length": str(len(header))}, "but only"),  # the element the data cuts short
        (header + raw, {}, "not valid JSON"),
        (header + raw, {"Inference-Header-Content-Length": "x"}, "Inference-Header-Content-Length"),
        (b"not gzip", {"Content-Encoding": "gzip"}, "not valid gzip"),
        (gzip.compress(header)[:-8], {"Content-Encoding": "gzip"}, "cut short"),
        (b"[]", {}, "JSON object"),
    ]
    for body, headers, message in cases:
        answer = _post(url, "/v2/models/digits8/infer", body, **headers)
        assert answer.status_code == 400 and message in answer.json()["error"], (headers, answer.text)
    answer = _post(url, "/v2/models/digits8/infer", zlib.compress(b" " * 64), **{"Content-Encoding": "br"})
    assert answer.status_code == 415


def test_inflated_body_limit():
    from app import wire

    with pytest.raises(wire.BodyTooLarge, match="inflates to more than 10 bytes"):
        wire.Body(gzip.compress(b"x" * 1000), "gzip", 10).rest()


def test_classification_strings_without_labels():
    from app import kserve
    from app.inference import ImageResult, ModelResult, Score

    model = ModelResult("m", 1, [ImageResult("i", [Score("3", 3, 0.5), Score("1", 1, 0.25)])], {}, [1],
                        np.zeros((1, 4), np.float32))
    assert kserve._tensor(model, kserve.OutputRequest(classification=2), 4, labelled=False).json_data() == [
        "0.500000:3", "0.250000:1"]  # as Triton writes them for a model without labels


def test_requests_are_counted_by_protocol(app, url):
    assert requests.get(f"{url}/v2/models/nope", timeout=5).status_code == 404
    exposition = services_of(app).metrics.exposition().decode()
    assert 'graphserve_requests_total{protocol="kserve_v2_rest",status="404"}' in exposition
    assert 'graphserve_errors_total{code="not_found"}' in exposition

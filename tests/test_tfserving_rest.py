"""TF Serving REST (``app/tfserving/rest.py``) on a real server, driven with ``requests`` and the
JSON bodies exactly as TF Serving's ``api_rest.md`` writes them."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

from app.services import services_of
from tests.digits import LABELS, png_bytes, write_two_versions
from tests.helpers import class_scores, encode
from tests.server import running

CLASSES = 10


@pytest.fixture(scope="module")
def base(app):
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def photos(digits) -> list[bytes]:
    return [png_bytes(image) for image in digits.test_images[:3]]


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def reference(base: str, model: str, photo: bytes, **params: str) -> np.ndarray:
    """Every class's score from our own API (``top_k`` = all classes), in class-id order."""
    response = requests.post(f"{base}/image_classification", params={"model": model, "top_k": CLASSES, **params},
                             data=photo, headers={"Content-Type": "image/png"}, timeout=10)
    assert response.status_code == 200, response.text
    return class_scores(response.json()["models"][model], CLASSES)[0]


def error(response: requests.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return response.status_code, body["error"]


def test_status_and_metadata(base):
    status = requests.get(f"{base}/v1/models/digits8", timeout=10)
    assert status.status_code == 200
    assert status.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}],
        "name": "digits8", "ready": True}  # KServe v1's keys too
    assert requests.get(f"{base}/v1/models/digits8/versions/1", timeout=10).json() == status.json()

    metadata = requests.get(f"{base}/v1/models/digits16/metadata", timeout=10).json()
    assert metadata["model_spec"] == {"name": "digits16", "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"]["images"]["dtype"] == "DT_STRING"
    assert [d["size"] for d in signature["inputs"]["images"]["tensor_shape"]["dim"]] == ["-1"]
    assert signature["outputs"]["scores"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in signature["outputs"]["scores"]["tensor_shape"]["dim"]] == ["-1", str(CLASSES)]
    assert signature["outputs"]["classes"]["dtype"] == "DT_STRING"


@pytest.mark.parametrize("model", ["digits8", "digits16"])
def test_predict_row_and_columnar_match_our_api(base, photos, model):
    expected = np.stack([reference(base, model, photo) for photo in photos])
    # Row format, the signature's input named and unnamed; URL-safe base64 without padding too.
    urlsafe = {"b64": base64.urlsafe_b64encode(photos[2]).decode().rstrip("=")}
    bodies = [
        {"instances": [b64(photos[0]), b64(photos[1]), urlsafe]},
        {"signature_name": "serving_default", "instances": [{"images": b64(p)} for p in photos]},
    ]
    for body in bodies:
        response = requests.post(f"{base}/v1/models/{model}:predict", json=body, timeout=10)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 3 and set(predictions[0]) == {"scores", "classes"}
        np.testing.assert_allclose([p["scores"] for p in predictions], expected, atol=1e-5)
        assert all(p["classes"] == LABELS for p in predictions)
    # Columnar format: several outputs -> one list per output.
    for inputs in ({"images": [b64(p) for p in photos]}, [b64(p) for p in photos]):
        response = requests.post(f"{base}/v1/models/{model}:predict", json={"inputs": inputs}, timeout=10)
        assert response.status_code == 200, response.text
        outputs = response.json()["outputs"]
        np.testing.assert_allclose(outputs["scores"], expected, atol=1e-5)
        assert outputs["classes"] == [LABELS] * 3
    # One output (signature "scores"): rows are the output's values, columnar is the tensor itself.
    row = requests.post(f"{base}/v1/models/{model}:predict",
                        json={"signature_name": "scores", "instances": [b64(p) for p in photos]}, timeout=10).json()
    np.testing.assert_allclose(row["predictions"], expected, atol=1e-5)
    column = requests.post(f"{base}/v1/models/{model}:predict",
                           json={"signature_name": "scores", "inputs": [b64(photos[0])]}, timeout=10).json()
    np.testing.assert_allclose(column["outputs"], expected[:1], atol=1e-5)


def test_classify(base, photos):
    expected = reference(base, "digits8", photos[0])
    body = {"signature_name": "", "context": {}, "examples": [{"images": b64(photos[0])}, {"images": b64(photos[0])}]}
    response = requests.post(f"{base}/v1/models/digits8:classify", json=body, timeout=10)
    assert response.status_code == 200, response.text
    result = response.json()["results"]
    assert len(result) == 2 and len(result[0]) == CLASSES
    assert [label for label, _ in result[0]] == LABELS  # every class, in class-id order (as TF Serving)
    np.testing.assert_allclose([score for _, score in result[0]], expected, atol=1e-5)
    np.testing.assert_allclose([score for _, score in result[1]], expected, atol=1e-5)


def test_versions_and_labels(tmp_path, digit_weights, digits):
    from app import create_app

    root = write_two_versions(tmp_path / "graphs", "d", digit_weights)
    app = create_app({"GRAPHS_DIR": str(root)})
    photo = png_bytes(digits.test_images[0])
    try:
        with running(app) as url:
            status = requests.get(f"{url}/v1/models/d", timeout=10).json()["model_version_status"]
            assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE"), ("2", "AVAILABLE")]
            assert [s["version"] for s in requests.get(f"{url}/v1/models/d/labels/stable", timeout=10)
                    .json()["model_version_status"]] == ["1"]
            for path, version in [("d", 2), ("d/versions/1", 1), ("d/labels/stable", 1), ("d/labels/canary", 2)]:
                expected = reference(url, "d", photo, version=str(version))
                body = {"instances": [b64(photo)]}
                response = requests.post(f"{url}/v1/models/{path}:predict", json=body, timeout=10)
                assert response.status_code == 200, response.text
                np.testing.assert_allclose(response.json()["predictions"][0]["scores"], expected, atol=1e-5)
                meta = requests.get(f"{url}/v1/models/{path}/metadata", timeout=10).json()
                assert meta["model_spec"]["version"] == str(version)
            status_code, message = error(requests.post(f"{url}/v1/models/d/versions/3:predict",
                                                       json={"instances": [b64(photo)]}, timeout=10))
            assert status_code == 404 and message.startswith("Servable not found for request: Specific(d, 3): ")
            status_code, message = error(requests.post(f"{url}/v1/models/d/labels/nope:predict",
                                                       json={"instances": [b64(photo)]}, timeout=10))
            assert (status_code, message) == (400, "Unrecognized servable version label: nope")  # TF Serving's
            assert error(requests.get(f"{url}/v1/models/d/versions/3", timeout=10))[0] == 404
            assert error(requests.get(f"{url}/v1/models/d/labels/nope", timeout=10)) == (
                400, "Unrecognized servable version label: nope")
    finally:
        services_of(app).registry.close()


def test_errors(base, photos):
    def predict(body, model="digits8"):
        return error(requests.post(f"{base}/v1/models/{model}:predict", json=body, timeout=10))

    status, message = predict({"instances": [b64(photos[0])]}, model="nope")
    assert status == 404 and message == "Servable not found for request: Latest(nope)"
    assert predict({"instances": [b64(photos[0])]}, model="all")[0] == 404  # a name, never a selector
    status, message = error(requests.get(f"{base}/v1/models/nope", timeout=10))
    assert status == 404 and "nope" in message
    status, message = predict({"instances": [{"b64": "not base64!"}]})
    assert status == 400 and "instances[0]" in message and "not valid base64" in message
    status, message = predict({"instances": [b64(b"definitely not an image")]})
    assert status == 400 and "instances[0]" in message
    status, message = predict({"instances": [b64(encode(np.zeros((8, 8), np.uint8), "JPEG")[:40])]})
    assert status == 400
    status, message = predict({"instances": [{"image": b64(photos[0])}]})
    assert status == 400 and "'image'" in message and "'images'" in message
    status, message = predict({"inputs": {"pixels": [b64(photos[0])]}})
    assert status == 400 and "'pixels'" in message
    status, message = predict({"instances": ["raw bytes"]})
    assert status == 400 and "b64" in message
    status, message = predict({"instances": [b64(photos[0])], "signature_name": "nope"})
    assert status == 400 and "nope" in message
    assert predict({"instances": [b64(photos[0])], "inputs": []})[0] == 400
    status, message = error(requests.post(f"{base}/v1/models/digits8:predict", data=b"{not json", timeout=10))
    assert status == 400 and message.startswith("JSON Parse error")
    status, message = error(requests.post(f"{base}/v1/models/digits8:classify",
                                          json={"examples": [{"x": b64(photos[0])}]}, timeout=10))
    assert status == 400 and "'images'" in message


def test_metrics_count_the_protocol(app, base, photos):
    from prometheus_client.parser import text_string_to_metric_families

    def count(protocol: str, status: str) -> float:
        text = requests.get(f"{base}/metrics", timeout=10).text
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == "graphserve_requests_total" and s.labels == {"protocol": protocol, "status": status})

    before = count("tfserving_rest", "200"), count("tfserving_rest", "404")
    requests.post(f"{base}/v1/models/digits8:predict", json={"instances": [b64(photos[0])]}, timeout=10)
    requests.post(f"{base}/v1/models/nope:predict", json={"instances": [b64(photos[0])]}, timeout=10)
    assert (count("tfserving_rest", "200"), count("tfserving_rest", "404")) == (before[0] + 1, before[1] + 1)


def test_full_queue_is_429(app, base, photos, monkeypatch):
    from app.batching import QueueFull

    def full(*_args, **_kwargs):
        raise QueueFull("model 'digits16' version 1: the batch queue is full")

    monkeypatch.setattr(services_of(app).registry.get("digits16"), "submit", full)
    response = requests.post(f"{base}/v1/models/digits16:predict", json={"instances": [b64(photos[0])]}, timeout=10)
    assert error(response) == (429, "model 'digits16' version 1: the batch queue is full")
    assert response.headers["Retry-After"] == "1"

"""TF Serving gRPC (``app/tfserving/grpc.py``) on the process's gRPC server, driven with the
``tensorflow_serving.apis`` stubs, unchanged."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from app.grpc_server import start_grpc_server
from app.services import services_of
from tests.digits import LABELS, png_bytes, write_two_versions
from tests.helpers import class_scores
from tests.server import running, serving

CLASSES = 10


@pytest.fixture(scope="module")
def stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def photos(digits) -> list[bytes]:
    return [png_bytes(image) for image in digits.test_images[:3]]


def reference(app, model: str, photo: bytes, **params: str) -> np.ndarray:
    """Every class's score from our own API (``top_k`` = all classes), in class-id order."""
    query = {"model": model, "top_k": CLASSES, **params}
    response = app.test_client().post("/image_classification", query_string=query, data=photo, content_type="image/png")
    assert response.status_code == 200, response.get_data(as_text=True)
    return class_scores(response.get_json()["models"][model], CLASSES)[0]


def predict_request(model: str, images: list[bytes], *, version: int | None = None, label: str = "",
                    input_name: str = "images") -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "serving_default"
    if version is not None:
        request.model_spec.version.value = version
    if label:
        request.model_spec.version_label = label
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(images))
    return request


def fails(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=10)
    return raised.value.code(), raised.value.details()


@pytest.mark.parametrize("model", ["digits8", "digits16"])
def test_predict_matches_our_api(app, stub, photos, model):
    expected = np.stack([reference(app, model, photo) for photo in photos])
    response = stub.Predict(predict_request(model, photos), timeout=10)
    assert response.model_spec.name == model and response.model_spec.version.value == 1
    scores = tf.make_ndarray(response.outputs["scores"])
    assert scores.dtype == np.float32 and scores.shape == (3, CLASSES)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    classes = tf.make_ndarray(response.outputs["classes"])
    assert classes.shape == (3, CLASSES) and [c.decode() for c in classes[0]] == LABELS

    request = predict_request(model, photos[:1])
    request.output_filter.append("scores")
    filtered = stub.Predict(request, timeout=10)
    assert list(filtered.outputs) == ["scores"]


def test_classify_and_metadata(app, stub, photos):
    expected = reference(app, "digits8", photos[0])
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "digits8"
    for photo in photos[:2]:
        example = request.input.example_list.examples.add()
        example.features.feature["images"].bytes_list.value.append(photo)
    response = stub.Classify(request, timeout=10)
    classes = response.result.classifications
    assert len(classes) == 2 and [c.label for c in classes[0].classes] == LABELS
    np.testing.assert_allclose([c.score for c in classes[0].classes], expected, atol=1e-5)

    metadata_request = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata_request.model_spec.name = "digits16"
    metadata_request.metadata_field.append("signature_def")
    metadata = stub.GetModelMetadata(metadata_request, timeout=10)
    assert metadata.model_spec.name == "digits16" and metadata.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert metadata.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.inputs["images"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in signature.outputs["scores"].tensor_shape.dim] == [-1, CLASSES]


def test_model_status(channel):
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "digits8"
    status = models.GetModelStatus(request, timeout=10).model_version_status
    assert [(s.version, s.state, s.status.error_code) for s in status] == \
        [(1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)]
    request.model_spec.name = "nope"
    assert fails(models.GetModelStatus, request)[0] == grpc.StatusCode.NOT_FOUND


def test_errors(stub, photos):
    code, message = fails(stub.Predict, predict_request("nope", photos[:1]))
    assert code == grpc.StatusCode.NOT_FOUND and message == "Servable not found for request: Latest(nope)"
    code, message = fails(stub.Predict, predict_request("digits8", photos[:1], version=7))
    assert code == grpc.StatusCode.NOT_FOUND
    assert message.startswith("Servable not found for request: Specific(digits8, 7): ")
    code, message = fails(stub.Predict, predict_request("digits8", photos[:1], label="stable"))
    assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: stable")
    code, message = fails(stub.Predict, predict_request("digits8", [photos[0], b"not an image"]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "images[1]" in message
    code, message = fails(stub.Predict, predict_request("digits8", photos[:1], input_name="image"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'image'" in message and "'images'" in message
    floats = predict_pb2.PredictRequest()
    floats.model_spec.name = "digits8"
    floats.inputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros((1, 8, 8), np.float32)))
    code, message = fails(stub.Predict, floats)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "DT_STRING" in message
    request = predict_request("digits8", photos[:1])
    request.model_spec.signature_name = "nope"
    assert fails(stub.Predict, request)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_versions_labels_and_full_queue(tmp_path, digit_weights, digits, monkeypatch):
    from app import create_app
    from app.batching import DeadlineExceeded, QueueFull

    root = write_two_versions(tmp_path / "graphs", "d", digit_weights)
    app = create_app({"GRAPHS_DIR": str(root)})
    photo = png_bytes(digits.test_images[0])
    server, port = start_grpc_server(app)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for spec, version in [({}, 2), ({"version": 1}, 1), ({"label": "stable"}, 1), ({"label": "canary"}, 2)]:
                response = stub.Predict(predict_request("d", [photo], **spec), timeout=10)
                assert response.model_spec.version.value == version
                np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"])[0],
                                           reference(app, "d", photo, version=str(version)), atol=1e-5)
            handle = services_of(app).registry.get("d", 2)

            def full(*_args, **_kwargs):
                raise QueueFull("model 'd' version 2: the batch queue is full")

            monkeypatch.setattr(handle, "submit", full)
            code, message = fails(stub.Predict, predict_request("d", [photo]))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "full" in message

            def late(*_args, **_kwargs):
                raise DeadlineExceeded("model 'd' did not answer within the request timeout")

            monkeypatch.setattr(handle, "submit", late)
            assert fails(stub.Predict, predict_request("d", [photo]))[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        server.stop(None)
        services_of(app).registry.close()


def test_served_beside_http_and_stopped_by_the_drain(app, photos):
    """GraphServer runs gRPC on its own port and stops it with the HTTP server."""
    import socket

    with socket.socket() as probe:  # a free port (GraphServer binds it again at once)
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    settings = services_of(app).settings
    from app.lifecycle import build_server

    server = build_server(app, settings, host="127.0.0.1", port=0, grpc_port=free)
    thread = threading.Thread(target=server.run, kwargs={"close_models": False}, daemon=True)
    thread.start()
    try:
        assert requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).status_code == 200
        with grpc.insecure_channel(f"127.0.0.1:{free}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert stub.Predict(predict_request("digits8", photos[:1]), timeout=10).outputs["scores"]
            server.shutdown("test")
            thread.join(timeout=10)
            assert not thread.is_alive()
            assert fails(stub.Predict, predict_request("digits8", photos[:1]))[0] == grpc.StatusCode.UNAVAILABLE
    finally:
        server.shutdown("test")
        server.shutdown("test")
        thread.join(timeout=10)
        services_of(app).draining.clear()


def test_tests_serving_gets_no_grpc(app):
    with serving(app) as server:
        assert server.grpc is None
    with running(app):
        pass


def test_metrics_count_the_protocol(app, stub, photos):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict:
        text = app.test_client().get("/metrics").get_data(as_text=True)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    ok = ("graphserve_requests_total", (("protocol", "tfserving_grpc"), ("status", "OK")))
    missing = ("graphserve_requests_total", (("protocol", "tfserving_grpc"), ("status", "NOT_FOUND")))
    model = ("graphserve_model_requests_total", (("model", "digits8"), ("status", "200"), ("version", "1")))
    before = scrape()
    stub.Predict(predict_request("digits8", photos[:1]), timeout=10)
    fails(stub.Predict, predict_request("nope", photos[:1]))
    after = scrape()
    for key in (ok, missing, model):
        assert after.get(key, 0) == before.get(key, 0) + 1, key
    assert after[("graphserve_errors_total", (("code", "not_found"),))] >= 1


def test_message_size_limit(app, photos):
    settings = services_of(app).settings.replace({"grpc_max_message_bytes": 4096})
    server, port = start_grpc_server(app, settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            assert stub.Predict(predict_request("digits8", photos[:1]), timeout=10).outputs["scores"]
            code, _ = fails(stub.Predict, predict_request("digits8", [photos[0] + b"\0" * 8192]))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop(None)

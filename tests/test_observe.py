"""app.observe: every door's request is counted and logged the same way, in one line."""

from __future__ import annotations

import base64
import logging

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.digits import png_bytes


def test_one_line_per_request_with_models_and_images_on_every_door(app, client, channel, digits, caplog):
    photo = png_bytes(digits.test_images[0])
    b64 = base64.b64encode(photo).decode()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits8"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([photo]))
    v2 = service_pb2.ModelInferRequest(model_name="digits8")
    v2.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(photo)
    calls = {
        "path=/image_classification status=200": lambda: client.post(
            "/image_classification?model=digits8", data=photo, content_type="image/png"),
        "path=/v1/models/digits8:predict status=200": lambda: client.post(
            "/v1/models/digits8:predict", json={"instances": [{"b64": b64}]}),
        "path=/v2/models/digits8/infer status=200": lambda: client.post("/v2/models/digits8/infer", json={
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]}),
        "path=/tensorflow.serving.PredictionService/Predict status=OK": lambda: (
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)),
        "path=/inference.GRPCInferenceService/ModelInfer status=OK": lambda: (
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(v2, timeout=10)),
    }
    for expected, call in calls.items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="graphserve.request"):
            call()
        lines = [r.getMessage() for r in caplog.records if r.name == "graphserve.request"]
        assert len(lines) == 1, (expected, lines)
        assert expected in lines[0] and "models=digits8 images=1 ms=" in lines[0], lines[0]


def test_an_unknown_path_is_counted_and_logged_with_its_error_code(client, caplog):
    with caplog.at_level(logging.INFO, logger="graphserve.request"):
        assert client.get("/no/such/path").status_code == 404
    [line] = [r.getMessage() for r in caplog.records if r.name == "graphserve.request"]
    assert "path=/no/such/path status=404 models=- images=0" in line and "error=not_found" in line

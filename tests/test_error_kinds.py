"""Every domain exception through every front door: the status each protocol defines for its kind.

The core raises (``Selected.classify_uploads``, where every door hands over its images); each
door must answer in its own protocol. The expectations are written here from the protocols
(TF Serving's HTTP server maps gRPC codes to HTTP statuses; KServe v2 and our API use HTTP
statuses for REST), not copied from the code's tables.
"""

from __future__ import annotations

import base64
import inspect

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from app import batching, images, registry, servable
from app.inference import Selected
from app.kinds import DOMAIN, Kind, describe
from tests.digits import png_bytes

# kind -> (our REST, TF Serving REST, TF Serving gRPC, v2 REST, v2 gRPC)
EXPECTED: dict[Kind, tuple[int, int, str, int, str]] = {
    Kind.INVALID: (400, 400, "INVALID_ARGUMENT", 400, "INVALID_ARGUMENT"),
    Kind.TOO_LARGE: (413, 400, "INVALID_ARGUMENT", 413, "INVALID_ARGUMENT"),
    Kind.UNSUPPORTED: (415, 400, "INVALID_ARGUMENT", 415, "INVALID_ARGUMENT"),
    Kind.NOT_FOUND: (404, 404, "NOT_FOUND", 404, "NOT_FOUND"),
    Kind.OVERLOADED: (503, 429, "RESOURCE_EXHAUSTED", 503, "RESOURCE_EXHAUSTED"),
    Kind.UNAVAILABLE: (503, 503, "UNAVAILABLE", 503, "UNAVAILABLE"),
    Kind.DEADLINE: (504, 504, "DEADLINE_EXCEEDED", 504, "DEADLINE_EXCEEDED"),
    Kind.INTERNAL: (500, 500, "INTERNAL", 500, "INTERNAL"),
}
DOMAIN_MODULES = (batching, images, registry, servable)
# not answered to a request: load errors become a version's state; ColdVersion makes acquire load it
NOT_A_REQUEST_ERROR = {servable.ModelLoadError, servable.ServableError, batching.BatchingError, registry.ColdVersion}


@pytest.fixture(scope="module")
def stubs(channel):
    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            service_pb2_grpc.GRPCInferenceServiceStub(channel))


def test_every_exception_a_request_can_meet_has_a_kind() -> None:
    """A new exception in the core is one line in app.kinds.DOMAIN; this finds the ones missing."""
    for module in DOMAIN_MODULES:
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Exception) and cls.__module__ == module.__name__ and cls not in NOT_A_REQUEST_ERROR:
                assert describe(cls("x")) is not None, f"{module.__name__}.{name} has no kind in app.kinds.DOMAIN"
    assert describe(RuntimeError("a bug")) is None


@pytest.mark.parametrize("exc_type", list(DOMAIN), ids=lambda cls: cls.__name__)
def test_each_door_answers_the_status_its_protocol_gives_the_kind(app, client, stubs, digits, monkeypatch, exc_type):
    message = f"raised in the core: {exc_type.__name__}"

    def fail(*_args, **_kwargs):
        raise exc_type(message)

    monkeypatch.setattr(Selected, "classify_uploads", fail)
    ours, tfs_rest, tfs_grpc, v2_rest, v2_grpc = EXPECTED[DOMAIN[exc_type].kind]
    photo = png_bytes(digits.test_images[0])
    b64 = base64.b64encode(photo).decode()

    answer = client.post("/image_classification?model=digits8", data=photo, content_type="image/png")
    assert answer.status_code == ours and answer.get_json()["error"]["code"] == DOMAIN[exc_type].code
    assert answer.get_json()["error"]["message"] == message
    assert ("Retry-After" in answer.headers) == DOMAIN[exc_type].retry

    answer = client.post("/v1/models/digits8:predict", json={"instances": [{"b64": b64}]})
    assert answer.status_code == tfs_rest and answer.get_json() == {"error": message}

    answer = client.post("/v2/models/digits8/infer", json={
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]})
    assert answer.status_code == v2_rest and answer.get_json() == {"error": message}

    predict, infer = stubs
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits8"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([photo]))
    with pytest.raises(grpc.RpcError) as failed:
        predict.Predict(request, timeout=10)
    assert (failed.value.code().name, failed.value.details()) == (tfs_grpc, message)

    v2 = service_pb2.ModelInferRequest(model_name="digits8")
    v2.inputs.add(name="image", datatype="BYTES", shape=[1]).contents.bytes_contents.append(photo)
    with pytest.raises(grpc.RpcError) as failed:
        infer.ModelInfer(v2, timeout=10)
    assert (failed.value.code().name, failed.value.details()) == (v2_grpc, message)

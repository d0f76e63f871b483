"""KServe v2 gRPC, with the official ``tritonclient.grpc`` client on a real gRPC server."""

from __future__ import annotations

import importlib.metadata

import grpc
import numpy as np
import pytest

tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from app.services import services_of  # noqa: E402
from tests.digits import LABELS, png_bytes  # noqa: E402
from tests.helpers import own_api_scores  # noqa: E402
from tests.server import running  # noqa: E402


@pytest.fixture(scope="module")
def port(app):
    from app.grpc_server import SERVICES, start_grpc_server

    assert "app.kserve.grpc:install" in SERVICES  # the process's gRPC server carries this servicer
    server, bound = start_grpc_server(app)
    yield bound
    server.stop(None)


@pytest.fixture(scope="module")
def triton(port):
    client = tritongrpc.InferenceServerClient(f"127.0.0.1:{port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def photos(digits) -> list[bytes]:
    return [png_bytes(image) for image in digits.test_images[3:6]]


@pytest.fixture(scope="module")
def expected(app, photos) -> dict[str, np.ndarray]:
    """Every class's score per photo and model, from our own API (top_k = every class)."""
    scores = {}
    with running(app, threads=2) as url:
        for model in ("digits8", "digits16"):
            scores[model] = own_api_scores(url, model, photos)
    return scores


def _image_input(photos: list[bytes]):
    tensor = tritongrpc.InferInput("image", [len(photos)], "BYTES")
    tensor.set_data_from_numpy(np.array(photos, dtype=object))
    return tensor


def test_health_and_metadata(triton):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.get_server_metadata().name == "graphserve"
    assert triton.get_server_metadata().version == importlib.metadata.version("graphserve")
    assert triton.is_model_ready("digits8")
    assert triton.is_model_ready("digits16", "1")
    assert not triton.is_model_ready("nope")
    assert not triton.is_model_ready("digits8", "7")
    metadata = triton.get_model_metadata("digits16", as_json=True)
    assert metadata["platform"] == "tensorflow_graphdef" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": ["-1", "1"]},  # Triton's: dims [1], batched
                                  {"name": "input", "datatype": "FP32", "shape": ["-1", "16", "16", "1"]}]
    assert metadata["outputs"] == [{"name": "scores", "datatype": "FP32", "shape": ["-1", "10"]}]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        triton.get_model_metadata("nope")
    assert info.value.status() == "StatusCode.NOT_FOUND"


@pytest.mark.parametrize("model", ["digits8", "digits16"])
def test_infer_raw_contents_matches_our_api(triton, photos, expected, model):
    result = triton.infer(model, [_image_input(photos)], model_version="1", request_id="g1")
    scores = result.as_numpy("scores")
    assert scores.dtype == np.float32 and scores.shape == (3, 10)
    np.testing.assert_allclose(scores, expected[model], atol=1e-5)
    assert result.get_response().id == "g1" and result.get_response().model_version == "1"


def test_infer_bytes_contents_and_classification(port, photos, expected):
    request = service_pb2.ModelInferRequest(model_name="digits8")
    tensor = request.inputs.add(name="image", datatype="BYTES", shape=[len(photos)])
    tensor.contents.bytes_contents.extend(photos)
    request.outputs.add(name="scores")
    classified = request.outputs.add(name="scores")
    classified.parameters["classification"].int64_param = 2
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert [list(o.shape) for o in response.outputs] == [[3, 10], [3, 2]]
    scores = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(3, 10)
    np.testing.assert_allclose(scores, expected["digits8"], atol=1e-5)
    raw, strings = response.raw_output_contents[1], []
    while raw:
        length = int.from_bytes(raw[:4], "little")
        strings.append(raw[4:4 + length].decode())
        raw = raw[4 + length:]
    best = np.argmax(expected["digits8"], axis=1)
    assert [s.split(":", 2)[1:] for s in strings[::2]] == [[str(i), LABELS[i]] for i in best]


def test_classification_through_the_client(triton, photos, expected):
    outputs = [tritongrpc.InferRequestedOutput("scores", class_count=1)]
    labels = triton.infer("digits16", [_image_input(photos)], outputs=outputs).as_numpy("scores")
    best = np.argmax(expected["digits16"], axis=1)
    assert [v.decode().split(":", 1)[1] for v in labels[:, 0]] == [f"{i}:{LABELS[i]}" for i in best]


@pytest.mark.parametrize(
    ("model", "version", "name", "datatype", "code", "message"),
    [
        ("nope", "", "image", "BYTES", "NOT_FOUND", "unknown model 'nope'"),
        ("digits8", "9", "image", "BYTES", "NOT_FOUND", "version 9 is not served"),
        ("digits8", "", "images", "BYTES", "INVALID_ARGUMENT", "unexpected inference input 'images'"),
        ("digits8", "", "input", "BYTES", "INVALID_ARGUMENT", "unexpected datatype BYTES for inference input 'input'"),
        ("digits8", "", "image", "UINT8", "INVALID_ARGUMENT", "it must be BYTES"),
    ],
)
def test_errors(triton, photos, model, version, name, datatype, code, message):
    tensor = tritongrpc.InferInput(name, [1], datatype)
    tensor.set_data_from_numpy(np.array([photos[0]], dtype=object) if datatype == "BYTES"
                               else np.zeros(1, dtype=np.uint8))
    with pytest.raises(InferenceServerException, match=message) as info:
        triton.infer(model, [tensor], model_version=version)
    assert info.value.status() == f"StatusCode.{code}"


def test_bad_image_is_invalid_argument(triton):
    tensor = tritongrpc.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"GIF89a but not really"], dtype=object))
    with pytest.raises(InferenceServerException) as info:
        triton.infer("digits8", [tensor])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_error_table_codes():
    from app import batching, kserve

    assert kserve.error_answer(batching.QueueFull("full")) == (503, "RESOURCE_EXHAUSTED")
    assert kserve.error_answer(batching.DeadlineExceeded("late")) == (504, "DEADLINE_EXCEEDED")
    assert kserve.error_answer(batching.BatcherClosed("closed")) == (503, "UNAVAILABLE")
    assert kserve.error_answer(RuntimeError("bug")) is None
    assert all(name in grpc.StatusCode.__members__ for _, name in kserve.ERRORS.values())


def test_calls_are_counted_by_protocol(app, triton, photos):
    triton.infer("digits8", [_image_input(photos[:1])])
    with pytest.raises(InferenceServerException):
        triton.get_model_metadata("nope")
    exposition = services_of(app).metrics.exposition().decode()
    assert 'graphserve_requests_total{protocol="kserve_v2_grpc",status="OK"}' in exposition
    assert 'graphserve_requests_total{protocol="kserve_v2_grpc",status="NOT_FOUND"}' in exposition
    assert 'graphserve_errors_total{code="not_found"}' in exposition

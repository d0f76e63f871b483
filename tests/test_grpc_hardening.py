"""The gRPC doors are total and bounded: client bytes and fields only ever answer a client
status (never INTERNAL), every call counts in ``graphserve_requests_total``, the server stays
healthy, and hostile repeated fields are refused by count before per-element objects exist."""

from __future__ import annotations

import logging

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2  # noqa: E402

from app.services import services_of  # noqa: E402
from tests.digits import png_bytes  # noqa: E402

TFS = "/tensorflow.serving.PredictionService/"
KSERVE = "/inference.GRPCInferenceService/"
PROTOCOLS = {TFS: "tfserving_grpc", "/tensorflow.serving.ModelService/": "tfserving_grpc", KSERVE: "kserve_v2_grpc"}


@pytest.fixture(scope="module")
def photo(digits) -> bytes:
    return png_bytes(digits.test_images[0])


def counted(app, protocol: str, status: str) -> float:
    metrics = services_of(app).metrics.exposition().decode()
    prefix = f'graphserve_requests_total{{protocol="{protocol}",status="{status}"}} '
    return next((float(line[len(prefix):]) for line in metrics.splitlines() if line.startswith(prefix)), 0.0)


def send(channel, path: str, message) -> tuple[grpc.StatusCode, str]:
    """Call ``path`` with ``message`` (bytes or a proto); the code and details."""
    raw = message if isinstance(message, bytes) else message.SerializeToString()
    try:
        channel.unary_unary(path)(raw, timeout=30)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def refused(app, channel, photo, path: str, message, code: grpc.StatusCode) -> str:
    """``message`` answers ``code``, counted under its protocol; a good call works after."""
    protocol = next(p for prefix, p in PROTOCOLS.items() if path.startswith(prefix))
    before = counted(app, protocol, code.name)
    got, details = send(channel, path, message)
    assert got == code, details
    assert len(details) <= 1100
    assert counted(app, protocol, code.name) == before + 1
    assert_healthy(channel, photo)
    return details


def assert_healthy(channel, photo: bytes) -> None:
    assert send(channel, TFS + "Predict", predict(photo))[0] == grpc.StatusCode.OK
    assert send(channel, KSERVE + "ModelInfer", infer(photo))[0] == grpc.StatusCode.OK


def predict(*images: bytes) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits8"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(list(images)))
    return request


def infer(*images: bytes) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="digits8")
    request.inputs.add(name="image", datatype="BYTES", shape=[len(images)]).contents.bytes_contents.extend(images)
    return request


# -- 2: undecodable bytes -------------------------------------------------------------------

METHODS = [TFS + "Predict", TFS + "Classify", TFS + "GetModelMetadata", "/tensorflow.serving.ModelService/GetModelStatus",
           *(KSERVE + m for m in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
                                  "ModelInfer"))]


@pytest.mark.parametrize("path", METHODS)
def test_undecodable_bytes_are_invalid_argument_counted_and_one_line(app, channel, photo, path, caplog):
    caplog.set_level(logging.INFO)
    details = refused(app, channel, photo, path, b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT)
    assert "not a valid" in details
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    lines = [r.getMessage() for r in caplog.records if r.name == "graphserve.request" and path in r.getMessage()
             and "status=OK" not in r.getMessage()]  # the health check after it answers OK
    assert len(lines) == 1 and "status=INVALID_ARGUMENT" in lines[0]
    method = path.rsplit("/", 1)[-1]
    assert f'graphserve_grpc_requests_total{{code="INVALID_ARGUMENT",method="{method}"}}' in \
        services_of(app).metrics.exposition().decode()


def test_unknown_method_stays_unimplemented(channel):
    assert send(channel, TFS + "Nope", b"")[0] == grpc.StatusCode.UNIMPLEMENTED
    assert send(channel, "/no.Such/Service", b"")[0] == grpc.StatusCode.UNIMPLEMENTED


def test_unimplemented_method_is_counted_without_traceback(app, channel, photo, caplog):
    caplog.set_level(logging.INFO)
    refused(app, channel, photo, KSERVE + "ModelStatistics", b"", grpc.StatusCode.UNIMPLEMENTED)
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_deeply_nested_message_is_a_client_error(app, channel, photo):
    tensor = b""
    for _ in range(200):  # TensorProto.variant_val (13) -> VariantTensorDataProto.tensors (3) -> TensorProto
        tensor = b"\x1a" + _varint(len(tensor)) + tensor
        tensor = b"\x6a" + _varint(len(tensor)) + tensor
    entry = b"\x0a\x06images\x12" + _varint(len(tensor)) + tensor
    raw = b"\x0a\x09\x0a\x07digits8" + b"\x12" + _varint(len(entry)) + entry
    refused(app, channel, photo, TFS + "Predict", raw, grpc.StatusCode.INVALID_ARGUMENT)


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


# -- 1, 5: fields the client sets -------------------------------------------------------------

def test_unknown_dtype_is_invalid_argument(app, channel, photo):
    request = predict(photo)
    request.inputs["images"].dtype = 9999
    details = refused(app, channel, photo, TFS + "Predict", request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "DT_STRING" in details and "unknown DataType 9999" in details


@pytest.mark.parametrize("version", [-1, -(2**63), 2**63 - 1, 0])
def test_any_int64_version_is_not_found(app, channel, photo, version):
    request = predict(photo)
    request.model_spec.version.value = version
    refused(app, channel, photo, TFS + "Predict", request, grpc.StatusCode.NOT_FOUND)
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "digits8"
    status.model_spec.version.value = version
    refused(app, channel, photo, "/tensorflow.serving.ModelService/GetModelStatus", status, grpc.StatusCode.NOT_FOUND)


def test_huge_client_text_is_clipped(app, channel, photo):
    huge = "x" * 1_000_000
    request = predict(photo)
    request.model_spec.name = huge
    assert "+999936 chars" in refused(app, channel, photo, TFS + "Predict", request, grpc.StatusCode.NOT_FOUND)
    request = predict(photo)
    request.model_spec.signature_name = huge
    refused(app, channel, photo, TFS + "Predict", request, grpc.StatusCode.INVALID_ARGUMENT)
    request = predict(photo)
    request.output_filter.extend([huge] * 2)
    refused(app, channel, photo, TFS + "Predict", request, grpc.StatusCode.INVALID_ARGUMENT)
    request = predict(photo)
    request.output_filter.extend(["scores"] * 100_000)
    refused(app, channel, photo, TFS + "Predict", request, grpc.StatusCode.INVALID_ARGUMENT)
    request = predict(photo)
    request.inputs[huge].CopyFrom(request.inputs["images"])
    refused(app, channel, photo, TFS + "Predict", request, grpc.StatusCode.INVALID_ARGUMENT)
    request = predict(photo)
    request.model_spec.version_label = huge  # TF Serving: "Unrecognized servable version label"
    refused(app, channel, photo, TFS + "Predict", request, grpc.StatusCode.INVALID_ARGUMENT)
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "digits8"
    metadata.metadata_field.extend([huge] * 20)
    refused(app, channel, photo, TFS + "GetModelMetadata", metadata, grpc.StatusCode.INVALID_ARGUMENT)
    kserve_request = infer(photo)
    kserve_request.model_name = huge
    refused(app, channel, photo, KSERVE + "ModelInfer", kserve_request, grpc.StatusCode.NOT_FOUND)
    kserve_request = infer(photo)
    kserve_request.inputs[0].name = huge
    refused(app, channel, photo, KSERVE + "ModelInfer", kserve_request, grpc.StatusCode.INVALID_ARGUMENT)


def test_tensor_shapes_with_many_dimensions(app, channel, photo):
    request = predict(photo)
    request.inputs["images"].tensor_shape.dim.extend([request.inputs["images"].tensor_shape.dim[0]] * 100_000)
    refused(app, channel, photo, TFS + "Predict", request, grpc.StatusCode.INVALID_ARGUMENT)
    kserve_request = infer(photo)
    kserve_request.inputs[0].shape.extend([1] * 100_000)
    details = refused(app, channel, photo, KSERVE + "ModelInfer", kserve_request, grpc.StatusCode.INVALID_ARGUMENT)
    assert "100001 dimensions" in details
    kserve_request = infer(photo)
    kserve_request.inputs[0].shape[0] = -5
    refused(app, channel, photo, KSERVE + "ModelInfer", kserve_request, grpc.StatusCode.INVALID_ARGUMENT)


def test_many_outputs_are_refused(app, channel, photo):
    request = infer(photo)
    for _ in range(100_000):
        request.outputs.add(name="scores")
    refused(app, channel, photo, KSERVE + "ModelInfer", request, grpc.StatusCode.INVALID_ARGUMENT)


# -- 3: bounded before allocated --------------------------------------------------------------

MANY = 2_000_000  # empty elements: 2-4 bytes each on the wire, ~50+ bytes each as Python objects


@pytest.mark.parametrize("shape", [MANY, 1])
def test_many_empty_strings_are_refused_by_count(app, channel, photo, shape):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits8"
    tensor = request.inputs["images"]
    tensor.dtype = tf.string.as_datatype_enum
    tensor.tensor_shape.dim.add(size=shape)
    tensor.string_val.extend([b""] * MANY)
    details = refused(app, channel, photo, TFS + "Predict", request, grpc.StatusCode.INVALID_ARGUMENT)
    assert ("the limit is" if shape == MANY else "shape [1]") in details


def test_many_empty_examples_are_refused_by_count(app, channel, photo):
    from tensorflow_serving.apis import classification_pb2

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "digits8"
    example = request.input.example_list.examples.add()
    example.features.feature["images"].bytes_list.value.append(b"")
    request.input.example_list.examples.extend([example] * 200_000)
    assert "the limit is" in refused(app, channel, photo, TFS + "Classify", request, grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize("shape", [MANY, 1])
def test_many_empty_bytes_contents_are_refused_by_count(app, channel, photo, shape):
    request = service_pb2.ModelInferRequest(model_name="digits8")
    request.inputs.add(name="image", datatype="BYTES", shape=[shape]).contents.bytes_contents.extend([b""] * MANY)
    refused(app, channel, photo, KSERVE + "ModelInfer", request, grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize("shape", [MANY, 1])
def test_many_empty_raw_elements_are_refused(app, channel, photo, shape):
    request = service_pb2.ModelInferRequest(model_name="digits8")
    request.inputs.add(name="image", datatype="BYTES", shape=[shape])
    request.raw_input_contents.append(b"\0\0\0\0" * MANY)
    refused(app, channel, photo, KSERVE + "ModelInfer", request, grpc.StatusCode.INVALID_ARGUMENT)


# -- 4: version text ------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["\u0661", "\uff11", "1" * 19, "-1", "1 ", "+1", "x" * 100_000])
def test_kserve_version_text_is_ascii_digits_only(app, channel, photo, version):
    request = infer(photo)
    request.model_version = version  # "١" and "１" are str.isdigit() and int() reads them as 1
    refused(app, channel, photo, KSERVE + "ModelInfer", request, grpc.StatusCode.NOT_FOUND)
    ready = service_pb2.ModelReadyRequest(name="digits8", version=version)
    assert channel.unary_unary(KSERVE + "ModelReady", response_deserializer=service_pb2.ModelReadyResponse.FromString)(
        ready.SerializeToString(), timeout=10).ready is False
    metadata = service_pb2.ModelMetadataRequest(name="digits8", version=version)
    refused(app, channel, photo, KSERVE + "ModelMetadata", metadata, grpc.StatusCode.NOT_FOUND)

"""TF Serving's gRPC API over the inference core: ``tensorflow.serving.PredictionService``
(``Predict``, ``Classify``, ``GetModelMetadata``) and ``ModelService.GetModelStatus``.

The servicers subclass the ones the ``tensorflow-serving-api`` wheel ships; ``install`` adds
them to the process's gRPC server (``app/grpc_server.py``). A client, unchanged::

    channel = grpc.insecure_channel("127.0.0.1:8500")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits8"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([jpeg_bytes]))   # DT_STRING [n]
    response = stub.Predict(request, timeout=10)
    scores = tf.make_ndarray(response.outputs["scores"])                    # float32 [n, classes]

Errors abort the RPC with the code of ``app.tfserving``'s one table (NOT_FOUND,
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNAVAILABLE, INTERNAL). The RPC's
own deadline (``context.time_remaining()``), capped at ``request_timeout_s``, is the core's.

Total and bounded: ``app.grpc_server.add_servicer`` parses the request bytes inside the
counted call (undecodable bytes: INVALID_ARGUMENT); every client-set field is read so that
it can only raise a domain error (an unknown ``DataType`` value is named by number, repeated
fields are counted with ``len()`` against the shape and ``max_images_per_request`` before any
per-element Python object is built, client text in messages is clipped).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from .. import observe, tfserving
from ..grpc_server import add_servicer
from ..images import check_image_count
from ..inference import InferenceCore, Selected
from ..services import Services
from ..text import clip

PROTOCOL = "tfserving_grpc"  # graphserve_requests_total{protocol=...}
SHOWN_NAMES = 3  # client names repeated in one error message


def install(server: grpc.Server, services: Services) -> None:
    """Add TF Serving's PredictionService and ModelService to ``server`` (``app/grpc_server.py``)."""
    for add, servicer in ((prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server,
                           PredictionServicer(services)),
                          (model_service_pb2_grpc.add_ModelServiceServicer_to_server, ModelServicer(services))):
        add_servicer(server, add, servicer, services=services, protocol=PROTOCOL, answer=_answer)


def _answer(exc: BaseException) -> tuple[grpc.StatusCode, int, str] | None:
    error = tfserving.translate(exc)
    return None if error is None else (error.code, tfserving.HTTP_STATUS.get(error.code, 500), error.message)


def _spec(request: Any) -> tuple[str, int | None, str | None]:
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    return spec.name, version, spec.version_label or None


def _names(names: list[str], total: int) -> str:
    """Up to ``SHOWN_NAMES`` client names, clipped, and how many more there were."""
    shown = ", ".join(repr(clip(n)) for n in names[:SHOWN_NAMES])
    return shown + (f" (+{total - SHOWN_NAMES} more)" if total > SHOWN_NAMES else "")


def _dtype_name(dtype: int) -> str:
    """A DataType's name; a value the enum does not have (the client's to set) by its number."""
    return types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else f"unknown DataType {dtype}"


class _Servicer:
    def __init__(self, services: Services) -> None:
        self.services = services

    @contextmanager
    def select(self, request: Any) -> Iterator[Selected]:
        with tfserving.select(self.core, *_spec(request)) as selected:
            observe.current_rpc().models = selected.models
            yield selected

    @property
    def core(self) -> InferenceCore:
        return self.services.core

    def deadline(self, context: grpc.ServicerContext) -> float:
        return observe.grpc_deadline(context, self.services.settings.request_timeout_s)


    @property
    def max_images(self) -> int:
        return self.services.settings.max_images_per_request


class PredictionServicer(_Servicer, prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request: predict_pb2.PredictRequest,
                context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        signature = tfserving.signature_name(request.model_spec.signature_name)
        wanted = tfserving.wanted_outputs(signature, request.output_filter)
        raw = _images(request.inputs, self.max_images)
        observe.current_rpc().images = len(raw)
        with self.select(request) as selected:
            handle, scores = tfserving.classify(selected, raw, self.deadline(context))
        response = predict_pb2.PredictResponse()
        _answer_spec(response.model_spec, handle, signature)
        if tfserving.SCORES in wanted:
            response.outputs[tfserving.SCORES].CopyFrom(_float_tensor(scores))
        if tfserving.CLASSES in wanted:
            response.outputs[tfserving.CLASSES].CopyFrom(_labels_tensor(tfserving.labels(handle), len(scores)))
        return response

    def Classify(self, request: classification_pb2.ClassificationRequest,
                 context: grpc.ServicerContext) -> classification_pb2.ClassificationResponse:
        signature = tfserving.signature_name(request.model_spec.signature_name)
        raw = _examples(request.input, self.max_images)
        observe.current_rpc().images = len(raw)
        with self.select(request) as selected:
            handle, scores = tfserving.classify(selected, raw, self.deadline(context))
        names = tfserving.labels(handle)
        response = classification_pb2.ClassificationResponse()
        _answer_spec(response.model_spec, handle, signature)
        for row in scores:
            classifications = response.result.classifications.add()
            for label, score in zip(names, row):
                classifications.classes.add(label=label, score=float(score))
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context: grpc.ServicerContext) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = request.metadata_field
        if len(fields) != 1 or fields[0] != "signature_def":
            raise tfserving.invalid(f"metadata_field must be ['signature_def'] (the only metadata served), "
                                    f"got [{_names(list(fields[:SHOWN_NAMES]), len(fields))}]")
        with self.select(request) as selected:
            handle = selected.handles[0]
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _answer_spec(response.model_spec, handle, "")
            response.metadata["signature_def"].Pack(tfserving.signature_defs(handle))
        return response


class ModelServicer(_Servicer, model_service_pb2_grpc.ModelServiceServicer):
    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        return tfserving.model_status(self.services.registry, *_spec(request))


# -- tensors and examples ------------------------------------------------------------------

def _images(inputs: Any, max_images: int) -> list[tuple[str, bytes]]:
    """The encoded images of input ``images``; every count checked (``len()``) before a list is built."""
    if len(inputs) != 1 or tfserving.INPUT not in inputs:
        names = [name for name, _ in zip(inputs, range(SHOWN_NAMES))]
        raise tfserving.invalid(f"inputs named {_names(names, len(inputs)) or 'none'}; the signature "
                                f"has one input, '{tfserving.INPUT}' (DT_STRING [-1], encoded images)")
    tensor = inputs[tfserving.INPUT]
    if tensor.dtype != types_pb2.DT_STRING:
        raise tfserving.invalid(f"input '{tfserving.INPUT}' must be DT_STRING (encoded images), got "
                                f"{_dtype_name(tensor.dtype)}")
    dims, values = tensor.tensor_shape.dim, len(tensor.string_val)
    if len(dims) != 1 or dims[0].size != values:
        shown = ", ".join(str(d.size) for d in dims[:4]) + (", ..." if len(dims) > 4 else "")
        raise tfserving.invalid(f"input '{tfserving.INPUT}' must have shape [n] (one encoded image per element), "
                                f"got shape [{shown}] with {values} value(s)")
    check_image_count(values, max_images)
    return [(f"{tfserving.INPUT}[{i}]", value) for i, value in enumerate(tensor.string_val)]


def _examples(request_input: Any, max_images: int) -> list[tuple[str, bytes]]:
    kind = request_input.WhichOneof("kind")
    if kind is None:
        raise tfserving.invalid("input has no example_list")
    listed = getattr(request_input, kind)
    check_image_count(len(listed.examples), max_images)
    context = listed.context.features.feature if kind == "example_list_with_context" else {}
    raw = []
    for i, example in enumerate(listed.examples):
        features = example.features.feature
        key = next((k for k in tfserving.EXAMPLE_FEATURES if k in features), None)
        source = features if key is not None else context
        key = key or next((k for k in tfserving.EXAMPLE_FEATURES if k in context), None)
        if key is None:
            raise tfserving.invalid(f"examples[{i}] has no bytes feature "
                                    f"{' or '.join(repr(k) for k in tfserving.EXAMPLE_FEATURES)} holding the image")
        values = source[key].bytes_list.value
        if len(values) != 1:
            raise tfserving.invalid(f"examples[{i}].{key} must hold one encoded image in bytes_list, got {len(values)}")
        raw.append((f"examples[{i}]", values[0]))
    return raw


def _answer_spec(spec: Any, handle: Any, signature: str) -> None:
    spec.name = handle.name
    spec.version.value = handle.version
    spec.signature_name = signature


def _shape(*dims: int) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


def _float_tensor(values: np.ndarray) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=_shape(*values.shape),
                                  tensor_content=np.ascontiguousarray(values, dtype="<f4").tobytes())


def _labels_tensor(names: list[str], rows: int) -> tensor_pb2.TensorProto:
    encoded = [name.encode() for name in names]
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=_shape(rows, len(names)),
                                  string_val=encoded * rows)

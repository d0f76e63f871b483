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
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
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
from ..inference import InferenceCore, Selected
from ..observe import Observation
from ..services import Services
from ..text import clip


def install(server: grpc.Server, services: Services) -> None:
    """Add TF Serving's PredictionService and ModelService to ``server`` (``app/grpc_server.py``)."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(services), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(services), server)


PROTOCOL = "tfserving_grpc"  # graphserve_requests_total{protocol=...}


def _rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    """Count and log the call (``app.observe.rpc``); domain errors -> the table's status code;
    anything else is a bug: logged, INTERNAL. The method finds its observation in ``self.local``."""

    @functools.wraps(method)
    def call(self: _Servicer, request: Any, context: grpc.ServicerContext) -> Any:
        def run(observation: Observation) -> Any:
            self.local.observation = observation
            return method(self, request, context)

        path = f"/tensorflow.serving.{type(self).SERVICE}/{method.__name__}"
        return observe.rpc(self.services, PROTOCOL, path, context, _answer, run)

    return call


def _answer(exc: BaseException) -> tuple[grpc.StatusCode, int, str] | None:
    error = tfserving.translate(exc)
    return None if error is None else (error.code, tfserving.HTTP_STATUS.get(error.code, 500), error.message)


def _spec(request: Any) -> tuple[str, int | None, str | None]:
    spec = request.model_spec
    version = spec.version.value if spec.HasField("version") else None
    return spec.name, version, spec.version_label or None


class _Servicer:
    SERVICE = ""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.local = threading.local()  # .observation: this thread's call (app.observe)

    @contextmanager
    def select(self, request: Any) -> Iterator[Selected]:
        with tfserving.select(self.core, *_spec(request)) as selected:
            self.local.observation.models = selected.models
            yield selected

    @property
    def core(self) -> InferenceCore:
        return self.services.core

    def deadline(self, context: grpc.ServicerContext) -> float:
        return observe.grpc_deadline(context, self.services.settings.request_timeout_s)


class PredictionServicer(_Servicer, prediction_service_pb2_grpc.PredictionServiceServicer):
    SERVICE = "PredictionService"

    @_rpc
    def Predict(self, request: predict_pb2.PredictRequest,
                context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
        signature = tfserving.signature_name(request.model_spec.signature_name)
        outputs = tfserving.SIGNATURES[signature]
        wanted = list(request.output_filter) or list(outputs)
        unknown = [name for name in wanted if name not in outputs]
        if unknown:
            raise tfserving.invalid(f"output_filter names {', '.join(repr(clip(n)) for n in unknown)}, not an output "
                                    f"of signature '{signature}' (outputs: {', '.join(outputs)})")
        raw = _images(request.inputs)
        self.local.observation.images = len(raw)
        with self.select(request) as selected:
            handle, scores = tfserving.classify(selected, raw, self.deadline(context))
        response = predict_pb2.PredictResponse()
        _answer_spec(response.model_spec, handle, signature)
        if tfserving.SCORES in wanted:
            response.outputs[tfserving.SCORES].CopyFrom(_float_tensor(scores))
        if tfserving.CLASSES in wanted:
            response.outputs[tfserving.CLASSES].CopyFrom(_labels_tensor(tfserving.labels(handle), len(scores)))
        return response

    @_rpc
    def Classify(self, request: classification_pb2.ClassificationRequest,
                 context: grpc.ServicerContext) -> classification_pb2.ClassificationResponse:
        signature = tfserving.signature_name(request.model_spec.signature_name)
        raw = _examples(request.input)
        self.local.observation.images = len(raw)
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

    @_rpc
    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context: grpc.ServicerContext) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise tfserving.invalid(f"metadata_field must be ['signature_def'] (the only metadata served), "
                                    f"got {fields}")
        with self.select(request) as selected:
            handle = selected.handles[0]
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _answer_spec(response.model_spec, handle, "")
            response.metadata["signature_def"].Pack(tfserving.signature_defs(handle))
        return response


class ModelServicer(_Servicer, model_service_pb2_grpc.ModelServiceServicer):
    SERVICE = "ModelService"

    @_rpc
    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        return tfserving.model_status(self.services.registry, *_spec(request))


# -- tensors and examples ------------------------------------------------------------------

def _images(inputs: Any) -> list[tuple[str, bytes]]:
    names = list(inputs)
    if names != [tfserving.INPUT]:
        raise tfserving.invalid(f"inputs named {', '.join(repr(clip(n)) for n in names) or 'none'}; the signature "
                                f"has one input, '{tfserving.INPUT}' (DT_STRING [-1], encoded images)")
    tensor = inputs[tfserving.INPUT]
    if tensor.dtype != types_pb2.DT_STRING:
        raise tfserving.invalid(f"input '{tfserving.INPUT}' must be DT_STRING (encoded images), got "
                                f"{types_pb2.DataType.Name(tensor.dtype)}")
    dims = [d.size for d in tensor.tensor_shape.dim]
    if len(dims) != 1 or dims[0] != len(tensor.string_val):
        raise tfserving.invalid(f"input '{tfserving.INPUT}' must have shape [n] (one encoded image per element), "
                                f"got shape {dims} with {len(tensor.string_val)} value(s)")
    return [(f"{tfserving.INPUT}[{i}]", value) for i, value in enumerate(tensor.string_val)]


def _examples(request_input: Any) -> list[tuple[str, bytes]]:
    kind = request_input.WhichOneof("kind")
    if kind is None:
        raise tfserving.invalid("input has no example_list")
    listed = getattr(request_input, kind)
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

"""TF Serving's gRPC API over the inference core: ``tensorflow.serving.PredictionService``
(``Predict``, ``Classify``, ``Regress``, ``MultiInference``, ``GetModelMetadata``) and ``ModelService.GetModelStatus``.

Predict takes a model's own tensors (``TensorProto`` as ``tensor_content`` or typed ``*_val``
fields, TF's rule: fewer values than the shape holds repeat the last one, none are zeros; the
dtype must be the input's, as TF Serving is strict) or, for an image classifier, input
``images``. Outputs are ``TensorProto``s with their values in the typed field of their dtype
(``float_val``, ...), as TF Serving writes them.

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
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from .. import observe, tfserving
from ..grpc_server import add_servicer
from ..images import check_image_count
from ..inference import InferenceCore, Selected
from ..services import Services
from ..tensors import BadTensor, Port, Signature, check_size
from ..text import clip

PROTOCOL = "tfserving_grpc"  # graphserve_requests_total{protocol=...}
SHOWN_NAMES = 3  # client names repeated in one error message
MAX_DIMS = 64  # a TensorShapeProto's dims, counted before they are read
MAX_TASKS = 16  # a MultiInference's tasks (one run each)


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
    if not request.HasField("model_spec"):
        raise tfserving.invalid("Missing ModelSpec")
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
        requested = request.model_spec.signature_name
        with self.select(request) as selected:  # the model first: an unknown one is NOT_FOUND whatever the inputs
            handle = selected.handles[0]
            name, signature = tfserving.predict_signature(handle, requested)
            if handle.servable.takes_images and tfserving.INPUT in request.inputs:
                raw = _images(request.inputs, self.max_images)
                observe.current_rpc().images = len(raw)
                outputs = tfserving.predict_images(selected, name, raw, request.output_filter, self.deadline(context))
            else:
                feeds = _feeds(request.inputs, handle, signature, self.services.settings.max_tensor_bytes)
                outputs = tfserving.predict_tensors(selected, name, signature, feeds, request.output_filter,
                                                    self.deadline(context))
        response = predict_pb2.PredictResponse()
        _answer_spec(response.model_spec, handle, name)
        for key, array in outputs.items():
            response.outputs[key].CopyFrom(_tensor(signature.outputs.get(key), array))
        return response

    def Classify(self, request: classification_pb2.ClassificationRequest,
                 context: grpc.ServicerContext) -> classification_pb2.ClassificationResponse:
        with self.select(request) as selected:
            if selected.handles[0].servable.takes_images:
                check_image_count(_example_count(request.input), self.max_images)
            name, result = tfserving.classify_examples(
                selected, request.model_spec.signature_name, request.input, self.services.settings.max_tensor_bytes,
                self.max_images, self.deadline(context))
        response = classification_pb2.ClassificationResponse()
        _answer_spec(response.model_spec, selected.handles[0], name)
        response.result.CopyFrom(result)
        return response

    def Regress(self, request: regression_pb2.RegressionRequest,
                context: grpc.ServicerContext) -> regression_pb2.RegressionResponse:
        with self.select(request) as selected:
            name, result = tfserving.regress_examples(
                selected, request.model_spec.signature_name, request.input, self.services.settings.max_tensor_bytes,
                self.deadline(context))
        response = regression_pb2.RegressionResponse()
        _answer_spec(response.model_spec, selected.handles[0], name)
        response.result.CopyFrom(result)
        return response

    def MultiInference(self, request: inference_pb2.MultiInferenceRequest,
                       context: grpc.ServicerContext) -> inference_pb2.MultiInferenceResponse:
        """Classify and Regress tasks of one model's version on the same examples (TF Serving's rules)."""
        tasks = request.tasks
        if not tasks:
            raise tfserving.invalid("Inference request should have at least one task")
        if len(tasks) > MAX_TASKS:
            raise tfserving.invalid(f"{len(tasks)} tasks; at most {MAX_TASKS}")
        first = _spec(tasks[0])
        if any(_spec(task)[:2] != first[:2] or task.model_spec.version_label != tasks[0].model_spec.version_label
               for task in tasks):
            raise tfserving.invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name and version")
        signatures = [task.model_spec.signature_name for task in tasks]
        duplicate = next((name for i, name in enumerate(signatures) if name in signatures[:i]), None)
        if duplicate is not None:
            raise tfserving.invalid(f"Duplicate evaluation of signature: {clip(duplicate)}")
        response = inference_pb2.MultiInferenceResponse()
        settings = self.services.settings
        with tfserving.select(self.core, *first) as selected:
            observe.current_rpc().models = selected.models
            for task in tasks:
                requested = task.model_spec.signature_name
                result = response.results.add()
                if task.method_name == tfserving.METHODS["classify"]:
                    name, classified = tfserving.classify_examples(selected, requested, request.input,
                                                                   settings.max_tensor_bytes, self.max_images,
                                                                   self.deadline(context))
                    result.classification_result.CopyFrom(classified)
                elif task.method_name == tfserving.METHODS["regress"]:
                    name, regressed = tfserving.regress_examples(selected, requested, request.input,
                                                                 settings.max_tensor_bytes, self.deadline(context))
                    result.regression_result.CopyFrom(regressed)
                else:
                    raise tfserving.invalid(f"Unsupported signature method_name: {clip(task.method_name)}")
                _answer_spec(result.model_spec, selected.handles[0], name)
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                         context: grpc.ServicerContext) -> get_model_metadata_pb2.GetModelMetadataResponse:
        with self.select(request) as selected:
            fields = request.metadata_field
            if len(fields) != 1 or fields[0] != "signature_def":
                raise tfserving.invalid(f"metadata_field must be ['signature_def'] (the only metadata served), "
                                        f"got [{_names(list(fields[:SHOWN_NAMES]), len(fields))}]")
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


def _example_count(request_input: Any) -> int:
    kind = request_input.WhichOneof("kind")
    return 0 if kind is None else len(getattr(request_input, kind).examples)


# TF's TensorProto: which typed field holds the values of each dtype.
_VALUE_FIELDS = {
    "float32": "float_val", "float64": "double_val", "int8": "int_val", "int16": "int_val", "int32": "int_val",
    "uint8": "int_val", "uint16": "int_val", "int64": "int64_val", "uint32": "uint32_val", "uint64": "uint64_val",
    "bool": "bool_val", "float16": "half_val", "bfloat16": "half_val", "string": "string_val",
}


def _feeds(inputs: Any, handle: Any, signature: Signature, limit: int) -> dict[str, np.ndarray]:
    """Each input's TensorProto as an array of its port's dtype; every count checked before a list is built."""
    if len(inputs) > len(signature.inputs):
        names = [name for name, _ in zip(inputs, range(SHOWN_NAMES))]
        raise BadTensor(f"inputs named {_names(names, len(inputs))}; model '{handle.name}' takes "
                        f"{tfserving.predict_takes(handle, signature)}")
    feeds = {}
    for key, proto in inputs.items():
        feeds[key] = _array(proto, tfserving.predict_input(handle, signature, key, "the request"), limit)
    return feeds


def _array(proto: tensor_pb2.TensorProto, port: Port, limit: int) -> np.ndarray:
    what = f"input {port.describe()}"
    expected = tfserving.DATA_TYPES[port.dtype]
    if proto.dtype != expected:
        raise BadTensor(f"{what}: Expects arg to be {_dtype_name(expected)} but {_dtype_name(proto.dtype)} is provided")
    shape_proto = proto.tensor_shape
    if shape_proto.unknown_rank:
        raise BadTensor(f"{what}: the tensor's shape must be known (unknown_rank is set)")
    if len(shape_proto.dim) > MAX_DIMS:
        raise BadTensor(f"{what}: a shape of {len(shape_proto.dim)} dimensions; at most {MAX_DIMS}")
    shape = [d.size for d in shape_proto.dim]
    count = check_size(what, shape, port.dtype, limit, data_bytes=len(proto.tensor_content))
    dtype = port.numpy
    if proto.tensor_content and port.dtype != "string":
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise BadTensor(f"{what}: tensor_content has {len(proto.tensor_content)} bytes; shape "
                            f"[{', '.join(map(str, shape))}] of {port.dtype} takes {count * dtype.itemsize}")
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    field = getattr(proto, _VALUE_FIELDS[port.dtype])
    given = len(field)
    if given > count:
        raise BadTensor(f"{what}: {given} values in {_VALUE_FIELDS[port.dtype]} for shape "
                        f"[{', '.join(map(str, shape))}] ({count} elements)")
    values = _values(field, port, what)
    if given == count:
        return values.reshape(shape)
    array = np.zeros(count, dtype=dtype) if port.dtype != "string" else np.full(count, b"", dtype=object)
    if given:  # TF's rule: the last value fills the rest
        array[:given] = values
        array[given:] = values[-1]
    return array.reshape(shape)


def _values(field: Any, port: Port, what: str) -> np.ndarray:
    dtype = port.numpy
    if port.dtype == "string":
        array = np.empty(len(field), dtype=object)
        array[:] = list(field)
        return array
    if port.dtype in ("float16", "bfloat16"):  # half_val: the bits, in int32s
        return np.array(field, dtype=np.int64).astype(np.uint16).view(dtype)
    values = np.array(field, dtype=np.uint64 if port.dtype in ("uint32", "uint64")
                      else np.int64 if dtype.kind in "iu" else None)
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise BadTensor(f"{what}: a value out of range for {port.dtype} [{info.min}, {info.max}]")
    return values.astype(dtype)


def _tensor(port: Port | None, array: np.ndarray) -> tensor_pb2.TensorProto:
    """An output as TF Serving writes it (``Tensor::AsProtoField``): the values in the typed field
    of its dtype (``float_val``, ``int64_val``, ``string_val``, ...), which is what clients written
    as TF Serving's docs write them read (``result.outputs["y"].float_val``); ``tf.make_ndarray``
    reads it as well."""
    name = "string" if array.dtype == object else port.dtype if port is not None else _numpy_name(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=tfserving.DATA_TYPES[name], tensor_shape=_shape(*array.shape))
    flat = array.reshape(-1)
    if name in ("float16", "bfloat16"):  # half_val: the 16 bits of each value, in int32s
        flat = flat.view(np.uint16).astype(np.int32)
    getattr(proto, _VALUE_FIELDS[name]).extend(flat.tolist())
    return proto


def _numpy_name(dtype: np.dtype[Any]) -> str:
    return "bfloat16" if dtype.name == "bfloat16" else {"bool": "bool"}.get(dtype.name, dtype.name)


def _answer_spec(spec: Any, handle: Any, signature: str) -> None:
    spec.name = handle.name
    spec.version.value = handle.version
    spec.signature_name = signature


def _shape(*dims: int) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])

"""TensorFlow Serving's APIs as front doors over the inference core (``app/inference.py``).

- ``app/tfserving/rest.py``: the REST API (``/v1/models/...``), a Flask blueprint.
- ``app/tfserving/grpc.py``: ``PredictionService`` and ``ModelService`` on the process's one
  gRPC server (``app/grpc_server.py``).

Both only translate: TF Serving's wire format in, a call on the core, TF Serving's wire
format out. What they share is here: the signatures of every model, choosing the tensors or
the image path, classify/regress on serialized ``tf.Example``s, the status of a model's
versions, model lookup with TF Serving's messages, and the ONE table that maps kinds of
domain exception (``app.kinds``) to TF Serving's error codes (gRPC status codes; REST
answers the HTTP status TF Serving's own HTTP server gives each code).

Signatures. A model served by its tensors (``app/tensors.py``) has its own, as its manifest
names them (``half_plus_two``: ``serving_default`` x -> y, ``classify_x_to_y``, ...). An image
classifier has two, each taking encoded images *or* the graph's own input tensor::

    serving_default  (tensorflow/serving/predict)
        inputs   images   DT_STRING [-1]            encoded JPEG/PNG/GIF/BMP/WebP images
                 <input>  DT_FLOAT  [-1, ...]       or: the graph's input tensor (e.g. "input")
        outputs  scores   DT_FLOAT  [-1, classes]   every class's score, in class-id order
                 classes  DT_STRING [-1, classes]   the class labels, in the same order
    scores           the same, with the single output ``scores``

Classify and Regress (TF Serving's ``classifier.cc`` / ``regressor.cc`` rules): the request's
``tf.Example``s (context merged into each, the example's own features winning) are serialized
and fed to the signature's one DT_STRING input; ``scores`` [n, k] and/or ``classes`` [n, k] come
back as (label, score) pairs (label "" without ``classes``), ``outputs`` [n] or [n, 1] as one
value per example.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from grpc import StatusCode  # not `import grpc`: the submodule app.tfserving.grpc would shadow it here
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    regression_pb2,
    status_pb2,
)

from ..images import check_image_count
from ..inference import InferenceCore, Selected
from ..kinds import Kind, describe
from ..registry import (
    AVAILABLE,
    FAILED,
    LOADING,
    UNLOADED,
    UNLOADING,
    ModelHandle,
    ModelNotFound,
    ModelRegistry,
    VersionNotFound,
)
from ..tensors import Port, Signature, check_size, pick_signature
from ..text import clip, shown
from ..wire import one_of

INPUT = "images"
SCORES = "scores"
CLASSES = "classes"
REGRESSION_OUTPUT = "outputs"  # TF Serving's regress signature output key
DEFAULT_SIGNATURE = "serving_default"
SIGNATURES = {DEFAULT_SIGNATURE: (SCORES, CLASSES), "scores": (SCORES,)}  # an image model's: signature -> its outputs
METHODS = {"predict": "tensorflow/serving/predict", "classify": "tensorflow/serving/classify",
           "regress": "tensorflow/serving/regress"}
PREDICT_METHOD = METHODS["predict"]
EXAMPLE_FEATURES = (INPUT, "image/encoded")  # :classify / Classify: the tf.Example feature holding the image

# TF dtype name (app.tensors) <-> TF Serving's DataType.
DATA_TYPES: dict[str, int] = {
    "float16": types_pb2.DT_HALF, "bfloat16": types_pb2.DT_BFLOAT16, "float32": types_pb2.DT_FLOAT,
    "float64": types_pb2.DT_DOUBLE, "int8": types_pb2.DT_INT8, "int16": types_pb2.DT_INT16,
    "int32": types_pb2.DT_INT32, "int64": types_pb2.DT_INT64, "uint8": types_pb2.DT_UINT8,
    "uint16": types_pb2.DT_UINT16, "uint32": types_pb2.DT_UINT32, "uint64": types_pb2.DT_UINT64,
    "bool": types_pb2.DT_BOOL, "string": types_pb2.DT_STRING,
}
DTYPE_NAMES: dict[int, str] = {value: key for key, value in DATA_TYPES.items()}


class TFServingError(Exception):
    """An error TF Serving's way: a gRPC status code and a message."""

    def __init__(self, code: StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# TF Serving: kind (app.kinds) -> error code (REST: the HTTP status below).
CODES: dict[Kind, StatusCode] = {
    Kind.INVALID: StatusCode.INVALID_ARGUMENT,
    Kind.TOO_LARGE: StatusCode.INVALID_ARGUMENT,  # TF Serving has no "too large": a bad argument
    Kind.UNSUPPORTED: StatusCode.INVALID_ARGUMENT,
    Kind.NOT_FOUND: StatusCode.NOT_FOUND,
    Kind.OVERLOADED: StatusCode.RESOURCE_EXHAUSTED,
    Kind.UNAVAILABLE: StatusCode.UNAVAILABLE,
    Kind.DEADLINE: StatusCode.DEADLINE_EXCEEDED,
    Kind.INTERNAL: StatusCode.INTERNAL,
}

# TF Serving's HTTP server: error code -> HTTP status (model_servers/http_rest_api_util / net_http).
HTTP_STATUS: dict[StatusCode, int] = {
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.FAILED_PRECONDITION: 400,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.NOT_FOUND: 404,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.INTERNAL: 500,
}


def translate(exc: BaseException) -> TFServingError | None:
    """The TF Serving error for a domain exception; None for anything else (a bug)."""
    if isinstance(exc, TFServingError):
        return exc
    described = describe(exc)
    return None if described is None else TFServingError(CODES[described.kind], str(exc))


def invalid(message: str) -> TFServingError:
    return TFServingError(StatusCode.INVALID_ARGUMENT, message)


# -- finding a model's versions ----------------------------------------------------------

def _request(name: str, version: int | None, label: str | None) -> str:
    if label is not None:
        return f"Labeled({name}, {label})"
    return f"Specific({name}, {version})" if version is not None else f"Latest({name})"


def check_name(registry: ModelRegistry, name: str, version: int | None = None, label: str | None = None) -> None:
    """Refuse a name the core would read as a selector (``all``, ``a,b``) or that is not served,
    and a label the model does not have (TF Serving: INVALID_ARGUMENT, not NOT_FOUND)."""
    entry = registry.snapshot.get(name)
    if entry is None:
        asked = _request(clip(name), version, clip(label) if label is not None else None)
        raise TFServingError(StatusCode.NOT_FOUND, f"Servable not found for request: {asked}")
    if label is not None and label not in entry.labels:
        raise invalid(f"Unrecognized servable version label: {clip(label)}")


@contextmanager
def select(core: InferenceCore, name: str, version: int | None, label: str | None) -> Iterator[Selected]:
    """Borrow one version of model ``name`` (TF Serving: a ``ServableHandle``) until the block ends."""
    one_of(version, label)
    check_name(core.registry, name, version, label)
    try:
        selected = core.select(name, version=version, version_label=label)
    except (ModelNotFound, VersionNotFound) as exc:
        raise TFServingError(StatusCode.NOT_FOUND,
                             f"Servable not found for request: {_request(clip(name), version, clip(label) if label else label)}: "
                             f"{exc}") from None
    with selected:
        yield selected


def signature_name(requested: object) -> str:
    """The signature asked for, as sent (empty or absent: the model's default); REST may send any JSON here."""
    if not isinstance(requested, str):
        raise invalid(f"signature_name must be a string, got {shown(requested)}")
    return requested


def _image_signature(requested: str) -> str:
    name = requested or DEFAULT_SIGNATURE
    if name not in SIGNATURES:
        raise invalid(f"Serving signature key \"{clip(name)}\" not found (signatures: {', '.join(SIGNATURES)})")
    return name


def predict_signature(handle: ModelHandle, requested: str) -> tuple[str, Signature]:
    """(the signature's name, the model's tensor signature it runs) for a Predict.

    An image classifier's ``serving_default`` and ``scores`` both run its tensor signature
    ``serving_default`` on tensors (``images`` go the image path)."""
    signatures = handle.servable.signatures
    if handle.servable.takes_images:
        return _image_signature(requested), pick_signature(signatures, None, handle.name)
    signature = pick_signature(signatures, requested or None, handle.name)
    return signature.name, signature


def wanted_outputs(signature: str, output_filter: Sequence[str]) -> tuple[str, ...]:
    """An image model's outputs a Predict answers: ``output_filter`` (each an output of the signature), or all."""
    outputs = SIGNATURES[signature]
    if len(output_filter) > len(outputs):  # before reading the names: a filter may hold millions
        raise invalid(f"output_filter has {len(output_filter)} names; signature '{signature}' has "
                      f"{len(outputs)} output(s): {', '.join(outputs)}")
    unknown = [name for name in output_filter if name not in outputs]
    if unknown:
        raise invalid(f"output_filter names {', '.join(repr(clip(name)) for name in unknown)}, not an output of "
                      f"signature '{signature}' (outputs: {', '.join(outputs)})")
    return tuple(output_filter) or outputs


def predict_takes(handle: ModelHandle, signature: Signature) -> str:
    """What a Predict takes, for messages (an image classifier: images or its tensor)."""
    if handle.servable.takes_images:
        return f"'{INPUT}' (DT_STRING [-1], encoded images) or {signature.takes()}"
    return signature.takes()


def predict_input(handle: ModelHandle, signature: Signature, key: str, where: str) -> Port:
    """The input ``key`` a Predict names; INVALID_ARGUMENT saying what the model takes."""
    port = signature.inputs.get(key)
    if port is None:
        raise invalid(f"{where} names input '{clip(key)}', not an input of signature '{signature.name}'; "
                      f"model '{handle.name}' takes {predict_takes(handle, signature)}")
    return port


# -- Predict: tensors or images in, named arrays out ----------------------------------------

def predict_tensors(selected: Selected, name: str, signature: Signature, feeds: Mapping[str, np.ndarray],
                    output_filter: Sequence[str], deadline: float | None) -> dict[str, np.ndarray]:
    """Run the model's tensor ``signature`` on ``feeds`` (each of its port's dtype); the outputs
    asked (an image classifier's ``classes`` added from its labels)."""
    handle = selected.handles[0]
    if handle.servable.takes_images:
        wanted = wanted_outputs(name, output_filter)
        result = selected.predict(signature, feeds, outputs=[SCORES], deadline=deadline)
        return _image_outputs(handle, result.outputs[SCORES], wanted)
    outputs = signature.outputs_for(list(output_filter))
    return selected.predict(signature, feeds, outputs=list(outputs), deadline=deadline).outputs


def predict_images(selected: Selected, name: str, raw: list[tuple[str, bytes]], output_filter: Sequence[str],
                   deadline: float | None) -> dict[str, np.ndarray]:
    """An image classifier's outputs for encoded images."""
    wanted = wanted_outputs(name, output_filter)
    handle, scores = classify(selected, raw, deadline)
    return _image_outputs(handle, scores, wanted)


def _image_outputs(handle: ModelHandle, scores: np.ndarray, wanted: tuple[str, ...]) -> dict[str, np.ndarray]:
    outputs: dict[str, np.ndarray] = {}
    for output in wanted:
        if output == SCORES:
            outputs[SCORES] = scores
        else:
            row = np.array([label.encode() for label in labels(handle)], dtype=object)
            outputs[CLASSES] = np.tile(row, (len(scores), 1))
    return outputs


def check_image_model(handle: ModelHandle) -> None:
    """Images sent to a model served by its tensors only: say what it takes."""
    if not handle.servable.takes_images:
        signature = pick_signature(handle.servable.signatures, None, handle.name)
        raise invalid(f"model '{handle.name}' takes tensors, not images: signature '{signature.name}' takes "
                      f"{signature.takes()}")


# -- Classify and Regress on serialized tf.Examples ---------------------------------------------

def serialized_examples(request_input: input_pb2.Input, limit: int) -> list[bytes]:
    """Each example serialized with its list's context merged in (TF Serving's
    ``InputToSerializedExampleTensor``: the context's bytes, then the example's, so the example's
    own features win); the total checked against ``max_tensor_bytes`` first."""
    kind = request_input.WhichOneof("kind")
    if kind is None:
        raise invalid("Input is empty.")
    listed = getattr(request_input, kind)
    count = len(listed.examples)
    if count == 0:
        raise invalid("Input is empty.")
    context = listed.context.SerializeToString() if kind == "example_list_with_context" else b""
    check_size("examples", [count], "string", limit, data_bytes=request_input.ByteSize() + count * len(context))
    return [context + example.SerializeToString() for example in listed.examples]


def _example_signature(selected: Selected, requested: str, method: str) -> tuple[Signature, Port]:
    """The signature of ``method`` a Classify/Regress runs, and its one DT_STRING input."""
    handle = selected.handles[0]
    signature = pick_signature(handle.servable.signatures, requested or None, handle.name)
    if signature.method != method:
        what = "classification" if method == "classify" else "regression"
        raise invalid(f"Expected {what} signature method_name to be {METHODS[method]}. "
                      f"Was: {METHODS[signature.method]}")
    ports = list(signature.inputs.values())
    if len(ports) != 1 or ports[0].dtype != "string":
        raise invalid(f"signature '{signature.name}' must have one DT_STRING input of serialized tf.Examples; "
                      f"it takes {signature.takes()}")
    return signature, ports[0]


def _run_examples(selected: Selected, signature: Signature, port: Port, serialized: list[bytes],
                  outputs: list[str], deadline: float | None) -> dict[str, np.ndarray]:
    feed = np.empty(len(serialized), dtype=object)
    feed[:] = serialized
    return selected.predict(signature, {port.key: feed}, outputs=outputs, deadline=deadline).outputs


def classify_examples(selected: Selected, requested: str, request_input: input_pb2.Input, limit: int,
                      max_images: int, deadline: float | None) -> tuple[str, classification_pb2.ClassificationResult]:
    """(signature name, ClassificationResult) for a Classify: images for an image classifier,
    else the examples serialized into its classify signature."""
    handle = selected.handles[0]
    if handle.servable.takes_images:
        name = _image_signature(requested)
        _, image_scores = classify(selected, example_images(request_input, max_images), deadline)
        return name, _classifications(image_scores, np.array([label.encode() for label in labels(handle)], dtype=object))
    signature, port = _example_signature(selected, requested, "classify")
    wanted = [key for key in (CLASSES, SCORES) if key in signature.outputs]
    if not wanted:
        raise invalid(f"classification signature '{signature.name}' has neither output '{CLASSES}' nor '{SCORES}'")
    serialized = serialized_examples(request_input, limit)
    outputs = _run_examples(selected, signature, port, serialized, wanted, deadline)
    scores, classes = outputs.get(SCORES), outputs.get(CLASSES)
    for key, array in outputs.items():
        if array.ndim != 2 or array.shape[0] != len(serialized):
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {list(array.shape)} "
                          f"for output '{key}' ({len(serialized)} examples)")
    if scores is not None and classes is not None and scores.shape != classes.shape:
        raise invalid(f"Tensors class and score should match in shape: {list(classes.shape)} vs {list(scores.shape)}")
    return signature.name, _classifications(scores, classes)


def _classifications(scores: np.ndarray | None, classes: np.ndarray | None) -> classification_pb2.ClassificationResult:
    """(label, score) per class per example: ``classes`` [n, k] or one row [k] for every example
    (an image model's labels); a missing label is "" and a missing score 0, as TF Serving's."""
    result = classification_pb2.ClassificationResult()
    shape = scores.shape if scores is not None else classes.shape  # type: ignore[union-attr]
    for i in range(shape[0]):
        listed = result.classifications.add()
        row = None if classes is None else classes[i] if classes.ndim == 2 else classes
        for j in range(shape[1]):
            label = b"" if row is None else row[j]
            score = 0.0 if scores is None else float(scores[i, j])
            listed.classes.add(label=label.decode("utf-8", "replace"), score=score)
    return result


def regress_examples(selected: Selected, requested: str, request_input: input_pb2.Input, limit: int,
                     deadline: float | None) -> tuple[str, regression_pb2.RegressionResult]:
    """(signature name, RegressionResult): one value per example from output ``outputs``."""
    handle = selected.handles[0]
    if handle.servable.takes_images:
        raise invalid(f"Expected regression signature method_name to be {METHODS['regress']}. "
                      f"Was: {PREDICT_METHOD} (model '{handle.name}' is an image classifier: use Predict or Classify)")
    signature, port = _example_signature(selected, requested, "regress")
    if REGRESSION_OUTPUT not in signature.outputs:
        raise invalid(f"No output Tensor named '{REGRESSION_OUTPUT}' in regression signature '{signature.name}'")
    serialized = serialized_examples(request_input, limit)
    values = _run_examples(selected, signature, port, serialized, [REGRESSION_OUTPUT], deadline)[REGRESSION_OUTPUT]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)) or values.shape[0] != len(serialized):
        raise invalid(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                      f"{list(values.shape)} ({len(serialized)} examples)")
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add(value=float(value))
    return signature.name, result


def example_images(request_input: input_pb2.Input, max_images: int) -> list[tuple[str, bytes]]:
    """The encoded image of each example (feature ``images`` or ``image/encoded``, in the example or its context)."""
    kind = request_input.WhichOneof("kind")
    if kind is None:
        raise invalid("input has no example_list")
    listed = getattr(request_input, kind)
    check_image_count(len(listed.examples), max_images)
    if not listed.examples:
        raise invalid("no images: give at least one")
    context = listed.context.features.feature if kind == "example_list_with_context" else {}
    raw = []
    for i, example in enumerate(listed.examples):
        features = example.features.feature
        key = next((k for k in EXAMPLE_FEATURES if k in features), None)
        source = features if key is not None else context
        key = key or next((k for k in EXAMPLE_FEATURES if k in context), None)
        if key is None:
            raise invalid(f"examples[{i}] has no bytes feature "
                          f"{' or '.join(repr(k) for k in EXAMPLE_FEATURES)} holding the image")
        values = source[key].bytes_list.value
        if len(values) != 1:
            raise invalid(f"examples[{i}].{key} must hold one encoded image in bytes_list, got {len(values)}")
        raw.append((f"examples[{i}]", values[0]))
    return raw


# -- status and metadata, as TF Serving's protos (REST answers them as JSON) ---------------

# Our version states -> TF Serving's (get_model_status.proto's ManagerState). ``unloaded`` (a
# version known and wanted but not in memory: it loads on its first request with a memory
# budget, or on the repository API's load) is START, "the manager is tracking this servable,
# but has not initiated any action pertaining to it", not END: END is the end of a servable's
# journey (TF Serving never loads it again), and ours may load at any request.
_STATES = {
    UNLOADED: get_model_status_pb2.ModelVersionStatus.START,
    LOADING: get_model_status_pb2.ModelVersionStatus.LOADING,
    AVAILABLE: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    UNLOADING: get_model_status_pb2.ModelVersionStatus.UNLOADING,
    FAILED: get_model_status_pb2.ModelVersionStatus.END,
}


def model_status(registry: ModelRegistry, name: str, version: int | None = None,
                 label: str | None = None) -> get_model_status_pb2.GetModelStatusResponse:
    """Every version of ``name`` (or the one asked for) and its state."""
    entry = next((e for e in registry.entries() if e.name == name), None)
    if entry is None or not entry.versions:
        raise TFServingError(StatusCode.NOT_FOUND, f"Could not find any versions of model {clip(name)}")
    one_of(version, label)
    if label is not None:
        if label not in entry.labels:
            raise invalid(f"Unrecognized servable version label: {clip(label)}")
        version = entry.labels[label]
    statuses = [s for v, s in sorted(entry.versions.items()) if version is None or v == version]
    if not statuses:
        raise TFServingError(StatusCode.NOT_FOUND, f"Could not find version {version} of model {name}")
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        failed = status.state == FAILED
        response.model_version_status.add(
            version=status.version,
            state=_STATES.get(status.state, get_model_status_pb2.ModelVersionStatus.UNKNOWN),
            status=status_pb2.StatusProto(error_code=2 if failed else 0,  # UNKNOWN / OK
                                          error_message=(status.reason or "") if failed else ""),
        )
    return response


def _shape_proto(dims: Sequence[int] | None) -> tensor_shape_pb2.TensorShapeProto:
    if dims is None:
        return tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


def _tensor_info(name: str, dtype: int, dims: Sequence[int] | None) -> meta_graph_pb2.TensorInfo:
    return meta_graph_pb2.TensorInfo(name=name, dtype=dtype, tensor_shape=_shape_proto(dims))


def _port_info(port: Port) -> meta_graph_pb2.TensorInfo:
    return _tensor_info(port.tensor, DATA_TYPES[port.dtype], port.shown_shape)


def signature_defs(handle: ModelHandle) -> get_model_metadata_pb2.SignatureDefMap:
    """Every signature of the model: a tensor model's own; an image classifier's two, each
    listing ``images`` and the graph's input tensor(s)."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    servable = handle.servable
    if not servable.takes_images:
        for name, signature in servable.signatures.items():
            definition = signatures.signature_def[name]
            definition.method_name = METHODS[signature.method]
            for key, port in signature.inputs.items():
                definition.inputs[key].CopyFrom(_port_info(port))
            for key, port in signature.outputs.items():
                definition.outputs[key].CopyFrom(_port_info(port))
        return signatures
    tensor_signature = pick_signature(servable.signatures, None, handle.name)
    classes = servable.num_classes
    outputs = {
        SCORES: _tensor_info(f"{SCORES}:0", types_pb2.DT_FLOAT, [-1, classes]),
        CLASSES: _tensor_info(f"{CLASSES}:0", types_pb2.DT_STRING, [-1, classes]),
    }
    for name, names in SIGNATURES.items():
        definition = signatures.signature_def[name]
        definition.method_name = PREDICT_METHOD
        definition.inputs[INPUT].CopyFrom(_tensor_info(f"{INPUT}:0", types_pb2.DT_STRING, [-1]))
        for key, port in tensor_signature.inputs.items():
            definition.inputs[key].CopyFrom(_port_info(port))
        for output in names:
            definition.outputs[output].CopyFrom(outputs[output])
    return signatures


def labels(handle: ModelHandle) -> list[str]:
    return handle.labels


def classify(selected: Selected, raw: list[tuple[str, bytes]],
             deadline: float | None) -> tuple[ModelHandle, np.ndarray]:
    """Scores [images, classes] of the one selected version for encoded images (names for messages)."""
    if not raw:
        raise invalid("no images: give at least one")
    check_image_model(selected.handles[0])
    result = selected.classify_uploads(raw, top_k=0, deadline=deadline)  # scores only: no top-k
    return selected.handles[0], result.models[0].scores


def as_dict(message: Any) -> dict[str, Any]:
    """A TF Serving proto as its REST JSON (field names as in the .proto, defaults included)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)

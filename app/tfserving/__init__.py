"""TensorFlow Serving's APIs as front doors over the inference core (``app/inference.py``).

- ``app/tfserving/rest.py``: the REST API (``/v1/models/...``), a Flask blueprint.
- ``app/tfserving/grpc.py``: ``PredictionService`` and ``ModelService`` on the process's one
  gRPC server (``app/grpc_server.py``).

Both only translate: TF Serving's wire format in, a call on the core, TF Serving's wire
format out. What they share is here: the signatures every model has, the status of a
model's versions, model lookup with TF Serving's messages, and the ONE table that maps
kinds of domain exception (``app.kinds``) to TF Serving's error codes (gRPC status codes;
REST answers the HTTP status TF Serving's own HTTP server gives each code).

Signatures (every model, every version)::

    serving_default  (tensorflow/serving/predict)
        inputs   images   DT_STRING [-1]            encoded JPEG/PNG/GIF/BMP/WebP images
        outputs  scores   DT_FLOAT  [-1, classes]   every class's score, in class-id order
                 classes  DT_STRING [-1, classes]   the class labels, in the same order
    scores           the same, with the single output ``scores``
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from grpc import StatusCode  # not `import grpc`: the submodule app.tfserving.grpc would shadow it here
from tensorflow.core.framework import tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, status_pb2

from ..inference import InferenceCore, Selected
from ..kinds import Kind, describe
from ..registry import AVAILABLE, FAILED, LOADING, UNLOADING, ModelHandle, ModelNotFound, ModelRegistry, VersionNotFound
from ..text import clip, shown
from ..wire import one_of

INPUT = "images"
SCORES = "scores"
CLASSES = "classes"
DEFAULT_SIGNATURE = "serving_default"
SIGNATURES = {DEFAULT_SIGNATURE: (SCORES, CLASSES), "scores": (SCORES,)}  # signature -> its outputs
PREDICT_METHOD = "tensorflow/serving/predict"
EXAMPLE_FEATURES = (INPUT, "image/encoded")  # :classify / Classify: the tf.Example feature holding the image


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
    """Refuse a name the core would read as a selector (``all``, ``a,b``) or that is not served."""
    if name not in registry.snapshot:
        asked = _request(clip(name), version, clip(label) if label is not None else None)
        raise TFServingError(StatusCode.NOT_FOUND, f"Servable not found for request: {asked}")


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
    """The signature asked for (empty or absent: ``serving_default``); REST may send any JSON here."""
    if not isinstance(requested, str):
        raise invalid(f"signature_name must be a string, got {shown(requested)}")
    name = requested or DEFAULT_SIGNATURE
    if name not in SIGNATURES:
        raise invalid(f"Serving signature key \"{clip(name)}\" not found (signatures: {', '.join(SIGNATURES)})")
    return name


def wanted_outputs(signature: str, output_filter: Sequence[str]) -> tuple[str, ...]:
    """The outputs a Predict answers: ``output_filter`` (each an output of the signature), or all."""
    outputs = SIGNATURES[signature]
    if len(output_filter) > len(outputs):  # before reading the names: a filter may hold millions
        raise invalid(f"output_filter has {len(output_filter)} names; signature '{signature}' has "
                      f"{len(outputs)} output(s): {', '.join(outputs)}")
    unknown = [name for name in output_filter if name not in outputs]
    if unknown:
        raise invalid(f"output_filter names {', '.join(repr(clip(name)) for name in unknown)}, not an output of "
                      f"signature '{signature}' (outputs: {', '.join(outputs)})")
    return tuple(output_filter) or outputs


# -- status and metadata, as TF Serving's protos (REST answers them as JSON) ---------------

_STATES = {
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
            raise TFServingError(StatusCode.NOT_FOUND,
                                 f"Could not find version label {clip(label)} of model {name} "
                                 f"(labels: {', '.join(sorted(entry.labels)) or 'none'})")
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


def _tensor_info(name: str, dtype: int, dims: list[int]) -> meta_graph_pb2.TensorInfo:
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
    return meta_graph_pb2.TensorInfo(name=name, dtype=dtype, tensor_shape=shape)


def signature_defs(handle: ModelHandle) -> get_model_metadata_pb2.SignatureDefMap:
    classes = handle.servable.num_classes
    outputs = {
        SCORES: _tensor_info(f"{SCORES}:0", types_pb2.DT_FLOAT, [-1, classes]),
        CLASSES: _tensor_info(f"{CLASSES}:0", types_pb2.DT_STRING, [-1, classes]),
    }
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for name, names in SIGNATURES.items():
        signature = signatures.signature_def[name]
        signature.method_name = PREDICT_METHOD
        signature.inputs[INPUT].CopyFrom(_tensor_info(f"{INPUT}:0", types_pb2.DT_STRING, [-1]))
        for output in names:
            signature.outputs[output].CopyFrom(outputs[output])
    return signatures


def labels(handle: ModelHandle) -> list[str]:
    return handle.labels


def classify(selected: Selected, raw: list[tuple[str, bytes]],
             deadline: float | None) -> tuple[ModelHandle, np.ndarray]:
    """Scores [images, classes] of the one selected version for encoded images (names for messages)."""
    if not raw:
        raise invalid("no images: give at least one")
    result = selected.classify_uploads(raw, top_k=0, deadline=deadline)  # scores only: no top-k
    return selected.handles[0], result.models[0].scores


def as_dict(message: Any) -> dict[str, Any]:
    """A TF Serving proto as its REST JSON (field names as in the .proto, defaults included)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)

"""TF Serving's REST API (``api_rest.md`` in tensorflow/serving) over the inference core.

``MODEL`` below is ``/v1/models/<name>``, ``/v1/models/<name>/versions/<v>`` or
``/v1/models/<name>/labels/<label>``::

    GET  MODEL            {"model_version_status": [...], "name": "<name>", "ready": true}
    GET  MODEL/metadata   {"model_spec": {...}, "metadata": {"signature_def": {...}}}
    POST MODEL:predict    {"instances": [1.0, 2.0, 5.0]}  ->  {"predictions": [2.5, 3.0, 4.5]}
                          {"inputs": {"a": [[1, 2, 3]], "b": [4]}}  ->  {"outputs": {...}}
                          {"instances": [{"b64": "..."}, ...]}  ->  {"predictions": [{"scores": ..., "classes": ...}]}
    POST MODEL:classify   {"examples": [{"x": 1.0}], "context": {...}}  ->  {"results": [[[label, score], ...]]}
    POST MODEL:regress    {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}  ->  {"results": [2.5]}

Tensors follow TF Serving's JSON mapping (``app/tfserving/json_tensors.py``). An image
classifier takes encoded images, ``{"b64": "<base64 of the encoded image>"}`` (standard or
URL-safe alphabet, padding optional), or its graph's own input tensor: a row-format request of
``{"b64"}`` objects (or objects keyed ``images``) is images, one of numbers the tensor. The
model is looked up before the body is read (an unknown model answers 404 whatever the body).
``status`` adds KServe's v1 keys ``name`` and ``ready``. Errors are ``{"error": "<message>"}``
with the HTTP status TF Serving gives the error's code.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from tensorflow_serving.apis import input_pb2

from .. import observe, tfserving, wire
from ..images import check_image_count
from ..inference import InferenceCore, Selected
from ..registry import ModelHandle
from ..services import current
from ..tensors import Signature
from ..text import clip, shown
from . import json_tensors

bp = Blueprint("tfserving_rest", __name__)

# ASCII digits only: \d would take "١" (Arabic-Indic one), which int() reads as 1.
_PATH = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?")
_GET = re.compile(_PATH.pattern + r"(?P<metadata>/metadata)?")
_POST = re.compile(_PATH.pattern + r":(?P<verb>predict|classify|regress)")


def _core() -> InferenceCore:
    return current().core


def _version(match: re.Match[str]) -> int | None:
    return None if match["version"] is None else wire.version_number(match["version"])


@bp.errorhandler(tfserving.TFServingError)
def _error(exc: tfserving.TFServingError) -> ResponseReturnValue:
    status = tfserving.HTTP_STATUS.get(exc.code, 500)
    observe.current().error_code = exc.code.name.lower()  # graphserve_errors_total{code="not_found"}, ... (app.observe)
    headers = {"Retry-After": "1"} if status in (429, 503) else {}
    return jsonify(error=exc.message), status, headers


def _translated(exc: Exception) -> ResponseReturnValue:
    error = tfserving.translate(exc)
    if error is None:
        raise exc  # a bug: the app's handler logs it and answers 500
    return _error(error)


@bp.get("/v1/models/<path:rest>")
def get(rest: str) -> ResponseReturnValue:
    match = _GET.fullmatch(rest)
    if match is None:
        return _error(tfserving.invalid(f"Malformed request: GET /v1/models/{clip(rest)}"))
    try:
        registry = current().registry
        name, version, label = match["name"], _version(match), match["label"]
        if match["metadata"] is None:
            return jsonify(_status(tfserving.model_status(registry, name, version, label), name))
        tfserving.check_name(registry, name, version, label)
        with _core().select(name, version=version, version_label=label) as selected:
            handle = selected.handles[0]
            signatures = tfserving.as_dict(tfserving.signature_defs(handle))
        return jsonify(
            model_spec={"name": handle.name, "signature_name": "", "version": str(handle.version)},
            metadata={"signature_def": signatures},
        )
    except Exception as exc:
        return _translated(exc)


@bp.post("/v1/models/<path:rest>")
def post(rest: str) -> ResponseReturnValue:
    match = _POST.fullmatch(rest)
    if match is None:
        return _error(tfserving.invalid(f"Malformed request: POST /v1/models/{clip(rest)}"))
    try:
        deadline = observe.http_deadline(current().settings.request_timeout_s)
        with tfserving.select(_core(), match["name"], _version(match), match["label"]) as selected:
            observe.current().models = selected.models
            body = _json_body()  # after the model: an unknown model answers 404 whatever the body
            requested = tfserving.signature_name(body.get("signature_name", ""))
            if match["verb"] == "predict":
                return jsonify(_predict(selected, body, requested, deadline))
            return jsonify(_classify_or_regress(selected, match["verb"], body, requested, deadline))
    except Exception as exc:
        return _translated(exc)


def _status(response: Any, name: str) -> dict[str, Any]:
    """TF Serving's status, and KServe's v1 ``name``/``ready`` (its Python client reads ``ready``)."""
    answer = tfserving.as_dict(response)
    ready = any(status.state == status.AVAILABLE for status in response.model_version_status)
    return {**answer, "name": name, "ready": ready}


def _predict(selected: Selected, body: dict[str, Any], requested: str, deadline: float | None) -> dict[str, Any]:
    handle = selected.handles[0]
    name, signature = tfserving.predict_signature(handle, requested)
    output_filter = _output_filter(body)
    columnar = _columnar(body)
    values = body["inputs"] if columnar else body["instances"]
    if handle.servable.takes_images and _looks_like_images(values):
        raw, columnar = _predict_inputs(body)
        observe.current().images = len(raw)
        outputs = tfserving.predict_images(selected, name, raw, output_filter, deadline)
    else:
        feeds = _tensor_feeds(values, columnar, handle, signature)
        outputs = tfserving.predict_tensors(selected, name, signature, feeds, output_filter, deadline)
    if columnar:
        return {"outputs": json_tensors.columns(outputs)}
    return {"predictions": json_tensors.rows(outputs)}


def _classify_or_regress(selected: Selected, verb: str, body: dict[str, Any], requested: str,
                         deadline: float | None) -> dict[str, Any]:
    settings = current().settings
    handle = selected.handles[0]
    if handle.servable.takes_images:  # before a single base64 string is decoded
        examples = body.get("examples")
        check_image_count(len(examples) if isinstance(examples, list) else 0, _max_images())
    request_input = _examples_input(body)
    if verb == "regress":
        _, regression = tfserving.regress_examples(selected, requested, request_input, settings.max_tensor_bytes,
                                                   deadline)
        return {"results": [r.value for r in regression.regressions]}
    _, classification = tfserving.classify_examples(selected, requested, request_input, settings.max_tensor_bytes,
                                                    _max_images(), deadline)
    return {"results": [[[c.label, c.score] for c in listed.classes] for listed in classification.classifications]}


# -- reading the request --------------------------------------------------------------------

def _json_body() -> dict[str, Any]:
    try:
        body = wire.load_json(request.get_data(cache=False))
    except wire.BadJson as exc:
        raise tfserving.invalid(f"JSON Parse error: {exc}") from None
    if not isinstance(body, dict):
        raise tfserving.invalid("JSON Parse error: the request body must be a JSON object")
    return body


def _max_images() -> int:
    """Image counts are checked before a single base64 string is decoded."""
    return current().settings.max_images_per_request


def _output_filter(body: dict[str, Any]) -> list[str]:
    """``output_filter`` (a graphserve extension on REST, as on gRPC): a list of output names."""
    names = body.get("output_filter", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise tfserving.invalid(f"output_filter must be a list of output names, got {shown(names)}")
    return names


def _b64(value: Any, where: str) -> tuple[str, bytes]:
    """``{"b64": "..."}`` -> (where, bytes); standard or URL-safe base64, padding optional."""
    if not (isinstance(value, dict) and set(value) == {"b64"}):
        kind = "a string" if isinstance(value, str) else type(value).__name__
        raise tfserving.invalid(
            f"{where} must be an encoded image as {{\"b64\": \"<base64>\"}} (the input '{tfserving.INPUT}' is "
            f"DT_STRING), got {kind}"
        )
    text = value["b64"]
    if not isinstance(text, str):
        raise tfserving.invalid(f"{where}: the value of \"b64\" must be a string, got {type(text).__name__}")
    try:
        return where, wire.decode_base64(text)
    except wire.BadBase64 as exc:
        raise tfserving.invalid(f"{where}: \"b64\" is not valid base64 ({exc})") from None




def _named(value: dict[str, Any], where: str) -> Any:
    """An object keyed by input name: the value of the one input."""
    extra = sorted(set(value) - {tfserving.INPUT})
    if extra or tfserving.INPUT not in value:
        raise tfserving.invalid(
            f"{where} names input(s) {', '.join(repr(clip(k)) for k in extra) or 'none'}; "
            f"the signature has one input, '{tfserving.INPUT}' (DT_STRING, encoded images)"
        )
    return value[tfserving.INPUT]


def _predict_inputs(body: dict[str, Any]) -> tuple[list[tuple[str, bytes]], bool]:
    """The images of a predict request and whether it was columnar (``inputs``)."""
    if not _columnar(body):
        instances = body["instances"]
        if not isinstance(instances, list):
            raise tfserving.invalid("\"instances\" must be a list")
        check_image_count(len(instances), _max_images())
        raw = []
        for i, instance in enumerate(instances):
            where = f"instances[{i}]"
            if isinstance(instance, dict) and "b64" not in instance:
                instance = _named(instance, where)
                where += f".{tfserving.INPUT}"
            raw.append(_b64(instance, where))
        return raw, False
    inputs = body["inputs"]
    where = "inputs"
    if isinstance(inputs, dict) and "b64" not in inputs:
        inputs = _named(inputs, where)
        where += f".{tfserving.INPUT}"
    if not isinstance(inputs, list):
        raise tfserving.invalid(f"{where} must be a list of images (the input's shape is [-1])")
    check_image_count(len(inputs), _max_images())
    return [_b64(value, f"{where}[{i}]") for i, value in enumerate(inputs)], True


def _columnar(body: dict[str, Any]) -> bool:
    """Whether a predict request is columnar (``inputs``) rather than row format (``instances``)."""
    if ("instances" in body) == ("inputs" in body):
        raise tfserving.invalid("the request must have either \"instances\" (row format) or \"inputs\" "
                                "(columnar format), not both or neither")
    return "inputs" in body


def _looks_like_images(value: Any) -> bool:
    """An image classifier's request of images: ``{"b64"}`` objects, strings, or ``images`` named."""
    if isinstance(value, dict):
        return tfserving.INPUT in value or "b64" in value
    if isinstance(value, list) and value:
        first = value[0]
        return isinstance(first, str) or (isinstance(first, dict) and (tfserving.INPUT in first or "b64" in first))
    return False


def _keyed(value: Any) -> bool:
    """An object keyed by input name (not a ``{"b64"}`` value of a DT_STRING input)."""
    return isinstance(value, dict) and set(value) != {"b64"}


def _tensor_feeds(values: Any, columnar: bool, handle: ModelHandle, signature: Signature) -> dict[str, np.ndarray]:
    """The arrays of a predict request: ``inputs`` as they are, ``instances`` stacked along a new dimension 0."""
    named: dict[str, tuple[Any, str]]
    if columnar:
        named = ({key: (value, f"inputs.{key}") for key, value in values.items()} if _keyed(values)
                 else {"": (values, "inputs")})
    else:
        if not isinstance(values, list):
            raise tfserving.invalid("\"instances\" must be a list (one element per instance)")
        named = _instances(values) if values and all(_keyed(v) for v in values) else {"": (values, "instances")}
    if "" in named:
        if len(signature.inputs) != 1:
            raise tfserving.invalid(f"signature '{signature.name}' takes {len(signature.inputs)} inputs: give an "
                                    f"object keyed by input name; it takes {tfserving.predict_takes(handle, signature)}")
        named = {next(iter(signature.inputs)): named[""]}
    limit = current().settings.max_tensor_bytes
    feeds = {}
    for key, (value, where) in named.items():
        port = tfserving.predict_input(handle, signature, key, where)
        feeds[key] = json_tensors.to_array(value, port, where, limit)
    return feeds


def _instances(instances: list[dict[str, Any]]) -> dict[str, tuple[Any, str]]:
    """Row format with named inputs: each input's values across the instances (TF Serving: same keys in each)."""
    keys = list(instances[0])
    for i, instance in enumerate(instances):
        if len(instance) != len(keys) or any(key not in instance for key in keys):
            raise tfserving.invalid(f"instances[{i}] names inputs {', '.join(repr(clip(k)) for k in list(instance)[:5])}"
                                    f" where instances[0] names {', '.join(repr(clip(k)) for k in keys[:5])}: every "
                                    f"instance must name the same inputs")
    return {key: ([instance[key] for instance in instances], f"instances[*].{key}") for key in keys}


def _examples_input(body: dict[str, Any]) -> input_pb2.Input:
    """``examples`` (and ``context``) as TF Serving's ``Input`` proto of ``tf.Example``s."""
    examples = body.get("examples")
    if examples is None:
        raise tfserving.invalid("When method is classify, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise tfserving.invalid("Expecting 'examples' value to be an list/array")
    if not examples:
        raise tfserving.invalid("'examples' value is an empty array")
    request_input = input_pb2.Input()
    context = body.get("context")
    if context is not None:
        listed = request_input.example_list_with_context
        _fill_example(listed.context, context, "context")
    else:
        listed = request_input.example_list
    for i, example in enumerate(examples):
        _fill_example(listed.examples.add(), example, f"examples[{i}]")
    return request_input


def _fill_example(example: Any, features: Any, where: str) -> None:
    """TF Serving's JSON -> ``tf.Example``: decimals a float_list, whole numbers an int64_list,
    strings and ``{"b64"}`` a bytes_list; a list holds values of one kind."""
    if not isinstance(features, dict):
        raise tfserving.invalid(f"{where}: Example must be JSON object but got JSON {shown(features)}")
    for name, content in features.items():
        values = content if isinstance(content, list) else [content]
        kinds = {_feature_kind(value, f"{where}.{clip(name)}") for value in values}
        if len(kinds) > 1:
            raise tfserving.invalid(f"{where}.{clip(name)}: every value of a feature must be of one kind "
                                    f"(decimal, whole number or bytes), got {', '.join(sorted(kinds))}")
        feature = example.features.feature[name]
        if kinds == {"float"}:
            feature.float_list.value.extend(values)
        elif kinds == {"int64"}:
            feature.int64_list.value.extend(values)
        elif kinds == {"bytes"}:
            feature.bytes_list.value.extend(_b64(v, f"{where}.{clip(name)}")[1] if isinstance(v, dict)
                                            else v.encode("utf-8", "surrogatepass") for v in values)


def _feature_kind(value: Any, where: str) -> str:
    if type(value) is float:
        return "float"
    if type(value) is int:
        if not -(1 << 63) <= value < (1 << 63):
            raise tfserving.invalid(f"{where} has {clip(str(value))}: only int64 is supported")
        return "int64"
    if isinstance(value, str) or (isinstance(value, dict) and "b64" in value):
        return "bytes"
    raise tfserving.invalid(f"{where}: a feature value is a number, a string or {{\"b64\": ...}}, got {shown(value)}")

"""TF Serving's REST API (``api_rest.md`` in tensorflow/serving) over the inference core.

``MODEL`` below is ``/v1/models/<name>``, ``/v1/models/<name>/versions/<v>`` or
``/v1/models/<name>/labels/<label>``::

    GET  MODEL            {"model_version_status": [{"version": "1", "state": "AVAILABLE", ...}]}
    GET  MODEL/metadata   {"model_spec": {...}, "metadata": {"signature_def": {...}}}
    POST MODEL:predict    {"instances": [{"b64": "..."}, ...]}  ->  {"predictions": [...]}
                          {"inputs": {"images": [{"b64": "..."}]}}  ->  {"outputs": {...}}
    POST MODEL:classify   {"examples": [{"images": {"b64": "..."}}]}  ->  {"result": [[[label, score], ...]]}

Images are ``{"b64": "<base64 of the encoded image>"}`` (standard or URL-safe alphabet,
padding optional). The signatures are described in ``app/tfserving/__init__.py``. Errors are
``{"error": "<message>"}`` with the HTTP status TF Serving gives the error's code.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from .. import observe, tfserving, wire
from ..images import check_image_count
from ..inference import InferenceCore
from ..services import current
from ..text import clip, shown

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
            return jsonify(tfserving.as_dict(tfserving.model_status(registry, name, version, label)))
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
        if match["verb"] == "regress":
            raise tfserving.TFServingError(tfserving.StatusCode.UNIMPLEMENTED,
                                           "graphserve serves classifiers: use :predict or :classify, not :regress")
        body = _json_body()
        signature = tfserving.signature_name(body.get("signature_name", ""))
        wanted = tfserving.wanted_outputs(signature, _output_filter(body))
        deadline = observe.http_deadline(current().settings.request_timeout_s)
        with tfserving.select(_core(), match["name"], _version(match), match["label"]) as selected:
            observation = observe.current()
            observation.models = selected.models
            if match["verb"] == "classify":
                raw = _examples(body)
                observation.images = len(raw)
                handle, scores = tfserving.classify(selected, raw, deadline)
                names = tfserving.labels(handle)
                return jsonify(result=[[[label, float(s)] for label, s in zip(names, row)] for row in scores])
            raw, columnar = _predict_inputs(body)
            observation.images = len(raw)
            handle, scores = tfserving.classify(selected, raw, deadline)
        return jsonify(_predict_answer(wanted, tfserving.labels(handle), scores, columnar))
    except Exception as exc:
        return _translated(exc)


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
    if ("instances" in body) == ("inputs" in body):
        raise tfserving.invalid("the request must have either \"instances\" (row format) or \"inputs\" "
                                "(columnar format), not both or neither")
    if "instances" in body:
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


def _examples(body: dict[str, Any]) -> list[tuple[str, bytes]]:
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise tfserving.invalid("a classify request needs \"examples\": a list of objects")
    context = body.get("context") or {}
    if not isinstance(context, dict):
        raise tfserving.invalid("\"context\" must be an object")
    check_image_count(len(examples), _max_images())
    raw = []
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise tfserving.invalid(f"examples[{i}] must be an object of features")
        features = {**context, **example}
        key = next((k for k in tfserving.EXAMPLE_FEATURES if k in features), None)
        if key is None:
            raise tfserving.invalid(
                f"examples[{i}] has no feature {' or '.join(repr(k) for k in tfserving.EXAMPLE_FEATURES)} "
                f"holding the encoded image (features: {', '.join(repr(clip(k)) for k in sorted(features)) or 'none'})"
            )
        value = features[key]
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        raw.append(_b64(value, f"examples[{i}].{key}"))
    return raw


# -- writing the answer ---------------------------------------------------------------------

def _predict_answer(outputs: tuple[str, ...], names: list[str], scores: np.ndarray,
                    columnar: bool) -> dict[str, Any]:
    """TF Serving's shapes: one output -> its values; several -> one object per row (row format)
    or one list per output (columnar)."""
    rows = scores.tolist()
    values = {tfserving.SCORES: rows, tfserving.CLASSES: [names] * len(rows)}
    if columnar:
        return {"outputs": values[outputs[0]] if len(outputs) == 1 else {o: values[o] for o in outputs}}
    if len(outputs) == 1:
        return {"predictions": values[outputs[0]]}
    return {"predictions": [{o: values[o][i] for o in outputs} for i in range(len(rows))]}

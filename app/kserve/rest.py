"""KServe v2 REST (Open Inference Protocol): a Flask blueprint that only translates.

    GET  /v2                                     server metadata
    GET  /v2/health/live | /v2/health/ready      200 {"live": true} | {"ready": true}; 400 when not ready
    GET  /v2/models/<m>[/versions/<v>]           model metadata
    GET  /v2/models/<m>[/versions/<v>]/config    Triton's model configuration (perf_analyzer reads it)
    GET  /v2/models/<m>[/versions/<v>]/ready     200 {"name", "ready": true} when it takes requests, else 400
    POST /v2/models/<m>[/versions/<v>]/infer     inference
    POST /v2/repository/index                    [{"name", "version", "state", "reason"}, ...]; body {"ready": true}: READY only
    POST /v2/repository/models/<m>/load|unload   {} (admin token: Authorization: Bearer <token>)

The repository extension's index is open, as ``GET /models`` is; load and unload need the
admin token exactly as ``POST /admin/reload`` does: 401 without it, 403 with a wrong one, 404
while no token is set (the endpoints are off). Their bodies may be empty, or JSON with
``parameters`` (``app.kserve.check_repository_parameters``; anything else is a 400).

An infer body is JSON, optionally followed by the *binary tensor data extension*: the JSON's
length in the ``Inference-Header-Content-Length`` header, each binary input's byte count in its
``parameters.binary_data_size``, the inputs' bytes one after the other in the order of
``inputs`` (little-endian; BOOL one byte; a BYTES element is a 4-byte little-endian length, then
the bytes). That is what ``tritonclient.http`` sends by default. In plain JSON
(``binary_data=False``) ``data`` is flat or nested (row-major), its elements of the input's
datatype (numbers, true/false, strings as UTF-8); the ``image`` input's strings are each
image's **base64** (standard or URL-safe): images are not text. The body may be gzip or deflate
compressed (``Content-Encoding``: one gzip member or one deflate stream, nothing after it); it
may grow to ``max_body_bytes`` once inflated. The model is looked up before the body is read
(an unknown model is a 404 whatever the body); the JSON is counted before it is parsed
(``app.wire.load_json``); every input's size is checked against ``max_tensor_bytes`` (images:
``max_images_per_request``) from the shape it says, before its data is read: a request never
costs more than its body, its inflated body and the tensors it may hold.

Outputs come back in JSON unless asked in binary: per output ``parameters.binary_data``, or for
every output ``parameters.binary_data_output`` on the request. Errors are ``{"error": "..."}``
with the status of ``app.kserve.ERRORS``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from .. import kserve, observe, wire
from ..errors import ApiError
from ..services import current
from ..text import clip, shown
from . import OutputRequest, V2Error

log = logging.getLogger(__name__)

bp = Blueprint("kserve_v2", __name__, url_prefix="/v2")
HEADER_LENGTH = "Inference-Header-Content-Length"


def _error(status: int, message: str) -> ResponseReturnValue:
    return jsonify(error=message), status


@bp.errorhandler(Exception)
def _handle(exc: Exception) -> ResponseReturnValue:
    if isinstance(exc, HTTPException):
        observe.current().error_code = (exc.name or "error").lower().replace(" ", "_")
        return _error(exc.code or 500, exc.description or exc.name)
    answer = kserve.error_answer(exc)
    if answer is None:
        log.exception("unhandled error")
        observe.current().error_code = "internal"
        return _error(500, "internal server error")
    if answer[0] == 500:
        log.error("%s", exc)
    observe.current().error_code = answer[1].lower()  # graphserve_errors_total{code="not_found"}, ... (app.observe), as TF Serving's
    headers = exc.headers if isinstance(exc, ApiError) else {}  # the admin token's 401: WWW-Authenticate
    return jsonify(error=str(exc)), answer[0], headers


@bp.get("")
def server_metadata() -> ResponseReturnValue:
    return jsonify(kserve.server_metadata())


@bp.get("/health/live")
def live() -> ResponseReturnValue:
    return jsonify(live=True)  # tritonclient reads the status only; KServe's SDK parses the body


@bp.get("/health/ready")
def ready() -> ResponseReturnValue:
    if kserve.server_ready(current()):
        return jsonify(ready=True)
    return jsonify(ready=False, error="the server is not ready (no model is available, or it is shutting down)"), 400


@bp.get("/models/<model>")
@bp.get("/models/<model>/versions/<version>")
def model_metadata(model: str, version: str | None = None) -> ResponseReturnValue:
    return jsonify(kserve.model_metadata(current(), model, version))


@bp.get("/models/<model>/config")
@bp.get("/models/<model>/versions/<version>/config")
def model_config(model: str, version: str | None = None) -> ResponseReturnValue:
    """Triton's model configuration extension: ``tritonclient``'s ``get_model_config``, perf_analyzer."""
    return jsonify(kserve.model_config(current(), model, version))


@bp.get("/models/<model>/ready")
@bp.get("/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None) -> ResponseReturnValue:
    """200 ``{"name", "ready": true}`` when ready; else 400 with the reason (the protocol: 4xx is false)."""
    try:
        kserve.model_metadata(current(), model, version)
    except (LookupError, ValueError) as exc:
        return jsonify(name=model, ready=False, error=str(exc)), 400
    return jsonify(name=model, ready=True)


@bp.post("/models/<model>/infer")
@bp.post("/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None) -> ResponseReturnValue:
    observation = observe.current()
    services = current()
    deadline = observe.http_deadline(services.settings.request_timeout_s)
    request_json: dict[str, Any] = {}
    binary_default = False

    def parse(served: kserve.Model) -> kserve.Parsed:  # once the model is known: an unknown one is a 404
        nonlocal binary_default
        header, binary = _split(_body())
        request_json.update(header)
        parsed, binary_default = _parse(served, header, binary)
        return parsed

    def remember(selected: Any) -> None:
        observation.models = selected.models

    answer = kserve.infer(services, model, version, parse, deadline=deadline, on_select=remember)
    observation.images = answer.images
    encoded: dict[str, Any] = {"model_name": answer.name, "model_version": str(answer.version)}
    if isinstance(request_json.get("id"), str):
        encoded["id"] = request_json["id"]
    entries, chunks = [], []
    for tensor, output in answer.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if output.binary if output.binary is not None else binary_default:
            raw = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor.json_data()
        entries.append(entry)
    encoded["outputs"] = entries
    text = json.dumps(encoded, separators=(",", ":")).encode()
    if not chunks:
        return Response(text, content_type="application/json")
    response = Response(b"".join([text, *chunks]), content_type="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(text))
    return response


@bp.post("/repository/index")
def repository_index() -> ResponseReturnValue:
    """Triton's index: every version with its state and reason (open: it shows what /models shows)."""
    ready = _repository_request("index", {"ready"}).get("ready", False)
    if not isinstance(ready, bool):
        raise V2Error(f"Invalid value for 'ready': expected a boolean, got {shown(ready)}")
    return jsonify(kserve.repository_index(current(), ready=ready))


@bp.post("/repository/models/<model>/load")
def repository_load(model: str) -> ResponseReturnValue:
    services = current()
    kserve.authorize(services, request.headers.get("Authorization", ""))  # before the body or the name
    _repository_parameters("load")
    kserve.load_model(services, model, observe.http_deadline(services.settings.reload_wait_s))
    return jsonify({})


@bp.post("/repository/models/<model>/unload")
def repository_unload(model: str) -> ResponseReturnValue:
    services = current()
    kserve.authorize(services, request.headers.get("Authorization", ""))
    _repository_parameters("unload")
    kserve.unload_model(services, model)
    return jsonify({})


def _repository_parameters(action: str) -> None:
    parameters = _parameters(_repository_request(action, {"parameters"}), f"the {action} request")
    kserve.check_repository_parameters(action, parameters)


def _repository_request(action: str, fields: set[str]) -> dict[str, Any]:
    """A repository call's body: empty (what tritonclient sends to the index), or a JSON
    object of ``fields`` only (a misspelt field is a 400, not silently ignored)."""
    text = _body().rest()
    if not text.strip():
        return {}
    try:
        body = wire.load_json(text)
    except wire.BadJson as exc:
        raise V2Error(f"the {action} request is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise V2Error(f"the {action} request must be a JSON object, got {shown(body)}")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise V2Error(f"the {action} request has an unknown field '{clip(unknown[0])}' "
                      f"(it takes: {', '.join(repr(f) for f in sorted(fields))})")
    return body


def _body() -> wire.Body:
    """The request body, inflated as it is read when ``Content-Encoding`` says gzip or deflate."""
    return wire.Body(request.get_data(cache=False), request.headers.get("Content-Encoding", ""),
                     current().settings.max_body_bytes)


def _split(body: wire.Body) -> tuple[dict[str, Any], wire.Body]:
    """The JSON header, and the body left at the binary data after it."""
    raw_length = request.headers.get(HEADER_LENGTH)
    if raw_length is None:
        text = body.rest()
    else:
        given = wire.ascii_count(raw_length.strip())
        text = body.read(given) if given is not None else b""
        if given is None or len(text) < given:
            raise V2Error(f"{HEADER_LENGTH} is {clip(raw_length)!r}; it must be the JSON header's byte count "
                          f"in ASCII digits (at most the body's {len(text)} bytes)")
    try:
        header = wire.load_json(text)
    except wire.BadJson as exc:
        hint = f" (binary data needs the {HEADER_LENGTH} header)" if raw_length is None else ""
        raise V2Error(f"the request is not valid JSON: {exc}{hint}") from None
    if not isinstance(header, dict):
        raise V2Error("the request must be a JSON object with 'inputs'")
    return header, body


def _parse(model: kserve.Model, header: dict[str, Any], binary: wire.Body) -> tuple[kserve.Parsed, bool]:
    """The request for ``model``, and whether outputs default to binary (``binary_data_output``)."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise V2Error(f"'inputs' must be a list of input tensors (objects); model '{model.name}' takes {model.takes()}")
    if len(inputs) > kserve.MAX_INPUTS:
        raise V2Error(f"'inputs' holds {len(inputs)} tensors; at most {kserve.MAX_INPUTS}")
    names = [tensor.get("name") for tensor in inputs]
    parsed = kserve.Parsed(_outputs(header))
    if kserve.takes_images(model, names):
        parsed.images = _images(model, inputs[0], binary)
    else:
        for tensor in inputs:
            key, array = _tensor(model, tensor, binary)
            if key in parsed.feeds:
                raise V2Error(f"input '{key}' is given twice")
            parsed.feeds[key] = array
    if not binary.at_end():
        raise V2Error("bytes follow the JSON and the inputs' binary data (binary_data_size) it announces")
    binary_default = _parameters(header, "the request").get("binary_data_output", False) is True
    return parsed, binary_default


def _binary_size(tensor: dict[str, Any], what: str) -> int | None:
    size = _parameters(tensor, what).get("binary_data_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise V2Error(f"{what}: binary_data_size is {shown(size)}; it must be the input's byte count")
    return size


def _images(model: kserve.Model, tensor: dict[str, Any], binary: wire.Body) -> list[bytes]:
    """The image input: encoded images, binary (length-prefixed) or base64 strings in JSON."""
    count = kserve.check_input(tensor.get("name"), tensor.get("datatype"), tensor.get("shape"), model.max_images)
    what = f"input '{kserve.INPUT}'"
    size = _binary_size(tensor, what)
    if size is None:
        return [_base64(item, i, what) for i, item in enumerate(_flat(tensor.get("data"), count, what))]
    data, consumed = kserve.read_bytes_elements(binary.read, count, what)  # the shape's count, no more
    if consumed != size:
        more = "" if binary.at_end() else ", and more bytes follow them"
        raise V2Error(f"{what}: binary_data_size is {size} but the shape's {count} element(s) take {consumed} "
                      f"bytes{more}")
    return data


def _tensor(model: kserve.Model, tensor: dict[str, Any], binary: wire.Body) -> tuple[str, Any]:
    """One tensor input: its key and array, from JSON ``data`` or the binary data after the JSON."""
    name = tensor.get("name")
    size = _binary_size(tensor, f"input '{clip(name) if isinstance(name, str) else shown(name)}'")
    checked = kserve.tensor_input(model, name, tensor.get("datatype"), tensor.get("shape"), data_bytes=size or 0)
    if size is None:
        return checked.key, kserve.from_values(checked, _flat(tensor.get("data"), checked.count, checked.what))
    raw = binary.read(size)
    if len(raw) < size:
        raise V2Error(f"{checked.what}: binary_data_size is {size} but only {len(raw)} bytes follow")
    return checked.key, kserve.from_raw(checked, raw)


def _outputs(header: dict[str, Any]) -> list[OutputRequest]:
    requested = header.get("outputs", [])
    if not isinstance(requested, list):
        raise V2Error("'outputs' must be a list")
    if len(requested) > kserve.MAX_OUTPUTS:
        raise V2Error(f"'outputs' asks for {len(requested)} outputs; at most {kserve.MAX_OUTPUTS}")
    outputs = []
    for output in requested:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise V2Error("each output must be an object with a 'name' (a string)")
        out_parameters = _parameters(output, f"output '{clip(output['name'])}'")
        classification = out_parameters.get("classification", 0)
        if not isinstance(classification, int) or isinstance(classification, bool):
            raise V2Error(f"classification must be an integer, got {shown(classification)}")
        flag = out_parameters.get("binary_data")
        outputs.append(OutputRequest(output["name"], classification, flag if isinstance(flag, bool) else None))
    return outputs


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise V2Error(f"{what}: 'parameters' must be an object")
    return parameters


def _flat(data: Any, count: int, what: str) -> list[Any]:
    """JSON ``data``, flat or nested (row-major, as v2 allows): walked without recursion, and no
    further than ``count`` + 1 elements; exactly ``count`` of them, or a ``V2Error``."""
    if not isinstance(data, list):
        raise V2Error(f"{what}: 'data' must be a list of {count} elements, got {shown(data)}")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack and len(flat) <= count:
        item = next(stack[-1], stack)  # the stack itself: this level is done
        if item is stack:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            flat.append(item)
    if len(flat) != count:
        held = f"more than {count}" if len(flat) > count else str(len(flat))
        raise V2Error(f"{what}: the shape says {count} elements but its JSON 'data' holds {held}")
    return flat


def _base64(item: Any, i: int, what: str) -> bytes:
    """An image in JSON: its base64 (images are not text)."""
    if not isinstance(item, str):
        raise V2Error(f"{what}: element {i} must be a string, the image's base64")
    try:
        return wire.decode_base64(item)
    except wire.BadBase64:
        raise V2Error(f"{what}: element {i} is not valid base64 (in JSON a BYTES element is the image's "
                      "base64; or send binary data, as tritonclient does by default)") from None

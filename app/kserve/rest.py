"""KServe v2 REST (Open Inference Protocol): a Flask blueprint that only translates.

    GET  /v2                                     server metadata
    GET  /v2/health/live | /v2/health/ready      200 (empty), or 400 when not ready (or draining)
    GET  /v2/models/<m>[/versions/<v>]           model metadata
    GET  /v2/models/<m>[/versions/<v>]/ready     200 (empty) when it takes requests, else 400
    POST /v2/models/<m>[/versions/<v>]/infer     inference

An infer body is JSON, optionally followed by the *binary tensor data extension*: the JSON's
length in the ``Inference-Header-Content-Length`` header, each binary input's byte count in its
``parameters.binary_data_size``; a BYTES element is a 4-byte little-endian length, then the
bytes. That is what ``tritonclient.http`` sends by default. In plain JSON (``binary_data=False``)
a BYTES element is a string; images are not text, so graphserve reads each string as the
image's **base64** (standard or URL-safe). The body may be gzip or deflate compressed
(``Content-Encoding``: one gzip member or one deflate stream, nothing after it); it may grow
to ``max_body_bytes`` once inflated. The JSON is counted before it is parsed
(``app.wire.load_json``) and BYTES elements are read no further than the shape's count, which
is checked against ``max_images_per_request`` first: a request never costs more than its
body, its inflated body and the images it may hold.

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
    return _error(answer[0], str(exc))


@bp.get("")
def server_metadata() -> ResponseReturnValue:
    return jsonify(kserve.server_metadata())


@bp.get("/health/live")
def live() -> ResponseReturnValue:
    return "", 200  # as Triton: the status is the answer, the body is empty


@bp.get("/health/ready")
def ready() -> ResponseReturnValue:
    if kserve.server_ready(current()):
        return "", 200
    return _error(400, "the server is not ready (no model is available, or it is shutting down)")


@bp.get("/models/<model>")
@bp.get("/models/<model>/versions/<version>")
def model_metadata(model: str, version: str | None = None) -> ResponseReturnValue:
    return jsonify(kserve.model_metadata(current(), model, version))


@bp.get("/models/<model>/ready")
@bp.get("/models/<model>/versions/<version>/ready")
def model_ready(model: str, version: str | None = None) -> ResponseReturnValue:
    """200 (empty) when ready; else 400 with the reason, as Triton (the protocol: 4xx is false)."""
    try:
        kserve.model_metadata(current(), model, version)
    except (LookupError, ValueError) as exc:
        return _error(400, str(exc))
    return "", 200


@bp.post("/models/<model>/infer")
@bp.post("/models/<model>/versions/<version>/infer")
def infer(model: str, version: str | None = None) -> ResponseReturnValue:
    header, binary = _split(_body())
    inputs, outputs, binary_default = _parse(header, binary)

    def remember(selected: Any) -> None:
        observation = observe.current()
        observation.models = selected.models
        observation.images = len(inputs)

    services = current()
    deadline = observe.http_deadline(services.settings.request_timeout_s)
    result, tensors = kserve.infer(services, model, version, inputs, outputs, deadline=deadline, on_select=remember)
    answer: dict[str, Any] = {"model_name": result.name, "model_version": str(result.version)}
    if isinstance(header.get("id"), str):
        answer["id"] = header["id"]
    encoded, chunks = [], []
    for tensor, output in zip(tensors, outputs or [OutputRequest()]):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if output.binary if output.binary is not None else binary_default:
            raw = tensor.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = tensor.json_data()
        encoded.append(entry)
    answer["outputs"] = encoded
    text = json.dumps(answer, separators=(",", ":")).encode()
    if not chunks:
        return Response(text, content_type="application/json")
    response = Response(b"".join([text, *chunks]), content_type="application/octet-stream")
    response.headers[HEADER_LENGTH] = str(len(text))
    return response


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


def _parse(header: dict[str, Any], binary: wire.Body) -> tuple[list[bytes], list[OutputRequest], bool]:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise V2Error(f"'inputs' must hold one tensor, '{kserve.INPUT}' (BYTES, shape [-1])")
    tensor = inputs[0]
    count = kserve.check_input(tensor.get("name"), tensor.get("datatype"), tensor.get("shape"),
                               current().settings.max_images_per_request)
    parameters = _parameters(tensor, f"input '{kserve.INPUT}'")
    size = parameters.get("binary_data_size")
    what = f"input '{kserve.INPUT}'"
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise V2Error(f"{what}: binary_data_size is {shown(size)}; it must be the input's byte count")
        data, consumed = kserve.read_bytes_elements(binary.read, count, what)  # the shape's count, no more
        if consumed != size or not binary.at_end():
            more = "" if binary.at_end() else ", and more bytes follow them"
            raise V2Error(f"{what}: binary_data_size is {size} but the shape's {count} element(s) take "
                          f"{consumed} bytes{more}")
    else:
        if not binary.at_end():
            raise V2Error("bytes follow the JSON but no input gives a binary_data_size")
        data = _json_bytes(tensor.get("data"), count, what)

    request_parameters = _parameters(header, "the request")
    binary_default = request_parameters.get("binary_data_output", False) is True
    outputs = []
    requested = header.get("outputs", [])
    if not isinstance(requested, list):
        raise V2Error("'outputs' must be a list")
    if len(requested) > kserve.MAX_OUTPUTS:
        raise V2Error(f"'outputs' asks for {len(requested)} outputs; at most {kserve.MAX_OUTPUTS}")
    for output in requested:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise V2Error("each output must be an object with a 'name' (a string)")
        out_parameters = _parameters(output, f"output '{clip(output['name'])}'")
        classification = out_parameters.get("classification", 0)
        if not isinstance(classification, int) or isinstance(classification, bool):
            raise V2Error(f"classification must be an integer, got {shown(classification)}")
        flag = out_parameters.get("binary_data")
        outputs.append(OutputRequest(output["name"], classification, flag if isinstance(flag, bool) else None))
    return data, outputs, binary_default


def _parameters(obj: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = obj.get("parameters", {})
    if not isinstance(parameters, dict):
        raise V2Error(f"{what}: 'parameters' must be an object")
    return parameters


def _json_bytes(data: Any, count: int, what: str) -> list[bytes]:
    """BYTES elements in JSON: base64 strings (nested lists are flattened, as v2 allows; walked
    without recursion, and no further than ``count`` + 1 elements)."""
    if not isinstance(data, list):
        raise V2Error(f"{what}: 'data' must be a list of {count} base64 strings, got {shown(data)}")
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
        raise V2Error(f"{what}: the shape says {count} elements but 'data' holds {held}")
    images = []
    for i, item in enumerate(flat):
        if not isinstance(item, str):
            raise V2Error(f"{what}: element {i} must be a string, the image's base64")
        try:
            images.append(wire.decode_base64(item))
        except wire.BadBase64:
            raise V2Error(f"{what}: element {i} is not valid base64 (in JSON a BYTES element is the image's "
                          "base64; or send binary data, as tritonclient does by default)") from None
    return images

"""Fuzz every front door with hypothesis: TF Serving REST and gRPC, KServe v2 REST and gRPC, and ours.

``tests/test_fuzz.py`` fuzzes our own REST door in depth; this file extends it to the
compatible APIs, structure-aware (valid envelopes with one or more hostile fields) and with
raw random bytes. Every case must end in a 2xx or the door's own error shape:

- TF Serving REST (``/v1/...``) and KServe v2 REST (``/v2/...``): a 4xx with ``{"error": "..."}``;
- our REST (everything else): a 4xx with ``{"error": {"code", "message"}}`` (a 3xx is allowed
  there, not under ``/v1`` or ``/v2``, where a client expects JSON);
- gRPC: OK, or any non-OK code but ``INTERNAL`` and ``UNKNOWN`` (what an uncaught exception gives).

Never a 5xx. After every case the same door still answers a good request with the right
answer (a real digit, the class it must get).

What is thrown: wrong types for every field (``signature_name`` as int/list/object,
``output_filter``, ``parameters``, shapes, datatypes), deep nesting (1,000 to 100,000 levels),
huge, negative and unicode versions (``١``, ``²``), lying ``Inference-Header-Content-Length``,
``binary_data_size`` and BYTES length prefixes, lying and huge shapes, TensorProto dtype
values out of range (9999), bad base64, empty path segments and encoded slashes
(``/v1/models//metadata``, ``/v1/models/%2Ftmp%2Fx:predict``, ``//admin//reload``), gzip and
deflate bombs (raw and zlib-wrapped), trailing data after a gzip member, and raw random bytes
as HTTP bodies and as the request message of every gRPC method.

Reproducible: ``derandomize=True``, no example database. The default run is a few hundred
cases per door (about a minute on two cores); ``-m slow`` runs a larger one whose size per
door ``GRAPHSERVE_FUZZ_DOOR_EXAMPLES`` sets (default 3,000).
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import unquote_to_bytes

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.digits import png_bytes

pytestmark = pytest.mark.filterwarnings("ignore")

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
# GRAPHSERVE_FUZZ_SURVEY=FILE: record every problem (one JSON line each) in FILE instead of failing at the
# first, to list what is still open (the default run fails at the first problem per test, as a test should).
SURVEY = os.environ.get("GRAPHSERVE_FUZZ_SURVEY")
SLOW_EXAMPLES = int(os.environ.get("GRAPHSERVE_FUZZ_DOOR_EXAMPLES", "3000"))
BAD_GRPC = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
GRPC_TIMEOUT = 30.0


# -- good requests (known answers) -------------------------------------------------------------


@cache
def good_digit() -> tuple[bytes, int]:
    """A test digit's PNG and the class both digit models give it (its true label; both models get it right)."""
    from tests.digits import digit_data

    data = digit_data()
    return png_bytes(data.test_images[0]), int(data.test_y[0])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _argmax(row) -> int:
    return max(range(len(row)), key=lambda i: row[i])


def good_tf_rest(client) -> None:
    image, label = good_digit()
    answer = client.post("/v1/models/digits8:predict", json={"instances": [{"b64": _b64(image)}]})
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    assert _argmax(answer.get_json()["predictions"][0]["scores"]) == label


def good_v2_rest(client) -> None:
    image, label = good_digit()
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(image)]}]}
    answer = client.post("/v2/models/digits8/infer", json=body)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    assert _argmax(answer.get_json()["outputs"][0]["data"][:10]) == label


def good_our_rest(client) -> None:
    image, label = good_digit()
    answer = client.post("/image_classification?model=digits8&top_k=1", data=image, content_type="image/png")
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    assert answer.get_json()["models"]["digits8"]["results"][0]["top_k"][0]["class_id"] == label


def good_tf_grpc(channel) -> None:
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    image, label = good_digit()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits8"
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[image])
    tensor.tensor_shape.dim.add(size=1)
    request.inputs["images"].CopyFrom(tensor)
    import tensorflow as tf

    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=GRPC_TIMEOUT)
    scores = tf.make_ndarray(response.outputs["scores"])
    assert int(scores[0].argmax()) == label


def good_v2_grpc(channel) -> None:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    image, label = good_digit()
    request = service_pb2.ModelInferRequest(model_name="digits8")
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(struct.pack("<I", len(image)) + image)
    response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=GRPC_TIMEOUT)
    scores = struct.unpack("<10f", response.raw_output_contents[0][:40])
    assert _argmax(scores) == label


# -- checking an answer ----------------------------------------------------------------------------


@dataclass
class HttpCase:
    method: str = "POST"
    path: str = "/v1/models/digits8:predict"
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    note: str = ""

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 300 else self.body[:300] + f"...(+{len(self.body) - 300} bytes)".encode()
        return f"HttpCase({self.method} {self.path[:300]!r} headers={self.headers!r} note={self.note!r} body={body!r})"


def door_of(path: str) -> str:
    """Which door a path belongs to, as a client would see it (leading slashes merged)."""
    stripped = "/" + path.lstrip("/")
    if stripped == "/v1" or stripped.startswith("/v1/"):
        return "tf_rest"
    if stripped == "/v2" or stripped.startswith("/v2/"):
        return "v2_rest"
    return "our_rest"


def send_http(client, case: HttpCase):
    # PATH_INFO as waitress hands it over (percent-decoded, bytes as latin-1), set directly
    path_info = unquote_to_bytes(case.path).decode("latin-1")
    headers = {"Content-Type": "application/json", **case.headers}
    return client.open("/", method=case.method, data=case.body, headers=headers,
                       environ_overrides={"PATH_INFO": path_info})


def http_problem(case: HttpCase, response) -> str | None:
    """What is wrong with ``response`` for ``case`` (None: nothing)."""
    status = response.status_code
    text = response.get_data(as_text=True)
    door = door_of(case.path)
    if status >= 500:
        return f"{status} on {door}: {text[:300]}"
    if 300 <= status < 400:
        if door != "our_rest":
            return f"{status} redirect to {response.headers.get('Location')!r} ({response.content_type}) on {door}"
        return None
    if status < 400 or case.method == "HEAD":
        return None
    if not response.is_json:
        return f"{status} on {door} answered as {response.content_type}: {text[:200]!r}"
    try:
        body = json.loads(text)
    except ValueError:
        return f"{status} on {door}: body is not JSON: {text[:200]!r}"
    if door == "our_rest":
        ok = (isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], dict)
              and set(body["error"]) == {"code", "message"} and isinstance(body["error"]["message"], str))
    else:
        ok = isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    if not ok:
        return f"{status} on {door}: not the door's error shape: {text[:300]}"
    if len(text) > 5000:
        return f"{status} on {door}: error body of {len(text)} chars echoes the input"
    return None


GOOD_HTTP = {"tf_rest": good_tf_rest, "v2_rest": good_v2_rest, "our_rest": good_our_rest}


def survey(door: str, problem: str, case: str) -> None:
    with open(SURVEY, "a", encoding="utf-8") as out:
        out.write(json.dumps({"door": door, "problem": problem[:600], "case": case[:1500]}) + "\n")


def check_http(client, case: HttpCase) -> None:
    response = send_http(client, case)
    problem = http_problem(case, response)
    if SURVEY:
        if problem:
            survey(door_of(case.path), problem, repr(case))
        try:
            GOOD_HTTP[door_of(case.path)](client)
        except AssertionError as error:
            survey(door_of(case.path), f"good request failed after the case: {error}", repr(case))
        return
    assert problem is None, f"{problem}\n  for {case!r}"
    GOOD_HTTP[door_of(case.path)](client)


def check_grpc(channel, method: str, request: bytes, good, note: str = "") -> None:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    started = time.monotonic()
    try:
        call(request, timeout=GRPC_TIMEOUT)
    except grpc.RpcError as error:
        if SURVEY:
            if error.code() in BAD_GRPC or time.monotonic() - started >= GRPC_TIMEOUT - 1:
                survey(method, f"{error.code().name}: {error.details()!r}", f"{note} request={request[:300]!r}")
            try:
                good(channel)
            except Exception as failed:  # noqa: BLE001 - recorded, the survey goes on
                survey(method, f"good request failed after the case: {failed!r}", f"{note} request={request[:300]!r}")
            return
        code = error.code()
        shown = f"{method} {note} request={request[:300]!r}{'...' if len(request) > 300 else ''}"
        details = (error.details() or "")[:300]
        assert code not in BAD_GRPC, f"{code.name}: {details!r} for {shown}"
        assert not (code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - started >= GRPC_TIMEOUT - 1), \
            f"no answer within {GRPC_TIMEOUT} s for {shown}"
    good(channel)


# -- hostile values ----------------------------------------------------------------------------------

any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)
HUGE_INTS = st.sampled_from([-1, 0, 2**31 - 1, 2**31, 2**32, 2**63 - 1, -(2**63), 2**64, 10**30, -(10**30)])
UNICODE_NUMBERS = st.sampled_from(["١", "²", "٣", "１", "⁹", "½", "Ⅻ", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x1",
                                   "01", "", "9" * 40, "1_0", "\x00", "NaN", "inf", "𝟏"])
scalars = (st.none() | st.booleans() | st.integers() | HUGE_INTS | st.floats() | any_text | UNICODE_NUMBERS)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(any_text, c, max_size=4),
                           max_leaves=12)
DEPTH = st.sampled_from([1000, 5000, 20_000, 100_000])


def deep(depth: int, kind: str) -> str:
    return {"list": "[" * depth + "]" * depth, "dict": '{"a":' * depth + "1" + "}" * depth,
            "open": "[" * depth, "mixed": '[{"b64":' * depth + '""' + "}]" * depth}[kind]


DEEP_KIND = st.sampled_from(["list", "dict", "open", "mixed"])


@st.composite
def hostile(draw) -> object:
    """A wrong-typed value; sometimes a marker that is replaced by deep nesting in the JSON text."""
    if draw(st.integers(0, 9)) == 0:
        return DeepMarker(draw(DEPTH), draw(DEEP_KIND))
    return draw(json_values)


@dataclass(frozen=True)
class DeepMarker:
    depth: int
    kind: str


def dumps(value: object) -> bytes:
    """JSON text of ``value`` with every DeepMarker spliced in as its deep nesting."""
    markers: list[DeepMarker] = []

    def walk(v):
        if isinstance(v, DeepMarker):
            markers.append(v)
            return f"@@DEEP{len(markers) - 1}@@"
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    text = json.dumps(walk(value))
    for i, marker in enumerate(markers):
        text = text.replace(f'"@@DEEP{i}@@"', deep(marker.depth, marker.kind))
    return text.encode("utf-8", "surrogatepass")


def maybe(draw, good: object) -> object:
    """The good value most of the time, else a hostile one."""
    return good if draw(st.integers(0, 2)) else draw(hostile())


RANDOM_BODY = st.binary(max_size=512)


# -- compressed bodies ---------------------------------------------------------------------------------


@cache
def bombs() -> dict[str, bytes]:
    """Compressed bodies: 64 MiB of zeros (twice the body limit) as gzip, raw deflate and zlib; trailing data."""
    out = {}
    chunk = b"\0" * (1 << 20)
    for name, wbits in (("gzip", 31), ("deflate-raw", -15), ("deflate-zlib", 15)):
        compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
        out[name] = b"".join(compressor.compress(chunk) for _ in range(64)) + compressor.flush()
    image, _ = good_digit()
    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64(image)]}]})
    member = gzip.compress(body.encode())
    out["gzip-trailing-garbage"] = member + b"garbage after the member"
    out["gzip-two-members"] = member + member
    out["gzip-truncated"] = member[:-4]
    out["gzip-bad-crc"] = member[:-8] + b"\0\0\0\0" + member[-4:]
    out["gzip-json-deep"] = gzip.compress(b"[" * 1_000_000)
    return out


BOMB = st.sampled_from(["gzip", "deflate-raw", "deflate-zlib", "gzip-trailing-garbage", "gzip-two-members",
                        "gzip-truncated", "gzip-bad-crc", "gzip-json-deep"])
ENCODING = st.sampled_from(["gzip", "deflate", "GZIP", "x-gzip", "gzip, gzip", "identity", "br", "", "deflate, gzip"])


# -- TF Serving REST ---------------------------------------------------------------------------------------

TF_PATHS = st.sampled_from([
    "/v1/models/digits8:predict", "/v1/models/digits8/versions/1:predict", "/v1/models/digits8/labels/stable:predict",
    "/v1/models/digits8:classify", "/v1/models/digits8:regress", "/v1/models/digits8", "/v1/models/digits8/metadata",
    "/v1/models//metadata", "/v1/models/%2Ftmp%2Fx:predict", "/v1/models/%2Ftmp%2Fx", "/v1/models/digits8/versions/١:predict",
    "/v1/models/digits8/versions/²:predict", "/v1/models/digits8/versions/-1", "/v1/models/digits8/versions/²",
    "/v1/models/digits8/versions/" + "9" * 30 + ":predict", "/v1/models/digits8/versions/:predict",
    "/v1/models/digits8/versions//metadata", "/v1//models/digits8:predict", "/v1/models/digits8:", "/v1/models/:predict",
    "/v1/models/digits8:predict:predict", "/v1/models/digits8/labels/:predict", "/v1/models/digits8/labels/%2F..",
    "/v1/models/digits8%00:predict", "/v1/models/digits8/", "/v1/models/", "/v1/", "/v1", "//v1/models/digits8:predict",
    "/v1/models/digits8/versions/1/metadata/", "/v1/models/..%2Fadmin:predict", "/v1/models/" + "a" * 5000 + ":predict",
])
INPUT_NAME = st.sampled_from(["images", "images", "images", "image", "", "images\x00"]) | any_text
TF_KIND = st.sampled_from(["instances", "instances", "inputs", "classify", "both", "deep", "random", "raw", "bomb"])


@st.composite
def tf_rest_cases(draw) -> HttpCase:
    image, _ = good_digit()
    good_b64 = {"b64": _b64(image)}
    kind = draw(TF_KIND)
    path = draw(TF_PATHS)
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "HEAD"]))
    headers: dict[str, str] = {}
    envelope: dict = {}
    if draw(st.booleans()):
        envelope["signature_name"] = maybe(draw, draw(st.sampled_from(["serving_default", "scores", "nope"])))
    if draw(st.integers(0, 3)) == 0:
        envelope["output_filter"] = maybe(draw, ["scores"])
    if kind in ("instances", "both"):
        envelope["instances"] = maybe(draw, [maybe(draw, good_b64) if draw(st.booleans()) else
                                             {"images": maybe(draw, good_b64)}])
    if kind in ("inputs", "both"):
        envelope["inputs"] = maybe(draw, {draw(INPUT_NAME): maybe(draw, [maybe(draw, good_b64)])})
    if kind == "classify":
        envelope["examples"] = maybe(draw, [{"images": maybe(draw, good_b64)}])
        envelope["context"] = maybe(draw, {})
    if kind in ("instances", "inputs", "classify", "both"):
        if draw(st.integers(0, 4)) == 0:
            envelope[draw(any_text)] = draw(hostile())
        body = dumps(envelope)
    elif kind == "deep":
        body = deep(draw(DEPTH), draw(DEEP_KIND)).encode()
        if draw(st.booleans()):
            body = b'{"instances":' + body + b"}"
    elif kind == "random":
        body = dumps(draw(hostile()))
    elif kind == "raw":
        body = draw(RANDOM_BODY)
    else:
        body = bombs()[draw(BOMB)]
        headers["Content-Encoding"] = draw(ENCODING)
    return HttpCase(method=method, path=path, body=body, headers=headers, note=kind)


# -- KServe v2 REST ----------------------------------------------------------------------------------------

V2_PATHS = st.sampled_from([
    "/v2/models/digits8/infer", "/v2/models/digits8/infer", "/v2/models/digits8/versions/1/infer",
    "/v2/models/digits8/versions/²/infer", "/v2/models/digits8/versions/١/infer", "/v2/models/digits8/versions/-1/infer",
    "/v2/models/digits8/versions/" + "9" * 30 + "/infer", "/v2/models//ready", "/v2/models//infer", "/v2/models/digits8/ready",
    "/v2/models/digits8/versions//ready", "/v2/models/digits8", "/v2/models/%2Ftmp%2Fx/infer", "/v2/models/%2Ftmp%2Fx",
    "/v2", "/v2/", "/v2/health/live", "/v2/health//ready", "//v2//models//digits8//infer", "/v2/models/digits8/infer/",
    "/v2/models/digits8/versions/1", "/v2/models/digits8%00/infer", "/v2/models/" + "b" * 5000 + "/infer",
    "/v2/repository/index", "/v2/models/digits8/stats", "//admin//reload", "/admin/reload", "/admin//reload",
])
V2_KIND = st.sampled_from(["json", "json", "json", "binary", "binary", "binary", "deep", "random", "raw", "bomb", "bomb"])
HEADER_LENGTH = st.sampled_from(["²", "١", "-1", "0", "+5", " 5", "5 ", "0x10", "1e3", "", "9" * 30, str(2**63),
                                 "NaN", "true"])
BINARY_LIE = st.sampled_from(["exact", "exact", "short", "long", "negative", "huge", "string", "float", "zero"])
PREFIX_LIE = st.sampled_from(["exact", "exact", "short", "long", "huge", "missing", "extra"])
SHAPE = st.sampled_from([[1], [1], [2], [0], [-1], [2**62], [2**63 - 1], [1, 1], [], [10**6, 10**6], [1, -1],
                         ["1"], [1.5], None, "1", {"a": 1}])


@st.composite
def bytes_elements(draw, image: bytes) -> bytes:
    """A BYTES tensor's raw data: a 4-byte little-endian length per element, maybe lying."""
    lie = draw(PREFIX_LIE)
    if lie == "exact":
        return struct.pack("<I", len(image)) + image
    if lie == "short":
        return struct.pack("<I", len(image) - 10) + image
    if lie == "long":
        return struct.pack("<I", len(image) + 10) + image
    if lie == "huge":
        return struct.pack("<I", 2**32 - 1) + image
    if lie == "missing":
        return image
    return struct.pack("<I", len(image)) + image + b"\x01\x00"


@st.composite
def v2_rest_cases(draw) -> HttpCase:
    image, _ = good_digit()
    kind = draw(V2_KIND)
    path = draw(V2_PATHS)
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "DELETE"]))
    headers: dict[str, str] = {}
    tensor: dict = {"name": maybe(draw, "image"), "datatype": maybe(draw, draw(st.sampled_from(["BYTES", "FP32", "bytes"]))),
                    "shape": maybe(draw, draw(SHAPE))}
    if draw(st.integers(0, 3)) == 0:
        tensor["parameters"] = draw(hostile())
    envelope: dict = {"inputs": [tensor]}
    if draw(st.integers(0, 2)) == 0:
        envelope["outputs"] = maybe(draw, [{"name": maybe(draw, "scores"),
                                            "parameters": maybe(draw, {"classification": maybe(draw, 3),
                                                                       "binary_data": maybe(draw, True)})}])
    if draw(st.integers(0, 4)) == 0:
        envelope["parameters"] = draw(hostile())
    if draw(st.integers(0, 4)) == 0:
        envelope["id"] = draw(hostile())
    if draw(st.integers(0, 6)) == 0:
        envelope = maybe(draw, {"inputs": maybe(draw, envelope["inputs"])})
    if kind == "json":
        if isinstance(envelope, dict) and isinstance(envelope.get("inputs"), list) and envelope["inputs"]:
            first = envelope["inputs"][0]
            if isinstance(first, dict):
                first["data"] = maybe(draw, [maybe(draw, _b64(image)) if draw(st.booleans()) else
                                             draw(st.sampled_from(["%%%", "AA", "====", "", "A" * 5, _b64(image)[:-3]]))])
        body = dumps(envelope)
    elif kind == "binary":
        raw = draw(bytes_elements(image))
        lie = draw(BINARY_LIE)
        size = {"exact": len(raw), "short": len(raw) - 1, "long": len(raw) + 1, "negative": -1, "huge": 2**63,
                "string": str(len(raw)), "float": len(raw) + 0.5, "zero": 0}[lie]
        if isinstance(envelope, dict) and isinstance(envelope.get("inputs"), list) and envelope["inputs"] \
                and isinstance(envelope["inputs"][0], dict):
            envelope["inputs"][0].setdefault("parameters", {})
            if isinstance(envelope["inputs"][0]["parameters"], dict):
                envelope["inputs"][0]["parameters"]["binary_data_size"] = size
        header = dumps(envelope)
        length = str(len(header)) if draw(st.integers(0, 2)) else draw(HEADER_LENGTH | st.integers(-5, 10**6).map(str))
        headers["Inference-Header-Content-Length"] = length
        headers["Content-Type"] = draw(st.sampled_from(["application/octet-stream", "application/json"]))
        body = header + raw
        if draw(st.integers(0, 3)) == 0:
            encoding = draw(st.sampled_from(["gzip", "deflate"]))
            body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
            headers["Content-Encoding"] = encoding
    elif kind == "deep":
        body = deep(draw(DEPTH), draw(DEEP_KIND)).encode()
        if draw(st.booleans()):
            body = b'{"inputs":' + body + b"}"
    elif kind == "random":
        body = dumps(draw(hostile()))
    elif kind == "raw":
        body = draw(RANDOM_BODY)
        if draw(st.booleans()):
            headers["Inference-Header-Content-Length"] = draw(HEADER_LENGTH)
    else:
        body = bombs()[draw(BOMB)]
        headers["Content-Encoding"] = draw(ENCODING)
    return HttpCase(method=method, path=path, body=body, headers=headers, note=kind)


# -- our REST (the hostile cases the other doors share; test_fuzz.py has the rest) ----------------------

OUR_PATHS = st.sampled_from(["/image_classification", "//image_classification", "/image_classification/",
                             "//admin//reload", "/admin//reload", "/admin/reload", "//models", "/models//",
                             "/%2Fimage_classification", "/image_classification%2F"])


@st.composite
def our_rest_cases(draw) -> HttpCase:
    kind = draw(st.sampled_from(["bomb", "bomb", "deep", "raw", "random"]))
    headers: dict[str, str] = {}
    if kind == "bomb":
        body = bombs()[draw(BOMB)]
        headers["Content-Encoding"] = draw(ENCODING)
    elif kind == "deep":
        body = b'{"instances":' + deep(draw(DEPTH), draw(DEEP_KIND)).encode() + b"}"
    elif kind == "raw":
        body = draw(RANDOM_BODY)
        headers["Content-Type"] = draw(st.sampled_from(["image/png", "application/octet-stream", "multipart/form-data"]))
    else:
        body = dumps({"instances": draw(hostile())})
    return HttpCase(method=draw(st.sampled_from(["POST", "POST", "GET"])), path=draw(OUR_PATHS), body=body,
                    headers=headers, note=kind)


# -- TF Serving gRPC -----------------------------------------------------------------------------------------

TF_METHODS = ["/tensorflow.serving.PredictionService/Predict", "/tensorflow.serving.PredictionService/Classify",
              "/tensorflow.serving.PredictionService/Regress", "/tensorflow.serving.PredictionService/MultiInference",
              "/tensorflow.serving.PredictionService/GetModelMetadata", "/tensorflow.serving.ModelService/GetModelStatus",
              "/tensorflow.serving.ModelService/HandleReloadConfigRequest"]
V2_METHODS = [f"/inference.GRPCInferenceService/{name}" for name in
              ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
               "ModelConfig", "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "CudaSharedMemoryStatus")]
MODEL_NAME = st.sampled_from(["digits8", "digits8", "digits16", "", "nope", "/tmp/x", "../digits8", "digits8\x00",
                              "é" * 100, "a" * 10_000, "all", "digits8,digits16"])
VERSION_TEXT = st.sampled_from(["", "1", "2", "0", "-1", "١", "²", "9" * 30, " 1", "1.0", "stable", "\x00", "a" * 5000])
GRPC_STRING = MODEL_NAME | VERSION_TEXT | any_text
DTYPES = st.sampled_from([7, 7, 7, 0, 1, 21, 23, -1, 9999, 2**31 - 1, 101, 107])  # 7: DT_STRING
DIM = st.sampled_from([1, 1, 1, 0, -1, -2, 2, 2**62, 2**63 - 1, -(2**63), 10**9])


def _tensor(draw, image: bytes):
    from tensorflow.core.framework import tensor_pb2

    tensor = tensor_pb2.TensorProto()
    tensor.dtype = draw(DTYPES)
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2, 3, 40]))):
        tensor.tensor_shape.dim.add(size=draw(DIM))
    if draw(st.integers(0, 6)) == 0:
        tensor.tensor_shape.unknown_rank = True
    values = draw(st.sampled_from(["image", "image", "empty", "garbage", "many", "content", "floats", "mixed"]))
    if values == "image":
        tensor.string_val.append(image)
    elif values == "garbage":
        tensor.string_val.append(draw(st.binary(max_size=64)))
    elif values == "many":
        tensor.string_val.extend([b""] * draw(st.sampled_from([2, 100, 10_000])))
    elif values == "content":
        tensor.tensor_content = draw(st.binary(max_size=256))
    elif values == "floats":
        tensor.float_val.extend([1.0, float("nan")])
    elif values == "mixed":
        tensor.string_val.append(image)
        tensor.int_val.extend([1, 2])
        tensor.tensor_content = b"\x00" * 8
    if draw(st.integers(0, 5)) == 0:
        tensor.version_number = draw(st.integers(-(2**31), 2**31 - 1))
    return tensor


def _model_spec(draw, spec) -> None:
    spec.name = draw(MODEL_NAME)
    which = draw(st.sampled_from(["none", "none", "version", "label", "both"]))
    if which in ("version", "both"):
        spec.version.value = draw(st.sampled_from([1, 2, 0, -1, 2**63 - 1, -(2**63), 10**12]))
    if which in ("label", "both"):
        spec.version_label = draw(GRPC_STRING)
    if draw(st.booleans()):
        spec.signature_name = draw(st.sampled_from(["serving_default", "scores", "", "nope", "\x00"]) | any_text)


@st.composite
def tf_grpc_cases(draw) -> tuple[str, bytes, str]:
    from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, get_model_status_pb2, predict_pb2

    image, _ = good_digit()
    kind = draw(st.sampled_from(["Predict", "Predict", "Predict", "Classify", "Classify", "GetModelMetadata",
                                 "GetModelStatus", "raw"]))
    if kind == "raw":
        return draw(st.sampled_from(TF_METHODS)), draw(st.binary(max_size=512)), "raw bytes"
    if kind == "Predict":
        request = predict_pb2.PredictRequest()
        _model_spec(draw, request.model_spec)
        for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
            request.inputs[draw(st.sampled_from(["images", "images", "", "x", "image"]))].CopyFrom(_tensor(draw, image))
        request.output_filter.extend(draw(st.lists(st.sampled_from(["scores", "classes", "", "nope", "scores"]),
                                                   max_size=3)))
        method = "/tensorflow.serving.PredictionService/Predict"
    elif kind == "Classify":
        request = classification_pb2.ClassificationRequest()
        _model_spec(draw, request.model_spec)
        where = draw(st.sampled_from(["list", "list", "context", "empty"]))
        feature_name = draw(st.sampled_from(["images", "image/encoded", "", "x"]))
        value = draw(st.sampled_from(["image", "garbage", "empty", "floats", "many"]))
        examples = (request.input.example_list.examples if where == "list"
                    else request.input.example_list_with_context.examples)
        for _ in range(draw(st.sampled_from([1, 1, 0, 3]))):
            feature = examples.add().features.feature[feature_name]
            if value == "image":
                feature.bytes_list.value.append(image)
            elif value == "garbage":
                feature.bytes_list.value.append(draw(st.binary(max_size=32)))
            elif value == "floats":
                feature.float_list.value.extend([1.0, 2.0])
            elif value == "many":
                feature.bytes_list.value.extend([image] * 2 + [b""] * 100)
        if where == "context":
            request.input.example_list_with_context.context.features.feature["images"].bytes_list.value.append(image)
        method = "/tensorflow.serving.PredictionService/Classify"
    elif kind == "GetModelMetadata":
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        _model_spec(draw, request.model_spec)
        request.metadata_field.extend(draw(st.lists(st.sampled_from(["signature_def", "", "x"]) | any_text,
                                                    max_size=3)))
        method = "/tensorflow.serving.PredictionService/GetModelMetadata"
    else:
        request = get_model_status_pb2.GetModelStatusRequest()
        _model_spec(draw, request.model_spec)
        method = "/tensorflow.serving.ModelService/GetModelStatus"
    data = request.SerializeToString()
    if draw(st.integers(0, 9)) == 0:  # a valid message with a damaged tail
        data = data[: draw(st.integers(0, len(data)))] + draw(st.binary(max_size=16))
    return method, data, f"{kind} {request!s}"[:400]


# -- KServe v2 gRPC ---------------------------------------------------------------------------------------------


@st.composite
def v2_grpc_cases(draw) -> tuple[str, bytes, str]:
    from tritonclient.grpc import service_pb2

    image, _ = good_digit()
    kind = draw(st.sampled_from(["ModelInfer", "ModelInfer", "ModelInfer", "ModelInfer", "ModelReady",
                                 "ModelMetadata", "raw"]))
    if kind == "raw":
        return draw(st.sampled_from(V2_METHODS)), draw(st.binary(max_size=512)), "raw bytes"
    if kind in ("ModelReady", "ModelMetadata"):
        request = getattr(service_pb2, f"{kind}Request")(name=draw(MODEL_NAME), version=draw(VERSION_TEXT))
        return f"/inference.GRPCInferenceService/{kind}", request.SerializeToString(), f"{kind} {request!s}"[:400]
    request = service_pb2.ModelInferRequest(model_name=draw(MODEL_NAME))
    if draw(st.booleans()):
        request.model_version = draw(VERSION_TEXT)
    if draw(st.integers(0, 3)) == 0:
        request.id = draw(any_text)
    count = draw(st.sampled_from([1, 1, 1, 0, 2]))
    for _ in range(count):
        tensor = request.inputs.add(name=draw(st.sampled_from(["image", "image", "", "x"])),
                                    datatype=draw(st.sampled_from(["BYTES", "BYTES", "FP32", "", "bytes", "UINT8"])))
        tensor.shape.extend(draw(st.lists(DIM, min_size=0, max_size=3)) if draw(st.integers(0, 2)) == 0 else [1])
        if draw(st.integers(0, 4)) == 0:
            tensor.parameters["binary_data_size"].int64_param = draw(st.integers(-(2**63), 2**63 - 1))
        where = draw(st.sampled_from(["raw", "raw", "contents", "both", "none", "int"]))
        if where in ("raw", "both"):
            request.raw_input_contents.append(draw(bytes_elements(image)))
        if where in ("contents", "both"):
            tensor.contents.bytes_contents.append(image if draw(st.booleans()) else draw(st.binary(max_size=32)))
        if where == "int":
            tensor.contents.int_contents.extend([1, 2, 3])
    if draw(st.integers(0, 4)) == 0:  # raw contents without inputs, or more than inputs
        request.raw_input_contents.append(draw(st.binary(max_size=64)))
    if draw(st.integers(0, 3)) == 0:
        output = request.outputs.add(name=draw(st.sampled_from(["scores", "", "nope"])))
        output.parameters["classification"].int64_param = draw(st.sampled_from([1, 3, 0, -1, 10, 11, 2**62]))
    if draw(st.integers(0, 5)) == 0:
        request.parameters["binary_data_output"].bool_param = True
    data = request.SerializeToString()
    if draw(st.integers(0, 9)) == 0:
        data = data[: draw(st.integers(0, len(data)))] + draw(st.binary(max_size=16))
    return "/inference.GRPCInferenceService/ModelInfer", data, f"ModelInfer {str(request)[:300]}"


# -- the tests ----------------------------------------------------------------------------------------------------


def test_good_requests_on_every_door(client, channel):
    good_tf_rest(client)
    good_v2_rest(client)
    good_our_rest(client)
    good_tf_grpc(channel)
    good_v2_grpc(channel)


@settings(FUZZ, max_examples=500)
@given(case=tf_rest_cases())
def test_fuzz_tf_serving_rest(client, case):
    check_http(client, case)


@settings(FUZZ, max_examples=500)
@given(case=v2_rest_cases())
def test_fuzz_kserve_v2_rest(client, case):
    check_http(client, case)


@settings(FUZZ, max_examples=150)
@given(case=our_rest_cases())
def test_fuzz_our_rest_shared_cases(client, case):
    check_http(client, case)


@settings(FUZZ, max_examples=400)
@given(case=tf_grpc_cases())
def test_fuzz_tf_serving_grpc(channel, case):
    check_grpc(channel, *case[:2], good_tf_grpc, case[2])


@settings(FUZZ, max_examples=400)
@given(case=v2_grpc_cases())
def test_fuzz_kserve_v2_grpc(channel, case):
    check_grpc(channel, *case[:2], good_v2_grpc, case[2])


@settings(FUZZ, max_examples=300)
@given(method=st.sampled_from(TF_METHODS + V2_METHODS), data=st.binary(max_size=2048))
def test_fuzz_raw_bytes_to_every_grpc_method(channel, method, data):
    good = good_tf_grpc if method.startswith("/tensorflow") else good_v2_grpc
    check_grpc(channel, method, data, good, "raw bytes")


@settings(FUZZ, max_examples=200)
@given(path=TF_PATHS | V2_PATHS | OUR_PATHS, data=st.binary(max_size=1024),
       content_type=st.sampled_from(["application/json", "application/octet-stream", "text/plain", "", "image/png"]))
def test_fuzz_raw_bytes_to_every_http_door(client, path, data, content_type):
    check_http(client, HttpCase(path=path, body=data, headers={"Content-Type": content_type}, note="raw"))


# -- the larger run ---------------------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=SLOW_EXAMPLES)
@given(case=tf_rest_cases() | v2_rest_cases() | our_rest_cases())
def _fuzz_http_long(client, case):
    check_http(client, case)


@settings(FUZZ, max_examples=SLOW_EXAMPLES)
@given(case=tf_grpc_cases() | v2_grpc_cases())
def _fuzz_grpc_long(channel, case):
    good = good_tf_grpc if case[0].startswith("/tensorflow") else good_v2_grpc
    check_grpc(channel, *case[:2], good, case[2])


@pytest.mark.slow
def test_fuzz_every_door_long(client, channel):
    """The larger run (size per door kind: GRAPHSERVE_FUZZ_DOOR_EXAMPLES)."""
    _fuzz_http_long(client)
    _fuzz_grpc_long(channel)

"""Every REST door's parser is total and bounded (issue 24): each case here was a 500, a 308 with
HTML, a silent acceptance or gigabytes of memory before; now each is the protocol's own 4xx.

Doors: ours (``{"error": {"code", "message"}}``), TF Serving REST and KServe v2 REST (both
``{"error": "..."}``). The bounds are counted from the wire before anything is built.
"""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import pytest

from app import wire
from tests.digits import png_bytes

V2_INFER = "/v2/models/digits8/infer"
TFS_PREDICT = "/v1/models/digits8:predict"


@pytest.fixture(scope="module")
def b64(digits) -> str:
    return base64.b64encode(png_bytes(digits.test_images[0])).decode()


def foreign_error(answer, status: int) -> str:
    """The message of a TF Serving / v2 error answer, after checking its status and shape."""
    assert answer.status_code == status, answer.get_data(as_text=True)[:300]
    body = answer.get_json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    return body["error"]


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize("levels", [1_000, 100_000])
def test_deep_json_is_a_400_on_every_door(client, levels: int) -> None:
    body = b'{"instances": ' + deep(levels) + b"}"
    assert "JSON" in foreign_error(client.post(TFS_PREDICT, data=body, content_type="application/json"), 400)
    body = b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ' + deep(levels) + b"}]}"
    if levels > wire.MAX_JSON_CONTAINERS:
        assert "more than" in foreign_error(client.post(V2_INFER, data=body, content_type="application/json"), 413)
    else:
        assert "JSON" in foreign_error(client.post(V2_INFER, data=body, content_type="application/json"), 400)
    answer = client.post("/image_classification?model=digits8", data=b'{"instances": ' + deep(levels) + b"}",
                         content_type="application/json")
    assert answer.status_code in (400, 413) and answer.get_json()["error"]["code"] in ("bad_request", "json_too_large")


def test_json_data_nested_within_the_parser_limit_is_walked_without_recursion(client, b64) -> None:
    nested = "[" * 900 + json.dumps(b64) + "]" * 900  # json.loads takes it; a recursive walk would not
    body = '{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ' + nested + "}]}"
    answer = client.post(V2_INFER, data=body, content_type="application/json")
    assert answer.status_code == 200, answer.get_data(as_text=True)


def test_a_million_tiny_instances_are_refused_before_parsing(client) -> None:
    body = b'{"instances": [' + b",".join([b'{"b64": ""}'] * 1_000_000) + b"]}"
    message = foreign_error(client.post(TFS_PREDICT, data=body, content_type="application/json"), 400)
    assert "more than" in message and "objects and arrays" in message


def test_more_instances_than_images_allowed_are_refused_before_decoding(client) -> None:
    body = json.dumps({"instances": [{"b64": "AAAA"}] * 65})
    assert "limit is 64" in foreign_error(client.post(TFS_PREDICT, data=body, content_type="application/json"), 400)


@pytest.mark.parametrize("value", [1, [1], {"a": 1}, None, True, "x" * 5000])
def test_signature_name_of_any_json_type_is_a_400(client, b64, value) -> None:
    body = {"signature_name": value, "instances": [{"b64": b64}]}
    message = foreign_error(client.post(TFS_PREDICT, json=body), 400)
    assert "signature" in message.lower() and len(message) < 300


def test_output_filter_on_rest_works_as_on_grpc(client, b64) -> None:
    answer = client.post(TFS_PREDICT, json={"instances": [{"b64": b64}], "output_filter": ["scores"]})
    assert answer.status_code == 200 and isinstance(answer.get_json()["predictions"][0][0], float)
    both = client.post(TFS_PREDICT, json={"instances": [{"b64": b64}]}).get_json()["predictions"][0]
    assert set(both) == {"scores", "classes"}
    for bad in (["nope"], "scores", [["scores"]], [1], ["scores", "classes", "scores"]):
        assert "output_filter" in foreign_error(
            client.post(TFS_PREDICT, json={"instances": [{"b64": b64}], "output_filter": bad}), 400)


@pytest.mark.parametrize("text", ["١", "１", "²"])
def test_non_ascii_digits_are_not_versions(client, b64, text: str) -> None:
    answer = client.post(f"/v1/models/digits8/versions/{text}:predict", json={"instances": [{"b64": b64}]})
    assert "Malformed request" in foreign_error(answer, 400)
    assert "Malformed request" in foreign_error(client.get(f"/v1/models/digits8/versions/{text}"), 400)


@pytest.mark.parametrize("value", ["²", "³", "¹", "١", "-1", "1e3", " ", "9" * 30])
def test_header_length_is_ascii_digits(client, b64, value: str) -> None:
    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]})
    answer = client.post(V2_INFER, data=body, content_type="application/json",
                         headers={"Inference-Header-Content-Length": value})
    assert "Inference-Header-Content-Length" in foreign_error(answer, 400)


def _zero_length_elements(shape: int, count: int) -> tuple[bytes, dict[str, str]]:
    raw = b"\0\0\0\0" * count
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [shape],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def test_millions_of_empty_bytes_elements_are_refused_by_the_shape_count(client) -> None:
    body, headers = _zero_length_elements(1, 4_000_000)
    assert "more bytes follow" in foreign_error(
        client.post(V2_INFER, data=body, content_type="application/octet-stream", headers=headers), 400)
    body, headers = _zero_length_elements(4_000_000, 4_000_000)
    assert "limit is 64" in foreign_error(
        client.post(V2_INFER, data=body, content_type="application/octet-stream", headers=headers), 413)


def test_a_gzip_bomb_of_empty_elements_is_refused_after_inflating_a_few_bytes(client) -> None:
    body, headers = _zero_length_elements(1, 8_000_000)  # 32 MiB inflated, ~33 KB sent
    compressed = gzip.compress(body)
    assert len(compressed) < 100_000
    answer = client.post(V2_INFER, data=compressed, content_type="application/octet-stream",
                         headers={**headers, "Content-Encoding": "gzip"})
    assert "more bytes follow" in foreign_error(answer, 400)
    reader = wire.Body(compressed, "gzip", limit=4 << 20)  # far below what it inflates to
    reader.read(len(body) - 32_000_000)
    assert not reader.at_end()  # read on demand: nothing past what was asked, no 413 yet


def test_encodings_are_bounded_and_exact(client, b64) -> None:
    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]}).encode()
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
                             ("deflate", zlib.compress(body)[2:-4])):
        answer = client.post(V2_INFER, data=packed, content_type="application/json",
                             headers={"Content-Encoding": encoding})
        assert answer.status_code == 200, (encoding, answer.get_data(as_text=True))
    bomb = b"\0" * (40 << 20)
    for encoding, packed in (("gzip", gzip.compress(bomb)), ("deflate", zlib.compress(bomb))):  # zlib-wrapped too
        answer = client.post(V2_INFER, data=packed, headers={"Content-Encoding": encoding})
        assert "inflates to more than" in foreign_error(answer, 413)
    trailing = gzip.compress(body) + b"trailing garbage"
    message = foreign_error(client.post(V2_INFER, data=trailing, headers={"Content-Encoding": "gzip"}), 400)
    assert "follow the gzip data" in message
    assert foreign_error(client.post(V2_INFER, data=body, headers={"Content-Encoding": "br"}), 415)


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v1/models//metadata", 400),  # TF Serving: "Malformed request: GET ..." for any path it has not
    ("POST", "/v1/models/%2Ftmp%2Fx:predict", 400),
    ("GET", "/v1/", 400),
    ("PUT", TFS_PREDICT, 400),
    ("GET", "/v2/models//ready", 404),
    ("POST", "/v2/models//infer", 404),
    ("GET", "/v2/nope", 404),
    ("DELETE", V2_INFER, 405),
    ("POST", "//v2//models//digits8//infer", 404),
])
def test_no_redirects_and_every_path_under_a_protocol_answers_in_its_shape(client, method, path, status) -> None:
    from urllib.parse import unquote_to_bytes

    answer = client.open("/", method=method, data=b"{}", content_type="application/json",
                         environ_overrides={"PATH_INFO": unquote_to_bytes(path).decode("latin-1")})
    foreign_error(answer, status)


def test_our_door_keeps_its_shape_for_unknown_paths(client) -> None:
    answer = client.open("/", method="POST", environ_overrides={"PATH_INFO": "//admin//reload"})
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "not_found"


def test_json_counting_has_a_stated_bound() -> None:
    assert wire.load_json(b'{"a": [1, 2, 3]}') == {"a": [1, 2, 3]}
    with pytest.raises(wire.JsonTooLarge):
        wire.load_json(b"[" + b"0," * wire.MAX_JSON_VALUES + b"0]")
    with pytest.raises(wire.BadJson):
        wire.load_json(b"\xff\xfe{")
    assert wire.ascii_count("12") == 12 and wire.ascii_count("²") is None and wire.ascii_count("١") is None

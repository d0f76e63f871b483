"""What every front door reads the same way (``app/wire.py``): versions and labels, base64,
deadlines — unit tests of the rules, then the same base64 rule through every door."""

from __future__ import annotations

import base64
import time

import pytest

from app import wire
from app.registry import BadModelSelection
from tests.digits import png_bytes


@pytest.mark.parametrize("raw, expected", [("0", 0), ("7", 7), ("9" * 18, int("9" * 18))])
def test_version_number_takes_0_to_18_digits(raw: str, expected: int) -> None:
    assert wire.version_number(raw) == expected


@pytest.mark.parametrize("raw", ["-1", "x", "1.0", " 1", "١", "9" * 19, ""])
def test_version_number_refuses_everything_else_with_one_message(raw: str) -> None:
    with pytest.raises(wire.BadVersion, match="non-negative integer of at most 18 digits"):
        wire.version_number(raw)


def test_version_or_label() -> None:
    assert wire.version_or_label(None, None) == (None, None)
    assert wire.version_or_label("", "") == (None, None)  # empty: not given
    assert wire.version_or_label("3", None) == (3, None)
    assert wire.version_or_label(None, "stable") == (None, "stable")
    with pytest.raises(wire.BadVersion, match="not both"):
        wire.version_or_label("1", "stable")
    with pytest.raises(wire.BadVersion, match="not both"):
        wire.version_or_label("x", "stable")  # both given is the first thing said, whatever the version
    assert issubclass(wire.BadVersion, BadModelSelection)  # the registry's own check raises it too


def test_decode_base64_standard_urlsafe_unpadded_and_wrapped() -> None:
    data = bytes(range(256)) * 3 + b"\xfb\xff"  # bytes whose base64 holds + and /
    standard = base64.b64encode(data).decode()
    assert "+" in standard and "/" in standard and standard.endswith("=")
    urlsafe = base64.urlsafe_b64encode(data).decode()
    for text in (standard, urlsafe, urlsafe.rstrip("="), standard.rstrip("="),
                 "\n".join(standard[i:i + 76] for i in range(0, len(standard), 76)), f"  {standard}\r\n"):
        assert wire.decode_base64(text) == data


@pytest.mark.parametrize("text", ["%%%", "abc$", "a", "ab=c"])
def test_decode_base64_refuses_what_is_not_base64(text: str) -> None:
    with pytest.raises(wire.BadBase64):
        wire.decode_base64(text)


def test_deadline_counts_from_when_the_request_started_and_keeps_a_shorter_grpc_deadline() -> None:
    assert wire.deadline(5.0, started=100.0) == 105.0
    assert wire.deadline(5.0, started=100.0, remaining=2.0) == 102.0  # the caller's own, shorter
    assert wire.deadline(5.0, started=100.0, remaining=60.0) == 105.0  # capped at request_timeout_s
    assert wire.deadline(5.0, started=100.0, remaining=-1.0) == 100.0  # already past: now
    before = time.monotonic()
    assert before + 5.0 <= wire.deadline(5.0) <= time.monotonic() + 5.0


# -- one base64 rule on every door ------------------------------------------------------------


@pytest.fixture(scope="module")
def wrapped_urlsafe(digits) -> tuple[str, int]:
    """A PNG's base64 as pasted: URL-safe alphabet, no padding, line breaks (and the digit it shows)."""
    photo = png_bytes(digits.test_images[0])
    text = base64.urlsafe_b64encode(photo).decode().rstrip("=")
    return "\n".join(text[i:i + 60] for i in range(0, len(text), 60)), int(digits.test_y[0])


def test_every_door_takes_the_same_base64(client, wrapped_urlsafe) -> None:
    text, _ = wrapped_urlsafe
    ours = client.post("/image_classification?model=digits8&top_k=1", json={"instances": [{"b64": text}]})
    tf_serving = client.post("/v1/models/digits8:predict", json={"instances": [{"b64": text}]})
    v2 = client.post("/v2/models/digits8/infer", json={"inputs": [
        {"name": "image", "shape": [1], "datatype": "BYTES", "data": [text]}]})
    assert [ours.status_code, tf_serving.status_code, v2.status_code] == [200, 200, 200], (
        ours.text, tf_serving.text, v2.text)
    best = ours.get_json()["models"]["digits8"]["results"][0]["top_k"][0]["class_id"]
    scores = tf_serving.get_json()["predictions"][0]["scores"]
    assert scores.index(max(scores)) == best


def test_every_door_refuses_bad_base64_as_its_protocols_400(client) -> None:
    ours = client.post("/image_classification?model=digits8", json={"instances": [{"b64": "%%%"}]})
    tf_serving = client.post("/v1/models/digits8:predict", json={"instances": [{"b64": "%%%"}]})
    v2 = client.post("/v2/models/digits8/infer", json={"inputs": [
        {"name": "image", "shape": [1], "datatype": "BYTES", "data": ["%%%"]}]})
    assert ours.status_code == 400 and "not valid base64" in ours.get_json()["error"]["message"]
    assert tf_serving.status_code == 400 and "not valid base64" in tf_serving.get_json()["error"]
    assert v2.status_code == 400 and "not valid base64" in v2.get_json()["error"]


def test_every_door_refuses_a_version_and_a_label_both(client) -> None:
    ours = client.post("/image_classification?model=digits8&version=1&version_label=stable", data=b"x",
                       headers={"Content-Type": "image/png"})
    assert ours.status_code == 400 and ours.get_json()["error"]["code"] == "bad_version"
    assert "not both" in ours.get_json()["error"]["message"]
    tf_serving = client.get("/v1/models/digits8/versions/99999999999999999999")
    assert tf_serving.status_code == 400 and "at most 18 digits" in tf_serving.get_json()["error"]

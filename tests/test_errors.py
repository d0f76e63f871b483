"""Every client mistake gets a clear 4xx JSON error naming what is wrong, and nothing breaks."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from app.services import services_of
from tests.digits import png_bytes
from tests.helpers import encode, multipart


def post_files(client, files, query="?model=digits8"):
    return client.post(f"/image_classification{query}", data=multipart(*files), content_type="multipart/form-data")


def assert_error(response, status: int, code: str, *fragments: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code
    for fragment in fragments:
        assert fragment in error["message"]
    return error


@pytest.fixture(scope="module")
def good(digits) -> bytes:
    return png_bytes(digits.test_images[0])


@pytest.fixture(scope="module")
def strict_app(graphs_dir):
    from app import create_app

    application = create_app({
        "GRAPHS_DIR": str(graphs_dir), "MAX_BODY_BYTES": 200_000, "MAX_IMAGE_BYTES": 50_000,
        "MAX_IMAGE_PIXELS": 100 * 100, "MAX_IMAGES_PER_REQUEST": 3,
    })
    yield application
    services_of(application).registry.close()


def test_empty_upload_names_it(client, good):
    assert_error(post_files(client, [(good, "ok.png"), (b"", "empty.png")]), 400, "empty_image", "'empty.png'")


def test_not_an_image_names_it(client):
    assert_error(post_files(client, [(b"hello, not an image", "notes.txt")]), 400, "invalid_image", "'notes.txt'")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_names_only_the_bad_upload(client, digits, fmt):
    big = np.kron(digits.test_images[0], np.ones((8, 8), np.uint8))
    whole = encode(big, fmt)
    truncated = whole[: len(whole) // 2]
    response = post_files(client, [(whole, "good1"), (truncated, "cut." + fmt.lower()), (whole, "good2")])
    error = assert_error(response, 400, "invalid_image", f"'cut.{fmt.lower()}'")
    assert "good1" not in error["message"] and "good2" not in error["message"]


def test_unknown_model_is_404(client, good):
    assert_error(post_files(client, [(good, "a.png")], "?model=nope"), 404, "model_not_found", "'nope'", "digits8")
    assert_error(post_files(client, [(good, "a.png")], "?model=digits8,nope"), 404, "model_not_found", "'nope'")


@pytest.mark.parametrize("top_k", ["abc", "0", "-1", "1.5", "100000"])
def test_bad_top_k(client, good, top_k):
    assert_error(post_files(client, [(good, "a.png")], f"?model=digits8&top_k={top_k}"), 400, "bad_top_k", "top_k")


def test_unsupported_content_type_is_415(client):
    response = client.post("/image_classification", data="hello", content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type", "text/plain", "multipart/form-data")


def test_unsupported_image_format_is_415(client, digits):
    tiff = encode(digits.test_images[0], "TIFF")
    assert_error(post_files(client, [(tiff, "scan.tiff")]), 415, "unsupported_image_format", "'scan.tiff'", "TIFF")


def test_multipart_without_image_field(client, good):
    response = client.post("/image_classification", data={"file": (__import__("io").BytesIO(good), "a.png")},
                           content_type="multipart/form-data")
    assert_error(response, 400, "no_image", "'image'", "file")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [({"instances": "x"}, "instances"), ({"nope": []}, "instances"), ({"instances": [{"url": "x"}]}, "instances[0]"),
     ({"instances": []}, "no image")],
)
def test_bad_json_bodies(client, body, fragment):
    response = client.post("/image_classification", json=body)
    assert response.status_code == 400 and fragment in response.get_json()["error"]["message"]


def test_malformed_json_and_bad_base64(client):
    response = client.post("/image_classification", data="{not json", content_type="application/json")
    assert_error(response, 400, "bad_request", "instances")
    response = client.post("/image_classification", json={"instances": [{"b64": "!!!notbase64"}]})
    assert_error(response, 400, "invalid_image", "instances[0]", "base64")


def test_body_too_large_is_413_json(strict_app, good):
    response = strict_app.test_client().post("/image_classification", data=b"\x89PNG" + b"0" * 300_000,
                                             content_type="image/png")
    assert_error(response, 413, "payload_too_large")


def test_image_bytes_too_large_is_413(strict_app, digits):
    noise = np.random.default_rng(1).integers(0, 256, (95, 95, 3), dtype=np.uint8)
    data = encode(noise, "BMP")  # ~27 KB
    noisy = encode(np.random.default_rng(2).integers(0, 256, (99, 99, 3), dtype=np.uint8), "PNG")
    assert len(noisy) > 0 and len(data) < 50_000
    big = data + b"\0" * 60_000
    response = strict_app.test_client().post("/image_classification", data=big, content_type="image/bmp")
    assert_error(response, 413, "image_too_large", "'body'", "bytes")


def test_decompression_bomb_is_refused_before_decoding(strict_app):
    bomb = encode(np.zeros((2000, 2000), np.uint8), "PNG")  # tiny file, 4 megapixels
    assert len(bomb) < 50_000
    response = strict_app.test_client().post("/image_classification", data=bomb, content_type="image/png")
    assert_error(response, 413, "image_too_large", "2000x2000")


def test_too_many_images_is_413(strict_app, good):
    response = strict_app.test_client().post("/image_classification", data=multipart(*[(good, "a.png")] * 4),
                                             content_type="multipart/form-data")
    assert_error(response, 413, "too_many_images", "limit is 3")


def test_unknown_route_and_wrong_method_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert client.get("/image_classification").status_code == 405
    assert client.get("/image_classification").get_json()["error"]["code"] == "method_not_allowed"


def test_service_keeps_working_after_bad_requests(client, digits, good):
    for bad in [b"", b"junk", encode(digits.test_images[0], "PNG")[:30]]:
        assert 400 <= post_files(client, [(bad, "x")]).status_code < 500
    response = client.post("/image_classification?model=digits8&top_k=1",
                           json={"instances": [{"b64": base64.b64encode(good).decode()}]})
    assert response.status_code == 200
    assert response.get_json()["models"]["digits8"]["results"][0]["top_k"][0]["class_id"] == digits.test_y[0]

"""Uploads built to cost far more than they weigh, or to slip damage past the decoder.

Each test here reproduces a finding of the hardening review (issue 13) on real graphs:
animated GIFs whose every frame TensorFlow would decode, header-only JPEGs claiming 36
megapixels, requests whose images are each legal but together huge, corrupt JPEGs that
libjpeg only warns about, deep JSON, thousands of form parts, and echoed megabyte names.
"""

from __future__ import annotations

import io
import struct
import threading
import time

import numpy as np
import pytest
from PIL import Image

from app import memory
from app.images import DecodeBusy, PixelBudget
from tests.digits import png_bytes
from tests.helpers import encode, multipart


def post(client, data, content_type, query="?model=digits8&top_k=10"):
    return client.post(f"/image_classification{query}", data=data, content_type=content_type)


def post_files(client, files, query="?model=digits8&top_k=10"):
    return post(client, multipart(*files), "multipart/form-data", query)


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.is_json
    error = response.get_json()["error"]
    assert error["code"] == code, error
    return error["message"]


def scores(response) -> list[float]:
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    (model,) = response.get_json()["models"].values()
    return [entry["score"] for result in model["results"] for entry in sorted(result["top_k"], key=lambda e: e["class_id"])]


def big_digit(digits, index: int, size: int) -> np.ndarray:
    """Digit ``index`` blown up to ``size``x``size`` pixels in solid blocks (grey, uint8)."""
    image = Image.fromarray(digits.test_images[index]).resize((size, size), Image.NEAREST)
    return np.asarray(image)


def repeat_frames(first_frame_gif: bytes, solid_frame_gif: bytes, extra_frames: int) -> bytes:
    """A GIF of ``first_frame_gif``'s frame followed by ``extra_frames`` copies of another frame.

    The copies carry their own local colour table, so any two Pillow-written GIFs combine.
    This is how a 1.4 MB file can hold 300 frames of 2000x2000: each solid frame's LZW data
    is a few KB, and TensorFlow's GIF decoder expands every one of them.
    """

    def split(gif: bytes) -> tuple[bytes, bytes, bytes]:
        flags = gif[10]
        table = 3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0
        head, rest = gif[: 13 + table], gif[13 + table : -1]  # -1: the trailer ';'
        assert gif[-1:] == b";" and rest[:1] in (b",", b"!")
        return head, rest, gif[13 : 13 + table]

    head, first, _ = split(first_frame_gif)
    _, solid, solid_table = split(solid_frame_gif)
    at = solid.index(b",")  # the image descriptor (skip any extension before it)
    descriptor = bytearray(solid[at : at + 10])
    descriptor[9] |= 0x80 | (solid_frame_gif[10] & 7)  # use a local table of the same size
    frame = bytes(descriptor) + solid_table + solid[at + 10 :]
    return head + first + frame * extra_frames + b";"


def gif(image: np.ndarray) -> bytes:
    return encode(image, "GIF")


class PeakRss:
    """The highest RSS seen (sampled every 5 ms) while the block runs, relative to its start."""

    def __enter__(self) -> PeakRss:
        self.start = memory.rss_bytes()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, memory.rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def header_only_jpeg(width: int, height: int) -> bytes:
    """A real JPEG's headers, its size claim changed to ``width`` x ``height``, no scan data, EOI."""
    data = encode(np.full((16, 16, 3), 128, np.uint8), "JPEG")
    sof = data.index(b"\xff\xc0")
    patched = data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]
    sos = patched.index(b"\xff\xda")
    sos_length = struct.unpack(">H", patched[sos + 2 : sos + 4])[0]
    return patched[: sos + 2 + sos_length] + b"\xff\xd9"


# -- 2. animations: only the first frame is decoded ---------------------------------------------


def test_animated_gif_of_300_big_frames_costs_one_frame(client, digits):
    first = big_digit(digits, 0, 2000)
    animation = repeat_frames(gif(first), gif(np.full((2000, 2000), 255, np.uint8)), extra_frames=299)
    assert len(animation) < 3 * 2**20
    with Image.open(io.BytesIO(animation)) as check:
        assert check.n_frames == 300 and check.size == (2000, 2000)

    with PeakRss() as rss:
        response = post(client, animation, "image/gif")
    # TensorFlow's GIF decoder would hold 300 x 12 MB; the first frame alone is 12 MB.
    assert rss.growth_mb < 300, f"RSS grew {rss.growth_mb:.0f} MB for one animated GIF"
    assert scores(response) == scores(post(client, png_bytes(first), "image/png"))


def test_animated_webp_is_classified_by_its_first_frame(client, digits):
    frames = [Image.fromarray(big_digit(digits, i, 64)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], lossless=True, duration=100)
    with Image.open(io.BytesIO(buffer.getvalue())) as check:
        assert check.n_frames == 3
    animated = scores(post(client, buffer.getvalue(), "image/webp"))
    assert animated == scores(post(client, png_bytes(np.asarray(frames[0])), "image/png"))
    assert animated != scores(post(client, png_bytes(np.asarray(frames[1])), "image/png"))


def test_still_webp_and_still_gif_still_work(client, digits):
    image = big_digit(digits, 4, 32)
    expected = scores(post(client, png_bytes(image), "image/png"))
    assert scores(post(client, encode(image, "WEBP", lossless=True), "image/webp")) == expected
    assert scores(post(client, gif(image), "image/gif")) == expected


# -- 4. a decode budget per request, checked before any decode ----------------------------------


def test_64_header_only_jpegs_claiming_36_megapixels_are_refused_before_decoding(client):
    bomb = header_only_jpeg(6000, 6000)
    assert len(bomb) < 1000
    with Image.open(io.BytesIO(bomb)) as check:
        assert check.size == (6000, 6000)
    started = time.perf_counter()
    message = error_of(post_files(client, [(bomb, f"h{i}.jpg") for i in range(64)]), 413, "request_too_large")
    assert "2,304,000,000 pixels" in message and "64,000,000" in message and "'h0.jpg'" in message
    # Refused from the headers: nothing was decoded, so this takes milliseconds, not 17.8 s.
    assert time.perf_counter() - started < 5


def test_sixteen_legal_pngs_too_big_together_are_refused(client):
    huge = encode(np.zeros((6300, 6300), np.uint8), "PNG")  # 39.7 MP each, under the per-image limit
    message = error_of(post_files(client, [(huge, f"p{i}.png") for i in range(16)]), 413, "request_too_large")
    assert "635,040,000 pixels" in message


def test_one_header_only_jpeg_is_refused_as_damaged(client):
    message = error_of(post(client, header_only_jpeg(6000, 6000), "image/jpeg"), 400, "invalid_image")
    assert "damaged JPEG" in message and "'body'" in message


def test_memory_returns_after_big_but_legal_requests(client):
    rng = np.random.default_rng(0)
    blocky = np.kron(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8), np.ones((100, 100, 1), np.uint8))
    files = [(encode(blocky, "PNG"), f"{k}.png") for k in range(16)]  # 16 x 4 MP = the whole budget
    held = []
    for _ in range(3):
        assert post_files(client, files).status_code == 200
        after_request = memory.rss_bytes()
        memory.release_free_memory()
        held.append((after_request - memory.rss_bytes()) / 2**20)
    # Freed memory the process still held after each request (glibc kept 50-130 MB of
    # decode buffers per request before the service trimmed after big requests).
    assert max(held) < 20, held


def test_pixel_budget_makes_big_requests_wait_their_turn():
    budget = PixelBudget(100)
    order: list[str] = []
    with budget.hold(70, deadline=time.monotonic() + 5):
        waiter = threading.Thread(target=lambda: _hold(budget, 60, order, "second"))
        waiter.start()
        time.sleep(0.05)
        order.append("first done")  # the waiter cannot have started: 70 + 60 > 100
    waiter.join(5)
    assert order == ["first done", "second"]
    assert budget.used == 0


def test_pixel_budget_refuses_at_the_deadline_and_never_blocks_a_lone_request():
    budget = PixelBudget(100)
    with budget.hold(90, deadline=time.monotonic() + 1):
        with pytest.raises(DecodeBusy, match="do not fit"):
            with budget.hold(20, deadline=time.monotonic() + 0.05):
                pass
        with budget.hold(10, deadline=time.monotonic()):  # fits beside the first
            assert budget.used == 100
    with budget.hold(100, deadline=time.monotonic()):
        assert budget.used == 100
    assert budget.used == 0


def _hold(budget: PixelBudget, pixels: int, order: list[str], name: str) -> None:
    with budget.hold(pixels, deadline=time.monotonic() + 5):
        order.append(name)


# -- 7. damaged images are refused, not classified as grey filler ------------------------------


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    import skimage.data

    return encode(skimage.data.chelsea(), "JPEG", quality=90)


def test_jpeg_with_zeroed_middle_is_refused(client, photo_jpeg):
    damaged = bytearray(photo_jpeg)
    middle = len(damaged) // 2
    damaged[middle : middle + 5000] = bytes(5000)
    message = error_of(post_files(client, [(photo_jpeg, "fine.jpg"), (bytes(damaged), "zeroed.jpg")]), 400,
                       "invalid_image")
    assert "'zeroed.jpg'" in message and "fine.jpg" not in message and "Corrupt JPEG data" in message


@pytest.mark.parametrize("variant", ["progressive", "grayscale", "cmyk", "4:4:4"])
def test_unusual_but_valid_jpegs_are_classified(client, photo_jpeg, variant):
    image = Image.open(io.BytesIO(photo_jpeg))
    save = {"progressive": dict(progressive=True), "4:4:4": dict(subsampling=0)}.get(variant, {})
    image = {"grayscale": image.convert("L"), "cmyk": image.convert("CMYK")}.get(variant, image)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **save)
    assert post(client, buffer.getvalue(), "image/jpeg").status_code == 200


# -- 5, 7. malformed requests: clear 4xx JSON, clipped echoes ----------------------------------


@pytest.mark.parametrize("body", ["[" * 10_000, '{"instances": ' + "[" * 10_000, '{"a":' * 10_000])
def test_deeply_nested_json_is_400(client, body):
    assert "not valid JSON" in error_of(post(client, body, "application/json"), 400, "bad_request")


def test_five_thousand_form_parts_are_blamed_on_parts_not_size(client, digits):
    files = [(png_bytes(digits.test_images[0]), f"{i}.png") for i in range(5000)]
    message = error_of(post_files(client, files), 413, "too_many_parts")
    assert "parts" in message and "body is" not in message


@pytest.mark.parametrize("selector", [",", " , ,", ",,,"])
def test_empty_model_selection_is_400(client, digits, selector):
    response = post(client, png_bytes(digits.test_images[0]), "image/png", f"?model={selector}")
    assert "names no model" in error_of(response, 400, "bad_model_selection")


def test_echoed_input_is_clipped(client, digits):
    long = "x" * 100_000
    response = post(client, png_bytes(digits.test_images[0]), "image/png", f"?model={long}")
    assert len(error_of(response, 404, "model_not_found")) < 400
    response = post_files(client, [(b"not an image", long + ".png")])
    assert len(error_of(response, 400, "invalid_image")) < 400
    response = client.post("/image_classification", data=b"x", content_type="text/" + long)
    assert len(error_of(response, 415, "unsupported_media_type")) < 400
    response = post(client, png_bytes(digits.test_images[0]), "image/png", f"?top_k={long}")
    assert len(error_of(response, 400, "bad_top_k")) < 400

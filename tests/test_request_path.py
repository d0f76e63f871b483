"""The request path reads straight through (issue 23): the models are chosen before the body is
parsed, a bad image in a batch costs about log2 N extra runs, the shared decode runs through a
batcher, and pixels the upload check decoded reach the graph without a second decode."""

from __future__ import annotations

import io
import math
import shutil
import time

import flask
import numpy as np
import pytest
from PIL import Image

from app import create_app
from app.config import Settings
from app.images import check_images
from app.servable import Decoded, Servable, UndecodableImage
from app.services import services_of
from tests.digits import png_bytes
from tests.helpers import encode, multipart


def _form_parsed_log(app: flask.Flask) -> list[bool]:
    """After each request: whether its multipart form was parsed (werkzeug caches it in __dict__)."""
    seen: list[bool] = []

    @app.after_request
    def record(response):
        seen.append("form" in flask.request.__dict__)
        return response

    return seen


@pytest.fixture()
def fresh_app(graphs_dir):
    application = create_app({"GRAPHS_DIR": str(graphs_dir)})
    yield application
    services_of(application).registry.close()


def _big_png() -> bytes:
    """A PNG of noise over 500 KiB: werkzeug would spool it to disk if the form were parsed."""
    noise = np.random.default_rng(0).integers(0, 256, size=(600, 600, 3), dtype=np.uint8)
    data = encode(noise, "PNG")
    assert len(data) > 500 * 1024
    return data


# -- (a) the models are chosen before the body is read ---------------------------------------


def test_an_unknown_model_is_refused_without_parsing_the_form(fresh_app):
    parsed = _form_parsed_log(fresh_app)
    client = fresh_app.test_client()
    answer = client.post("/image_classification?model=nope&top_k=3", data=multipart((_big_png(), "a.png")),
                         content_type="multipart/form-data")
    assert answer.status_code == 404, answer.get_json()
    assert "nope" in answer.get_json()["error"]["message"]
    assert parsed == [False]
    # the same request for a served model does parse it (the check above can see a parse)
    answer = client.post("/image_classification?model=digits8&top_k=3", data=multipart((_big_png(), "a.png")),
                         content_type="multipart/form-data")
    assert answer.status_code == 200, answer.get_json()
    assert parsed == [False, True]


def test_an_unknown_model_and_version_in_the_query_is_refused_without_parsing(fresh_app):
    parsed = _form_parsed_log(fresh_app)
    answer = fresh_app.test_client().post(
        "/image_classification?model=digits8,nope&version=1", data=multipart((_big_png(), "a.png")),
        content_type="multipart/form-data",
    )
    assert answer.status_code == 404 and parsed == [False]


def test_form_fields_still_choose_the_models(fresh_app, digits):
    client = fresh_app.test_client()
    image = png_bytes(digits.test_images[0])
    # no model in the query: every model would answer, the form names one
    body = client.post("/image_classification", data=multipart((image, "a.png"), model="digits16", top_k="2"),
                       content_type="multipart/form-data").get_json()
    assert list(body["models"]) == ["digits16"] and len(body["models"]["digits16"]["results"][0]["top_k"]) == 2
    # an unknown model named by the form: 404, as before (the form had to be read to know)
    answer = client.post("/image_classification", data=multipart((image, "a.png"), model="nope"),
                         content_type="multipart/form-data")
    assert answer.status_code == 404
    # the model in the query, the version in the form
    answer = client.post("/image_classification?model=digits8", data=multipart((image, "a.png"), version="7"),
                         content_type="multipart/form-data")
    assert answer.status_code == 404 and "7" in answer.get_json()["error"]["message"]
    # the query wins over the form, as before
    body = client.post("/image_classification?model=digits8&top_k=1",
                       data=multipart((image, "a.png"), model="digits16", top_k="3"),
                       content_type="multipart/form-data").get_json()
    assert list(body["models"]) == ["digits8"] and len(body["models"]["digits8"]["results"][0]["top_k"]) == 1


def test_a_version_only_the_form_makes_servable_is_found_there(make_graphs_dir, digit_weights, digits):
    """The query's own choice fails (no version 2 of every model), the form's model has one."""
    from tests.digits import write_model

    root = make_graphs_dir()
    write_model(root, "digits16", digit_weights, size=16, version=2)
    application = create_app({"GRAPHS_DIR": str(root)})
    try:
        answer = application.test_client().post(
            "/image_classification?version=2", data=multipart((png_bytes(digits.test_images[0]), "a.png"),
                                                              model="digits16"),
            content_type="multipart/form-data",
        )
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["models"]["digits16"]["version"] == 2
    finally:
        services_of(application).registry.close()


# -- (c) a bad image in a batch costs about log2 N runs ---------------------------------------


def _corrupt_png(good: bytes) -> bytes:
    """A PNG whose header reads fine and whose pixel data does not decode (Pillow checks only the header)."""
    data = bytearray(good)
    at = data.index(b"IDAT") + 8
    data[at : at + 16] = bytes(16)
    return bytes(data)


def _counting(servable: Servable, monkeypatch, method: str = "_classify_encoded") -> list[int]:
    """The batch size of every run of ``servable.<method>`` from now on (encoded or pixel feeds)."""
    runs: list[int] = []
    original = getattr(servable, method)

    def counted(feeds):
        runs.append(len(feeds[0]))
        return original(feeds)

    monkeypatch.setattr(servable, method, counted)
    return runs


@pytest.mark.parametrize("bad_at", [[0], [5], [15], [3, 11], [0, 1, 2]])
def test_a_bad_image_costs_log_n_runs_and_only_itself(fresh_app, digits, monkeypatch, bad_at):
    servable = services_of(fresh_app).registry.get("digits8").servable
    good = [png_bytes(image) for image in digits.test_images[:16]]
    bad = _corrupt_png(good[0])
    with pytest.raises(UndecodableImage) as alone:
        servable.run([bad])
    solo = [servable.run([image])[0] for image in good]
    items = [bad if i in bad_at else image for i, image in enumerate(good)]
    runs = _counting(servable, monkeypatch)
    rows = servable.predict(items)
    runs = list(runs)
    for i, row in enumerate(rows):
        if i in bad_at:
            assert isinstance(row, UndecodableImage) and str(row) == str(alone.value)
        else:
            assert np.allclose(row, solo[i], atol=1e-6)
    # before: 1 + 16 runs; now 1 + about 2 log2 N per bad item (left halves run, known-bad ones split)
    assert len(runs) <= 1 + len(bad_at) * 2 * math.ceil(math.log2(len(items))), runs
    assert sum(runs) <= len(items) * (1 + len(bad_at) * math.ceil(math.log2(len(items)))), runs


def test_a_bad_image_over_http_is_named_and_the_good_ones_cost_no_extra_solo_runs(fresh_app, digits, monkeypatch):
    servable = services_of(fresh_app).registry.get("digits8").servable
    good = [png_bytes(image) for image in digits.test_images[:8]]
    files = [(image, f"{i}.png") for i, image in enumerate(good)]
    files[6] = (_corrupt_png(good[6]), "bad.png")
    runs = _counting(servable, monkeypatch)
    answer = fresh_app.test_client().post("/image_classification?model=digits8", data=multipart(*files),
                                          content_type="multipart/form-data")
    assert answer.status_code == 400 and "bad.png" in answer.get_json()["error"]["message"]
    assert len(runs) <= 1 + 2 * 3 and runs.count(1) <= 2, runs  # before: 1 + 8 solo runs


# -- (b) the shared decode of equal geometries runs through a batcher -------------------------


@pytest.fixture()
def twins_app(graphs_dir, tmp_path):
    target = tmp_path / "graphs"
    shutil.copytree(graphs_dir / "digits16", target / "digits16")
    shutil.copytree(graphs_dir / "digits16", target / "twin16")
    application = create_app({"GRAPHS_DIR": str(target)})
    yield application
    services_of(application).registry.close()


def test_the_shared_decode_runs_in_the_servables_batcher_and_closes_with_it(twins_app, digits):
    registry = services_of(twins_app).registry
    image = png_bytes(digits.test_images[0])
    body = twins_app.test_client().post("/image_classification?model=digits16,twin16&top_k=1",
                                        data=multipart((image, "a.png")), content_type="multipart/form-data").get_json()
    assert body["models"]["digits16"]["results"][0]["top_k"] == body["models"]["twin16"]["results"][0]["top_k"]
    servable = registry.get("digits16").servable
    decoder = servable._decoder
    assert decoder is not None and not decoder.closed and registry.get("twin16").servable._decoder is None
    servable.close()
    assert decoder.closed and servable._decoder is None


def test_a_bad_image_in_the_shared_decode_is_named_and_the_rest_shared(twins_app, digits, monkeypatch):
    registry = services_of(twins_app).registry
    good = [png_bytes(image) for image in digits.test_images[:4]]
    files = [(image, f"{i}.png") for i, image in enumerate(good)] + [(_corrupt_png(good[0]), "bad.png")]
    twin = registry.get("twin16").servable
    pixels = _counting(twin, monkeypatch, "_classify_pixels")
    encoded = _counting(twin, monkeypatch)
    answer = twins_app.test_client().post("/image_classification?model=digits16,twin16", data=multipart(*files),
                                          content_type="multipart/form-data")
    assert answer.status_code == 400 and "bad.png" in answer.get_json()["error"]["message"]
    for _ in range(250):  # the answer comes from the first model to name the bad upload: the twin may still run
        if pixels and encoded:
            break
        time.sleep(0.02)
    assert pixels == [4] and encoded == [1]  # the good ones' pixels shared, the bad one left to the model


def test_without_batching_the_shared_decode_runs_in_the_request(graphs_dir, tmp_path, digits):
    target = tmp_path / "graphs"
    shutil.copytree(graphs_dir / "digits16", target / "digits16")
    shutil.copytree(graphs_dir / "digits16", target / "twin16")
    application = create_app({"GRAPHS_DIR": str(target), "BATCHING": False})
    try:
        answer = application.test_client().post(
            "/image_classification?model=digits16,twin16",
            data=multipart((png_bytes(digits.test_images[0]), "a.png")), content_type="multipart/form-data",
        )
        assert answer.status_code == 200, answer.get_json()
        assert services_of(application).registry.get("digits16").servable._decoder is None
    finally:
        services_of(application).registry.close()


# -- (d) pixels the upload check decoded are not decoded again --------------------------------


def _photo(size=(640, 480)) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.chelsea()).resize(size))


def test_a_scaled_decoded_jpeg_reaches_the_graph_as_pixels(fresh_app, monkeypatch):
    photo = encode(_photo(), "JPEG", quality=90)
    import app.servable as servable_module

    fed: list[list[type]] = []
    original = servable_module._graph_feeds

    def recording(items):
        fed.append([type(item) for item in items])
        return original(items)

    monkeypatch.setattr(servable_module, "_graph_feeds", recording)
    answer = fresh_app.test_client().post("/image_classification?model=digits8&top_k=10",
                                          data=multipart((photo, "p.jpg")), content_type="multipart/form-data")
    assert answer.status_code == 200, answer.get_json()
    assert fed == [[Decoded]]  # not a BMP for the graph to decode again


def test_a_decoded_upload_keeps_no_bytes_and_gives_a_bmp_on_demand():
    photo = encode(_photo(), "JPEG", quality=90)
    [upload] = check_images([("p.jpg", photo)], Settings(), jpeg_min_size=(8, 8))
    assert upload.encoded is None and upload.decoded is not None
    assert upload.decoded.dtype == np.uint8 and upload.decoded.shape == (upload.height, upload.width, 3)
    assert upload.data[:2] == b"BM"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(upload.data))), upload.decoded)
    [plain] = check_images([("p.jpg", photo)], Settings())  # the models want it in full: the graph decodes it
    assert plain.encoded == photo and plain.decoded is None and plain.data == photo


def _cases() -> dict[str, tuple[bytes, tuple[int, int] | None]]:
    photo = _photo()
    rgba = np.dstack([photo, np.full(photo.shape[:2], 128, np.uint8)])
    frames = [Image.fromarray(photo), Image.fromarray(photo[::-1])]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    sideways = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo).save(sideways, "JPEG", quality=90, exif=exif.tobytes())
    return {
        "jpeg-scaled": (encode(photo, "JPEG", quality=90), (8, 8)),
        "jpeg-sideways-scaled": (sideways.getvalue(), (8, 8)),
        "jpeg-gray-scaled": (encode(photo[..., 0], "JPEG", quality=90), (8, 8)),
        "gif": (gif.getvalue(), None),
        "webp-rgba": (encode(rgba, "WEBP", quality=80), None),
        "bmp-8bit": (encode(Image.fromarray(photo).convert("P"), "BMP"), None),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_pixels_and_bytes_give_identical_scores(fresh_app, case):
    """The pixels fed as they are score exactly as their BMP did when the graph decoded it (before)."""
    data, min_size = _cases()[case]
    [upload] = check_images([(case, data)], Settings(), jpeg_min_size=min_size)
    assert upload.decoded is not None
    for name in ("digits8", "digits16"):
        servable = services_of(fresh_app).registry.get(name).servable
        as_bmp = servable.run([upload.data])
        as_pixels = servable.run([Decoded(upload.decoded)])
        mixed = servable.run([upload.data, Decoded(upload.decoded), png_bytes(np.zeros((8, 8), np.uint8))])
        assert np.array_equal(as_bmp, as_pixels), name
        assert np.array_equal(mixed[0], mixed[1]) and np.array_equal(mixed[1], as_pixels[0]), name
        assert np.array_equal(servable.preprocess([upload.data]), servable.preprocess([Decoded(upload.decoded)]))


def test_a_model_that_ignores_exif_orientation_gets_the_jpeg_itself(make_graphs_dir):
    """The upload check turns a JPEG upright; a model with exif_orientation false must not get that."""
    import json

    root = make_graphs_dir()
    path = root / "digits8" / "1" / "model.json"
    manifest = json.loads(path.read_text())
    manifest["preprocessing"]["exif_orientation"] = False
    path.write_text(json.dumps(manifest))
    application = create_app({"GRAPHS_DIR": str(root)})
    try:
        registry = services_of(application).registry
        assert registry.get("digits8").servable.jpeg_min_size is None
    finally:
        services_of(application).registry.close()


# -- top-k only when asked -------------------------------------------------------------------


def test_scores_only_sorts_nothing(fresh_app, digits, monkeypatch):
    import app.inference as inference

    def no_sort(*_args, **_kwargs):
        raise AssertionError("argsort called for top_k=0")

    core = services_of(fresh_app).core
    images = [inference.EncodedImage("a.png", png_bytes(digits.test_images[0]))]
    monkeypatch.setattr(inference.np, "argsort", no_sort)
    result = core.classify(images, models="digits8", top_k=0)
    assert result.models[0].results[0].top_k == [] and result.models[0].scores.shape == (1, 10)

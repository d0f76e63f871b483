"""Photos as they really arrive: EXIF orientation, scaled JPEG decode, and resize recipes.

Every check compares the service's preprocessing graph (run through ``freeze.images.pixels_of``,
the same graph a servable builds) with an independent implementation: Pillow's own
``exif_transpose`` and ``resize``, TF1's resize ops, and libjpeg's scaled decode called
directly. Photos come from skimage.data.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps
from skimage import data

from app.exif import jpeg_orientation
from app.manifest import ManifestError, parse
from app.services import services_of
from freeze.images import pixels_of
from tests.helpers import class_scores, multipart

# What undoes each orientation (Pillow's exif_transpose), and its inverse (to make test files).
UNDO = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
STORE = {**UNDO, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def manifest(resize: str = "bilinear", height: int = 96, width: int = 128, channels: int = 3, **pre):
    return parse(
        {
            "input": {"tensor": "x:0", "height": height, "width": width, "channels": channels},
            "output": {"tensor": "y:0"},
            "preprocessing": {"resize": resize, **pre},
        }
    )


def jpeg(image: Image.Image | np.ndarray, orientation: int | None = None, quality: int = 95) -> bytes:
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, "JPEG", quality=quality, exif=exif.tobytes())
    return buffer.getvalue()


def stored_sideways(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG as a phone writes it: pixels stored turned, with the tag that says how to undo it."""
    stored = upright if orientation == 1 else upright.transpose(STORE[orientation])
    return jpeg(stored, orientation)


@pytest.fixture(scope="module")
def cat() -> Image.Image:
    return Image.fromarray(data.chelsea())  # 451 x 300: not square, so a wrong turn shows


@pytest.fixture(scope="module")
def phone_photo() -> np.ndarray:
    """A 4032 x 3024 photo with sensor-like noise (upscaled skimage coffee), as uint8 RGB."""
    from app.bench.phone import enlarged

    return enlarged(data.coffee(), (4032, 3024), seed=0, sigma=5.0)


# -- the EXIF reader -------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_reads_every_orientation_pillow_writes(cat, orientation):
    assert jpeg_orientation(jpeg(cat, orientation)) == orientation


def _big_endian_exif_jpeg(orientation: int) -> bytes:
    """A JPEG whose EXIF block is Motorola byte order (as many cameras write), built by hand."""
    ifd = struct.pack(">H", 2) + struct.pack(">HHIHH", 0x010F, 2, 4, 0, 0)  # Make, then Orientation
    ifd += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    tiff = b"MM" + struct.pack(">HI", 42, 8) + ifd
    app1 = b"\xff\xe1" + struct.pack(">H", len(tiff) + 8) + b"Exif\x00\x00" + tiff
    plain = jpeg(np.zeros((8, 8, 3), np.uint8))
    return plain[:2] + app1 + plain[2:]


def test_reads_big_endian_exif_and_checks_it_with_pillow():
    data_ = _big_endian_exif_jpeg(6)
    assert jpeg_orientation(data_) == 6
    assert Image.open(io.BytesIO(data_)).getexif()[0x0112] == 6  # the hand-made block is valid EXIF


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00II*\x00", b"junk" * 10],
)
def test_no_or_broken_exif_reads_as_upright(payload):
    assert jpeg_orientation(payload) == 1


def test_out_of_range_orientation_reads_as_upright(cat):
    assert jpeg_orientation(jpeg(cat, 9)) == 1


# -- orientation in the graph ----------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(cat, orientation):
    """The graph's upright image, resized, equals Pillow's exif_transpose + resize of the same file."""
    encoded = stored_sideways(cat, orientation)
    ours = pixels_of([encoded], manifest("pillow_bicubic"))[0]
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(encoded))).convert("RGB")
    expected = np.asarray(upright.resize((128, 96), Image.Resampling.BICUBIC), np.float32)
    assert np.abs(ours - expected).max() <= 1
    if orientation != 1:  # ... and the check can tell: ignoring the tag gives another picture
        ignored = pixels_of([encoded], manifest("pillow_bicubic", exif_orientation=False))[0]
        assert np.abs(ignored - expected).mean() > 10


def test_orientation_is_ignored_for_png(cat):
    """PNG has no EXIF that TensorFlow reads; the pixels are used as stored."""
    buffer = io.BytesIO()
    cat.save(buffer, "PNG")
    ours = pixels_of([buffer.getvalue()], manifest("pillow_bicubic"))[0]
    expected = np.asarray(cat.resize((128, 96), Image.Resampling.BICUBIC), np.float32)
    assert np.abs(ours - expected).max() <= 1


def test_a_sideways_upload_gets_the_upright_answer(digits, make_graphs_dir):
    """End to end over HTTP: a digit stored rotated with its tag scores as the upright digit."""
    from app import create_app

    app = create_app({"GRAPHS_DIR": str(make_graphs_dir())})
    client = app.test_client()
    try:
        index = int(np.flatnonzero(digits.test_y == 7)[0])
        digit = Image.fromarray(digits.test_images[index]).resize((64, 64), Image.Resampling.NEAREST).convert("RGB")

        def scores(body: bytes) -> np.ndarray:
            answer = client.post("/image_classification?model=digits8&top_k=10", data=multipart((body, "d.jpg")),
                                 content_type="multipart/form-data")
            assert answer.status_code == 200, answer.get_json()
            return class_scores(answer.get_json()["models"]["digits8"])[0]

        upright = scores(jpeg(digit, 1))
        sideways = scores(stored_sideways(digit, 6))
        untagged = scores(jpeg(digit.transpose(STORE[6])))
        assert np.argmax(sideways) == np.argmax(upright) == 7
        assert np.abs(sideways - upright).max() < 0.05
        assert np.abs(untagged - upright).max() > 0.2  # the model does see a turned digit differently
    finally:
        services_of(app).registry.close()


# -- scaled JPEG decode ----------------------------------------------------------------


def _reference(encoded: bytes, ratio: int, height: int, width: int, crop: float = 1.0) -> np.ndarray:
    """libjpeg at ``ratio``, then TF2's antialiased bilinear resize: what the graph should do."""
    image = tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
    if crop < 1:
        image = tf.image.central_crop(image, crop)
    return tf.image.resize(image, [height, width], antialias=True).numpy()


@pytest.mark.parametrize(
    "width, target, crop, ratio",
    [
        (1280, 160, 1.0, 8),  # 1280 / 8 = 160: exactly enough
        (1272, 160, 1.0, 4),  # 159 at 1/8 is too small, so 1/4
        (1280, 160, 0.5, 4),  # the crop keeps half: 1/8 would leave 80
        (600, 160, 1.0, 2),
        (300, 160, 1.0, 1),
    ],
)
def test_scaled_decode_picks_the_largest_scale_that_still_fits(width, target, crop, ratio):
    photo = np.random.default_rng(1).integers(0, 256, size=(width, width, 3), dtype=np.uint8)
    encoded = jpeg(photo)
    pre = {"central_crop": crop} if crop < 1 else {}
    ours = pixels_of([encoded], manifest("bilinear", target, target, **pre))[0]
    expected = _reference(encoded, ratio, target, target, crop)
    assert np.abs(ours - expected).max() < 1e-3
    if ratio > 1:  # not just any decode: full resolution gives a different picture of noise
        assert np.abs(ours - _reference(encoded, 1, target, target, crop)).mean() > 1


def test_scaled_decode_counts_a_sideways_photo_turned(phone_photo):
    """A 4032 x 3024 photo stored sideways (3024 wide): upright, a 896-wide target takes 1/4
    (4032 / 4 = 1008); judged by the stored width, 3024 / 4 = 756 is too narrow and 1/2 would win."""
    stored = Image.fromarray(phone_photo).transpose(STORE[6])  # 3024 x 4032 as stored
    encoded = jpeg(stored, 6)
    ours = pixels_of([encoded], manifest("bilinear", 96, 896))[0]
    upright = tf.image.rot90(tf.io.decode_jpeg(encoded, channels=3, ratio=4), k=3)
    expected = tf.image.resize(upright, [96, 896], antialias=True).numpy()
    assert np.abs(ours - expected).max() < 1e-3


def test_scaled_decode_changes_a_phone_photo_by_under_one_grey_level(phone_photo):
    encoded = jpeg(phone_photo, quality=90)
    scaled = pixels_of([encoded], manifest("bicubic", 160, 160))[0]
    full = pixels_of([encoded], manifest("bicubic", 160, 160, scaled_decode=False))[0]
    difference = np.abs(scaled - full)
    assert 0 < difference.mean() < 1.0
    assert difference.max() < 16


@pytest.mark.parametrize(
    "pre, on",
    [
        ({"resize": "bilinear"}, True),
        ({"resize": "bicubic"}, True),
        ({"resize": "area"}, True),
        ({"resize": "bilinear", "antialias": False}, False),
        ({"resize": "nearest"}, False),
        ({"resize": "tf1_bilinear"}, False),
        ({"resize": "pillow_bicubic"}, False),
        ({"resize": "pillow_bicubic", "scaled_decode": True}, True),
        ({"resize": "pillow_nearest"}, False),
        ({"resize": "nearest", "scaled_decode": True}, True),
        ({"resize": "bicubic", "scaled_decode": False}, False),
    ],
)
def test_scaled_decode_defaults_to_antialiased_resizes(pre, on):
    from app import recipes

    assert recipes.scaled_decode(manifest(**pre).preprocessing) is on


# -- resize recipes --------------------------------------------------------------------

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


@pytest.fixture(scope="module")
def photo_jpegs() -> dict[str, bytes]:
    return {name: jpeg(getattr(data, name)(), quality=90) for name in PHOTOS}


@pytest.mark.parametrize(
    "method, pillow_filter, max_diff",
    [
        ("pillow_nearest", Image.Resampling.NEAREST, 0),
        ("pillow_bilinear", Image.Resampling.BILINEAR, 1),
        ("pillow_bicubic", Image.Resampling.BICUBIC, 1),
        ("pillow_lanczos", Image.Resampling.LANCZOS, 1),
    ],
)
def test_pillow_resizes_match_pillow(photo_jpegs, method, pillow_filter, max_diff):
    """Against Pillow itself (decode + resize), on real photos: at most one grey level apart."""
    for name, encoded in photo_jpegs.items():
        ours = pixels_of([encoded], manifest(method, 160, 160))[0]
        expected = Image.open(io.BytesIO(encoded)).convert("RGB").resize((160, 160), pillow_filter)
        difference = np.abs(ours - np.asarray(expected, np.float32))
        assert difference.max() <= max_diff, name
        assert difference.mean() < 0.01, name


def test_tf2_resize_would_not_pass_for_pillow(photo_jpegs):
    """The Pillow recipes matter: TF2's bicubic on the same photo is several grey levels off."""
    encoded = photo_jpegs["astronaut"]
    ours = pixels_of([encoded], manifest("bicubic", 160, 160, antialias=False, scaled_decode=False))[0]
    expected = Image.open(io.BytesIO(encoded)).convert("RGB").resize((160, 160), Image.Resampling.BICUBIC)
    assert np.abs(ours - np.asarray(expected, np.float32)).max() > 10


@pytest.mark.parametrize(
    "method, op, flags",
    [
        ("tf1_bilinear", tf.compat.v1.image.resize_bilinear, {}),
        ("tf1_bilinear", tf.compat.v1.image.resize_bilinear, {"align_corners": True}),
        ("tf1_bilinear", tf.compat.v1.image.resize_bilinear, {"half_pixel_centers": True}),
        ("tf1_bicubic", tf.compat.v1.image.resize_bicubic, {}),
        ("tf1_bicubic", tf.compat.v1.image.resize_bicubic, {"align_corners": True}),
        ("tf1_nearest", tf.compat.v1.image.resize_nearest_neighbor, {}),
        ("tf1_nearest", tf.compat.v1.image.resize_nearest_neighbor, {"half_pixel_centers": True}),
        ("tf1_area", tf.compat.v1.image.resize_area, {}),
        ("tf1_area", tf.compat.v1.image.resize_area, {"align_corners": True}),
    ],
)
def test_tf1_resizes_match_the_tf1_ops(photo_jpegs, method, op, flags):
    encoded = photo_jpegs["coffee"]
    ours = pixels_of([encoded], manifest(method, 224, 224, **flags))[0]
    decoded = tf.cast(tf.io.decode_jpeg(encoded, channels=3), tf.float32)[tf.newaxis]
    expected = op(decoded, [224, 224], **flags)[0].numpy()
    assert np.abs(ours - expected).max() < 1e-3


def test_tf1_bilinear_differs_from_tf2_bilinear(photo_jpegs):
    """Why the recipes exist: TF2's resize does not reproduce TF1's pixel grid."""
    encoded = photo_jpegs["coffee"]
    tf1 = pixels_of([encoded], manifest("tf1_bilinear", 224, 224))[0]
    tf2 = pixels_of([encoded], manifest("bilinear", 224, 224, antialias=False))[0]
    assert np.abs(tf1 - tf2).mean() > 1


@pytest.mark.parametrize(
    "pre, field",
    [
        ({"resize": "tf1_bilinear", "antialias": True}, "preprocessing.antialias"),
        ({"resize": "pillow_bicubic", "antialias": False}, "preprocessing.antialias"),
        ({"resize": "bilinear", "align_corners": True}, "preprocessing.align_corners"),
        ({"resize": "pillow_bilinear", "half_pixel_centers": True}, "preprocessing.half_pixel_centers"),
        ({"resize": "tf1_bilinear", "align_corners": True, "half_pixel_centers": True}, "preprocessing.half_pixel_centers"),
        ({"resize": "bilinear", "scaled_decode": "yes"}, "preprocessing.scaled_decode"),
        ({"resize": "bilinear", "exif_orientation": 1}, "preprocessing.exif_orientation"),
        ({"resize": "pillow_box"}, "preprocessing.resize"),
    ],
)
def test_manifest_refuses_recipe_fields_that_do_not_apply(pre, field):
    with pytest.raises(ManifestError) as caught:
        manifest(**pre)
    assert caught.value.field == field


@pytest.mark.parametrize(
    "pre",
    [
        {"resize": "tf1_bilinear", "align_corners": True},
        {"resize": "pillow_nearest", "exif_orientation": False},
        {"resize": "bicubic", "antialias": False, "scaled_decode": True},
    ],
)
def test_manifest_round_trips_recipe_fields(pre):
    first = manifest(**pre)
    assert parse(first.to_json()) == first


# -- the request path: one strict decode at the scale the models need --------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_numpy_upright_equals_the_graphs(orientation):
    """The request path turns a decoded JPEG upright in NumPy; the graph-only path in TF: the same."""
    from app.exif import upright as numpy_upright
    from app.preprocessing import upright as graph_upright

    pixels = np.random.default_rng(orientation).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    expected = graph_upright(tf.constant(pixels), tf.constant(orientation)).numpy()
    assert np.array_equal(numpy_upright(pixels, orientation), expected)


def test_a_phone_photo_is_decoded_once_and_scores_as_the_graph_decodes_it(phone_photo, digits, make_graphs_dir):
    """Over HTTP a big JPEG for a model that allows scaled decode is decoded once, strictly, at
    reduced scale by the upload check; the scores match the graph's own scaled decode."""
    from app import create_app
    from app.config import Settings
    from app.images import check_images

    stored = Image.fromarray(phone_photo).transpose(STORE[8])
    encoded = jpeg(stored, 8, quality=90)
    [upload] = check_images([("p.jpg", encoded)], Settings(), jpeg_min_size=(8, 8))
    assert upload.data[:2] == b"BM" and (upload.width, upload.height) == (504, 378)  # 1/8, upright

    app = create_app({"GRAPHS_DIR": str(make_graphs_dir())})
    try:
        answer = app.test_client().post(
            "/image_classification?model=digits8&top_k=10", data=multipart((encoded, "p.jpg")),
            content_type="multipart/form-data",
        )
        assert answer.status_code == 200, answer.get_json()
        served = class_scores(answer.get_json()["models"]["digits8"])[0]
        in_graph = services_of(app).registry.get("digits8").servable.run([encoded])[0]
    finally:
        services_of(app).registry.close()
    assert np.abs(served - in_graph).max() < 0.02


def test_a_damaged_phone_photo_is_refused_by_the_scaled_decode(phone_photo):
    from app.config import Settings
    from app.images import CorruptImage, check_images

    encoded = bytearray(jpeg(phone_photo, quality=90))
    encoded[len(encoded) // 2 : len(encoded) // 2 + 5000] = bytes(5000)  # zeroed entropy data
    with pytest.raises(CorruptImage, match="damaged JPEG"):
        check_images([("p.jpg", bytes(encoded))], Settings(), jpeg_min_size=(160, 160))

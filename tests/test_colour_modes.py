"""Every format docs/models.md lists, in every colour mode it can hold, still and animated,
answers what its true RGB equivalent answers (issue 22: RGBA WebP was refused as corrupt).

The models are "probes" whose scores are the image itself: the mean of each channel over a
4x4 grid of 12x12 cells of the 48x48 input (48 scores for RGB, 16 for gray), in [0,1]. The
photo is 48x48 too, so the resize is the identity and a score is exactly the mean of the
decoded pixels of its cell. Each case carries the RGB image it stands for, computed here
without the service's decoders: gray replicated, palette entries looked up, a 16-bit sample
by its high byte, CMYK by its formula, alpha dropped. The served scores must equal the probe
of that image: to float rounding for lossless files, within the codec's error for JPEG and
lossy WebP.

The alpha rule, the same for every format: alpha is dropped and each pixel keeps the colour
stored under it (what TensorFlow's PNG decoder does with ``channels=3``, and Keras's
``load_img``, ``Image.convert("RGB")``). The photo's alpha hides its left half completely and
its top-right quarter by half, so compositing on black or white would move those cells'
means by 0.3 or more.

Three probes: ``probe_rgb`` lets the upload check decode gray and YCbCr JPEGs
(``scaled_decode``, at scale 1 here), ``probe_rgb_graph`` and ``probe_gray`` leave them to
the graph, so those JPEGs are served by both JPEG paths.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.services import services_of
from tests.helpers import encode, multipart

SIZE, CELL = 48, 12
GRID = SIZE // CELL
LOSSLESS, JPEG, LOSSY_WEBP = 1e-4, 0.02, 0.015  # per-cell mean error allowed, in [0,1] (seen: 0, 0.009, 0.0065)


# -- the photo and its alpha -------------------------------------------------------------------


def _photo() -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.chelsea()).resize((SIZE, SIZE), Image.Resampling.LANCZOS))


RGB = _photo()
ALPHA = np.full((SIZE, SIZE), 255, np.uint8)
ALPHA[:, : SIZE // 2] = 0  # fully transparent: the colour under it is still stored
ALPHA[: SIZE // 2, SIZE // 2 :] = 128
SECOND = np.ascontiguousarray(255 - RGB[::-1])  # an animation's second frame: nothing like the first
NOISE = np.random.default_rng(0).integers(0, 256, RGB.shape, dtype=np.uint16)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _palette(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(rgb).quantize(64)


def _palette_rgb(image: Image.Image) -> np.ndarray:
    """A P image's pixels looked up in its palette, by hand."""
    palette = np.array(image.getpalette(), np.uint8).reshape(-1, 3)
    return palette[np.asarray(image)]


def _replicate(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _with_alpha(image: np.ndarray, mode: str) -> Image.Image:
    return Image.fromarray(np.dstack([image, ALPHA]), mode)


def _png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow writes 16-bit gray only): gray, gray+alpha, RGB or RGBA."""
    height, width, channels = pixels.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _bmp(bits: int, rows: list[bytes], *, palette: np.ndarray | None = None, compression: int = 0) -> bytes:
    """A BMP written by hand (Pillow writes only 1, 8, 24 and 32 bits, uncompressed); rows bottom-up."""
    table = b"" if palette is None else b"".join(bytes([b, g, r, 0]) for r, g, b in palette)
    pixels = b"".join(rows)
    colours = 0 if palette is None else len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, SIZE, SIZE, 1, bits, compression, len(pixels), 2835, 2835, colours, 0)
    offset = 14 + len(info) + len(table)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + info + table + pixels


def _bmp_4bit(image: Image.Image) -> bytes:
    index = np.asarray(image)
    rows = [((row[0::2] << 4) | row[1::2]).astype(np.uint8).tobytes() for row in index[::-1]]
    return _bmp(4, rows, palette=_palette_table(image))


def _bmp_rle8(image: Image.Image) -> bytes:
    """Every pixel a run of one (BI_RLE8), each row ended by 0 0, the bitmap by 0 1."""
    rows = [b"".join(bytes([1, int(i)]) for i in row) + b"\0\0" for row in np.asarray(image)[::-1]]
    return _bmp(8, rows + [b"\0\1"], palette=_palette_table(image), compression=1)


def _bmp_16bit(rgb: np.ndarray) -> tuple[bytes, np.ndarray]:
    """X1R5G5B5 (BI_RGB) and the RGB it stands for, each 5-bit sample v as round(v * 255 / 31)."""
    five = rgb.astype(np.uint16) >> 3
    words = (five[..., 0] << 10) | (five[..., 1] << 5) | five[..., 2]
    rows = [row.astype("<u2").tobytes() for row in words[::-1]]
    return _bmp(16, rows), np.round(five * 255 / 31).astype(np.uint8)


def _palette_table(image: Image.Image) -> np.ndarray:
    return np.array(image.getpalette(), np.uint8).reshape(-1, 3)[: int(np.asarray(image).max()) + 1]


def _animated(fmt: str, frames: list[Image.Image], **options) -> bytes:
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **options)


# -- the cases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str  # format-mode[-variant][-animated]
    data: bytes
    rgb: np.ndarray  # uint8 [48, 48, 3]: the image the upload stands for
    tolerance: float


def _cases() -> list[Case]:
    gray, palette = _gray(RGB), _palette(RGB)
    bilevel = Image.fromarray(RGB).convert("1")  # dithered
    bilevel_rgb = _replicate(np.asarray(bilevel.convert("L")))
    gray_rgb, palette_rgb = _replicate(gray), _palette_rgb(palette)
    # P + transparency: one index for GIF; per-entry alpha (a tRNS chunk) for PNG.
    keyed = palette.copy()
    keyed.info["transparency"] = int(np.asarray(palette)[0, 0])
    alpha_table = palette.copy()
    alpha_table.info["transparency"] = bytes([0] * 16 + [128] * 16 + [255] * 32)
    gray_keyed = Image.fromarray(gray)
    gray_keyed.info["transparency"] = int(gray[0, 0])
    second_palette = _palette(SECOND)
    sixteen = Image.fromarray(RGB).quantize(16)
    cases = [
        # JPEG: gray, YCbCr, RGB stored as RGB (Adobe transform 0), CMYK (Pillow's C = 255 - R, K = 0).
        Case("jpeg-L", encode(gray, "JPEG", quality=95), gray_rgb, JPEG),
        Case("jpeg-RGB", encode(RGB, "JPEG", quality=95), RGB, JPEG),
        Case("jpeg-RGB-stored-rgb", encode(RGB, "JPEG", quality=95, keep_rgb=True), RGB, JPEG),
        Case("jpeg-CMYK", encode(Image.fromarray(RGB).convert("CMYK"), "JPEG", quality=95), _cmyk_rgb(RGB), JPEG),
        # PNG: every colour type and the usual bit depths; APNG's first frame is its IDAT image.
        Case("png-1", encode(bilevel, "PNG"), bilevel_rgb, LOSSLESS),
        Case("png-L", encode(gray, "PNG"), gray_rgb, LOSSLESS),
        Case("png-L-trns", encode(gray_keyed, "PNG"), gray_rgb, LOSSLESS),
        Case("png-LA", encode(_with_alpha(gray, "LA"), "PNG"), gray_rgb, LOSSLESS),
        Case("png-P", encode(palette, "PNG"), palette_rgb, LOSSLESS),
        Case("png-P-4bit", encode(sixteen, "PNG", bits=4), _palette_rgb(sixteen), LOSSLESS),
        Case("png-P-trns", encode(alpha_table, "PNG"), palette_rgb, LOSSLESS),
        Case("png-RGB", encode(RGB, "PNG"), RGB, LOSSLESS),
        Case("png-RGB-trns", encode(RGB, "PNG", transparency=tuple(int(v) for v in RGB[0, 0])), RGB, LOSSLESS),
        Case("png-RGBA", encode(_with_alpha(RGB, "RGBA"), "PNG"), RGB, LOSSLESS),
        Case("png-I;16", encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"), gray_rgb, LOSSLESS),
        Case("png-LA16", _png16(np.dstack([gray, ALPHA]).astype(np.uint16) * 257), gray_rgb, LOSSLESS),
        Case("png-RGB16", _png16(RGB.astype(np.uint16) * 257), RGB, LOSSLESS),
        # TensorFlow keeps a 16-bit sample's high byte (v >> 8), whatever the low byte.
        Case("png-RGB16-any-low-byte", _png16(RGB.astype(np.uint16) * 256 + NOISE), RGB, LOSSLESS),
        Case("png-RGBA16", _png16(np.dstack([RGB, ALPHA]).astype(np.uint16) * 257), RGB, LOSSLESS),
        Case("png-RGB-animated", _animated("PNG", [Image.fromarray(RGB), Image.fromarray(SECOND)]), RGB, LOSSLESS),
        Case("png-RGBA-animated", _animated("PNG", [_with_alpha(RGB, "RGBA"), _with_alpha(SECOND, "RGBA")]), RGB,
             LOSSLESS),
        # BMP: what Pillow writes: 1-bit and 8-bit palettes, 24-bit, 32-bit.
        Case("bmp-1", encode(bilevel, "BMP"), bilevel_rgb, LOSSLESS),
        Case("bmp-L", encode(gray, "BMP"), gray_rgb, LOSSLESS),
        Case("bmp-P", encode(palette, "BMP"), palette_rgb, LOSSLESS),
        Case("bmp-RGB", encode(RGB, "BMP"), RGB, LOSSLESS),
        Case("bmp-RGBA", encode(_with_alpha(RGB, "RGBA"), "BMP"), RGB, LOSSLESS),
        # BMP: what other programs write: 4-bit palette, run-length coded 8-bit, 16-bit 5-5-5.
        Case("bmp-P-4bit", _bmp_4bit(sixteen), _palette_rgb(sixteen), LOSSLESS),
        Case("bmp-P-rle8", _bmp_rle8(palette), palette_rgb, LOSSLESS),
        Case("bmp-RGB-16bit", *_bmp_16bit(RGB), 2 / 255),
    ]
    # GIF: palettes only (bi-level, gray, colour), with and without a transparent index.
    gifs = {"1": (bilevel, bilevel_rgb), "L": (Image.fromarray(gray), gray_rgb), "L-trns": (gray_keyed, gray_rgb),
            "P": (palette, palette_rgb), "P-trns": (keyed, palette_rgb)}
    for mode, (image, rgb) in gifs.items():
        cases.append(Case(f"gif-{mode}", encode(image, "GIF"), rgb, LOSSLESS))
        cases.append(Case(f"gif-{mode}-animated", _animated("GIF", [image, second_palette]), rgb, LOSSLESS))
    # WebP: RGB and RGBA, lossless and lossy, still and animated; Pillow stores L as RGB, LA
    # and P + transparency as RGBA. exact=True keeps the colour under transparent pixels.
    webp_sources = {
        "RGB": (Image.fromarray(RGB), Image.fromarray(SECOND), RGB),
        "RGBA": (_with_alpha(RGB, "RGBA"), _with_alpha(SECOND, "RGBA"), RGB),
        "L": (Image.fromarray(gray), None, gray_rgb),
        "LA": (_with_alpha(gray, "LA"), None, gray_rgb),
        "P": (palette, None, palette_rgb),
        "P-trns": (keyed, None, palette_rgb),
    }
    for mode, (image, second, rgb) in webp_sources.items():
        for kind, options, tolerance in (("lossless", {"lossless": True}, LOSSLESS),
                                         ("lossy", {"quality": 95}, LOSSY_WEBP)):
            cases.append(Case(f"webp-{mode}-{kind}", encode(image, "WEBP", exact=True, **options), rgb, tolerance))
            if second is not None:
                # Pillow's animation writer has no exact: libwebp stores black under alpha 0.
                stored = np.where(ALPHA[..., None] == 0, 0, rgb).astype(np.uint8) if "A" in mode else rgb
                data = _animated("WEBP", [image, second], **options)
                cases.append(Case(f"webp-{mode}-{kind}-animated", data, stored, tolerance))
    return cases


def _cmyk_rgb(rgb: np.ndarray) -> np.ndarray:
    """The RGB that Pillow's CMYK of ``rgb`` stands for: R = (255 - C)(255 - K) / 255, and so on."""
    cmyk = np.asarray(Image.fromarray(rgb).convert("CMYK")).astype(np.float64)
    return np.round((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255).astype(np.uint8)


CASES = _cases()


# -- the probes ----------------------------------------------------------------------------------


def _write_probe(root: Path, name: str, channels: int, *, scaled_decode: bool) -> None:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, SIZE, SIZE, channels], name="input")
        means = tf.nn.avg_pool2d(x, ksize=CELL, strides=CELL, padding="VALID")  # [N, 4, 4, channels]
        tf.reshape(means, [-1, GRID * GRID * channels], name="scores")
    directory = root / name / "1"
    directory.mkdir(parents=True)
    (directory / "model.pb").write_bytes(graph.as_graph_def().SerializeToString())
    manifest = {
        "input": {"tensor": "input:0", "height": SIZE, "width": SIZE, "channels": channels},
        "output": {"tensor": "scores:0", "kind": "scores"},
        "preprocessing": {"resize": "nearest", "scale": "[0,1]", "scaled_decode": scaled_decode},
    }
    (directory / "model.json").write_text(json.dumps(manifest))
    names = "RGB" if channels == 3 else "Y"
    labels = [f"row{r}-col{c}-{n}" for r in range(GRID) for c in range(GRID) for n in names]
    (directory / "labels.txt").write_text("\n".join(labels) + "\n")


def _probe(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the probes answer for these pixels: cell means of RGB, and of TensorFlow's gray."""
    image = rgb.astype(np.float64)
    # tf.image.rgb_to_grayscale on uint8: the weighted sum in [0,1], back to uint8 by * 255.5, floored.
    gray = np.floor(image @ np.array([0.2989, 0.5870, 0.1140], np.float32).astype(np.float64) / 255 * 255.5)
    gray = np.minimum(gray, 255)[..., None]

    def cells(pixels: np.ndarray) -> np.ndarray:
        return pixels.reshape(GRID, CELL, GRID, CELL, -1).mean(axis=(1, 3)).reshape(-1) / 255

    return cells(image), cells(gray)


@pytest.fixture(scope="module")
def probe_client(tmp_path_factory: pytest.TempPathFactory):
    from app import create_app

    root = tmp_path_factory.mktemp("probes")
    _write_probe(root, "probe_rgb", 3, scaled_decode=True)
    _write_probe(root, "probe_rgb_graph", 3, scaled_decode=False)
    _write_probe(root, "probe_gray", 1, scaled_decode=False)
    application = create_app({"GRAPHS_DIR": str(root)})
    yield application.test_client()
    services_of(application).registry.close()


def _served(client, case: Case, models: str) -> dict[str, np.ndarray]:
    response = client.post(
        f"/image_classification?model={models}&top_k={GRID * GRID * 3}",
        data=multipart((case.data, f"{case.id}.img")), content_type="multipart/form-data",
    )
    assert response.status_code == 200, (case.id, response.get_json())
    answers = {}
    for name, answer in response.get_json()["models"].items():
        entries = answer["results"][0]["top_k"]
        scores = np.zeros(len(entries))
        for entry in entries:
            scores[entry["class_id"]] = entry["score"]
        answers[name] = scores
    return answers


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_every_format_and_mode_answers_as_its_rgb_equivalent(probe_client, case):
    served = _served(probe_client, case, "probe_rgb") | _served(probe_client, case, "probe_rgb_graph,probe_gray")
    rgb, gray = _probe(case.rgb)
    wanted = {"probe_rgb": rgb, "probe_rgb_graph": rgb, "probe_gray": gray}
    errors = {name: float(np.abs(served[name] - want).max()) for name, want in wanted.items()}
    assert max(errors.values()) <= case.tolerance, f"{case.id}: largest cell-mean error per probe {errors}"


def test_the_cases_cover_every_format_the_readme_lists():
    formats = {case.id.split("-")[0] for case in CASES}
    assert formats == {"jpeg", "png", "gif", "bmp", "webp"}
    for fmt in ("png", "gif", "webp"):
        assert any(case.id.startswith(fmt) and case.id.endswith("animated") for case in CASES)


def test_the_probe_sees_a_wrong_alpha_rule():
    """Compositing the RGBA photo on black or white instead of dropping alpha would fail every case with alpha."""
    alpha = ALPHA[..., None] / 255.0
    for background in (0, 255):
        composited = np.round(RGB * alpha + background * (1 - alpha)).astype(np.uint8)
        assert np.abs(_probe(composited)[0] - _probe(RGB)[0]).max() > 10 * LOSSY_WEBP


def test_still_rgb_webp_and_plain_bmp_reach_the_graph_unchanged():
    """The fast paths stay: TensorFlow decodes still RGB WebP and 24/32-bit BMP itself."""
    from app.config import Settings
    from app.images import check_images

    unchanged = {
        "webp-RGB-lossy": True, "webp-RGB-lossless": True, "bmp-RGB": True, "bmp-RGBA": True, "png-RGBA": True,
        "webp-RGBA-lossy": False, "webp-RGB-lossy-animated": False, "bmp-P": False, "bmp-1": False, "gif-P": False,
        "bmp-P-rle8": False, "bmp-RGB-16bit": False,
    }
    by_id = {case.id: case for case in CASES}
    uploads = check_images([(name, by_id[name].data) for name in unchanged], Settings())
    assert {upload.name: upload.data == by_id[upload.name].data for upload in uploads} == unchanged
    assert all(Image.open(io.BytesIO(upload.data)).format == "BMP" for upload in uploads if not unchanged[upload.name])

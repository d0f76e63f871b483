"""Build a model's image preprocessing as TensorFlow ops, once, inside its own graph.

Why in the graph: one ``sess.run`` then does decode + resize + normalize + inference, in
TensorFlow's thread pools with the GIL released, and a request never adds an op (the graph
is finalized after this runs). The Python side only hands over the encoded bytes and each
JPEG's EXIF orientation (``app.exif``, read from the header in microseconds).

The pipeline, per image (every choice is a recipe from ``app.recipes``)::

    encoded bytes ─┬─ JPEG: pick the largest libjpeg scale (1/8, 1/4, 1/2, 1) that still
                   │        leaves the model's size after the crop ─ decode at that scale
                   │        ─ turn upright by the EXIF orientation
                   ├─ PNG/GIF/BMP/WebP: full decode
                   └─ decoded before the graph (``rgb_size`` [h, w] > 0): the bytes are
                            the RGB pixels themselves, uint8 [h, w, 3], upright; only reshaped
      ─ to the model's channels ─ central crop (optional) ─ resize ─┬─ "pixels" (float32, 0..255)
                                                                    └─ scale ─ flatten ─ model input

Scaled decode costs a 12 MP phone JPEG ~32 ms instead of 140–200 ms; it is on by default
only for antialiased resizes, whose averaging makes the result nearly the same (the
measured differences are in docs/performance.md, "Scaled JPEG decode").

Decoded before the graph: the upload check (``app.images``) decodes some images itself (a JPEG
at reduced scale, an animation's first frame); their pixels are fed as the bytes of the same
string feed with their size in ``rgb_size``, so the graph does not decode them again and
crops and resizes them exactly as it would have its own decode's.

``pixels`` is a named tensor so that a caller who already has decoded, resized pixels (for
example from another model with the same geometry) can feed them and skip decoding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from . import recipes
from .manifest import Manifest, Preprocessing

ENCODED_NAME = "graphserve/encoded"
ORIENTATION_NAME = "graphserve/orientation"
RGB_SIZE_NAME = "graphserve/rgb_size"
PIXELS_NAME = "graphserve/pixels"

_JPEG_RATIOS = (8, 4, 2, 1)


@dataclass(frozen=True)
class PreprocessingTensors:
    encoded: tf.Tensor  # string [N]: the feed for a batch of encoded images
    orientation: tf.Tensor  # int32 [N]: EXIF orientation per image (1: upright; defaults to all 1)
    rgb_size: tf.Tensor  # int32 [N, 2]: (h, w) of an item fed as RGB pixels, (0, 0) for encoded (the default)
    pixels: tf.Tensor  # float32 [N, H, W, C] in 0..255, after crop + resize
    model_input: tf.Tensor  # what replaces the model's input placeholder


def geometry_key(manifest: Manifest) -> tuple[object, ...]:
    """Models with equal keys produce identical ``pixels`` and can share one decode."""
    spec, pre = manifest.input, manifest.preprocessing
    pixels_only = dataclasses.replace(
        pre, scale="raw", mean=None, std=None, flatten=False, scaled_decode=recipes.scaled_decode(pre)
    )
    return (spec.height, spec.width, spec.channels, pixels_only)


def build_preprocessing(manifest: Manifest, *, input_dtype: tf.DType) -> PreprocessingTensors:
    """Add the preprocessing ops to the current default graph and return its endpoints."""
    spec = manifest.input
    pre = manifest.preprocessing
    encoded = tf.compat.v1.placeholder(tf.string, shape=[None], name=ENCODED_NAME)
    orientation = tf.compat.v1.placeholder_with_default(
        tf.ones_like(encoded, dtype=tf.int32), shape=[None], name=ORIENTATION_NAME
    )
    rgb_size = tf.compat.v1.placeholder_with_default(
        tf.zeros(tf.stack([tf.size(encoded), 2]), dtype=tf.int32), shape=[None, 2], name=RGB_SIZE_NAME
    )
    decode = _decoder(manifest)
    resize = _resizer(pre, spec.height, spec.width)

    def decode_one(args: tuple[tf.Tensor, tf.Tensor, tf.Tensor]) -> tf.Tensor:
        data, upright, size = args

        def fed() -> tf.Tensor:  # decoded before the graph: the bytes are the pixels
            return tf.reshape(tf.io.decode_raw(data, tf.uint8), tf.concat([size, [3]], 0))

        def decoded() -> tf.Tensor:
            return decode(data, upright if pre.exif_orientation else tf.constant(1))

        image = tf.cond(size[0] > 0, fed, decoded)
        image.set_shape([None, None, 3])
        if spec.channels == 1:
            image = tf.image.rgb_to_grayscale(image)
        if pre.central_crop is not None and pre.central_crop < 1:
            image = tf.image.central_crop(image, pre.central_crop)
        resized = resize(image)
        resized.set_shape([spec.height, spec.width, spec.channels])
        return tf.cast(resized, tf.float32)

    decoded = tf.map_fn(
        decode_one,
        (encoded, orientation, rgb_size),
        fn_output_signature=tf.TensorSpec([spec.height, spec.width, spec.channels], tf.float32),
        parallel_iterations=8,
    )
    pixels = tf.identity(decoded, name=PIXELS_NAME)
    scaled = recipes.scale_pixels(pixels, pre, constant=lambda v: tf.constant(v, tf.float32))
    if pre.flatten:
        scaled = tf.reshape(scaled, [-1, spec.height * spec.width * spec.channels])
    if scaled.dtype != input_dtype:
        scaled = tf.saturate_cast(scaled, input_dtype) if input_dtype.is_integer else tf.cast(scaled, input_dtype)
    return PreprocessingTensors(
        encoded=encoded, orientation=orientation, rgb_size=rgb_size, pixels=pixels, model_input=scaled
    )


# -- decode ----------------------------------------------------------------------------


def _decoder(manifest: Manifest) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """``decode(data, orientation)`` → uint8 [h, w, 3], upright, JPEGs at the scale the recipe allows."""
    pre = manifest.preprocessing
    # Pillow decodes with libjpeg's accurate integer DCT; TensorFlow's default is the fast one.
    dct = "INTEGER_ACCURATE" if recipes.resize_recipe(pre.resize).family == "pillow" else ""
    needed = tf.constant(recipes.decoded_size(manifest.input.height, manifest.input.width, pre), tf.float32)
    scaled = recipes.scaled_decode(pre)

    def jpeg(data: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
        def at(ratio: int) -> Callable[[], tf.Tensor]:
            return lambda: tf.io.decode_jpeg(data, channels=3, ratio=ratio, dct_method=dct)

        if scaled:
            size = tf.cast(tf.io.extract_jpeg_shape(data)[:2], tf.float32)
            size = tf.where(orientation >= 5, tf.reverse(size, [0]), size)  # 5–8 swap height and width
            fits = [tf.reduce_all(tf.math.ceil(size / r) >= needed) for r in _JPEG_RATIOS[:-1]]
            index = tf.where(fits[0], 0, tf.where(fits[1], 1, tf.where(fits[2], 2, 3)))
            image = tf.switch_case(index, [at(r) for r in _JPEG_RATIOS])
        else:
            image = at(1)()
        image.set_shape([None, None, 3])
        return upright(image, orientation)

    def other(data: tf.Tensor) -> tf.Tensor:
        # decode_image refuses channels=1 for GIF and BMP, so decode to RGB and convert later.
        image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        image.set_shape([None, None, 3])
        return image

    def decode(data: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
        image = tf.cond(tf.io.is_jpeg(data), lambda: jpeg(data, orientation), lambda: other(data))
        image.set_shape([None, None, 3])
        return image

    return decode


def upright(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Undo an EXIF orientation (1–8), as Pillow's ``ImageOps.exif_transpose`` does."""

    def transposed() -> tf.Tensor:
        return tf.transpose(image, [1, 0, 2])

    branches = [
        lambda: image,  # 1 upright
        lambda: tf.reverse(image, [1]),  # 2 mirrored left-right
        lambda: tf.reverse(image, [0, 1]),  # 3 rotated 180
        lambda: tf.reverse(image, [0]),  # 4 mirrored top-bottom
        transposed,  # 5 mirrored on the main diagonal
        lambda: tf.reverse(transposed(), [1]),  # 6 stored rotated 90 CCW: turn 90 CW
        lambda: tf.reverse(transposed(), [0, 1]),  # 7 mirrored on the anti-diagonal
        lambda: tf.reverse(transposed(), [0]),  # 8 stored rotated 90 CW: turn 90 CCW
    ]
    index = tf.clip_by_value(orientation, 1, 8) - 1
    return tf.switch_case(index, branches)


# -- resize ----------------------------------------------------------------------------


def _resizer(pre: Preprocessing, height: int, width: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """``resize(uint8 [h, w, c])`` → [height, width, c] by the manifest's recipe."""
    recipe = recipes.resize_recipe(pre.resize)
    size = [height, width]
    if recipe.family == "tf2":
        antialias = pre.antialias and recipe.kernel in ("bilinear", "bicubic")
        return lambda image: tf.image.resize(image, size, method=recipe.kernel, antialias=antialias)
    if recipe.family == "tf1":
        op = getattr(tf.raw_ops, recipe.kernel)
        flags = {"align_corners": pre.align_corners}
        if recipe.kernel != "ResizeArea":  # the one TF1 resize without half_pixel_centers
            flags["half_pixel_centers"] = pre.half_pixel_centers
        return lambda image: op(images=image[tf.newaxis], size=size, **flags)[0]
    if recipe.kernel == "nearest":
        return lambda image: _pillow_nearest(image, height, width)
    return lambda image: _pillow_resize(image, height, width, recipe.kernel)


def _pillow_nearest(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Pillow's NEAREST: source index floor(x0 + k * step), the sum accumulated in doubles.

    Pillow adds the step once per output pixel, so where ``(k + 0.5) * step`` lands on an
    integer (512 → 160) its rounding differs from TensorFlow's float32 product; a float64
    cumulative sum reproduces Pillow's indices exactly (checked over 900 size pairs).
    """

    def indices(size_in: tf.Tensor, size_out: int) -> tf.Tensor:
        step = tf.cast(size_in, tf.float64) / size_out
        steps = tf.concat([[step * 0.5], tf.fill([size_out - 1], step)], 0)
        return tf.minimum(tf.cast(tf.floor(tf.math.cumsum(steps)), tf.int32), size_in - 1)

    shape = tf.shape(image)
    rows = tf.gather(image, indices(shape[0], height), axis=0)
    return tf.gather(rows, indices(shape[1], width), axis=1)


def _pillow_resize(image: tf.Tensor, height: int, width: int, kernel: str) -> tf.Tensor:
    """Pillow's convolution resize: horizontal pass, round to uint8, vertical pass, round.

    Pillow's filters are TensorFlow's ``ScaleAndTranslate`` kernels with the support
    widened by the scale factor (antialiasing), and both use pixel centres; what is left
    is Pillow's fixed-point arithmetic (docs/models.md gives the measured residual).
    """
    x = tf.cast(image, tf.float32)[tf.newaxis]
    in_height = tf.shape(x)[1]
    for out in ([in_height, width], [height, width]):
        scale = tf.cast(tf.stack(out), tf.float32) / tf.cast(tf.shape(x)[1:3], tf.float32)
        x = tf.raw_ops.ScaleAndTranslate(
            images=x, size=tf.stack(out), scale=scale, translation=[0.0, 0.0], kernel_type=kernel, antialias=True
        )
        x = tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)
    return x[0]

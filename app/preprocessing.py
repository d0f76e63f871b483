"""Build a model's image preprocessing as TensorFlow ops, once, inside its own graph.

Why in the graph: one ``sess.run`` then does decode + resize + normalize + inference, in
TensorFlow's thread pools with the GIL released, and a request never adds an op (the graph
is finalized after this runs). The Python side only hands over the encoded bytes.

The pipeline, per image, is::

    encoded bytes ─ decode (JPEG/PNG/GIF first frame/BMP/WebP) ─ to the model's channels
      ─ central crop (optional) ─ resize ─┬─ "pixels" (float32, 0..255, feedable)
                                          └─ scale ─ flatten (optional) ─ model input

``pixels`` is a named tensor so that a caller who already has decoded, resized pixels (for
example from another model with the same geometry) can feed them and skip decoding.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from app.manifest import Manifest

ENCODED_NAME = "graphserve/encoded"
PIXELS_NAME = "graphserve/pixels"

_RESIZE = {
    "bilinear": tf.image.ResizeMethod.BILINEAR,
    "nearest": tf.image.ResizeMethod.NEAREST_NEIGHBOR,
    "bicubic": tf.image.ResizeMethod.BICUBIC,
    "area": tf.image.ResizeMethod.AREA,
}


@dataclass(frozen=True)
class PreprocessingTensors:
    encoded: tf.Tensor  # string [N]: the feed for a batch of encoded images
    pixels: tf.Tensor  # float32 [N, H, W, C] in 0..255, after crop + resize
    model_input: tf.Tensor  # what replaces the model's input placeholder


def geometry_key(manifest: Manifest) -> tuple[object, ...]:
    """Models with equal keys produce identical ``pixels`` and can share one decode."""
    pre = manifest.preprocessing
    return (
        manifest.input.height,
        manifest.input.width,
        manifest.input.channels,
        pre.resize,
        pre.antialias,
        pre.central_crop,
    )


def build_preprocessing(manifest: Manifest, *, input_dtype: tf.DType) -> PreprocessingTensors:
    """Add the preprocessing ops to the current default graph and return its endpoints."""
    spec = manifest.input
    pre = manifest.preprocessing
    channels = spec.channels
    resize_method = _RESIZE[pre.resize]
    antialias = pre.antialias and pre.resize in ("bilinear", "bicubic")

    encoded = tf.compat.v1.placeholder(tf.string, shape=[None], name=ENCODED_NAME)

    def decode_one(data: tf.Tensor) -> tf.Tensor:
        # decode_image refuses channels=1 for GIF and BMP, so decode to RGB and convert.
        image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        image.set_shape([None, None, 3])
        if channels == 1:
            image = tf.image.rgb_to_grayscale(image)
        if pre.central_crop is not None and pre.central_crop < 1:
            image = tf.image.central_crop(image, pre.central_crop)
        resized = tf.image.resize(
            image, [spec.height, spec.width], method=resize_method, antialias=antialias
        )
        return tf.cast(resized, tf.float32)

    decoded = tf.map_fn(
        decode_one,
        encoded,
        fn_output_signature=tf.TensorSpec([spec.height, spec.width, channels], tf.float32),
        parallel_iterations=8,
    )
    pixels = tf.identity(decoded, name=PIXELS_NAME)
    scaled = _scale(pixels, manifest)
    if pre.flatten:
        scaled = tf.reshape(scaled, [-1, spec.height * spec.width * channels])
    if scaled.dtype != input_dtype:
        scaled = tf.saturate_cast(scaled, input_dtype) if input_dtype.is_integer else tf.cast(scaled, input_dtype)
    return PreprocessingTensors(encoded=encoded, pixels=pixels, model_input=scaled)


def _scale(pixels: tf.Tensor, manifest: Manifest) -> tf.Tensor:
    pre = manifest.preprocessing
    if pre.scale == "[-1,1]":
        return pixels / 127.5 - 1.0
    if pre.scale == "[0,1]":
        return pixels / 255.0
    if pre.scale == "(x-128)/128":
        return (pixels - 128.0) / 128.0
    if pre.scale == "mean_std":
        assert pre.mean is not None and pre.std is not None  # guaranteed by manifest.parse
        mean = tf.constant(pre.mean, tf.float32)
        std = tf.constant(pre.std, tf.float32)
        return (pixels - mean) / std
    return pixels  # "raw"

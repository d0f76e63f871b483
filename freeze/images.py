"""Images as a model's input, for verifying a frozen model on real photos.

A sample image goes through the service's own preprocessing graph (``app.preprocessing``,
built from the manifest in a throwaway graph), so what the freeze tool verifies is exactly
what the service will feed the model: same decoder, EXIF orientation, scaled decode,
crop and resize. Scaling uses the same recipe table (``app.recipes``) on NumPy arrays.

Example::

    python scripts/freeze.py tiny.keras --name tiny --sample docs/samples/cat.jpg --sample docs/samples/face.jpg
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from ._serving import exif, preprocessing, recipes
from ._serving import manifest as manifest_lib
from .errors import SourceError


def load_images(paths: Sequence[str | Path], manifest: manifest_lib.Manifest) -> np.ndarray:
    """Float32 pixels ``[N, H, W, C]`` in 0..255, as the service's graph makes them from these files."""
    encoded = []
    for path in paths:
        try:
            encoded.append(Path(path).read_bytes())
        except OSError as exc:
            raise SourceError(f"cannot read sample image {path}: {exc.strerror or exc}") from None
    return pixels_of(encoded, manifest, names=[str(p) for p in paths])


def pixels_of(encoded: Sequence[bytes], manifest: manifest_lib.Manifest, *, names: Sequence[str] | None = None) -> np.ndarray:
    """Run the service's preprocessing graph for ``manifest`` on encoded images, one at a time."""
    graph = tf.Graph()
    with graph.as_default():
        pre = preprocessing.build_preprocessing(manifest, input_dtype=tf.float32)
    pixels = []
    with tf.compat.v1.Session(graph=graph) as session:
        for i, data in enumerate(encoded):
            feed = {pre.encoded: [data], pre.orientation: [exif.jpeg_orientation(data)]}
            try:
                pixels.append(session.run(pre.pixels, feed)[0])
            except tf.errors.InvalidArgumentError:
                name = names[i] if names else f"#{i}"
                raise SourceError(f"cannot decode sample image {name}: not a JPEG, PNG, GIF, BMP or WebP file") from None
    return np.stack(pixels)


def random_images(count: int, manifest: manifest_lib.Manifest, *, seed: int = 0) -> np.ndarray:
    """``count`` random uint8 images of the model's size: input in the model's real range."""
    spec = manifest.input
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, spec.height, spec.width, spec.channels), dtype=np.uint8)


def to_model_input(pixels: np.ndarray, manifest: manifest_lib.Manifest) -> np.ndarray:
    """Scale ``[N, H, W, C]`` pixels in 0..255 as the manifest says (and flatten if asked)."""
    pre = manifest.preprocessing
    x = recipes.scale_pixels(pixels.astype(np.float32), pre, constant=lambda v: np.asarray(v, np.float32))
    if pre.flatten:
        x = x.reshape(len(x), -1)
    return x

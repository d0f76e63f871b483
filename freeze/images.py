"""Images as a model's input, in NumPy: for verifying on real photos and checking demos.

The service does its preprocessing with TF ops inside the served graph; this is the same
recipe (read from the manifest) done with Pillow and NumPy, close enough to feed a source
model and its frozen graph the same realistic input. It is not used on the request path.

Example::

    python scripts/freeze.py model.h5 --name mymodel --sample cat.jpg --sample dog.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from app.manifest import Manifest
from freeze.errors import SourceError

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
}


def load_image(path: str | Path, manifest: Manifest) -> np.ndarray:
    """Read ``path`` as the model sees it: uint8 ``[H, W, C]`` (crop, resize, colour mode)."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return prepare_image(image, manifest)
    except (OSError, UnidentifiedImageError) as exc:
        raise SourceError(f"cannot read sample image {path}: {exc}") from None


def prepare_image(image: Image.Image, manifest: Manifest) -> np.ndarray:
    """Central-crop, resize and convert a PIL image to uint8 ``[H, W, C]``."""
    spec, pre = manifest.input, manifest.preprocessing
    image = image.convert("L" if spec.channels == 1 else "RGB")
    if pre.central_crop:
        width, height = image.size
        crop_w, crop_h = round(width * pre.central_crop), round(height * pre.central_crop)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
    image = image.resize((spec.width, spec.height), _RESAMPLE[pre.resize])
    return np.asarray(image, dtype=np.uint8).reshape(spec.height, spec.width, spec.channels)


def random_images(count: int, manifest: Manifest, *, seed: int = 0) -> np.ndarray:
    """``count`` random uint8 images of the model's size: input in the model's real range."""
    spec = manifest.input
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, spec.height, spec.width, spec.channels), dtype=np.uint8)


def to_model_input(pixels: np.ndarray, manifest: Manifest) -> np.ndarray:
    """Scale uint8 ``[N, H, W, C]`` pixels as the manifest says (and flatten if asked)."""
    pre = manifest.preprocessing
    x = pixels.astype(np.float32)
    if pre.scale == "[-1,1]":
        x = x / 127.5 - 1.0
    elif pre.scale == "[0,1]":
        x = x / 255.0
    elif pre.scale == "(x-128)/128":
        x = (x - 128.0) / 128.0
    elif pre.scale == "mean_std":
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if pre.flatten:
        x = x.reshape(len(x), -1)
    return x

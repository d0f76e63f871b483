"""Write a frozen graph where the service finds it: ``graphs/<name>/<version>/``.

A version folder holds ``model.pb``, ``model.json`` (the manifest, see ``app.manifest``)
and, when labels are given, ``labels.txt`` (line i = class id i). The manifest is built
from what the frozen graph says about itself (input shape, fixed batch size, whether the
output is a softmax) plus what only the user knows (scaling), validated with
``app.manifest_lib.parse`` before anything is written. Versions are never overwritten unless
asked; a version appears complete or not at all (written beside, then renamed).

Example::

    python scripts/freeze.py tiny.keras --name tiny --scale "[0,1]" --labels cat,dog,bird
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from . import graph as g
from ._serving import manifest as manifest_lib
from .candidates import producer
from .errors import ExportError
from .source_base import FrozenGraph

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ImageOptions:
    """What the user says about the model's images; ``None`` means "read it from the graph"."""

    height: int | None = None
    width: int | None = None
    channels: int | None = None
    flatten: bool | None = None
    scale: str = "[0,1]"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str = "bilinear"
    antialias: bool | None = None  # TF2 resizes only; None: the manifest's default (on)
    align_corners: bool = False  # tf1_* resizes only
    half_pixel_centers: bool = False  # tf1_* resizes only
    scaled_decode: bool | None = None  # None: the recipe's default (``app.recipes.scaled_decode``)
    exif_orientation: bool = True
    central_crop: float | None = None
    output_kind: str | None = None


def read_labels(path: str | Path) -> list[str]:
    """One label per line; trailing blank lines are ignored, blank lines inside are not."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ExportError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ExportError(f"labels file {path} is empty")
    return [line.strip() for line in lines]


def _image_size(shape: tuple[int | None, ...] | None, options: ImageOptions) -> tuple[int, int, int, bool]:
    """(height, width, channels, flatten) from the input shape and the user's options."""
    given = (options.height, options.width, options.channels)
    if shape is not None and len(shape) == 4:
        if options.flatten:
            raise ExportError(f"input shape {list(shape)} is an image, not a flat vector; drop --flatten")
        dims = []
        for label, known, wanted in zip(("height", "width", "channels"), shape[1:], given):
            if known is not None and wanted is not None and known != wanted:
                raise ExportError(f"--{label} {wanted} does not match the graph's input {label} {known}")
            value = known if known is not None else wanted
            if value is None:
                raise ExportError(f"the graph's input {label} is not fixed ({list(shape)}); give --{label}")
            dims.append(value)
        return dims[0], dims[1], dims[2], False
    if shape is not None and len(shape) == 2:
        if options.flatten is False:
            raise ExportError(f"input shape {list(shape)} is a flat vector; it needs flatten preprocessing")
        size = shape[1]
        h, w, c = given
        if h is not None and w is not None and c is not None:
            if size is not None and h * w * c != size:
                raise ExportError(
                    f"--height {h} x --width {w} x --channels {c} = {h * w * c}, but the input takes {size} values"
                )
            return h, w, c, True
        if size is None:
            raise ExportError(f"input shape {list(shape)}: give --height, --width and --channels")
        fits = []
        for c in [options.channels] if options.channels else [1, 3]:
            side = math.isqrt(size // c)
            if side * side * c == size and all(v in (None, side) for v in given[:2]):
                fits.append((side, side, c))
        if len(fits) != 1:
            if any(v is not None for v in given):
                shown = "x".join("?" if v is None else str(v) for v in given)
                raise ExportError(
                    f"a flat input of {size} values is not {shown}; give --height, --width and --channels"
                )
            raise ExportError(
                f"cannot tell the image size from a flat input of {size} values; give --height, --width and --channels"
            )
        log.info("flat input of %d values read as %dx%d with %d channel(s)", size, *fits[0])
        return fits[0][0], fits[0][1], fits[0][2], True
    if shape is None and all(v is not None for v in given):
        return options.height, options.width, options.channels, bool(options.flatten)  # type: ignore[return-value]
    raise ExportError(
        f"input shape {'unknown' if shape is None else list(shape)} is not an image batch [N,H,W,C] or [N,H*W*C]; "
        "give --height, --width and --channels, or write just the graph with --output-pb"
    )


def output_kind(frozen: FrozenGraph) -> str:
    """``probabilities`` after a Softmax, ``scores`` after a ReLU/sigmoid, else ``logits``."""
    graph = g.import_graph(frozen.graph_def)
    op = producer(graph.get_tensor_by_name(frozen.outputs[0].name)).op
    if op.type == "Softmax":
        return "probabilities"
    if op.type in ("Relu", "Relu6", "Sigmoid"):
        return "scores"
    return "logits"


def build_manifest(
    *,
    frozen: FrozenGraph,
    image: ImageOptions,
    labels: Sequence[str] | None = None,
    info: dict[str, Any] | None = None,
) -> manifest_lib.Manifest:
    """The manifest for serving ``frozen`` as an image classifier, validated."""
    if len(frozen.inputs) != 1:
        names = ", ".join(i.name for i in frozen.inputs)
        raise ExportError(
            f"the service feeds one image tensor, but the graph has {len(frozen.inputs)} inputs ({names})"
        )
    if len(frozen.outputs) != 1:
        names = ", ".join(o.name for o in frozen.outputs)
        raise ExportError(f"the service reads one output tensor; pick one of {names} with --output")
    inp, out = frozen.inputs[0], frozen.outputs[0]
    if inp.dtype != "float32":
        raise ExportError(f"input '{inp.name}' is {inp.dtype}; the service feeds float32 images")
    height, width, channels, flatten = _image_size(inp.shape, image)
    if out.shape is not None and len(out.shape) != 2:
        raise ExportError(f"output '{out.name}' has shape {list(out.shape)}; a classifier's output is [N, classes]")
    classes = out.shape[1] if out.shape is not None else None
    if labels is not None and classes is not None and len(labels) != classes:
        raise ExportError(f"{len(labels)} labels given, but output '{out.name}' has {classes} classes")
    batch_size = inp.shape[0] if inp.shape else None
    preprocessing: dict[str, Any] = {"resize": image.resize, "scale": image.scale, "flatten": flatten}
    optional = {
        "antialias": image.antialias,
        "align_corners": image.align_corners or None,
        "half_pixel_centers": image.half_pixel_centers or None,
        "scaled_decode": image.scaled_decode,
        "exif_orientation": None if image.exif_orientation else False,
    }
    preprocessing.update({key: value for key, value in optional.items() if value is not None})
    if image.mean is not None:
        preprocessing["mean"] = list(image.mean)
    if image.std is not None:
        preprocessing["std"] = list(image.std)
    if image.central_crop is not None:
        preprocessing["central_crop"] = image.central_crop
    data: dict[str, Any] = {
        "input": {"tensor": inp.name, "height": height, "width": width, "channels": channels},
        "output": {"tensor": out.name, "kind": image.output_kind or output_kind(frozen)},
        "preprocessing": preprocessing,
        "info": dict(info or {}),
    }
    if batch_size is not None:
        data["batch_size"] = batch_size
    try:
        parsed = manifest_lib.parse(data, manifest_lib.MANIFEST_FILE)
    except manifest_lib.ManifestError as exc:
        raise ExportError(f"invalid manifest: {exc}") from None
    assert isinstance(parsed, manifest_lib.Manifest)  # no "signatures": an image model's
    return parsed


def next_version(model_dir: Path) -> int:
    """One more than the highest numbered version folder, or 1."""
    versions = (
        [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()] if model_dir.is_dir() else []
    )
    return max(versions, default=0) + 1


def check_destination(graphs_dir: str | Path, name: str, version: int | None, *, overwrite: bool) -> Path:
    """The version folder to write (the next free one when ``version`` is None), or why not."""
    if not _NAME.match(name):
        raise ExportError(f"model name '{name}' must be letters, digits, '.', '_' or '-' (not starting with a symbol)")
    if version is not None and version < 1:
        raise ExportError(f"version must be a positive integer, got {version}")
    model_dir = Path(graphs_dir) / name
    target = model_dir / str(version or next_version(model_dir))
    if target.exists() and not overwrite:
        raise ExportError(
            f"{target} already exists; pass --overwrite to replace it "
            f"or --version {next_version(model_dir)} for a new one"
        )
    return target


def write_model(
    *,
    graphs_dir: str | Path,
    name: str,
    graph_def: tf.compat.v1.GraphDef,
    manifest: manifest_lib.AnyManifest,
    labels: Sequence[str] | None = None,
    version: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``graphs_dir/name/version/`` (next free version when None); return its path."""
    target = check_destination(graphs_dir, name, version, overwrite=overwrite)
    model_dir, version = target.parent, int(target.name)
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.writing-", dir=model_dir))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a service running as another user must read it
        (staging / manifest_lib.GRAPH_FILE).write_bytes(graph_def.SerializeToString())
        manifest_lib.dump(manifest, staging / manifest_lib.MANIFEST_FILE)
        if labels is not None:
            (staging / manifest_lib.LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{version}.old-", dir=model_dir))
            target.rename(old / "v")
            staging.rename(target)
            shutil.rmtree(old)
        else:
            staging.rename(target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"cannot write {target}: {exc}") from None
    return target

"""The manifest (``model.json``) that sits beside every served ``model.pb``.

The manifest is the contract between ``scripts/freeze.py`` (which writes it) and the
service (which reads it): which tensors to use, what image the model expects and how to
turn an upload into that image. It is validated strictly, because a typo such as
``"chanels": 3`` would otherwise be silently ignored and serve wrong answers.

Example (every field but ``input``/``output`` optional)::

    {
      "input":  {"tensor": "input_1:0", "height": 160, "width": 160, "channels": 3},
      "output": {"tensor": "dense/Softmax:0", "kind": "probabilities"},
      "preprocessing": {"resize": "bilinear", "antialias": true,
                        "scale": "[-1,1]", "central_crop": 0.875, "flatten": false,
                        "scaled_decode": true, "exif_orientation": true},
      "batch_size": null,
      "batching": {"max_batch_size": 16, "batch_timeout_ms": 0, "max_queue": 256,
                   "workers": 2, "allowed_batch_sizes": null},
      "optimize": {"fold": true, "remapper": true, "xla": false},
      "info": {"anything": "free-form, kept for humans, ignored by the service"}
    }

Scale presets and resize methods are listed, once, in ``app.recipes`` (pixel values start
in 0..255; ``"mean_std"`` takes ``mean``/``std`` in 0..255 units). ``antialias`` applies to
the TF2 methods only, ``align_corners``/``half_pixel_centers`` to the ``tf1_*`` ones only.
``scaled_decode`` (default: on for antialiased resizes) decodes a JPEG at 1/2, 1/4 or 1/8
scale when that still leaves at least the model's size; ``exif_orientation`` (default on)
turns a JPEG upright by its EXIF Orientation tag before the crop and resize.
Output kinds: ``"probabilities"`` used as they are; ``"logits"`` softmax applied in the
graph; ``"scores"`` ranked as they are (e.g. a ReLU last layer).

A model that is not an image classifier (a regressor, an embedding model, a detector with
two inputs) has ``signatures`` instead of ``input``/``output``: it is served by its own
tensors only, without preprocessing, labels or top-k (``TensorManifest``)::

    {
      "signatures": {
        "serving_default": {
          "method": "predict",
          "inputs":  {"x": {"tensor": "x:0", "dtype": "float32", "shape": null}},
          "outputs": {"y": {"tensor": "y:0", "dtype": "float32", "shape": [-1, 1]}}
        }
      },
      "batch_size": null, "batching": {...}, "optimize": {...}, "info": {...}
    }

Keys are the names clients use (a SavedModel's signature keys; the graph's tensor names
for other sources); ``shape`` is the declared one (``null``: unknown rank, ``-1``: any size),
shown in metadata. Requests are checked against what the graph's placeholder accepts, which
may be looser. ``dtype`` is a TensorFlow dtype name (``TENSOR_DTYPES``); ``method``
``predict``, ``classify`` or ``regress`` (TF Serving's three signature kinds).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from . import model_files
from .recipes import RESIZE_METHODS, RESIZES, SCALE_PRESETS

MANIFEST_FILE = "model.json"
GRAPH_FILE = "model.pb"
LABELS_FILE = "labels.txt"

OUTPUT_KINDS = ("probabilities", "logits", "scores")
TENSOR_DTYPES = (
    "float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool", "string",
)
SIGNATURE_METHODS = ("predict", "classify", "regress")
ENGINES = ("auto", "tensorflow", "litert")  # what runs a model's model part (``app.engines``)
PRECISIONS = ("fp32", "bf16", "int8")  # what it computes in; reduced only when asked (``app.precision``)
DEFAULT_SIGNATURE = "serving_default"


class FileFieldError(ValueError):
    """A JSON file we read is wrong: the message names the file and, when known, the field."""

    def __init__(self, path: Path | str, field_name: str | None, message: str) -> None:
        where = f"{path}: field '{field_name}'" if field_name else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.field = field_name


class ManifestError(FileFieldError):
    """A manifest is missing, unreadable, or has an unknown/missing/invalid field."""


@dataclass(frozen=True)
class InputSpec:
    tensor: str
    height: int
    width: int
    channels: int


@dataclass(frozen=True)
class OutputSpec:
    tensor: str
    kind: str = "probabilities"


@dataclass(frozen=True)
class Preprocessing:
    resize: str = "bilinear"
    antialias: bool = True
    scale: str = "[0,1]"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    central_crop: float | None = None
    flatten: bool = False
    align_corners: bool = False  # tf1_* only, as the TF1 op took it
    half_pixel_centers: bool = False  # tf1_* only
    scaled_decode: bool | None = None  # None: on for antialiased resizes (``recipes.scaled_decode``)
    exif_orientation: bool = True


@dataclass(frozen=True)
class BatchingSpec:
    """Per-model batch scheduler knobs (TF Serving's names, in our units)."""

    max_batch_size: int = 16
    batch_timeout_ms: float = 0.0  # on CPU, 0 is usually best: a batch forms from what queued meanwhile
    max_queue: int = 256
    workers: int = 2  # two sess.runs at once: TF releases the GIL, one runs while the other forms
    # Pad each batch up to the next of these sizes (largest == max_batch_size), so a graph
    # compiled per shape (XLA) sees a few shapes only. None: run batches as they form.
    allowed_batch_sizes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class OptimizeSpec:
    """How the graph is optimized once, at load (see ``app.optimize``); defaults: what won."""

    fold: bool = True  # fold constants, identities and batch norms into conv/matmul weights
    remapper: bool = True  # grappler's op fusions (oneDNN's included)
    xla: bool = False  # XLA JIT on the model's ops


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature: the graph tensor, its dtype and declared shape."""

    tensor: str
    dtype: str
    shape: tuple[int, ...] | None = None  # None: unknown rank; -1: any size

    def to_json(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "dtype": self.dtype,
                "shape": None if self.shape is None else list(self.shape)}


@dataclass(frozen=True)
class SignatureSpec:
    """A named function of the graph: inputs and outputs by the keys clients send and read."""

    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    method: str = "predict"

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method,
                "inputs": {k: v.to_json() for k, v in self.inputs.items()},
                "outputs": {k: v.to_json() for k, v in self.outputs.items()}}


@dataclass(frozen=True)
class TensorManifest:
    """The manifest of a model served by its own tensors only (see the module docstring)."""

    signatures: dict[str, SignatureSpec]
    batch_size: int | None = None
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    optimize: OptimizeSpec = field(default_factory=OptimizeSpec)
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"signatures": {k: v.to_json() for k, v in self.signatures.items()}}
        if self.batch_size is not None:
            data["batch_size"] = self.batch_size
        _common_json(data, self.batching, self.optimize, self.info)
        return data


@dataclass(frozen=True)
class Manifest:
    input: InputSpec
    output: OutputSpec
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    batch_size: int | None = None
    batching: BatchingSpec = field(default_factory=BatchingSpec)
    optimize: OptimizeSpec = field(default_factory=OptimizeSpec)
    info: dict[str, Any] = field(default_factory=dict)
    engine: str | None = None  # None: the service's --engine (``app.engines``)
    precision: str = "fp32"  # bf16: TF's Session on oneDNN's bf16 kernels; int8: litert, quantized

    def to_json(self) -> dict[str, Any]:
        """The manifest as the dict that ``model.json`` holds (round-trips ``parse``)."""
        data = asdict(self)
        pre = data["preprocessing"]
        for key in ("mean", "std", "central_crop", "scaled_decode"):
            if pre[key] is None:
                del pre[key]
            elif isinstance(pre[key], tuple):
                pre[key] = list(pre[key])
        recipe = RESIZES[self.preprocessing.resize]
        if not recipe.uses_antialias_field:
            del pre["antialias"]
        if not recipe.uses_corner_flags:
            del pre["align_corners"], pre["half_pixel_centers"]
        if pre["exif_orientation"]:
            del pre["exif_orientation"]  # the default: older readers need not know the field
        for key in ("batching", "optimize", "info"):
            del data[key]
        if data["engine"] is None:
            del data["engine"]
        if data["precision"] == "fp32":
            del data["precision"]
        _common_json(data, self.batching, self.optimize, self.info)
        return data


AnyManifest = Manifest | TensorManifest


def _common_json(data: dict[str, Any], batching: BatchingSpec, optimize: OptimizeSpec, info: dict[str, Any]) -> None:
    """The fields both manifests have, as ``model.json`` holds them (defaults left out, so that
    models follow the service's defaults as they improve)."""
    if batching != BatchingSpec():
        data["batching"] = asdict(batching)
        if batching.allowed_batch_sizes is None:
            del data["batching"]["allowed_batch_sizes"]
        else:
            data["batching"]["allowed_batch_sizes"] = list(batching.allowed_batch_sizes)
    if optimize != OptimizeSpec():
        data["optimize"] = asdict(optimize)
    if info:
        data["info"] = dict(info)


def parse(data: Any, path: Path | str = MANIFEST_FILE) -> AnyManifest:
    """Validate a decoded ``model.json``; raise ``ManifestError`` naming the bad field.
    ``signatures`` makes it a ``TensorManifest``, else it is an image classifier's ``Manifest``."""
    top = _Object(data, path, None)
    tensor_model = isinstance(data, dict) and "signatures" in data
    if tensor_model and ("input" in data or "output" in data or "preprocessing" in data):
        field_name = next(k for k in ("input", "output", "preprocessing") if k in data)
        raise ManifestError(path, field_name, "a model with 'signatures' is served by its own tensors: "
                            "it has no image 'input', 'output' or 'preprocessing'")
    signatures_obj = top.object("signatures", required=False) if tensor_model else None
    input_obj = top.object("input", required=not tensor_model)
    output_obj = top.object("output", required=not tensor_model)
    pre_obj = top.object("preprocessing", required=False)
    batching_obj = top.object("batching", required=False)
    optimize_obj = top.object("optimize", required=False)
    batch_size = top.integer("batch_size", required=False, minimum=1)
    info = top.raw("info", {})
    if not isinstance(info, dict):
        raise ManifestError(path, "info", "must be an object")
    engine = None if tensor_model or top.raw("engine") is None else top.choice("engine", ENGINES, default="auto")
    precision = top.choice("precision", PRECISIONS, default="fp32")
    _check_precision(path, precision, tensor_model=tensor_model, engine=engine, optimize_obj=optimize_obj)
    top.reject_unknown()
    batching, optimize = _batching(batching_obj, path), _optimize(optimize_obj)
    if signatures_obj is not None:
        return TensorManifest(signatures=_signatures(signatures_obj, path), batch_size=batch_size,
                              batching=batching, optimize=optimize, info=dict(info))
    assert input_obj is not None and output_obj is not None  # required above

    channels = input_obj.integer("channels", required=True, minimum=1)
    if channels not in (1, 3):
        raise ManifestError(path, "input.channels", f"must be 1 or 3, got {channels}")
    input_spec = InputSpec(
        tensor=input_obj.tensor_name("tensor"),
        height=input_obj.integer("height", required=True, minimum=1),
        width=input_obj.integer("width", required=True, minimum=1),
        channels=channels,
    )
    input_obj.reject_unknown()

    output_spec = OutputSpec(
        tensor=output_obj.tensor_name("tensor"),
        kind=output_obj.choice("kind", OUTPUT_KINDS, default="probabilities"),
    )
    output_obj.reject_unknown()

    preprocessing = Preprocessing()
    if pre_obj is not None:
        scale = pre_obj.choice("scale", SCALE_PRESETS, default="[0,1]")
        mean = pre_obj.numbers("mean", length=channels)
        std = pre_obj.numbers("std", length=channels)
        if scale == "mean_std" and (mean is None or std is None):
            raise ManifestError(path, "preprocessing.mean", "scale 'mean_std' needs 'mean' and 'std'")
        if scale != "mean_std" and (mean is not None or std is not None):
            raise ManifestError(path, "preprocessing.mean", "'mean'/'std' are only used with scale 'mean_std'")
        if std is not None and any(s == 0 for s in std):
            raise ManifestError(path, "preprocessing.std", "must not contain 0")
        crop = pre_obj.number("central_crop")
        if crop is not None and not 0 < crop <= 1:
            raise ManifestError(path, "preprocessing.central_crop", f"must be in (0, 1], got {crop}")
        resize = pre_obj.choice("resize", RESIZE_METHODS, default="bilinear")
        recipe = RESIZES[resize]
        if not recipe.uses_antialias_field and pre_obj.raw("antialias") is not None:
            raise ManifestError(
                path, "preprocessing.antialias",
                f"applies to bilinear, bicubic, area and nearest; '{resize}' is "
                + ("never antialiased" if recipe.family == "tf1" else "antialiased as Pillow is"),
            )
        align_corners = pre_obj.boolean("align_corners", default=False)
        half_pixel = pre_obj.boolean("half_pixel_centers", default=False)
        if (align_corners or half_pixel) and not recipe.uses_corner_flags:
            field_name = "align_corners" if align_corners else "half_pixel_centers"
            raise ManifestError(path, f"preprocessing.{field_name}", f"applies to the tf1_* resizes only, not '{resize}'")
        if align_corners and half_pixel:
            raise ManifestError(
                path, "preprocessing.half_pixel_centers", "cannot be true together with align_corners (TF1 refused it too)"
            )
        scaled = pre_obj.raw("scaled_decode")
        if scaled is not None and not isinstance(scaled, bool):
            raise ManifestError(path, "preprocessing.scaled_decode", f"must be true or false, got {scaled!r}")
        preprocessing = Preprocessing(
            resize=resize,
            antialias=pre_obj.boolean("antialias", default=True),
            scale=scale,
            mean=mean,
            std=std,
            central_crop=crop,
            flatten=pre_obj.boolean("flatten", default=False),
            align_corners=align_corners,
            half_pixel_centers=half_pixel,
            scaled_decode=scaled,
            exif_orientation=pre_obj.boolean("exif_orientation", default=True),
        )
        pre_obj.reject_unknown()

    return Manifest(
        input=input_spec,
        output=output_spec,
        preprocessing=preprocessing,
        batch_size=batch_size,
        batching=batching,
        optimize=optimize,
        info=dict(info),
        engine=engine,
        precision=precision,
    )


# The engine each reduced precision runs on (measured: docs/models.md, "Reduced precision").
PRECISION_ENGINES = {"bf16": "tensorflow", "int8": "litert"}


def _check_precision(path: Path | str, precision: str, *, tensor_model: bool, engine: str | None,
                     optimize_obj: _Object | None) -> None:
    """A reduced precision runs on one engine: a manifest that pins another, or XLA (which would
    compile bf16's oneDNN kernels away), is refused here rather than silently served at fp32."""
    if precision == "fp32":
        return
    if tensor_model:
        raise ManifestError(path, "precision", "reduced precision is for image classifiers only (for now)")
    runs_on = PRECISION_ENGINES[precision]
    if engine not in (None, "auto", runs_on):
        raise ManifestError(path, "precision", f"{precision} runs on the {runs_on} engine, "
                            f"but 'engine' is {engine!r}: drop one of them")
    if optimize_obj is not None and optimize_obj.raw("xla") is True:
        raise ManifestError(path, "precision", f"{precision} and 'optimize.xla' do not go together: "
                            "XLA compiles the model part itself, at fp32")


def _batching(batching_obj: _Object | None, path: Path | str) -> BatchingSpec:
    batching = BatchingSpec()
    if batching_obj is not None:
        timeout = batching_obj.number("batch_timeout_ms")
        if timeout is not None and timeout < 0:
            raise ManifestError(path, "batching.batch_timeout_ms", "must be >= 0")
        allowed = batching_obj.raw("allowed_batch_sizes")
        if allowed is not None:
            if (
                not isinstance(allowed, list) or not allowed
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in allowed)
                or any(a >= b for a, b in zip(allowed, allowed[1:]))
            ):
                raise ManifestError(path, "batching.allowed_batch_sizes",
                                    f"must be a non-empty increasing list of integers >= 1, got {allowed!r}")
            allowed = tuple(allowed)
        max_batch = batching_obj.integer("max_batch_size", minimum=1)
        if allowed is not None and max_batch is not None and max_batch != allowed[-1]:
            raise ManifestError(path, "batching.max_batch_size",
                                f"must equal the largest allowed batch size ({allowed[-1]}), got {max_batch}")
        batching = BatchingSpec(
            max_batch_size=max_batch or (allowed[-1] if allowed else BatchingSpec.max_batch_size),
            batch_timeout_ms=BatchingSpec.batch_timeout_ms if timeout is None else timeout,
            max_queue=batching_obj.integer("max_queue", minimum=1) or BatchingSpec.max_queue,
            workers=batching_obj.integer("workers", minimum=1) or BatchingSpec.workers,
            allowed_batch_sizes=allowed,
        )
        batching_obj.reject_unknown()
    return batching


def _optimize(optimize_obj: _Object | None) -> OptimizeSpec:
    optimize = OptimizeSpec()
    if optimize_obj is not None:
        optimize = OptimizeSpec(
            fold=optimize_obj.boolean("fold", default=OptimizeSpec.fold),
            remapper=optimize_obj.boolean("remapper", default=OptimizeSpec.remapper),
            xla=optimize_obj.boolean("xla", default=OptimizeSpec.xla),
        )
        optimize_obj.reject_unknown()
    return optimize


def _signatures(obj: _Object, path: Path | str) -> dict[str, SignatureSpec]:
    signatures = {}
    for name in obj.keys():
        sig = obj.object(name, required=True)
        where = f"signatures.{name}"
        inputs = _tensors(sig.object("inputs", required=True), path, f"{where}.inputs")
        outputs = _tensors(sig.object("outputs", required=True), path, f"{where}.outputs")
        if not inputs or not outputs:
            raise ManifestError(path, f"{where}.{'inputs' if not inputs else 'outputs'}", "must name at least one tensor")
        signatures[name] = SignatureSpec(inputs=inputs, outputs=outputs,
                                         method=sig.choice("method", SIGNATURE_METHODS, default="predict"))
        sig.reject_unknown()
    if not signatures:
        raise ManifestError(path, "signatures", "must hold at least one signature")
    return signatures


def _tensors(obj: _Object, path: Path | str, where: str) -> dict[str, TensorSpec]:
    tensors = {}
    for key in obj.keys():
        entry = obj.object(key, required=True)
        shape = entry.raw("shape")
        if shape is not None and (not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape)):
            raise ManifestError(path, f"{where}.{key}.shape",
                                f"must be null (unknown rank) or a list of sizes (-1: any), got {shape!r}")
        tensors[key] = TensorSpec(tensor=entry.tensor_name("tensor"),
                                  dtype=entry.choice("dtype", TENSOR_DTYPES, default="float32"),
                                  shape=None if shape is None else tuple(shape))
        entry.reject_unknown()
    return tensors


def load(path: Path, *, read_timeout_s: float = model_files.DEFAULT_TIMEOUT_S) -> AnyManifest:
    """Read and validate ``model.json`` at ``path`` (a regular file, read within ``read_timeout_s``)."""
    try:
        text = model_files.read_text(path, timeout_s=read_timeout_s)
    except FileNotFoundError:
        raise ManifestError(path, None, "manifest file is missing") from None
    except OSError as exc:
        raise ManifestError(path, None, f"cannot read manifest: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(path, None, f"not UTF-8 text: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(path, None, f"not valid JSON: {exc}") from None
    return parse(data, path)


def load_image(path: Path) -> Manifest:
    """``load`` for tools that only handle image classifiers: a tensor model is a ``ManifestError``."""
    manifest = load(path)
    if not isinstance(manifest, Manifest):
        raise ManifestError(path, "signatures", "this is a model served by its own tensors, not an image classifier")
    return manifest


def dump(manifest: AnyManifest, path: Path) -> None:
    """Write ``manifest`` as ``model.json`` (pretty, stable key order)."""
    path.write_text(json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8")


class _Object:
    """One JSON object of the manifest, read field by field so unknown fields stand out."""

    def __init__(self, data: Any, path: Path | str, prefix: str | None) -> None:
        if not isinstance(data, dict):
            raise ManifestError(path, prefix, "must be a JSON object")
        self._data = data
        self._path = path
        self._prefix = prefix
        self._seen: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self._prefix}.{key}" if self._prefix else key

    def keys(self) -> list[str]:
        """Every key (all known: an object of names such as ``signatures``)."""
        self._seen.update(self._data)
        return list(self._data)

    def raw(self, key: str, default: Any = None) -> Any:
        self._seen.add(key)
        return self._data.get(key, default)

    def _required(self, key: str, required: bool) -> Any:
        value = self.raw(key)
        if value is None and required:
            raise ManifestError(self._path, self._name(key), "is required")
        return value

    @overload
    def object(self, key: str, *, required: Literal[True]) -> _Object: ...
    @overload
    def object(self, key: str, *, required: bool) -> _Object | None: ...
    def object(self, key: str, *, required: bool) -> _Object | None:
        value = self._required(key, required)
        return None if value is None else _Object(value, self._path, self._name(key))

    def tensor_name(self, key: str) -> str:
        value = self._required(key, True)
        if not isinstance(value, str) or not value.strip():
            raise ManifestError(self._path, self._name(key), "must be a non-empty tensor name such as 'input:0'")
        return value if ":" in value else f"{value}:0"

    @overload
    def integer(self, key: str, *, required: Literal[True], minimum: int | None = None) -> int: ...
    @overload
    def integer(self, key: str, *, required: bool = False, minimum: int | None = None) -> int | None: ...
    def integer(self, key: str, *, required: bool = False, minimum: int | None = None) -> int | None:
        value = self._required(key, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ManifestError(self._path, self._name(key), f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ManifestError(self._path, self._name(key), f"must be >= {minimum}, got {value}")
        return value

    def number(self, key: str) -> float | None:
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ManifestError(self._path, self._name(key), f"must be a number, got {value!r}")
        return float(value)

    def numbers(self, key: str, *, length: int) -> tuple[float, ...] | None:
        value = self.raw(key)
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * length
        if (
            not isinstance(value, list)
            or len(value) != length
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        ):
            raise ManifestError(self._path, self._name(key), f"must be a number or a list of {length} numbers")
        return tuple(float(v) for v in value)

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ManifestError(self._path, self._name(key), f"must be true or false, got {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], *, default: str) -> str:
        value = self.raw(key)
        if value is None:
            return default
        if value not in choices:
            raise ManifestError(
                self._path, self._name(key), f"must be one of {', '.join(choices)}; got {value!r}"
            )
        return value

    def reject_unknown(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise ManifestError(self._path, self._name(unknown[0]), "unknown field")

"""One call from a model file to a verified, servable version folder.

``freeze_model`` loads the source, freezes it, builds and validates the manifest, verifies
the frozen graph against the source, then writes ``graphs/<name>/<version>/`` (or just a
``.pb``), and returns a ``FreezeResult`` whose ``summary()`` is what the CLI prints. Its
options come in small groups, each a frozen dataclass whose defaults are the CLI's:

==================  ========================================================================
``LoadOptions``     how to read the source: ``graph_fn``, SavedModel ``signature``(s)/``tags``
``Selection``       what to freeze: ``inputs``, ``outputs`` (picked when None), ``constants``
``kind``            ``"auto"`` (default), ``"image"`` or ``"tensors"`` (``freeze.tensors``)
``ImageOptions``    how the service preprocesses images (``freeze.export``): size, scale, resize
``labels``          the class names, one per output column (a plain list)
``CheckOptions``    verification: real ``samples``, ``tolerance``, ``input_shape``, ``reference_preprocess``
``WriteOptions``    where it goes: ``graphs_dir`` + ``name`` (+ ``version``), or ``output_pb``
==================  ========================================================================

Example (``tiny.keras``: the five lines of Keras in docs/freeze.md, "Freeze your own model")::

    from freeze import ImageOptions, WriteOptions, freeze_model

    result = freeze_model("tiny.keras", image=ImageOptions(scale="[0,1]"), labels=["cat", "dog", "bird"],
                          write=WriteOptions(graphs_dir="graphs", name="tiny"))
    print(result.summary())

The same from the command line: ``python scripts/freeze.py tiny.keras --name tiny --labels cat,dog,bird``.

A model that is not an image classifier (``freeze.tensors`` says which is which) is served
by its own tensors: every signature of a SavedModel that can be kept goes into one graph
and into a ``TensorManifest``, each verified on random feeds of its own inputs. A
SavedModel folder named by a number (``00000123``) is written as that version.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from . import graph as g
from . import images
from ._serving import manifest as manifest_lib
from .candidates import TensorInfo
from .errors import ExportError, GraphError, NodeNotFoundError
from .export import ImageOptions, build_manifest, check_destination, write_model
from .reference import ReferenceCheck, check_reference
from .saved_models import version_of
from .source_base import FrozenGraph, Inspection, Source
from .sources import load_source
from .tensors import KindDecision, build_tensor_manifest, decide_kind, default_signature, shape_text
from .verification import DEFAULT_TOLERANCE, Verification, random_feeds, verify, verify_signatures, whole_batches

log = logging.getLogger(__name__)

RANDOM_IMAGES = 4


@dataclass(frozen=True)
class FreezeResult:
    """What was frozen, how well it matches its source, and where it went."""

    source: str
    frozen: FrozenGraph
    verification: Verification
    manifest: manifest_lib.AnyManifest | None
    path: Path | None
    seconds: float
    reference: ReferenceCheck | None = None  # with ``reference_preprocess``
    kind: KindDecision | None = None  # with a manifest: image or tensors, and why

    @property
    def size_bytes(self) -> int:
        return self.frozen.graph_def.ByteSize()

    def summary(self) -> str:
        lines = [f"froze {self.source} in {self.seconds:.1f} s"]
        lines.append(
            f"  nodes: {self.frozen.nodes_before} -> {len(self.frozen.graph_def.node)}   size: {_size(self.size_bytes)}"
        )
        if self.kind is not None:
            lines.append(f"  kind:   {self.kind.describe()}")
        lines += [f"  input:  {_short(t)}" for t in self.frozen.inputs]
        kind = f" ({self.manifest.output.kind})" if isinstance(self.manifest, manifest_lib.Manifest) else ""
        lines += [f"  output: {_short(t)}{kind}" for t in self.frozen.outputs]
        if isinstance(self.manifest, manifest_lib.TensorManifest):
            lines += [f"  signature {name}: {_signature(spec)}" for name, spec in self.manifest.signatures.items()]
            if self.manifest.batch_size:
                lines.append(f"  batch size {self.manifest.batch_size}")
        if isinstance(self.manifest, manifest_lib.Manifest):
            spec, pre = self.manifest.input, self.manifest.preprocessing
            batch = f", batch size {self.manifest.batch_size}" if self.manifest.batch_size else ""
            flat = ", flattened" if pre.flatten else ""
            lines.append(f"  image:  {spec.height}x{spec.width}x{spec.channels}, scale {pre.scale}{flat}{batch}")
        lines.append(f"  verified: {self.verification.describe()}")
        if self.reference is not None:
            lines.append(f"  reference: {self.reference.describe()}")
            lines += [f"    {line}" for line in self.reference.lines()]
        lines += [f"  note: {note}" for note in self.frozen.notes]
        if self.path is not None:
            lines.append(f"  wrote {self.path}")
        return "\n".join(lines)


def _short(t: TensorInfo) -> str:
    return f"{t.name} {t.dtype} {t.shape_text}"


def _signature(spec: manifest_lib.SignatureSpec) -> str:
    def keyed(tensors: Mapping[str, manifest_lib.TensorSpec]) -> str:
        return ", ".join(f"{k}={t.tensor} {t.dtype} {shape_text(t.shape)}" for k, t in tensors.items())

    return f"({spec.method}) {keyed(spec.inputs)} -> {keyed(spec.outputs)}"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


@dataclass(frozen=True)
class LoadOptions:
    """How to read the source: what ``load_source`` takes besides the path.

    ``graph_fn`` ("module:function", "file.py:function" or a callable) rebuilds the graph
    of a checkpoint saved without ``.meta``; ``signature`` and ``tags`` pick a SavedModel's
    signature (default ``serving_default``; an image model has that one, a tensor model
    keeps them all) and MetaGraph (default ``serve``). Several signatures (a list) are what
    a tensor model keeps.
    """

    graph_fn: str | Callable[[], Any] | None = None
    signature: str | Sequence[str] | None = None
    tags: Sequence[str] | None = None

    @property
    def signatures(self) -> list[str]:
        """The signatures asked for (empty: the default one, or all for a tensor model)."""
        if self.signature is None:
            return []
        return [self.signature] if isinstance(self.signature, str) else list(self.signature)

    @property
    def first_signature(self) -> str | None:
        return self.signatures[0] if self.signatures else None


@dataclass(frozen=True)
class Selection:
    """What to freeze: tensor names or signature keys (None: picked when unambiguous), and
    placeholders fixed to constants (``{"keep_prob": 1.0}``)."""

    inputs: Sequence[str] | None = None
    outputs: Sequence[str] | None = None
    constants: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckOptions:
    """How the frozen graph is verified against its source (``freeze.verification``).

    ``samples`` are real images (else random ones, or random tensors of ``input_shape``
    when the graph's is not fixed); ``reference_preprocess`` ("module:function" or a
    callable: image path → model input array) also checks our preprocessing against the
    user's on ``samples`` (``freeze.reference``). ``tolerance`` bounds both.
    """

    samples: Sequence[str | Path] = ()
    tolerance: float = DEFAULT_TOLERANCE
    input_shape: Sequence[int] | None = None
    reference_preprocess: str | Callable[[str], Any] | None = None


@dataclass(frozen=True)
class WriteOptions:
    """Where the result goes: ``graphs_dir`` and ``name`` write a servable version folder
    (``version``: the next free one), ``output_pb`` only the GraphDef; neither writes
    nothing. ``info`` is added to the manifest's ``info`` (provenance, e.g. a demo's package).
    """

    graphs_dir: str | Path | None = None
    name: str | None = None
    version: int | None = None
    overwrite: bool = False
    output_pb: str | Path | None = None
    info: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.graphs_dir is None) != (self.name is None):
            raise ExportError("writing a servable model needs both a graphs directory and a model name")

    @property
    def servable(self) -> bool:
        return self.name is not None


def inspect_model(source: str | Path, *, load: LoadOptions = LoadOptions()) -> Inspection:
    """Placeholders, candidate outputs and the automatic choice, without freezing."""
    with load_source(source, graph_fn=load.graph_fn, signature=load.first_signature, tags=load.tags) as src:
        return src.inspect()


def freeze_model(
    source: str | Path,
    *,
    load: LoadOptions = LoadOptions(),
    select: Selection = Selection(),
    kind: str = "auto",
    image: ImageOptions | None = None,
    labels: Sequence[str] | None = None,
    check: CheckOptions = CheckOptions(),
    write: WriteOptions = WriteOptions(),
) -> FreezeResult:
    """Freeze ``source``, verify it, and write it (see the module docstring for the options).

    A servable model (``write`` with a name) is an image classifier or a tensor model:
    ``kind`` says which, or ``"auto"`` decides (``freeze.tensors``); ``image`` fills in what
    the graph does not say of an image. With ``write.output_pb`` any model works. Raises
    ``FreezeError`` (a subclass) for every problem with the input, before writing anything.
    """
    start = time.perf_counter()
    if check.reference_preprocess is not None and not check.samples:
        raise GraphError("--reference-preprocess needs real images to compare on: give --sample IMAGE")
    if kind == "tensors" and labels is not None:
        raise ExportError(
            "--labels name the classes of an image classifier; a tensor model (--kind tensors) is served by "
            "its own tensors and has none: drop --labels, or use --kind image"
        )
    if write.servable and write.version is None:
        write = dataclasses.replace(write, version=version_of(source))  # TF Serving's 00000123 → 123
    if write.graphs_dir is not None and write.name is not None:  # refuse a taken destination before the work
        check_destination(write.graphs_dir, write.name, write.version, overwrite=write.overwrite)
    if write.output_pb is not None and Path(write.output_pb).exists() and not write.overwrite:
        raise ExportError(f"{write.output_pb} already exists; pass --overwrite to replace it")
    with load_source(source, graph_fn=load.graph_fn, signature=load.first_signature, tags=load.tags) as src:
        frozen = src.freeze(inputs=select.inputs, outputs=select.outputs, constants=select.constants)
        decision = None
        if write.servable or write.output_pb is None or image is not None or check.samples or kind != "auto":
            decision = decide_kind(frozen, kind=kind, image_options=_image_options(image, labels, check))
        manifest: manifest_lib.AnyManifest | None
        if decision is not None and decision.kind == "tensors":
            frozen, manifest, verification = _tensor_model(src, frozen, load=load, select=select, check=check)
        else:
            if decision is not None and len(load.signatures) > 1:
                raise GraphError("an image model serves one signature; give one --signature")
            frozen, manifest, verification = _image_model(
                src, frozen, image=(image or ImageOptions()) if decision is not None else None, labels=labels, check=check
            )
        details, source_text = _details(src.details, manifest), src.describe()
    reference = None
    if check.reference_preprocess is not None:
        if not isinstance(manifest, manifest_lib.Manifest):
            raise GraphError("--reference-preprocess needs an image model: give --name (or the image size)")
        reference = check_reference(
            reference=check.reference_preprocess,
            frozen=frozen,
            manifest=manifest,
            samples=check.samples,
            tolerance=check.tolerance,
        )
    if manifest is not None:
        extra = dict(write.info or {})
        if reference is not None:
            extra["reference_check"] = reference.to_json()
        manifest = dataclasses.replace(manifest, info=_info(details, frozen, verification, extra))
    return FreezeResult(
        source=source_text,
        frozen=frozen,
        verification=verification,
        manifest=manifest,
        path=_write(frozen, manifest, labels, write),
        seconds=time.perf_counter() - start,
        reference=reference,
        kind=decision,
    )


def _tensor_model(
    src: Source, frozen: FrozenGraph, *, load: LoadOptions, select: Selection, check: CheckOptions
) -> tuple[FrozenGraph, manifest_lib.TensorManifest, Verification]:
    """Every signature asked for in one graph, its manifest, each signature verified."""
    frozen = _tensor_graph(src, frozen, load, select)
    manifest = build_tensor_manifest(frozen=frozen)
    verification, notes = verify_signatures(
        source=src, frozen=frozen, signatures=manifest.signatures, tolerance=check.tolerance,
        input_shape=check.input_shape,
    )
    return dataclasses.replace(frozen, notes=(*frozen.notes, *notes)), manifest, verification


def _image_model(
    src: Source, frozen: FrozenGraph, *, image: ImageOptions | None, labels: Sequence[str] | None,
    check: CheckOptions,
) -> tuple[FrozenGraph, manifest_lib.Manifest | None, Verification]:
    """The image manifest (``image`` None: none, a bare ``--output-pb``) and verification on
    images in the model's range (random tensors without a manifest)."""
    manifest = None
    if image is not None:
        manifest = build_manifest(frozen=frozen, image=image, labels=labels)
    batches, described = _verification_batches(frozen, manifest, check.samples, check.input_shape)
    verification = verify(source=src, frozen=frozen, feeds=batches, tolerance=check.tolerance, described_as=described)
    return frozen, manifest, verification


def _details(details: Mapping[str, Any], manifest: manifest_lib.AnyManifest | None) -> dict[str, Any]:
    """The source's provenance; a tensor model of a SavedModel lists the signatures it kept."""
    if not isinstance(manifest, manifest_lib.TensorManifest) or "signature" not in details:
        return dict(details)
    return {**{k: v for k, v in details.items() if k != "signature"}, "signatures": list(manifest.signatures)}


def _image_options(image: ImageOptions | None, labels: Sequence[str] | None, check: CheckOptions) -> list[str]:
    """The image options the user gave, by their flags: any of them makes an image model."""
    given = []
    if image is not None:
        changed = [f.name for f in dataclasses.fields(image) if getattr(image, f.name) != f.default]
        given += [f"--{name.replace('_', '-')}" for name in changed] or ["image options"]
    if labels is not None:
        given.append("--labels")
    if check.samples:
        given.append("--sample")
    return given


def _tensor_graph(src: Source, frozen: FrozenGraph, load: LoadOptions, select: Selection) -> FrozenGraph:
    """The graph a tensor model serves: every signature asked for (all by default) when the
    source has them and no tensors were named, else ``frozen`` as ``serving_default``."""
    available = src.signature_names()
    if not available or select.inputs or select.outputs:
        return dataclasses.replace(frozen, signatures={manifest_lib.DEFAULT_SIGNATURE: default_signature(frozen)})
    names = load.signatures or list(available)
    for name in names:
        if name not in available:
            raise NodeNotFoundError(f"no signature '{name}'{g.did_you_mean(name, available)}; it has {', '.join(available)}")
    return src.freeze_signatures(names=names, constants=select.constants)


def _write(
    frozen: FrozenGraph, manifest: manifest_lib.AnyManifest | None, labels: Sequence[str] | None, write: WriteOptions
) -> Path | None:
    """Write the version folder and/or the bare ``.pb``; the path of the last one written."""
    path = None
    if write.graphs_dir is not None and write.name is not None:
        assert manifest is not None  # built for every servable model
        path = write_model(
            graphs_dir=write.graphs_dir,
            name=write.name,
            graph_def=frozen.graph_def,
            manifest=manifest,
            labels=labels,
            version=write.version,
            overwrite=write.overwrite,
        )
    if write.output_pb is not None:
        path = Path(write.output_pb)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(frozen.graph_def.SerializeToString())
    return path


def _verification_batches(
    frozen: FrozenGraph,
    manifest: manifest_lib.Manifest | None,
    samples: Sequence[str | Path],
    input_shape: Sequence[int] | None,
) -> tuple[list[dict[str, np.ndarray]], str]:
    """Feeds for verification, split to the graph's fixed batch size if it has one."""
    if manifest is None:
        shapes = {frozen.inputs[0].name: list(input_shape)} if input_shape else None
        return [random_feeds(frozen.inputs, shapes=shapes)], ""
    if samples:
        pixels = images.load_images(samples, manifest)
        described = f"{len(samples)} sample image(s)"
    else:
        pixels = images.random_images(RANDOM_IMAGES, manifest)
        described = f"{RANDOM_IMAGES} random images"
    x = images.to_model_input(pixels, manifest)
    return [{manifest.input.tensor: batch} for batch in whole_batches(x, manifest.batch_size)], described


def _info(
    details: Mapping[str, Any], frozen: FrozenGraph, verification: Verification, extra: Mapping[str, Any] | None
) -> dict[str, Any]:
    info: dict[str, Any] = {
        "source": dict(details),
        "frozen_by": "graphserve freeze",
        "frozen_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        "tensorflow": tf.__version__,
        "nodes": {"source": frozen.nodes_before, "frozen": len(frozen.graph_def.node)},
        "verification": verification.to_json(),
    }
    if frozen.constants:
        info["fixed_placeholders"] = {k: _plain(v) for k, v in frozen.constants.items()}
    if frozen.notes:
        info["notes"] = list(frozen.notes)
    info.update(extra or {})
    return info


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value

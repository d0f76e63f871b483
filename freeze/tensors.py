"""Image classifier or tensor model: which one a frozen graph is served as, and the manifest
of a model served by its own tensors (``app.manifest.TensorManifest``).

The rule (``decide_kind``), unless ``--kind image|tensors`` says otherwise: an *image model*
when the user gave any image option (size, scale, resize, labels, sample images...), or when
the graph looks like one: exactly one input, float or uint8, ``[batch, H, W, C]`` with C 1
or 3 and H, W known and at least 8, and one output of rank 2. Anything else (a regressor,
an embedding model, two inputs, TF Serving's half_plus_two) is a *tensor model*: its
signatures go into the manifest, keyed as clients name them, with no preprocessing or labels.

Keys (``default_signature``): a SavedModel keeps its signature names and keys. Other
sources get one signature, ``serving_default``, keyed by the graph's tensor names: the node
name for a node's first output (``add:0`` → ``add``), ``node_1`` for its output 1 and so on
(the full tensor name ``node:1`` if that key is taken already).

Example (TF Serving's test model, three inputs and five signatures)::

    python scripts/freeze.py saved_model_half_plus_two_cpu/00000123 --name half_plus_two
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._serving import graphdef
from ._serving import manifest as manifest_lib
from .candidates import TensorInfo
from .errors import ExportError
from .source_base import FrozenGraph

KINDS = ("auto", "image", "tensors")
IMAGE_DTYPES = ("float16", "bfloat16", "float32", "float64", "uint8")
MIN_IMAGE_SIDE = 8
HINT = "give --height/--width/--channels to serve it as an image classifier"


@dataclass(frozen=True)
class KindDecision:
    """What the graph is served as, and why (the summary's ``kind:`` line)."""

    kind: str  # "image" or "tensors"
    reason: str

    def describe(self) -> str:
        return f"{self.kind} ({self.reason})"


def shape_text(shape: Sequence[int | None] | None) -> str:
    """``[-1, 1]``: a shape as the manifest writes it (``unknown rank`` when None)."""
    return "unknown rank" if shape is None else "[" + ", ".join(str(-1 if d is None else d) for d in shape) + "]"


def _describe(t: TensorInfo) -> str:
    return f"'{t.name}' {t.dtype} {shape_text(t.shape)}"


def not_an_image(frozen: FrozenGraph) -> str | None:
    """Why ``frozen`` does not look like an image classifier, or None when it does."""
    if len(frozen.inputs) != 1:
        return f"{len(frozen.inputs)} inputs ({', '.join(t.name for t in frozen.inputs)}); an image classifier has one"
    inp = frozen.inputs[0]
    shape = inp.shape
    if inp.dtype not in IMAGE_DTYPES:
        return f"input {_describe(inp)} is not an image"
    if shape is None or len(shape) != 4 or shape[3] not in (1, 3):
        return f"input {_describe(inp)} is not an image"
    if any(d is None or d < MIN_IMAGE_SIDE for d in shape[1:3]):
        return f"input {_describe(inp)} is not an image of known size (at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE})"
    if len(frozen.outputs) != 1:
        return f"{len(frozen.outputs)} outputs; an image classifier has one"
    out = frozen.outputs[0]
    if out.shape is None or len(out.shape) != 2:
        return f"output {_describe(out)} is not [batch, classes]"
    return None


def decide_kind(frozen: FrozenGraph, *, kind: str, image_options: Sequence[str]) -> KindDecision:
    """Image or tensors, by the rule of the module docstring; ``image_options`` are the image
    options the user gave (their names, for the reason)."""
    if kind not in KINDS:
        raise ExportError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "tensors":
        if image_options:
            raise ExportError(
                f"{', '.join(image_options)}: image options, but --kind tensors serves the model by its own "
                "tensors (no preprocessing, no labels); drop them or use --kind image"
            )
        return KindDecision("tensors", "--kind tensors")
    if kind == "image":
        return KindDecision("image", "--kind image")
    if image_options:
        return KindDecision("image", f"image options given: {', '.join(image_options)}")
    why = not_an_image(frozen)
    if why is None:
        inp = frozen.inputs[0]
        return KindDecision("image", f"input {_describe(inp)} is an image batch and the output is [batch, classes]")
    return KindDecision("tensors", f"{why}; {HINT}")


def tensor_key(name: str, taken: set[str]) -> str:
    """The key clients use for tensor ``name``: its node for output 0, ``node_1`` for output 1
    (the tensor name itself if that key is taken)."""
    node, index = graphdef.node_name(name), graphdef.output_index(name)
    key = node if index == 0 else f"{node}_{index}"
    return graphdef.tensor_name(name) if key in taken else key


def _spec(t: TensorInfo) -> manifest_lib.TensorSpec:
    shape = None if t.shape is None else tuple(-1 if d is None else d for d in t.shape)
    return manifest_lib.TensorSpec(tensor=t.name, dtype=t.dtype, shape=shape)


def _keyed(tensors: Sequence[TensorInfo]) -> dict[str, manifest_lib.TensorSpec]:
    nodes = {graphdef.node_name(t.name) for t in tensors}
    keyed: dict[str, manifest_lib.TensorSpec] = {}
    for t in tensors:
        keyed[tensor_key(t.name, set(keyed) | (nodes - {graphdef.node_name(t.name)}))] = _spec(t)
    return keyed


def default_signature(frozen: FrozenGraph) -> manifest_lib.SignatureSpec:
    """``serving_default`` of a graph without named signatures: keys from its tensor names."""
    return manifest_lib.SignatureSpec(inputs=_keyed(frozen.inputs), outputs=_keyed(frozen.outputs))


def with_frozen_dtypes(
    signatures: Mapping[str, manifest_lib.SignatureSpec], frozen: FrozenGraph
) -> dict[str, manifest_lib.SignatureSpec]:
    """Each tensor's dtype as the frozen graph has it (the declared shape is kept)."""
    dtypes = {t.name: t.dtype for t in (*frozen.inputs, *frozen.outputs)}

    def fix(tensors: Mapping[str, manifest_lib.TensorSpec]) -> dict[str, manifest_lib.TensorSpec]:
        return {
            k: manifest_lib.TensorSpec(tensor=t.tensor, dtype=dtypes.get(t.tensor, t.dtype), shape=t.shape)
            for k, t in tensors.items()
        }

    return {
        name: manifest_lib.SignatureSpec(inputs=fix(s.inputs), outputs=fix(s.outputs), method=s.method)
        for name, s in signatures.items()
    }


def batch_size(frozen: FrozenGraph) -> int | None:
    """The fixed batch size every input declares (its first dimension), else None."""
    firsts = {t.shape[0] if t.shape else None for t in frozen.inputs}
    return firsts.pop() if len(firsts) == 1 and None not in firsts else None


def build_tensor_manifest(
    *, frozen: FrozenGraph, info: dict[str, Any] | None = None
) -> manifest_lib.TensorManifest:
    """The manifest for serving ``frozen`` by its own tensors, validated like ``model.json``."""
    signatures = frozen.signatures or {manifest_lib.DEFAULT_SIGNATURE: default_signature(frozen)}
    data: dict[str, Any] = {
        "signatures": {name: spec.to_json() for name, spec in with_frozen_dtypes(signatures, frozen).items()},
        "info": dict(info or {}),
    }
    fixed = batch_size(frozen)
    if fixed is not None:
        data["batch_size"] = fixed
    try:
        parsed = manifest_lib.parse(data, manifest_lib.MANIFEST_FILE)
    except manifest_lib.ManifestError as exc:
        raise ExportError(f"invalid manifest: {exc}") from None
    assert isinstance(parsed, manifest_lib.TensorManifest)  # it has "signatures"
    return parsed

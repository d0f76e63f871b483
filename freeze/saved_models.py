"""SavedModel directories: pick the MetaGraph (tags) and signature, then load TF1 or TF2 style.

A SavedModel with an object graph (``tf.saved_model.save``) is TF2: its signature becomes
a ``freeze.function_source.FunctionSource``. One without (``tf.compat.v1.saved_model``
builders) is TF1: it is loaded into a session, a ``freeze.session_source.SessionSource``
whose inputs and outputs default to the signature's. Tags default to ``serve``, the
signature to ``serving_default`` (or the only one). Every signature is described
(``signature_specs``: keys, dtypes, declared shapes, TF Serving's method) so that a tensor
model keeps them all (``Source.freeze_signatures``); a folder named by a number (TF
Serving's ``00000123``) is that version (``version_of``).

Example (``tiny.keras`` from docs/freeze.md, exported as a TF2 SavedModel by Keras)::

    python -c "import keras; keras.models.load_model('tiny.keras').export('/tmp/tiny_savedmodel')"
    python scripts/freeze.py /tmp/tiny_savedmodel --inspect
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tensorflow as tf
from google.protobuf import message, text_format

from . import graph as g
from ._serving import graphdef
from ._serving import manifest as manifest_lib
from .errors import NodeNotFoundError, SourceError
from .function_source import FunctionSource
from .session_source import SessionSource
from .source_base import SignatureSpec, Source

DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
# TF Serving's method names → the manifest's (``app.manifest.SIGNATURE_METHODS``).
METHODS = {
    "tensorflow/serving/predict": "predict",
    "tensorflow/serving/classify": "classify",
    "tensorflow/serving/regress": "regress",
}


def version_of(path: str | Path) -> int | None:
    """The version a SavedModel folder's name says (``00000123`` → 123), or None."""
    path = Path(path)
    directory = path.parent if path.name in SAVED_MODEL_FILES else path
    if not any((directory / name).is_file() for name in SAVED_MODEL_FILES):
        return None
    return int(directory.name) if directory.name.isdigit() and int(directory.name) > 0 else None


def signature_specs(meta_graph: Any, names: Sequence[str]) -> dict[str, SignatureSpec]:
    """Each signature as the manifest records it, with the SavedModel's own tensor names."""
    return {name: _spec(meta_graph.signature_def[name]) for name in names}


def _spec(sig: Any) -> SignatureSpec:
    def tensors(infos: Any) -> dict[str, manifest_lib.TensorSpec]:
        return {key: _tensor_spec(info) for key, info in sorted(infos.items())}

    return SignatureSpec(inputs=tensors(sig.inputs), outputs=tensors(sig.outputs),
                         method=METHODS.get(sig.method_name, "predict"))


def _tensor_spec(info: Any) -> manifest_lib.TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
    return manifest_lib.TensorSpec(tensor=graphdef.tensor_name(info.name), dtype=tf.as_dtype(info.dtype).name,
                                   shape=shape)


def _read_saved_model_proto(directory: Path) -> Any:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    binary = directory / "saved_model.pb"
    try:
        if binary.exists():
            proto.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse((directory / "saved_model.pbtxt").read_text(), proto)
    except (message.DecodeError, text_format.ParseError) as exc:
        raise SourceError(f"{directory}: saved_model.pb is not a SavedModel: {exc}") from None
    return proto


def load_saved_model(directory: Path, *, signature: str | None, tags: Sequence[str] | None) -> Source:
    """Load the SavedModel in ``directory``: its MetaGraph for ``tags``, its ``signature``."""
    proto = _read_saved_model_proto(directory)
    tag_sets = [set(m.meta_info_def.tags) for m in proto.meta_graphs]
    wanted = set(tags) if tags else ({"serve"} if {"serve"} in tag_sets or len(tag_sets) != 1 else tag_sets[0])
    matches = [m for m in proto.meta_graphs if set(m.meta_info_def.tags) == wanted]
    if not matches:
        known = "; ".join(",".join(sorted(t)) for t in tag_sets)
        raise SourceError(f"{directory}: no MetaGraph with tags {','.join(sorted(wanted))} (it has: {known})")
    meta_graph = matches[0]
    names = [k for k in meta_graph.signature_def if not k.startswith("__")]
    if signature is None:
        signature = DEFAULT_SIGNATURE if DEFAULT_SIGNATURE in names or len(names) != 1 else names[0]
    if signature not in names:
        raise NodeNotFoundError(
            f"{directory}: no signature '{signature}'{g.did_you_mean(signature, names)}; "
            f"it has {', '.join(sorted(names)) or 'none'}"
        )
    details = {
        "saved_model": str(directory),
        "signature": signature,
        "tags": sorted(wanted),
        "saved_by_tensorflow": meta_graph.meta_info_def.tensorflow_version,
    }
    listing = [_signature_summary(k, meta_graph.signature_def[k]) for k in sorted(names)]
    specs = signature_specs(meta_graph, _default_first(names))
    if meta_graph.HasField("object_graph_def") and meta_graph.object_graph_def.nodes:
        return _load_saved_model_v2(directory, signature, wanted, details, listing, specs)
    return _load_saved_model_v1(directory, signature, wanted, details, listing, specs)


def _default_first(names: Sequence[str]) -> list[str]:
    """``serving_default`` first, then the others by name: the manifest's order."""
    return sorted(names, key=lambda n: (n != DEFAULT_SIGNATURE, n))


def _signature_summary(name: str, sig: Any) -> str:
    ins = ", ".join(f"{k}={v.name}" for k, v in sorted(sig.inputs.items()))
    outs = ", ".join(f"{k}={v.name}" for k, v in sorted(sig.outputs.items()))
    return f"{name} ({ins} -> {outs})"


def _load_saved_model_v1(
    directory: Path,
    signature: str,
    tags: set[str],
    details: dict[str, Any],
    listing: list[str],
    specs: dict[str, SignatureSpec],
) -> SessionSource:
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    try:
        with graph.as_default(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            meta_graph = tf.compat.v1.saved_model.loader.load(session, list(tags), str(directory))
    except (RuntimeError, tf.errors.OpError, ValueError, OSError) as exc:
        session.close()
        raise SourceError(f"cannot load SavedModel {directory}: {g.first_line(exc)}") from None
    sig = meta_graph.signature_def[signature]
    details["format"] = "TF1 SavedModel"
    return SessionSource(
        kind="saved_model",
        path=directory,
        graph=graph,
        session=session,
        details=details,
        signature=({k: v.name for k, v in sig.inputs.items()}, {k: v.name for k, v in sig.outputs.items()}),
        signatures=listing,
        signature_defs=specs,
    )


def _load_saved_model_v2(
    directory: Path,
    signature: str,
    tags: set[str],
    details: dict[str, Any],
    listing: list[str],
    specs: dict[str, SignatureSpec],
) -> FunctionSource:
    try:
        loaded = tf.saved_model.load(str(directory), tags=sorted(tags))
    except (RuntimeError, tf.errors.OpError, ValueError, OSError) as exc:
        raise SourceError(f"cannot load SavedModel {directory}: {g.first_line(exc)}") from None
    details["format"] = "TF2 SavedModel"

    def sibling(name: str) -> FunctionSource:
        return _signature_function(directory, loaded, name, {**details, "signature": name}, listing, specs, sibling)

    return _signature_function(directory, loaded, signature, details, listing, specs, sibling)


def _signature_function(
    directory: Path,
    loaded: Any,
    signature: str,
    details: dict[str, Any],
    listing: list[str],
    specs: dict[str, SignatureSpec],
    sibling: Any,
) -> FunctionSource:
    """One signature of a loaded TF2 SavedModel as a source (its function, by its keys)."""
    function = loaded.signatures[signature]
    args, kwargs = function.structured_input_signature
    if args:
        raise SourceError(f"signature '{signature}' takes positional arguments; expected keyword inputs")
    input_keys = sorted(kwargs)  # flattening a dict orders it by key, as the function's inputs are
    output_keys = sorted(function.structured_outputs)

    def call(tensors: list[tf.Tensor]) -> list[tf.Tensor]:
        result = function(**dict(zip(input_keys, tensors)))
        return [result[k] for k in output_keys]

    return FunctionSource(
        kind="saved_model",
        path=directory,
        function=function,
        call=call,
        details=details,
        input_keys=input_keys,
        output_keys=output_keys,
        signatures=listing,
        keepalive=loaded,
        signature_defs=specs,
        sibling=sibling,
    )

"""SavedModel directories: pick the MetaGraph (tags) and signature, then load TF1 or TF2 style.

A SavedModel with an object graph (``tf.saved_model.save``) is TF2: its signature becomes
a ``freeze.function_source.FunctionSource``. One without (``tf.compat.v1.saved_model``
builders) is TF1: it is loaded into a session, a ``freeze.session_source.SessionSource``
whose inputs and outputs default to the signature's. Tags default to ``serve``, the
signature to ``serving_default`` (or the only one).

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
from .errors import NodeNotFoundError, SourceError
from .function_source import FunctionSource
from .session_source import SessionSource
from .source_base import Source

DEFAULT_SIGNATURE = "serving_default"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


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
    if meta_graph.HasField("object_graph_def") and meta_graph.object_graph_def.nodes:
        return _load_saved_model_v2(directory, signature, wanted, details, listing)
    return _load_saved_model_v1(directory, signature, wanted, details, listing)


def _signature_summary(name: str, sig: Any) -> str:
    ins = ", ".join(f"{k}={v.name}" for k, v in sorted(sig.inputs.items()))
    outs = ", ".join(f"{k}={v.name}" for k, v in sorted(sig.outputs.items()))
    return f"{name} ({ins} -> {outs})"


def _load_saved_model_v1(
    directory: Path, signature: str, tags: set[str], details: dict[str, Any], listing: list[str]
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
    )


def _load_saved_model_v2(
    directory: Path, signature: str, tags: set[str], details: dict[str, Any], listing: list[str]
) -> FunctionSource:
    try:
        loaded = tf.saved_model.load(str(directory), tags=sorted(tags))
    except (RuntimeError, tf.errors.OpError, ValueError, OSError) as exc:
        raise SourceError(f"cannot load SavedModel {directory}: {g.first_line(exc)}") from None
    function = loaded.signatures[signature]
    args, kwargs = function.structured_input_signature
    if args:
        raise SourceError(f"signature '{signature}' takes positional arguments; expected keyword inputs")
    input_keys = sorted(kwargs)  # flattening a dict orders it by key, as the function's inputs are
    output_keys = sorted(function.structured_outputs)

    def call(tensors: list[tf.Tensor]) -> list[tf.Tensor]:
        result = function(**dict(zip(input_keys, tensors)))
        return [result[k] for k in output_keys]

    details["format"] = "TF2 SavedModel"
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
    )

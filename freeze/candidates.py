"""Which tensors of a graph are its inputs and outputs, as the user sees them.

``TensorInfo`` is what ``--inspect`` and the summary print; ``candidate_outputs`` and
``choose_outputs`` find a classifier's output when the user names none;
``training_flag_value`` and ``label_placeholders`` tell training-only placeholders from
real inputs; ``needed_placeholders`` lists what the outputs must be fed. These read a
``tf.Graph`` and change nothing: the GraphDef rewriting steps are ``freeze.graph``.

Example (the CLI prints these)::

    python scripts/freeze.py tiny.keras --inspect
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import tensorflow as tf

from .errors import AmbiguousChoiceError
from .graph import LOSS_OPS, PLACEHOLDER_OPS, VARIABLE_OPS, GraphDef, is_training_node, reachable

# Ops that only move or reshape a tensor: walked through to find what really made it.
PASS_THROUGH_OPS = frozenset({"Identity", "Reshape", "Squeeze", "ExpandDims", "StopGradient", "Snapshot", "Cast"})
_KEEP_PROB_NAME = re.compile(r"keep_?prob", re.IGNORECASE)


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the user sees it: name, dtype, shape (``None`` = unknown dimension)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None
    op: str = ""
    note: str = ""

    @property
    def shape_text(self) -> str:
        if self.shape is None:
            return "unknown rank"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def describe(self) -> str:
        text = f"{self.name:<40} {self.dtype:<8} {self.shape_text:<20}"
        text += f" {self.op}" if self.op else ""
        return text + (f"  ({self.note})" if self.note else "")


def tensor_info(tensor: tf.Tensor, note: str = "") -> TensorInfo:
    shape = tensor.shape
    dims = None if shape.rank is None else tuple(shape.as_list())
    return TensorInfo(tensor.name, tensor.dtype.base_dtype.name, dims, tensor.op.type, note)


def producer(tensor: tf.Tensor) -> tf.Tensor:
    """The tensor ``tensor`` is a reshaped, cast or renamed copy of (itself if none)."""
    while tensor.op.type in PASS_THROUGH_OPS and tensor.op.inputs:
        tensor = tensor.op.inputs[0]
    return tensor


def label_placeholders(graph: tf.Graph) -> set[str]:
    """Placeholders that feed the labels side of a loss: needed for training only."""
    labels = set()
    for op in graph.get_operations():
        if op.type in LOSS_OPS and len(op.inputs) > 1:
            source = producer(op.inputs[1])
            if source.op.type in PLACEHOLDER_OPS:
                labels.add(source.op.name)
    return labels


def _ancestors(op: tf.Operation) -> set[tf.Operation]:
    seen: set[tf.Operation] = set()
    todo = [op]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(t.op for t in current.inputs)
    return seen


def candidate_outputs(graph: tf.Graph) -> list[TensorInfo]:
    """Tensors that look like a classifier's output, best first, each with its reason.

    Softmax ops; the logits a training loss is computed from; and float tensors nothing
    consumes, unless they are training bookkeeping (a loss, an accuracy on labels, an
    optimizer step). ``choose_outputs`` picks from these when the choice is clear.
    """
    labels = label_placeholders(graph)
    reasons: dict[str, list[str]] = {}
    tensors: dict[str, tf.Tensor] = {}

    def add(tensor: tf.Tensor, reason: str) -> None:
        tensors[tensor.name] = tensor
        reasons.setdefault(tensor.name, []).append(reason)

    ops = graph.get_operations()
    for op in ops:
        if op.type == "Softmax" and not is_training_node(op.node_def):
            add(op.outputs[0], "softmax")
        if op.type in LOSS_OPS:
            add(producer(op.inputs[0]), "logits of the training loss")
    consumed = {t.op for op in ops for t in op.inputs} | {c for op in ops for c in op.control_inputs}
    for op in ops:
        if op in consumed or not op.outputs or is_training_node(op.node_def):
            continue
        if op.type in VARIABLE_OPS | PLACEHOLDER_OPS | {"Const", "NoOp", "Assert", "Print", "PrintV2"}:
            continue
        out = op.outputs[0]
        if not (out.dtype.is_floating or out.dtype.is_integer) or out.dtype != out.dtype.base_dtype:
            continue
        ancestors = _ancestors(op)
        if any(a.type in LOSS_OPS or a.name in labels for a in ancestors):
            continue
        add(out, "consumed by nothing")
    return [tensor_info(tensors[name], ", ".join(reasons[name])) for name in tensors]


def choose_outputs(candidates: Sequence[TensorInfo]) -> tuple[list[str], str]:
    """Pick the output when one candidate clearly stands out; else list them all."""
    for reason in ("softmax", "logits of the training loss", "consumed by nothing"):
        group = [c for c in candidates if reason in c.note]
        if len(group) == 1:
            return [group[0].name], f"the only tensor that is {reason}" if reason != "softmax" else "the only softmax"
        if len(group) > 1:
            break
    if not candidates:
        raise AmbiguousChoiceError("found no candidate output tensor; name one with --output")
    listing = "; ".join(f"{c.name} ({c.note})" for c in candidates[:10])
    raise AmbiguousChoiceError(f"several candidate outputs, name one with --output: {listing}")


def training_flag_value(op: tf.Operation) -> object | None:
    """The inference value of a training-mode placeholder, or None if it is not one.

    A scalar bool placeholder is an ``is_training`` switch (dropout, batch norm): False.
    A scalar float placeholder named like ``keep_prob`` is a dropout keep probability: 1.0.
    """
    if op.type not in PLACEHOLDER_OPS:
        return None
    out = op.outputs[0]
    scalar = out.shape.rank in (None, 0)
    if out.dtype == tf.bool and scalar:
        return False
    if out.dtype.is_floating and scalar and _KEEP_PROB_NAME.search(op.name):
        return 1.0
    return None


def needed_placeholders(
    graph: tf.Graph, graph_def: GraphDef, outputs: Sequence[str], *, stop_at: Sequence[str] = ()
) -> list[tf.Operation]:
    """Placeholders the outputs depend on (not looking past ``stop_at``), in graph order."""
    names = reachable(graph_def, outputs, stop_at=stop_at)
    return [op for op in graph.get_operations() if op.name in names and op.type in PLACEHOLDER_OPS]

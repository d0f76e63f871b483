"""GraphDef in, GraphDef out: the steps of freezing, and finding a graph's inputs/outputs.

Nothing here reads files or runs a model. Each step takes a ``GraphDef`` and returns a
new one (the argument is left untouched), so the steps can be tested on tiny graphs and
chained by ``freeze.sources``. What TensorFlow's ``freeze_graph.py`` and
``optimize_for_inference_lib`` do, minus their blind spots: the legacy ``Variable`` op
(which ``convert_variables_to_constants`` in TF 2.x leaves unfrozen), resource variables
in TF1-style graphs, and control dependencies that drag the optimizer back in.

Example (the CLI runs these for you)::

    python scripts/freeze.py tiny.keras --inspect
"""

from __future__ import annotations

import difflib
import logging
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from freeze.errors import AmbiguousChoiceError, GraphError, NodeNotFoundError

log = logging.getLogger(__name__)

GraphDef = tf.compat.v1.GraphDef
NodeDef = tf.compat.v1.NodeDef

VARIABLE_OPS = frozenset({"Variable", "VariableV2", "VarHandleOp"})
PLACEHOLDER_OPS = frozenset({"Placeholder", "PlaceholderV2"})
LOSS_OPS = frozenset({"SoftmaxCrossEntropyWithLogits", "SparseSoftmaxCrossEntropyWithLogits"})
# Ops that only move or reshape a tensor: walked through to find what really made it.
PASS_THROUGH_OPS = frozenset({"Identity", "Reshape", "Squeeze", "ExpandDims", "StopGradient", "Snapshot", "Cast"})
# Training and checkpointing ops: never needed to compute an inference output.
_TRAINING_OP_PREFIXES = (
    "Apply",
    "ResourceApply",
    "SparseApply",
    "ResourceSparseApply",
    "Assign",
    "ResourceScatter",
    "Scatter",
    "Save",
    "Restore",
    "MergeV2Checkpoints",
    "ShardedFilename",
    "IsVariableInitialized",
    "VarIsInitializedOp",
    "DestroyResourceOp",
)
_TRAINING_SCOPES = frozenset({"gradients", "save", "init"})
_KEEP_PROB_NAME = re.compile(r"keep_?prob", re.IGNORECASE)


# --------------------------------------------------------------------------- names


def node_name(name: str) -> str:
    """``'^a/b:1'`` → ``'a/b'``: the node a tensor name or control input refers to."""
    name = name.removeprefix("^")
    head, sep, tail = name.rpartition(":")
    return head if sep and tail.isdigit() else name


def tensor_name(name: str) -> str:
    """``'a/b'`` → ``'a/b:0'``; names that already carry an output index are kept."""
    return name if node_name(name) != name else f"{name}:0"


def output_index(name: str) -> int:
    _, sep, tail = name.rpartition(":")
    return int(tail) if sep and tail.isdigit() else 0


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """A ``" (did you mean 'x' or 'y'?)"`` suffix for an error, or ``""``."""
    pool = sorted(set(candidates))
    matches = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
    if not matches:
        lowered = name.lower()
        matches = [c for c in pool if lowered in c.lower()][:3]
    if not matches:
        return ""
    return " (did you mean " + " or ".join(f"'{m}'" for m in matches) + "?)"


def check_names(graph_def: GraphDef, names: Sequence[str], *, what: str) -> list[str]:
    """Normalise tensor names and fail with a did-you-mean if a node does not exist."""
    nodes = {n.name for n in graph_def.node}
    out = []
    for name in names:
        if node_name(name) not in nodes:
            likely = [
                n.name for n in graph_def.node if n.op not in {"Const", "NoOp", *LOSS_OPS} and not is_training_node(n)
            ]
            raise NodeNotFoundError(
                f"{what} '{name}' is not a node of the graph{did_you_mean(node_name(name), likely)}; "
                "run with --inspect to list candidates"
            )
        out.append(tensor_name(name))
    return out


# --------------------------------------------------------------------------- walking


def is_training_node(node: NodeDef) -> bool:
    """Optimizer updates, savers, initializers and gradients: never inference."""
    if node.op.startswith(_TRAINING_OP_PREFIXES):
        return True
    return node.name.split("/", 1)[0] in _TRAINING_SCOPES and node.op not in PLACEHOLDER_OPS


def reachable(
    graph_def: GraphDef,
    outputs: Iterable[str],
    *,
    stop_at: Iterable[str] = (),
) -> set[str]:
    """Names of the nodes ``outputs`` depend on, not looking past ``stop_at``.

    Control inputs are not followed to training ops nor to ``NoOp`` groups: that is how a
    ``^GradientDescent`` or ``^save/restore_all`` dependency is cut instead of pulling the
    training graph back in. Inference never needs them.
    """
    nodes = {n.name: n for n in graph_def.node}
    stops = {node_name(s) for s in stop_at}
    seen: set[str] = set()
    todo = deque(node_name(o) for o in outputs)
    while todo:
        name = todo.popleft()
        if name in seen:
            continue
        seen.add(name)
        if name in stops:
            continue
        for inp in nodes[name].input:
            target = node_name(inp)
            if inp.startswith("^") and (nodes[target].op == "NoOp" or is_training_node(nodes[target])):
                continue
            todo.append(target)
    return seen


def extract_subgraph(graph_def: GraphDef, outputs: Sequence[str]) -> GraphDef:
    """Keep only what ``outputs`` need (cut at inputs with ``make_input`` first).

    Inputs (data or control) to nodes that are dropped are removed, so the result has no
    dangling references.
    """
    keep = reachable(graph_def, outputs)
    out = _without_nodes(graph_def)
    for node in graph_def.node:
        if node.name not in keep:
            continue
        new = out.node.add()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(i for i in node.input if node_name(i) in keep)
    return out


# --------------------------------------------------------------------------- rewriting


def _copy(graph_def: GraphDef) -> GraphDef:
    out = GraphDef()
    out.CopyFrom(graph_def)
    return out


def _without_nodes(graph_def: GraphDef) -> GraphDef:
    """An empty GraphDef with ``graph_def``'s versions and function library."""
    out = GraphDef()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    return out


def _const_node(name: str, value: np.ndarray, dtype: tf.DType) -> NodeDef:
    node = NodeDef(name=name, op="Const")
    node.attr["dtype"].type = dtype.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.asarray(value), dtype=dtype))
    return node


def _var_dtype(node: NodeDef) -> tf.DType:
    return tf.as_dtype(node.attr["dtype"].type).base_dtype


def variables_to_constants(graph_def: GraphDef, values: Mapping[str, np.ndarray]) -> GraphDef:
    """Replace every variable node (``Variable``, ``VariableV2``, ``VarHandleOp``) by a Const.

    ``values`` maps variable node names to their current values. The Const keeps the
    variable's name, so ``Variable/read`` Identity users keep working; readers of resource
    variables become plain ops (``ReadVariableOp`` → ``Identity``, ``ResourceGather`` →
    ``GatherV2``). Any other use of a variable is refused rather than frozen wrongly.
    """
    out = _without_nodes(graph_def)
    resources: dict[str, tf.DType] = {n.name: _var_dtype(n) for n in graph_def.node if n.op == "VarHandleOp"}
    for node in graph_def.node:
        if node.op in VARIABLE_OPS:
            if node.name not in values:
                raise GraphError(f"no value for variable '{node.name}' (is it in the checkpoint?)")
            out.node.add().CopyFrom(_const_node(node.name, values[node.name], _var_dtype(node)))
            continue
        resource_inputs = [i for i in node.input if not i.startswith("^") and node_name(i) in resources]
        if not resource_inputs:
            out.node.add().CopyFrom(node)
            continue
        dtype = resources[node_name(resource_inputs[0])]
        for new in _resource_reader_as_plain_op(node, dtype):
            out.node.add().CopyFrom(new)
    return out


def _resource_reader_as_plain_op(node: NodeDef, dtype: tf.DType) -> list[NodeDef]:
    if node.op == "ReadVariableOp":
        new = NodeDef(name=node.name, op="Identity", input=node.input)
        new.attr["T"].type = dtype.as_datatype_enum
        return [new]
    if node.op == "ResourceGather":
        axis = _const_node(f"{node.name}/axis", np.asarray(node.attr["batch_dims"].i, np.int32), tf.int32)
        data_inputs = [i for i in node.input if not i.startswith("^")]
        controls = [i for i in node.input if i.startswith("^")]
        new = NodeDef(name=node.name, op="GatherV2", input=[*data_inputs[:2], axis.name, *controls])
        new.attr["Tparams"].type = dtype.as_datatype_enum
        new.attr["Tindices"].CopyFrom(node.attr["Tindices"])
        new.attr["Taxis"].type = tf.int32.as_datatype_enum
        new.attr["batch_dims"].i = node.attr["batch_dims"].i
        return [axis, new]
    if node.op == "VariableShape":
        new = NodeDef(name=node.name, op="Shape", input=node.input)
        new.attr["T"].type = dtype.as_datatype_enum
        new.attr["out_type"].CopyFrom(node.attr["out_type"])
        return [new]
    raise GraphError(
        f"node '{node.name}' ({node.op}) uses resource variable '{node_name(node.input[0])}' in a way "
        "this tool cannot freeze; export a SavedModel with tf.saved_model.save and freeze that instead"
    )


def placeholders_to_constants(graph_def: GraphDef, values: Mapping[str, object]) -> GraphDef:
    """Turn the named placeholders into Consts (``keep_prob=1.0``, ``is_training=False``)."""
    out = _copy(graph_def)
    for i, node in enumerate(out.node):
        if node.name in values:
            dtype = tf.as_dtype(node.attr["dtype"].type)
            const = _const_node(node.name, np.asarray(values[node.name], dtype.as_numpy_dtype), dtype)
            out.node[i].CopyFrom(const)
    return out


def defaults_for_placeholders(graph_def: GraphDef) -> GraphDef:
    """``PlaceholderWithDefault`` (e.g. Keras' learning phase) → Identity of its default."""
    out = _copy(graph_def)
    for node in out.node:
        if node.op == "PlaceholderWithDefault":
            dtype = node.attr["dtype"].type
            node.op = "Identity"
            node.ClearField("attr")
            node.attr["T"].type = dtype
    return out


def make_input(graph_def: GraphDef, name: str, *, dtype: tf.DType, shape: tf.TensorShape) -> GraphDef:
    """Make the node producing tensor ``name`` a Placeholder of ``dtype`` and ``shape``.

    Cuts the graph at an intermediate tensor (after a JPEG decoder, a ``ParseExample``),
    since the service maps uploads onto a Placeholder; and writes the static shape the
    source graph inferred into placeholders whose own ``shape`` attribute is vague (TF
    1.0 graphs), so the frozen graph says what it expects.
    """
    if output_index(name) != 0:
        raise GraphError(f"input '{name}' is not the first output of its node; only ':0' can become an input")
    out = _copy(graph_def)
    for node in out.node:
        if node.name == node_name(name):
            node.op = "Placeholder"
            del node.input[:]
            node.ClearField("attr")
            node.attr["dtype"].type = dtype.base_dtype.as_datatype_enum
            node.attr["shape"].shape.CopyFrom(shape.as_proto())
            return out
    raise NodeNotFoundError(f"input '{name}' is not a node of the graph")


def clear_devices(graph_def: GraphDef) -> GraphDef:
    """Drop device placements and colocation hints so the graph loads on any machine."""
    out = _copy(graph_def)
    for node in out.node:
        node.device = ""
        if "_class" in node.attr:
            del node.attr["_class"]
    return out


# --------------------------------------------------------------------------- inspection


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


def import_graph(graph_def: GraphDef) -> tf.Graph:
    """Import ``graph_def`` into a new ``tf.Graph`` (names unchanged), or fail clearly."""
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.import_graph_def(graph_def, name="")
    except (ValueError, tf.errors.OpError) as exc:
        raise GraphError(f"graph does not import into TensorFlow {tf.__version__}: {first_line(exc)}") from None
    return graph


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


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


def check_frozen(graph_def: GraphDef, *, inputs: Sequence[str], outputs: Sequence[str]) -> tf.Graph:
    """Fail unless ``graph_def`` is self-contained: it imports, has no variables, and every
    placeholder is one of ``inputs``. Returns the imported graph for describing tensors."""
    leftovers = [n.name for n in graph_def.node if n.op in VARIABLE_OPS]
    if leftovers:
        raise GraphError(f"variables left unfrozen: {', '.join(leftovers[:5])}")
    input_nodes = {node_name(i) for i in inputs}
    unfed = [n.name for n in graph_def.node if n.op in PLACEHOLDER_OPS and n.name not in input_nodes]
    if unfed:
        raise GraphError(f"frozen graph still has placeholders that are not inputs: {', '.join(unfed)}")
    graph = import_graph(graph_def)
    for name in [*inputs, *outputs]:
        try:
            tensor = graph.get_tensor_by_name(name)
        except (KeyError, ValueError):
            raise GraphError(f"tensor '{name}' is missing from the frozen graph") from None
        if tensor.dtype != tensor.dtype.base_dtype:
            raise GraphError(f"tensor '{name}' is a variable reference, not a value")
    for name in inputs:
        if graph.get_tensor_by_name(name).op.type not in PLACEHOLDER_OPS:
            raise GraphError(f"input '{name}' is not a Placeholder in the frozen graph")
    return graph

"""GraphDef in, GraphDef out: the steps of freezing.

Nothing here reads files or runs a model. Each step takes a ``GraphDef`` and returns a
new one (the argument is left untouched), so the steps can be tested on tiny graphs and
chained by the sources (``freeze.session_source``, ``freeze.function_source``). What
TensorFlow's ``freeze_graph.py`` and ``optimize_for_inference_lib`` do, minus their blind
spots: the legacy ``Variable`` op (which ``convert_variables_to_constants`` in TF 2.x
leaves unfrozen), resource variables in TF1-style graphs, and control dependencies that
drag the optimizer back in. Tensor names and pruning come from ``app.graphdef``, which the
service's own folding shares; which tensors are inputs and outputs is ``freeze.candidates``.

Example (the CLI runs these for you)::

    python scripts/freeze.py tiny.keras --inspect
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias

import numpy as np
import tensorflow as tf

from ._serving import graphdef
from .errors import GraphError, NodeNotFoundError

log = logging.getLogger(__name__)

GraphDef: TypeAlias = tf.compat.v1.GraphDef
NodeDef: TypeAlias = tf.compat.v1.NodeDef

VARIABLE_OPS = frozenset({"Variable", "VariableV2", "VarHandleOp"})
PLACEHOLDER_OPS = frozenset({"Placeholder", "PlaceholderV2"})
LOSS_OPS = frozenset({"SoftmaxCrossEntropyWithLogits", "SparseSoftmaxCrossEntropyWithLogits"})
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


# --------------------------------------------------------------------------- names


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
        if graphdef.node_name(name) not in nodes:
            likely = [
                n.name for n in graph_def.node if n.op not in {"Const", "NoOp", *LOSS_OPS} and not is_training_node(n)
            ]
            raise NodeNotFoundError(
                f"{what} '{name}' is not a node of the graph{did_you_mean(graphdef.node_name(name), likely)}; "
                "run with --inspect to list candidates"
            )
        out.append(graphdef.tensor_name(name))
    return out


# --------------------------------------------------------------------------- walking


def is_training_node(node: NodeDef) -> bool:
    """Optimizer updates, savers, initializers and gradients: never inference."""
    if node.op.startswith(_TRAINING_OP_PREFIXES):
        return True
    return node.name.split("/", 1)[0] in _TRAINING_SCOPES and node.op not in PLACEHOLDER_OPS


def _inference_edge(inp: str, producer: NodeDef) -> bool:
    """Control inputs are not followed to training ops nor to ``NoOp`` groups: that is how a
    ``^GradientDescent`` or ``^save/restore_all`` dependency is cut instead of pulling the
    training graph back in. Inference never needs them."""
    return not (graphdef.is_control_input(inp) and (producer.op == "NoOp" or is_training_node(producer)))


def reachable(graph_def: GraphDef, outputs: Iterable[str], *, stop_at: Iterable[str] = ()) -> set[str]:
    """Names of the nodes ``outputs`` depend on for inference, not looking past ``stop_at``."""
    return graphdef.reachable(graph_def, outputs, stop_at=stop_at, follow=_inference_edge)


def extract_subgraph(graph_def: GraphDef, outputs: Sequence[str]) -> GraphDef:
    """Keep only what ``outputs`` need for inference (cut at inputs with ``make_input`` first).

    Inputs (data or control) to nodes that are dropped are removed, so the result has no
    dangling references.
    """
    return graphdef.prune(graph_def, outputs, follow=_inference_edge)


# --------------------------------------------------------------------------- rewriting


def _copy(graph_def: GraphDef) -> GraphDef:
    out = GraphDef()
    out.CopyFrom(graph_def)
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
    out = graphdef.without_nodes(graph_def)
    resources: dict[str, tf.DType] = {n.name: _var_dtype(n) for n in graph_def.node if n.op == "VarHandleOp"}
    for node in graph_def.node:
        if node.op in VARIABLE_OPS:
            if node.name not in values:
                raise GraphError(f"no value for variable '{node.name}' (is it in the checkpoint?)")
            out.node.add().CopyFrom(_const_node(node.name, values[node.name], _var_dtype(node)))
            continue
        resource_inputs = [i for i in node.input if not graphdef.is_control_input(i) and graphdef.node_name(i) in resources]
        if not resource_inputs:
            out.node.add().CopyFrom(node)
            continue
        dtype = resources[graphdef.node_name(resource_inputs[0])]
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
        data_inputs = [i for i in node.input if not graphdef.is_control_input(i)]
        controls = [i for i in node.input if graphdef.is_control_input(i)]
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
        f"node '{node.name}' ({node.op}) uses resource variable '{graphdef.node_name(node.input[0])}' in a way "
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
    if graphdef.output_index(name) != 0:
        raise GraphError(f"input '{name}' is not the first output of its node; only ':0' can become an input")
    out = _copy(graph_def)
    for node in out.node:
        if node.name == graphdef.node_name(name):
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


# --------------------------------------------------------------------------- checking


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


def check_frozen(
    graph_def: GraphDef, *, inputs: Sequence[str], outputs: Sequence[str], fed: Sequence[str] = ()
) -> tf.Graph:
    """Fail unless ``graph_def`` is self-contained: it imports, has no variables, and every
    placeholder is one of ``inputs``; each input is a placeholder but those in ``fed``
    (computed tensors clients may feed instead). Returns the imported graph for describing tensors."""
    leftovers = [n.name for n in graph_def.node if n.op in VARIABLE_OPS]
    if leftovers:
        raise GraphError(f"variables left unfrozen: {', '.join(leftovers[:5])}")
    input_nodes = {graphdef.node_name(i) for i in inputs}
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
        if name not in fed and graph.get_tensor_by_name(name).op.type not in PLACEHOLDER_OPS:
            raise GraphError(f"input '{name}' is not a Placeholder in the frozen graph")
    return graph


def merge_scoped(parts: Mapping[str, GraphDef]) -> GraphDef:
    """One GraphDef holding each of ``parts`` under its own name scope (``scope/node``):
    how the frozen functions of a TF2 SavedModel's signatures share one model.pb."""
    graph = tf.Graph()
    try:
        with graph.as_default():
            for scope, part in parts.items():
                tf.import_graph_def(part, name=scope)
    except (ValueError, tf.errors.OpError) as exc:
        raise GraphError(f"the signatures' graphs do not merge into one: {first_line(exc)}") from None
    return graph.as_graph_def()

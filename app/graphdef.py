"""GraphDef names and pruning: the one toolkit the service and the freeze tool share.

A node input is a tensor name (``"scope/add:1"``, the output index defaults to 0: ``"x"``
is ``"x:0"``) or a control input (``"^init"``). ``node_name`` turns any of them into the
name of the node they come from; ``prune`` keeps the nodes some roots need. Used by
``app.optimize`` (folding at load), ``app.servable`` (finding the manifest's tensors) and
``freeze.graph`` (cutting a training graph down to inference). Dependencies point one way:
``freeze`` imports this module, nothing here imports ``freeze``, and nothing here imports
TensorFlow (a GraphDef is only read and copied, so any ``GraphDef`` proto works).

Example::

    node_name("^scope/add:1")                  # "scope/add"
    pruned = prune(graph_def, ["input", "Identity"])
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tensorflow.core.framework.graph_pb2 import GraphDef
    from tensorflow.core.framework.node_def_pb2 import NodeDef

# Whether the walk follows an edge: ``(the input as the consumer names it, its producer)``.
Follow = Callable[[str, "NodeDef"], bool]


def is_control_input(name: str) -> bool:
    """``'^init'``: an ordering dependency, not a value."""
    return name.startswith("^")


def node_name(name: str) -> str:
    """``'^a/b:1'`` → ``'a/b'``: the node a tensor name or control input refers to."""
    name = name.removeprefix("^")
    head, sep, tail = name.rpartition(":")
    return head if sep and tail.isdigit() else name


def output_index(name: str) -> int:
    """``'a/b:1'`` → 1, ``'a/b'`` → 0 (a control input reads no output: 0 too)."""
    _, sep, tail = name.rpartition(":")
    return int(tail) if sep and tail.isdigit() else 0


def tensor_name(name: str) -> str:
    """``'a/b'`` → ``'a/b:0'``; names that already carry an output index are kept."""
    return name if node_name(name) != name else f"{name}:0"


def without_nodes(graph_def: GraphDef) -> GraphDef:
    """An empty GraphDef with ``graph_def``'s versions and function library."""
    out = type(graph_def)()
    out.versions.CopyFrom(graph_def.versions)
    out.library.CopyFrom(graph_def.library)
    return out


def reachable(
    graph_def: GraphDef,
    roots: Iterable[str],
    *,
    stop_at: Iterable[str] = (),
    follow: Follow | None = None,
) -> set[str]:
    """Names of the nodes ``roots`` (node or tensor names) depend on, the roots included.

    The walk does not look past ``stop_at`` and, with ``follow``, only walks the edges it
    accepts (``freeze.graph`` cuts control inputs to training ops that way). Roots that are
    not in the graph are ignored; an input naming a missing node is a ``ValueError``.
    """
    nodes = {n.name: n for n in graph_def.node}
    stops = {node_name(s) for s in stop_at}
    seen: set[str] = set()
    todo = deque(name for name in (node_name(r) for r in roots) if name in nodes)
    while todo:
        name = todo.popleft()
        if name in seen:
            continue
        seen.add(name)
        if name in stops:
            continue
        for inp in nodes[name].input:
            producer = nodes.get(node_name(inp))
            if producer is None:
                raise ValueError(f"node '{name}' reads '{inp}', which is not a node of the graph")
            if follow is None or follow(inp, producer):
                todo.append(producer.name)
    return seen


def prune(graph_def: GraphDef, roots: Iterable[str], *, follow: Follow | None = None) -> GraphDef:
    """Only the nodes ``roots`` need (see ``reachable``), in their order; the roots stay even
    when nothing reads them (an input placeholder the outputs no longer use).

    Inputs of kept nodes that name dropped nodes (edges ``follow`` refused) are removed, so
    the result has no dangling references. ``graph_def`` is left untouched.
    """
    keep = reachable(graph_def, roots, follow=follow)
    out = without_nodes(graph_def)
    for node in graph_def.node:
        if node.name not in keep:
            continue
        new = out.node.add()
        new.CopyFrom(node)
        del new.input[:]
        new.input.extend(i for i in node.input if node_name(i) in keep)
    return out

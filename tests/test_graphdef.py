"""app/graphdef.py: the tensor-name helpers and the pruner the service and the freeze tool share."""

from __future__ import annotations

import pytest
from tensorflow.core.framework.graph_pb2 import GraphDef

from app.graphdef import is_control_input, node_name, output_index, prune, reachable, tensor_name, without_nodes


def graph(*nodes: tuple[str, str, list[str]]) -> GraphDef:
    """A GraphDef of ``(name, op, inputs)`` nodes; nothing here imports it into TensorFlow."""
    graph_def = GraphDef()
    graph_def.versions.producer = 1234
    graph_def.library.function.add().signature.name = "f"
    for name, op, inputs in nodes:
        graph_def.node.add(name=name, op=op, input=inputs)
    return graph_def


#   x ─┬─ mul ── out        dead ── unused        train ──^──┐
#   w ─┘                                                     add (reads out, control on train)
G = graph(
    ("x", "Placeholder", []),
    ("w", "Const", []),
    ("mul", "Mul", ["x", "w:0"]),
    ("out", "Identity", ["mul"]),
    ("dead", "Const", []),
    ("unused", "Identity", ["dead"]),
    ("train", "NoOp", []),
    ("add", "Identity", ["out:0", "^train"]),
)


@pytest.mark.parametrize(
    ("name", "node", "index", "tensor"),
    [
        ("x", "x", 0, "x:0"),
        ("x:0", "x", 0, "x:0"),
        ("scope/add:1", "scope/add", 1, "scope/add:1"),
        ("^scope/init", "scope/init", 0, "^scope/init:0"),
    ],
)
def test_names(name: str, node: str, index: int, tensor: str) -> None:
    assert node_name(name) == node
    assert output_index(name) == index
    assert is_control_input(name) == name.startswith("^")
    if not is_control_input(name):
        assert tensor_name(name) == tensor


def test_prune_keeps_what_the_roots_need_in_order_and_the_roots_even_unread() -> None:
    pruned = prune(G, ["out:0", "x"])
    assert [n.name for n in pruned.node] == ["x", "w", "mul", "out"]
    assert pruned.versions.producer == 1234 and pruned.library.function[0].signature.name == "f"
    assert len(G.node) == 8  # the argument is left untouched
    assert [n.name for n in prune(G, ["x"]).node] == ["x"]


def test_prune_follows_control_inputs_unless_told_not_to() -> None:
    assert {n.name for n in prune(G, ["add"]).node} == {"x", "w", "mul", "out", "train", "add"}

    def no_control(inp: str, producer) -> bool:
        return not is_control_input(inp)

    pruned = prune(G, ["add"], follow=no_control)
    assert "train" not in {n.name for n in pruned.node}
    (add,) = [n for n in pruned.node if n.name == "add"]
    assert list(add.input) == ["out:0"]  # no dangling "^train"


def test_reachable_stops_at_cut_points_and_ignores_unknown_roots() -> None:
    assert reachable(G, ["out"], stop_at=["mul:0"]) == {"out", "mul"}
    assert reachable(G, ["nope", "unused"]) == {"unused", "dead"}


def test_an_input_naming_a_missing_node_is_a_value_error() -> None:
    broken = graph(("a", "Identity", ["ghost:0"]))
    with pytest.raises(ValueError, match="'a' reads 'ghost:0'"):
        prune(broken, ["a"])


def test_without_nodes_keeps_versions_and_library() -> None:
    empty = without_nodes(G)
    assert not empty.node and empty.versions.producer == 1234 and len(empty.library.function) == 1

"""What every source is and what freezing one gives back, whatever the file was.

``Source`` is the small interface the loaders (``freeze.checkpoints``,
``freeze.saved_models``, ``freeze.keras_files``, ``freeze.frozen_graphs``) return and the
pipeline uses: ``inspect`` (what ``--inspect`` prints), ``freeze`` (a ``FrozenGraph``) and
``run`` (the source itself on the same feeds, for verification). A SavedModel's source also
freezes several of its signatures into one graph (``signature_names``,
``freeze_signatures``: a ``FrozenGraph`` whose ``signatures`` say which tensors each one
reads and writes). Its two implementations are ``freeze.session_source`` (TF1 graphs) and
``freeze.function_source`` (TF2 functions); ``finish`` is the last step both share. It lives apart so that the modules that only use
a ``FrozenGraph`` (export, verification, reference) need no loader.

Example::

    python scripts/freeze.py tiny.keras --inspect
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from . import graph as g
from ._serving import manifest as manifest_lib
from .candidates import TensorInfo, tensor_info
from .errors import GraphError
from .graph import GraphDef

SignatureSpec = manifest_lib.SignatureSpec


@dataclass(frozen=True)
class FrozenGraph:
    """A self-contained GraphDef and what the user needs to know to run it."""

    graph_def: GraphDef
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    constants: Mapping[str, Any] = field(default_factory=dict)  # placeholders fixed to values
    nodes_before: int = 0
    notes: tuple[str, ...] = ()  # decisions taken on the user's behalf, for the summary
    # A SavedModel's signatures kept in the graph, tensor names the frozen graph's (empty:
    # the graph has no named signatures; its inputs and outputs are what it serves).
    signatures: Mapping[str, SignatureSpec] = field(default_factory=dict)
    # Inputs that are not placeholders: tensors computed from another input (``x`` parsed
    # from a signature's serialized ``tf_example``) that clients may feed instead.
    fed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Inspection:
    """What ``--inspect`` prints: placeholders, candidate outputs, and what would be picked."""

    source: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    signatures: tuple[str, ...] = ()
    choice: str = ""

    def format(self) -> str:
        lines = [f"source: {self.source}"]
        if self.signatures:
            lines.append("signatures: " + ", ".join(self.signatures))
        lines.append("placeholders (possible inputs):")
        lines += [f"  {t.describe()}" for t in self.inputs] or ["  (none)"]
        lines.append("candidate outputs:")
        lines += [f"  {t.describe()}" for t in self.outputs] or ["  (none found; name one with --output)"]
        if self.choice:
            lines.append(self.choice)
        return "\n".join(lines)


class Source(abc.ABC):
    """Something a frozen graph can be made from, already loaded."""

    def __init__(self, *, kind: str, path: Path, details: Mapping[str, Any]) -> None:
        self.kind = kind
        self.path = path
        self.details = {"kind": kind, **details}  # provenance, copied into the manifest's info

    @abc.abstractmethod
    def inspect(self) -> Inspection:
        """List the possible inputs and outputs, and what ``freeze`` would pick."""

    @abc.abstractmethod
    def freeze(
        self,
        *,
        inputs: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
        constants: Mapping[str, Any] | None = None,
    ) -> FrozenGraph:
        """Freeze the graph for ``outputs`` fed from ``inputs`` (picked when None)."""

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
        """Run the source itself, with frozen-graph tensor names, for verification."""

    def signature_names(self) -> tuple[str, ...]:
        """The signatures ``freeze_signatures`` can keep (a SavedModel's; none elsewhere)."""
        return ()

    def freeze_signatures(
        self, *, names: Sequence[str], constants: Mapping[str, Any] | None = None
    ) -> FrozenGraph:
        """Freeze the union of the signatures ``names`` into one graph; one that cannot be
        kept is skipped with a note (an extra signature never fails the freeze)."""
        raise GraphError(f"{self.describe()} has no signatures to freeze")

    def close(self) -> None:  # noqa: B027 (a no-op unless the source holds something: not abstract)
        """Free what the source holds (its session)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.kind} {self.path}"


def finish(
    graph_def: GraphDef,
    inputs: Sequence[str],
    outputs: Sequence[str],
    constants: Mapping[str, Any],
    nodes_before: int,
    notes: Sequence[str],
    *,
    fed: Sequence[str] = (),
) -> FrozenGraph:
    """The last steps every source shares: make it portable, check it, describe it."""
    graph_def = g.clear_devices(graph_def)
    frozen = g.check_frozen(graph_def, inputs=inputs, outputs=outputs, fed=fed)
    return FrozenGraph(
        graph_def=graph_def,
        inputs=tuple(tensor_info(frozen.get_tensor_by_name(n)) for n in inputs),
        outputs=tuple(tensor_info(frozen.get_tensor_by_name(n)) for n in outputs),
        constants={f"{k}:0": v for k, v in constants.items()},
        nodes_before=nodes_before,
        notes=tuple(notes),
        fed=tuple(fed),
    )

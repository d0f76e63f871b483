"""A TF2 concrete function (a SavedModel signature or a wrapped Keras model) as a source.

TensorFlow's own ``convert_variables_to_constants_v2`` freezes it (it inlines the nested
functions TF2 keeps its layers in); the result is then pruned and checked like any other
graph. The loaders that build one are ``freeze.saved_models`` (TF2) and
``freeze.keras_files``. Each signature of a TF2 SavedModel is its own function:
``freeze_signatures`` freezes each one and merges them into one graph, each under its
signature's name as a scope (``classify_x_to_y/inputs:0``).

Example (``tiny.keras``: the five lines of Keras in docs/freeze.md, "Freeze your own model")::

    python scripts/freeze.py tiny.keras --inspect
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from . import candidates as c
from . import graph as g
from ._serving import graphdef
from .candidates import TensorInfo
from .errors import FreezeError, GraphError, NodeNotFoundError
from .source_base import FrozenGraph, Inspection, SignatureSpec, Source, finish

log = logging.getLogger(__name__)


class FunctionSource(Source):
    """A TF2 concrete function (a SavedModel signature or a wrapped Keras model).

    TF2 graphs keep their layers in nested functions, so they are frozen by TensorFlow's
    own ``convert_variables_to_constants_v2`` (which inlines the functions), then cleaned
    up like any other graph. Inputs and outputs are the function's: ``input``/``x`` and
    ``Identity:0``, ``Identity_1:0``...
    """

    def __init__(
        self,
        *,
        kind: str,
        path: Path,
        function: Any,
        call: Callable[[list[tf.Tensor]], list[tf.Tensor]],
        details: Mapping[str, Any],
        input_keys: Sequence[str] = (),
        output_keys: Sequence[str] = (),
        signatures: Sequence[str] = (),
        keepalive: Any = None,
        signature_defs: Mapping[str, SignatureSpec] | None = None,
        sibling: Callable[[str], FunctionSource] | None = None,
    ) -> None:
        super().__init__(kind=kind, path=path, details=details)
        self._keepalive = keepalive  # the object owning the function's variables
        try:
            frozen = convert_variables_to_constants_v2(function)
        except Exception as exc:  # noqa: BLE001 - TF raises many types here, all meaning "cannot convert"
            raise GraphError(f"TensorFlow cannot convert this function's variables: {g.first_line(exc)}") from None
        self._call = call
        self._graph_def = frozen.graph.as_graph_def()
        self._input_names = [t.name for t in frozen.inputs]
        self._output_names = [t.name for t in frozen.outputs]
        self._input_keys = dict(zip(input_keys, self._input_names))
        self._output_keys = dict(zip(output_keys, self._output_names))
        self._signatures = tuple(signatures)
        # A SavedModel's signatures (keys, dtypes, declared shapes) and how to load another
        # one's function; the ones frozen together, by scope, run the verification.
        self._signature_defs = dict(signature_defs or {})
        self._sibling = sibling
        self._scoped: dict[str, FunctionSource] = {}
        source_def = function.graph.as_graph_def()
        self._nodes_before = len(source_def.node) + sum(len(f.node_def) for f in source_def.library.function)
        self._graph = g.import_graph(self._graph_def)

    def _resolve(self, names: Sequence[str] | None, keys: dict[str, str], pool: list[str], what: str) -> list[str]:
        if not names:
            return list(pool)
        resolved = []
        for name in names:
            full = keys.get(name, graphdef.tensor_name(name))
            if full not in pool:
                known = [*pool, *keys]
                raise NodeNotFoundError(
                    f"{what} '{name}' is not one of this function's {what}s "
                    f"({', '.join(known)}){g.did_you_mean(name, known)}"
                )
            resolved.append(full)
        return resolved

    def _describe(self, names: list[str], keys: dict[str, str]) -> tuple[TensorInfo, ...]:
        by_name = {v: k for k, v in keys.items()}
        return tuple(
            c.tensor_info(self._graph.get_tensor_by_name(n), f"'{by_name[n]}'" if n in by_name else "") for n in names
        )

    def inspect(self) -> Inspection:
        choice = f"would use: inputs {', '.join(self._input_names)}; outputs {', '.join(self._output_names)}"
        return Inspection(
            self.describe(),
            self._describe(self._input_names, self._input_keys),
            self._describe(self._output_names, self._output_keys),
            self._signatures,
            choice,
        )

    def freeze(
        self,
        *,
        inputs: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
        constants: Mapping[str, Any] | None = None,
    ) -> FrozenGraph:
        out_names = self._resolve(outputs, self._output_keys, self._output_names, "output")
        constants = dict(constants or {})
        placeholders = self._resolve(list(constants), self._input_keys, self._input_names, "input")
        fixed = {graphdef.node_name(name): value for name, value in zip(placeholders, constants.values())}
        in_names = [n for n in self._input_names if graphdef.node_name(n) not in fixed]
        if inputs:
            wanted = set(self._resolve(inputs, self._input_keys, self._input_names, "input"))
            if wanted != set(in_names):
                raise GraphError(
                    f"this function takes inputs {', '.join(in_names)}; give all of them "
                    "(fix the others with --set NAME=VALUE)"
                )
        graph_def = g.extract_subgraph(self._graph_def, out_names)
        graph_def = g.placeholders_to_constants(graph_def, fixed)
        return finish(graph_def, in_names, out_names, fixed, self._nodes_before, [])

    def signature_names(self) -> tuple[str, ...]:
        return tuple(self._signature_defs) if self._sibling is not None else ()

    def freeze_signatures(
        self, *, names: Sequence[str], constants: Mapping[str, Any] | None = None
    ) -> FrozenGraph:
        parts: dict[str, FrozenGraph] = {}
        kept: dict[str, SignatureSpec] = {}
        notes = []
        for name in names:
            try:
                source = self._signature_source(name)
                wanted = {k: v for k, v in (constants or {}).items() if source.takes(k)}
                parts[name] = source.freeze(constants=wanted)
            except FreezeError as exc:
                notes.append(f"skipped signature '{name}': {exc}")
                continue
            self._scoped[name] = source
            kept[name] = source.scoped_signature(self._signature_defs[name], name)
        if not parts:
            raise GraphError("no signature can be frozen: " + "; ".join(notes))
        graph_def = g.merge_scoped({name: part.graph_def for name, part in parts.items()})
        inputs = [f"{name}/{t.name}" for name, part in parts.items() for t in part.inputs]
        outputs = [f"{name}/{t.name}" for name, part in parts.items() for t in part.outputs]
        fixed = {
            f"{name}/{graphdef.node_name(k)}": v for name, part in parts.items() for k, v in part.constants.items()
        }
        before = sum(part.nodes_before for part in parts.values())
        if len(parts) > 1:
            notes.insert(0, f"merged {len(parts)} signature functions, each under its name as a scope")
        frozen = finish(graph_def, inputs, outputs, fixed, before, notes)
        return dataclasses.replace(frozen, signatures=kept)

    def _signature_source(self, name: str) -> FunctionSource:
        if name == self.details.get("signature"):
            return self
        if self._sibling is None or name not in self._signature_defs:
            raise NodeNotFoundError(f"no signature '{name}'{g.did_you_mean(name, self._signature_defs)}")
        return self._sibling(name)

    def takes(self, name: str) -> bool:
        """``name`` (a key or tensor name) is one of this function's inputs."""
        return self._input_keys.get(name, graphdef.tensor_name(name)) in self._input_names

    def scoped_signature(self, declared: SignatureSpec, scope: str) -> SignatureSpec:
        """``declared`` (the SavedModel's keys, dtypes and shapes) with this function's
        frozen tensor names under ``scope``."""

        def spec(keys: dict[str, str], tensors: Mapping[str, Any]) -> dict[str, Any]:
            return {k: dataclasses.replace(t, tensor=f"{scope}/{keys[k]}") for k, t in tensors.items() if k in keys}

        return dataclasses.replace(
            declared,
            inputs=spec(self._input_keys, declared.inputs),
            outputs=spec(self._output_keys, declared.outputs),
        )

    def run(self, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
        scope = fetches[0].partition("/")[0] if fetches else ""
        if scope in self._scoped and all(f.startswith(f"{scope}/") for f in fetches):
            prefix = f"{scope}/"
            inner = {k.removeprefix(prefix): v for k, v in feeds.items() if k.startswith(prefix)}
            return self._scoped[scope]._run_own(inner, [f.removeprefix(prefix) for f in fetches])
        return self._run_own(feeds, fetches)

    def _run_own(self, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
        args = [tf.constant(feeds[name]) for name in self._input_names]
        results = dict(zip(self._output_names, (np.asarray(t) for t in self._call(args))))
        return [results[name] for name in fetches]

"""A TF1 graph with its variables restored in a session, frozen by our own GraphDef steps.

Checkpoints, TF1 SavedModels and already frozen ``.pb`` files all load into a
``SessionSource``: a ``tf.Graph`` plus a ``tf.compat.v1.Session``. Freezing picks inputs
and outputs (a signature's, the user's, or the obvious ones), fixes training switches
(``is_training``, ``keep_prob``), cuts the graph there and replaces each variable by a
Const read from the session (``freeze.graph``). A TF1 SavedModel's signatures all live in
its one graph, so ``freeze_signatures`` freezes their union: an input computed from another
input (``x`` parsed from ``tf_example``) stays as it is, to be fed directly. The loaders that build one are
``freeze.checkpoints``, ``freeze.saved_models`` and ``freeze.frozen_graphs``.

Example (``tiny.keras`` from docs/freeze.md; a frozen ``.pb`` loads as a session source too)::

    python scripts/freeze.py tiny.keras --output-pb /tmp/tiny.pb
    python scripts/freeze.py /tmp/tiny.pb --inspect
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from . import candidates as c
from . import graph as g
from ._serving import graphdef
from .errors import FreezeError, GraphError, SourceError
from .source_base import FrozenGraph, Inspection, SignatureSpec, Source, finish

log = logging.getLogger(__name__)


class SessionSource(Source):
    """A TF1 graph with its variables restored in a ``tf.compat.v1.Session``."""

    def __init__(
        self,
        *,
        kind: str,
        path: Path,
        graph: tf.Graph,
        session: tf.compat.v1.Session,
        details: Mapping[str, Any],
        signature: tuple[dict[str, str], dict[str, str]] | None = None,
        signatures: Sequence[str] = (),
        signature_defs: Mapping[str, SignatureSpec] | None = None,
        default_inputs: Sequence[str] | None = None,
        default_outputs: Sequence[str] | None = None,
    ) -> None:
        super().__init__(kind=kind, path=path, details=details)
        self.graph = graph
        self.session = session
        self._signature = signature  # (inputs key → tensor, outputs key → tensor)
        self._signatures = tuple(signatures)
        self._signature_defs = dict(signature_defs or {})  # name → spec, the source graph's tensor names
        self._default_inputs = list(default_inputs) if default_inputs else None
        self._default_outputs = list(default_outputs) if default_outputs else None
        self._graph_def = graph.as_graph_def()
        self._reads: dict[str, tf.Tensor] = {}

    def close(self) -> None:
        self.session.close()

    def _by_key(self, names: Sequence[str], index: int) -> list[str]:
        """Accept signature keys ('x') as well as tensor names ('x:0')."""
        mapping = self._signature[index] if self._signature else {}
        return [mapping.get(name, name) for name in names]

    def _outputs(self, outputs: Sequence[str] | None) -> tuple[list[str], str]:
        if outputs:
            return g.check_names(self._graph_def, self._by_key(outputs, 1), what="output"), ""
        if self._signature:
            names = [graphdef.tensor_name(n) for n in self._signature[1].values()]
            return names, f"the outputs of signature '{self.details.get('signature')}'"
        if self._default_outputs:
            return self._default_outputs, "given by the source"
        return c.choose_outputs(c.candidate_outputs(self.graph))

    def inspect(self) -> Inspection:
        labels = c.label_placeholders(self.graph)
        inputs = []
        for op in self.graph.get_operations():
            if op.type not in g.PLACEHOLDER_OPS:
                continue
            flag = c.training_flag_value(op)
            note = "labels of the training loss" if op.name in labels else ""
            note = f"training-mode switch, frozen to {flag}" if flag is not None else note
            inputs.append(c.tensor_info(op.outputs[0], note))
        outputs = c.candidate_outputs(self.graph)
        if self._signature:
            sig_outputs = [
                c.tensor_info(self.graph.get_tensor_by_name(graphdef.tensor_name(t)), f"signature output '{k}'")
                for k, t in self._signature[1].items()
            ]
            outputs = sig_outputs + [o for o in outputs if o.name not in {s.name for s in sig_outputs}]
        try:
            frozen_inputs, frozen_outputs, notes = self._choose(None, None, {})
            choice = f"would use: inputs {', '.join(frozen_inputs)}; outputs {', '.join(frozen_outputs)}"
            choice += "".join(f"\n  {note}" for note in notes)
        except FreezeError as exc:
            choice = f"cannot pick on its own: {exc}"
        return Inspection(self.describe(), tuple(inputs), tuple(outputs), self._signatures, choice)

    def _choose(
        self, inputs: Sequence[str] | None, outputs: Sequence[str] | None, constants: dict[str, Any]
    ) -> tuple[list[str], list[str], list[str]]:
        """Resolve inputs, outputs and training switches; return them with notes on choices."""
        notes = []
        out_names, reason = self._outputs(outputs)
        if reason:
            notes.append(f"picked output {', '.join(out_names)}: {reason}")
        if inputs:
            in_names = g.check_names(self._graph_def, self._by_key(inputs, 0), what="input")
        elif self._signature:
            in_names = [graphdef.tensor_name(n) for n in self._signature[0].values()]
        else:
            in_names = list(self._default_inputs or [])
        needed = c.needed_placeholders(self.graph, self._graph_def, out_names, stop_at=in_names)
        chosen = {graphdef.node_name(n) for n in in_names}
        auto = []
        for op in needed:
            if op.name in chosen or op.name in constants:
                continue
            flag = c.training_flag_value(op)
            if flag is not None:
                constants[op.name] = flag
                notes.append(f"fixed placeholder '{op.name}' to {flag} (training-mode switch)")
            elif inputs:
                raise GraphError(
                    f"the outputs also need placeholder '{op.name}' ({op.outputs[0].dtype.name}, "
                    f"{op.outputs[0].shape}); add it with --input or fix it with --set {op.name}=VALUE"
                )
            else:
                auto.append(op.outputs[0].name)
        if auto:
            in_names += auto
            notes.append(f"picked input {', '.join(auto)}: the placeholder(s) the outputs need")
        if not in_names:
            raise GraphError(f"the outputs {', '.join(out_names)} depend on no placeholder: there is nothing to feed")
        return in_names, out_names, notes

    def freeze(
        self,
        *,
        inputs: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
        constants: Mapping[str, Any] | None = None,
    ) -> FrozenGraph:
        constants = _node_keys(constants)
        for name in constants:
            g.check_names(self._graph_def, [name], what="placeholder to fix")
            if self.graph.get_operation_by_name(name).type not in g.PLACEHOLDER_OPS:
                raise GraphError(f"--set {name}: only a placeholder can be fixed to a value")
        in_names, out_names, notes = self._choose(inputs, outputs, constants)
        graph_def = self._graph_def
        fed = self._fed_inputs(in_names)
        for name in fed:
            notes.append(f"input '{name}' is computed from another input; it stays as it is, to be fed directly")
        for name in in_names:
            tensor = self.graph.get_tensor_by_name(name)
            if name in fed:
                continue
            graph_def = g.make_input(graph_def, name, dtype=tensor.dtype, shape=tensor.shape)
            if tensor.op.type not in g.PLACEHOLDER_OPS:
                notes.append(f"input '{name}' was a {tensor.op.type} node; it is a Placeholder now")
        graph_def = g.extract_subgraph(graph_def, out_names)
        graph_def = g.placeholders_to_constants(graph_def, constants)
        graph_def = g.defaults_for_placeholders(graph_def)
        variables = [n.name for n in graph_def.node if n.op in g.VARIABLE_OPS]
        graph_def = g.variables_to_constants(graph_def, self._read_variables(variables))
        if variables:
            notes.append(f"froze {len(variables)} variable(s)")
        for note in notes:
            log.info("%s", note)
        return finish(graph_def, in_names, out_names, constants, len(self._graph_def.node), notes, fed=fed)

    def _fed_inputs(self, in_names: Sequence[str]) -> list[str]:
        """Inputs that are not placeholders and depend on another input: cutting them into
        placeholders would cut that input's path (``x`` below a signature's ``tf_example``)."""
        nodes = {graphdef.node_name(n) for n in in_names}
        fed = []
        for name in in_names:
            if self.graph.get_tensor_by_name(name).op.type in g.PLACEHOLDER_OPS:
                continue
            upstream = g.reachable(self._graph_def, [name]) - {graphdef.node_name(name)}
            if upstream & nodes:
                fed.append(name)
        return fed

    def signature_names(self) -> tuple[str, ...]:
        return tuple(self._signature_defs)

    def freeze_signatures(
        self, *, names: Sequence[str], constants: Mapping[str, Any] | None = None
    ) -> FrozenGraph:
        kept: dict[str, SignatureSpec] = {}
        notes = []
        for name in names:
            spec = self._signature_defs[name]
            try:
                self._choose(_tensors(spec.inputs), _tensors(spec.outputs), _node_keys(constants))
            except FreezeError as exc:
                notes.append(f"skipped signature '{name}': {exc}")
                continue
            kept[name] = spec
        if not kept:
            raise GraphError("no signature can be frozen: " + "; ".join(notes))
        inputs = _unique(t for spec in kept.values() for t in _tensors(spec.inputs))
        outputs = _unique(t for spec in kept.values() for t in _tensors(spec.outputs))
        frozen = self.freeze(inputs=inputs, outputs=outputs, constants=constants)
        return dataclasses.replace(frozen, signatures=kept, notes=(*frozen.notes, *notes))

    def _read_variables(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        fetches = {}
        for name in names:
            op = self.graph.get_operation_by_name(name)
            if op.type == "VarHandleOp":
                if name not in self._reads:
                    with self.graph.as_default():
                        self._reads[name] = tf.raw_ops.ReadVariableOp(
                            resource=op.outputs[0], dtype=op.get_attr("dtype")
                        )
                fetches[name] = self._reads[name]
            else:
                fetches[name] = op.outputs[0]
        try:
            return self.session.run(fetches)
        except tf.errors.OpError as exc:
            raise SourceError(f"cannot read the variables' values: {g.first_line(exc)}") from None

    def run(self, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
        return list(self.session.run(list(fetches), feed_dict=dict(feeds)))


def _tensors(tensors: Mapping[str, Any]) -> list[str]:
    return [graphdef.tensor_name(t.tensor) for t in tensors.values()]


def _node_keys(constants: Mapping[str, Any] | None) -> dict[str, Any]:
    return {graphdef.node_name(k): v for k, v in (constants or {}).items()}


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))

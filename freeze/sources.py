"""Sources a frozen graph can be made from, loaded behind one small interface.

``load_source(path)`` looks at what ``path`` is and returns a ``Source``:

- a TF1 checkpoint (``model.ckpt.meta`` + prefix, a prefix, or a directory with a
  ``checkpoint`` file), V1 or V2 format, or a V2 checkpoint with no ``.meta`` plus a
  ``graph_fn`` that rebuilds the graph;
- a SavedModel directory, TF1 (loaded into a session) or TF2 (a signature function);
- a Keras ``.keras``/``.h5``/``.hdf5`` file (Keras 3, or tf_keras for old HDF5 files);
- a ``.pb``/``.pbtxt`` GraphDef that is already frozen.

A ``Source`` can describe itself (``inspect``), produce a ``FrozenGraph`` for chosen
inputs/outputs (``freeze``) and run itself on the same feeds (``run``), which is what
verification compares against. Close it (or use ``with``) to free its session.

Example::

    python scripts/freeze.py tiny.keras --output-pb /tmp/tiny.pb
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import logging
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import tensorflow as tf
from google.protobuf import message, text_format
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from freeze import graph as g
from freeze.errors import FreezeError, GraphError, NodeNotFoundError, SourceError
from freeze.graph import GraphDef, TensorInfo

log = logging.getLogger(__name__)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # at byte 0, or at 512, 1024, 2048, ... after a user block
GRAPH_SUFFIXES = (".pb", ".pbtxt")
DEFAULT_SIGNATURE = "serving_default"


@dataclass(frozen=True)
class FrozenGraph:
    """A self-contained GraphDef and what the user needs to know to run it."""

    graph_def: GraphDef
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    constants: Mapping[str, Any] = field(default_factory=dict)  # placeholders fixed to values
    nodes_before: int = 0
    notes: tuple[str, ...] = ()  # decisions taken on the user's behalf, for the summary


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

    def close(self) -> None:
        """Free what the source holds (its session)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.kind} {self.path}"


def _finish(
    graph_def: GraphDef,
    inputs: Sequence[str],
    outputs: Sequence[str],
    constants: Mapping[str, Any],
    nodes_before: int,
    notes: Sequence[str],
) -> FrozenGraph:
    """The last steps every source shares: make it portable, check it, describe it."""
    graph_def = g.clear_devices(graph_def)
    frozen = g.check_frozen(graph_def, inputs=inputs, outputs=outputs)
    return FrozenGraph(
        graph_def=graph_def,
        inputs=tuple(g.tensor_info(frozen.get_tensor_by_name(n)) for n in inputs),
        outputs=tuple(g.tensor_info(frozen.get_tensor_by_name(n)) for n in outputs),
        constants={f"{k}:0": v for k, v in constants.items()},
        nodes_before=nodes_before,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------- TF1 graphs


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
        default_inputs: Sequence[str] | None = None,
        default_outputs: Sequence[str] | None = None,
    ) -> None:
        super().__init__(kind=kind, path=path, details=details)
        self.graph = graph
        self.session = session
        self._signature = signature  # (inputs key → tensor, outputs key → tensor)
        self._signatures = tuple(signatures)
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
            names = [g.tensor_name(n) for n in self._signature[1].values()]
            return names, f"the outputs of signature '{self.details.get('signature')}'"
        if self._default_outputs:
            return self._default_outputs, "given by the source"
        return g.choose_outputs(g.candidate_outputs(self.graph))

    def inspect(self) -> Inspection:
        labels = g.label_placeholders(self.graph)
        inputs = []
        for op in self.graph.get_operations():
            if op.type not in g.PLACEHOLDER_OPS:
                continue
            flag = g.training_flag_value(op)
            note = "labels of the training loss" if op.name in labels else ""
            note = f"training-mode switch, frozen to {flag}" if flag is not None else note
            inputs.append(g.tensor_info(op.outputs[0], note))
        outputs = g.candidate_outputs(self.graph)
        if self._signature:
            sig_outputs = [
                g.tensor_info(self.graph.get_tensor_by_name(g.tensor_name(t)), f"signature output '{k}'")
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
            in_names = [g.tensor_name(n) for n in self._signature[0].values()]
        else:
            in_names = list(self._default_inputs or [])
        needed = g.needed_placeholders(self.graph, self._graph_def, out_names, stop_at=in_names)
        chosen = {g.node_name(n) for n in in_names}
        auto = []
        for op in needed:
            if op.name in chosen or op.name in constants:
                continue
            flag = g.training_flag_value(op)
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
        constants = {g.node_name(k): v for k, v in (constants or {}).items()}
        for name in constants:
            g.check_names(self._graph_def, [name], what="placeholder to fix")
            if self.graph.get_operation_by_name(name).type not in g.PLACEHOLDER_OPS:
                raise GraphError(f"--set {name}: only a placeholder can be fixed to a value")
        in_names, out_names, notes = self._choose(inputs, outputs, constants)
        graph_def = self._graph_def
        for name in in_names:
            tensor = self.graph.get_tensor_by_name(name)
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
        return _finish(graph_def, in_names, out_names, constants, len(self._graph_def.node), notes)

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


# --------------------------------------------------------------------------- TF2 functions


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
        source_def = function.graph.as_graph_def()
        self._nodes_before = len(source_def.node) + sum(len(f.node_def) for f in source_def.library.function)
        self._graph = g.import_graph(self._graph_def)

    def _resolve(self, names: Sequence[str] | None, keys: dict[str, str], pool: list[str], what: str) -> list[str]:
        if not names:
            return list(pool)
        resolved = []
        for name in names:
            full = keys.get(name, g.tensor_name(name))
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
            g.tensor_info(self._graph.get_tensor_by_name(n), f"'{by_name[n]}'" if n in by_name else "") for n in names
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
        fixed = {g.node_name(name): value for name, value in zip(placeholders, constants.values())}
        in_names = [n for n in self._input_names if g.node_name(n) not in fixed]
        if inputs:
            wanted = set(self._resolve(inputs, self._input_keys, self._input_names, "input"))
            if wanted != set(in_names):
                raise GraphError(
                    f"this function takes inputs {', '.join(in_names)}; give all of them "
                    "(fix the others with --set NAME=VALUE)"
                )
        graph_def = g.extract_subgraph(self._graph_def, out_names)
        graph_def = g.placeholders_to_constants(graph_def, fixed)
        return _finish(graph_def, in_names, out_names, fixed, self._nodes_before, [])

    def run(self, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
        args = [tf.constant(feeds[name]) for name in self._input_names]
        results = dict(zip(self._output_names, (np.asarray(t) for t in self._call(args))))
        return [results[name] for name in fetches]


# --------------------------------------------------------------------------- loading


def load_source(
    path: str | Path,
    *,
    graph_fn: str | Callable[[], Any] | None = None,
    signature: str | None = None,
    tags: Sequence[str] | None = None,
) -> Source:
    """Load whatever ``path`` is (see the module docstring) into a ``Source``.

    ``graph_fn`` ("module:function", "file.py:function" or a callable) rebuilds the graph
    of a checkpoint saved without ``.meta``. ``signature`` picks a SavedModel signature
    (default ``serving_default``); ``tags`` its MetaGraph (default ``serve``).
    """
    path = Path(path)
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            return _load_saved_model(path, signature=signature, tags=tags)
        return _load_checkpoint(path, graph_fn)
    if path.suffix.lower() in KERAS_SUFFIXES and path.is_file():
        return _load_keras(path)
    if path.name in ("saved_model.pb", "saved_model.pbtxt"):
        return _load_saved_model(path.parent, signature=signature, tags=tags)
    if path.suffix.lower() in GRAPH_SUFFIXES and path.is_file():
        return _load_frozen_graph(path)
    if path.suffix in (".meta", ".index") or ".data-" in path.name or _is_checkpoint_prefix(path) or graph_fn:
        return _load_checkpoint(path, graph_fn)
    if not path.exists():
        near = (
            [p.name for p in path.parent.iterdir()] + [p.name for p in _prefixes_in(path.parent)]
            if path.parent.is_dir()
            else []
        )
        raise SourceError(f"{path}: no such file, directory or checkpoint prefix{g.did_you_mean(path.name, near)}")
    raise SourceError(
        f"{path}: unsupported input; expected a checkpoint (.meta or prefix), a SavedModel directory, "
        f"a Keras file ({', '.join(KERAS_SUFFIXES)}) or a frozen graph ({', '.join(GRAPH_SUFFIXES)})"
    )


def _is_checkpoint_prefix(path: Path) -> bool:
    return any(Path(f"{path}{suffix}").exists() for suffix in (".index", ".meta"))


def _checkpoint_exists(prefix: Path) -> bool:
    """V2 checkpoints have ``prefix.index``; V1 ones are a single file at ``prefix``."""
    return Path(f"{prefix}.index").exists() or (prefix.is_file() and prefix.suffix not in (".meta", ".index"))


def _prefixes_in(directory: Path) -> list[Path]:
    found = {Path(str(p)[: -len(".index")]) for p in directory.glob("*.index")}
    found |= {p.with_suffix("") for p in directory.glob("*.meta") if p.with_suffix("").is_file()}
    return sorted(found, key=lambda p: p.stat().st_mtime if p.exists() else Path(f"{p}.index").stat().st_mtime)


def resolve_checkpoint(path: Path) -> tuple[Path | None, Path]:
    """Find ``(meta_file_or_None, checkpoint_prefix)`` from any of the accepted spellings.

    A directory's ``checkpoint`` file often names where the checkpoint was written (another
    machine, the directory before it was copied): the prefix of that name inside the given
    directory wins; then the named path if it exists; then the newest prefix in the
    directory, with a warning.
    """
    if path.suffix == ".meta":
        if not path.is_file():
            raise SourceError(f"{path}: no such file")
        meta, prefix = path, path.with_suffix("")
        if not _checkpoint_exists(prefix):
            found = _prefix_from_directory(path.parent, missing_ok=True)
            if found is None:
                raise SourceError(
                    f"{path}: no checkpoint data beside it (expected {prefix.name}.index and "
                    f"{prefix.name}.data-00000-of-00001)"
                )
            log.warning("no checkpoint at %s; using %s found beside it", prefix, found)
            prefix = found
    elif path.is_dir():
        prefix = _prefix_from_directory(path)
        metas = sorted(path.glob("*.meta"))
        meta = Path(f"{prefix}.meta") if Path(f"{prefix}.meta").exists() else (metas[0] if len(metas) == 1 else None)
    else:
        if path.suffix == ".index":
            prefix = path.with_suffix("")
        elif ".data-" in path.name:
            prefix = path.with_name(path.name.split(".data-")[0])
        else:
            prefix = path
        if not _checkpoint_exists(prefix):
            beside = [p.name for p in _prefixes_in(prefix.parent)] if prefix.parent.is_dir() else []
            raise SourceError(
                f"{prefix}: no checkpoint there (expected {prefix.name}.index + .data-* files, or a V1 "
                f"checkpoint file){g.did_you_mean(prefix.name, beside)}"
            )
        meta = Path(f"{prefix}.meta") if Path(f"{prefix}.meta").exists() else None
    _check_data_shards(prefix)
    return meta, prefix


def _prefix_from_directory(directory: Path, *, missing_ok: bool = False) -> Path | None:
    state_file = directory / "checkpoint"
    named = None
    if state_file.exists():
        state = tf.train.get_checkpoint_state(str(directory))
        if state and state.model_checkpoint_path:
            named = Path(state.model_checkpoint_path)  # TF already joined a relative one to directory
            beside = directory / named.name
            if _checkpoint_exists(beside):  # a copied directory still names where it was written
                if not _checkpoint_exists(named):
                    log.warning("%s names %s, which does not exist; using %s beside it", state_file, named, beside)
                return beside
            if _checkpoint_exists(named):
                return named
    prefixes = _prefixes_in(directory)
    if prefixes:
        if len(prefixes) > 1:
            log.warning("%d checkpoints in %s; using the newest, %s", len(prefixes), directory, prefixes[-1].name)
        return prefixes[-1]
    if missing_ok:
        return None
    where = f" (its checkpoint file names {named}, which does not exist)" if named else ""
    raise SourceError(f"{directory}: no checkpoint, SavedModel or graph found in this directory{where}")


def _check_data_shards(prefix: Path) -> None:
    if not Path(f"{prefix}.index").exists():
        return  # V1 checkpoint: one file, checked by the restore itself
    shards = sorted(prefix.parent.glob(f"{prefix.name}.data-*-of-*"))
    if not shards:
        raise SourceError(
            f"checkpoint {prefix} has an index but no data: {prefix.name}.data-00000-of-00001 is missing "
            "(copy the .data-* file(s) saved with it)"
        )
    total = int(shards[0].name.rsplit("-of-", 1)[1])
    missing = [
        f"{prefix.name}.data-{i:05d}-of-{total:05d}"
        for i in range(total)
        if not Path(f"{prefix}.data-{i:05d}-of-{total:05d}").exists()
    ]
    if missing:
        raise SourceError(f"checkpoint {prefix} is missing data shard(s): {', '.join(missing)}")


def _restore(session: tf.compat.v1.Session, saver: Any, prefix: Path) -> None:
    try:
        saver.restore(session, str(prefix))
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, tf.errors.DataLossError) as exc:
        raise SourceError(f"cannot restore checkpoint {prefix}: {g.first_line(exc)}") from None


def _load_checkpoint(path: Path, graph_fn: str | Callable[[], Any] | None) -> SessionSource:
    meta, prefix = resolve_checkpoint(path)
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    details: dict[str, Any] = {"checkpoint": str(prefix)}
    default_inputs = default_outputs = None
    try:
        with graph.as_default():
            if graph_fn is not None:
                built = _call_graph_fn(graph_fn)
                default_inputs, default_outputs = _tensor_names(built)
                variables = tf.compat.v1.global_variables()
                _check_variables_in_checkpoint(variables, prefix)
                saver = tf.compat.v1.train.Saver(var_list=variables) if variables else None
                details["graph_fn"] = (
                    graph_fn if isinstance(graph_fn, str) else getattr(graph_fn, "__name__", "callable")
                )
            elif meta is not None:
                try:
                    saver = tf.compat.v1.train.import_meta_graph(str(meta), clear_devices=True)
                except (ValueError, KeyError, tf.errors.OpError, message.DecodeError) as exc:
                    raise SourceError(f"cannot import graph {meta}: {g.first_line(exc)}") from None
                if saver is None and tf.compat.v1.global_variables():
                    saver = tf.compat.v1.train.Saver()
                details["meta_graph"] = str(meta)
            else:
                raise SourceError(
                    f"checkpoint {prefix} has no .meta graph; pass --graph-fn module:function "
                    "that rebuilds the graph in code"
                )
            if saver is not None:
                _restore(session, saver, prefix)
    except BaseException:
        session.close()
        raise
    return SessionSource(
        kind="checkpoint",
        path=prefix,
        graph=graph,
        session=session,
        details=details,
        default_inputs=default_inputs,
        default_outputs=default_outputs,
    )


def _call_graph_fn(graph_fn: str | Callable[[], Any]) -> Any:
    function = import_function(graph_fn, flag="--graph-fn") if isinstance(graph_fn, str) else graph_fn
    try:
        return function()
    except FreezeError:
        raise
    except Exception as exc:  # user code: one line, the traceback at debug level
        log.debug("graph function failed", exc_info=True)
        raise SourceError(f"--graph-fn {graph_fn}: {type(exc).__name__}: {g.first_line(exc)}") from None


def import_function(spec: str, *, flag: str) -> Callable[..., Any]:
    """The function named by ``package.module:function`` or ``path/file.py:function`` (user code)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise SourceError(f"{flag} '{spec}' must look like package.module:function or path/file.py:function")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise SourceError(f"{flag} {spec}: {file} does not exist")
            spec_obj = importlib.util.spec_from_file_location(file.stem, file)
            assert spec_obj is not None and spec_obj.loader is not None
            module = importlib.util.module_from_spec(spec_obj)
            spec_obj.loader.exec_module(module)
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - importing user code can raise anything
        raise SourceError(f"{flag} {spec}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        names = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
        raise SourceError(f"{flag} {spec}: {module_name} has no function '{attr}'{g.did_you_mean(attr, names)}")
    return function


def _tensor_names(built: Any) -> tuple[list[str] | None, list[str] | None]:
    """A graph function may return ``(inputs, outputs)``: tensors or names, one or a list."""
    if built is None:
        return None, None
    if not (isinstance(built, (tuple, list)) and len(built) == 2):
        raise SourceError("a --graph-fn function must return None or (inputs, outputs)")

    def names(value: Any) -> list[str]:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [g.tensor_name(v if isinstance(v, str) else v.name) for v in items]

    return names(built[0]), names(built[1])


def _check_variables_in_checkpoint(variables: Sequence[tf.Variable], prefix: Path) -> None:
    try:
        stored = tf.train.load_checkpoint(str(prefix)).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as exc:
        raise SourceError(f"cannot read checkpoint {prefix}: {g.first_line(exc)}") from None
    for variable in variables:
        name = variable.op.name
        if name not in stored:
            raise SourceError(
                f"the graph's variable '{name}' is not in checkpoint {prefix}{g.did_you_mean(name, stored)}; "
                f"it holds {', '.join(sorted(stored)[:10])}"
            )
        if list(stored[name]) != variable.shape.as_list():
            raise SourceError(
                f"variable '{name}' has shape {variable.shape.as_list()} in the graph but {stored[name]} "
                f"in checkpoint {prefix}"
            )


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


def _load_saved_model(directory: Path, *, signature: str | None, tags: Sequence[str] | None) -> Source:
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


def _keras_file_format(path: Path) -> str:
    """``"zip"`` (a ``.keras`` archive) or ``"hdf5"`` (an ``.h5`` file), read from the file's magic bytes.

    Anything else is refused here with what the file is, because Keras would say
    ``File not found`` of a ``.keras`` file that is there but is not a zip.
    """
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(32)
            offset = 512
            found = head.startswith(HDF5_SIGNATURE)
            while not found and offset + len(HDF5_SIGNATURE) <= size:
                file.seek(offset)
                found = file.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
                offset *= 2
    except OSError as exc:
        raise SourceError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if found:
        return "hdf5"
    suffix = path.suffix.lower()
    wanted = "a .keras file is a zip archive" if suffix == ".keras" else f"an {suffix} file is HDF5"
    if not head:
        what = "this one is empty"
    elif head.startswith(b"version https://git-lfs"):
        what = "this one is a Git LFS pointer: fetch the file itself with git lfs pull"
    else:
        what = f"this one starts with {head[:16]!r}"
    raise SourceError(f"{path} is not a Keras file ({wanted}; {what})")


def _load_keras(path: Path) -> FunctionSource:
    found = _keras_file_format(path)
    expected = "zip" if path.suffix.lower() == ".keras" else "hdf5"
    errors = []
    model = None
    for loader in ("keras", "tf_keras"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(loader)
                model = module.models.load_model(str(path), compile=False)
            break
        except ImportError as exc:
            errors.append(f"{loader}: not installed ({exc})")
        except Exception as exc:  # each Keras version fails in its own way
            log.debug("%s could not load %s", loader, path, exc_info=True)
            errors.append(f"{loader}: {type(exc).__name__}: {g.first_line(exc)}")
    if model is None:
        what, renamed = ("a zip archive", ".keras") if found == "zip" else ("an HDF5 file", ".h5")
        mismatch = "" if found == expected else f" ({path.name} is {what}: rename it to {path.stem}{renamed})"
        raise SourceError(f"cannot load Keras model {path}{mismatch}: " + " | ".join(errors))
    version = getattr(module, "__version__", "?")
    if errors:
        log.info("loaded %s with %s %s after: %s", path.name, loader, version, "; ".join(errors))
    if len(model.inputs) != 1:
        raise SourceError(
            f"{path}: the Keras model has {len(model.inputs)} inputs; only single-input models are supported"
        )
    shape = tf.TensorShape(model.inputs[0].shape).as_list()
    dtype = tf.as_dtype(model.inputs[0].dtype)
    spec = tf.TensorSpec(shape, dtype, name="input")

    def call(tensors: list[tf.Tensor]) -> list[tf.Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras 3 warns about input structure on old models
            return tf.nest.flatten(model(tensors[0], training=False))

    function = tf.function(lambda x: call([x]), input_signature=[spec], autograph=False).get_concrete_function()
    details = {"keras_file": str(path), "loader": f"{loader} {version}"}
    return FunctionSource(
        kind="keras",
        path=path,
        function=function,
        call=call,
        details=details,
        output_keys=list(getattr(model, "output_names", None) or []),
        keepalive=model,
    )


def _load_frozen_graph(path: Path) -> SessionSource:
    graph_def = GraphDef()
    data = path.read_bytes()
    try:
        if path.suffix == ".pbtxt":
            text_format.Parse(data.decode("utf-8"), graph_def)
        else:
            graph_def.ParseFromString(data)
    except (message.DecodeError, text_format.ParseError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not a GraphDef ({type(exc).__name__}: {exc})") from None
    if not graph_def.node:
        raise SourceError(f"{path}: not a GraphDef (no nodes)")
    variables = [n.name for n in graph_def.node if n.op in g.VARIABLE_OPS]
    if variables:
        raise SourceError(
            f"{path}: graph has {len(variables)} variable(s) ({', '.join(variables[:3])}); it is not frozen. "
            "Freeze the checkpoint or SavedModel it came from instead"
        )
    try:
        graph = g.import_graph(graph_def)
    except GraphError as exc:
        raise SourceError(f"{path}: {exc}") from None
    return SessionSource(
        kind="frozen_graph",
        path=path,
        graph=graph,
        session=tf.compat.v1.Session(graph=graph),
        details={"graph": str(path)},
    )

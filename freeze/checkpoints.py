"""TF1 checkpoints: find the prefix and ``.meta`` from any spelling, restore them in a session.

Accepted: ``model.ckpt.meta``, the prefix ``model.ckpt``, one of its ``.index`` or
``.data-*`` files, or a directory (its ``checkpoint`` file, else the newest prefix in it);
V1 or V2 format. A V2 checkpoint saved without ``.meta`` needs ``graph_fn``, user code that
rebuilds the graph. Missing shards, a ``checkpoint`` file naming another machine's path and
variables the checkpoint lacks are each one clear ``SourceError``. The result is a
``freeze.session_source.SessionSource``.

Example (on a TF1 checkpoint of your own; ``model.py:build`` only when it has no ``.meta``)::

    python scripts/freeze.py runs/ --inspect
    python scripts/freeze.py runs/model.ckpt --graph-fn model.py:build --output-pb /tmp/model.pb
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, overload

import tensorflow as tf
from google.protobuf import message

from . import graph as g
from ._serving import graphdef
from .errors import FreezeError, SourceError
from .session_source import SessionSource
from .user_code import import_function

log = logging.getLogger(__name__)


def is_checkpoint_prefix(path: Path) -> bool:
    """``path`` is a prefix with a ``.index`` or ``.meta`` file beside it."""
    return any(Path(f"{path}{suffix}").exists() for suffix in (".index", ".meta"))


def _checkpoint_exists(prefix: Path) -> bool:
    """V2 checkpoints have ``prefix.index``; V1 ones are a single file at ``prefix``."""
    return Path(f"{prefix}.index").exists() or (prefix.is_file() and prefix.suffix not in (".meta", ".index"))


def prefixes_in(directory: Path) -> list[Path]:
    """The checkpoint prefixes saved in ``directory``, oldest first."""
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
    meta: Path | None
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
            beside = [p.name for p in prefixes_in(prefix.parent)] if prefix.parent.is_dir() else []
            raise SourceError(
                f"{prefix}: no checkpoint there (expected {prefix.name}.index + .data-* files, or a V1 "
                f"checkpoint file){g.did_you_mean(prefix.name, beside)}"
            )
        meta = Path(f"{prefix}.meta") if Path(f"{prefix}.meta").exists() else None
    _check_data_shards(prefix)
    return meta, prefix


@overload
def _prefix_from_directory(directory: Path, *, missing_ok: Literal[False] = False) -> Path: ...
@overload
def _prefix_from_directory(directory: Path, *, missing_ok: bool) -> Path | None: ...
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
    prefixes = prefixes_in(directory)
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


def load_checkpoint(path: Path, graph_fn: str | Callable[[], Any] | None) -> SessionSource:
    """Restore the checkpoint at ``path`` (any accepted spelling) into a session."""
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


def _tensor_names(built: Any) -> tuple[list[str] | None, list[str] | None]:
    """A graph function may return ``(inputs, outputs)``: tensors or names, one or a list."""
    if built is None:
        return None, None
    if not (isinstance(built, (tuple, list)) and len(built) == 2):
        raise SourceError("a --graph-fn function must return None or (inputs, outputs)")

    def names(value: Any) -> list[str]:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [graphdef.tensor_name(v if isinstance(v, str) else v.name) for v in items]

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

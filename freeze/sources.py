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

This module only dispatches; each kind of file has its own module (``freeze.checkpoints``,
``freeze.saved_models``, ``freeze.keras_files``, ``freeze.frozen_graphs``) and the
interface is ``freeze.source_base`` (re-exported here).

Example::

    python scripts/freeze.py tiny.keras --output-pb /tmp/tiny.pb
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import graph as g
from .checkpoints import is_checkpoint_prefix, load_checkpoint, prefixes_in
from .errors import SourceError
from .frozen_graphs import GRAPH_SUFFIXES, load_frozen_graph
from .keras_files import KERAS_SUFFIXES, load_keras
from .saved_models import SAVED_MODEL_FILES, load_saved_model
from .source_base import FrozenGraph, Inspection, Source

__all__ = ["FrozenGraph", "Inspection", "Source", "load_source"]


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
        if any((path / name).exists() for name in SAVED_MODEL_FILES):
            return load_saved_model(path, signature=signature, tags=tags)
        return load_checkpoint(path, graph_fn)
    if path.suffix.lower() in KERAS_SUFFIXES and path.is_file():
        return load_keras(path)
    if path.name in SAVED_MODEL_FILES:
        return load_saved_model(path.parent, signature=signature, tags=tags)
    if path.suffix.lower() in GRAPH_SUFFIXES and path.is_file():
        return load_frozen_graph(path)
    if path.suffix in (".meta", ".index") or ".data-" in path.name or is_checkpoint_prefix(path) or graph_fn:
        return load_checkpoint(path, graph_fn)
    if not path.exists():
        near = (
            [p.name for p in path.parent.iterdir()] + [p.name for p in prefixes_in(path.parent)]
            if path.parent.is_dir()
            else []
        )
        raise SourceError(f"{path}: no such file, directory or checkpoint prefix{g.did_you_mean(path.name, near)}")
    raise SourceError(
        f"{path}: unsupported input; expected a checkpoint (.meta or prefix), a SavedModel directory, "
        f"a Keras file ({', '.join(KERAS_SUFFIXES)}) or a frozen graph ({', '.join(GRAPH_SUFFIXES)})"
    )

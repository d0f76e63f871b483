"""A ``.pb``/``.pbtxt`` GraphDef that is already frozen, loaded to be re-cut or re-checked.

Refused with a clear error when it is not a GraphDef or still has variables (then the
checkpoint or SavedModel it came from is what to freeze). The result is a
``freeze.session_source.SessionSource`` with an empty session: there is nothing to restore.

Example (``tiny.keras`` from docs/freeze.md, frozen once, then made a servable version)::

    python scripts/freeze.py tiny.keras --output-pb /tmp/tiny.pb
    python scripts/freeze.py /tmp/tiny.pb --name tiny --labels cat,dog,bird
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from google.protobuf import message, text_format

from . import graph as g
from .errors import GraphError, SourceError
from .graph import GraphDef
from .session_source import SessionSource

GRAPH_SUFFIXES = (".pb", ".pbtxt")


def load_frozen_graph(path: Path) -> SessionSource:
    """Parse the binary or text GraphDef at ``path``; refuse it unless it is frozen."""
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

"""The freezing library: checkpoints, SavedModels and Keras files → verified frozen graphs.

Keyword-only functions that raise ``FreezeError`` (see ``freeze.errors``);
``scripts/freeze.py`` is the command line over them. The steps, each usable alone:

- ``load_source(path)`` → a ``Source`` (``freeze.sources``): checkpoint, SavedModel,
  Keras file or frozen ``.pb``; ``source.inspect()`` lists inputs/outputs.
- ``source.freeze(inputs=..., outputs=...)`` → ``FrozenGraph``: variables frozen,
  training nodes stripped, pruned to the outputs, devices cleared (``freeze.graph``).
- ``verify(source=..., frozen=..., feeds=...)`` runs both and compares (``freeze.verify``).
- ``build_manifest``/``write_model`` write ``graphs/<name>/<version>/`` (``freeze.export``).
- ``freeze_model(...)`` does all of it in one call (``freeze.pipeline``).

Example::

    python scripts/freeze.py ../shared/testdata/checkpoints/mnist_softmax_tf1 --inspect
"""

from __future__ import annotations

from freeze.errors import (
    AmbiguousChoiceError,
    ExportError,
    FreezeError,
    GraphError,
    NodeNotFoundError,
    SourceError,
    VerificationError,
)
from freeze.export import ImageOptions, build_manifest, read_labels, write_model
from freeze.pipeline import FreezeResult, freeze_model, inspect_model
from freeze.sources import FrozenGraph, Inspection, Source, load_source
from freeze.verify import Verification, random_feeds, run_frozen, verify

__all__ = [
    "AmbiguousChoiceError",
    "ExportError",
    "FreezeError",
    "FreezeResult",
    "FrozenGraph",
    "GraphError",
    "ImageOptions",
    "Inspection",
    "NodeNotFoundError",
    "Source",
    "SourceError",
    "Verification",
    "VerificationError",
    "build_manifest",
    "freeze_model",
    "inspect_model",
    "load_source",
    "random_feeds",
    "read_labels",
    "run_frozen",
    "verify",
    "write_model",
]

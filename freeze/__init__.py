"""The freezing library: checkpoints, SavedModels and Keras files → verified frozen graphs.

Keyword-only functions that raise ``FreezeError`` (see ``freeze.errors``);
``scripts/freeze.py`` is the command line over them. The steps, each usable alone:

- ``load_source(path)`` → a ``Source`` (``freeze.sources``): checkpoint, SavedModel,
  Keras file or frozen ``.pb``; ``source.inspect()`` lists inputs/outputs.
- ``source.freeze(inputs=..., outputs=...)`` → ``FrozenGraph``: variables frozen,
  training nodes stripped, pruned to the outputs, devices cleared (``freeze.graph``; tensor
  names and pruning shared with the service in ``app.graphdef``).
- ``verify(source=..., frozen=..., feeds=...)`` runs both and compares (``freeze.verification``).
- ``build_manifest``/``write_model`` write ``graphs/<name>/<version>/`` (``freeze.export``);
  ``decide_kind``/``build_tensor_manifest`` serve a model that is not an image classifier
  by its own tensors, every SavedModel signature kept (``freeze.tensors``,
  ``source.freeze_signatures``, ``verify_signatures``).
- ``freeze_model(...)`` does all of it in one call (``freeze.pipeline``), its options in
  small frozen dataclasses: ``LoadOptions``, ``Selection``, ``ImageOptions``,
  ``CheckOptions``, ``WriteOptions``.

The names below are loaded on first use, so ``import freeze.console`` (what the scripts
do first, to silence TensorFlow's start-up) does not import TensorFlow.

Example (tiny.keras: the five lines of Keras in docs/freeze.md, "Freeze your own model")::

    python scripts/freeze.py tiny.keras --inspect
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    ".errors": (
        "AmbiguousChoiceError",
        "ExportError",
        "FreezeError",
        "GraphError",
        "NodeNotFoundError",
        "SourceError",
        "VerificationError",
    ),
    ".export": ("ImageOptions", "build_manifest", "read_labels", "write_model"),
    ".pipeline": (
        "CheckOptions",
        "FreezeResult",
        "LoadOptions",
        "Selection",
        "WriteOptions",
        "freeze_model",
        "inspect_model",
    ),
    ".sources": ("FrozenGraph", "Inspection", "Source", "load_source"),
    ".tensors": ("KindDecision", "build_tensor_manifest", "decide_kind"),
    ".verification": ("Verification", "random_feeds", "run_frozen", "verify", "verify_signatures"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'freeze' has no attribute '{name}'")
    return getattr(importlib.import_module(_MODULE_OF[name], __name__), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULE_OF])

"""The service modules freeze builds on, found where they live: ``app`` beside ``freeze`` in
the checkout, ``graphserve`` around it when pip-installed (see ``app/layout.py``).

Freeze uses the service's manifest, recipes, preprocessing and GraphDef toolkit, never the
reverse; every such import goes through here. Each module is imported on first use, so
``freeze.console`` can hide TensorFlow's start-up lines before anything imports TensorFlow.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app import exif, graphdef, manifest, preprocessing, recipes, tensorflow_log

__all__ = ["exif", "graphdef", "manifest", "preprocessing", "recipes", "tensorflow_log"]  # the imports above
MODULES = tuple(__all__)
SERVICE = "app" if __package__ == "freeze" else (__package__ or "").rpartition(".")[0]


def __getattr__(name: str) -> ModuleType:
    if name not in MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{SERVICE}.{name}")
    globals()[name] = module
    return module

"""The import names of our two packages: ``app`` and ``freeze`` in the checkout,
``graphserve`` and ``graphserve.freeze`` when pip-installed.

The wheel installs one top-level package, ``graphserve`` (app/, with freeze/ inside it), so a
user's own ``app`` or ``freeze`` package (a Flask project run with ``PYTHONPATH=.``) neither
hides ours nor is hidden by it, while the checkout keeps its layout. Code inside the packages
imports relatively; the few module names written as strings (subcommands, ``python -m``
targets) are built from these two.
"""

from __future__ import annotations

import importlib
from types import ModuleType

SERVICE = __name__.rpartition(".")[0]  # "app" (checkout) or "graphserve" (installed)
FREEZE = "freeze" if SERVICE == "app" else f"{SERVICE}.freeze"


def import_freeze(module: str = "") -> ModuleType:
    """``freeze`` or one of its modules (``"console"``, ``"cli"``), wherever it is installed."""
    return importlib.import_module(f"{FREEZE}.{module}" if module else FREEZE)

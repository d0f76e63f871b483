"""Importing the user's own code named on the command line: ``module:function`` or ``file.py:function``.

Used for ``--graph-fn`` (``freeze.checkpoints``) and ``--reference-preprocess``
(``freeze.reference``). Whatever importing it raises becomes one ``SourceError`` line.

Example (``mine.py:preprocess`` is your own function: image path -> model input array)::

    python scripts/freeze.py tiny.keras --name tiny --sample docs/samples/cat.jpg \\
        --reference-preprocess mine.py:preprocess
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import graph as g
from .errors import SourceError


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

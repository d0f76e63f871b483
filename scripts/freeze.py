#!/usr/bin/env python
"""Freeze a model for the service: the checkout's spelling of ``graphserve freeze`` (see freeze/cli.py).

Example::

    python scripts/freeze.py ../shared/testdata/checkpoints/mnist_softmax_tf1 --inspect
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named freeze.py and Python puts its folder first on sys.path, where it would
# shadow the installed ``freeze`` package: drop that folder before importing it.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

from freeze.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="scripts/freeze.py"))

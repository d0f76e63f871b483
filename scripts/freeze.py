#!/usr/bin/env python3
"""Freeze a model for the service: the checkout's spelling of ``graphserve freeze`` (see freeze/cli.py).

Runs with any Python 3.11+ that has requirements.txt, the checkout installed or not.
Example (tiny.keras: the five lines of Keras in docs/freeze.md, "Freeze your own model")::

    .venv/bin/python scripts/freeze.py tiny.keras --inspect
"""

from __future__ import annotations

import sys
from pathlib import Path

# The scripts that import app or freeze start with this line. Run as a script, Python puts
# this folder first on sys.path: the checkout is not on it (app and freeze would import only
# if installed), and this file would be found as ``freeze``. The checkout first fixes both.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from freeze.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="scripts/freeze.py"))

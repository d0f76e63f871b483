#!/usr/bin/env python
"""Build the demo models: the checkout's spelling of ``graphserve demo-models`` (see app/demo_models.py).

Example::

    python scripts/make_demo_graphs.py --graphs-dir graphs
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this folder first on sys.path, and its freeze.py would shadow the installed
# ``freeze`` package that app.demo_models imports: drop the folder first.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

from app.demo_models import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="make_demo_graphs"))

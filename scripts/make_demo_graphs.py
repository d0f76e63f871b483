#!/usr/bin/env python3
"""Build the demo models: the checkout's spelling of ``graphserve demo-models`` (see app/demo/).

Example::

    python scripts/make_demo_graphs.py --graphs-dir graphs
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, ahead of scripts/ (see freeze.py)

from app.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="make_demo_graphs"))

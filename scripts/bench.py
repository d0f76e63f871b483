#!/usr/bin/env python3
"""Benchmark one model against its raw session and the peers: ``graphserve bench`` (see ``app/bench/``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, ahead of scripts/ (see freeze.py)

from app.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="scripts/bench.py"))

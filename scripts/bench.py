#!/usr/bin/env python
"""Benchmark one model against its raw session and the peers: ``graphserve bench`` (see ``app/bench.py``)."""

import sys

from app.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="scripts/bench.py"))

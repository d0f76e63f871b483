"""``python -m app.bench``: the same as ``graphserve bench`` and ``scripts/bench.py``."""

import sys

from . import main

sys.exit(main(prog="python -m app.bench"))

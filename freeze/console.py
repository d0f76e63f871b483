"""What the command-line scripts share: quiet TensorFlow start-up and logging set-up.

Imports nothing heavy, so a script can call ``import_tensorflow_quietly`` before the rest
of ``freeze`` (and TensorFlow with it) is loaded.

Example::

    python scripts/freeze.py model.keras --name flowers -v   # -v shows TensorFlow's own logs
"""

from __future__ import annotations

import logging
import os
import sys
import warnings


def import_tensorflow_quietly(*, verbose: bool) -> None:
    """Import TF with its C++ chatter (oneDNN, CUDA, cuInit) hidden unless ``verbose``.

    TF 2.16+ prints some lines before its own log level is read, so stderr itself is
    pointed at /dev/null for the duration of the import. Python warnings from TF and
    Keras (deprecations, "input structure" notes) are hidden too.
    """
    if verbose or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # also hides "failed call to cuInit" on CPU machines
    warnings.filterwarnings("ignore")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.get_logger().setLevel(logging.ERROR)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def setup_logging(*, verbose: bool, prog: str) -> None:
    """Steps at INFO with ``verbose``; otherwise only warnings, as ``prog: WARNING: ...``."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s" if verbose else f"{prog}: %(levelname)s: %(message)s",
    )

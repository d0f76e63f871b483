"""What the command lines share: quiet TensorFlow start-up and logging set-up.

Imports nothing heavy, so a script can call ``import_tensorflow_quietly`` before the rest
of ``freeze`` (and TensorFlow with it) is loaded. (The server sorts TensorFlow's lines
instead of hiding them: ``app.tensorflow_log``.)

Example::

    graphserve freeze model.keras --name flowers -v   # -v shows TensorFlow's own logs
    graphserve serve -v                                # so does serve's -v (--log-level DEBUG)
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from ._serving import tensorflow_log


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
    with tensorflow_log.stderr_hidden():
        import tensorflow as tf

        tf.get_logger().setLevel(logging.ERROR)


def setup_logging(*, verbose: bool, prog: str) -> None:
    """Steps at INFO with ``verbose``; otherwise only warnings, as ``prog: WARNING: ...``."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s" if verbose else f"{prog}: %(levelname)s: %(message)s",
    )

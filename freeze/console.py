"""What the command lines share: quiet TensorFlow start-up and logging set-up.

Imports nothing heavy, so a script can call ``import_tensorflow_quietly`` before the rest
of ``freeze`` (and TensorFlow with it) is loaded.

Example::

    graphserve freeze model.keras --name flowers -v   # -v shows TensorFlow's own logs
    graphserve serve -v                                # so does serve's -v (--log-level DEBUG)
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def _stderr_hidden(hide: bool) -> Iterator[None]:
    """Point fd 2 at /dev/null: TF's C++ lines (absl's "before InitializeLog" note, "Could not
    find cuda drivers", cuInit) are written before its log level is read, so only this hides them."""
    if not hide:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


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
    with _stderr_hidden(True):
        import tensorflow as tf

        tf.get_logger().setLevel(logging.ERROR)


def start_tensorflow(*, verbose: bool) -> str:
    """Import TF and look for GPUs, and return the one line that says where models will run.

    For the server: unless ``verbose``, the start-up noise is hidden (stderr points at
    /dev/null while TF imports and CUDA is probed, which is when cuInit complains) and
    absl's Python warnings are dropped. TF_CPP_MIN_LOG_LEVEL is only defaulted to 2, so TF's
    C++ errors while serving still show; oneDNN is left as it is (it changes numerics).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not verbose:
        logging.getLogger("absl").setLevel(logging.ERROR)
    with _stderr_hidden(not verbose):
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    return f"running on GPU: {', '.join(names)}" if names else "running on CPU (no GPU found)"


def setup_logging(*, verbose: bool, prog: str) -> None:
    """Steps at INFO with ``verbose``; otherwise only warnings, as ``prog: WARNING: ...``."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s" if verbose else f"{prog}: %(levelname)s: %(message)s",
    )

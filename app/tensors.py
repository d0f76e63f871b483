"""A model's own tensors: its signatures, and the checks every front door shares.

Every model is served by its graph's own tensors (TF Serving's ``inputs['x']``, v2's FP32
tensors), as well as by encoded images when it is an image classifier. A ``Signature`` is one
named function of the graph: ``Port``s in and out, keyed by the names clients send and read.
Doors parse their wire format into numpy arrays of each port's dtype (they need the port to
know how: JSON numbers are cast to it), bounded *before* anything is allocated
(``check_size``); the core checks the rest here, the same for every door (``check_feeds``).

What a request may send is what the graph's tensor accepts (``Port.accepts``, its static
shape), not the declared shape metadata shows (``Port.declared``): TF Serving's own tests send
``[3]``, ``[2, 2]`` and a scalar to a half_plus_two ``x`` declared ``[-1, 1]``.

Batching: a signature is *batched* when every input and output has a free dimension 0; its
requests are stacked along it (``app.servable.Servable.run_signature``). Any other (an input
of unknown rank, a scalar) runs one request per ``sess.run``.

Exceptions (``ValueError``, so every door answers them as the client's fault)::

    BadTensor            a missing or unknown input, a wrong dtype, shape or value
     └── TensorTooLarge  more bytes than ``max_tensor_bytes``, refused before allocating
    UnknownSignature     no such signature (names the ones there are)
    NotAnImageModel      images sent to a model served by its tensors only
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .text import clip

# TF dtype name -> numpy dtype. bfloat16 is numpy's through ml_dtypes (a TensorFlow dependency).
_NUMPY: dict[str, Any] = {
    "float16": np.float16, "float32": np.float32, "float64": np.float64,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "bool": np.bool_, "string": np.object_,
}
try:
    import ml_dtypes

    _NUMPY["bfloat16"] = ml_dtypes.bfloat16
except ImportError:  # pragma: no cover - TensorFlow installs it
    pass

STRING_ELEMENT_BYTES = 64  # what one string element costs in Python beyond its bytes (object + pointer)


class BadTensor(ValueError):
    """A tensor the signature cannot take; the message names the input, what it takes and what came."""


class TensorTooLarge(BadTensor):
    """A tensor (or a request's tensors together) over ``max_tensor_bytes``."""


class UnknownSignature(BadTensor):
    pass


class NotAnImageModel(BadTensor):
    """Encoded images sent to a model that has no image input."""


def numpy_dtype(dtype: str) -> np.dtype[Any]:
    """The numpy dtype of a TF dtype name (``string``: object arrays of bytes)."""
    try:
        return np.dtype(_NUMPY[dtype])
    except KeyError:
        raise BadTensor(f"dtype {clip(dtype)} is not served") from None


def shape_text(shape: Sequence[int | None] | None) -> str:
    """``[-1, 160, 160, 3]`` (a free size as -1), ``[?]`` for unknown rank."""
    if shape is None:
        return "[?]"
    return "[" + ", ".join("-1" if d is None or d < 0 else str(d) for d in shape) + "]"


@dataclass(frozen=True)
class Port:
    """One input or output of a signature."""

    key: str  # the name clients use
    tensor: str  # the tensor in the served graph
    dtype: str  # TF dtype name ("float32", "string", ...)
    declared: tuple[int, ...] | None  # the signature's shape (metadata); None: unknown rank
    accepts: tuple[int | None, ...] | None  # the graph tensor's static shape (checks); None dims: any

    @property
    def numpy(self) -> np.dtype[Any]:
        return numpy_dtype(self.dtype)

    @property
    def shown_shape(self) -> tuple[int, ...] | None:
        """The shape metadata shows: the declared one, else what the graph accepts (-1: any)."""
        if self.declared is not None:
            return self.declared
        return None if self.accepts is None else tuple(-1 if d is None else d for d in self.accepts)

    def describe(self) -> str:
        return f"'{self.key}' ({self.dtype} {shape_text(self.shown_shape)})"


@dataclass(frozen=True)
class Signature:
    name: str
    method: str  # "predict", "classify" or "regress" (TF Serving's signature kinds)
    inputs: dict[str, Port]
    outputs: dict[str, Port]

    @property
    def batched(self) -> bool:
        """Requests can be stacked along dimension 0: every port has a free first dimension."""
        return all(p.accepts is not None and len(p.accepts) >= 1 and p.accepts[0] is None
                   for p in (*self.inputs.values(), *self.outputs.values()))

    def to_json(self) -> dict[str, Any]:
        """As ``GET /models`` shows it."""
        def ports(side: dict[str, Port]) -> dict[str, Any]:
            return {key: {"dtype": p.dtype, "shape": None if p.shown_shape is None else list(p.shown_shape)}
                    for key, p in side.items()}
        return {"method": self.method, "inputs": ports(self.inputs), "outputs": ports(self.outputs),
                "batched": self.batched}

    def takes(self) -> str:
        return ", ".join(port.describe() for port in self.inputs.values())

    def input(self, key: str) -> Port:
        """The input port ``key``; ``BadTensor`` naming the inputs there are."""
        port = self.inputs.get(key)
        if port is None:
            raise BadTensor(f"signature '{self.name}' has no input '{clip(key)}'; it takes {self.takes()}")
        return port

    def outputs_for(self, wanted: Sequence[str] | None) -> tuple[str, ...]:
        """The outputs a request asks for (each one of the signature's), or all of them."""
        if not wanted:
            return tuple(self.outputs)
        if len(wanted) > len(self.outputs):  # before reading names: a list may hold millions
            raise BadTensor(f"{len(wanted)} outputs asked; signature '{self.name}' has {len(self.outputs)}: "
                            f"{', '.join(self.outputs)}")
        unknown = [name for name in wanted if name not in self.outputs]
        if unknown:
            raise BadTensor(f"signature '{self.name}' has no output {', '.join(repr(clip(n)) for n in unknown)} "
                            f"(outputs: {', '.join(self.outputs)})")
        return tuple(dict.fromkeys(wanted))


def pick_signature(signatures: Mapping[str, Signature], name: str | None, model: str) -> Signature:
    """The signature asked for (None or empty: ``serving_default``, or the only one)."""
    if not name:
        name = "serving_default" if "serving_default" in signatures or len(signatures) != 1 else next(iter(signatures))
    found = signatures.get(name)
    if found is None:
        raise UnknownSignature(f"model '{model}' has no signature '{clip(name)}' "
                               f"(signatures: {', '.join(signatures) or 'none'})")
    return found


def check_size(what: str, shape: Sequence[int], dtype: str, limit: int, *, data_bytes: int = 0) -> int:
    """The element count of a tensor of ``shape``; ``TensorTooLarge`` when it would take more than
    ``limit`` bytes (strings: ``data_bytes`` plus ``STRING_ELEMENT_BYTES`` each). For doors to
    call with the shape a client *says*, before building anything of that size."""
    count = 1
    for d in shape:
        if d < 0:
            raise BadTensor(f"{what}: shape {shape_text(shape)} has a negative dimension")
        count *= d
        if count > limit:  # stop multiplying early: a shape of 1e6 dimensions stays cheap
            break
    itemsize = STRING_ELEMENT_BYTES if dtype == "string" else numpy_dtype(dtype).itemsize
    size = count * itemsize + data_bytes
    if size > limit:
        raise TensorTooLarge(f"{what}: {shape_text(shape[:8])}{'...' if len(shape) > 8 else ''} {dtype} "
                             f"would take {size:,} bytes; at most {limit:,} (max_tensor_bytes)")
    return count


def check_feeds(signature: Signature, feeds: Mapping[str, np.ndarray], *, model: str) -> int:
    """Check a request's arrays against ``signature``: every input given once, none unknown, each
    of its port's dtype and a shape its tensor accepts; batched inputs share dimension 0.
    Returns the request's rows (dimension 0; 1 for a signature that is not batched)."""
    missing = [key for key in signature.inputs if key not in feeds]
    unknown = [key for key in feeds if key not in signature.inputs]
    if missing or unknown:
        problem = (f"misses input(s) {', '.join(repr(k) for k in missing)}" if missing
                   else f"has unknown input(s) {', '.join(repr(clip(k)) for k in unknown[:3])}")
        raise BadTensor(f"the request {problem}; model '{model}' signature '{signature.name}' takes "
                        f"{signature.takes()}")
    rows = None
    for key, port in signature.inputs.items():
        array = feeds[key]
        if array.dtype != port.numpy:
            raise BadTensor(f"input {port.describe()} got {_dtype_name(array.dtype)}")
        accepts = port.accepts
        if accepts is not None and (array.ndim != len(accepts) or any(
                want is not None and got != want for got, want in zip(array.shape, accepts))):
            raise BadTensor(f"input {port.describe()} got shape {shape_text(array.shape)}; the graph takes "
                            f"{shape_text(accepts)}")
        if signature.batched:
            if rows is not None and array.shape[0] != rows:
                raise BadTensor(f"input {port.describe()} has {array.shape[0]} rows where the others have {rows}")
            rows = array.shape[0]
    if signature.batched and rows == 0:
        raise BadTensor(f"the request holds no rows (dimension 0 of {signature.takes()} is 0)")
    return 1 if rows is None else rows


def _dtype_name(dtype: np.dtype[Any]) -> str:
    for name, np_type in _NUMPY.items():
        if np.dtype(np_type) == dtype:
            return name
    return str(dtype)

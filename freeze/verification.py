"""Check that a frozen graph computes what its source computes, on the same inputs.

This is the answer to "the frozen model gives different results than the original": both
are run on the same batch (random inputs in the model's real range, or real images given
with ``--sample``), and the largest absolute difference is reported. It fails when that
difference exceeds ``tolerance * max(1, max|source output|)``, i.e. ``tolerance`` is an
absolute bound for outputs of magnitude up to 1 and a relative one above (ReLU scores).

A tensor model is verified signature by signature (``verify_signatures``): random values
for each input (unknown dimensions: 1, or ``--input-shape``), and for a serialized
``tf.Example`` input (a classify or regress signature) examples built from the features
its ``ParseExample`` reads. A signature whose inputs cannot be made up is skipped with a note.

Example::

    python scripts/freeze.py tiny.keras --name tiny --sample docs/samples/cat.jpg --tolerance 1e-5
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import tensorflow as tf

from . import graph as g
from .candidates import PASS_THROUGH_OPS, TensorInfo, tensor_info
from .errors import GraphError, VerificationError
from .graph import GraphDef
from .source_base import FrozenGraph, Source

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Verification:
    """The outcome of running source and frozen graph side by side."""

    passed: bool
    max_abs_diff: float
    tolerance: float
    allowed: float
    inputs: str
    top1_agreement: float | None

    def describe(self) -> str:
        verdict = "OK" if self.passed else "FAILED"
        text = (
            f"{verdict}: max |source - frozen| = {self.max_abs_diff:.3g} (allowed {self.allowed:.3g}) on {self.inputs}"
        )
        if self.top1_agreement is not None:
            text += f"; top-1 agrees on {self.top1_agreement:.0%}"
        return text

    @classmethod
    def merged(cls, results: Sequence[Verification], inputs: str) -> Verification:
        """One verdict for several runs: the closest to failing speaks for all."""
        worst = max(results, key=lambda r: r.max_abs_diff / r.allowed if r.allowed else float("inf"))
        return cls(
            passed=all(r.passed for r in results),
            max_abs_diff=worst.max_abs_diff,
            tolerance=worst.tolerance,
            allowed=worst.allowed,
            inputs=inputs,
            top1_agreement=None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "max_abs_diff": float(self.max_abs_diff),
            "tolerance": self.tolerance,
            "inputs": self.inputs,
            "top1_agreement": self.top1_agreement,
        }


def run_frozen(graph_def: GraphDef, feeds: Mapping[str, np.ndarray], fetches: Sequence[str]) -> list[np.ndarray]:
    """Run a frozen GraphDef on its own: imported into a fresh graph and session."""
    session = tf.compat.v1.Session(graph=g.import_graph(graph_def))
    try:
        return list(session.run(list(fetches), feed_dict=dict(feeds)))
    finally:
        session.close()


def random_feeds(
    inputs: Sequence[TensorInfo], *, batch: int = 4, seed: int = 0, shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, np.ndarray]:
    """Random values for each input: floats in [0, 1), small ints, random bools.

    An unknown batch dimension becomes ``batch``; a tensor of unknown rank becomes a
    vector. Other unknown dimensions need ``shapes`` (``--input-shape``).
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for info in inputs:
        shape = (shapes or {}).get(info.name)
        if shape is None:
            dims = [batch] if info.shape is None else list(info.shape)
            if dims and dims[0] is None:
                dims[0] = batch
            if any(d is None for d in dims):
                raise GraphError(
                    f"input '{info.name}' has shape {list(info.shape or [])} with unknown dimensions; "
                    "give one with --input-shape (e.g. 1,224,224,3)"
                )
            shape = cast(list[int], dims)  # no None left
        dtype = tf.as_dtype(info.dtype)
        if dtype.is_floating:
            value = rng.random(shape).astype(dtype.as_numpy_dtype)
        elif dtype.is_integer:
            value = rng.integers(0, 10, size=shape).astype(dtype.as_numpy_dtype)
        elif dtype == tf.bool:
            value = rng.random(shape) < 0.5
        else:
            raise GraphError(f"cannot make random values for input '{info.name}' of type {info.dtype}")
        feeds[info.name] = value
    return feeds


def whole_batches(x: np.ndarray, step: int | None) -> list[np.ndarray]:
    """``x`` cut into batches of ``step`` rows (a graph's fixed batch size; None: one batch),
    the last filled up by repeating rows from the start. Results past ``len(x)`` are padding."""
    step = step or len(x)
    rows = np.arange(-(-len(x) // step) * step) % len(x)
    padded = x[rows]
    return [padded[i : i + step] for i in range(0, len(padded), step)]


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    same_nan = np.isnan(a64) & np.isnan(b64)
    diff = np.abs(np.where(same_nan, 0.0, a64 - b64))
    return float(np.nan_to_num(diff, nan=np.inf).max()) if diff.size else 0.0


def verify(
    *,
    source: Source,
    frozen: FrozenGraph,
    feeds: Sequence[Mapping[str, np.ndarray]],
    tolerance: float = DEFAULT_TOLERANCE,
    described_as: str = "",
    fetches: Sequence[str] | None = None,
) -> Verification:
    """Run ``source`` and ``frozen`` on each batch of ``feeds``; raise if they differ.

    Feeds are keyed by the frozen graph's input names; placeholders the freezing fixed
    to constants (``keep_prob``) are fed to the source with the same values. ``fetches``
    (default: every output) are the tensors compared.
    """
    fetches = list(fetches) if fetches is not None else [o.name for o in frozen.outputs]
    constants = {k: np.asarray(v) for k, v in frozen.constants.items()}
    diff, magnitude, agree, rows = 0.0, 0.0, [], 0
    # Not ``with session``: that would make the frozen graph the default graph, and a TF2
    # source must run eagerly.
    session = tf.compat.v1.Session(graph=g.import_graph(frozen.graph_def))
    try:
        for batch in feeds:
            expected = source.run({**constants, **batch}, fetches)
            actual = session.run(fetches, feed_dict=dict(batch))
            for e, a in zip(expected, actual):
                e, a = np.asarray(e), np.asarray(a)
                diff = max(diff, _max_abs_diff(e, a))
                if e.size:
                    magnitude = max(magnitude, float(np.nanmax(np.abs(e))))
            first_e, first_a = np.asarray(expected[0]), np.asarray(actual[0])
            if first_e.ndim == 2 and first_e.shape[1] > 1 and first_e.shape == first_a.shape:
                agree.extend(first_e.argmax(axis=1) == first_a.argmax(axis=1))
            rows += len(first_e) if first_e.ndim else 1
    finally:
        session.close()
    allowed = tolerance * max(1.0, magnitude)
    result = Verification(
        passed=diff <= allowed,
        max_abs_diff=diff,
        tolerance=tolerance,
        allowed=allowed,
        inputs=described_as or f"a random batch of {rows}",
        top1_agreement=float(np.mean(agree)) if agree else None,
    )
    log.info("verification %s", result.describe())
    if not result.passed:
        raise VerificationError(
            f"the frozen graph differs from its source: {result.describe()}. If the source is "
            "nondeterministic (dropout left in training mode), fix its switch with --set NAME=VALUE",
            result,
        )
    return result


def verify_signatures(
    *,
    source: Source,
    frozen: FrozenGraph,
    signatures: Mapping[str, Any],
    tolerance: float = DEFAULT_TOLERANCE,
    input_shape: Sequence[int] | None = None,
) -> tuple[Verification, list[str]]:
    """Verify each signature (a ``SignatureSpec``) on random feeds of its own inputs; the
    merged verdict and notes on the signatures that could not be fed."""
    graph = g.import_graph(frozen.graph_def)
    results, verified, notes = [], [], []
    for name, spec in signatures.items():
        infos = [tensor_info(graph.get_tensor_by_name(t.tensor)) for t in spec.inputs.values()]
        try:
            feeds = signature_feeds(graph, infos, input_shape=input_shape)
        except GraphError as exc:
            notes.append(f"signature '{name}' not verified: {exc}")
            continue
        fetches = [t.tensor for t in spec.outputs.values()]
        results.append(verify(source=source, frozen=frozen, feeds=[feeds], tolerance=tolerance, fetches=fetches))
        verified.append(name)
    if not results:
        raise GraphError("no signature could be verified: " + "; ".join(notes))
    described = f"random feeds of signature(s) {', '.join(verified)}"
    return Verification.merged(results, described), notes


def signature_feeds(
    graph: tf.Graph, inputs: Sequence[TensorInfo], *, input_shape: Sequence[int] | None = None, batch: int = 4
) -> dict[str, np.ndarray]:
    """Random values for a tensor model's inputs: unknown batch → ``batch``, other unknown
    dimensions → 1 (or ``input_shape`` where its rank matches), serialized ``tf.Example``
    strings from the features a ``ParseExample`` reads."""
    rng = np.random.default_rng(0)
    feeds, shapes = {}, {}
    for info in inputs:
        shape = _filled_shape(info, input_shape, batch)
        if info.dtype == "string":
            feeds[info.name] = _examples(graph.get_tensor_by_name(info.name), int(np.prod(shape)), rng).reshape(shape)
        else:
            shapes[info.name] = shape
    rest = [info for info in inputs if info.name in shapes]
    return {**feeds, **random_feeds(rest, shapes=shapes)} if rest else feeds


def _filled_shape(info: TensorInfo, input_shape: Sequence[int] | None, batch: int) -> list[int]:
    if info.shape is None:
        return [batch]
    if input_shape is not None and len(input_shape) == len(info.shape) and None in info.shape:
        return list(input_shape)
    return [batch if i == 0 and d is None else 1 if d is None else d for i, d in enumerate(info.shape)]


def _example_parser(tensor: tf.Tensor) -> tf.Operation | None:
    """The ``ParseExample`` op reading ``tensor`` (through reshapes and identities), or None."""
    todo = [tensor]
    while todo:
        current = todo.pop()
        for op in current.consumers():
            if op.type in ("ParseExample", "ParseExampleV2") and op.inputs[0] is current:
                return op
            if op.type in PASS_THROUGH_OPS:
                todo.extend(op.outputs[:1])
    return None


def _dense_features(parser: tf.Operation) -> list[tuple[str, tf.DType, list[int]]]:
    """(key, dtype, shape) of each dense feature the parser reads."""
    dtypes, shapes = parser.get_attr("Tdense"), parser.get_attr("dense_shapes")
    if parser.type == "ParseExample":
        first = 2 + parser.get_attr("Nsparse")
        keys = [tf.get_static_value(t) for t in parser.inputs[first : first + len(dtypes)]]
    else:
        static = tf.get_static_value(parser.inputs[3])
        keys = [None] if static is None else list(np.asarray(static).reshape(-1))
    if any(k is None for k in keys):
        raise GraphError(f"the feature names of '{parser.name}' are not constants")
    return [
        (_text(k), tf.as_dtype(d), [1 if s is None else s for s in _dims(shape)])
        for k, d, shape in zip(keys, dtypes, shapes)
    ]


def _text(value: Any) -> str:
    value = np.asarray(value).item()
    return value.decode() if isinstance(value, bytes) else str(value)


def _dims(shape: Any) -> list[int | None]:
    dims = tf.TensorShape(shape).as_list()
    return [] if dims is None else [None if d is None or d < 0 else d for d in dims]


def _examples(tensor: tf.Tensor, count: int, rng: np.random.Generator) -> np.ndarray:
    parser = _example_parser(tensor)
    if parser is None:
        raise GraphError(f"input '{tensor.name}' is a string that no ParseExample reads; cannot make up values")
    features = _dense_features(parser)
    examples = [
        tf.train.Example(
            features=tf.train.Features(feature={k: _feature(d, s, rng) for k, d, s in features})
        ).SerializeToString()
        for _ in range(count)
    ]
    return np.array(examples, dtype=object)


def _feature(dtype: tf.DType, shape: Sequence[int], rng: np.random.Generator) -> tf.train.Feature:
    size = int(np.prod(shape)) if shape else 1
    if dtype.is_floating:
        return tf.train.Feature(float_list=tf.train.FloatList(value=rng.random(size).tolist()))
    if dtype.is_integer:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=rng.integers(0, 10, size).tolist()))
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"] * size))

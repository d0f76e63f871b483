"""Check that a frozen graph computes what its source computes, on the same inputs.

This is the answer to "the frozen model gives different results than the original": both
are run on the same batch (random inputs in the model's real range, or real images given
with ``--sample``), and the largest absolute difference is reported. It fails when that
difference exceeds ``tolerance * max(1, max|source output|)``, i.e. ``tolerance`` is an
absolute bound for outputs of magnitude up to 1 and a relative one above (ReLU scores).

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
from .candidates import TensorInfo
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
) -> Verification:
    """Run ``source`` and ``frozen`` on each batch of ``feeds``; raise if they differ.

    Feeds are keyed by the frozen graph's input names; placeholders the freezing fixed
    to constants (``keep_prob``) are fed to the source with the same values.
    """
    fetches = [o.name for o in frozen.outputs]
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

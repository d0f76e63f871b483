"""Check our in-graph preprocessing against the user's own: ``--reference-preprocess module:function``.

Verifying a frozen graph against its source cannot see a preprocessing mismatch, because
both sides get our preprocessing. This check asks the user's function (the code their
model was trained or served with) to turn each ``--sample`` file into the model's input
array, and compares it with what the service's graph makes of the same file: input to
input, then the frozen model's output on each. A TF1 model served with TF2's resize, for
example, moves a score by 0.09 and fails here; with the ``tf1_bilinear`` recipe it passes.

Example (the ``nudity`` package's 2019 graph; see docs/freeze.md, "Checking a model's preprocessing")::

    python scripts/freeze.py retrained_graph.pb --name nudity --height 224 --width 224 \\
        --scale "(x-128)/128" --resize tf1_bilinear --labels not_nude,nude \\
        --sample photo.jpg --reference-preprocess my_pipeline.py:read_tensor --tolerance 1e-3
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from . import graph as g
from ._serving import manifest as manifest_lib
from .errors import SourceError, VerificationError
from .images import load_images, to_model_input
from .source_base import FrozenGraph
from .user_code import import_function
from .verification import whole_batches

log = logging.getLogger(__name__)

FLAG = "--reference-preprocess"


@dataclass(frozen=True)
class SampleComparison:
    """One sample: how far our model input and the model's output are from the reference's."""

    sample: str
    input_max: float
    input_mean: float
    output_max: float
    same_top1: bool


@dataclass(frozen=True)
class ReferenceCheck:
    samples: list[SampleComparison]
    tolerance: float
    allowed: float

    @property
    def output_max(self) -> float:
        return max(s.output_max for s in self.samples)

    @property
    def input_max(self) -> float:
        return max(s.input_max for s in self.samples)

    @property
    def passed(self) -> bool:
        return self.output_max <= self.allowed

    def describe(self) -> str:
        verdict = "OK" if self.passed else "FAILED"
        agree = sum(s.same_top1 for s in self.samples)
        return (
            f"{verdict}: against the reference preprocessing, max |output diff| = {self.output_max:.3g} "
            f"(allowed {self.allowed:.3g}), max |input diff| = {self.input_max:.3g}, "
            f"top-1 agrees on {agree}/{len(self.samples)} sample(s)"
        )

    def lines(self) -> list[str]:
        return [
            f"{s.sample}: input max {s.input_max:.3g} mean {s.input_mean:.3g}, output max {s.output_max:.3g}"
            + ("" if s.same_top1 else ", top-1 DIFFERS")
            for s in self.samples
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "tolerance": self.tolerance,
            "max_output_diff": self.output_max,
            "max_input_diff": self.input_max,
            "samples": [vars(s) for s in self.samples],
        }


def check_reference(
    *,
    reference: str | Callable[[str], Any],
    frozen: FrozenGraph,
    manifest: manifest_lib.Manifest,
    samples: Sequence[str | Path],
    tolerance: float,
) -> ReferenceCheck:
    """Compare ``reference(path)`` with our preprocessing on each sample; raise above ``tolerance``.

    ``tolerance`` bounds the output difference as the source verification does: absolute
    for outputs up to 1, relative above.
    """
    if not samples:
        raise SourceError(f"{FLAG} needs real images to compare on: give --sample IMAGE (one or more)")
    function = import_function(reference, flag=FLAG) if isinstance(reference, str) else reference
    ours = to_model_input(load_images(samples, manifest), manifest)
    theirs = np.stack([_reference_input(function, str(path), ours[0].shape) for path in samples])
    session = tf.compat.v1.Session(graph=g.import_graph(frozen.graph_def))
    try:
        ours_out, theirs_out = (_run(session, manifest, x) for x in (ours, theirs))
    finally:
        session.close()
    comparisons = [
        SampleComparison(
            sample=Path(path).name,
            input_max=float(np.abs(a - b).max()),
            input_mean=float(np.abs(a - b).mean()),
            output_max=float(np.abs(oa - ob).max()),
            same_top1=bool(np.argmax(oa) == np.argmax(ob)),
        )
        for path, a, b, oa, ob in zip(samples, ours, theirs, ours_out, theirs_out)
    ]
    allowed = tolerance * max(1.0, float(np.abs(theirs_out).max()))
    result = ReferenceCheck(samples=comparisons, tolerance=tolerance, allowed=allowed)
    log.info("reference check %s", result.describe())
    if not result.passed:
        raise VerificationError(
            f"the service's preprocessing differs from {reference if isinstance(reference, str) else 'the reference'}: "
            f"{result.describe()}; per sample: {'; '.join(result.lines())}. Try another --resize recipe "
            "(tf1_* for TF1 pipelines, pillow_* for Pillow ones) or --scale",
            result,
        )
    return result


def _reference_input(function: Callable[[str], Any], path: str, shape: tuple[int, ...]) -> np.ndarray:
    """The user's array for one file, as one row of our model input (a batch of one is unwrapped)."""
    try:
        value = np.asarray(function(path), dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - user code can raise anything; say where
        log.debug("reference function failed", exc_info=True)
        raise SourceError(f"{FLAG} failed on {path}: {type(exc).__name__}: {g.first_line(exc)}") from None
    if value.size != int(np.prod(shape)):
        raise SourceError(
            f"{FLAG} returned shape {list(value.shape)} for {path}; the model input is {list(shape)} per image "
            "(a leading batch dimension of 1 is fine)"
        )
    return value.reshape(shape)


def _run(session: tf.compat.v1.Session, manifest: manifest_lib.Manifest, x: np.ndarray) -> np.ndarray:
    """The frozen model's output for each row, fed in batches of the graph's size."""
    name = manifest.input.tensor
    outputs = [session.run(manifest.output.tensor, {name: batch}) for batch in whole_batches(x, manifest.batch_size)]
    return np.concatenate(outputs)[: len(x)]

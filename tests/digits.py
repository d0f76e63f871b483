"""Tiny but real classifiers for tests: trained on scikit-learn's digits, frozen to GraphDefs.

Two models with different input geometry and preprocessing, so tests cover the paths that
matter: ``digits8`` (8x8 gray, [0,1], flattened input, probabilities) and ``digits16``
(16x16 gray, [-1,1], image input, logits). Both learn from the same 8x8 digits; ``digits16``
average-pools its 16x16 input back to 8x8, which undoes the service's nearest-neighbour
upscaling exactly.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

LABELS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@dataclass(frozen=True)
class DigitData:
    train_x: np.ndarray  # [n, 64] in [0, 1]
    train_y: np.ndarray
    test_images: list[np.ndarray]  # uint8 8x8, as a client would send them
    test_y: np.ndarray


def digit_data(test_count: int = 300) -> DigitData:
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # what a PNG holds
    rng = np.random.default_rng(0)
    order = rng.permutation(len(pixels))
    test, train = order[:test_count], order[test_count:]
    return DigitData(
        train_x=pixels[train].reshape(-1, 64) / 255.0,
        train_y=digits.target[train],
        test_images=list(pixels[test]),
        test_y=digits.target[test],
    )


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def train_weights(data: DigitData) -> tuple[np.ndarray, np.ndarray]:
    model = LogisticRegression(max_iter=500, C=1.0)
    model.fit(data.train_x, data.train_y)
    return model.coef_.T.astype(np.float32), model.intercept_.astype(np.float32)


def write_model(root: Path, name: str, weights: tuple[np.ndarray, np.ndarray], *, size: int, version: int = 1,
                extra_manifest: dict | None = None) -> Path:
    """Freeze a digits classifier taking ``size``x``size`` input into ``root/name/version``."""
    import tensorflow as tf

    kernel, bias = weights
    graph = tf.Graph()
    with graph.as_default():
        if size == 8:
            x = tf.compat.v1.placeholder(tf.float32, [None, 64], name="input")
            flat = x
        else:
            x = tf.compat.v1.placeholder(tf.float32, [None, size, size, 1], name="input")
            pooled = tf.nn.avg_pool2d(x, ksize=size // 8, strides=size // 8, padding="VALID")
            flat = tf.reshape((pooled + 1.0) / 2.0, [-1, 64])  # model saw [0,1]; service sends [-1,1]
        logits = tf.add(tf.matmul(flat, tf.constant(kernel)), tf.constant(bias), name="logits")
        tf.nn.softmax(logits, name="probs")
    directory = root / name / str(version)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.pb").write_bytes(graph.as_graph_def().SerializeToString())
    if size == 8:
        manifest = {
            "input": {"tensor": "input:0", "height": 8, "width": 8, "channels": 1},
            "output": {"tensor": "probs:0", "kind": "probabilities"},
            "preprocessing": {"resize": "bilinear", "scale": "[0,1]", "flatten": True},
        }
    else:
        manifest = {
            "input": {"tensor": "input:0", "height": size, "width": size, "channels": 1},
            "output": {"tensor": "logits:0", "kind": "logits"},
            "preprocessing": {"resize": "nearest", "scale": "[-1,1]"},
        }
    manifest.update(extra_manifest or {})
    (directory / "model.json").write_text(json.dumps(manifest))
    (directory / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return directory


def write_two_versions(root: Path, name: str, weights: tuple[np.ndarray, np.ndarray]) -> Path:
    """Model ``name`` with versions 1 (8x8 input) and 2 (16x16), both served, labelled
    ``stable`` (1) and ``canary`` (2): the layout the version and label tests select from."""
    write_model(root, name, weights, size=8, version=1)
    write_model(root, name, weights, size=16, version=2)
    policy = {"policy": "latest", "num_versions": 2, "labels": {"stable": 1, "canary": 2}}
    (root / name / "versions.json").write_text(json.dumps(policy))
    return root

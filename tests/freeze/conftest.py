"""Fixtures for the freeze tests: the shared real checkpoints, tiny TF1 training graphs, the CLI.

Real material is read from ``../shared/testdata`` (never copied into the repo); tests that
need it skip, saying where it was looked for, when it is absent.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tensorflow as tf

REPO = Path(__file__).resolve().parents[2]
TESTDATA = Path(__file__).parents[2] / ".." / "shared" / "testdata"
CHECKPOINTS = TESTDATA / "checkpoints"


@pytest.fixture(scope="session")
def checkpoints() -> Path:
    """``../shared/testdata/checkpoints``, or skip the test with the reason."""
    if not CHECKPOINTS.is_dir():
        pytest.skip(f"shared test data not found at {CHECKPOINTS.resolve()} (see ../shared/testdata/README.md)")
    return CHECKPOINTS.resolve()


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module (its name is not a package path)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def freeze_cli() -> Callable[..., int]:
    """``scripts/freeze.py``'s ``main``, run in this process (TensorFlow is already loaded)."""
    return load_script("freeze").main


def save_training_checkpoint(
    directory: Path,
    *,
    dropout: bool = False,
    resource: bool = False,
    seed: int = 0,
) -> Path:
    """Save a tiny TF1 *training* graph (4 features → 3 classes) the way TF1 code did.

    It has what real training checkpoints carry and a frozen graph must not: a label
    placeholder, a loss, a GradientDescent step, a Saver, and with ``dropout`` a
    ``keep_prob`` and an ``is_training`` placeholder. Returns the checkpoint prefix.
    """
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="x")
        labels = tf.compat.v1.placeholder(tf.float32, [None, 3], name="labels")
        w = tf.compat.v1.Variable(rng.normal(size=(4, 3)).astype(np.float32), name="W", use_resource=resource)
        b = tf.compat.v1.Variable(rng.normal(size=3).astype(np.float32), name="b", use_resource=resource)
        hidden = tf.matmul(x, w) + b
        if dropout:
            keep_prob = tf.compat.v1.placeholder(tf.float32, [], name="keep_prob")
            is_training = tf.compat.v1.placeholder(tf.bool, [], name="is_training")
            hidden = tf.compat.v1.nn.dropout(hidden, keep_prob=keep_prob)
            hidden = tf.cond(is_training, lambda: tf.nn.dropout(hidden, rate=0.5), lambda: hidden)
        logits = tf.identity(hidden, name="logits")
        tf.nn.softmax(logits, name="probs")
        loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits), name="loss")
        tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            prefix = directory / "model.ckpt"
            saver.save(session, str(prefix))
    return prefix


def tf1_reference(prefix: Path, x: np.ndarray) -> np.ndarray:
    """softmax(x @ W + b) from the checkpoint's own values: what a frozen graph must give."""
    reader = tf.train.load_checkpoint(str(prefix))
    logits = x @ reader.get_tensor("W") + reader.get_tensor("b")
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)

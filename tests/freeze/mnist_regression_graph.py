"""The graph of sugyan/tensorflow-mnist's regression model, rebuilt in code for ``--graph-fn``.

Its V2 checkpoint (``../shared/testdata/checkpoints/mnist_regression_v2``) was saved
without a ``.meta``, so freezing needs this function::

    python scripts/freeze.py ../shared/testdata/checkpoints/mnist_regression_v2 \\
        --graph-fn tests/freeze/mnist_regression_graph.py:build --name mnist_regression
"""

from __future__ import annotations

import tensorflow as tf


def build() -> tuple[tf.Tensor, tf.Tensor]:
    """Placeholder [None, 784] → softmax [None, 10], variables ``regression/W`` and ``regression/b``."""
    with tf.compat.v1.variable_scope("regression"):
        x = tf.compat.v1.placeholder(tf.float32, [None, 784], name="x")
        w = tf.compat.v1.Variable(tf.zeros([784, 10]), name="W")
        b = tf.compat.v1.Variable(tf.zeros([10]), name="b")
        y = tf.nn.softmax(tf.matmul(x, w) + b, name="y")
    return x, y

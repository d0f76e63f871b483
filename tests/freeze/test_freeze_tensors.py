"""Models served by their own tensors: TF Serving's half_plus_two (TF1 and TF2, every signature),
a flat MNIST checkpoint, a two-input two-output Keras model; and the image/tensors decision."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from app.manifest import MANIFEST_FILE, Manifest, TensorManifest, load
from freeze import ExportError, WriteOptions, freeze_model

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras 3 saving

X = np.array([[1.0], [2.0], [5.0]], np.float32)
HALF_PLUS_TWO = np.array([[2.5], [3.0], [4.5]], np.float32)
TF1_SIGNATURES = {
    "serving_default": ("predict", {"x": "float32"}, {"y": "float32"}),
    "classify_x_to_y": ("classify", {"inputs": "string"}, {"scores": "float32"}),
    "regress_x_to_y": ("regress", {"inputs": "string"}, {"outputs": "float32"}),
    "regress_x_to_y2": ("regress", {"inputs": "string"}, {"outputs": "float32"}),
    "regress_x2_to_y3": ("regress", {"inputs": "float32"}, {"outputs": "float32"}),
}
TF2_SIGNATURES = (
    "serving_default", "classify_x_to_y", "classify_x2_to_y3", "regress_x_to_y", "regress_x_to_y2", "regress_x2_to_y3",
)


def _half_plus_two(checkpoints: Path, flavour: str) -> Path:
    return checkpoints / "tensorflow_serving" / f"saved_model_half_plus_two{flavour}_cpu" / "00000123"


def _frozen(tmp_path: Path, source: Path, **kwargs) -> tuple[Path, TensorManifest]:
    result = freeze_model(source, write=WriteOptions(graphs_dir=tmp_path, name="model"), **kwargs)
    assert result.path is not None
    manifest = load(result.path / MANIFEST_FILE)
    assert isinstance(manifest, TensorManifest)
    return result.path, manifest


def _run(version: Path, feeds: dict[str, object], fetch: str) -> np.ndarray:
    """model.pb alone, in a plain TF1 session: what the service does with it."""
    graph_def = tf.compat.v1.GraphDef.FromString((version / "model.pb").read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(fetch, feed_dict=feeds)


def _example(x: float) -> bytes:
    feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=[x]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_tf1_half_plus_two_keeps_every_signature(checkpoints: Path, tmp_path: Path) -> None:
    version, manifest = _frozen(tmp_path, _half_plus_two(checkpoints, ""))
    assert version == tmp_path / "model" / "123"  # the folder's number, TF Serving's way
    assert list(manifest.signatures)[0] == "serving_default" and set(manifest.signatures) == set(TF1_SIGNATURES)
    for name, (method, inputs, outputs) in TF1_SIGNATURES.items():
        spec = manifest.signatures[name]
        assert spec.method == method
        assert {k: t.dtype for k, t in spec.inputs.items()} == inputs
        assert {k: t.dtype for k, t in spec.outputs.items()} == outputs
    default = manifest.signatures["serving_default"]
    assert default.inputs["x"].tensor == "x:0" and default.inputs["x"].shape == (-1, 1)
    assert default.outputs["y"].tensor == "y:0"
    assert manifest.signatures["classify_x_to_y"].inputs["inputs"].shape is None  # tf_example: unknown rank

    y = _run(version, {default.inputs["x"].tensor: X}, default.outputs["y"].tensor)
    np.testing.assert_array_equal(y, HALF_PLUS_TWO)
    classify = manifest.signatures["classify_x_to_y"]
    scores = _run(version, {classify.inputs["inputs"].tensor: [_example(1.0)]}, classify.outputs["scores"].tensor)
    np.testing.assert_array_equal(scores, [[2.5]])
    assert manifest.info["verification"]["passed"]


def test_tf2_half_plus_two_merges_each_signature_function(checkpoints: Path, tmp_path: Path) -> None:
    version, manifest = _frozen(tmp_path, _half_plus_two(checkpoints, "_tf2"))
    assert version.name == "123" and set(manifest.signatures) == set(TF2_SIGNATURES)
    default = manifest.signatures["serving_default"]
    assert set(default.inputs) == {"x"} and set(default.outputs) == {"y"}
    assert default.inputs["x"].tensor.startswith("serving_default/") and default.inputs["x"].shape == (1,)
    for x, expected in zip(X, HALF_PLUS_TWO):  # this signature takes one value per call
        np.testing.assert_array_equal(_run(version, {default.inputs["x"].tensor: x}, default.outputs["y"].tensor), expected)
    classify = manifest.signatures["classify_x_to_y"]
    assert classify.inputs["inputs"].dtype == "string"
    scores = _run(version, {classify.inputs["inputs"].tensor: [_example(1.0)]}, classify.outputs["scores"].tensor)
    np.testing.assert_array_equal(scores, [[2.5]])


def test_one_signature_and_an_explicit_version(checkpoints: Path, tmp_path: Path) -> None:
    from freeze import LoadOptions

    version, manifest = _frozen(
        tmp_path, _half_plus_two(checkpoints, ""), load=LoadOptions(signature="regress_x2_to_y3"),
    )
    assert list(manifest.signatures) == ["regress_x2_to_y3"] and version.name == "123"
    result = freeze_model(_half_plus_two(checkpoints, ""), write=WriteOptions(graphs_dir=tmp_path, name="model", version=7))
    assert result.path == tmp_path / "model" / "7"
    with pytest.raises(ExportError, match="123 already exists"):
        freeze_model(_half_plus_two(checkpoints, ""), write=WriteOptions(graphs_dir=tmp_path, name="model"))


def test_mnist_is_tensors_by_default_and_an_image_when_told(
    checkpoints: Path, tmp_path: Path, freeze_cli: Callable[..., int], capsys
) -> None:
    source = str(checkpoints / "mnist_softmax_tf1")
    base = [source, "--name", "mnist", "--graphs-dir", str(tmp_path)]
    assert freeze_cli(base) == 0
    out = capsys.readouterr().out
    assert "kind:   tensors (input 'Placeholder:0' float32 [-1, 784] is not an image; give --height" in out
    manifest = load(tmp_path / "mnist" / "1" / MANIFEST_FILE)
    assert isinstance(manifest, TensorManifest)
    spec = manifest.signatures["serving_default"]
    assert spec.inputs["Placeholder"].tensor == "Placeholder:0" and spec.inputs["Placeholder"].shape == (-1, 784)
    assert spec.outputs["add"].tensor == "add:0" and spec.outputs["add"].shape == (-1, 10)

    assert freeze_cli([*base, "--height", "28", "--width", "28", "--channels", "1"]) == 0
    assert "kind:   image (image options given: --height, --width, --channels)" in capsys.readouterr().out
    image = load(tmp_path / "mnist" / "2" / MANIFEST_FILE)
    assert isinstance(image, Manifest) and image.preprocessing.flatten and image.input.height == 28

    assert freeze_cli([*base, "--kind", "image"]) == 0  # 784 values read as 28x28x1
    assert isinstance(load(tmp_path / "mnist" / "3" / MANIFEST_FILE), Manifest)


def test_labels_on_a_tensor_model_are_an_error(checkpoints: Path, tmp_path: Path, freeze_cli: Callable[..., int], capsys) -> None:
    args = [str(checkpoints / "mnist_softmax_tf1"), "--name", "m", "--graphs-dir", str(tmp_path), "--kind", "tensors"]
    assert freeze_cli([*args, "--labels", "a,b"]) == 2
    assert "--labels name the classes of an image classifier; a tensor model" in capsys.readouterr().err
    assert freeze_cli([*args, "--scale", "[-1,1]"]) == 2
    assert "--scale: image options, but --kind tensors" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_keras_model_with_two_inputs_and_two_outputs(tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    total = keras.layers.Dense(1, name="total")(joined)
    parts = keras.layers.Dense(4, activation="relu", name="parts")(joined)
    path = tmp_path / "two.keras"
    keras.Model([a, b], [total, parts]).save(path)

    version, manifest = _frozen(tmp_path / "graphs", path)
    (name, spec), = manifest.signatures.items()
    assert name == "serving_default" and spec.method == "predict"
    assert {k: (t.tensor, t.shape) for k, t in spec.inputs.items()} == {"a": ("a:0", (-1, 3)), "b": ("b:0", (-1, 2))}
    assert [t.shape for t in spec.outputs.values()] == [(-1, 1), (-1, 4)]
    assert all(t.dtype == "float32" for t in [*spec.inputs.values(), *spec.outputs.values()])
    model = keras.models.load_model(path)
    x_a, x_b = np.ones((2, 3), np.float32), np.full((2, 2), 0.5, np.float32)
    expected = model([x_a, x_b])
    feeds = {spec.inputs["a"].tensor: x_a, spec.inputs["b"].tensor: x_b}
    for key, want in zip(spec.outputs, expected):
        np.testing.assert_allclose(_run(version, feeds, spec.outputs[key].tensor), np.asarray(want), rtol=1e-5)


def test_a_signature_that_cannot_be_kept_is_skipped_with_a_note(tmp_path: Path) -> None:
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 2], name="x")
        other = tf.compat.v1.placeholder(tf.float32, [None, 2], name="other")
        y = tf.identity(x * 3.0, name="y")
        z = tf.identity(x + other, name="z")
        signature = tf.compat.v1.saved_model.predict_signature_def
        with tf.compat.v1.Session(graph=graph) as session:
            builder = tf.compat.v1.saved_model.Builder(str(tmp_path / "sm"))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
                "serving_default": signature(inputs={"x": x}, outputs={"y": y}),
                "needs_more": signature(inputs={"x": x}, outputs={"z": z}),  # 'other' is not among its inputs
            })
            builder.save()
    result = freeze_model(tmp_path / "sm", write=WriteOptions(graphs_dir=tmp_path / "graphs", name="m"))
    assert isinstance(result.manifest, TensorManifest) and list(result.manifest.signatures) == ["serving_default"]
    assert "note: skipped signature 'needs_more': the outputs also need placeholder 'other'" in result.summary()
    assert result.path is not None and result.path.name == "1"  # the folder is no version number

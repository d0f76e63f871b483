"""Freezing models made in the test: Keras 3 and legacy Keras 2 files, TF1 and TF2 SavedModels."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from app.manifest import LABELS_FILE, MANIFEST_FILE, InputSpec, load
from freeze import (
    ImageOptions,
    SourceError,
    WriteOptions,
    freeze_model,
    load_source,
    random_feeds,
    run_frozen,
    verify,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # Keras 3 saving

RNG = np.random.default_rng(0)
IMAGES = RNG.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_model():
    """A tiny image classifier with the layers that behave differently in training."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    batch_norm = model.layers[2]
    batch_norm.moving_mean.assign(RNG.uniform(0, 1, 4).astype(np.float32))
    batch_norm.moving_variance.assign(RNG.uniform(0.5, 2, 4).astype(np.float32))
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_file_becomes_a_servable_version(keras_model, tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"tiny{suffix}"
    keras_model.save(path)
    result = freeze_model(
        path,
        image=ImageOptions(scale="[-1,1]"),
        labels=["ant", "bee", "cat"],
        write=WriteOptions(graphs_dir=tmp_path / "graphs", name="tiny"),
    )
    assert result.path == tmp_path / "graphs" / "tiny" / "1"
    manifest = load(result.path / MANIFEST_FILE)
    assert manifest.input == InputSpec(tensor="input:0", height=8, width=8, channels=3)
    assert manifest.output.kind == "probabilities" and manifest.preprocessing.scale == "[-1,1]"
    assert manifest.batch_size is None
    assert manifest.info["verification"]["passed"] and manifest.info["source"]["loader"].startswith("keras ")
    assert (result.path / LABELS_FILE).read_text() == "ant\nbee\ncat\n"
    assert not {n.op for n in result.frozen.graph_def.node} & {"RandomUniform", "VarHandleOp", "ReadVariableOp"}
    (probs,) = run_frozen(result.frozen.graph_def, {"input:0": IMAGES}, [manifest.output.tensor])
    np.testing.assert_allclose(probs, keras_model(IMAGES, training=False).numpy(), atol=1e-5)


def test_legacy_keras2_file_loads_with_tf_keras_when_keras3_cannot(tmp_path: Path, monkeypatch) -> None:
    import keras
    import tf_keras

    old = tf_keras.Sequential([tf_keras.Input((4, 4, 1)), tf_keras.layers.Flatten(), tf_keras.layers.Dense(2)])
    path = tmp_path / "old.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "HDF5 is a legacy format": that is the point here
        old.save(path)

    def keras3_refuses(*args, **kwargs):
        raise TypeError("Could not deserialize class 'Functional'")  # what Keras 3 says on some Keras 2 files

    monkeypatch.setattr(keras.models, "load_model", keras3_refuses)
    x = RNG.random((2, 4, 4, 1), dtype=np.float32)
    with load_source(path) as source:
        assert source.details["loader"].startswith("tf_keras ")
        frozen = source.freeze()
    (logits,) = run_frozen(frozen.graph_def, {"input:0": x}, [frozen.outputs[0].name])
    np.testing.assert_allclose(logits, old(x).numpy(), atol=1e-5)


def test_keras_file_neither_keras_can_read(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "broken.h5"
    with h5py.File(path, "w") as file:  # HDF5, but no model in it
        file["weights"] = np.zeros(3)
    with pytest.raises(SourceError, match=r"cannot load Keras model .*broken.h5: keras: .*\| tf_keras: "):
        load_source(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.keras", b"hello\n", r"bad.keras is not a Keras file \(a .keras file is a zip archive; "
                                  r"this one starts with b'hello\\n'\)$"),
        ("bad.h5", b"<html>404</html>", r"bad.h5 is not a Keras file \(an .h5 file is HDF5; this one starts with b'<h"),
        ("empty.hdf5", b"", r"empty.hdf5 is not a Keras file \(an .hdf5 file is HDF5; this one is empty\)$"),
        ("lfs.h5", b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n", r"Git LFS pointer: .*git lfs pull"),
    ],
)
def test_file_that_is_not_a_keras_file_says_what_it_is(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    """Checked by magic bytes before Keras, which says 'File not found' of a .keras text file that exists."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError, match=message) as caught:
        load_source(path)
    assert "File not found" not in str(caught.value)


@pytest.mark.parametrize(("saved", "named", "hint"), [(".h5", ".keras", "an HDF5 file: rename it to m.h5"),
                                                     (".keras", ".h5", "a zip archive: rename it to m.keras")])
def test_keras_file_with_the_other_suffix_is_told_to_rename(
    keras_model, tmp_path: Path, saved: str, named: str, hint: str
) -> None:
    keras_model.save(tmp_path / f"saved{saved}")
    (tmp_path / f"saved{saved}").rename(tmp_path / f"m{named}")
    with pytest.raises(SourceError, match=f"cannot load Keras model .*m{named} \\(m{named} is {hint}\\): keras: "):
        load_source(tmp_path / f"m{named}")


def test_hdf5_after_a_user_block_is_still_hdf5(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "block.h5"
    with h5py.File(path, "w", userblock_size=1024) as file:
        file["weights"] = np.zeros(3)
    with pytest.raises(SourceError, match="cannot load Keras model"):  # past the magic check, to Keras
        load_source(path)


def test_keras_model_with_two_unnamed_inputs_keeps_both(tmp_path: Path) -> None:
    """Keras names them itself; each becomes its own placeholder (tensor models: test_freeze_tensors.py)."""
    import keras

    a, b = keras.Input((2,)), keras.Input((2,))
    model = keras.Model([a, b], keras.layers.Concatenate()([a, b]))
    model.save(tmp_path / "two.keras")
    with load_source(tmp_path / "two.keras") as source:
        frozen = source.freeze()
        verify(source=source, frozen=frozen, feeds=[random_feeds(frozen.inputs)])
    assert len({t.name for t in frozen.inputs}) == 2 and frozen.outputs[0].shape == (None, 4)


def test_tf2_saved_model_with_several_outputs(tmp_path: Path) -> None:
    class Model(tf.Module):
        def __init__(self) -> None:
            self.w = tf.Variable([[2.0], [3.0]])

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="features")])
        def serve(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"scores": tf.matmul(features, self.w), "doubled": features * 2}

    module = Model()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    with load_source(tmp_path / "sm") as source:
        listing = source.inspect().format()
        assert "'scores'" in listing and "'doubled'" in listing and "features:0" in listing
        frozen = source.freeze(outputs=["scores"])
        verify(source=source, frozen=frozen, feeds=[random_feeds(frozen.inputs)])
    (scores,) = run_frozen(frozen.graph_def, {"features:0": [[1.0, 1.0], [0.0, 2.0]]}, [frozen.outputs[0].name])
    np.testing.assert_array_equal(scores, [[5.0], [6.0]])


def test_tf1_saved_model_with_a_dropout_switch(tmp_path: Path) -> None:
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        keep_prob = tf.compat.v1.placeholder(tf.float32, [], name="keep_prob")
        w = tf.compat.v1.Variable(np.eye(3, dtype=np.float32) * 2, name="w", use_resource=False)
        y = tf.nn.softmax(tf.compat.v1.nn.dropout(tf.matmul(x, w), keep_prob=keep_prob), name="y")
        session.run(tf.compat.v1.global_variables_initializer())
        builder = tf.compat.v1.saved_model.Builder(str(tmp_path / "sm"))
        signature = tf.compat.v1.saved_model.predict_signature_def(inputs={"x": x}, outputs={"y": y})
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()
    with load_source(tmp_path / "sm") as source:
        frozen = source.freeze()
        assert dict(frozen.constants) == {"keep_prob:0": 1.0}
        verify(source=source, frozen=frozen, feeds=[random_feeds(frozen.inputs)])
    (probs,) = run_frozen(frozen.graph_def, {"x:0": [[1.0, 0.0, 0.0]]}, ["y:0"])
    np.testing.assert_allclose(probs, tf.nn.softmax([[2.0, 0.0, 0.0]]).numpy(), rtol=1e-6)


def test_tf2_signature_input_fixed_to_a_constant(tmp_path: Path) -> None:
    class Model(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x"), tf.TensorSpec([], tf.bool, name="train")]
        )
        def serve(self, x: tf.Tensor, train: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.where(train, x * 0, x + 1)}

    module = Model()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    with load_source(tmp_path / "sm") as source:
        frozen = source.freeze(constants={"train": False})
        verify(source=source, frozen=frozen, feeds=[random_feeds(frozen.inputs)])
    assert [t.name for t in frozen.inputs] == ["x:0"] and dict(frozen.constants) == {"train:0": False}
    (y,) = run_frozen(frozen.graph_def, {"x:0": [[1.0, 2.0]]}, [frozen.outputs[0].name])
    np.testing.assert_array_equal(y, [[2.0, 3.0]])

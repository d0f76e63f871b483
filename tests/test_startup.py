"""Loading at start-up: every broken model stops start-up with a message naming model, file, cause."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app import create_app
from app.discovery import DiscoveryError
from app.servable import ModelLoadError
from app.services import services_of
from tests.digits import png_bytes, write_model


def edit_manifest(path: Path, change) -> None:
    manifest_path = path / "model.json"
    data = json.loads(manifest_path.read_text())
    change(data)
    manifest_path.write_text(json.dumps(data))


def start(graphs: Path, **config):
    return create_app({"GRAPHS_DIR": str(graphs), **config})


def test_unknown_manifest_field_names_file_and_field(make_graphs_dir):
    graphs = make_graphs_dir()
    edit_manifest(graphs / "digits8" / "1", lambda m: m["input"].update(chanels=1))
    with pytest.raises(ModelLoadError) as info:
        start(graphs)
    message = str(info.value)
    assert "digits8" in message and "model.json" in message and "input.chanels" in message and "unknown" in message


def test_missing_manifest_field(make_graphs_dir):
    graphs = make_graphs_dir()
    edit_manifest(graphs / "digits16" / "1", lambda m: m["input"].pop("height"))
    with pytest.raises(ModelLoadError, match=r"digits16.*model\.json.*input\.height.*required"):
        start(graphs)


def test_invalid_manifest_values(make_graphs_dir):
    graphs = make_graphs_dir()
    edit_manifest(graphs / "digits8" / "1", lambda m: m["preprocessing"].update(scale="[0,2]"))
    with pytest.raises(ModelLoadError, match=r"preprocessing\.scale.*must be one of"):
        start(graphs)


def test_missing_manifest_file(make_graphs_dir):
    graphs = make_graphs_dir()
    (graphs / "digits8" / "1" / "model.json").unlink()
    with pytest.raises(ModelLoadError, match=r"digits8.*model\.json.*missing"):
        start(graphs)


def test_corrupt_graph_file(make_graphs_dir):
    graphs = make_graphs_dir()
    (graphs / "digits8" / "1" / "model.pb").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(ModelLoadError, match=r"digits8.*model\.pb"):
        start(graphs)


def test_wrong_tensor_name_suggests_the_right_one(make_graphs_dir):
    graphs = make_graphs_dir()
    edit_manifest(graphs / "digits8" / "1", lambda m: m["output"].update(tensor="prob:0"))
    with pytest.raises(ModelLoadError, match=r"output\.tensor.*no node 'prob'.*did you mean 'probs'"):
        start(graphs)


def test_input_shape_mismatch(make_graphs_dir):
    graphs = make_graphs_dir()
    edit_manifest(graphs / "digits8" / "1", lambda m: m["input"].update(height=9))
    with pytest.raises(ModelLoadError, match=r"manifest input 9x8x1 \(flattened: 72\) does not match graph input 'input' of shape \[-1, 64\]"):
        start(graphs)


def test_label_count_mismatch(make_graphs_dir):
    graphs = make_graphs_dir()
    (graphs / "digits8" / "1" / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(ModelLoadError, match=r"labels\.txt.*3 labels.*10 classes"):
        start(graphs)


def test_graph_with_variables_is_refused(tmp_path):
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4], name="input")
        w = tf.compat.v1.get_variable("w", [4, 3], use_resource=False)
        tf.matmul(x, w, name="out")
    directory = tmp_path / "m" / "1"
    directory.mkdir(parents=True)
    (directory / "model.pb").write_bytes(graph.as_graph_def().SerializeToString())
    (directory / "model.json").write_text(json.dumps({
        "input": {"tensor": "input:0", "height": 2, "width": 2, "channels": 1},
        "output": {"tensor": "out:0"}, "preprocessing": {"flatten": True}}))
    with pytest.raises(ModelLoadError, match=r"variables.*freeze"):
        start(tmp_path)


def test_layout_errors(tmp_path):
    with pytest.raises(DiscoveryError, match="does not exist"):
        start(tmp_path / "nowhere")
    (tmp_path / "lonely").mkdir()
    (tmp_path / "lonely" / "model.pb").write_bytes(b"")
    with pytest.raises(DiscoveryError, match=r"lonely.*no version folder"):
        start(tmp_path)


def test_highest_version_is_served(tmp_path, digit_weights, digits):
    write_model(tmp_path, "digits", digit_weights, size=8, version=1)
    write_model(tmp_path, "digits", digit_weights, size=16, version=12)
    (tmp_path / "digits" / "3").mkdir()  # a version folder without a graph is ignored
    app = start(tmp_path)
    try:
        (model,) = app.test_client().get("/models").get_json()["models"]
        assert (model["name"], model["version"], model["input"]["height"]) == ("digits", 12, 16)
    finally:
        services_of(app).registry.close()


def test_fixed_batch_size_graph_serves_many_images(tmp_path, digit_weights, digits):
    import tensorflow as tf

    kernel, bias = digit_weights
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 64], name="input")
        flat = tf.reshape(x, [1, 64])  # built for batch 1, as many real frozen graphs are
        tf.nn.softmax(tf.matmul(flat, tf.constant(kernel)) + tf.constant(bias), name="probs")
    directory = tmp_path / "fixed" / "1"
    directory.mkdir(parents=True)
    (directory / "model.pb").write_bytes(graph.as_graph_def().SerializeToString())
    manifest = {"input": {"tensor": "input:0", "height": 8, "width": 8, "channels": 1},
                "output": {"tensor": "probs:0"}, "preprocessing": {"scale": "[0,1]", "flatten": True}}
    (directory / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match='fixed batch size 1; set "batch_size": 1'):
        start(tmp_path)
    manifest["batch_size"] = 1
    (directory / "model.json").write_text(json.dumps(manifest))
    app = start(tmp_path)
    try:
        data = {"image": [(__import__("io").BytesIO(png_bytes(im)), f"{i}.png") for i, im in enumerate(digits.test_images[:7])]}
        response = app.test_client().post("/image_classification?top_k=1", data=data, content_type="multipart/form-data")
        assert response.status_code == 200
        predicted = [r["top_k"][0]["class_id"] for r in response.get_json()["models"]["fixed"]["results"]]
        assert np.mean(np.array(predicted) == digits.test_y[:7]) >= 0.8
    finally:
        services_of(app).registry.close()


def test_no_models_is_not_ready(tmp_path):
    app = start(tmp_path)
    client = app.test_client()
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200
    response = client.post("/image_classification", data=b"x", content_type="image/png")
    assert response.status_code == 503 and response.get_json()["error"]["code"] == "no_models"


def test_batching_off_gives_the_same_answers(graphs_dir, digits):
    app = start(graphs_dir, BATCHING="false")
    try:
        client = app.test_client()
        data = {"image": [(__import__("io").BytesIO(png_bytes(im)), f"{i}.png") for i, im in enumerate(digits.test_images[:40])]}
        body = client.post("/image_classification?top_k=1&model=all", data=data, content_type="multipart/form-data").get_json()
        for name in ("digits8", "digits16"):
            predicted = [r["top_k"][0]["class_id"] for r in body["models"][name]["results"]]
            assert np.mean(np.array(predicted) == digits.test_y[:40]) >= 0.9
        assert client.get("/models").get_json()["models"][0]["batching"] is False
        bad = client.post("/image_classification?model=digits8", data=png_bytes(digits.test_images[0])[:40],
                          content_type="image/png")
        assert bad.status_code == 400 and "'body'" in bad.get_json()["error"]["message"]
    finally:
        services_of(app).registry.close()

"""The protocol-free core of tensor serving: signatures, checks, batching along dimension 0.

Real frozen graphs (``tests/tensor_models.py``) in a real ``Services``; the doors' own tests
(``test_tfserving_tensors.py``, ``test_kserve_tensors.py``) drive the same paths over the wire.
"""

from __future__ import annotations

import gc
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from app import create_app
from app import manifest as manifest_lib
from app.kinds import Kind, describe
from app.servable import ServableSpec, load_servable
from app.services import services_of
from app.tensors import BadTensor, NotAnImageModel, TensorTooLarge, UnknownSignature, check_size
from tests.tensor_models import (
    ALL_DTYPES,
    run_frozen,
    write_alltypes,
    write_half_plus_two,
    write_mnist,
    write_multi,
)


@pytest.fixture(scope="module")
def tensor_dir(tmp_path_factory: pytest.TempPathFactory, graphs_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("tensor-graphs")
    write_half_plus_two(root)
    write_half_plus_two(root, "half_plus_two_tf2", tf2=True)
    write_mnist(root)
    write_multi(root)
    write_alltypes(root)
    shutil.copytree(graphs_dir / "digits16", root / "digits16")
    return root


@pytest.fixture(scope="module")
def services(tensor_dir: Path):
    app = create_app({"GRAPHS_DIR": tensor_dir, "GRPC_PORT": 0, "POLL_INTERVAL_S": 0})
    yield services_of(app), app
    services_of(app).close()


def predict(services, model: str, feeds: dict[str, np.ndarray], signature: str | None = None, outputs=None):
    with services.core.select(model) as selected:
        return selected.predict(selected.signature(signature), feeds, outputs=outputs)


def test_half_plus_two_as_tf_serving_documents_it(services) -> None:
    core_services, _ = services
    result = predict(core_services, "half_plus_two", {"x": np.array([1.0, 2.0, 5.0], np.float32)})
    assert result.version == 123 and result.signature == "serving_default"
    np.testing.assert_array_equal(result.outputs["y"], [2.5, 3.0, 4.5])
    # x is fed inside the graph (parsed from tf.Examples): any shape its ops take, as TF Serving lets it
    square = predict(core_services, "half_plus_two", {"x": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)})
    np.testing.assert_array_equal(square.outputs["y"], [[2.5, 3.0], [3.5, 4.0]])
    scalar = predict(core_services, "half_plus_two", {"x": np.array(4.0, np.float32)})
    assert scalar.outputs["y"].shape == () and float(scalar.outputs["y"]) == 4.0


def test_the_tf2_savedmodel_and_the_mnist_checkpoint_frozen_by_our_tool(services, tensor_dir: Path) -> None:
    core_services, _ = services
    tf2 = predict(core_services, "half_plus_two_tf2", {"x": np.array([5.0], np.float32)})
    assert tf2.version == 123
    np.testing.assert_array_equal(tf2.outputs["y"], [4.5])
    digits = np.random.default_rng(3).uniform(0, 1, (2, 784)).astype(np.float32)
    mnist = predict(core_services, "mnist", {"Placeholder": digits})
    expected = run_frozen(tensor_dir / "mnist" / "1", "serving_default", {"Placeholder": digits})
    np.testing.assert_allclose(mnist.outputs["add"], expected["add"], rtol=1e-5, atol=1e-5)
    assert mnist.outputs["add"].shape == (2, 10)


def test_a_classify_signature_takes_serialized_examples(services, tensor_dir: Path) -> None:
    import tensorflow as tf

    core_services, _ = services
    examples = np.array([tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[v]))})).SerializeToString() for v in (1.0, 6.0)],
        dtype=object)
    result = predict(core_services, "half_plus_two", {"inputs": examples}, signature="classify_x_to_y")
    expected = run_frozen(tensor_dir / "half_plus_two" / "123", "classify_x_to_y", {"inputs": examples})
    np.testing.assert_array_equal(result.outputs["scores"], expected["scores"])
    np.testing.assert_array_equal(result.outputs["scores"].ravel(), [2.5, 5.0])


def test_every_dtype_round_trips(services, tensor_dir: Path) -> None:
    core_services, _ = services
    rng = np.random.default_rng(1)
    feeds = {}
    for dtype in ALL_DTYPES:
        if dtype == "string":
            feeds[f"in_{dtype}"] = np.array([b"\x00\xffbytes", "é".encode()], dtype=object)
        elif dtype == "bool":
            feeds[f"in_{dtype}"] = rng.integers(0, 2, (3, 2)).astype(bool)
        else:
            feeds[f"in_{dtype}"] = (rng.uniform(-50, 50, (3, 2)) if "float" in dtype
                                    else rng.integers(0, 100, (3, 2))).astype(dtype)
    feeds["in_string"] = np.array([b"\x00\xffbytes", "é".encode(), b""], dtype=object)
    result = predict(core_services, "alltypes", feeds)
    expected = run_frozen(tensor_dir / "alltypes" / "1", "serving_default", feeds)
    for key, value in expected.items():
        assert result.outputs[key].dtype == value.dtype, key
        np.testing.assert_array_equal(result.outputs[key], value)


def test_outputs_asked_are_the_only_ones_answered(services) -> None:
    core_services, _ = services
    feeds = {"a": np.ones((2, 3), np.float32), "b": np.array([1, 2], np.int64)}
    result = predict(core_services, "multi", feeds, outputs=["doubled"])
    assert list(result.outputs) == ["doubled"] and result.outputs["doubled"].dtype == np.float64
    with pytest.raises(BadTensor, match="no output 'nope'.*outputs: total, doubled"):
        predict(core_services, "multi", feeds, outputs=["nope"])


@pytest.mark.parametrize(("feeds", "message"), [
    ({"a": np.ones((2, 3), np.float32)}, r"misses input\(s\) 'b'.*takes 'a' \(float32 \[-1, 3\]\), 'b'"),
    ({"a": np.ones((2, 3), np.float32), "b": np.ones(2, np.int64), "c": np.ones(1)}, "unknown input.*'c'"),
    ({"a": np.ones((2, 3), np.float64), "b": np.ones(2, np.int64)}, r"input 'a' \(float32 \[-1, 3\]\) got float64"),
    ({"a": np.ones((2, 4), np.float32), "b": np.ones(2, np.int64)}, r"got shape \[2, 4\]; the graph takes \[-1, 3\]"),
    ({"a": np.ones((2, 3), np.float32), "b": np.ones(3, np.int64)}, "has 3 rows where the others have 2"),
    ({"a": np.ones((0, 3), np.float32), "b": np.ones(0, np.int64)}, "holds no rows"),
])
def test_bad_tensors_name_the_input_what_it_takes_and_what_came(services, feeds, message) -> None:
    core_services, _ = services
    with pytest.raises(BadTensor, match=message) as caught:
        predict(core_services, "multi", feeds)
    assert describe(caught.value).kind is Kind.INVALID


def test_signatures_images_and_sizes_are_refused_clearly(services) -> None:
    core_services, _ = services
    with pytest.raises(UnknownSignature, match="no signature 'nope'.*serving_default"):
        predict(core_services, "half_plus_two", {}, signature="nope")
    with pytest.raises(NotAnImageModel, match="served by its own tensors.*takes 'a'"):
        core_services.core.classify([], models="multi", top_k=1)
    with pytest.raises(TensorTooLarge, match="max_tensor_bytes") as caught:
        check_size("input 'a'", [10**6, 10**6, 3], "float32", core_services.settings.max_tensor_bytes)
    assert describe(caught.value).kind is Kind.TOO_LARGE
    assert check_size("x", [2, 3], "float32", 1024) == 6


def test_an_image_classifier_takes_its_own_tensor_too(services, tensor_dir: Path) -> None:
    core_services, _ = services
    with core_services.core.select("digits16") as selected:
        signature = selected.signature()
        [key] = signature.inputs
        assert key == "input" and signature.inputs[key].shown_shape == (-1, 16, 16, 1)
        assert signature.outputs["scores"].shown_shape == (-1, 10)
        servable = selected.handles[0].servable
        image = (np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3) * 7).astype(np.uint8)
        from app.servable import Decoded

        by_image = servable.run([Decoded(image)])
        pixels = servable.preprocess([Decoded(image)])  # decoded, resized; the model's input is [-1, 1]
        tensor = (pixels / 127.5 - 1.0).astype(np.float32)
        by_tensor = selected.predict(signature, {key: tensor})
    np.testing.assert_allclose(by_tensor.outputs["scores"], by_image, atol=1e-6)


def test_requests_to_one_signature_batch_along_dimension_0(services) -> None:
    """Concurrent requests of different row counts are stacked, run together, split back in order."""
    core_services, _ = services
    rng = np.random.default_rng(2)
    requests = [rng.uniform(-1, 1, (n, 3)).astype(np.float32) for n in (1, 3, 2, 5) * 8]
    answers: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def send(i: int) -> None:
        start.wait()
        b = np.arange(len(requests[i]), dtype=np.int64) * i
        answers[i] = (predict(core_services, "multi", {"a": requests[i], "b": b}), b)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for a, (result, b) in zip(requests, answers):
        np.testing.assert_allclose(result.outputs["total"], a.sum(axis=1) + b, rtol=1e-6)
        np.testing.assert_array_equal(result.outputs["doubled"], a.astype(np.float64) * 2.0)
    assert max(result.batch_size for result, _ in answers) > 1  # some ran together


def test_a_fixed_batch_graph_is_padded(tmp_path: Path) -> None:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [4, 2], name="x")
        tf.identity(x * 3.0, name="y")
    folder = tmp_path / "fixed" / "1"
    folder.mkdir(parents=True)
    (folder / "model.pb").write_bytes(graph.as_graph_def().SerializeToString())
    (folder / "model.json").write_text(json.dumps({"batch_size": 4, "signatures": {"serving_default": {
        "inputs": {"x": {"tensor": "x:0", "dtype": "float32", "shape": [4, 2]}},
        "outputs": {"y": {"tensor": "y:0", "dtype": "float32", "shape": [4, 2]}}}}}))
    servable = load_servable(ServableSpec("fixed", 1, folder))
    try:
        signature = servable.signatures["serving_default"]
        assert signature.batched
        rows = np.arange(14, dtype=np.float32).reshape(7, 2)
        [y] = servable.run_signature("serving_default", [rows], ("y",))
        np.testing.assert_array_equal(y, rows * 3.0)
    finally:
        servable.close()


def test_a_manifest_dtype_the_graph_contradicts_is_a_load_error(tmp_path: Path) -> None:
    folder = write_multi(tmp_path)
    data = json.loads((folder / "model.json").read_text())
    data["signatures"]["serving_default"]["inputs"]["a"]["dtype"] = "int32"
    (folder / "model.json").write_text(json.dumps(data))
    from app.servable import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"signatures.serving_default.inputs.a.dtype': the manifest says int32, "
                                             r"the graph's 'a:0' is float32"):
        load_servable(ServableSpec("multi", 1, folder))


@pytest.mark.parametrize(("change", "message"), [
    ({"input": {}}, "field 'input': a model with 'signatures' is served by its own tensors"),
    ({"signatures": {}}, "field 'signatures': must hold at least one signature"),
    ({"signatures": {"s": {"inputs": {}, "outputs": {"y": {"tensor": "y"}}}}}, "signatures.s.inputs': must name"),
    ({"signatures": {"s": {"inputs": {"x": {"tensor": "x", "dtype": "complex64"}}, "outputs": {"y": {"tensor": "y"}}}}},
     "signatures.s.inputs.x.dtype': must be one of"),
    ({"signatures": {"s": {"inputs": {"x": {"tensor": "x", "shape": [1, -2]}}, "outputs": {"y": {"tensor": "y"}}}}},
     "signatures.s.inputs.x.shape': must be null"),
    ({"signatures": {"s": {"inputs": {"x": {"tensor": "x"}}, "outputs": {"y": {"tensor": "y"}}, "method": "x"}}},
     "signatures.s.method': must be one of predict, classify, regress"),
])
def test_tensor_manifests_are_validated(change, message) -> None:
    data = {"signatures": {"serving_default": {"inputs": {"x": {"tensor": "x"}}, "outputs": {"y": {"tensor": "y"}}}}}
    data.update(change)
    with pytest.raises(manifest_lib.ManifestError, match=message.replace("(", r"\(")):
        manifest_lib.parse(data)


def test_our_api_and_models_list_tell_the_kinds_apart(services) -> None:
    _, app = services
    client = app.test_client()
    described = {m["name"]: m for m in client.get("/models").get_json()["models"]}
    assert described["half_plus_two"]["kind"] == "tensors" and "input" not in described["half_plus_two"]
    assert described["half_plus_two"]["signatures"]["serving_default"]["inputs"] == {
        "x": {"dtype": "float32", "shape": [-1, 1]}}
    assert described["digits16"]["kind"] == "image"
    assert described["digits16"]["signatures"]["serving_default"]["outputs"]["scores"]["shape"] == [-1, 10]
    from tests.helpers import encode, multipart

    photo = encode(np.zeros((16, 16, 3), np.uint8))
    every = client.post("/image_classification", data=multipart((photo, "a.png")))  # no model: every image model
    assert every.status_code == 200 and list(every.get_json()["models"]) == ["digits16"]
    refused = client.post("/image_classification?model=multi", data=multipart((photo, "a.png")))
    assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "not_an_image_model"


def test_the_loaded_heap_is_kept_out_of_full_collections(services) -> None:
    assert gc.get_freeze_count() > 100_000  # TensorFlow's objects: a full collection would walk them all

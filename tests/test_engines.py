"""Engines under an image model's model part (``app/engines.py``, ``servable.choose_engine``).

Real frozen graphs (the digits classifiers, a graph with an op LiteRT lacks), the real
converter and interpreter: parity with TensorFlow per engine, the fallback, the cache (stale,
corrupt, unwritable), the flags, and what /stats and /metrics say.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from app import create_app, engines
from app.servable import Decoded, ModelLoadError, ServableSpec, load_servable
from app.services import services_of
from tests.digits import write_model

pytest.importorskip("ai_edge_litert", reason="the litert engine needs the ai-edge-litert wheel")


@pytest.fixture()
def model_dir(tmp_path: Path, digit_weights) -> Path:
    write_model(tmp_path, "digits16", digit_weights, size=16)
    return tmp_path / "digits16" / "1"


@pytest.fixture(autouse=True)
def fresh_process_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test converts and times as a new process would (no conversion or speedup remembered)."""
    monkeypatch.setattr(engines, "_RECENT", {})
    monkeypatch.setattr(engines, "SPEEDUPS", {})


def photos(digits, count: int = 8) -> list[Decoded]:
    """Real digits (uint8 8x8) as the RGB pixels an upload check would hand on."""
    return [Decoded(np.repeat(image[:, :, None], 3, axis=2)) for image in digits.test_images[:count]]


def load(model_dir: Path, engine: str):
    return load_servable(ServableSpec("digits16", 1, model_dir), engine=engine)


@pytest.mark.parametrize("engine", ["litert", "auto"])
def test_an_engine_answers_as_tensorflow_does(model_dir: Path, digits, engine: str) -> None:
    reference = load(model_dir, "tensorflow")
    other = load(model_dir, engine)
    try:
        assert reference.engine.engine == "tensorflow" and reference.engine.reason == "asked"
        if engine == "litert":
            assert other.engine.engine == "litert"
        choice = other.engine
        assert choice.max_abs_diff is not None and choice.max_abs_diff <= 1e-4 and choice.top1_agreement == 1.0
        assert set(choice.rows_per_s) == {"tensorflow", "litert"} and set(choice.rows_per_s["litert"]) == {"1", "16"}
        items = photos(digits)
        np.testing.assert_allclose(other.run(items), reference.run(items), atol=1e-4)
        pixels = list(reference.preprocess(items))  # the shared-decode path: pixels in, scores out
        np.testing.assert_allclose(np.stack(other.predict(pixels)), np.stack(reference.predict(pixels)), atol=1e-4)
        tensor = (np.stack(pixels) / 127.5 - 1.0).astype(np.float32)  # the model's own tensor ([-1, 1])
        [by_engine] = other.run_signature("serving_default", [tensor], ("scores",))
        [by_tf] = reference.run_signature("serving_default", [tensor], ("scores",))
        np.testing.assert_allclose(by_engine, by_tf, atol=1e-4)
    finally:
        reference.close()
        other.close()


def test_batches_of_every_size_from_several_threads(model_dir: Path, digits) -> None:
    """One interpreter per thread, resized to each batch: answers stay those of TensorFlow."""
    import threading

    reference, servable = load(model_dir, "tensorflow"), load(model_dir, "litert")
    items = photos(digits, 16)
    expected = reference.run(items)
    failures: list[str] = []

    def work(offset: int) -> None:
        for size in (1, 5, 16, 3, 16, 1):
            start = (offset + size) % 4
            got = servable.run(items[start:start + size])
            if not np.allclose(got, expected[start:start + size], atol=1e-4):
                failures.append(f"thread {offset} batch {size}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    reference.close()
    servable.close()
    assert not failures


def unconvertible_model(root: Path) -> Path:
    """A classifier whose model part has an op TFLite's builtins lack (BesselI0e)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 1], name="input")
        flat = tf.reshape(tf.math.bessel_i0e(x), [-1, 64])
        tf.nn.softmax(tf.matmul(flat, tf.ones([64, 3]) * 0.01), name="probs")
    folder = root / "odd" / "1"
    folder.mkdir(parents=True)
    (folder / "model.pb").write_bytes(graph.as_graph_def().SerializeToString())
    (folder / "model.json").write_text(json.dumps({
        "input": {"tensor": "input:0", "height": 8, "width": 8, "channels": 1},
        "output": {"tensor": "probs:0"}}))
    return folder


def test_an_op_the_engine_lacks_falls_back_with_one_line_or_refuses(tmp_path: Path, caplog) -> None:
    folder = unconvertible_model(tmp_path)
    with caplog.at_level(logging.WARNING, logger="app.servable"):
        servable = load_servable(ServableSpec("odd", 1, folder), engine="auto")
    try:
        assert servable.engine.engine == "tensorflow"
        assert "litert cannot run it: cannot convert to TFLite" in servable.engine.reason
        [line] = [r.getMessage() for r in caplog.records if "stays on TensorFlow" in r.getMessage()]
        assert line.startswith("model odd version 1 stays on TensorFlow: litert cannot run it")
    finally:
        servable.close()
    with pytest.raises(ModelLoadError, match="engine litert was asked for, but litert cannot run it"):
        load_servable(ServableSpec("odd", 1, folder), engine="litert")


def test_the_conversion_is_cached_beside_the_graph_and_rebuilt_when_stale_or_corrupt(
        model_dir: Path, digit_weights) -> None:
    load(model_dir, "litert").close()
    [cached] = (model_dir / engines.CACHE_DIR_NAME).glob("litert-*.tflite")
    first = cached.read_bytes()
    engines._RECENT.clear()
    cached.write_bytes(b"not a flatbuffer")  # corrupt: removed, converted again
    load(model_dir, "litert").close()
    assert cached.read_bytes() == first
    engines._RECENT.clear()  # a new graph (other weights) has another key: converted, never the stale file
    kernel, bias = digit_weights
    write_model(model_dir.parents[1], "digits16", (kernel * 2.0, bias), size=16)
    servable = load(model_dir, "litert")
    servable.close()
    assert len(list((model_dir / engines.CACHE_DIR_NAME).glob("litert-*.tflite"))) == 2
    assert servable.engine.max_abs_diff is not None and servable.engine.max_abs_diff <= 1e-4


def test_an_unwritable_model_folder_caches_elsewhere(model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    (model_dir / engines.CACHE_DIR_NAME).write_text("a file where the cache folder would go")  # cannot mkdir
    fallback = tmp_path / "elsewhere"
    monkeypatch.setattr(engines, "FALLBACK_DIR", fallback)
    servable = load(model_dir, "litert")
    servable.close()
    assert servable.engine.engine == "litert"
    assert len(list(fallback.glob("litert-*.tflite"))) == 1


def test_the_engine_setting_the_manifest_and_what_the_service_shows(model_dir: Path, tmp_path: Path) -> None:
    graphs = tmp_path / "graphs"
    shutil.copytree(model_dir.parent, graphs / "digits16")
    shutil.copytree(model_dir.parent, graphs / "pinned")
    manifest = graphs / "pinned" / "1" / "model.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "engine": "tensorflow"}))
    app = create_app({"GRAPHS_DIR": graphs, "GRPC_PORT": 0, "POLL_INTERVAL_S": 0, "ENGINE": "litert"})
    try:
        stats = app.test_client().get("/stats").get_json()["models"]
        assert stats["digits16"]["engine"]["engine"] == "litert"
        assert stats["pinned"]["engine"] == {**stats["pinned"]["engine"],
                                                           "engine": "tensorflow", "reason": "asked"}
        text = app.test_client().get("/metrics").get_data(as_text=True)
        assert 'graphserve_model_engine{engine="litert",model="digits16",version="1"} 1.0' in text
        assert 'graphserve_model_engine{engine="tensorflow",model="pinned",version="1"} 1.0' in text
    finally:
        services_of(app).close()
    from app.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="setting 'engine' must be one of auto, tensorflow, litert"):
        Settings(engine="openvino")
    from app.cli import parse_serve_args

    assert parse_serve_args(["--engine", "tensorflow"])["engine"] == "tensorflow"


def test_a_tensor_model_runs_on_litert_with_the_same_answers(tmp_path: Path) -> None:
    from tests.tensor_models import write_mnist

    folder = write_mnist(tmp_path)
    spec = ServableSpec("mnist", int(folder.name), folder)
    reference = load_servable(spec, engine="tensorflow")
    other = load_servable(spec, engine="litert")
    try:
        assert other.engine.engine == "litert" and "signature 'serving_default'" in other.engine.reason
        assert other.engine.max_abs_diff is not None and other.engine.max_abs_diff <= 1e-4
        signature = other.signatures["serving_default"]
        [key] = signature.inputs
        outputs = tuple(signature.outputs)
        rows = np.random.default_rng(3).uniform(0, 1, (5, 784)).astype(np.float32)  # 5: a size never timed
        for ours, theirs in zip(other.run_signature("serving_default", [rows], outputs),
                                reference.run_signature("serving_default", [rows], outputs)):
            np.testing.assert_allclose(ours, theirs, atol=1e-4)
        assert other._signature_engines and not reference._signature_engines  # noqa: SLF001
    finally:
        reference.close()
        other.close()


def test_a_tensor_signature_litert_cannot_take_stays_on_tensorflow_or_refuses(tmp_path: Path, caplog) -> None:
    from tests.tensor_models import write_half_plus_two

    folder = write_half_plus_two(tmp_path)  # x: unknown rank, no batch dimension
    spec = ServableSpec("half_plus_two", int(folder.name), folder)
    with caplog.at_level(logging.INFO, logger="app.servable"):
        auto = load_servable(spec, engine="auto")
    try:
        assert auto.engine.engine == "tensorflow" and "not for litert" in auto.engine.reason
        assert any("stays on TensorFlow" in r.getMessage() for r in caplog.records)
        [y] = auto.run_signature("serving_default", [np.array([1.0, 2.0, 5.0], np.float32)], ("y",))
        assert y.tolist() == [2.5, 3.0, 4.5]
    finally:
        auto.close()
    with pytest.raises(ModelLoadError, match="engine litert was asked for"):
        load_servable(spec, engine="litert")

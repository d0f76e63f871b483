"""Reduced precision only when a manifest asks (``app/precision.py``, ``servable.use_bf16``,
``choose_engine``'s int8): real digit classifiers loaded at bf16 and int8 and compared with the
fp32 Session on real digits, the accuracy report in /stats and the load line, the cache keyed
by precision, the refusal where the CPU lacks bf16 (the CPU's flags monkeypatched, so it is
tested on every machine), and the manifest's errors.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from app import create_app, engines, machine, precision
from app.manifest import ManifestError, parse
from app.servable import Decoded, ModelLoadError, ServableSpec, load_servable
from app.services import services_of
from tests.digits import png_bytes, write_model

ON_GPU = bool(tf.config.list_logical_devices("GPU"))
BF16_REFUSED = precision.refusal("bf16", on_gpu=ON_GPU)
needs_bf16 = pytest.mark.skipif(BF16_REFUSED is not None, reason=f"no bf16 here: {BF16_REFUSED}")
needs_cpu = pytest.mark.skipif(ON_GPU, reason="a reduced precision is refused on a GPU")
needs_litert = pytest.mark.skipif(engines.litert_version() is None, reason="int8 runs on the ai-edge-litert wheel")


@pytest.fixture(autouse=True)
def fresh_process_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test converts and times as a new process would."""
    monkeypatch.setattr(engines, "_RECENT", {})
    monkeypatch.setattr(engines, "SPEEDUPS", {})


def digits16(root: Path, weights, name: str = "digits16", **manifest) -> Path:
    write_model(root, name, weights, size=16, extra_manifest=manifest)
    return root / name / "1"


def load(folder: Path, engine: str = "auto"):
    return load_servable(ServableSpec(folder.parent.name, 1, folder), engine=engine)


def photos(digits, count: int) -> list[Decoded]:
    """Real digits as the RGB pixels an upload check would hand on."""
    return [Decoded(np.repeat(image[:, :, None], 3, axis=2)) for image in digits.test_images[:count]]


def agreement(servable, reference, digits) -> float:
    """Top-1 agreement with the fp32 reference on 64 real digits."""
    items = photos(digits, 64)
    return float(np.mean(servable.run(items).argmax(1) == reference.run(items).argmax(1)))


@needs_bf16
def test_bf16_runs_on_onednn_and_reports_its_accuracy(tmp_path: Path, digit_weights, digits) -> None:
    reference = load(digits16(tmp_path / "a", digit_weights), "tensorflow")
    servable = load(digits16(tmp_path / "b", digit_weights, precision="bf16"))
    try:
        choice = servable.engine
        assert (choice.engine, choice.precision) == ("tensorflow", "bf16")
        assert choice.max_abs_diff is not None and 0 < choice.max_abs_diff < 0.1  # > 0: the rewrite took effect
        assert choice.top1_agreement is not None and choice.top1_agreement >= 0.6
        assert set(choice.rows_per_s) == {"tensorflow", "tensorflow/bf16"}
        assert choice.reason.startswith("precision bf16 asked, ") and "top-1 agreement" in choice.reason
        assert agreement(servable, reference, digits) >= 0.95
        items = photos(digits, 8)
        pixels = list(servable.preprocess(items))  # the shared decode and the model's own tensor: bf16 too
        assert np.abs(np.stack(servable.predict(pixels)) - reference.run(items)).max() < 0.1
        tensor = (np.stack(pixels) / 127.5 - 1.0).astype(np.float32)
        [scores] = servable.run_signature("serving_default", [tensor], ("scores",))
        assert np.array_equal(scores.argmax(1), reference.run(items).argmax(1))
    finally:
        reference.close()
        servable.close()


@needs_cpu
@needs_litert
def test_int8_runs_on_litert_and_its_conversion_is_cached_apart(tmp_path: Path, digit_weights, digits) -> None:
    folder = digits16(tmp_path, digit_weights, precision="int8")
    pinned = load(folder, "tensorflow")  # the manifest's precision wins over a service's --engine
    assert pinned.engine.engine == "litert" and pinned.engine.precision == "int8"
    pinned.close()
    manifest = folder / "model.json"
    manifest.write_text(json.dumps({k: v for k, v in json.loads(manifest.read_text()).items() if k != "precision"}))
    fp32 = load(folder, "litert")
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "precision": "int8"}))
    engines._RECENT.clear()
    int8 = load(folder)
    try:
        cache = sorted(p.name for p in (folder / engines.CACHE_DIR_NAME).iterdir())
        assert [name.split("-")[1] for name in cache] == [engines.litert_version(), "int8"]
        choice = int8.engine
        assert (choice.engine, choice.asked, choice.precision) == ("litert", "litert", "int8")
        assert choice.max_abs_diff is not None and choice.max_abs_diff > fp32.engine.max_abs_diff  # quantized
        assert choice.top1_agreement is not None and choice.top1_agreement >= 0.6
        assert set(choice.rows_per_s) == {"tensorflow", "litert/int8"}
        assert agreement(int8, fp32, digits) >= 0.9
    finally:
        fp32.close()
        int8.close()


@needs_cpu
@needs_litert
def test_the_service_shows_the_report_and_refuses_bf16_without_the_instructions(
        tmp_path: Path, digit_weights, digits, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    graphs = tmp_path / "graphs"
    digits16(graphs, digit_weights, name="small", precision="int8")
    digits16(graphs, digit_weights, name="wide", precision="bf16")
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})  # an AVX-512 CPU without BF16
    with caplog.at_level(logging.INFO, logger="app.servable"):
        app = create_app({"GRAPHS_DIR": graphs, "GRPC_PORT": 0, "POLL_INTERVAL_S": 0, "STRICT_STARTUP": False})
    try:
        client = app.test_client()
        engine = client.get("/stats").get_json()["models"]["small"]["engine"]
        assert engine["precision"] == "int8" and engine["top1_agreement"] is not None
        assert engine["reason"].startswith("precision int8 asked")
        [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("loaded model small")]
        assert "engine litert (precision int8 asked" in line and "max |diff|" in line and "top-1 agreement" in line
        answer = client.post("/image_classification?model=small", data=png_bytes(digits.test_images[0]),
                             content_type="image/png")
        assert answer.status_code == 200
        [wide] = [m for m in client.get("/models").get_json()["models"] if m["name"] == "wide"]
        [version] = wide["versions"]
        assert version["state"] == "failed"
        assert "precision bf16 needs a CPU with the avx512_bf16 or amx_bf16 instructions" in version["reason"]
    finally:
        services_of(app).close()


def test_a_reduced_precision_is_refused_on_a_gpu_and_where_the_cpu_lacks_it(
        tmp_path: Path, digit_weights, monkeypatch: pytest.MonkeyPatch) -> None:
    assert precision.refusal("fp32", on_gpu=True) is None
    assert "runs on a GPU" in (precision.refusal("int8", on_gpu=True) or "")
    assert precision.refusal("bf16", on_gpu=False, flags={"avx2", "amx_bf16"}) is None
    assert precision.refusal("int8", on_gpu=False, flags={"avx2"}) is None  # XNNPACK's int8 runs everywhere
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "fma"})  # an AMD EPYC with AVX2 only
    expected = "runs on a GPU" if ON_GPU else r"model\.json: precision bf16 needs a CPU with the avx512_bf16"
    with pytest.raises(ModelLoadError, match=expected):
        load(digits16(tmp_path, digit_weights, precision="bf16"))


def test_the_manifest_names_a_bad_precision(tmp_path: Path) -> None:
    image = {"input": {"tensor": "input:0", "height": 8, "width": 8, "channels": 1}, "output": {"tensor": "probs:0"}}
    assert parse(image).precision == "fp32" and "precision" not in parse(image).to_json()
    assert parse({**image, "precision": "int8"}).to_json()["precision"] == "int8"
    with pytest.raises(ManifestError, match=r"field 'precision': must be one of fp32, bf16, int8; got 'fp16'"):
        parse({**image, "precision": "fp16"})
    with pytest.raises(ManifestError, match=r"bf16 runs on the tensorflow engine, but 'engine' is 'litert'"):
        parse({**image, "precision": "bf16", "engine": "litert"})
    with pytest.raises(ManifestError, match=r"int8 and 'optimize.xla' do not go together"):
        parse({**image, "precision": "int8", "optimize": {"xla": True}})
    tensor = {"signatures": {"serving_default": {"inputs": {"x": {"tensor": "x:0", "dtype": "float32"}},
                                                 "outputs": {"y": {"tensor": "y:0", "dtype": "float32"}}}}}
    with pytest.raises(ManifestError, match="reduced precision is for image classifiers only"):
        parse({**tensor, "precision": "bf16"})

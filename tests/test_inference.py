"""The inference core on its own: a registry, real digit graphs, no Flask and no HTTP."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.config import Settings
from app.images import CorruptImage, NotAnImage, RequestTooLarge
from app.inference import EncodedImage, InferenceCore, UndecodableUploads
from app.reconcile import Reconciler
from app.registry import BadModelSelection, ModelNotFound, ModelRegistry, VersionNotFound
from app.views import model_names
from tests.digits import png_bytes, write_model
from tests.helpers import encode


@pytest.fixture(scope="module")
def core(tmp_path_factory, digit_weights):
    root = tmp_path_factory.mktemp("core-graphs")
    write_model(root, "digits8", digit_weights, size=8, version=1)
    write_model(root, "digits8", digit_weights, size=8, version=2)
    write_model(root, "digits16", digit_weights, size=16)
    (root / "digits8" / "versions.json").write_text('{"policy": "all", "labels": {"stable": 1, "canary": 2}}')
    seen: list[tuple[str, int, int, dict[str, float]]] = []
    settings = Settings(graphs_dir=str(root), poll_interval_s=0)
    registry = ModelRegistry(settings)
    Reconciler(registry, settings).load_all()
    yield InferenceCore(registry, on_model=lambda *args: seen.append(args)), seen
    registry.close()


def images(digits, count: int) -> list[EncodedImage]:
    return [EncodedImage(f"{i}.png", png_bytes(digits.test_images[i])) for i in range(count)]


def test_the_core_does_not_import_flask():
    """Follow the module-level imports of app.inference through the app package (statically:
    a fresh interpreter would spend ~12 s starting TensorFlow) and meet no Flask on the way."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    seen: set[str] = set()
    outside: set[str] = set()
    todo = ["app.inference", "app"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = root / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = root / module.replace(".", "/") / "__init__.py"
        for node in ast.parse(path.read_text()).body:  # module level: what `import` runs
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
                base = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):  # app/ imports itself relatively
                    base = base.rpartition(".")[0]
                absolute = node.module or "" if not node.level else ".".join(p for p in (base, node.module) if p)
                names = [absolute] + [f"{absolute}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("app."):
                    if (root / (name.replace(".", "/") + ".py")).exists():
                        todo.append(name)
                elif name != "app":
                    outside.add(name.split(".")[0])
    assert {"app.registry", "app.servable", "app.batching"} <= seen
    assert not outside & {"flask", "werkzeug", "waitress"}, sorted(outside)


def test_classify_returns_rows_versions_and_timings_per_model(core, digits):
    inference, seen = core
    seen.clear()
    result = inference.classify(images(digits, 20), models=["digits8", "digits16"], top_k=2,
                                deadline=time.monotonic() + 10)
    assert result.images == 20
    assert [(m.name, m.version) for m in result.models] == [("digits8", 2), ("digits16", 1)]
    for model in result.models:
        assert [r.image for r in model.results] == [f"{i}.png" for i in range(20)]
        predicted = [r.top_k[0].class_id for r in model.results]
        assert np.mean(np.array(predicted) == digits.test_y[:20]) >= 0.9
        assert all(len(r.top_k) == 2 and r.top_k[0].score >= r.top_k[1].score for r in model.results)
        assert set(model.seconds) == {"queue", "run", "postprocess", "total"}
        assert model.batch_sizes and model.profile_ms is None
    assert [(name, version, n) for name, version, n, _ in seen] == [("digits8", 2, 20), ("digits16", 1, 20)]


def test_version_and_label_selection(core, digits):
    inference, _ = core
    one = images(digits, 1)
    assert inference.classify(one, models="digits8").models[0].version == 2  # highest by default
    assert inference.classify(one, models="digits8", version=1).models[0].version == 1
    assert inference.classify(one, models="digits8", version_label="stable").models[0].version == 1
    assert inference.classify(one, models="digits8", version_label="canary").models[0].version == 2
    with pytest.raises(VersionNotFound, match=r"no version 7 .*served: 1, 2|version 7 is not served.*1, 2"):
        inference.classify(one, models="digits8", version=7)
    with pytest.raises(VersionNotFound, match=r"no version label 'beta'.*stable, canary|labels: canary, stable"):
        inference.classify(one, models="digits8", version_label="beta")


@pytest.mark.parametrize("selector", [",", " , ", "digits8,", ",digits8", "digits8,,digits16", " "])
def test_empty_model_selection_is_refused(selector):
    """Our REST API's model grammar (``a,b``, ``all``) is the door's, not the core's."""
    with pytest.raises(BadModelSelection, match="names no model|has an empty name"):
        model_names(selector)


def test_client_strings_in_errors_are_clipped(core, digits):
    inference, _ = core
    with pytest.raises(ModelNotFound) as info:
        inference.classify(images(digits, 1), models="x" * 5000)
    assert "x" * 64 + "…(+4936 chars)" in str(info.value) and "x" * 65 not in str(info.value)
    with pytest.raises(VersionNotFound) as info:
        inference.classify(images(digits, 1), models="digits8", version_label="y" * 5000)
    assert "y" * 64 + "…" in str(info.value) and len(str(info.value)) < 300


def test_bad_uploads_are_named(core, digits):
    good = png_bytes(digits.test_images[0])
    batch = [EncodedImage("good.png", good), EncodedImage("cut.png", good[:40]), EncodedImage("good2.png", good)]
    with pytest.raises(UndecodableUploads) as info:
        core[0].classify(batch, models="digits16")
    assert info.value.names == ["cut.png"] and "'cut.png'" in str(info.value)


def test_profile_and_borrowed_handles_are_released(core, digits):
    inference, _ = core
    with inference.select("digits16") as selected:
        (handle,) = selected.handles
        assert handle.in_flight == 1
        result = selected.classify(images(digits, 2), top_k=1, profile=True)
    assert handle.in_flight == 0
    assert set(result.models[0].profile_ms) == {"decode_resize", "normalize_model", "single_run"}


def test_classify_uploads_checks_what_every_front_door_receives(core, digits):
    inference, _ = core
    raw = [(f"{i}.png", png_bytes(digits.test_images[i])) for i in range(5)]
    with inference.select("digits8") as selected:
        result = selected.classify_uploads(raw, top_k=1)
    (model,) = result.models
    assert model.scores.shape == (5, 10) and model.scores.dtype == np.float32
    assert [r.top_k[0].class_id for r in model.results] == list(np.argmax(model.scores, axis=1))
    assert np.allclose(model.scores.sum(axis=1), 1.0, atol=1e-5)  # every class, in class-id order
    assert result.checks_seconds > 0 and inference.pixel_budget.used == 0

    with inference.select("digits8") as selected:
        with pytest.raises(NotAnImage, match="'junk'"):
            selected.classify_uploads([*raw, ("junk", b"not an image")], top_k=1)
        jpeg = encode(digits.test_images[0], "JPEG")
        with pytest.raises(CorruptImage, match="'cut.jpg'"):
            selected.classify_uploads([("cut.jpg", jpeg[: len(jpeg) - 40] + b"\xff\xd9")], top_k=1)
    small = InferenceCore(inference.registry, settings=Settings(max_image_pixels=64, max_request_pixels=100,
                                                                 max_inflight_pixels=100))
    with small.select("digits8") as selected, pytest.raises(RequestTooLarge, match="128 pixels"):
        selected.classify_uploads(raw[:2], top_k=1)

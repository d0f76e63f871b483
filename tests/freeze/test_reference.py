"""``--reference-preprocess`` on a real 2019 TF1 model: the ``nudity`` package's graph.

The package (PyPI ``nudity==0.2.3``, fetched with ``pip download --no-deps`` into
``.cache/test-downloads``) ships ``retrained_graph.pb`` and preprocesses with TF1 ops:
``decode_jpeg`` → ``resize_bilinear`` (align_corners and half_pixel_centers off) →
``(x - 128) / 128``. ``package_pipeline`` below reproduces that. Served with TF2's resize the
model's scores move, and the check must catch it; with the ``tf1_bilinear`` recipe it must
pass, and the served scores must equal the package's own.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data

from app.services import services_of
from freeze import CheckOptions, ImageOptions, VerificationError, WriteOptions, freeze_model
from freeze.reference import check_reference

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "test-downloads"
PACKAGE = "nudity==0.2.3"
LABELS = ["not_nude", "nude"]

pytestmark = pytest.mark.slow  # pip downloads the package's sdist (once, into .cache/test-downloads)


@pytest.fixture(scope="module")
def nudity_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's ``retrained_graph.pb``, read out of its sdist (nothing installed)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    archives = sorted(CACHE.glob("nudity-0.2.3*"))
    if not archives:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", PACKAGE,
             "-d", str(CACHE)],
            check=True, timeout=600,
        )
        archives = sorted(CACHE.glob("nudity-0.2.3*"))
    target = tmp_path_factory.mktemp("nudity") / "retrained_graph.pb"
    with tarfile.open(archives[0]) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("nudity/files/retrained_graph.pb"))
        target.write_bytes(archive.extractfile(member).read())  # type: ignore[union-attr]
    return target


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("samples")
    paths = []
    for name in ("astronaut", "coffee", "chelsea"):
        path = folder / f"{name}.jpg"
        Image.fromarray(getattr(data, name)()).save(path, quality=90)
        paths.append(path)
    return paths


def package_pipeline(path: str) -> np.ndarray:
    """``Nudity.read_tensor_from_image_file`` of nudity 0.2.3, in TF1 ops as it wrote them."""
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    resized = tf.compat.v1.image.resize_bilinear(tf.expand_dims(tf.cast(image, tf.float32), 0), [224, 224])
    return ((resized - [128.0]) / [128.0]).numpy()


def package_scores(graph_path: Path, paths: list[Path]) -> np.ndarray:
    """``Nudity.score``: the package's preprocessing, then its graph."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="import")
    inputs = [package_pipeline(str(p)) for p in paths]  # eagerly, before the session's graph is the default
    with tf.compat.v1.Session(graph=graph) as session:
        return np.concatenate([session.run("import/final_result:0", {"import/input:0": x}) for x in inputs])


def options(resize: str, **extra) -> ImageOptions:
    return ImageOptions(scale="(x-128)/128", resize=resize, **extra)


def test_tf2_resize_is_caught_as_a_mismatch(nudity_graph, samples, tmp_path):
    with pytest.raises(VerificationError) as caught:
        freeze_model(
            nudity_graph, image=options("bilinear", antialias=False), labels=LABELS,
            check=CheckOptions(samples=samples, reference_preprocess=package_pipeline),
            write=WriteOptions(graphs_dir=tmp_path, name="nudity"),
        )
    check = caught.value.verification
    assert not check.passed
    assert check.output_max > 1e-2  # the scores really move ...
    assert check.input_max > 0.1  # ... because the model's input does
    assert "tf1_" in str(caught.value)  # and the message points at the fix
    assert not (tmp_path / "nudity").exists()  # nothing written


def test_tf1_recipe_passes_and_serves_the_packages_scores(nudity_graph, samples, tmp_path):
    result = freeze_model(
        nudity_graph, image=options("tf1_bilinear"), labels=LABELS,
        check=CheckOptions(samples=samples, reference_preprocess=package_pipeline),
        write=WriteOptions(graphs_dir=tmp_path, name="nudity"),
    )
    assert result.reference is not None and result.reference.passed
    assert result.reference.output_max < 1e-4
    assert result.manifest is not None
    assert result.manifest.info["reference_check"]["passed"] is True

    from app import create_app
    from tests.helpers import class_scores, multipart

    app = create_app({"GRAPHS_DIR": str(tmp_path)})
    try:
        answer = app.test_client().post(
            "/image_classification?model=nudity&top_k=2",
            data=multipart(*[(p.read_bytes(), p.name) for p in samples]),
            content_type="multipart/form-data",
        )
        assert answer.status_code == 200, answer.get_json()
        served = class_scores(answer.get_json()["models"]["nudity"], classes=2)
    finally:
        services_of(app).registry.close()
    assert np.abs(served - package_scores(nudity_graph, samples)).max() < 1e-4


def test_reference_check_through_the_cli(freeze_cli, nudity_graph, samples, tmp_path, capsys):
    module = tmp_path / "pipeline.py"
    module.write_text(
        "import tensorflow as tf\n"
        "def read_tensor(path):\n"
        "    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)\n"
        "    x = tf.compat.v1.image.resize_bilinear(tf.expand_dims(tf.cast(image, tf.float32), 0), [224, 224])\n"
        "    return ((x - 128.0) / 128.0).numpy()\n"
    )
    common = [str(nudity_graph), "--scale", "(x-128)/128", "--labels", ",".join(LABELS),
              "--reference-preprocess", f"{module}:read_tensor", "--sample", str(samples[1])]
    assert freeze_cli([*common, "--resize", "bilinear", "--no-antialias"]) == 2
    assert "differs from" in capsys.readouterr().err
    assert freeze_cli([*common, "--resize", "tf1_bilinear"]) == 0
    out = capsys.readouterr().out
    assert "reference: OK" in out and "coffee.jpg: input max" in out


def test_reference_function_with_the_wrong_shape_is_a_clear_error(nudity_graph, samples):
    from freeze import FreezeError
    from freeze.sources import load_source

    with load_source(nudity_graph) as src:
        frozen = src.freeze()
    from freeze.export import build_manifest

    manifest = build_manifest(frozen=frozen, image=options("tf1_bilinear"))
    with pytest.raises(FreezeError, match=r"returned shape \[1, 100\]"):
        check_reference(
            reference=lambda path: np.zeros((1, 100)), frozen=frozen, manifest=manifest, samples=samples[:1],
            tolerance=1e-4,
        )
    with pytest.raises(FreezeError, match="ZeroDivisionError"):
        check_reference(
            reference=lambda path: 1 / 0, frozen=frozen, manifest=manifest, samples=samples[:1], tolerance=1e-4
        )

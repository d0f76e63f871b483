"""Tensor models for tests: real frozen graphs served by their own tensors.

- ``write_half_plus_two``: TF Serving's own test model (TF1 or TF2 SavedModel in
  ../shared/testdata) frozen by ``freeze_model`` with every signature kept, as version 123, as
  TF Serving serves its folder 00000123; ``write_mnist``: the MNIST softmax checkpoint.
- ``write_multi``: a small graph of our own with two inputs and two outputs of other dtypes.
- ``write_alltypes``: one identity per dtype a graph can have (every v2 datatype but BF16),
  inputs ``in_<dtype>`` and outputs ``out_<dtype>`` of shape [-1, 2] (strings: [-1]).

Each writes ``<root>/<name>/<version>/model.pb`` + ``model.json`` and returns the version folder.
``run_frozen`` runs a written graph in a plain Session: what every answer must equal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

SHARED = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "checkpoints" / "tensorflow_serving"
HALF_PLUS_TWO_TF1 = SHARED / "saved_model_half_plus_two_cpu" / "00000123"
HALF_PLUS_TWO_TF2 = SHARED / "saved_model_half_plus_two_tf2_cpu" / "00000123"
MNIST_TF1 = SHARED.parent / "mnist_softmax_tf1"
ALL_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64",
              "uint8", "uint16", "uint32", "uint64", "bool", "string")


def _write(root: Path, name: str, version: int, graph_def: Any, signatures: dict[str, Any],
           **extra: Any) -> Path:
    folder = root / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pb").write_bytes(graph_def.SerializeToString())
    (folder / "model.json").write_text(json.dumps({"signatures": signatures, **extra}, indent=2), encoding="utf-8")
    return folder


def _spec(tensor: str, dtype: tf.DType, shape: list[int] | None) -> dict[str, Any]:
    return {"tensor": tensor, "dtype": dtype.name, "shape": shape}


def write_half_plus_two(root: Path, name: str = "half_plus_two", *, tf2: bool = False) -> Path:
    """TF Serving's half_plus_two (TF1 or TF2 SavedModel) frozen by our own freeze tool, as a user would."""
    source = HALF_PLUS_TWO_TF2 if tf2 else HALF_PLUS_TWO_TF1
    return _freeze(source, root, name)


def write_mnist(root: Path, name: str = "mnist") -> Path:
    """The MNIST softmax TF1 checkpoint of ../shared/testdata: input ``Placeholder`` [-1, 784], output ``add``."""
    return _freeze(MNIST_TF1, root, name)


def _freeze(source: Path, root: Path, name: str) -> Path:
    if not source.exists():
        pytest.skip(f"{source} is not there (see ../shared/testdata/README.md)")
    from freeze import WriteOptions, freeze_model

    result = freeze_model(source, write=WriteOptions(graphs_dir=root, name=name))
    assert result.path is not None
    return result.path


def write_multi(root: Path, name: str = "multi", **extra: Any) -> Path:
    """``a`` float32 [-1, 3] and ``b`` int64 [-1] in; ``total`` float32 [-1] = sum(a) + b and
    ``doubled`` float64 [-1, 3] = 2a out."""
    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [None, 3], name="a")
        b = tf.compat.v1.placeholder(tf.int64, [None], name="b")
        tf.identity(tf.reduce_sum(a, axis=1) + tf.cast(b, tf.float32), name="total")
        tf.identity(tf.cast(a, tf.float64) * 2.0, name="doubled")
    signatures = {"serving_default": {
        "inputs": {"a": _spec("a:0", tf.float32, [-1, 3]), "b": _spec("b:0", tf.int64, [-1])},
        "outputs": {"total": _spec("total:0", tf.float32, [-1]), "doubled": _spec("doubled:0", tf.float64, [-1, 3])},
    }}
    return _write(root, name, 1, graph.as_graph_def(), signatures, **extra)


def write_alltypes(root: Path, name: str = "alltypes") -> Path:
    graph = tf.Graph()
    inputs, outputs = {}, {}
    with graph.as_default():
        for dtype_name in ALL_DTYPES:
            dtype = tf.as_dtype(dtype_name)
            shape = [None] if dtype_name == "string" else [None, 2]
            x = tf.compat.v1.placeholder(dtype, shape, name=f"in_{dtype_name}")
            tf.identity(x, name=f"out_{dtype_name}")
            listed = [-1 if d is None else d for d in shape]
            inputs[f"in_{dtype_name}"] = _spec(f"in_{dtype_name}:0", dtype, listed)
            outputs[f"out_{dtype_name}"] = _spec(f"out_{dtype_name}:0", dtype, listed)
    return _write(root, name, 1, graph.as_graph_def(), {"serving_default": {"inputs": inputs, "outputs": outputs}})


def run_frozen(folder: Path, signature: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The written graph run in a plain Session on ``feeds`` (by key): every output of ``signature``."""
    manifest = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    sig = manifest["signatures"][signature]
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString((folder / "model.pb").read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        keys = list(sig["outputs"])
        values = session.run([sig["outputs"][k]["tensor"] for k in keys],
                             {sig["inputs"][k]["tensor"]: v for k, v in feeds.items()})
    return dict(zip(keys, values))

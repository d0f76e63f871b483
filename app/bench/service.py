"""Phase 3, the service over HTTP: start ``python -m app``, check its answer, measure each point.

What talks to a running server is here, shared by the later phases: ``serving`` starts the
service in a process of its own (never in the bench's), ``http_request`` is the one plain HTTP
call, ``measured_point`` samples the server's CPU and ``/metrics`` around a window of load, and
``warm_and_measure`` is the warm-up-then-measure loop the peers and the phone photo reuse.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..layout import SERVICE
from .cpu import cpu_cores, cpu_sample, process_tree
from .inputs import ROOT
from .load import LoadRun, ProcessRun, WrkRun, request_body
from .points import Point, latency_summary, print_progress, sleep_until, throughput


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
    command = [sys.executable, "-m", SERVICE, "--host", "127.0.0.1", "--port", str(port), "--graphs-dir", str(graphs_dir),
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
        "GRAPHSERVE_ENGINE": getattr(args, "engine", "auto"),
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

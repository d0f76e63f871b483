"""Soak test: drive a graphserve server with real photos and watch RSS and latency stay flat.

Bounded in count and time, and only ever talks to 127.0.0.1 / localhost. Without ``--url``
it starts its own server (``python -m app``) on a free port and stops it at the end.

    .venv/bin/python scripts/soak.py --requests 20000 --concurrency 4 --every 2000
    .venv/bin/python scripts/soak.py --url http://127.0.0.1:8080 --requests 5000 --model fer

Prints, every ``--every`` requests: count, the server's RSS (from its /stats), client-side
p50/p99 latency of that interval, and errors; at the end, RSS growth from request
``--baseline`` (default 2,000, after warm-up) to the end. Exit code 1 if any request failed.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def real_photos() -> list[bytes]:
    """JPEGs of scikit-image's bundled photos (no download) at their natural sizes."""
    from PIL import Image
    from skimage import data

    photos = []
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(graphs_dir: str, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GRAPHSERVE_LOG_REQUESTS": "OFF"}
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), "--graphs-dir", graphs_dir, *extra],
        cwd=ROOT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with code {process.returncode} before it was ready")
        try:
            if get_json(url, "/readyz")[0] == 200:
                return process, url
        except OSError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise SystemExit("server was not ready within 300 s")


def get_json(url: str, path: str) -> tuple[int, dict]:
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


class Driver:
    """Keep-alive clients on threads; each request is one photo as a raw image/jpeg body."""

    def __init__(self, url: str, path: str, photos: list[bytes], total: int, deadline: float) -> None:
        self.url = urlparse(url)
        self.path = path
        self.photos = photos
        self.total = total
        self.deadline = deadline
        self.lock = threading.Lock()
        self.issued = 0
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def next_index(self) -> int | None:
        with self.lock:
            if self.issued >= self.total or time.monotonic() > self.deadline:
                return None
            self.issued += 1
            return self.issued - 1

    def run_client(self) -> None:
        connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=60)
        while (index := self.next_index()) is not None:
            body = self.photos[index % len(self.photos)]
            started = time.perf_counter()
            try:
                connection.request("POST", self.path, body=body, headers={"Content-Type": "image/jpeg"})
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=60)
                status, error = 0, repr(exc)
            else:
                error = f"HTTP {status}" if status != 200 else ""
            elapsed = time.perf_counter() - started
            with self.lock:
                self.latencies.append(elapsed)
                if error:
                    self.errors.append(error)
        connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server on 127.0.0.1 (default: start one)")
    parser.add_argument("--graphs-dir", default="graphs", help="for the server this script starts")
    parser.add_argument("--model", default="all", help="model selector sent with each request")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="stop after this long in any case")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--every", type=int, default=2_000, help="report interval, in requests")
    parser.add_argument("--baseline", type=int, default=2_000, help="request count after which RSS should stay flat")
    parser.add_argument("--json", help="also write every report row to this file")
    args = parser.parse_args(argv)

    process = None
    if args.url:
        if urlparse(args.url).hostname not in LOCAL_HOSTS:
            parser.error("soak tests only target 127.0.0.1 / localhost")
        url = args.url
    else:
        process, url = start_server(args.graphs_dir, [])
    try:
        return soak(url, args)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)


def soak(url: str, args: argparse.Namespace) -> int:
    photos = real_photos()
    driver = Driver(url, f"/image_classification?model={args.model}&top_k=5", photos, args.requests,
                    time.monotonic() + args.max_seconds)
    threads = [threading.Thread(target=driver.run_client, daemon=True) for _ in range(args.concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    rows = []
    baseline_rss = None
    reported = 0
    print(f"{'requests':>9} {'seconds':>8} {'rss_mb':>8} {'p50_ms':>8} {'p99_ms':>8} {'errors':>7}", flush=True)
    while True:
        alive = any(t.is_alive() for t in threads)
        with driver.lock:
            done = len(driver.latencies)
            window = driver.latencies[reported:done]
            errors = len(driver.errors)
        if done - reported >= args.every or (not alive and done > reported):
            rss = get_json(url, "/stats")[1]["process"]["rss_bytes"]
            if baseline_rss is None and done >= args.baseline:
                baseline_rss = rss
            p50, p99 = np.percentile(np.asarray(window) * 1000, [50, 99])
            row = {"requests": done, "seconds": round(time.monotonic() - started, 1), "rss_mb": round(rss / 2**20, 1),
                   "p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2), "errors": errors}
            rows.append(row)
            print(f"{done:>9} {row['seconds']:>8} {row['rss_mb']:>8} {row['p50_ms']:>8} {row['p99_ms']:>8} {errors:>7}",
                  flush=True)
            reported = done
        if not alive and done == reported:
            break
        time.sleep(0.2)
    final_rss = get_json(url, "/stats")[1]["process"]["rss_bytes"]
    summary = {"requests": len(driver.latencies), "errors": len(driver.errors), "seconds": round(time.monotonic() - started, 1)}
    if baseline_rss is not None:
        summary["rss_growth_mb_after_baseline"] = round((final_rss - baseline_rss) / 2**20, 2)
    summary["throughput_rps"] = round(summary["requests"] / max(summary["seconds"], 1e-9), 1)
    print(json.dumps(summary), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    if driver.errors:
        print(f"first errors: {driver.errors[:5]}", file=sys.stderr)
    return 1 if driver.errors else 0


if __name__ == "__main__":
    sys.exit(main())

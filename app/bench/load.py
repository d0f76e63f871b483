"""The load generators of the HTTP phases: ``wrk`` with ``bench_wrk.lua``, or client processes.

Load must not come from threads of the bench (its GIL and CPU would be counted with the
server's), so it comes from ``wrk`` when that is installed, else from spawned client processes.
Both run closed loops over keep-alive connections, count only what completes inside the window,
and hand back one ``Stream`` per connection. ``bench_wrk.lua`` ships beside this module (package
data), so an installed ``graphserve bench`` drives wrk as a checkout does.
"""

from __future__ import annotations

import http.client
import json
import math
import multiprocessing
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from .points import Stream

WRK_SCRIPT = Path(__file__).with_name("bench_wrk.lua")
MULTIPART_BOUNDARY = "graphserve-bench-boundary"  # bench_wrk.lua builds the same body


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


class ClientProcesses(Protocol):
    """What ``ProcessRun.finish`` reads (``ProtocolRun`` borrows it): client processes that each
    put their streams on ``results`` before ``limit`` (monotonic)."""

    workers: list[Any]
    results: Any
    limit: float


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

    def finish(self: ClientProcesses) -> list[Stream]:
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
        for sent, done, status, error in keep_alive_posts(port, path, body, headers, window[1]):
            if error:  # socket errors count at any time, as wrk counts them
                stream.error(error)
            elif window[0] <= done < window[1]:
                if 200 <= status < 300:
                    stream.completed(sent, done)
                else:
                    stream.error(f"HTTP {status}")

    run_and_report([threading.Thread(target=loop, args=(stream,)) for stream in streams], streams, results)

def keep_alive_posts(
    port: int, path: str, body: bytes, headers: dict[str, str], end: float
) -> Iterator[tuple[float, float, int, str]]:
    """POST ``body`` over one keep-alive connection until ``end``: (sent, done, status, socket
    error) per request; a socket error (status 0) closes the connection and opens a new one."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        while (sent := time.monotonic()) < end:
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status, error = response.status, ""
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                status, error = 0, repr(exc)
            yield sent, time.monotonic(), status, error
    finally:
        connection.close()

def run_and_report(threads: list[threading.Thread], streams: list[Stream], results: Any) -> None:
    """Run a client process's connection threads to the end and hand their streams back."""
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put([asdict(stream) for stream in streams])

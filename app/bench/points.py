"""What every phase measures, in one shape: a ``Point`` per setting, a ``Stream`` per client.

Each phase (raw, batcher, service, protocol, peer, phone) runs closed-loop clients that record
their own completions in a ``Stream``; ``throughput`` and ``latency_summary`` turn those into the
img/s and p50/p99 of one ``Point``, so every row of bench.md and bench.json is computed the same
way whatever produced the load. The number formatting shared by the tables and the progress
line is here too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Point:
    """One measured setting: raw (batch, threads) or service (mode, concurrency)."""

    phase: str  # "raw", "split", "batcher", "service", "protocol", "peer", "phone", "tensor" or "tensor-raw"
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
        if self.phase in ("raw", "split", "tensor-raw"):
            graph = "served graph on its engine, " if self.phase == "split" else ""
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

def sleep_until(moment: float) -> None:
    while (left := moment - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"

def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator

def print_progress(point: Point) -> None:
    extra = f" batch~{point.server['mean_batch']}" if point.server.get("mean_batch") else ""
    print(
        f"  {point.phase:7} {point.setting:28} {point.images_per_s:9.1f} img/s  p50 {fmt(point.p50_ms, 2):>8} ms  "
        f"p99 {fmt(point.p99_ms, 2):>8} ms  errors {point.errors}  cpu {point.cpu}{extra}",
        flush=True,
    )

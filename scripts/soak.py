#!/usr/bin/env python3
"""Soak test: drive a graphserve server with real photos and watch RSS and latency stay flat.

Bounded in count and time, and only ever talks to 127.0.0.1 / localhost. Without ``--url``
it starts its own server (``python -m app``) on a free port and stops it at the end.

    .venv/bin/python scripts/soak.py --requests 20000 --concurrency 4 --every 2000
    .venv/bin/python scripts/soak.py --url http://127.0.0.1:8080 --requests 5000 --model fer
    .venv/bin/python scripts/soak.py --requests 5000 --hostile 0.3   # 30 % hostile uploads mixed in

Good requests are real photos (one raw image/jpeg body each); every one must answer 200
with the same top-1 class per model as the photo's first answer, learnt before the run.
With ``--hostile F`` a share F of the requests (spread evenly, in a fixed order) are
hostile, cycling through ``hostile_requests()``: corrupt, truncated and header-only JPEGs,
garbage bytes, 64 header-only JPEGs claiming 36 MP each, a JPEG claiming 400 MP, animated
GIFs (many big frames; an oversize screen), deep and malformed JSON, too many images and
form parts, bad parameters, wrong types and methods, a chunked garbage body. Each must get
the answer its kind expects: a 4xx with the JSON error body ``{"error": {"code",
"message"}}``, except the many-frames GIF, which must be classified (200) by its first
frame. Any other answer, any 5xx and any connection error count as failures.

Prints which engine runs each model's model part (``/stats``: ``auto`` picks), then, every
``--every`` requests: count, the server's RSS (from its /stats), client-side
p50/p99 latency of that interval's good requests, and failures; at the end, RSS growth from
request ``--baseline`` (default 2,000, after warm-up) to the end. Exit code 1 if any request
failed.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
LOCAL = "127.0.0.1"  # a URL without a host (main() lets only local hosts through)


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


@dataclass(frozen=True)
class Hostile:
    """One kind of hostile request and the answer it must get."""

    kind: str
    body: bytes | list[bytes]  # a list: sent chunked (Transfer-Encoding: chunked), one chunk per item
    content_type: str | None = "image/jpeg"
    query: str = ""  # replaces the good requests' query string (model, top_k) when set
    method: str = "POST"
    path: str | None = None  # None: the classification path
    expect: tuple[int, ...] = (400,)


def _encode(image, fmt: str, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def header_only_jpeg(width: int, height: int) -> bytes:
    """A real JPEG's headers claiming ``width`` x ``height``, no scan data, then EOI (< 1 KB)."""
    data = _encode(np.full((16, 16, 3), 128, np.uint8), "JPEG")
    sof = data.index(b"\xff\xc0")
    patched = data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]
    sos = patched.index(b"\xff\xda")
    return patched[: sos + 2 + struct.unpack(">H", patched[sos + 2 : sos + 4])[0]] + b"\xff\xd9"


def animated_gif(size: int, frames: int, screen: int | None = None) -> bytes:
    """A GIF of ``frames`` frames of ``size`` x ``size``: a pattern, then copies of a solid frame whose
    LZW data is a few KB, so a small file costs ``frames`` full decodes to a decoder that reads them
    all (issue 13: 1.4 MB for 300 frames of 2000x2000). ``screen`` patches the logical screen size
    the header claims. Built by splicing frames, as Pillow's ``save_all`` takes seconds per 100."""
    from PIL import Image

    def split(gif: bytes) -> tuple[bytes, bytes, bytes]:
        flags = gif[10]
        table = 3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0
        return gif[: 13 + table], gif[13 + table : -1], gif[13 : 13 + table]  # -1: the trailer ';'

    yy, xx = np.mgrid[0:size, 0:size]
    head, first, _ = split(_encode(((xx // 50 + yy // 50) % 2 * 255).astype(np.uint8), "GIF"))
    solid_gif = _encode(Image.new("L", (size, size), 255), "GIF")
    _, solid, solid_table = split(solid_gif)
    at = solid.index(b",")  # the image descriptor, after any extension
    descriptor = bytearray(solid[at : at + 10])
    descriptor[9] |= 0x80 | (solid_gif[10] & 7)  # the solid frame brings its own colour table
    data = bytearray(head + first + (bytes(descriptor) + solid_table + solid[at + 10 :]) * (frames - 1) + b";")
    if screen is not None:
        data[6:10] = struct.pack("<HH", screen, screen)
    return bytes(data)


def multipart_body(files: list[tuple[str, bytes]], boundary: str = "soakboundary") -> tuple[bytes, str]:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def hostile_requests(photos: list[bytes]) -> list[Hostile]:
    """The hostile mix, built once from the real photos (about 4 MB in all)."""
    import base64

    photo = photos[1]  # chelsea, 35 KB: 5 KB zeroed in the middle lands in its scan data
    zeroed = bytearray(photo)
    zeroed[len(zeroed) // 2 : len(zeroed) // 2 + 5000] = bytes(5000)
    rng = np.random.default_rng(13)
    garbage = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    tiny_png = _encode(np.zeros((8, 8), np.uint8), "PNG")
    bombs, bombs_type = multipart_body([(f"h{i}.jpg", header_only_jpeg(6000, 6000)) for i in range(64)])
    many, many_type = multipart_body([(f"{i}.png", tiny_png) for i in range(65)])
    parts, parts_type = multipart_body([(f"{i}.png", tiny_png) for i in range(5000)])
    bad_b64 = json.dumps({"instances": [{"b64": "not base64 at all!"}]}).encode()
    good_json = json.dumps({"instances": [{"b64": base64.b64encode(photo).decode()}]}).encode()
    return [
        Hostile("corrupt_jpeg", bytes(zeroed)),
        Hostile("truncated_jpeg", photo[: len(photo) // 2]),
        Hostile("garbage_bytes", garbage),
        Hostile("header_only_jpeg_36mp", header_only_jpeg(6000, 6000)),
        Hostile("64_header_only_jpegs", bombs, bombs_type, expect=(413,)),
        Hostile("jpeg_claiming_400mp", header_only_jpeg(20000, 20000), expect=(413,)),
        Hostile("animated_gif_200_frames", animated_gif(1000, 200), "image/gif", expect=(200,)),
        Hostile("animated_gif_oversize_screen", animated_gif(200, 50, screen=7000), "image/gif", expect=(413,)),
        Hostile("deep_json", b"[" * 10_000, "application/json"),
        Hostile("deep_json_instances", b'{"instances": ' + b"[" * 10_000, "application/json"),
        Hostile("bad_base64", bad_b64, "application/json"),
        Hostile("too_many_images", many, many_type, expect=(413,)),
        Hostile("5000_form_parts", parts, parts_type, expect=(413,)),
        Hostile("unknown_model", photo, query="model=nope", expect=(404,)),
        Hostile("empty_model_selection", photo, query="model=,"),
        Hostile("huge_model_name", photo, query="model=" + "x" * 10_000, expect=(404,)),
        Hostile("bad_top_k", good_json, "application/json", query="top_k=abc"),
        Hostile("top_k_zero", photo, query="top_k=0"),
        Hostile("text_plain", b"hello", "text/plain", expect=(415,)),
        Hostile("tiff", _encode(np.zeros((8, 8), np.uint8), "TIFF"), "image/tiff", expect=(415,)),
        Hostile("empty_body", b"", "image/png"),
        Hostile("get_classification", b"", None, method="GET", expect=(405,)),
        Hostile("unknown_path", photo, path="/no/such/path", expect=(404,)),
        Hostile("chunked_garbage", [garbage[:1000], garbage[1000:2000], garbage[2000:]]),
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(
    graphs_dir: str, extra: list[str], prepare=None, *, env_extra: dict[str, str] | None = None, stderr=None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m app`` on a free port; run ``prepare()`` (if given) while it loads; wait until ready."""
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GRAPHSERVE_LOG_REQUESTS": "OFF", **(env_extra or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), "--grpc-port", "0",
         "--graphs-dir", graphs_dir, *extra],
        cwd=ROOT, env=env, stderr=stderr,
    )
    url = f"http://127.0.0.1:{port}"
    if prepare is not None:
        prepare()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with code {process.returncode} before it was ready")
        try:
            if get_json(url, "/readyz")[0] == 200:
                return process, url
        except OSError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("server was not ready within 300 s")


def get_json(url: str, path: str) -> tuple[int, dict]:
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname or LOCAL, parsed.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def top1(answer: dict) -> dict[str, list[int]]:
    """Top-1 class of every image, per model, from a classification answer."""
    return {name: [result["top_k"][0]["class_id"] for result in model["results"]]
            for name, model in answer["models"].items()}


class Driver:
    """Keep-alive clients on threads: good requests are one photo as a raw image/jpeg body each;
    a share ``hostile`` of them (request i is hostile when floor((i+1)·F) > floor(i·F)) are
    hostile requests instead, taken in turn."""

    def __init__(self, url: str, path: str, photos: list[bytes], total: int, deadline: float,
                 hostile: float = 0.0, hostile_mix: list[Hostile] | None = None,
                 expected: list[dict[str, list[int]]] | None = None) -> None:
        self.url = urlparse(url)
        self.path = path
        self.photos = photos
        self.total = total
        self.deadline = deadline
        self.hostile = hostile
        self.hostile_mix = hostile_mix or []
        self.expected = expected  # each photo's top-1 per model, learnt before the run
        self.lock = threading.Lock()
        self.issued = 0
        self.latencies: list[float] = []  # every request, in completion order
        self.good_latencies: list[float] = []
        self.hostile_latencies: list[float] = []
        self.errors: list[str] = []
        self.counts = {"good": 0, "hostile": 0, "good_failed": 0, "hostile_failed": 0, "connection_errors": 0}
        self.kinds: dict[str, dict[str, int]] = {}  # hostile kind -> {"sent", "failed"}

    def next_index(self) -> int | None:
        with self.lock:
            if self.issued >= self.total or time.monotonic() > self.deadline:
                return None
            self.issued += 1
            return self.issued - 1

    def pick(self, index: int) -> tuple[Hostile | None, int]:
        """The hostile request for ``index`` (None: a good one), and which photo or hostile kind."""
        if self.hostile_mix and int((index + 1) * self.hostile) > int(index * self.hostile):
            return self.hostile_mix[int(index * self.hostile) % len(self.hostile_mix)], 0
        return None, index % len(self.photos)

    def run_client(self) -> None:
        connection = http.client.HTTPConnection(self.url.hostname or LOCAL, self.url.port, timeout=60)
        while (index := self.next_index()) is not None:
            hostile, photo = self.pick(index)
            started = time.perf_counter()
            try:
                if hostile is None:
                    connection.request("POST", self.path, body=self.photos[photo],
                                       headers={"Content-Type": "image/jpeg"})
                else:
                    send_hostile(connection, self.path, hostile)
                response = connection.getresponse()
                body = response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = http.client.HTTPConnection(self.url.hostname or LOCAL, self.url.port, timeout=60)
                status, body, error = 0, b"", f"connection error: {exc!r}"
            else:
                error = (self.judge_good(photo, status, body) if hostile is None
                         else judge_hostile(hostile, status, body))
            elapsed = time.perf_counter() - started
            self.record(hostile, elapsed, error, connection_error=status == 0)
        connection.close()

    def judge_good(self, photo: int, status: int, body: bytes) -> str:
        if status != 200:
            return f"good photo {photo}: HTTP {status} {body[:200]!r}"
        if self.expected is not None:
            got = top1(json.loads(body))
            if got != self.expected[photo]:
                return f"good photo {photo}: top-1 {got}, first answer was {self.expected[photo]}"
        return ""

    def record(self, hostile: Hostile | None, elapsed: float, error: str, *, connection_error: bool) -> None:
        side = "good" if hostile is None else "hostile"
        with self.lock:
            self.latencies.append(elapsed)
            (self.good_latencies if hostile is None else self.hostile_latencies).append(elapsed)
            self.counts[side] += 1
            if hostile is not None:
                kind = self.kinds.setdefault(hostile.kind, {"sent": 0, "failed": 0})
                kind["sent"] += 1
                kind["failed"] += bool(error)
            if error:
                self.counts[f"{side}_failed"] += 1
                self.counts["connection_errors"] += connection_error
                self.errors.append(error if hostile is None else f"{hostile.kind}: {error}")


def send_hostile(connection: http.client.HTTPConnection, good_path: str, hostile: Hostile) -> None:
    path = hostile.path or (good_path.split("?")[0] + "?" + hostile.query if hostile.query else good_path)
    headers = {"Content-Type": hostile.content_type} if hostile.content_type else {}
    if isinstance(hostile.body, list):
        connection.request(hostile.method, path, body=iter(hostile.body), headers=headers, encode_chunked=True)
    elif hostile.method == "GET":
        connection.request(hostile.method, path, headers=headers)
    else:
        connection.request(hostile.method, path, body=hostile.body, headers=headers)


def judge_hostile(hostile: Hostile, status: int, body: bytes) -> str:
    """'' when the answer is the one the kind expects, else what was wrong."""
    if status not in hostile.expect:
        return f"HTTP {status}, expected {'/'.join(map(str, hostile.expect))}: {body[:200]!r}"
    if status >= 400:
        try:
            error = json.loads(body)["error"]
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
        except (ValueError, KeyError, TypeError, AssertionError):
            return f"HTTP {status} without the JSON error body: {body[:200]!r}"
    return ""


def reference_answers(url: str, path: str, photos: list[bytes]) -> list[dict[str, list[int]]]:
    """Each photo's top-1 per model, asked once before the run (a failure here stops the soak)."""
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname or LOCAL, parsed.port, timeout=60)
    try:
        expected = []
        for i, photo in enumerate(photos):
            connection.request("POST", path, body=photo, headers={"Content-Type": "image/jpeg"})
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                raise SystemExit(f"photo {i} was not classified before the soak: HTTP {response.status} {body[:300]!r}")
            expected.append(top1(json.loads(body)))
        return expected
    finally:
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
    parser.add_argument("--hostile", type=float, default=0.0, metavar="FRACTION",
                        help="share of requests that are hostile uploads, 0 to 1 (default 0)")
    parser.add_argument("--json", help="also write every report row to this file")
    args = parser.parse_args(argv)
    if not 0.0 <= args.hostile <= 1.0:
        parser.error("--hostile must be a fraction from 0 to 1")

    payload: dict[str, list] = {}

    def prepare() -> None:  # the photos and the hostile mix, built while a server we started loads
        payload["photos"] = real_photos()
        payload["hostile"] = hostile_requests(payload["photos"]) if args.hostile > 0 else []

    process = None
    if args.url:
        if urlparse(args.url).hostname not in LOCAL_HOSTS:
            parser.error("soak tests only target 127.0.0.1 / localhost")
        url = args.url
        prepare()
    else:
        process, url = start_server(args.graphs_dir, [], prepare)
    try:
        return soak(url, args, payload["photos"], payload["hostile"])
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    if not seconds:
        return float("nan"), float("nan")
    p50, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 99])
    return round(float(p50), 2), round(float(p99), 2)


def soak(url: str, args: argparse.Namespace, photos: list[bytes], mix: list[Hostile]) -> int:
    path = f"/image_classification?model={args.model}&top_k=5"
    expected = reference_answers(url, path, photos)
    driver = Driver(url, path, photos, args.requests, time.monotonic() + args.max_seconds,
                    hostile=args.hostile, hostile_mix=mix, expected=expected)
    threads = [threading.Thread(target=driver.run_client, daemon=True) for _ in range(args.concurrency)]
    stats = get_json(url, "/stats")[1]
    start_rss = stats["process"]["rss_bytes"]
    engines = {name: model.get("engine", {}).get("engine") for name, model in stats.get("models", {}).items()}
    print("engines: " + ", ".join(f"{name} {engine}" for name, engine in engines.items()), flush=True)
    started = time.monotonic()
    for thread in threads:
        thread.start()
    rows = []
    baseline_rss = None
    reported = 0
    good_reported = 0
    print(f"{'requests':>9} {'seconds':>8} {'rss_mb':>8} {'p50_ms':>8} {'p99_ms':>8} {'hostile':>8} {'failed':>7}",
          flush=True)
    while True:
        alive = any(t.is_alive() for t in threads)
        with driver.lock:
            done = len(driver.latencies)
            good_done = len(driver.good_latencies)
            window = driver.good_latencies[good_reported:good_done]
            errors = len(driver.errors)
            hostile = driver.counts["hostile"]
        if done - reported >= args.every or (not alive and done > reported):
            rss = get_json(url, "/stats")[1]["process"]["rss_bytes"]
            if baseline_rss is None and done >= args.baseline:
                baseline_rss = rss
            p50, p99 = percentiles(window)
            row = {"requests": done, "seconds": round(time.monotonic() - started, 1), "rss_mb": round(rss / 2**20, 1),
                   "p50_ms": p50, "p99_ms": p99, "hostile": hostile, "errors": errors}
            rows.append(row)
            print(f"{done:>9} {row['seconds']:>8} {row['rss_mb']:>8} {p50:>8} {p99:>8} {hostile:>8} {errors:>7}",
                  flush=True)
            reported, good_reported = done, good_done
        if not alive and done == reported:
            break
        time.sleep(0.2)
    final_rss = get_json(url, "/stats")[1]["process"]["rss_bytes"]
    seconds = round(time.monotonic() - started, 1)
    summary: dict[str, Any] = {"requests": len(driver.latencies), "errors": len(driver.errors), **driver.counts, "seconds": seconds,
               "engines": engines}
    summary["rss_start_mb"] = round(start_rss / 2**20, 1)
    summary["rss_end_mb"] = round(final_rss / 2**20, 1)
    if baseline_rss is not None:
        summary["rss_baseline_mb"] = round(baseline_rss / 2**20, 1)
        summary["rss_growth_mb_after_baseline"] = round((final_rss - baseline_rss) / 2**20, 2)
    summary["good_p50_ms"], summary["good_p99_ms"] = percentiles(driver.good_latencies)
    if driver.hostile_latencies:
        summary["hostile_p50_ms"], summary["hostile_p99_ms"] = percentiles(driver.hostile_latencies)
    summary["throughput_rps"] = round(summary["requests"] / max(seconds, 1e-9), 1)
    print(json.dumps(summary), flush=True)
    if driver.kinds:
        print("hostile kinds (sent/failed): " + ", ".join(
            f"{kind} {counts['sent']}/{counts['failed']}" for kind, counts in sorted(driver.kinds.items())), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "hostile_kinds": driver.kinds},
                                              indent=2))
    if driver.errors:
        print(f"first errors: {driver.errors[:5]}", file=sys.stderr)
    return 1 if driver.errors else 0


if __name__ == "__main__":
    sys.exit(main())

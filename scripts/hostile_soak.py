#!/usr/bin/env python3
"""Hostile soak: drive every front door at once, good and hostile traffic, and watch 5xx, RSS and latency.

Bounded in time and count, 127.0.0.1 only. Starts its own server (``python -m app``, HTTP and
gRPC) over two small digit models it builds in a temporary folder (or ``--graphs-dir``), then:

1. **baseline**: good traffic only, on all five doors (our REST, TF Serving REST and gRPC,
   KServe v2 REST and gRPC): real digit images whose answer is known (learnt from our REST
   door first; every door must give the same class);
2. **gzip**: the same good traffic, plus 8 concurrent v2 binary requests, each 32 MiB of
   zero-length BYTES elements gzip-compressed (a ~50 KB body), sent again and again;
3. **hostile**: the same good traffic, plus a hostile mix on every door: the fuzz cases of
   ``tests/test_fuzz_doors.py`` (wrong types, deep nesting, unicode versions, lying lengths,
   bombs, encoded slashes, raw bytes to every gRPC method) and the amplification cases: one
   32 MiB v2 binary request of zero-length BYTES, 1M ``{"b64": ""}`` instances on TF Serving
   REST, gRPC ``raw_input_contents`` of millions of zero-length elements.

    .venv/bin/python scripts/hostile_soak.py --seconds 60 --out /tmp/hostile.json

A hostile request may get any answer but a 5xx (HTTP) or INTERNAL/UNKNOWN (gRPC), and no
connection error; a good one must be 200/OK with the known class. Prints per door the
request count and the 5xx/INTERNAL count; the server's peak RSS over the baseline phase's
start (psutil, every ~50 ms) per phase; good p50/p99 per phase, and the gzip phase's p50 over
the baseline's. Exit code 1 on any 5xx/INTERNAL, connection error or wrong answer.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import json
import random
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from soak import free_port, percentiles, start_server  # noqa: E402

DOORS = ("our_rest", "tf_rest", "v2_rest", "tf_grpc", "v2_grpc")
MIB = 1 << 20
BAD_GRPC = ("INTERNAL", "UNKNOWN")


# -- payloads ----------------------------------------------------------------------------------------


def digits_graphs(root: Path) -> tuple[Path, list[bytes]]:
    from tests.digits import digit_data, png_bytes, train_weights, write_model

    data = digit_data()
    weights = train_weights(data)
    write_model(root, "digits8", weights, size=8)
    write_model(root, "digits16", weights, size=16)
    return root, [png_bytes(image) for image in data.test_images[:20]]


def v2_binary(raw: bytes, count: int) -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [count],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, str(len(header))


def zero_length_bytes(total: int) -> tuple[bytes, str]:
    """A v2 binary body of ``total`` bytes (about): zero-length BYTES elements, 4 bytes each."""
    count = (total - 200) // 4
    return v2_binary(b"\0\0\0\0" * count, count)


def tf_predict_grpc(image: bytes) -> bytes:
    from tensorflow.core.framework import tensor_pb2, types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits8"
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[image])
    tensor.tensor_shape.dim.add(size=1)
    request.inputs["images"].CopyFrom(tensor)
    return request.SerializeToString()


def v2_infer_grpc(raw: bytes, count: int) -> bytes:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="digits8")
    request.inputs.add(name="image", datatype="BYTES", shape=[count])
    request.raw_input_contents.append(raw)
    return request.SerializeToString()


@dataclass(frozen=True)
class Request:
    door: str
    method: str  # HTTP method, or the gRPC method path
    path: str = ""
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    note: str = ""


def good_requests(image: bytes) -> dict[str, Request]:
    b64 = base64.b64encode(image).decode()
    return {
        "our_rest": Request("our_rest", "POST", "/image_classification?model=digits8&top_k=1", image,
                            (("Content-Type", "image/png"),)),
        "tf_rest": Request("tf_rest", "POST", "/v1/models/digits8:predict",
                           json.dumps({"instances": [{"b64": b64}]}).encode(), (("Content-Type", "application/json"),)),
        "v2_rest": Request("v2_rest", "POST", "/v2/models/digits8/infer", json.dumps(
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [b64]}]}).encode(),
            (("Content-Type", "application/json"),)),
        "tf_grpc": Request("tf_grpc", "/tensorflow.serving.PredictionService/Predict", body=tf_predict_grpc(image)),
        "v2_grpc": Request("v2_grpc", "/inference.GRPCInferenceService/ModelInfer",
                           body=v2_infer_grpc(struct.pack("<I", len(image)) + image, 1)),
    }


def answer_class(door: str, body: bytes) -> int:
    """The class a good request's answer gives."""
    import numpy as np

    if door == "our_rest":
        return json.loads(body)["models"]["digits8"]["results"][0]["top_k"][0]["class_id"]
    if door == "tf_rest":
        return int(np.argmax(json.loads(body)["predictions"][0]["scores"]))
    if door == "v2_rest":
        return int(np.argmax(json.loads(body)["outputs"][0]["data"][:10]))
    if door == "tf_grpc":
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        return int(tf.make_ndarray(predict_pb2.PredictResponse.FromString(body).outputs["scores"])[0].argmax())
    from tritonclient.grpc import service_pb2

    raw = service_pb2.ModelInferResponse.FromString(body).raw_output_contents[0]
    return int(np.frombuffer(raw[:40], "<f4").argmax())


def hostile_requests(image: bytes) -> list[Request]:
    """The hostile mix: the fuzz's kinds of case on every door, and the amplification cases."""
    json_type = (("Content-Type", "application/json"),)
    b64 = base64.b64encode(image).decode()
    deep = "[" * 100_000 + "]" * 100_000
    bomb = gzip.compress(b"\0" * (64 * MIB), 6)
    member = gzip.compress(json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                   "data": [b64]}]}).encode())
    raw = struct.pack("<I", len(image)) + image
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    out = [
        # TF Serving REST
        Request("tf_rest", "POST", "/v1/models/digits8:predict", b'{"signature_name": 7, "instances": []}', json_type),
        Request("tf_rest", "POST", "/v1/models/digits8:predict",
                json.dumps({"signature_name": {"a": [1]}, "instances": [{"b64": b64}]}).encode(), json_type),
        Request("tf_rest", "POST", "/v1/models/digits8:predict",
                json.dumps({"output_filter": [[1]], "instances": [{"b64": b64}]}).encode(), json_type),
        Request("tf_rest", "POST", "/v1/models/digits8:predict", b'{"instances":' + deep.encode() + b"}", json_type),
        Request("tf_rest", "POST", "/v1/models/digits8/versions/%D9%A1:predict",
                json.dumps({"instances": [{"b64": b64}]}).encode(), json_type, "version ١"),
        Request("tf_rest", "GET", "/v1/models/digits8/versions/" + "9" * 30),
        Request("tf_rest", "GET", "/v1/models//metadata"),
        Request("tf_rest", "POST", "/v1/models/%2Ftmp%2Fx:predict", b"{}", json_type),
        Request("tf_rest", "POST", "/v1/models/digits8:predict", b'{"instances": [{"b64": "%%%"}]}', json_type),
        Request("tf_rest", "POST", "/v1/models/digits8:predict", bomb, (*json_type, ("Content-Encoding", "gzip"))),
        Request("tf_rest", "POST", "/v1/models/digits8:predict", bytes(range(256)), json_type),
        # KServe v2 REST
        Request("v2_rest", "POST", "/v2/models/digits8/infer",
                json.dumps({"inputs": [{"name": [[1]], "datatype": "BYTES", "shape": [1], "data": [b64]}]}).encode(),
                json_type),
        Request("v2_rest", "POST", "/v2/models/digits8/infer",
                json.dumps({"inputs": [{"name": "image", "datatype": 5, "shape": "1", "data": b64}]}).encode(), json_type),
        Request("v2_rest", "POST", "/v2/models/digits8/infer", b'{"inputs":' + deep.encode() + b"}", json_type),
        Request("v2_rest", "POST", "/v2/models/digits8/infer", header + raw,
                (("Inference-Header-Content-Length", "\u00b2".encode().decode("latin-1")),), "IHCL ²"),
        Request("v2_rest", "POST", "/v2/models/digits8/infer", header + raw, (("Inference-Header-Content-Length", "-1"),)),
        Request("v2_rest", "POST", "/v2/models/digits8/infer", header + raw,
                (("Inference-Header-Content-Length", str(2**63)),)),
        Request("v2_rest", "POST", "/v2/models/digits8/infer", header + raw[:-5],
                (("Inference-Header-Content-Length", str(len(header))),), "binary_data_size lies"),
        Request("v2_rest", "POST", "/v2/models/digits8/infer", header + struct.pack("<I", 2**32 - 1) + raw[4:],
                (("Inference-Header-Content-Length", str(len(header))),), "BYTES length prefix lies"),
        Request("v2_rest", "POST", "/v2/models/digits8/versions/%C2%B2/infer", member,
                (*json_type, ("Content-Encoding", "gzip"))),
        Request("v2_rest", "GET", "/v2/models//ready"),
        Request("v2_rest", "POST", "/v2/models/digits8/infer", bomb, (*json_type, ("Content-Encoding", "gzip"))),
        Request("v2_rest", "POST", "/v2/models/digits8/infer", zlib_bomb(), (*json_type, ("Content-Encoding", "deflate"))),
        Request("v2_rest", "POST", "/v2/models/digits8/infer", member + b"trailing garbage",
                (*json_type, ("Content-Encoding", "gzip"))),
        # our REST
        Request("our_rest", "POST", "//admin//reload"),
        Request("our_rest", "POST", "/image_classification", bomb, (("Content-Type", "image/png"),
                                                                    ("Content-Encoding", "gzip"))),
    ]
    # amplification: (a) 32 MiB of zero-length BYTES; (c) 1M tiny instances; (d) millions of zero-length raw elements
    body, length = zero_length_bytes(32 * MIB - 1024)
    out.append(Request("v2_rest", "POST", "/v2/models/digits8/infer", body,
                       (("Inference-Header-Content-Length", length),), "(a) 32 MiB zero-length BYTES"))
    instances = b'{"instances":[' + b",".join([b'{"b64":""}'] * 1_000_000) + b"]}"
    out.append(Request("tf_rest", "POST", "/v1/models/digits8:predict", instances, json_type, "(c) 1M tiny instances"))
    count = 4_000_000
    out.append(Request("v2_grpc", "/inference.GRPCInferenceService/ModelInfer",
                       body=v2_infer_grpc(b"\0\0\0\0" * count, count), note="(d) 4M zero-length raw elements"))
    # gRPC structure-aware and raw bytes
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits8"
    request.model_spec.version.value = -1
    request.inputs["images"].CopyFrom(tensor_pb2.TensorProto(dtype=9999, string_val=[image]))
    request.inputs["images"].tensor_shape.dim.add(size=2**62)
    out.append(Request("tf_grpc", "/tensorflow.serving.PredictionService/Predict", body=request.SerializeToString(),
                       note="dtype 9999, dim 2**62, version -1"))
    for method in ("/tensorflow.serving.PredictionService/Predict", "/tensorflow.serving.PredictionService/Classify",
                   "/tensorflow.serving.PredictionService/GetModelMetadata",
                   "/tensorflow.serving.ModelService/GetModelStatus"):
        out.append(Request("tf_grpc", method, body=b"\xff\x00garbage", note="raw bytes"))
    for method in ("ModelInfer", "ModelMetadata", "ModelReady", "ServerLive"):
        out.append(Request("v2_grpc", f"/inference.GRPCInferenceService/{method}", body=b"\xff\x00garbage",
                           note="raw bytes"))
    out.append(Request("v2_grpc", "/inference.GRPCInferenceService/ModelInfer",
                       body=v2_infer_grpc(struct.pack("<I", 2**32 - 1) + image, 1), note="length prefix lies"))
    return out


def zlib_bomb() -> bytes:
    import zlib

    return zlib.compress(b"\0" * (64 * MIB), 9)


# -- sending ----------------------------------------------------------------------------------------------


class Sender:
    """One client thread's connections: a keep-alive HTTP connection and a gRPC channel."""

    def __init__(self, http_port: int, grpc_port: int, timeout: float) -> None:
        import grpc

        self.http_port, self.timeout = http_port, timeout
        self.connection: http.client.HTTPConnection | None = None
        self.channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}", options=[
            ("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", 64 * MIB)])

    def send(self, request: Request) -> tuple[str, bytes]:
        """(status: an HTTP status or a gRPC code name, or 'connection error: ...', body)."""
        if request.door.endswith("grpc"):
            import grpc

            call: Any = self.channel.unary_unary(request.method, request_serializer=None, response_deserializer=None)
            try:
                return "OK", call(request.body, timeout=self.timeout)
            except grpc.RpcError as error:
                code = error.code()
                if code == grpc.StatusCode.UNAVAILABLE and "connect" in (error.details() or "").lower():
                    return f"connection error: {error.details()}", b""
                return code.name, (error.details() or "").encode()
        for attempt in (0, 1):
            if self.connection is None:
                self.connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=self.timeout)
            try:
                self.connection.putrequest(request.method, request.path, skip_accept_encoding=True)
                headers = dict(request.headers)
                for name, value in headers.items():
                    self.connection.putheader(name, value)
                self.connection.putheader("Content-Length", str(len(request.body)))
                self.connection.endheaders(request.body)
                response = self.connection.getresponse()
                body = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.connection.close()
                    self.connection = None
                return str(response.status), body
            except (OSError, http.client.HTTPException) as error:
                if self.connection is not None:
                    self.connection.close()
                self.connection = None
                if attempt or request.body and len(request.body) > MIB:
                    # a server may close the connection on a refused big body before reading it (not a crash)
                    if isinstance(error, (BrokenPipeError, ConnectionResetError)) and len(request.body) > MIB:
                        return "closed-early", b""
                    return f"connection error: {error!r}", b""
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.channel.close()


# -- the run ------------------------------------------------------------------------------------------------


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = defaultdict(int)
        self.server_errors: dict[str, int] = defaultdict(int)
        self.latency: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.failures: list[str] = []

    def record(self, phase: str, request: Request, status: str, body: bytes, elapsed: float, *,
               good: bool, expected: int | None = None) -> None:
        problem = ""
        if status.startswith("connection error"):
            problem = status
        elif status.isdigit() and int(status) >= 500 or status in BAD_GRPC:
            problem = f"{status}: {body[:200]!r}"
        elif good:
            if status not in ("200", "OK"):
                problem = f"good request answered {status}: {body[:200]!r}"
            else:
                try:
                    got = answer_class(request.door, body)
                except Exception as error:  # noqa: BLE001 - any unreadable answer is a failure
                    problem = f"unreadable answer: {error!r}"
                else:
                    if got != expected:
                        problem = f"wrong answer: class {got}, expected {expected}"
        with self.lock:
            self.requests[request.door] += 1
            if status.isdigit() and int(status) >= 500 or status in BAD_GRPC:
                self.server_errors[request.door] += 1
            if good and not problem:
                self.latency[phase][request.door].append(elapsed)
            if problem and len(self.failures) < 200:
                note = request.note or repr(request.body[:80])
                self.failures.append(f"[{phase}] {request.door} {request.method} {request.path[:100]} "
                                     f"{note}: {problem}")


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process(pid)
        self.phase = "start"
        self.peak: dict[str, int] = defaultdict(int)
        self.baseline = self.process.memory_info().rss
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.05):
            try:
                rss = self.process.memory_info().rss
            except Exception:  # noqa: BLE001 - the server went away: the run reports it
                return
            phase = self.phase
            self.peak[phase] = max(self.peak[phase], rss)


def run(args: argparse.Namespace, http_port: int, grpc_port: int, pid: int, images: list[bytes]) -> dict:
    stats = Stats()
    probe = Sender(http_port, grpc_port, args.timeout)
    goods = [good_requests(image) for image in images]
    expected = []  # the class of each image, from our REST door
    for good in goods:
        status, body = probe.send(good["our_rest"])
        if status != "200":
            raise SystemExit(f"our REST door refused a good image: {status} {body[:200]!r}")
        expected.append(answer_class("our_rest", body))
    hostile = hostile_requests(images[0])
    gzip_body, gzip_length = zero_length_bytes(32 * MIB - 1024)
    gzipped = Request("v2_rest", "POST", "/v2/models/digits8/infer", gzip.compress(gzip_body, 9),
                      (("Inference-Header-Content-Length", gzip_length), ("Content-Encoding", "gzip")),
                      "(b) 32 MiB zero-length BYTES, gzip")
    probe.close()
    sampler = RssSampler(pid)
    sampler.start()
    # each phase sends for its share of --seconds; a request still running at a phase's end gets --timeout
    hard_stop = time.monotonic() + args.seconds + 3 * (args.timeout + 30)
    shares = {"baseline": 0.3, "gzip": 0.3, "hostile": 0.4}
    wanted = [phase for phase in shares if phase in args.phases.split(",")]
    total = sum(shares[phase] for phase in wanted)
    phases = [(phase, args.seconds * shares[phase] / total) for phase in wanted]
    sent = [0]
    count_lock = threading.Lock()

    def budget() -> bool:
        with count_lock:
            if sent[0] >= args.max_requests or time.monotonic() > hard_stop:
                return False
            sent[0] += 1
            return True

    def good_client(door: str, phase: str, stop: threading.Event, seed: int) -> None:
        sender = Sender(http_port, grpc_port, args.timeout)
        chooser = random.Random(seed)
        try:
            while not stop.is_set() and budget():
                i = chooser.randrange(len(goods))
                started = time.perf_counter()
                status, body = sender.send(goods[i][door])
                stats.record(phase, goods[i][door], status, body, time.perf_counter() - started, good=True,
                             expected=expected[i])
        finally:
            sender.close()

    def hostile_client(requests: list[Request], phase: str, stop: threading.Event, seed: int) -> None:
        sender = Sender(http_port, grpc_port, args.timeout)
        order = list(requests)
        random.Random(seed).shuffle(order)
        at = 0
        try:
            while not stop.is_set() and budget():
                request = order[at % len(order)]
                at += 1
                status, body = sender.send(request)
                stats.record(phase, request, status, body, 0.0, good=False)
        finally:
            sender.close()

    report: dict = {"phases": {}}
    for phase, seconds in phases:
        sampler.phase = phase
        stop = threading.Event()
        threads = [threading.Thread(target=good_client, daemon=True, args=(door, phase, stop, 100 * n + k))
                   for n, door in enumerate(DOORS) for k in range(args.concurrency)]
        if phase == "gzip":
            threads += [threading.Thread(target=hostile_client, daemon=True, args=([gzipped], phase, stop, k)) for k in range(8)]
        elif phase == "hostile":
            threads += [threading.Thread(target=hostile_client, daemon=True, args=(hostile, phase, stop, k))
                        for k in range(max(2, args.concurrency))]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        stop.set()
        drain_until = time.monotonic() + args.timeout + 30
        for thread in threads:
            thread.join(timeout=max(0.1, drain_until - time.monotonic()))
        stuck = sum(thread.is_alive() for thread in threads)
        if stuck:
            stats.failures.append(f"[{phase}] {stuck} client(s) still waiting {args.timeout + 30:.0f} s after the phase")
        peak = sampler.peak.get(phase, sampler.baseline)
        latency = stats.latency[phase]
        every = [s for values in latency.values() for s in values]
        report["phases"][phase] = {
            "seconds": round(seconds, 1),
            "peak_rss_over_baseline_mib": round((peak - sampler.baseline) / MIB, 1),
            "good_p50_p99_ms": percentiles(every),
            "good_count": len(every),
            "per_door_p50_p99_ms": {door: percentiles(latency[door]) for door in DOORS},
        }
    sampler.stopping.set()
    nan = float("nan")
    base = report["phases"].get("baseline", {}).get("good_p50_p99_ms", (nan,))[0]
    during = report["phases"].get("gzip", {}).get("good_p50_p99_ms", (nan,))[0]
    report.update({
        "requests_per_door": {door: stats.requests[door] for door in DOORS},
        "server_errors_per_door": {door: stats.server_errors[door] for door in DOORS},
        "baseline_rss_mib": round(sampler.baseline / MIB, 1),
        "gzip_phase_p50_ratio": round(during / base, 2) if base and base == base and during == during else None,
        "failures": stats.failures,
    })
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="the whole run, all phases (default 60)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many in any case")
    parser.add_argument("--concurrency", type=int, default=1, help="good-traffic clients per door (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    parser.add_argument("--graphs-dir", help="graphs to serve (default: two digit models built in a temp folder; "
                                             "must serve 'digits8')")
    parser.add_argument("--phases", default="baseline,gzip,hostile",
                        help="which phases to run, comma-separated, in this order (default: all three)")
    parser.add_argument("--out", help="also write the report as JSON to this file")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hostile-soak-") as scratch:
        built, images = digits_graphs(Path(scratch))
        graphs = args.graphs_dir or str(built)
        grpc_port = free_port()
        process, url = start_server(graphs, ["--grpc-port", str(grpc_port)])
        http_port = int(url.rsplit(":", 1)[1])
        try:
            report = run(args, http_port, grpc_port, process.pid, images)
            report["server_exit"] = process.poll()  # None: still up, as it must be
            report["cpu"] = cpu_name()
            print_report(report)  # before stopping: a server with stuck requests drains for its grace period
            sys.stdout.flush()
            if args.out:
                Path(args.out).write_text(json.dumps(report, indent=2))
        finally:
            process.terminate()
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
    failed = report["failures"] or any(report["server_errors_per_door"].values()) or report["server_exit"] is not None
    return 1 if failed else 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                import os

                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return "unknown"


def print_report(report: dict) -> None:
    print(f"cpu: {report['cpu']}")
    print(f"{'door':10} {'requests':>9} {'5xx/INTERNAL':>13}")
    for door in DOORS:
        print(f"{door:10} {report['requests_per_door'][door]:>9} {report['server_errors_per_door'][door]:>13}")
    print(f"baseline RSS: {report['baseline_rss_mib']} MiB")
    for phase, figures in report["phases"].items():
        p50, p99 = figures["good_p50_p99_ms"]
        print(f"phase {phase:9} peak RSS over baseline {figures['peak_rss_over_baseline_mib']:>8} MiB   "
              f"good p50 {p50} ms p99 {p99} ms ({figures['good_count']} good)")
    print(f"gzip phase good p50 / baseline p50: {report['gzip_phase_p50_ratio']}")
    print(f"failures: {len(report['failures'])}")
    for failure in report["failures"][:40]:
        print("  " + failure[:400])


if __name__ == "__main__":
    sys.exit(main())

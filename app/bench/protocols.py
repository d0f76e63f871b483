"""Phase 4: one server, the same image over each protocol it speaks, answers checked, then measured.

The service has five front doors: our multipart API, TF Serving REST and gRPC, KServe v2 REST and
gRPC. Each protocol's request is encoded once by that protocol's official client library (the
bytes real clients send), every protocol must give the same top-1 class, and then client
processes replay those bytes. ``protocol_table`` is the phase's table in bench.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .load import ProcessRun, keep_alive_posts, run_and_report
from .points import Point, Stream, fmt, print_progress
from .service import free_port, http_request, measured_point, serving

PROTOCOLS = ("multipart", "tfs-rest", "v2-rest", "tfs-grpc", "v2-grpc")
PROTOCOL_LABELS = {
    "multipart": "own API, multipart (POST /image_classification)",
    "tfs-rest": "TF Serving REST, b64 JSON (:predict)",
    "v2-rest": "KServe v2 REST, binary data extension",
    "tfs-grpc": "TF Serving gRPC (PredictionService/Predict)",
    "v2-grpc": "KServe v2 gRPC (ModelInfer)",
}


@dataclass(frozen=True)
class Wire:
    """One request of a protocol, encoded once: the bytes its official client puts on the wire."""

    protocol: str
    target: str  # HTTP path, or the gRPC method
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  # HTTP only

    @property
    def grpc(self) -> bool:
        return self.protocol.endswith("-grpc")


protocol_wires_cache: dict[str, Wire] = {}  # protocol -> its request, for the run in progress


def protocol_wires(model: str, image: bytes) -> dict[str, Wire]:
    """Each protocol's request for one image, built with that protocol's own client library."""
    import base64

    import tensorflow as tf
    import tritonclient.http as tritonhttp
    from tensorflow_serving.apis import predict_pb2
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import serialize_byte_tensor

    boundary = "graphserve-bench-boundary"
    multipart = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="image.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + image + f"\r\n--{boundary}--\r\n".encode()
    tfs_rest = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
    v2_input = tritonhttp.InferInput("image", [1], "BYTES")
    v2_input.set_data_from_numpy(np.array([image], dtype=object))  # binary_data=True, tritonclient's default
    v2_body, header_length = tritonhttp.InferenceServerClient.generate_request_body([v2_input])
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = model
    predict.model_spec.signature_name = "serving_default"
    predict.inputs["images"].CopyFrom(tf.make_tensor_proto([image]))
    infer = service_pb2.ModelInferRequest(model_name=model)
    infer.inputs.add(name="image", datatype="BYTES", shape=[1])
    infer.raw_input_contents.append(serialize_byte_tensor(np.array([image], dtype=object)).item())
    return {
        "multipart": Wire("multipart", f"/image_classification?model={model}&top_k=5", multipart,
                          {"Content-Type": f"multipart/form-data; boundary={boundary}"}),
        "tfs-rest": Wire("tfs-rest", f"/v1/models/{model}:predict", tfs_rest, {"Content-Type": "application/json"}),
        "v2-rest": Wire("v2-rest", f"/v2/models/{model}/infer", v2_body,
                        {"Content-Type": "application/octet-stream",
                         "Inference-Header-Content-Length": str(header_length)}),
        "tfs-grpc": Wire("tfs-grpc", "/tensorflow.serving.PredictionService/Predict", predict.SerializeToString()),
        "v2-grpc": Wire("v2-grpc", "/inference.GRPCInferenceService/ModelInfer", infer.SerializeToString()),
    }

def protocol_top1(
    protocol: str, model: str, image: bytes, url: str, grpc_port: int, labels: list[str]
) -> dict[str, Any]:
    """One request with the protocol's official client (or our API as documented): its top-1 class."""
    if protocol == "multipart":
        wire = protocol_wires_cache[protocol]
        status, body = http_request(url, "POST", wire.target, wire.body, wire.headers)
        if status != 200:
            raise SystemExit(f"multipart answered {status}: {body[:300]!r}")
        top = json.loads(body)["models"][model]["results"][0]["top_k"][0]
        return {"class_id": top["class_id"], "label": top["label"], "score": round(top["score"], 4)}
    if protocol == "tfs-rest":
        wire = protocol_wires_cache[protocol]
        status, body = http_request(url, "POST", wire.target, wire.body, wire.headers)
        if status != 200:
            raise SystemExit(f"TF Serving REST answered {status}: {body[:300]!r}")
        row = json.loads(body)["predictions"][0]
        scores = np.asarray(row["scores"] if isinstance(row, dict) else row)
    elif protocol == "v2-rest":
        import tritonclient.http as tritonhttp

        client = tritonhttp.InferenceServerClient(url.removeprefix("http://"))
        try:
            tensor = tritonhttp.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([image], dtype=object))
            scores = client.infer(model, [tensor]).as_numpy("scores")[0]
        finally:
            client.close()
    elif protocol == "tfs-grpc":
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            request = predict_pb2.PredictRequest.FromString(protocol_wires_cache[protocol].body)
            answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
            scores = tf.make_ndarray(answer.outputs["scores"])[0]
    else:
        import tritonclient.grpc as tritongrpc

        client = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            tensor = tritongrpc.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([image], dtype=object))
            scores = client.infer(model, [tensor]).as_numpy("scores")[0]
        finally:
            client.close()
    best = int(np.argmax(scores))
    label = labels[best] if best < len(labels) else str(best)
    return {"class_id": best, "label": label, "score": round(float(scores[best]), 4)}

class ProtocolRun:
    """Client processes (not threads of this process) sending one protocol's pre-encoded request.

    Each client thread holds one keep-alive HTTP connection or one gRPC channel. The window
    starts only once every client is connected and ready, so process start-up is not timed.
    """

    def __init__(self, http_port: int, grpc_port: int, wire: Wire, concurrency: int) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process that has run TensorFlow
        self.results, self.ready = context.Queue(), context.Queue()
        self.go = context.Event()
        self.window = context.Array("d", 2)
        processes = min(concurrency, 4)
        shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
        port = grpc_port if wire.grpc else http_port
        self.workers = [
            context.Process(
                target=protocol_client_process,
                args=(port, wire, share, self.window, self.go, self.ready, self.results),
                daemon=True,
            )
            for share in shares
        ]
        for worker in self.workers:
            worker.start()
        self.pids = [worker.pid for worker in self.workers if worker.pid is not None]
        self.limit = time.monotonic() + 120

    def start(self, warmup: float, seconds: float) -> tuple[float, float]:
        """Once every client is ready (or one failed to be: ``finish`` reports it), open the window."""
        with contextlib.suppress(Exception):  # queue.Empty: a client died before it was ready
            for _ in self.workers:
                self.ready.get(timeout=max(1.0, self.limit - time.monotonic()))
        start = time.monotonic()
        self.window[0], self.window[1] = start + warmup, start + warmup + seconds
        self.limit = self.window[1] + 120
        self.go.set()
        return self.window[0], self.window[1]

    finish = ProcessRun.finish

def protocol_client_process(
    port: int, wire: Wire, connections: int, window: Any, go: Any, ready: Any, results: Any
) -> None:
    """``connections`` threads, each with its own connection or channel, until the window ends."""
    streams = [Stream() for _ in range(connections)]
    if wire.grpc:
        import grpc

        channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in streams]
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=60)
    ready.put(os.getpid())
    if not go.wait(timeout=120):
        return
    end = window[1]

    def http_loop(stream: Stream) -> None:
        for sent, done, status, error in keep_alive_posts(port, wire.target, wire.body, wire.headers, end):
            record(stream, sent, done, error or ("" if 200 <= status < 300 else f"HTTP {status}"))

    def grpc_loop(stream: Stream, channel: Any) -> None:
        import grpc

        call = channel.unary_unary(wire.target)  # bytes in, bytes out: the stub's own bytes on the wire
        while (sent := time.monotonic()) < end:
            try:
                call(wire.body, timeout=60)
                error = ""
            except grpc.RpcError as exc:
                error = f"{exc.code()}: {exc.details()}"
            record(stream, sent, time.monotonic(), error)
        channel.close()

    def record(stream: Stream, sent: float, done: float, error: str) -> None:
        if error:  # any failure counts, in the window or not
            stream.error(error)
        elif window[0] <= done < end:
            stream.completed(sent, done)

    if wire.grpc:
        threads = [threading.Thread(target=grpc_loop, args=pair) for pair in zip(streams, channels)]
    else:
        threads = [threading.Thread(target=http_loop, args=(stream,)) for stream in streams]
    run_and_report(threads, streams, results)

def protocol_point(
    url: str, grpc_port: int, wire: Wire, concurrency: int, server_pid: int, args: argparse.Namespace
) -> Point:
    load = ProtocolRun(int(url.rsplit(":", 1)[1]), grpc_port, wire, concurrency)
    window = load.start(args.warmup, args.seconds)
    return measured_point(load, window, url, server_pid, "protocol", wire.protocol, concurrency, args)

def measure_protocols(
    graphs_dir: Path, model: str, image: bytes, out: Path, args: argparse.Namespace
) -> tuple[list[Point], dict[str, dict[str, Any]]]:
    """The service (batched unless only ``direct`` is asked for) with its gRPC server on a free port;
    each protocol's answer is checked first (same top-1 everywhere), then measured."""
    [labels_path] = [path.with_name("labels.txt") for path in (graphs_dir / model).glob("*/model.json")]
    labels = labels_path.read_text(encoding="utf-8").splitlines() if labels_path.exists() else []
    protocol_wires_cache.clear()
    protocol_wires_cache.update(protocol_wires(model, image))
    mode = "batched" if "batched" in args.modes else args.modes[0]
    grpc_port = free_port()
    points, answers = [], {}
    with serving(graphs_dir, mode, args, out / "server-protocols.log", grpc_port=grpc_port) as (pid, url):
        for protocol in args.protocol_list:
            answers[protocol] = protocol_top1(protocol, model, image, url, grpc_port, labels)
            top = answers[protocol]
            print(f"protocol {protocol}: answers {top['label']} ({top['score']:.3f})", flush=True)
        if len({answer["class_id"] for answer in answers.values()}) > 1:
            raise SystemExit(f"the protocols disagree on the top-1 class: {answers}")
        warm = ProtocolRun(int(url.rsplit(":", 1)[1]), grpc_port, protocol_wires_cache[args.protocol_list[0]],
                           max(args.protocol_concurrency))
        warm.start(0.0, args.warmup)  # untimed: the server's first batches of each size allocate
        warm.finish()
        for protocol in args.protocol_list:
            for concurrency in args.protocol_concurrency:
                point = protocol_point(url, grpc_port, protocol_wires_cache[protocol], concurrency, pid, args)
                print_progress(point)
                points.append(point)
    return points, answers

def protocol_table(points: list[Point]) -> str:
    """One row per protocol: img/s and p50 at each concurrency."""
    protocols = list(dict.fromkeys(p.mode for p in points if p.phase == "protocol"))
    if not protocols:
        return ""
    levels = sorted({p.concurrency for p in points if p.phase == "protocol"})
    head = "| protocol | " + " | ".join(f"img/s @{c} | p50 ms @{c}" for c in levels) + " | errors |"
    lines = [head, "|---|" + "--:|--:|" * len(levels) + "--:|"]
    found = {(p.mode, p.concurrency): p for p in points if p.phase == "protocol"}
    for protocol in protocols:
        cells = []
        for level in levels:
            p = found.get((protocol, level))
            cells += [fmt(p.images_per_s if p else None), fmt(p.p50_ms if p else None, 2)]
        errors = sum(p.errors for p in points if p.phase == "protocol" and p.mode == protocol)
        lines.append(f"| {PROTOCOL_LABELS[protocol]} | " + " | ".join(cells) + f" | {errors} |")
    return "\n".join(lines) + "\n"

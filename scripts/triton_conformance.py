#!/usr/bin/env python3
"""Compare graphserve's KServe v2 REST answers with a real Triton's, shape by shape (not in CI).

A real Triton comes with the ``nvidia-pytriton`` wheel (Triton 2.51, CPU, Python backend). It
needs numpy < 2, so it gets its own virtual environment, outside the project's requirements::

    python3.11 -m venv /tmp/triton-venv
    /tmp/triton-venv/bin/pip install "numpy<2" nvidia-pytriton==0.7.0 requests
    .venv/bin/python -m app --port 8080 &          # graphserve, serving a 10-class model
    /tmp/triton-venv/bin/python scripts/triton_conformance.py --graphserve http://127.0.0.1:8080 \
        --model cifar10 --image cat.jpg

The script serves a stand-in model on Triton with our model's name, interface and class count
(``image`` BYTES in, ``scores`` FP32 [classes] out, batching on), sends the same requests to
both servers, and prints, per request, the status codes and the JSON *shapes* (keys and value
types; values that are expected to differ, such as scores, are not compared; metadata values
are shown). Exit code 1 when a shape or status differs in a way not listed in ``KNOWN`` (the
differences docs/compatible-apis.md documents).

Triton's Python stub in the pytriton 0.7.0 wheel links an older libpython 3.11 than a 3.11.7
stdlib expects (``'_thread.RLock' object has no attribute '_recursion_count'`` when the model
loads). If you see that, add at the top of the venv's ``pytriton/proxy/data.py``::

    import threading as _threading
    from multiprocessing import resource_tracker as _rt
    if not hasattr(_rt._resource_tracker._lock, "_recursion_count"):
        _rt._resource_tracker._lock = _threading._PyRLock()
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

import numpy as np
import requests

# Differences we know of and keep (docs/compatible-apis.md, "KServe v2" / "What differs from Triton"), by request.
KNOWN = {
    "metadata": "values: platform 'tensorflow_graphdef' (Triton's Python backend: 'python'); input shape [-1]"
                " (Triton with batching: [-1, 1] for a [1] input)",
    "metadata: version 1": "as 'metadata'",
    "classification": "values: scores differ (a stand-in model); Triton's model has no labels, so 'score:index'"
                      " (graphserve too, without labels.txt); graphserve's models here have labels: 'score:index:label'",
    "error: not JSON": "status: graphserve 400, Triton 500 for a body that is not JSON",
}


def shape_of(value: Any) -> Any:
    """Keys and types of a JSON value; lists by their first element."""
    if isinstance(value, dict):
        return {key: shape_of(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape_of(value[0])] if value else []
    return type(value).__name__


def start_triton(model: str, classes: int, http_port: int) -> Any:
    from pytriton.decorators import batch
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        return {"scores": np.full((image.shape[0], classes), 1.0 / classes, dtype=np.float32)}

    triton = Triton(config=TritonConfig(http_port=http_port, grpc_port=http_port + 1, metrics_port=http_port + 2))
    triton.bind(
        model_name=model,
        infer_func=infer,
        inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
        outputs=[Tensor(name="scores", dtype=np.float32, shape=(classes,))],
        config=ModelConfig(max_batch_size=8),
    )
    triton.run()
    return triton


def requests_to_compare(model: str, image: bytes) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    encoded = base64.b64encode(image).decode()

    def body(**tensor: Any) -> dict[str, Any]:
        return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1, 1], "data": [encoded], **tensor}]}

    return [
        ("server metadata", "GET", "/v2", None),
        ("live", "GET", "/v2/health/live", None),
        ("ready", "GET", "/v2/health/ready", None),
        ("metadata", "GET", f"/v2/models/{model}", None),
        ("metadata: version 1", "GET", f"/v2/models/{model}/versions/1", None),
        ("model ready", "GET", f"/v2/models/{model}/ready", None),
        ("infer JSON", "POST", f"/v2/models/{model}/infer", body()),
        ("infer JSON with id", "POST", f"/v2/models/{model}/infer", {"id": "r1", **body()}),
        ("classification", "POST", f"/v2/models/{model}/infer",
         {**body(), "outputs": [{"name": "scores", "parameters": {"classification": 3}}]}),
        ("error: unknown model", "POST", "/v2/models/nope/infer", body()),
        ("error: unknown version", "POST", f"/v2/models/{model}/versions/9/infer", body()),
        ("error: metadata of unknown model", "GET", "/v2/models/nope", None),
        ("error: ready of unknown model", "GET", "/v2/models/nope/ready", None),
        ("error: wrong input name", "POST", f"/v2/models/{model}/infer", body(name="input")),
        ("error: wrong datatype", "POST", f"/v2/models/{model}/infer", body(datatype="FP32", data=[1.0])),
        ("error: unknown output", "POST", f"/v2/models/{model}/infer", {**body(), "outputs": [{"name": "labels"}]}),
        ("error: not JSON", "POST", f"/v2/models/{model}/infer", "not json"),  # type: ignore[list-item]
    ]


def call(base: str, method: str, path: str, payload: Any) -> tuple[int, Any]:
    if isinstance(payload, str):
        response = requests.request(method, base + path, data=payload, timeout=30)
    else:
        response = requests.request(method, base + path, json=payload, timeout=30)
    try:
        return response.status_code, response.json() if response.content else None
    except ValueError:
        return response.status_code, response.text[:80]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graphserve", required=True, help="graphserve's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", required=True, help="a model graphserve serves")
    parser.add_argument("--image", required=True, help="an image file the model accepts")
    parser.add_argument("--triton-port", type=int, default=18000, help="Triton's HTTP port (+1 gRPC, +2 metrics)")
    args = parser.parse_args(argv)

    metadata = requests.get(f"{args.graphserve}/v2/models/{args.model}", timeout=10).json()
    classes = metadata["outputs"][0]["shape"][1]
    with open(args.image, "rb") as file:
        image = file.read()
    triton = start_triton(args.model, classes, args.triton_port)
    triton_url = f"http://127.0.0.1:{args.triton_port}"
    unexplained = 0
    try:
        for name, method, path, payload in requests_to_compare(args.model, image):
            ours_status, ours = call(args.graphserve, method, path, payload)
            theirs_status, theirs = call(triton_url, method, path, payload)
            same = shape_of(ours) == shape_of(theirs)
            status_class = "same" if ours_status == theirs_status else f"ours {ours_status}, Triton {theirs_status}"
            print(f"== {name}: status {ours_status if ours_status == theirs_status else status_class}; "
                  f"JSON shape {'same' if same else 'DIFFERS'}")
            if not same:
                print(f"   graphserve: {json.dumps(ours)[:300]}")
                print(f"   Triton:     {json.dumps(theirs)[:300]}")
                if name not in KNOWN:
                    unexplained += 1
            elif ours_status != theirs_status or (name.startswith(("metadata", "classification")) and ours != theirs):
                print(f"   graphserve: {json.dumps(ours)[:300]}\n   Triton:     {json.dumps(theirs)[:300]}")
                if name not in KNOWN and ours_status != theirs_status:
                    unexplained += 1
        for key, why in KNOWN.items():
            print(f"-- known, {key}: {why}")
    finally:
        triton.stop()
    print(f"{unexplained} unexplained difference(s)")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())

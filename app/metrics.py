"""Latency, traffic and memory figures: Prometheus metrics for ``/metrics``, a JSON view for ``/stats``.

Each app owns its own ``CollectorRegistry`` (tests build many apps in one process).
Latency is recorded per model and stage: ``queue`` (waiting for a batch), ``run`` (the one
``sess.run``: decode + preprocessing + inference), ``postprocess`` (top-k, labels) and
``total`` (request start to that model's answer). Memory gauges are read when scraped.
For ``/stats`` a window of recent totals per model gives p50/p90/p99 without a histogram's
bucket resolution.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector

from . import memory

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # the *_created series double the exposition and nobody graphs them
STAGES = ("load", "queue", "run", "postprocess", "total")  # load: a request that waited for a load on demand
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
WINDOW = 2048  # recent requests per model kept for /stats percentiles
# The protocol of an HTTP request, from its route's prefix; anything else is our own REST API.
HTTP_PROTOCOLS = (("/v1/", "tfserving_rest"), ("/v2", "kserve_v2_rest"))
OWN_PROTOCOL = "graphserve_rest"


def http_protocol(endpoint: str) -> str:
    return next((protocol for prefix, protocol in HTTP_PROTOCOLS if endpoint.startswith(prefix)), OWN_PROTOCOL)


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.models: Any = None  # the ModelRegistry, attached by watch(); read on scrape
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, cpu seconds, fds
        self.latency = Histogram(
            "graphserve_model_latency_seconds", "Time per stage of a request, per model.",
            ["model", "version", "stage"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "graphserve_batch_size", "Images per sess.run.", ["model", "version"],
            buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.model_requests = Counter(
            "graphserve_model_requests_total", "Requests per model and HTTP status.",
            ["model", "version", "status"], registry=self.registry,
        )
        self.images = Counter(
            "graphserve_model_images_total", "Images classified per model.", ["model", "version"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "graphserve_http_requests_total", "HTTP requests by endpoint and status.", ["endpoint", "status"],
            registry=self.registry,
        )
        self.requests = Counter(
            "graphserve_requests_total",
            "Requests by protocol (graphserve_rest, tfserving_rest, tfserving_grpc, kserve_v2_rest, kserve_v2_grpc) "
            "and status (HTTP status; gRPC: the status code's name).",
            ["protocol", "status"], registry=self.registry,
        )
        self.grpc_requests = Counter(
            "graphserve_grpc_requests_total", "gRPC calls by method and status code.", ["method", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "graphserve_errors_total", "Error answers by error code.", ["code"], registry=self.registry
        )
        self.http_cut_off = Counter(
            "graphserve_http_cut_off_total",
            "Connections cut off for not sending their request in time (silent: nothing sent; headers; body).",
            ["reason"], registry=self.registry,
        )
        self.cold_loads = Histogram(
            "graphserve_model_load_seconds", "Seconds to load and warm up a version, by why it loaded "
            "(startup, reload, request, prefill, admin).", ["reason"],
            buckets=(0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0), registry=self.registry,
        )
        self.residency: Any = None  # the Residency (memory budget), attached by watch(); read on scrape
        self.registry.register(_MemoryCollector(self))
        self._windows: dict[tuple[str, int], deque[float]] = {}  # per (model, version): never mixed
        self._window_lock = threading.Lock()

    def watch(self, models: Any, residency: Any = None) -> None:
        """Read per-model gauges from ``models`` (a ``ModelRegistry``) and the memory budget
        from ``residency`` (an ``app.residency.Residency``) on every scrape."""
        self.models = models
        self.residency = residency

    def observe_load(self, reason: str, seconds: float) -> None:
        self.cold_loads.labels(reason).observe(seconds)

    # -- recording (hot path: a few dict lookups and atomic adds) -------------------------

    def observe_batch(self, model: str, version: int, size: int, queue_seconds: float = 0.0,
                      run_seconds: float = 0.0) -> None:
        """The registry's ``BatchObserver``: one call per ``predict`` of a runner."""
        self.batch_size.labels(model, str(version)).observe(size)

    def observe_model(self, model: str, version: int, images: int, seconds: dict[str, float]) -> None:
        version_label = str(version)
        for stage, value in seconds.items():
            self.latency.labels(model, version_label, stage).observe(value)
        self.images.labels(model, version_label).inc(images)
        self._window(model, version).append(seconds["total"])

    def observe_request(self, endpoint: str, status: int, models: Iterable[tuple[str, int]], error_code: str | None) -> None:
        self.http_requests.labels(endpoint, str(status)).inc()
        self.requests.labels(http_protocol(endpoint), str(status)).inc()
        for model, version in models:
            self.model_requests.labels(model, str(version), str(status)).inc()
        if error_code:
            self.errors.labels(error_code).inc()

    def observe_rpc(self, protocol: str, method: str, code: str, http_status: int,
                    models: Iterable[tuple[str, int]], error_code: str | None) -> None:
        """One gRPC call; its models count in ``graphserve_model_requests_total`` under the HTTP
        status its protocol gives the code (200 for OK), so /stats adds up every protocol."""
        self.grpc_requests.labels(method, code).inc()
        self.requests.labels(protocol, code).inc()
        for model, version in models:
            self.model_requests.labels(model, str(version), str(http_status)).inc()
        if error_code:
            self.errors.labels(error_code).inc()

    def _window(self, model: str, version: int) -> deque[float]:
        key = (model, version)
        window = self._windows.get(key)
        if window is None:
            with self._window_lock:
                window = self._windows.setdefault(key, deque(maxlen=WINDOW))
        return window

    # -- reading ------------------------------------------------------------------------

    def _handles(self) -> list[Any]:
        return [] if self.models is None else self.models.handles()

    def _version_stats(self, handle: Any, requests_samples: list[Any], gpu: Any) -> dict[str, Any]:
        servable = handle.servable
        load = servable.stats
        window = list(self._windows.get((servable.name, servable.version), ()))
        served = {
            sample.labels["status"]: int(sample.value)
            for sample in requests_samples
            if sample.labels["model"] == servable.name and sample.labels["version"] == str(servable.version)
        }
        return {
            "version": servable.version,
            "state": handle.state,
            "requests": served,
            "latency_ms": _percentiles(window),
            "graph": {
                "nodes_at_load": servable.node_count,
                "nodes_now": servable.current_node_count(),
                "finalized": servable.graph.finalized,
                "file_bytes": load.graph_bytes,
                "constant_bytes": load.constant_bytes,
            },
            "memory": {
                "rss_before_load_bytes": load.rss_before,
                "rss_after_load_bytes": load.rss_after_load,
                "rss_after_warmup_bytes": load.rss_after_warmup,
                "rss_cost_bytes": load.rss_cost,
                "gpu_cost_bytes": load.gpu_cost if gpu is not None else "not available",
            },
            "device": servable.device,
            "engine": servable.engine.to_json(),
            "load_seconds": round(load.load_seconds, 3),
            "warmup_seconds": round(load.warmup_seconds, 3),
            "queue_depth": handle.queue_depth(),
            "in_flight": handle.in_flight,
        }

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def stats(self) -> dict[str, Any]:
        """The /stats document: figures for humans and scripts."""
        gpu = memory.gpu_memory()
        requests_samples = [
            sample for metric in self.model_requests.collect() for sample in metric.samples
            if sample.name.endswith("_total")
        ]
        per_version: dict[str, dict[str, Any]] = {}
        for handle in self._handles():  # sorted by (model, version)
            per_version.setdefault(handle.name, {})[str(handle.version)] = self._version_stats(handle, requests_samples, gpu)
        models = {}
        entries = {} if self.models is None else {entry.name: entry for entry in self.models.entries()}
        for name, versions in per_version.items():
            entry = entries.get(name)
            default = entry.default() if entry is not None else None
            shown = str(default.version) if default is not None else max(versions, key=int)
            if entry is not None:  # what the last reload refused or found changed on disk, as /models says
                for version, status in entry.versions.items():
                    if status.reason and str(version) in versions:
                        versions[str(version)]["reason"] = status.reason
            # top level: the version that answers by default; "versions": each loaded version apart
            models[name] = {**versions[shown], "versions": versions}
            if entry is not None and entry.error:
                models[name]["error"] = entry.error
        return {
            "uptime_seconds": round(time.time() - self.started, 3),
            "process": {"rss_bytes": memory.rss_bytes(), "peak_rss_bytes": memory.peak_rss_bytes()},
            "gpu": (
                {"available": False, "reason": "TensorFlow sees no GPU on this machine"}
                if gpu is None
                else {"available": True, "devices": [
                    {"device": g.device, "bytes_in_use": g.current_bytes, "peak_bytes": g.peak_bytes} for g in gpu
                ]}
            ),
            "models": models,
            **({"memory_budget": self.residency.stats()} if self.residency is not None else {}),
        }


def _percentiles(window: list[float]) -> dict[str, float | int | None]:
    if not window:
        return {"count": 0, "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(np.asarray(window), [50, 90, 99]) * 1000
    return {"count": len(window), "p50": round(p50, 3), "p90": round(p90, 3), "p99": round(p99, 3)}


class _MemoryCollector:
    """Gauges computed at scrape time: peak RSS, per-model load costs, GPU allocator."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []  # collected lazily; nothing to check at registration

    def collect(self) -> Iterable[Any]:
        peak = GaugeMetricFamily("graphserve_process_peak_resident_memory_bytes", "Peak RSS of the process.")
        peak.add_metric([], memory.peak_rss_bytes())
        yield peak

        labels = ["model", "version"]
        rss_cost = GaugeMetricFamily("graphserve_model_load_rss_bytes", "RSS growth from loading and warming up a model.", labels=labels)
        constants = GaugeMetricFamily("graphserve_model_constant_bytes", "Bytes of constants (weights) in the GraphDef.", labels=labels)
        nodes = GaugeMetricFamily("graphserve_model_graph_nodes", "Nodes in the model's finalized graph.", labels=labels)
        gpu_cost = GaugeMetricFamily("graphserve_model_load_gpu_bytes", "GPU allocator growth from loading a model.", labels=labels)
        queue = GaugeMetricFamily("graphserve_model_queue_depth", "Images waiting for a batch.", labels=labels)
        engine = GaugeMetricFamily("graphserve_model_engine", "1 for the engine running a version's model part "
                                   "(tensorflow, litert): join on model and version.", labels=[*labels, "engine"])
        for handle in self._metrics._handles():
            servable = handle.servable
            key = [servable.name, str(servable.version)]
            rss_cost.add_metric(key, servable.stats.rss_cost)
            constants.add_metric(key, servable.stats.constant_bytes)
            nodes.add_metric(key, servable.node_count)
            if servable.stats.gpu_cost is not None:
                gpu_cost.add_metric(key, servable.stats.gpu_cost)
            queue.add_metric(key, handle.queue_depth())
            engine.add_metric([*key, servable.engine.engine], 1)
        yield from (rss_cost, constants, nodes, gpu_cost, queue, engine)
        residency = self._metrics.residency
        if residency is not None:
            yield from _budget_metrics(residency)

        gpus = memory.gpu_memory()
        available = GaugeMetricFamily("graphserve_gpu_available", "1 when TensorFlow sees a GPU, else 0.")
        available.add_metric([], 0 if gpus is None else 1)
        yield available
        if gpus:
            in_use = GaugeMetricFamily("graphserve_gpu_memory_bytes", "GPU allocator bytes in use.", labels=["device"])
            peak_gpu = GaugeMetricFamily("graphserve_gpu_peak_memory_bytes", "GPU allocator peak bytes.", labels=["device"])
            for reading in gpus:
                in_use.add_metric([reading.device], reading.current_bytes)
                peak_gpu.add_metric([reading.device], reading.peak_bytes)
            yield in_use
            yield peak_gpu


def _budget_metrics(residency: Any) -> Iterable[Any]:
    """The memory budget (``app.residency``): limit, reserved bytes, loads and unloads by reason."""
    stats = residency.stats()
    if stats["memory_budget_bytes"] is not None:
        budget = GaugeMetricFamily("graphserve_memory_budget_bytes", "The memory budget (memory_budget_mb).")
        budget.add_metric([], stats["memory_budget_bytes"])
        yield budget
    reserved = GaugeMetricFamily("graphserve_memory_reserved_bytes", "Bytes the loaded versions hold in the budget.")
    reserved.add_metric([], stats["reserved_bytes"])
    yield reserved
    if "gpu_budget_bytes" in stats:  # on a GPU the budget bounds TensorFlow's allocator too
        gpu_budget = GaugeMetricFamily("graphserve_gpu_memory_budget_bytes", "The memory budget, on the GPU.")
        gpu_budget.add_metric([], stats["gpu_budget_bytes"])
        gpu_reserved = GaugeMetricFamily("graphserve_gpu_memory_reserved_bytes",
                                         "GPU allocator bytes the loaded versions hold in the budget.")
        gpu_reserved.add_metric([], stats["gpu_reserved_bytes"])
        yield from (gpu_budget, gpu_reserved)
    per_version = GaugeMetricFamily("graphserve_model_reserved_bytes", "Bytes each loaded version holds in the budget.",
                                    labels=["model", "version"])
    for what, nbytes in stats["reservations"].items():
        model, _, version = what.rpartition("/")
        per_version.add_metric([model, version], nbytes)
    yield per_version
    for kind in ("loads", "unloads"):
        counter = CounterMetricFamily(f"graphserve_model_{kind}", f"Versions {kind[:-1]}ed, by reason.", labels=["reason"])
        for reason, count in stats[kind].items():
            counter.add_metric([reason], count)
        yield counter
    lookups = CounterMetricFamily("graphserve_model_lookups", "Requests whose versions were loaded (hit) or had "
                                  "to wait for a load on demand (miss).", labels=["result"])
    lookups.add_metric(["hit"], stats["hits"])
    lookups.add_metric(["miss"], stats["misses"])
    yield lookups

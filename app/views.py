"""HTTP endpoints. The classification path reads straight through:

    parse params → check uploads (Pillow header) → resolve models → submit to each model's
    batcher (or run directly) → wait → top-k + labels → JSON

Nothing here builds an op, reads a file, or holds a lock.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue

from app import memory
from app.batching import Completed, DeadlineExceeded
from app.config import Settings
from app.errors import BadRequest, InvalidImage
from app.metrics import CONTENT_TYPE, Metrics
from app.registry import ModelHandle, get_registry
from app.servable import Item, Row, UndecodableImage
from app.images import PIXEL_BUDGET, Upload
from app.text import clip
from app.uploads import read_uploads

bp = Blueprint("api", __name__)
request_log = logging.getLogger("graphserve.request")


def _settings() -> Settings:
    return current_app.extensions["settings"]


def _param(name: str) -> str | None:
    value = request.args.get(name)
    if value is None and request.mimetype == "multipart/form-data":
        value = request.form.get(name)
    return value


def _top_k(settings: Settings) -> int:
    raw = _param("top_k")
    if raw is None or raw == "":
        return settings.default_top_k
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= settings.max_top_k:
        raise BadRequest(f"top_k must be an integer from 1 to {settings.max_top_k}, got {clip(raw)!r}", code="bad_top_k")
    return value


@bp.post("/image_classification")
def classify() -> ResponseReturnValue:
    started = time.perf_counter()
    settings = _settings()
    top_k = _top_k(settings)
    profile = _param("profile") in ("1", "true")
    handles = get_registry(current_app).resolve(_param("model"))
    g.models = [(handle.name, handle.servable.version) for handle in handles]
    uploads = read_uploads(request, settings)
    checked = time.perf_counter()
    g.images = len(uploads)

    deadline = time.monotonic() + settings.request_timeout_s
    models: dict[str, Any] = {}
    metrics: Metrics = current_app.extensions["metrics"]
    timing = [("checks", checked - started)]
    pixels = sum(upload.pixels for upload in uploads)
    with current_app.extensions[PIXEL_BUDGET].hold(pixels, deadline=deadline):
        pending = [(handle, handle.submit(items, deadline=deadline)) for handle, items in _inputs(handles, uploads)]
        for handle, futures in pending:
            result, seconds = _collect(handle, futures, uploads, top_k, deadline)
            seconds["total"] = time.perf_counter() - started
            metrics.observe_model(handle.name, handle.servable.version, len(uploads), seconds)
            timing += [(f"{handle.name}.{stage}", value) for stage, value in seconds.items()]
            models[handle.name] = result
    if pixels >= memory.TRIM_AFTER_PIXELS:
        memory.release_free_memory()
    if profile:
        for handle in handles:
            split = models[handle.name]["profile_ms"] = _profile(handle, uploads)
            timing += [(f"{handle.name}.profile-{stage}", ms / 1000) for stage, ms in split.items()]

    total = time.perf_counter() - started
    timing.append(("total", total))
    g.timing = timing
    response = jsonify(
        models=models,
        images=len(uploads),
        time_ms={"total": round(total * 1000, 3), "checks": round((checked - started) * 1000, 3)},
    )
    response.headers["Server-Timing"] = ", ".join(f"{name};dur={value * 1000:.3f}" for name, value in timing)
    return response


def _profile(handle: ModelHandle, uploads: list[Upload]) -> dict[str, float]:
    """Debug split of the single sess.run: decode + resize alone, then the model on those pixels.

    Runs the work again outside the batcher, so it costs extra time; only on ``?profile=1``.
    """
    servable = handle.servable
    encoded = [upload.data for upload in uploads]
    started = time.perf_counter()
    pixels = servable.preprocess(encoded)
    decoded = time.perf_counter()
    servable.predict(list(pixels))
    modelled = time.perf_counter()
    servable.predict(encoded)
    whole = time.perf_counter()
    return {
        "decode_resize": round((decoded - started) * 1000, 3),
        "normalize_model": round((modelled - decoded) * 1000, 3),
        "single_run": round((whole - modelled) * 1000, 3),
    }


def _inputs(handles: list[ModelHandle], uploads: list[Upload]) -> list[tuple[ModelHandle, list[Item]]]:
    """Each model's input items. Models with the same input geometry share one decode."""
    encoded: list[Item] = [upload.data for upload in uploads]
    groups: dict[tuple[object, ...], list[ModelHandle]] = defaultdict(list)
    for handle in handles:
        groups[handle.servable.geometry].append(handle)
    inputs: list[tuple[ModelHandle, list[Item]]] = []
    for group in groups.values():
        items = encoded
        if len(group) > 1:
            try:
                items = list(group[0].servable.preprocess(encoded))
            except UndecodableImage:
                items = encoded  # let each model find and name the bad upload
        inputs.extend((handle, items) for handle in group)
    order = {handle.name: i for i, handle in enumerate(handles)}
    return sorted(inputs, key=lambda pair: order[pair[0].name])


def _collect(
    handle: ModelHandle,
    futures: list[Future[Completed[Row]]],
    uploads: list[Upload],
    top_k: int,
    deadline: float,
) -> tuple[dict[str, Any], dict[str, float]]:
    completed: list[Completed[Row]] = []
    bad: list[tuple[Upload, BaseException]] = []
    for upload, future in zip(uploads, futures):
        try:
            completed.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
        except FutureTimeout:
            future.cancel()
            raise DeadlineExceeded(f"model '{handle.name}' did not answer within the request timeout") from None
        except UndecodableImage as exc:
            bad.append((upload, exc))
    if bad:
        names = ", ".join(f"'{upload.name}'" for upload, _ in bad)
        raise InvalidImage(f"upload {names} could not be decoded ({bad[0][1]}); it may be truncated or corrupt")
    post_started = time.perf_counter()
    scores = np.stack([c.value for c in completed])  # type: ignore[misc]
    results = _top_k_results(handle, scores, uploads, top_k)
    seconds = {
        "queue": max(c.queue_seconds for c in completed),
        "run": max(c.run_seconds for c in completed),
        "postprocess": time.perf_counter() - post_started,
    }
    result = {
        "version": handle.servable.version,
        "results": results,
        "time_ms": {stage: round(value * 1000, 3) for stage, value in seconds.items()},
        "batch_sizes": sorted({c.batch_size for c in completed}),
    }
    return result, seconds


def _top_k_results(handle: ModelHandle, scores: np.ndarray, uploads: list[Upload], top_k: int) -> list[dict[str, Any]]:
    servable = handle.servable
    k = min(top_k, scores.shape[1])
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    results = []
    for upload, row, ids in zip(uploads, scores, best):
        results.append(
            {
                "image": upload.name,
                "top_k": [
                    {"label": servable.label(int(i)), "class_id": int(i), "score": float(row[i])} for i in ids
                ],
            }
        )
    return results


@bp.get("/models")
def models() -> ResponseReturnValue:
    described = []
    for handle in sorted(get_registry(current_app).handles(), key=lambda h: h.name):
        servable = handle.servable
        spec = servable.manifest.input
        described.append(
            {
                "name": servable.name,
                "version": servable.version,
                "input": {"height": spec.height, "width": spec.width, "channels": spec.channels},
                "classes": servable.num_classes,
                "output": servable.manifest.output.kind,
                "batch_size": servable.manifest.batch_size,
                "batching": handle.batcher is not None,
                "state": handle.state,
            }
        )
    return jsonify(models=described)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    registry = get_registry(current_app)
    states = {handle.name: handle.state for handle in registry.handles()}
    draining = current_app.extensions.get("draining")  # a threading.Event set by app/server.py on SIGTERM
    if draining is not None and draining.is_set():
        return jsonify(status="draining", models=states), 503
    if registry.ready():
        return jsonify(status="ready", models=states)
    return jsonify(status="not ready", models=states), 503


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    return Response(current_app.extensions["metrics"].exposition(), content_type=CONTENT_TYPE)


@bp.get("/stats")
def stats() -> ResponseReturnValue:
    return jsonify(current_app.extensions["metrics"].stats())


@bp.before_app_request
def _start_clock() -> None:
    g.started = time.perf_counter()


@bp.after_app_request
def _record(response: Response) -> Response:
    """Count every answer and log one line per request (logfmt), errors included."""
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    error_code = None
    if response.status_code >= 400 and response.is_json:
        error_code = (response.get_json(silent=True) or {}).get("error", {}).get("code")
    models = g.get("models", ())
    current_app.extensions["metrics"].observe_request(endpoint, response.status_code, models, error_code)
    level = _settings().request_log_level
    if level is not None and endpoint not in ("/metrics", "/healthz", "/readyz"):
        if request_log.isEnabledFor(level):
            timing = " ".join(f"{name}_ms={value * 1000:.2f}" for name, value in g.get("timing", ()))
            total_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
            request_log.log(
                level,
                "method=%s path=%s status=%d models=%s images=%d ms=%.2f%s%s",
                request.method, request.path, response.status_code,
                ",".join(name for name, _ in models) or "-", g.get("images", 0), total_ms,
                f" error={error_code}" if error_code else "", f" {timing}" if timing else "",
            )
    return response

"""HTTP endpoints. The classification path reads straight through:

    parse params → check uploads (Pillow header) → resolve models → submit to each model's
    batcher (or run directly) → wait → top-k + labels → JSON

Nothing here builds an op, reads a file, or holds a lock.
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np
from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from app.batching import Completed, DeadlineExceeded
from app.config import Settings
from app.errors import BadRequest, InvalidImage
from app.registry import ModelHandle, get_registry
from app.servable import Item, Row, UndecodableImage
from app.uploads import Upload, read_uploads

bp = Blueprint("api", __name__)


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
        raise BadRequest(f"top_k must be an integer from 1 to {settings.max_top_k}, got {raw!r}", code="bad_top_k")
    return value


@bp.post("/image_classification")
def classify() -> ResponseReturnValue:
    started = time.perf_counter()
    settings = _settings()
    top_k = _top_k(settings)
    handles = get_registry(current_app).resolve(_param("model"))
    uploads = read_uploads(request, settings)
    checked = time.perf_counter()

    deadline = time.monotonic() + settings.request_timeout_s
    pending = [(handle, handle.submit(items, deadline=deadline)) for handle, items in _inputs(handles, uploads)]
    models: dict[str, Any] = {}
    for handle, futures in pending:
        models[handle.name] = _collect(handle, futures, uploads, top_k, deadline)

    total_ms = (time.perf_counter() - started) * 1000
    return jsonify(
        models=models,
        images=len(uploads),
        time_ms={"total": round(total_ms, 3), "checks": round((checked - started) * 1000, 3)},
    )


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
) -> dict[str, Any]:
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
    servable = handle.servable
    return {
        "version": servable.version,
        "results": results,
        "time_ms": {
            "queue": round(max(c.queue_seconds for c in completed) * 1000, 3),
            "run": round(max(c.run_seconds for c in completed) * 1000, 3),
            "postprocess": round((time.perf_counter() - post_started) * 1000, 3),
        },
        "batch_sizes": sorted({c.batch_size for c in completed}),
    }


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
    if registry.ready():
        return jsonify(status="ready", models=states)
    return jsonify(status="not ready", models=states), 503

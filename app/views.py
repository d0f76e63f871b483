"""HTTP endpoints of our own REST API: parse the request, call the inference core, encode JSON.

    parse params → borrow the models' versions (core.select) → check uploads (Pillow header)
    → core: submit, wait, top-k + labels → JSON

The classification work itself is in ``app.inference``; nothing here builds an op, reads a
file, or holds a lock.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from app import observe
from app.config import Settings
from app.errors import BadRequest
from app.inference import InferenceCore, ModelResult
from app.metrics import CONTENT_TYPE
from app.registry import get_registry
from app.text import clip
from app.uploads import read_uploads

bp = Blueprint("api", __name__)
INFERENCE = "inference"  # app.extensions key of the InferenceCore


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
    version, version_label = _version()
    core: InferenceCore = current_app.extensions[INFERENCE]
    observation = observe.current()
    with core.select(_param("model"), version=version, version_label=version_label) as selected:
        observation.models = selected.models
        raw = read_uploads(request)
        observation.images = len(raw)
        result = selected.classify_uploads(raw, top_k=top_k, profile=profile, started=started)
    checks = result.checks_seconds

    timing = [("checks", checks)]
    models: dict[str, Any] = {}
    for model in result.models:
        timing += [(f"{model.name}.{stage}", value) for stage, value in model.seconds.items()]
        models[model.name] = _encode_model(model)
        if model.profile_ms is not None:
            timing += [(f"{model.name}.profile-{stage}", ms / 1000) for stage, ms in model.profile_ms.items()]
    total = time.perf_counter() - started
    timing.append(("total", total))
    observation.timing = timing
    response = jsonify(
        models=models,
        images=result.images,
        time_ms={"total": round(total * 1000, 3), "checks": round(checks * 1000, 3)},
    )
    response.headers["Server-Timing"] = observe.server_timing(timing)
    return response


def _version() -> tuple[int | None, str | None]:
    """``version=N`` or ``version_label=name`` (empty: not given)."""
    raw, label = _param("version") or None, _param("version_label") or None
    if raw is not None and label is not None:
        raise BadRequest("give version or version_label, not both", code="bad_version")
    if raw is None:
        return None, label
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise BadRequest(f"version must be a non-negative integer of at most 18 digits, got {clip(raw)!r}",
                         code="bad_version")
    return int(raw), None


def _encode_model(model: ModelResult) -> dict[str, Any]:
    encoded: dict[str, Any] = {
        "version": model.version,
        "results": [
            {
                "image": image.image,
                "top_k": [{"label": s.label, "class_id": s.class_id, "score": s.score} for s in image.top_k],
            }
            for image in model.results
        ],
        "time_ms": {stage: round(model.seconds[stage] * 1000, 3) for stage in ("queue", "run", "postprocess")},
        "batch_sizes": model.batch_sizes,
    }
    if model.profile_ms is not None:
        encoded["profile_ms"] = model.profile_ms
    return encoded


@bp.get("/models")
def models() -> ResponseReturnValue:
    registry = get_registry(current_app)
    states = registry.model_states()
    described = []
    for entry in registry.entries():
        default = entry.default()
        model: dict[str, Any] = {"name": entry.name, "version": default.version if default else None}
        if default is not None:
            servable = default.servable
            spec = servable.manifest.input
            model.update(
                input={"height": spec.height, "width": spec.width, "channels": spec.channels},
                classes=servable.num_classes,
                output=servable.manifest.output.kind,
                batch_size=servable.manifest.batch_size,
                batching=default.batching,
                device=servable.device,
            )
        model["state"] = states[entry.name]
        model["versions"] = [
            {"version": v, "state": status.state, **({"reason": status.reason} if status.reason else {})}
            for v, status in entry.versions.items()
        ]
        model["labels"] = entry.labels
        if entry.error:
            model["error"] = entry.error
        described.append(model)
    return jsonify(models=described)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    registry = get_registry(current_app)
    states = registry.model_states()
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

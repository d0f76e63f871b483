"""HTTP endpoints of our own REST API: parse the request, call the inference core, encode JSON.

    parse params → borrow the models' versions (core.select) → check uploads (Pillow header)
    → core: submit, wait, top-k + labels → JSON

The classification work itself is in ``app.inference``; nothing here builds an op, reads a
file, or holds a lock.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from . import observe, wire
from .config import Settings
from .errors import BadRequest
from .inference import InferenceCore, ModelResult, Selected
from .manifest import Manifest
from .metrics import CONTENT_TYPE
from .registry import BadModelSelection, ModelNotFound
from .services import current
from .text import clip
from .uploads import read_uploads

bp = Blueprint("api", __name__)


def _settings() -> Settings:
    return current().settings


def _param(name: str) -> str | None:
    """A request parameter: from the query string, else from the multipart form once it has been
    read. Never reads the body itself: the handler decides when the form is parsed."""
    value = request.args.get(name)
    if value is None and _form_read():
        value = request.form.get(name)
    return value


def _form_read() -> bool:
    """Whether the multipart form has been parsed (werkzeug caches it in ``request.__dict__``)."""
    return request.mimetype == "multipart/form-data" and "form" in request.__dict__


# The parameters that choose the models; in the query string, else (as every parameter) in the form.
_SELECTION = ("model", "version", "version_label")


def _form_may_choose() -> bool:
    """A multipart request whose query string leaves some of the selection to its form fields."""
    return request.mimetype == "multipart/form-data" and any(name not in request.args for name in _SELECTION)


def _selection(settings: Settings) -> tuple[list[str] | None, int | None, str | None]:
    version, version_label = _version()
    return model_names(_param("model"), settings.default_model), version, version_label


def _select(core: InferenceCore, settings: Settings) -> tuple[Selected, tuple[object, ...]]:
    """Borrow the models the query string names, before the body is read: an unknown model named
    there is refused (404) without the form being parsed. Where the query leaves the choice to
    the form and the query alone chooses nothing servable, the form is read and decides."""
    chosen = _selection(settings)
    names, version, version_label = chosen
    try:
        return core.select(names, version=version, version_label=version_label,
                           deadline=observe.http_deadline(settings.request_timeout_s)), chosen
    except LookupError as exc:
        if (isinstance(exc, ModelNotFound) and "model" in request.args) or not _form_may_choose():
            raise
    request.form  # noqa: B018 - parse the body: its fields may choose other models
    chosen = _selection(settings)
    names, version, version_label = chosen
    return core.select(names, version=version, version_label=version_label,
                       deadline=observe.http_deadline(settings.request_timeout_s)), chosen


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
    observation = observe.current()
    core = current().core
    # The models first, from the query string: an unknown model is refused before a multipart
    # body is parsed (werkzeug spools parts over 500 KiB to disk). Then the form, whose fields
    # may choose the models instead (every parameter can be sent either way), then the rest.
    selected, chosen = _select(core, settings)
    try:
        if request.mimetype == "multipart/form-data" and not _form_read():
            request.form  # noqa: B018 - parse the body, now that the query's models are known
            if _form_may_choose() and _selection(settings) != chosen:
                selected.release()
                selected, chosen = _select(core, settings)
        top_k = _top_k(settings)
        profile = _param("profile") in ("1", "true")
        observation.models = selected.models
        raw = read_uploads(request)
        observation.images = len(raw)
        result = selected.classify_uploads(raw, top_k=top_k, profile=profile, started=started,
                                           deadline=observe.http_deadline(settings.request_timeout_s))
    finally:
        selected.release()
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


def model_names(selector: str | None, default_model: str = "") -> list[str] | None:
    """Our API's ``model`` grammar: a name, ``a,b`` (in that order, once each), ``all`` (None:
    every model with an available version), or nothing (the configured default model, else all)."""
    if selector is None or selector == "":
        selector = default_model or "all"
    if selector.strip() == "all":
        return None
    names = [part.strip() for part in selector.split(",")]
    if not any(names):
        raise BadModelSelection(f"model={clip(selector)!r} names no model; give one or more names, or 'all'")
    if not all(names):
        raise BadModelSelection(
            f"model={clip(selector)!r} has an empty name; give names separated by single commas, or 'all'"
        )
    return list(dict.fromkeys(names))


def _version() -> tuple[int | None, str | None]:
    """``version=N`` or ``version_label=name`` (empty: not given); ``app.wire``'s rules."""
    return wire.version_or_label(_param("version"), _param("version_label"))


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
        "time_ms": {stage: round(model.seconds[stage] * 1000, 3)
                    for stage in ("load", "queue", "run", "postprocess") if stage in model.seconds},
        "batch_sizes": model.batch_sizes,
    }
    if model.profile_ms is not None:
        encoded["profile_ms"] = model.profile_ms
    return encoded


@bp.get("/models")
def models() -> ResponseReturnValue:
    registry = current().registry
    states = registry.model_states()
    described = []
    for entry in registry.entries():
        default = entry.default()
        model: dict[str, Any] = {"name": entry.name, "version": default.version if default else None}
        if default is not None:
            servable = default.servable
            manifest = servable.manifest
            model["kind"] = "image" if isinstance(manifest, Manifest) else "tensors"
            if isinstance(manifest, Manifest):
                spec = manifest.input
                model.update(
                    input={"height": spec.height, "width": spec.width, "channels": spec.channels},
                    classes=servable.num_classes,
                    output=manifest.output.kind,
                )
            model.update(
                batch_size=manifest.batch_size,
                batching=default.batching,
                device=servable.device,
                signatures={name: sig.to_json() for name, sig in servable.signatures.items()},
            )
        model["state"] = states[entry.name]
        model["versions"] = [
            {"version": v, "state": status.state, **({"reason": status.reason} if status.reason else {}),
             **({"on_demand": True} if status.on_demand else {})}  # a request loads it (memory budget)
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
    services = current()
    registry = services.registry
    states = registry.model_states()
    if services.draining.is_set():  # set by the lifecycle on SIGTERM
        return jsonify(status="draining", models=states), 503
    if registry.ready():
        return jsonify(status="ready", models=states)
    return jsonify(status="not ready", models=states), 503


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    return Response(current().metrics.exposition(), content_type=CONTENT_TYPE)


@bp.get("/stats")
def stats() -> ResponseReturnValue:
    return jsonify(current().metrics.stats())

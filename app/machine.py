"""The machine a figure was measured on: CPU model, the vector extensions that change
TensorFlow's kernels, cores, and whether oneDNN is on.

Why: the same graph runs on different kernels per CPU. On an Intel Xeon with AVX-512 and
AMX (or an AMD EPYC with AVX-512) TensorFlow turns oneDNN on by itself and some engines drop
to bf16, so a figure without its CPU cannot be compared. ``graphserve bench`` writes this into
``bench.json`` and the title of ``bench.md``::

    >>> summary(describe())                                  # doctest: +SKIP
    'AMD EPYC, 2 cores, AVX2 AVX-512 AVX512-VNNI AVX512-BF16, no AMX, oneDNN on'
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag -> the name the README and the reports use, in this order.
EXTENSIONS: tuple[tuple[str, str], ...] = (
    ("avx2", "AVX2"),
    ("fma", "FMA"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX512-VNNI"),
    ("avx512_bf16", "AVX512-BF16"),
    ("avx512_fp16", "AVX512-FP16"),
    ("avx_vnni", "AVX-VNNI"),
    ("amx_tile", "AMX"),
    ("amx_bf16", "AMX-BF16"),
    ("amx_int8", "AMX-INT8"),
)


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """The first processor's model name and flags from ``/proc/cpuinfo`` text."""
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def read_cpuinfo() -> str:
    """``/proc/cpuinfo``'s text ("" where there is none: macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    """The CPU's flags (``avx512_bf16``, ``amx_bf16``...): what ``app.precision`` checks."""
    return parse_cpuinfo(read_cpuinfo())[1]


def describe(cpuinfo: str | None = None) -> dict[str, Any]:
    """``{"cpu", "extensions", "cores", "onednn", "machine"}``; ``onednn`` is None until
    TensorFlow is imported (it decides at import, from the CPU and TF_ENABLE_ONEDNN_OPTS)."""
    model, flags = parse_cpuinfo(read_cpuinfo() if cpuinfo is None else cpuinfo)
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "extensions": [name for flag, name in EXTENSIONS if flag in flags],
        "cores": os.cpu_count(),
        "onednn": onednn_enabled(),
        "machine": platform.machine(),
    }


def onednn_enabled() -> bool | None:
    if "tensorflow" not in sys.modules:
        return None
    try:
        from tensorflow.python.util import _pywrap_util_port  # TF's own answer; not a public API
    except ImportError:
        return None
    return bool(_pywrap_util_port.IsMklEnabled())


def summary(info: dict[str, Any]) -> str:
    """One line for a report's title: model, cores, extensions, AMX or not, oneDNN."""
    parts = [info["cpu"], f"{info['cores']} cores"]
    extensions = info["extensions"]
    if extensions:
        parts.append(" ".join(extensions))
    if info["machine"] in ("x86_64", "AMD64") and "AMX" not in extensions:
        parts.append("no AMX")
    if info["onednn"] is not None:
        parts.append("oneDNN on" if info["onednn"] else "oneDNN off")
    return ", ".join(parts)

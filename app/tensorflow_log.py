"""TensorFlow's C++ log, sorted: notices about the machine dropped, everything else kept.

TensorFlow's C++ code writes straight to file descriptor 2, in absl's format::

    E0000 00:00:1796288042.615751    5772 util.cc:131] oneDNN supports DT_UINT8 only on ...
    ^severity                        ^thread ^source:line ^message

Some of those lines are notices about the machine, printed at start-up or at every model
load whatever the log level, and say nothing about a model or a request: on an Intel CPU
(or an AMD one with AVX-512) oneDNN logs *at error level* that it "supports DT_UINT8 only on
platforms with AVX-512" each time a graph with a uint8 ``Transpose`` (the EXIF turn) is
optimised, and a machine without CUDA gets "failed call to cuInit". Those are ``NOTICES``
below, matched by source file and message start. Every other line is kept: at the server's
default level TensorFlow itself only emits errors (``TF_CPP_MIN_LOG_LEVEL`` defaults to 2),
and each one is written again in the service's own log format as ``ERROR native:
util.cc:131] ...``. A line that is not in absl's format (a native library's own output)
passes through as it is.

How: ``install()`` points fd 2 at a pipe read by a small child process (this file, run with
``python -I -S``, nothing but the standard library), which writes to the real stderr.
A child rather than a thread, so that what TensorFlow writes just before it aborts (a failed
``CHECK``, an ``F`` line) still reaches the log: the child reads the pipe to its end after
the server is gone. Python's own logging writes to the real stderr directly.

Example (what ``graphserve serve`` does; ``-v`` skips it and shows TensorFlow's lines as
they are)::

    from app import tensorflow_log
    tensorflow_log.install()          # before TensorFlow is imported
    ...
    tensorflow_log.uninstall()        # before the process exits: the child drains and exits
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

# (source file, message start): machine notices, dropped at every level but DEBUG (-v).
NOTICES: tuple[tuple[str, str], ...] = (
    ("util.cc", "oneDNN supports"),  # a dtype oneDNN lacks falls back to Eigen (Intel/AVX-512 CPUs, each load)
    ("port.cc", "oneDNN custom operations are on"),  # printed at import, before the log level is read
    ("cpu_feature_guard.cc", "This TensorFlow binary is optimized"),
    ("cudart_stub.cc", "Could not find cuda drivers"),
    ("cuda_platform.cc", "failed call to cuInit"),  # no GPU: "running on CPU" says so once
    ("cuda_executor.cc", "failed call to cuInit"),
    ("cuda_diagnostics.cc", ""),  # the driver-version report that follows a failed cuInit
    ("mlir_graph_optimization_pass.cc", "MLIR V1 optimization pass is not enabled"),
)
# Lines outside absl's format that absl, TensorFlow or LiteRT print on their own (at import; at
# the first XNNPACK interpreter of the process, whatever the log level).
RAW_NOTICES: tuple[str, ...] = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
)
ABSL_LINE = re.compile(r"^(?P<severity>[IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ (?P<source>[^:\s]+):\d+\] (?P<message>.*)")
LEVELS = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}
MIN_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What becomes of one message: ``text`` written to stderr, or nothing when it is None."""

    text: str | None


def sort_message(message: str, *, now: float | None = None, min_level: int = 2) -> Verdict:
    """One message (its first line in absl's format, or any other text) → what to write.

    A message TensorFlow wrote with continuation lines (e.g. cpu_feature_guard's second
    line) arrives as one string and shares its first line's fate.
    """
    first, _, _ = message.partition("\n")
    match = ABSL_LINE.match(first)
    if match is None:
        return Verdict(None if first.strip() in RAW_NOTICES else message)
    severity, source = match["severity"], match["source"]
    if "IWEF".index(severity) < min_level:
        return Verdict(None)
    if any(source == file and match["message"].startswith(start) for file, start in NOTICES):
        return Verdict(None)
    stamp = time.time() if now is None else now
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) + f",{int(stamp % 1 * 1000):03d}"
    body = first[match.start("source"):] + message[len(first):]
    return Verdict(f"{when} {LEVELS[severity]} native: {body}")


def min_level(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """TensorFlow's own threshold (0: everything … 3: fatal only), which the child applies too."""
    try:
        return max(0, min(3, int(environ.get(MIN_LEVEL_ENV, "0"))))
    except ValueError:
        return 0


def split_messages(chunk: str) -> list[str]:
    """A chunk read from the pipe → messages: a line outside absl's format that follows an
    absl line in the same chunk continues that message (TensorFlow writes one message per write)."""
    messages: list[str] = []
    for line in chunk.split("\n"):
        if messages and ABSL_LINE.match(messages[-1]) and not ABSL_LINE.match(line) and line:
            messages[-1] += "\n" + line
        elif line:
            messages.append(line)
    return messages


def run_filter(source: BinaryIO, sink: BinaryIO, *, level: int) -> None:
    """The child's loop: read the pipe until every writer is gone, write what is kept."""
    pending = b""
    while chunk := os.read(source.fileno(), 65536):
        pending += chunk
        head, newline, tail = pending.rpartition(b"\n")
        if newline:
            complete, pending = head, tail
        elif len(pending) >= 65536:  # no newline in 64 KiB: not a log line, pass it on
            complete, pending = pending, b""
        else:
            continue
        for message in split_messages(complete.decode("utf-8", "replace")):
            verdict = sort_message(message, min_level=level)
            if verdict.text is not None:
                sink.write(verdict.text.encode("utf-8", "replace") + b"\n")
        sink.flush()
    if pending:
        sink.write(pending + b"\n")
        sink.flush()


class _Installed:
    child: subprocess.Popen[bytes] | None = None
    saved_fd: int | None = None


def install() -> None:
    """Route fd 2 through the filter child; Python's ``sys.stderr`` keeps the real stderr.

    Call it before TensorFlow is imported (its import prints notices) and before logging is
    configured (handlers made afterwards write to the real stderr directly).
    """
    if _Installed.child is not None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__), str(min_level())],
        stdin=read_end, stdout=saved, stderr=saved, close_fds=True,
    )
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    _Installed.child, _Installed.saved_fd = child, saved


def uninstall(timeout: float = 1.0) -> None:
    """Give fd 2 back to the real stderr; the child writes what is left and exits."""
    child, saved = _Installed.child, _Installed.saved_fd
    if child is None or saved is None:
        return
    os.dup2(saved, 2)  # closes the pipe's last write end: the child reads to EOF
    os.close(saved)
    _Installed.child = _Installed.saved_fd = None
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()


@contextmanager
def stderr_hidden() -> Iterator[None]:
    """Point fd 2 at /dev/null for a moment: for a process that will not run the filter (the
    freeze tool, the test suite) while TensorFlow imports and prints its notices."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


if __name__ == "__main__":  # the child: python -I -S tensorflow_log.py MIN_LEVEL
    # Ctrl-C and SIGTERM are for the server; the child ends when the pipe does (EOF).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    run_filter(sys.stdin.buffer, sys.stdout.buffer, level=int(sys.argv[1]))

"""Reading a model's files so that a changing folder cannot block or crash the loader.

A version folder is written by other people's tools while we read it: a file may vanish,
be a FIFO (``open`` would wait for a writer forever), a device, or sit on a network mount
that hangs. So only regular files are read (opened ``O_NONBLOCK``, then ``fstat`` must say
``S_ISREG``), and every read runs on its own daemon thread that the caller waits for at
most ``timeout_s``: a hung read leaves that thread behind, never the loader::

    data = read_regular(Path("graphs/m/3/model.pb"), timeout_s=10.0)

Exceptions (both ``OSError``, so callers that refuse an unreadable file already catch them):
``NotRegularFile`` (a FIFO, device, socket or folder) and ``ReadTimedOut`` (past ``timeout_s``).
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0


class NotRegularFile(OSError):
    """The path is a FIFO, a device, a socket or a folder: never read as a model file."""


class ReadTimedOut(TimeoutError):
    """Reading did not finish in time (a hung mount): the reading thread is left behind."""


def bounded(work: Callable[[], T], *, timeout_s: float, what: str) -> T:
    """``work()`` on a daemon thread, waited for at most ``timeout_s``; its exception is re-raised."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            error.append(exc)

    thread = threading.Thread(target=run, name="graphserve-read", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ReadTimedOut(f"{what}: no answer within {timeout_s:g} s (a hung mount?)")
    if error:
        raise error[0]
    return result[0]


def read_regular(path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
    """The bytes of ``path`` if it is a regular file (symlinks followed), read within ``timeout_s``."""
    return bounded(lambda: _read(path), timeout_s=timeout_s, what="reading")


def read_text(path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """``read_regular`` decoded as UTF-8 (``UnicodeDecodeError`` on anything else)."""
    return read_regular(path, timeout_s=timeout_s).decode("utf-8")


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"not a regular file ({_kind(mode)})")  # callers name the file
        os.set_blocking(fd, True)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"

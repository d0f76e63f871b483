"""All service settings in one object, read from ``GRAPHSERVE_*`` environment variables.

Precedence: defaults < environment < command-line flags / ``create_app(test_config)``.
Each field's environment variable is ``GRAPHSERVE_`` + its upper-case name, e.g.
``GRAPHSERVE_GRAPHS_DIR=graphs``; ``create_app({"GRAPHS_DIR": ...})`` uses the same names.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .manifest import ENGINES

ENV_PREFIX = "GRAPHSERVE_"


class ConfigError(ValueError):
    """A setting has a value of the wrong type or range (names the setting)."""


@dataclass(frozen=True)
class Settings:
    graphs_dir: str = "graphs"
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int = 8500  # gRPC (TF Serving's PredictionService/ModelService, KServe v2) on host:grpc_port; 0: off
    grpc_max_message_bytes: int = 32 * 1024 * 1024  # largest gRPC request or response (grpcio's default: 4 MiB in)
    threads: int = 32  # about 2x a model's max_batch_size, so a full batch can queue while one runs
    default_model: str = ""  # empty: the only model if there is one, else every model
    default_top_k: int = 5  # classes per image when a request gives no top_k
    max_top_k: int = 1000  # the largest top_k a request may ask for; beyond: 400 bad_top_k
    max_body_bytes: int = 32 * 1024 * 1024  # a request body over this is refused (413) before it is read
    max_image_bytes: int = 16 * 1024 * 1024  # one encoded image over this: 413 image_too_large
    max_image_pixels: int = 40_000_000  # width x height from the header; beyond: 413, never decoded
    max_request_pixels: int = 64_000_000  # sum over a request's uploads, checked before any decode
    max_inflight_pixels: int = 128_000_000  # being decoded by all requests at once; beyond: wait
    max_images_per_request: int = 64  # more uploads in one request: 413 too_many_images
    engine: str = "auto"  # what runs a model's model part: auto (the faster, checked), tensorflow, litert
    max_tensor_bytes: int = 64 * 1024 * 1024  # a request's tensor that would take more: 413 tensor_too_large, never built
    memory_budget_mb: int = 0  # loaded versions together hold at most this (RSS at load; on a GPU its allocator too); 0: off, load all
    concurrent_loads: int = 1  # versions loading at once for requests (with a budget); more only contend for the cores
    intra_op_threads: int = 0  # 0: TensorFlow's default (number of cores)
    inter_op_threads: int = 0  # 0: TensorFlow's default; threads running independent ops at once
    gpu_memory_fraction: float = 0.0  # 0: allow growth, never grab the whole card
    batching: bool = True  # False: each request runs its own sess.run, no queue
    request_timeout_s: float = 30.0  # from when the app gets a request (every door) to its answer; else 504
    strict_startup: bool = True  # a version that fails to load stops start-up; False: refused, others serve
    poll_interval_s: float = 5.0  # re-read graphs/ this often and reload what changed (TF Serving polls too); 0: off
    admin_token: str = dataclasses.field(default="", repr=False)  # set: POST /admin/reload exists, with "Authorization: Bearer <token>"; empty: 404
    loader_nice: int = 10  # reloads load and warm up on a thread this much nicer than request threads (Linux)
    file_read_timeout_s: float = 10.0  # reading one model file (or scanning graphs/) longer than this refuses it for the round (a hung mount)
    reload_wait_s: float = 60.0  # POST /admin/reload answers 503 reload_running if the round takes longer (it carries on)
    log_level: str = "INFO"
    log_requests: str = "INFO"  # level of the one-line-per-request log; "OFF" to silence
    # Connections and shutdown (app/http_server.py, app/lifecycle.py; the figures behind them are in docs/operations.md).
    connection_limit: int = 4_000  # open connections at once (~3 KiB each); lowered to what RLIMIT_NOFILE holds
    read_header_timeout_s: float = 10.0  # a request's headers must arrive within this, else 408 and close
    read_timeout_s: float = 60.0  # ... and the whole request, body included (32 MiB at ~0.6 MB/s)
    idle_timeout_s: float = 75.0  # a keep-alive connection idle this long between requests is closed
    max_header_bytes: int = 64 * 1024  # request line + headers; beyond: 431
    shutdown_grace_s: float = 25.0  # SIGTERM/SIGINT: time to finish what is in flight (k8s kills at 30 s)

    def __post_init__(self) -> None:
        if not self.max_image_pixels <= self.max_request_pixels <= self.max_inflight_pixels:
            raise ConfigError(
                "settings must satisfy max_image_pixels <= max_request_pixels <= max_inflight_pixels, got "
                f"{self.max_image_pixels}, {self.max_request_pixels}, {self.max_inflight_pixels}"
            )
        _level("log_level", self.log_level)
        if not self.poll_interval_s >= 0:
            raise ConfigError(f"setting 'poll_interval_s' must be >= 0 (0: off), got {self.poll_interval_s!r}")
        if not 0 <= self.loader_nice <= 19:
            raise ConfigError(f"setting 'loader_nice' must be 0 (off) to 19, got {self.loader_nice!r}")
        for name in ("file_read_timeout_s", "reload_wait_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"setting '{name}' must be greater than 0, got {getattr(self, name)!r}")
        for name in ("connection_limit", "read_header_timeout_s", "read_timeout_s", "idle_timeout_s", "max_header_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting '{name}' must be greater than 0, got {getattr(self, name)!r}")
        if not 0 <= self.grpc_port <= 65535:
            raise ConfigError(f"setting 'grpc_port' must be 0 (off) to 65535, got {self.grpc_port!r}")
        if self.grpc_max_message_bytes <= 0:
            raise ConfigError(f"setting 'grpc_max_message_bytes' must be greater than 0, got {self.grpc_max_message_bytes!r}")
        if self.shutdown_grace_s < 0:
            raise ConfigError(f"setting 'shutdown_grace_s' must be 0 or more, got {self.shutdown_grace_s!r}")
        if self.log_requests.upper() != "OFF":
            _level("log_requests", self.log_requests)
        if self.memory_budget_mb < 0:
            raise ConfigError(f"setting 'memory_budget_mb' must be 0 (off) or more, got {self.memory_budget_mb!r}")
        if self.concurrent_loads < 1:
            raise ConfigError(f"setting 'concurrent_loads' must be 1 or more, got {self.concurrent_loads!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"setting 'engine' must be one of {', '.join(ENGINES)}, got {self.engine!r}")

    @property
    def request_log_level(self) -> int | None:
        """The numeric level of the per-request log line, or None when it is OFF."""
        return None if self.log_requests.upper() == "OFF" else _level("log_requests", self.log_requests)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values = {
            f.name: environ[ENV_PREFIX + f.name.upper()]
            for f in dataclasses.fields(cls)
            if ENV_PREFIX + f.name.upper() in environ
        }
        return cls().replace(values)

    def replace(self, overrides: Mapping[str, Any]) -> Settings:
        """A copy with ``overrides`` applied; keys are field names in any case, values may be strings."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for key, value in overrides.items():
            name = key.lower()
            if name not in fields:
                raise ConfigError(f"unknown setting '{key}' (known: {', '.join(sorted(fields))})")
            changes[name] = _coerce(name, type(getattr(self, name)), value)
        return dataclasses.replace(self, **changes)


def _coerce(name: str, kind: type, value: Any) -> Any:
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is bool and isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"setting '{name}' must be true or false, got {value!r}")
    try:
        if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, str):
            return int(value)
        if kind is str:
            return str(value)
    except ValueError:
        pass
    raise ConfigError(f"setting '{name}' must be {kind.__name__}, got {value!r}")


def _level(name: str, value: str) -> int:
    level = logging.getLevelName(value.upper())
    if not isinstance(level, int):
        raise ConfigError(f"setting '{name}' must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
    return level

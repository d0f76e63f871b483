"""KServe v2 / Open Inference Protocol: what its REST (``rest.py``) and gRPC (``grpc.py``) front
doors share. Both only translate their wire format into the calls below and back; the work is
the inference core's (``app.inference``).

The model as v2 describes it (``model_metadata``)::

    platform  "tensorflow_graphdef"
    inputs    image   BYTES [-1]           one encoded image (JPEG, PNG, GIF, BMP, WebP) per element
    outputs   scores  FP32  [-1, classes]  every class's score, in class-id order

An output request may ask for the *classification extension* (``classification: N``): the
output is then BYTES ``[-1, N]`` of ``"score:index:label"`` strings (``"score:index"`` for a model
without labels), best first (N is capped at the number of classes; the score is printed as
C++'s ``std::to_string`` does: checked against Triton 2.51 with ``scripts/triton_conformance.py``).

Versions: ``/versions/<v>`` (REST) or ``model_version`` (gRPC) is a version number; a name that
is not a number is taken as a version label (``versions.json``), a graphserve extension.

Errors: ``V2Error`` (a malformed request) is a 4xx INVALID_ARGUMENT; the domain exceptions of
the core have a kind (``app.kinds``), and ``ERRORS`` maps kinds to an HTTP status and a gRPC
status code, the one table both front doors read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..images import check_image_count
from ..inference import ModelResult
from ..kinds import Kind, describe
from ..registry import ModelNotFound, VersionNotFound
from ..services import Services
from ..text import clip, shown
from ..version import package_version
from ..wire import MAX_VERSION_DIGITS

SERVER_NAME = "graphserve"
SERVER_VERSION = package_version()  # the package's, as Triton reports its own
EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORM = "tensorflow_graphdef"
INPUT = "image"
OUTPUT = "scores"
MAX_OUTPUTS = 16  # output requests in one infer: the model has one output, asked a few ways at most


class V2Error(ValueError):
    """A request the protocol cannot accept (wrong input name, datatype, shape, data ...)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# KServe v2: kind (app.kinds) -> (HTTP status, gRPC status code name), the table both doors read.
ERRORS: dict[Kind, tuple[int, str]] = {
    Kind.INVALID: (400, "INVALID_ARGUMENT"),
    Kind.TOO_LARGE: (413, "INVALID_ARGUMENT"),
    Kind.UNSUPPORTED: (415, "INVALID_ARGUMENT"),
    Kind.NOT_FOUND: (404, "NOT_FOUND"),
    Kind.OVERLOADED: (503, "RESOURCE_EXHAUSTED"),
    Kind.UNAVAILABLE: (503, "UNAVAILABLE"),
    Kind.DEADLINE: (504, "DEADLINE_EXCEEDED"),
    Kind.INTERNAL: (500, "INTERNAL"),
}


def error_answer(exc: BaseException) -> tuple[int, str] | None:
    """(HTTP status, gRPC code name) for a protocol or domain error; None for a bug."""
    if isinstance(exc, V2Error):
        return exc.status, "INVALID_ARGUMENT"
    described = describe(exc)
    return None if described is None else ERRORS[described.kind]


@dataclass(frozen=True)
class OutputRequest:
    name: str = OUTPUT
    classification: int = 0  # 0: the scores; N: the classification extension, top N
    binary: bool | None = None  # REST only: answer in the binary data extension


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # "FP32" or "BYTES"
    shape: list[int]
    data: np.ndarray  # float32 for FP32, object (bytes) for BYTES; shape ``shape``

    def raw(self) -> bytes:
        """The binary data extension's (and gRPC ``raw_output_contents``') bytes."""
        if self.datatype == "BYTES":
            return serialize_bytes([bytes(item) for item in self.data.flat])
        return np.ascontiguousarray(self.data, dtype="<f4").tobytes()

    def json_data(self) -> list[Any]:
        """Flat, row-major, as v2 JSON carries it (BYTES as UTF-8 strings)."""
        if self.datatype == "BYTES":
            return [bytes(item).decode("utf-8", "replace") for item in self.data.flat]
        return self.data.reshape(-1).tolist()


def serialize_bytes(items: list[bytes]) -> bytes:
    return b"".join(len(item).to_bytes(4, "little") + item for item in items)


def read_bytes_elements(read: Callable[[int], bytes], count: int, what: str) -> tuple[list[bytes], int]:
    """``count`` BYTES elements from ``read`` (each a 4-byte little-endian length, then that many
    bytes) and the bytes they took. Reads no further than ``count`` elements (``count`` is within
    the images limit already), so data of millions of empty elements costs what one does."""
    items: list[bytes] = []
    consumed = 0
    for _ in range(count):
        prefix = read(4)
        if len(prefix) < 4:
            if prefix:
                raise V2Error(f"{what}: element {len(items)} is cut short (a BYTES element is a 4-byte "
                              "little-endian length, then that many bytes)")
            break
        length = int.from_bytes(prefix, "little")
        item = read(length)
        if len(item) < length:
            raise V2Error(f"{what}: element {len(items)} says {length} bytes but only {len(item)} follow")
        items.append(item)
        consumed += 4 + length
    if len(items) != count:
        raise V2Error(f"{what}: the shape says {count} elements but the data holds {len(items)}")
    return items, consumed


def deserialize_bytes(raw: bytes | memoryview, count: int, what: str) -> list[bytes]:
    """Exactly ``count`` BYTES elements in ``raw`` (``read_bytes_elements``), nothing after them."""
    view = memoryview(raw)
    offset = 0

    def read(size: int) -> bytes:
        nonlocal offset
        chunk = bytes(view[offset:offset + size])
        offset += len(chunk)
        return chunk

    items, _ = read_bytes_elements(read, count, what)
    if offset != len(view):
        raise V2Error(f"{what}: the shape says {count} elements but {len(view) - offset} more bytes follow them")
    return items


def parse_version(version: str | None) -> tuple[int | None, str | None]:
    """(version, version_label) for ``core.select``; ``None``/empty: the newest available."""
    if not version:
        return None, None
    if version.isascii() and version.isdigit():
        if len(version) > MAX_VERSION_DIGITS:
            raise VersionNotFound(f"version {clip(version)} is not served")
        return int(version), None
    return None, version


def check_model_name(name: str) -> str:
    """One model, by its exact name: our selector syntax (``all``, ``a,b``) does not apply here."""
    if not name or name == "all" or "," in name or name.strip() != name:
        raise ModelNotFound(f"unknown model '{clip(name)}'", model=name)
    return name


def server_ready(services: Services) -> bool:
    return services.ready()


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}


def model_ready(services: Services, name: str, version: str | None) -> bool:
    """Whether the model (version) takes requests now; unknown ones are simply not ready."""
    try:
        model_metadata(services, name, version)
    except (LookupError, ValueError):
        return False
    return True


def model_metadata(services: Services, name: str, version: str | None) -> dict[str, Any]:
    """v2 model metadata (see the module docstring); raises the registry's lookup errors."""
    number, label = parse_version(version)
    with services.core.select(check_model_name(name), version=number, version_label=label) as selected:
        handle = selected.handles[0]
        classes = handle.servable.num_classes
        served = handle.version
    entry = services.registry.snapshot.get(name)
    versions = [str(v) for v in entry.available()] if entry is not None and version is None else [str(served)]
    return {
        "name": name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, classes]}],
    }


def check_input(name: object, datatype: object, shape: object, limit: int) -> int:
    """The number of images an input tensor carries; V2Error unless it is ``image`` BYTES [n],
    ``TooManyImages`` past ``limit`` (``max_images_per_request``): before any element is read."""
    if name != INPUT:
        raise V2Error(f"unexpected inference input '{shown(name)}'; the model takes one input '{INPUT}' "
                      "(BYTES, shape [-1]: one encoded image per element)")
    if datatype != "BYTES":
        raise V2Error(f"input '{INPUT}' has datatype {shown(datatype)}; it must be BYTES "
                      "(one encoded image per element)")
    if not isinstance(shape, list) or len(shape) not in (1, 2) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise V2Error(f"input '{INPUT}' has shape {_shape_shown(shape)}; give [n] (or [n, 1])")
    if len(shape) == 2 and shape[1] != 1:
        raise V2Error(f"input '{INPUT}' has shape {shape}; give [n] (or [n, 1])")
    if shape[0] < 1:
        raise V2Error(f"input '{INPUT}' holds no image")
    check_image_count(shape[0], limit)
    return int(shape[0])


def _shape_shown(shape: object) -> str:
    if isinstance(shape, list) and len(shape) <= 4:
        return "[" + ", ".join(shown(d) for d in shape) + "]"
    return shown(shape) if not isinstance(shape, list) else f"a list of {len(shape)} dimensions"


def check_outputs(outputs: list[OutputRequest]) -> list[OutputRequest]:
    for output in outputs:
        if output.name != OUTPUT:
            raise V2Error(f"unexpected inference output '{clip(output.name)}'; the model has one output "
                          f"'{OUTPUT}' (FP32 [-1, classes]; ask for 'classification' for labels)")
        if output.classification < 0:
            raise V2Error(f"output '{OUTPUT}': classification must be >= 0, got {output.classification}")
    return outputs or [OutputRequest()]


def infer(
    services: Services,
    name: str,
    version: str | None,
    images_data: list[bytes],
    outputs: list[OutputRequest],
    *,
    deadline: float | None = None,
    on_select: Any = None,
) -> tuple[ModelResult, list[Tensor]]:
    """Classify ``images_data`` with one model; the result and one tensor per output asked."""
    started = time.perf_counter()
    outputs = check_outputs(outputs)
    number, label = parse_version(version)
    with services.core.select(check_model_name(name), version=number, version_label=label) as selected:
        if on_select is not None:
            on_select(selected)
        classes = selected.handles[0].servable.num_classes
        labelled = selected.handles[0].servable.labels is not None
        top_k = max([0] + [min(o.classification, classes) for o in outputs])  # 0: scores only, no sort
        raw = [(f"{INPUT}[{i}]", data) for i, data in enumerate(images_data)]
        result = selected.classify_uploads(raw, top_k=top_k, deadline=deadline, started=started)
    model = result.models[0]
    return model, [_tensor(model, output, classes, labelled) for output in outputs]


def _tensor(model: ModelResult, output: OutputRequest, classes: int, labelled: bool) -> Tensor:
    if not output.classification:
        scores = np.asarray(model.scores, dtype=np.float32)
        return Tensor(output.name, "FP32", list(scores.shape), scores)
    k = min(output.classification, classes)
    rows = [[(f"{s.score:f}:{s.class_id}:{s.label}" if labelled else f"{s.score:f}:{s.class_id}").encode()
             for s in image.top_k[:k]] for image in model.results]
    data = np.empty((len(rows), k), dtype=object)
    for i, row in enumerate(rows):
        data[i, :] = row
    return Tensor(output.name, "BYTES", [len(rows), k], data)

"""KServe v2 / Open Inference Protocol: what its REST (``rest.py``) and gRPC (``grpc.py``) front
doors share. Both only translate their wire format into the calls below and back; the work is
the inference core's (``app.inference``).

A model answers by its graph's own tensors: the ``serving_default`` signature's ports, each
with its v2 datatype (``DATATYPES``: FP16 ... BOOL, BYTES; BF16 too). An image classifier also
takes encoded images, as its own input ``image``; a request says which by its input names (both
at once is refused). Model metadata for an image classifier (digits8: 8x8 gray)::

    platform  "tensorflow_graphdef"
    inputs    image   BYTES [-1, 1]        one encoded image (JPEG, PNG, GIF, BMP, WebP) per element
              input   FP32  [-1, 64]       the graph's own input tensor (serving_default)
    outputs   scores  FP32  [-1, classes]  every class's score, in class-id order

``image``'s shape is Triton's for a BYTES input of dims [1] in a model with ``max_batch_size``
> 0; requests may give it [n] or [n, 1]. ``model_config`` is Triton's model configuration
(``GET .../config``, the ``ModelConfig`` RPC): what ``perf_analyzer`` reads to make its requests.

Tensor data arrives in one of three forms, each bounded by ``tensors.check_size`` with the shape
the client *says*, before anything of that size is built: ``values`` (JSON ``data``, gRPC typed
``contents``: each checked against the datatype, a float for INT32 is refused), ``raw`` (the
binary tensor extension and gRPC ``raw_input_contents``: little-endian, BOOL one byte, BYTES a
4-byte little-endian length then the bytes; its byte count must equal shape x datatype size).

An output request may ask for the *classification extension* (``classification: N``) on the
image path's ``scores``: the output is then BYTES ``[-1, N]`` of ``"score:index:label"`` strings
(``"score:index"`` for a model without labels), best first (N is capped at the number of
classes; the score is printed as C++'s ``std::to_string`` does: checked against Triton 2.51
with ``scripts/triton_conformance.py``).

Versions: ``/versions/<v>`` (REST) or ``model_version`` (gRPC) is a version number; a name that
is not a number is taken as a version label (``versions.json``), a graphserve extension.

The model repository extension (Triton's ``extension_model_repository.md``): the index
(``repository_index``) lists every version of every model with Triton's state and a reason, and
is open to anyone, as ``GET /models`` is; ``load_model`` / ``unload_model`` go to the residency
(``app.residency``) behind the admin token (``authorize``: ``app.admin.check_token``).
Our states read as Triton's (``REPOSITORY_STATES``)::

    available -> READY      loading -> LOADING      unloading -> UNLOADING
    unloaded  -> UNAVAILABLE  reason: "not loaded: loads on its first request (memory budget)"
                              or "unloaded through the repository API; ..."
    failed    -> UNAVAILABLE  reason: what the load failed on

Errors: ``V2Error`` (a malformed request) is a 4xx INVALID_ARGUMENT; the domain exceptions of
the core have a kind (``app.kinds``), and ``ERRORS`` maps kinds to an HTTP status and a gRPC
status code, the one table both front doors read; ``ADMIN_ERRORS`` does the same for the admin
token's refusals.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..admin import AdminDisabled, Forbidden, Unauthorized, check_token
from ..images import check_image_count
from ..inference import ModelResult, Selected
from ..kinds import Kind, describe
from ..registry import (
    AVAILABLE,
    FAILED,
    LOADING,
    UNLOADED,
    UNLOADING,
    ColdVersion,
    ModelHandle,
    ModelNotFound,
    VersionNotFound,
)
from ..services import Services
from ..tensors import Port, Signature, check_size, numpy_dtype
from ..text import clip, shown
from ..version import package_version
from ..wire import MAX_VERSION_DIGITS

SERVER_NAME = "graphserve"
SERVER_VERSION = package_version()  # the package's, as Triton reports its own
# Triton's extension names (docs/protocol/README.md), only those implemented.
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "model_repository"]
PLATFORM = "tensorflow_graphdef"
BACKEND = "tensorflow"
INPUT = "image"
OUTPUT = "scores"
MAX_OUTPUTS = 16  # output requests in one infer (more than any served signature has)
MAX_INPUTS = 64  # input tensors in one infer, counted before any is read
MAX_DIMS = 64  # dimensions of one input's shape, counted before the shape is read

# v2 datatype <-> TF dtype name (app.tensors.Port.dtype)
DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BF16": "bfloat16", "BYTES": "string",
}
V2_DATATYPE = {dtype: v2 for v2, dtype in DATATYPES.items()}


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


# The admin token's refusals (``app.admin.check_token``): (HTTP status, gRPC status code name).
# No token set: the endpoints are off, a 404 as every /admin path answers, UNIMPLEMENTED over gRPC.
ADMIN_ERRORS: dict[type[BaseException], tuple[int, str]] = {
    Unauthorized: (401, "UNAUTHENTICATED"),
    Forbidden: (403, "PERMISSION_DENIED"),
    AdminDisabled: (404, "UNIMPLEMENTED"),
}


def error_answer(exc: BaseException) -> tuple[int, str] | None:
    """(HTTP status, gRPC code name) for a protocol, admin or domain error; None for a bug."""
    if isinstance(exc, V2Error):
        return exc.status, "INVALID_ARGUMENT"
    refused = ADMIN_ERRORS.get(type(exc))
    if refused is not None:
        return refused
    described = describe(exc)
    return None if described is None else ERRORS[described.kind]


def datatype(dtype: str) -> str:
    """The v2 datatype of a TF dtype name (one a graph can serve)."""
    return V2_DATATYPE.get(dtype, dtype.upper())


@dataclass(frozen=True)
class OutputRequest:
    name: str = OUTPUT
    classification: int = 0  # 0: the scores; N: the classification extension, top N
    binary: bool | None = None  # REST only: answer in the binary data extension


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # v2 datatype ("FP32", "BYTES", ...)
    shape: list[int]
    data: np.ndarray  # of the datatype's numpy dtype (BYTES: object, of bytes); shape ``shape``

    def raw(self) -> bytes:
        """The binary data extension's (and gRPC ``raw_output_contents``') bytes."""
        if self.datatype == "BYTES":
            return serialize_bytes([bytes(item) for item in self.data.flat])
        if self.datatype == "BOOL":
            return np.ascontiguousarray(self.data, dtype=np.uint8).tobytes()
        return np.ascontiguousarray(self.data, dtype=self.data.dtype.newbyteorder("<")).tobytes()

    def json_data(self) -> list[Any]:
        """Flat, row-major, as v2 JSON carries it (BYTES as UTF-8 strings)."""
        if self.datatype == "BYTES":
            return [bytes(item).decode("utf-8", "replace") for item in self.data.flat]
        if self.datatype == "BF16":  # ml_dtypes' scalars are no JSON numbers
            return self.data.astype(np.float32).reshape(-1).tolist()
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


# -- the model repository extension ------------------------------------------------------------

REPOSITORY_STATES = {AVAILABLE: "READY", LOADING: "LOADING", UNLOADING: "UNLOADING",
                     UNLOADED: "UNAVAILABLE", FAILED: "UNAVAILABLE"}
READY = "READY"
# The parameters each call takes. ``unload_dependents`` (what tritonclient's unload_model always
# sends) changes nothing: no model here has dependents (Triton's ensembles).
REPOSITORY_PARAMETERS: dict[str, frozenset[str]] = {"load": frozenset(), "unload": frozenset({"unload_dependents"})}
MAX_PARAMETERS = 16  # a load or unload request's parameters, counted before any is read


def authorize(services: Services, authorization: str) -> None:
    """The admin token, as ``POST /admin/reload`` checks it (``app.admin.check_token``)."""
    check_token(authorization, services.settings)


def repository_index(services: Services, *, ready: bool = False) -> list[dict[str, str]]:
    """Every version of every model (``ready``: only the READY ones), by name then version, with
    Triton's state (``REPOSITORY_STATES``) and our reason. A model whose folder is wrong and
    has no version is one entry without a version, its error the reason (as Triton lists a
    model it could not load)."""
    index: list[dict[str, str]] = []
    for entry in services.registry.entries():
        if not entry.versions:
            if not ready:
                index.append({"name": entry.name, "state": "UNAVAILABLE", "reason": entry.error or ""})
            continue
        for version, status in sorted(entry.versions.items()):
            state = REPOSITORY_STATES.get(status.state, "UNKNOWN")
            if not ready or state == READY:
                index.append({"name": entry.name, "version": str(version), "state": state,
                              "reason": status.reason or ""})
    return index


def check_repository_parameters(action: str, parameters: Mapping[str, Any],
                                value: Callable[[Any], Any] = lambda v: v) -> None:
    """Refuse what graphserve does not do: Triton's load-time ``config`` and ``file:...``
    overrides (graphserve loads what its graphs folder holds) and any parameter it does not
    know; ``unload_dependents`` must be a boolean. ``value`` reads one wire value."""
    if len(parameters) > MAX_PARAMETERS:  # before walking them: a gRPC map may hold millions
        raise V2Error(f"the {action} request has {len(parameters)} parameters; at most {MAX_PARAMETERS}")
    allowed = REPOSITORY_PARAMETERS[action]
    for name, raw in parameters.items():
        if name not in allowed:
            if action == "load" and (name == "config" or name.startswith("file:")):
                raise V2Error(f"the load parameter '{clip(name)}' is not supported: graphserve loads the versions "
                              "in its graphs folder (put a new version there and POST /admin/reload)")
            takes = ", ".join(f"'{p}'" for p in sorted(allowed)) or "none"
            raise V2Error(f"unknown parameter '{clip(name)}' for {action} (it takes: {takes})")
        if name == "unload_dependents" and not isinstance(value(raw), bool):
            raise V2Error(f"Unable to parse 'unload_dependents': it must be a boolean, got {shown(value(raw))}")


def unload_model(services: Services, name: str) -> None:
    """Unload every loaded version of ``name`` (each drains first); it answers 503 until loaded."""
    _known(services, name, lambda: services.reconciler.residency.unload_model(name))


def load_model(services: Services, name: str, deadline: float) -> None:
    """Load the unloaded versions of ``name``, waiting until ``deadline`` (the door's:
    ``reload_wait_s`` after the call arrived, or a gRPC call's own deadline when shorter).
    Past it the load goes on and the call is a DEADLINE_EXCEEDED that says so. Loading a
    model that is loaded already changes nothing (``/admin/reload`` re-reads changed files)."""
    wait = max(0.0, deadline - time.monotonic())
    _known(services, name, lambda: services.reconciler.residency.load_model(name, wait))


def _known(services: Services, name: str, call: Callable[[], None]) -> None:
    """``call`` for the model ``name``; an unknown one is a NOT_FOUND that lists the repository."""
    try:
        check_model_name(name)
        call()
    except ModelNotFound:
        known = ", ".join(e.name for e in services.registry.entries() if e.versions) or "none"
        raise ModelNotFound(f"unknown model '{clip(name)}' (the repository holds: {clip(known, 200)})",
                            model=name) from None


# -- the model as v2 and Triton describe it ----------------------------------------------------

@dataclass(frozen=True)
class Model:
    """The selected version as a door needs it to read a request: its signature and limits."""

    name: str
    signature: Signature
    takes_images: bool
    max_batch_size: int  # Triton's: > 0 when requests stack along dimension 0
    max_images: int  # settings.max_images_per_request
    max_tensor_bytes: int  # settings.max_tensor_bytes

    def takes(self) -> str:
        """What an infer may send, for messages: ``'image' (BYTES [-1, 1]) or 'a' (FP32 [-1, 3])``."""
        ports = ", ".join(f"'{p['name']}' ({p['datatype']} {_dims(p['shape'])})" for p in self.ports(inputs=True)
                          if p["name"] != INPUT or not self.takes_images)
        return f"'{INPUT}' ({_image_shape(self)}) or {ports}" if self.takes_images else ports

    def ports(self, *, inputs: bool) -> list[dict[str, Any]]:
        """Metadata's ``inputs`` or ``outputs``: name, datatype, shape (unknown rank: [-1]). With
        batching, an input of shape [-1] shows [-1, 1], as Triton shows a batched input of dims
        [1] (perf_analyzer makes its requests from these shapes less the batch dimension, and an
        empty one it refuses); [n] and [n, 1] are both taken (``tensor_input``)."""
        side = self.signature.inputs if inputs else self.signature.outputs
        listed = [{"name": key, "datatype": datatype(port.dtype), "shape": v2_shape(port)} for key, port in side.items()]
        if inputs and self.takes_images and INPUT not in side:
            listed.insert(0, {"name": INPUT, "datatype": "BYTES", "shape": [-1]})
        if inputs and self.max_batch_size:
            for port in listed:
                if port["shape"] == [-1]:
                    port["shape"] = [-1, 1]
        return listed


def v2_shape(port: Port) -> list[int]:
    """The shape a request may send: what the graph's tensor accepts (-1: any size; unknown
    rank: [-1]), not the signature's declared shape (half_plus_two's x says [-1, 1] and takes [3])."""
    return [-1] if port.accepts is None else [-1 if d is None else d for d in port.accepts]


def _dims(shape: list[int]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _image_shape(model: Model) -> str:
    return "BYTES [-1, 1]: one encoded image per element" if model.max_batch_size else "BYTES [-1]"


def model_of(selected: Selected, services: Services) -> Model:
    """The one selected version as a ``Model`` (its ``serving_default`` signature)."""
    handle = selected.handles[0]
    signature = selected.signature(None)
    settings = services.settings
    return Model(handle.name, signature, handle.servable.takes_images, _max_batch_size(handle, signature),
                 settings.max_images_per_request, settings.max_tensor_bytes)


def _max_batch_size(handle: ModelHandle, signature: Signature) -> int:
    return handle.servable.manifest.batching.max_batch_size if signature.batched else 0


def _select(services: Services, name: str, version: str | None) -> Selected:
    number, label = parse_version(version)
    return services.core.select(check_model_name(name), version=number, version_label=label)


def model_ready(services: Services, name: str, version: str | None) -> bool:
    """Whether the model (version) takes requests now; unknown ones are simply not ready. Never
    loads one: a readiness probe must not load (under a memory budget: unload another) model."""
    try:
        number, label = parse_version(version)
        services.registry.resolve(check_model_name(name), version=number, version_label=label)
    except (LookupError, ValueError, ColdVersion):
        return False
    return True


def model_metadata(services: Services, name: str, version: str | None) -> dict[str, Any]:
    """v2 model metadata (see the module docstring); raises the registry's lookup errors."""
    with _select(services, name, version) as selected:
        model = model_of(selected, services)
        served = selected.handles[0].version
    entry = services.registry.snapshot.get(name)
    versions = [str(v) for v in entry.available()] if entry is not None and version is None else [str(served)]
    return {"name": name, "versions": versions, "platform": PLATFORM,
            "inputs": model.ports(inputs=True), "outputs": model.ports(inputs=False)}


def model_config(services: Services, name: str, version: str | None) -> dict[str, Any]:
    """Triton's model configuration (``model_config.proto`` as Triton's REST answers it): what
    ``perf_analyzer`` and ``tritonclient``'s ``get_model_config`` read. With ``max_batch_size``
    > 0 the dims leave out the batch dimension, and a port of shape [-1] is dims [1] (Triton
    allows no empty dims with batching): requests may give it [n, 1], or [n]. No ``reshape`` is
    listed: perf_analyzer would make its requests of the reshape's shape, here none."""
    with _select(services, name, version) as selected:
        model = model_of(selected, services)
        handle = selected.handles[0]
        batching = handle.servable.manifest.batching
        labelled = handle.servable.labels is not None
    config: dict[str, Any] = {
        "name": name, "platform": PLATFORM, "backend": BACKEND,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": model.max_batch_size,
        "input": [_config_port(p, model.max_batch_size, "input") for p in model.ports(inputs=True)],
        "output": [_config_port(p, model.max_batch_size, "output") for p in model.ports(inputs=False)],
        "instance_group": [{"name": name, "kind": "KIND_CPU", "count": batching.workers}],
    }
    if labelled:
        for output in config["output"]:
            if output["name"] == OUTPUT:
                output["label_filename"] = "labels.txt"
    if model.max_batch_size:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": int(batching.batch_timeout_ms * 1000)}
    return config


def _config_port(port: dict[str, Any], max_batch_size: int, side: str) -> dict[str, Any]:
    dims = list(port["shape"][1:]) if max_batch_size else list(port["shape"])
    entry: dict[str, Any] = {"name": port["name"], "data_type": _config_type(port["datatype"]), "dims": dims or [1]}
    if side == "input":
        entry["format"] = "FORMAT_NONE"
    return entry


def _config_type(v2: str) -> str:
    return "TYPE_STRING" if v2 == "BYTES" else f"TYPE_{v2}"


# -- reading a request's inputs ---------------------------------------------------------------

def takes_images(model: Model, names: Sequence[object]) -> bool:
    """Whether a request with inputs ``names`` goes the image path (its one input ``image``) or
    the tensor path; refuses both at once, and ``image`` to a model served by its tensors only."""
    if INPUT not in names or INPUT in model.signature.inputs:
        return False
    if not model.takes_images:
        raise V2Error(f"model '{model.name}' takes no '{INPUT}' input: it is served by its own tensors, "
                      f"{model.takes()}")
    if len(names) != 1:
        raise V2Error(f"give either '{INPUT}' (encoded images) or the model's tensor input(s), not both: "
                      f"model '{model.name}' takes {model.takes()}")
    return True


def check_input(name: object, datatype: object, shape: object, limit: int) -> int:
    """The number of images the image input carries; V2Error unless it is ``image`` BYTES [n]
    or [n, 1], ``TooManyImages`` past ``limit`` (``max_images_per_request``): before any element
    is read."""
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


@dataclass(frozen=True)
class InputTensor:
    """One tensor input's header, checked: its port, the shape to give the graph, its elements."""

    key: str
    port: Port
    shape: tuple[int, ...]
    count: int
    what: str  # "input 'a' (FP32 [2, 3])", for messages


def tensor_input(model: Model, name: object, v2_datatype: object, shape: object, *,
                 data_bytes: int = 0) -> InputTensor:
    """Check an input's name, datatype and shape against ``model`` and its size against
    ``max_tensor_bytes`` (``tensors.check_size``, strings counting ``data_bytes``), before any
    data is read. A [n, 1] input to a batched port of shape [-1] is [n] (Triton's reshape)."""
    if not isinstance(name, str):
        raise V2Error(f"each input needs a 'name' (a string), got {shown(name)}")
    port = model.signature.inputs.get(name)
    if port is None:
        raise V2Error(f"unexpected inference input '{clip(name)}' for model '{model.name}': it takes {model.takes()}")
    expected = datatype(port.dtype)
    if v2_datatype != expected:
        raise V2Error(f"unexpected datatype {shown(v2_datatype)} for inference input '{name}', expecting "
                      f"{expected} (model '{model.name}' takes {model.takes()})")
    dims = _check_shape(shape, f"input '{name}'")
    what = f"input '{name}' ({expected} {_dims(dims)})"
    count = check_size(what, dims, port.dtype, model.max_tensor_bytes, data_bytes=data_bytes)
    accepts = port.accepts
    if (model.max_batch_size and accepts is not None and len(accepts) == 1 and len(dims) == 2 and dims[1] == 1):
        dims = dims[:1]
    return InputTensor(name, port, tuple(dims), count, what)


def _check_shape(shape: object, what: str) -> list[int]:
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise V2Error(f"{what}: 'shape' must be a list of at most {MAX_DIMS} integers, got {_shape_shown(shape)}")
    if any(d < 0 for d in shape):
        raise V2Error(f"{what}: shape {_shape_shown(shape)} has a negative dimension")
    return shape


def from_raw(tensor: InputTensor, raw: bytes | memoryview) -> np.ndarray:
    """The binary tensor extension's (or ``raw_input_contents``') bytes as the input's array:
    little-endian, BOOL one byte, BYTES length-prefixed; the byte count must be exact."""
    dtype = tensor.port.numpy
    if tensor.port.dtype == "string":
        return _strings(deserialize_bytes(raw, tensor.count, tensor.what), tensor.shape)
    expected = tensor.count * dtype.itemsize
    if len(raw) != expected:
        raise V2Error(f"unexpected total byte size {len(raw)} for {tensor.what}, expecting {expected}")
    if tensor.port.dtype == "bool":
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(tensor.shape)
    little = dtype.newbyteorder("<") if dtype.byteorder in ("=", "<", ">") else dtype
    return np.frombuffer(raw, dtype=little).astype(dtype, copy=False).reshape(tensor.shape)


def from_values(tensor: InputTensor, values: Sequence[Any], *, typed: bool = False) -> np.ndarray:
    """Elements given one by one (JSON ``data`` flattened; gRPC typed ``contents``) as the
    input's array: exactly the shape's count, each of the datatype (``typed``: the wire's field
    already fixed the Python type; integers are still checked against the datatype's range)."""
    if len(values) != tensor.count:
        raise V2Error(f"{tensor.what}: the shape says {tensor.count} elements but the data holds {len(values)}")
    kind = tensor.port.dtype
    if kind == "string":
        if not typed and not all(isinstance(v, str) for v in values):
            raise V2Error(f"{tensor.what}: each element must be a string")
        return _strings([v if isinstance(v, bytes) else v.encode("utf-8") for v in values], tensor.shape)
    if kind == "bool":
        if not typed and not all(v is True or v is False for v in values):
            raise V2Error(f"{tensor.what}: each element must be true or false")
        return np.array(values, dtype=np.bool_).reshape(tensor.shape)
    dtype = tensor.port.numpy
    if kind in ("float16", "float32", "float64", "bfloat16"):
        if not typed and not all(type(v) in (int, float) for v in values):
            raise V2Error(f"{tensor.what}: each element must be a number")
        try:
            with np.errstate(over="ignore"):  # past the datatype's range is inf, as a C cast
                return np.array(values, dtype=np.float64).astype(dtype).reshape(tensor.shape)
        except OverflowError:  # an integer past float64 (JSON has no limit)
            raise V2Error(f"{tensor.what}: an element is outside {datatype(kind)}'s range") from None
    if not typed and not all(type(v) is int for v in values):
        bad = next(v for v in values if type(v) is not int)
        raise V2Error(f"{tensor.what}: each element must be an integer, got {shown(bad)}")
    limits = np.iinfo(dtype)
    if values and (min(values) < limits.min or max(values) > limits.max):
        raise V2Error(f"{tensor.what}: an element is outside {datatype(kind)}'s range [{limits.min}, {limits.max}]")
    return np.array(values, dtype=dtype).reshape(tensor.shape)


def _strings(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def check_outputs(outputs: list[OutputRequest]) -> list[OutputRequest]:
    """The image path's outputs: ``scores``, perhaps as classification labels."""
    for output in outputs:
        if output.name != OUTPUT:
            raise V2Error(f"unexpected inference output '{clip(output.name)}'; the image input answers one output "
                          f"'{OUTPUT}' (FP32 [-1, classes]; ask for 'classification' for labels)")
        if output.classification < 0:
            raise V2Error(f"output '{OUTPUT}': classification must be >= 0, got {output.classification}")
    return outputs or [OutputRequest()]


def check_tensor_outputs(model: Model, outputs: list[OutputRequest]) -> list[OutputRequest]:
    """The tensor path's outputs: each the signature's, once; none asked: all of them."""
    seen = set()
    for output in outputs:
        if output.name not in model.signature.outputs:
            raise V2Error(f"unexpected inference output '{clip(output.name)}' for model '{model.name}' "
                          f"(outputs: {', '.join(model.signature.outputs)})")
        if output.name in seen:
            raise V2Error(f"output '{output.name}' is asked for twice")
        if output.classification:
            raise V2Error(f"output '{output.name}': classification is offered on the '{OUTPUT}' of the '{INPUT}' "
                          "input only")
        seen.add(output.name)
    return outputs or [OutputRequest(key) for key in model.signature.outputs]


# -- inference ---------------------------------------------------------------------------------

@dataclass
class Parsed:
    """A request as a door read it: encoded images (the image path) or arrays by input key."""

    outputs: list[OutputRequest]
    images: list[bytes] | None = None
    feeds: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Answer:
    name: str
    version: int
    outputs: list[tuple[Tensor, OutputRequest]]  # in the order asked (none asked: every output)
    images: int  # encoded images classified (0 on the tensor path)


def infer(
    services: Services,
    name: str,
    version: str | None,
    parse: Callable[[Model], Parsed],
    *,
    deadline: float | None = None,
    on_select: Callable[[Selected], None] | None = None,
) -> Answer:
    """Select the model, then ``parse`` the request for it (a door reads its body only once the
    model is known: an unknown model is a 404 whatever the body), then run it."""
    started = time.perf_counter()
    with _select(services, name, version) as selected:
        if on_select is not None:
            on_select(selected)
        model = model_of(selected, services)
        parsed = parse(model)
        if parsed.images is not None:
            return _classify(selected, parsed, deadline, started)
        outputs = check_tensor_outputs(model, parsed.outputs)
        result = selected.predict(model.signature, parsed.feeds, outputs=[o.name for o in parsed.outputs] or None,
                                  deadline=deadline, started=started)
    tensors = [(_output(model.signature.outputs[o.name], result.outputs[o.name]), o) for o in outputs]
    return Answer(result.name, result.version, tensors, 0)


def _output(port: Port, array: np.ndarray) -> Tensor:
    return Tensor(port.key, datatype(port.dtype), list(array.shape), np.asarray(array, dtype=numpy_dtype(port.dtype)))


def _classify(selected: Selected, parsed: Parsed, deadline: float | None, started: float) -> Answer:
    """The image path: encoded images in, ``scores`` (or classification strings) out."""
    outputs = check_outputs(parsed.outputs)
    servable = selected.handles[0].servable
    classes, labelled = servable.num_classes, servable.labels is not None
    top_k = max([0] + [min(o.classification, classes) for o in outputs])  # 0: scores only, no sort
    images = parsed.images or []
    raw = [(f"{INPUT}[{i}]", data) for i, data in enumerate(images)]
    model = selected.classify_uploads(raw, top_k=top_k, deadline=deadline, started=started).models[0]
    return Answer(model.name, model.version, [(_tensor(model, o, classes, labelled), o) for o in outputs], len(images))


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

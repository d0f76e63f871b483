"""KServe v2 gRPC (``inference.GRPCInferenceService``): the servicer ``tritonclient[grpc]`` ships,
filled in with translations onto ``app.kserve``; ``install(server, app)`` adds it to the
process's gRPC server (``app/grpc_server.py``).

``ServerLive``, ``ServerReady``, ``ModelReady`` (an unknown model is just not ready),
``ServerMetadata``, ``ModelMetadata``, ``ModelConfig`` (Triton's ``model_config.proto``, as
``tritonclient.grpc``'s ``get_model_config`` and perf_analyzer read it) and ``ModelInfer``.
``ModelInfer`` takes the model's tensor inputs (or an image classifier's ``image``, BYTES) either
all in ``raw_input_contents`` (little-endian; BYTES elements a 4-byte little-endian length then
the bytes: what ``tritonclient.grpc`` sends) or each in the typed ``contents`` field of its
datatype (``CONTENTS``; FP16 and BF16 have none), and answers every output in
``raw_output_contents``, as Triton does. An output may ask for ``classification`` (int64
parameter) on the image path. The call's gRPC deadline, when shorter, replaces
``request_timeout_s``. The repository extension: ``RepositoryIndex`` (open, as ``GET /models``),
``RepositoryModelLoad`` and ``RepositoryModelUnload``, which need the admin token in the call's
metadata, ``authorization: Bearer <token>`` (UNAUTHENTICATED without it, PERMISSION_DENIED with
a wrong one, UNIMPLEMENTED while no token is set: the admin endpoints are off); graphserve has
one repository, so ``repository_name`` must be empty. Other RPCs of the service answer
UNIMPLEMENTED (naming the method).
Errors map through ``app.kserve.ERRORS``. Every call counts in the metrics with
``protocol="kserve_v2_grpc"`` and logs one ``graphserve.request`` line.

Total and bounded: ``app.grpc_server.add_servicer`` parses the request bytes inside the
counted call (undecodable bytes: INVALID_ARGUMENT, unimplemented methods: UNIMPLEMENTED, both
without a traceback); repeated fields (``shape``, ``bytes_contents``, ``outputs``) are counted
with ``len()`` before any per-element Python object is built; ``model_version`` is read by
``kserve.parse_version`` (ASCII digits only), as the REST door reads it.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from .. import kserve, observe
from ..grpc_server import add_servicer
from ..services import Services
from ..text import clip
from . import OutputRequest, V2Error

PROTOCOL = "kserve_v2_grpc"  # the protocol label of graphserve_requests_total


def install(server: grpc.Server, services: Services) -> None:
    add_servicer(server, service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server, InferenceServicer(services),
                 services=services, protocol=PROTOCOL, answer=_answer)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Plain ``(request, context)`` methods: ``add_servicer`` counts, logs and answers errors."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return service_pb2.ServerReadyResponse(ready=kserve.server_ready(self.services))

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return service_pb2.ModelReadyResponse(ready=kserve.model_ready(self.services, request.name, request.version))

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return service_pb2.ServerMetadataResponse(**kserve.server_metadata())

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        metadata = kserve.model_metadata(self.services, request.name, request.version)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[tensor(**t) for t in metadata["inputs"]],
            outputs=[tensor(**t) for t in metadata["outputs"]],
        )

    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:
        config = kserve.model_config(self.services, request.name, request.version)
        return service_pb2.ModelConfigResponse(config=json_format.ParseDict(config, model_config_pb2.ModelConfig()))

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        observation = observe.current_rpc()
        if len(request.outputs) > kserve.MAX_OUTPUTS:
            raise V2Error(f"the request asks for {len(request.outputs)} outputs; at most {kserve.MAX_OUTPUTS}")
        outputs = []
        for output in request.outputs:
            parameter = output.parameters.get("classification")
            classification = parameter.int64_param if parameter is not None else 0
            outputs.append(OutputRequest(output.name, int(classification)))
        deadline = observe.grpc_deadline(context, self.services.settings.request_timeout_s)
        answer = kserve.infer(self.services, request.model_name, request.model_version,
                              lambda model: _parse(model, request, outputs), deadline=deadline,
                              on_select=lambda selected: observation.models.extend(selected.models))
        observation.images = answer.images
        response = service_pb2.ModelInferResponse(
            model_name=answer.name, model_version=str(answer.version), id=request.id
        )
        for out, _ in answer.outputs:
            response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
            response.raw_output_contents.append(out.raw())
        return response

    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:
        _one_repository(request.repository_name)
        index = kserve.repository_index(self.services, ready=request.ready)
        entry = service_pb2.RepositoryIndexResponse.ModelIndex
        return service_pb2.RepositoryIndexResponse(models=[entry(**model) for model in index])

    def RepositoryModelLoad(self, request: Any, context: grpc.ServicerContext) -> Any:
        kserve.authorize(self.services, _authorization(context))  # before anything else is read
        _one_repository(request.repository_name)
        kserve.check_repository_parameters("load", request.parameters, _parameter)
        deadline = observe.grpc_deadline(context, self.services.settings.reload_wait_s)
        kserve.load_model(self.services, request.model_name, deadline)
        return service_pb2.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request: Any, context: grpc.ServicerContext) -> Any:
        kserve.authorize(self.services, _authorization(context))
        _one_repository(request.repository_name)
        kserve.check_repository_parameters("unload", request.parameters, _parameter)
        kserve.unload_model(self.services, request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


def _authorization(context: grpc.ServicerContext) -> str:
    """The call's ``authorization`` metadata (gRPC keys are lower case), as the HTTP header."""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            return value
    return ""


def _one_repository(name: str) -> None:
    if name:
        raise V2Error(f"'repository_name' specification is not supported (got '{clip(name)}'): graphserve serves "
                      "one graphs folder; leave it empty")


def _parameter(parameter: Any) -> Any:
    """A ``ModelRepositoryParameter``'s value (bool, int64, string or bytes), None when unset."""
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


# v2 datatype -> the InferTensorContents field that carries it (FP16 and BF16: raw only)
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _parse(model: kserve.Model, request: Any, outputs: list[OutputRequest]) -> kserve.Parsed:
    """The request's inputs for ``model``: encoded images, or arrays by input key."""
    count = len(request.inputs)
    if not count or count > kserve.MAX_INPUTS:
        raise V2Error(f"the request has {count} inputs; model '{model.name}' takes {model.takes()}")
    raw = request.raw_input_contents
    if raw and len(raw) != count:
        raise V2Error(f"raw_input_contents has {len(raw)} entries for {count} inputs")
    parsed = kserve.Parsed(outputs)
    if kserve.takes_images(model, [tensor.name for tensor in request.inputs]):
        parsed.images = _images(model, request.inputs[0], raw[0] if raw else None)
        return parsed
    for i, tensor in enumerate(request.inputs):
        if tensor.name in parsed.feeds:
            raise V2Error(f"input '{tensor.name}' is given twice")
        parsed.feeds[tensor.name] = _tensor(model, tensor, raw[i] if raw else None)
    return parsed


def _shape(tensor: Any) -> list[int]:
    if len(tensor.shape) > kserve.MAX_DIMS:  # before list(): a shape can hold millions of dimensions
        raise V2Error(f"input '{clip(tensor.name)}' has {len(tensor.shape)} dimensions; at most {kserve.MAX_DIMS}")
    return list(tensor.shape)


def _images(model: kserve.Model, tensor: Any, raw: bytes | None) -> list[bytes]:
    count = kserve.check_input(tensor.name, tensor.datatype, _shape(tensor), model.max_images)
    what = f"input '{kserve.INPUT}'"
    if raw is not None:
        return kserve.deserialize_bytes(raw, count, what)
    held = len(tensor.contents.bytes_contents)  # before list(): millions of empty elements fit in a message
    if held != count:
        raise V2Error(f"{what}: the shape says {count} elements but bytes_contents holds {held}")
    return list(tensor.contents.bytes_contents)


def _tensor(model: kserve.Model, tensor: Any, raw: bytes | None) -> Any:
    """One tensor input's array, from its raw bytes or from the typed ``contents`` field of its datatype."""
    checked = kserve.tensor_input(model, tensor.name, tensor.datatype, _shape(tensor),
                                  data_bytes=len(raw) if raw is not None else 0)
    if raw is not None:
        return kserve.from_raw(checked, raw)
    field = CONTENTS.get(tensor.datatype)
    if field is None:
        raise V2Error(f"{checked.what}: {tensor.datatype} travels in raw_input_contents only")
    values = getattr(tensor.contents, field)
    if len(values) != checked.count:  # before list()
        raise V2Error(f"{checked.what}: the shape says {checked.count} elements but {field} holds {len(values)}")
    return kserve.from_values(checked, list(values), typed=True)


def _answer(exc: BaseException) -> tuple[grpc.StatusCode, int, str] | None:
    found = kserve.error_answer(exc)
    return None if found is None else (grpc.StatusCode[found[1]], found[0], str(exc))

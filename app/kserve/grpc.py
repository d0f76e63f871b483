"""KServe v2 gRPC (``inference.GRPCInferenceService``): the servicer ``tritonclient[grpc]`` ships,
filled in with translations onto ``app.kserve``; ``install(server, app)`` adds it to the
process's gRPC server (``app/grpc_server.py``).

``ServerLive``, ``ServerReady``, ``ModelReady`` (an unknown model is just not ready),
``ServerMetadata``, ``ModelMetadata`` and ``ModelInfer``. ``ModelInfer`` takes the one input
``image`` (BYTES) either as ``raw_input_contents`` (4-byte little-endian length per element:
what ``tritonclient.grpc`` sends) or as ``contents.bytes_contents``, and answers every output in
``raw_output_contents``, as Triton does. An output may ask for ``classification`` (int64
parameter). The call's gRPC deadline, when shorter, replaces ``request_timeout_s``. Other RPCs
of the service answer UNIMPLEMENTED. Errors map through ``app.kserve.ERRORS``. Every call
counts in the metrics with ``protocol="kserve_v2_grpc"`` and logs one ``graphserve.request`` line.

Total and bounded: ``app.grpc_server.add_servicer`` parses the request bytes inside the
counted call (undecodable bytes: INVALID_ARGUMENT, unimplemented methods: UNIMPLEMENTED, both
without a traceback); repeated fields (``shape``, ``bytes_contents``, ``outputs``) are counted
with ``len()`` before any per-element Python object is built; ``model_version`` is read by
``kserve.parse_version`` (ASCII digits only), as the REST door reads it.
"""

from __future__ import annotations

from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .. import kserve, observe
from ..grpc_server import add_servicer
from ..services import Services
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

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        observation = observe.current_rpc()
        if len(request.inputs) != 1:
            raise V2Error(f"the request has {len(request.inputs)} inputs; give one, '{kserve.INPUT}' "
                          "(BYTES, shape [-1])")
        tensor = request.inputs[0]
        if len(tensor.shape) > 2:  # before list(): a shape can hold millions of dimensions
            raise V2Error(f"input '{kserve.INPUT}' has {len(tensor.shape)} dimensions; give [n] (or [n, 1])")
        count = kserve.check_input(tensor.name, tensor.datatype, list(tensor.shape),
                                   self.services.settings.max_images_per_request)
        what = f"input '{kserve.INPUT}'"
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise V2Error(f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input")
            images = kserve.deserialize_bytes(request.raw_input_contents[0], count, what)
        else:
            held = len(tensor.contents.bytes_contents)  # before list(): millions of empty elements fit in a message
            if held != count:
                raise V2Error(f"{what}: the shape says {count} elements but bytes_contents holds {held}")
            images = list(tensor.contents.bytes_contents)
        if len(request.outputs) > kserve.MAX_OUTPUTS:
            raise V2Error(f"the request asks for {len(request.outputs)} outputs; at most {kserve.MAX_OUTPUTS}")
        outputs = []
        for output in request.outputs:
            parameter = output.parameters.get("classification")
            classification = parameter.int64_param if parameter is not None else 0
            outputs.append(OutputRequest(output.name, int(classification)))
        deadline = observe.grpc_deadline(context, self.services.settings.request_timeout_s)
        observation.images = len(images)
        result, tensors = kserve.infer(self.services, request.model_name, request.model_version, images, outputs,
                                       deadline=deadline,
                                       on_select=lambda selected: observation.models.extend(selected.models))
        response = service_pb2.ModelInferResponse(
            model_name=result.name, model_version=str(result.version), id=request.id
        )
        for out in tensors:
            response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
            response.raw_output_contents.append(out.raw())
        return response


def _answer(exc: BaseException) -> tuple[grpc.StatusCode, int, str] | None:
    found = kserve.error_answer(exc)
    return None if found is None else (grpc.StatusCode[found[1]], found[0], str(exc))

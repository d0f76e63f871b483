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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .. import kserve, observe
from ..observe import Observation
from ..services import Services
from . import OutputRequest, V2Error

PROTOCOL = "kserve_v2_grpc"  # the protocol label of graphserve_requests_total

T = TypeVar("T")


def install(server: grpc.Server, services: Services) -> None:
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(services), server)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, services: Services) -> None:
        self.services = services

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("ServerLive", context, lambda observation: service_pb2.ServerLiveResponse(live=True))

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("ServerReady", context,
                          lambda observation: service_pb2.ServerReadyResponse(ready=kserve.server_ready(self.services)))

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("ModelReady", context, lambda observation: service_pb2.ModelReadyResponse(
            ready=kserve.model_ready(self.services, request.name, request.version)))

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("ServerMetadata", context,
                          lambda observation: service_pb2.ServerMetadataResponse(**kserve.server_metadata()))

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def run(observation: Observation) -> Any:
            metadata = kserve.model_metadata(self.services, request.name, request.version)
            tensor = service_pb2.ModelMetadataResponse.TensorMetadata
            return service_pb2.ModelMetadataResponse(
                name=metadata["name"],
                versions=metadata["versions"],
                platform=metadata["platform"],
                inputs=[tensor(**t) for t in metadata["inputs"]],
                outputs=[tensor(**t) for t in metadata["outputs"]],
            )

        return self._call("ModelMetadata", context, run)

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("ModelInfer", context, lambda observation: self._infer(request, context, observation))

    def _infer(self, request: Any, context: grpc.ServicerContext, observation: Observation) -> Any:
        if len(request.inputs) != 1:
            raise V2Error(f"the request has {len(request.inputs)} inputs; give one, '{kserve.INPUT}' "
                          "(BYTES, shape [-1])")
        tensor = request.inputs[0]
        count = kserve.check_input(tensor.name, tensor.datatype, list(tensor.shape))
        what = f"input '{kserve.INPUT}'"
        if request.raw_input_contents:
            if len(request.raw_input_contents) != 1:
                raise V2Error(f"raw_input_contents has {len(request.raw_input_contents)} entries for 1 input")
            images = kserve.deserialize_bytes(request.raw_input_contents[0], count, what)
        else:
            images = list(tensor.contents.bytes_contents)
            if len(images) != count:
                raise V2Error(f"{what}: the shape says {count} elements but bytes_contents holds {len(images)}")
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

    def _call(self, method: str, context: grpc.ServicerContext, run: Callable[[Observation], T]) -> T:
        """``run(observation)``, counted and logged (``app.observe.rpc``); an error aborts the call
        with the status ``app.kserve.ERRORS`` gives it (anything else is a bug: logged, INTERNAL)."""
        return observe.rpc(self.services, PROTOCOL, f"/inference.GRPCInferenceService/{method}", context, _answer, run)


def _answer(exc: BaseException) -> tuple[grpc.StatusCode, int, str] | None:
    found = kserve.error_answer(exc)
    return None if found is None else (grpc.StatusCode[found[1]], found[0], str(exc))

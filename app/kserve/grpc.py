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

import logging
import time
from typing import Any, Callable, TypeVar

import grpc
from flask import Flask
from tritonclient.grpc import service_pb2, service_pb2_grpc

from app import kserve
from app.kserve import OutputRequest, V2Error

log = logging.getLogger(__name__)
request_log = logging.getLogger("graphserve.request")
PROTOCOL = "kserve_v2_grpc"  # the protocol label of graphserve_requests_total

T = TypeVar("T")


def install(server: grpc.Server, app: Flask) -> None:
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(app), server)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, app: Flask) -> None:
        self.app = app

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("ServerLive", context, lambda models: service_pb2.ServerLiveResponse(live=True))

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("ServerReady", context,
                          lambda models: service_pb2.ServerReadyResponse(ready=kserve.server_ready(self.app)))

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("ModelReady", context, lambda models: service_pb2.ModelReadyResponse(
            ready=kserve.model_ready(self.app, request.name, request.version)))

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._call("ServerMetadata", context,
                          lambda models: service_pb2.ServerMetadataResponse(**kserve.server_metadata()))

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        def run(models: list[tuple[str, int]]) -> Any:
            metadata = kserve.model_metadata(self.app, request.name, request.version)
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
        return self._call("ModelInfer", context, lambda models: self._infer(request, context, models))

    def _infer(self, request: Any, context: grpc.ServicerContext, models: list[tuple[str, int]]) -> Any:
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
        deadline = None
        remaining = context.time_remaining()
        timeout = self.app.extensions["settings"].request_timeout_s
        if remaining is not None and remaining < timeout:
            deadline = time.monotonic() + max(0.0, remaining)
        result, tensors = kserve.infer(self.app, request.model_name, request.model_version, images, outputs,
                                       deadline=deadline, on_select=lambda selected: models.extend(selected.models))
        response = service_pb2.ModelInferResponse(
            model_name=result.name, model_version=str(result.version), id=request.id
        )
        for out in tensors:
            response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
            response.raw_output_contents.append(out.raw())
        return response

    def _call(self, method: str, context: grpc.ServicerContext, run: Callable[[list[tuple[str, int]]], T]) -> T:
        """``run(models)``, counted (``Metrics.observe_rpc``); on an error the call is aborted with
        the status ``app.kserve.ERRORS`` gives it (anything else is a bug: logged, INTERNAL)."""
        models: list[tuple[str, int]] = []  # filled by run: the (model, version) that answered
        started = time.perf_counter()
        status, code, message = 200, "OK", ""
        try:
            return run(models)
        except Exception as exc:  # noqa: BLE001 - every error becomes a status
            answer = kserve.error_answer(exc)
            if answer is None:
                log.exception("unhandled error")
                status, code, message = 500, "INTERNAL", "internal server error"
            else:
                (status, code), message = answer, str(exc)
                if status == 500:
                    log.error("%s", exc)
        finally:
            self.app.extensions["metrics"].observe_rpc(PROTOCOL, method, code, status, models,
                                                       None if code == "OK" else code.lower())
            level = self.app.extensions["settings"].request_log_level
            if level is not None and request_log.isEnabledFor(level):
                request_log.log(level, "method=gRPC path=/inference.GRPCInferenceService/%s status=%s models=%s "
                                "ms=%.2f", method, code, ",".join(name for name, _ in models) or "-",
                                (time.perf_counter() - started) * 1000)
        context.abort(grpc.StatusCode[code], message)
        raise AssertionError("unreachable")  # context.abort raises

"""The gateway's gRPC transport: Triton's ``inference.GRPCInferenceService`` on ``--grpc-port``.

A ``grpc.aio`` server on the gateway's own event loop, started and stopped with its
:class:`~.service.Gateway`, so a gRPC call is served exactly as a REST one: the tenant is the
bearer token's (``authorization: Bearer <token>`` metadata), then the tenant's rate limit, the
function as that tenant sees it, the same checks of the call (:func:`~.oip.build_call`), the same
Batcher and the same metrics. Messages are read and written by :mod:`.grpc_protocol`; nothing is
ever unpickled. An :class:`~.oip.OipError` becomes the gRPC status of its HTTP one (:func:`grpc_code`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import metadata

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from starlette.concurrency import run_in_threadpool

from ..errors import ConfigError
from .catalog import visible_name
from .grpc_protocol import (
    METHODS,
    SERVICE,
    config_response,
    infer_document,
    infer_response,
    metadata_response,
    pb,
    statistics_response,
)
from .oip import OipError, build_call, model_config, model_metadata

__all__ = ["GrpcServer", "grpc_code"]

logger = logging.getLogger("dask_kaas.gateway")
_OFFLOAD_BYTES = 2 << 20  # messages larger than this are parsed and encoded off the event loop (a thread hop
#                            costs more than parsing a megabyte of tensor bytes on a loaded machine)
EXTENSIONS = ["model_repository", "model_configuration", "statistics"]

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC status of an HTTP one."""
    return _CODES.get(status, grpc.StatusCode.INTERNAL if status >= 500 else grpc.StatusCode.INVALID_ARGUMENT)


def _authorization(context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value
    return None


def _call_of(request, fn):
    doc, binary = infer_document(request)
    return build_call(doc, binary, fn)


def _answer(fn, call, results) -> bytes:
    return infer_response(fn, call, results).SerializeToString()


class GrpcServer:
    """The gRPC service of a gateway, on ``host:port`` (0: a free port, :attr:`port` once started)."""

    def __init__(self, gw, host: str, port: int) -> None:
        self.gw, self.host, self.port = gw, host, port
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        limit = min(self.gw.settings.max_body, 2**31 - 1)
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a second server beside the first
            ]
        )
        self._server.add_generic_rpc_handlers((self._handler(),))
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as e:
            raise ConfigError(f"the gateway could not serve gRPC on {address}: {e}") from None
        if not self.port:  # older grpcio answers 0 instead of raising
            raise ConfigError(f"the gateway could not serve gRPC on {address}")
        await self._server.start()
        logger.info("gateway: gRPC (Open Inference Protocol, %s) on %s:%d", SERVICE, self.host, self.port)
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    def _handler(self) -> grpc.GenericRpcHandler:
        behaviors = {
            "ServerLive": self.server_live,
            "ServerReady": self.server_ready,
            "ServerMetadata": self.server_metadata,
            "ModelReady": self.model_ready,
            "ModelMetadata": self.model_metadata,
            "ModelInfer": self.model_infer,
            "ModelConfig": self.model_config,
            "ModelStatistics": self.model_statistics,
            "RepositoryIndex": self.repository_index,
        }
        assert behaviors.keys() == METHODS.keys()
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(self._guarded(name, behavior))
                for name, behavior in behaviors.items()
            },
        )

    def _guarded(self, name: str, behavior):
        """The method's handler: parse the request (ours to do, so a bad message is INVALID_ARGUMENT), run
        ``behavior(request, context)``, serialize its answer; OipErrors become their gRPC statuses."""
        request_class = getattr(pb, METHODS[name][0])

        async def handler(data: bytes, context):
            try:
                try:
                    if len(data) > _OFFLOAD_BYTES:
                        request = await run_in_threadpool(request_class.FromString, data)
                    else:
                        request = request_class.FromString(data)
                except DecodeError as e:
                    raise OipError(400, f"the {request_class.__name__} message does not parse ({e})") from None
                answer = await behavior(request, context)
                return answer if isinstance(answer, bytes) else answer.SerializeToString()
            except OipError as e:
                error = e
            except Exception:
                logger.exception("gateway: unexpected error serving gRPC %s", name)
                error = OipError(500, "internal error in the gateway (see its log)")
            await context.abort(grpc_code(error.status), error.message, tuple(error.headers.items()))

        return handler

    async def _find(self, request, tenant: str):
        return await self.gw.find(request.name, request.version or None, tenant)

    # -- the methods ------------------------------------------------------------------------------
    async def server_live(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request, context):
        return pb.ServerReadyResponse(ready=await self.gw.ready())

    async def server_metadata(self, request, context):
        return pb.ServerMetadataResponse(name="dask-kaas", version=metadata.version("dask-kaas"), extensions=EXTENSIONS)

    async def model_ready(self, request, context):
        await self._find(request, self.gw.tenant(_authorization(context)))
        return pb.ModelReadyResponse(ready=await self.gw.ready())

    async def model_metadata(self, request, context):
        fn, versions = await self._find(request, self.gw.tenant(_authorization(context)))
        return metadata_response(model_metadata(fn, versions))

    async def model_config(self, request, context):
        fn, versions = await self._find(request, self.gw.tenant(_authorization(context)))
        return config_response(model_config(fn, versions))

    async def model_statistics(self, request, context):
        """The tenant's own calls: of one function (its every version, or the one asked), or of every
        function it may call when no name is given."""
        tenant = self.gw.tenant(_authorization(context))
        if not request.name:
            found = await run_in_threadpool(self.gw.catalog.visible, tenant)
        else:
            fn, versions = await self._find(request, tenant)
            found = [(fn, [fn.version] if request.version else versions)]
        return statistics_response(self.gw.statistics.report(tenant, found))

    async def repository_index(self, request, context):
        tenant = self.gw.tenant(_authorization(context))
        found = await run_in_threadpool(self.gw.catalog.visible, tenant)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[index(name=visible_name(fn, tenant), version=str(fn.version), state="READY") for fn, _ in found]
        )

    async def model_infer(self, request, context):
        gw = self.gw
        started = time.perf_counter()
        tenant = fn = None
        bytes_in, bytes_out, status = request.ByteSize(), 0, 500
        gw.metrics.in_flight.inc()
        try:
            tenant = gw.tenant(_authorization(context))
            gw.admit(tenant)
            fn, _ = await gw.find(request.model_name, request.model_version or None, tenant)
            large = bytes_in > _OFFLOAD_BYTES
            call = await run_in_threadpool(_call_of, request, fn) if large else _call_of(request, fn)
            results = await gw.call(fn, tenant, call)
            if large or sum(spec.nbytes for spec, _ in call.outputs) > _OFFLOAD_BYTES:
                answer = await run_in_threadpool(_answer, fn, call, results)
            else:
                answer = _answer(fn, call, results)
            bytes_out, status = len(answer), 200
            return answer
        except OipError as e:
            status = e.status
            raise
        except asyncio.CancelledError:
            status = 499  # the caller went away (its deadline, or cancelled): nginx's "client closed request"
            raise
        finally:
            gw.served(tenant, fn, status, time.perf_counter() - started, bytes_in, bytes_out)

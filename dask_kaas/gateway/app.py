"""The gateway's ASGI application: Open Inference Protocol v2 REST over one asynchronous Dask client.

Starlette, because the protocol needs little more than routing and raw bodies (the binary tensor
extension), and Starlette gives exactly that with no model layer to bypass; uvicorn serves it
(:mod:`dask_kaas.gateway.server`). The Dask client is asynchronous and lives on the server's event
loop. Calls go through a :class:`~dask_kaas.Batcher` on that client: a call is one future, with no
thread per call, and concurrent calls of one function that queue up run as one task, their
payloads straight to and from the workers, never through the scheduler.

Every call is authenticated by its bearer token, which alone says the tenant; the request then runs
on the cluster as that tenant, through the scheduler plugin like any other KaaS request (fair
share, admission, namespaces and counters apply unchanged). Nothing is ever unpickled from a caller:
bodies are JSON and raw tensor bytes, read by :mod:`dask_kaas.gateway.oip`.
"""
from __future__ import annotations

import contextlib
import logging
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .oip import BINARY_HEADER, OipError, decode_body, encode_outputs, model_metadata, parse_infer
from .service import Gateway, GatewaySettings

__all__ = ["GatewaySettings", "create_app"]

logger = logging.getLogger("dask_kaas.gateway")
_OFFLOAD_BYTES = 256 * 1024  # bodies larger than this are parsed and encoded off the event loop


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _tenant(gw: Gateway, request: HttpRequest) -> str:
    return gw.tenant(request.headers.get("authorization"))


async def _find(gw: Gateway, request: HttpRequest, tenant: str):
    return await gw.find(request.path_params["model"], request.path_params.get("version"), tenant)


async def _body(gw: Gateway, request: HttpRequest) -> bytes:
    limit = gw.settings.max_body
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise OipError(413, f"the body is {int(length)} bytes, more than the gateway's limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise OipError(413, f"the body is more than the gateway's limit of {limit} bytes")
        chunks.append(chunk)
    return decode_body(b"".join(chunks), request.headers.get("content-encoding"), limit)


def create_app(settings: GatewaySettings | None = None, *, client=None) -> Starlette:
    """The gateway as an ASGI application.

    Parameters
    ----------
    settings : GatewaySettings, optional
        Scheduler address, store, tokens file and limits (defaults: ``kaas.gateway.*``).
    client : distributed.Client, optional
        An asynchronous client on the server's event loop to use instead of connecting to
        ``settings.scheduler`` (it is not closed with the application).
    """
    gw = Gateway(settings or GatewaySettings(), client)

    async def server_metadata(request):
        from importlib import metadata

        return JSONResponse({"name": "dask-kaas", "version": metadata.version("dask-kaas"),
                             "extensions": ["binary_tensor_data", "model_repository"]})

    async def live(request):
        return Response(status_code=200)

    async def ready(request):
        return Response(status_code=200 if await gw.ready() else 503)

    async def metrics(request):
        body, content_type = gw.metrics.exposition()
        return Response(body, media_type=content_type)

    async def model(request):
        tenant = _tenant(gw, request)
        fn, versions = await _find(gw, request, tenant)
        return JSONResponse(model_metadata(fn, versions))

    async def model_ready(request):
        tenant = _tenant(gw, request)
        fn, _ = await _find(gw, request, tenant)
        ok = await gw.ready()
        return JSONResponse({"name": fn.name, "ready": ok}, status_code=200 if ok else 503)

    async def index(request):
        tenant = _tenant(gw, request)
        found = await run_in_threadpool(gw.catalog.visible, tenant)
        return JSONResponse([{"name": fn.name if fn.namespace == tenant else fn.qualified_name,
                              "version": str(fn.version), "versions": [str(v) for v in versions],
                              "state": "READY"} for fn, versions in found])

    async def infer(request):
        started = time.perf_counter()
        tenant = model_name = None
        bytes_in = bytes_out = 0
        status = 500
        gw.metrics.in_flight.inc()
        try:
            tenant = _tenant(gw, request)
            gw.admit(tenant)
            fn, _ = await _find(gw, request, tenant)
            model_name = fn.qualified_name
            body = await _body(gw, request)
            bytes_in = len(body)
            header_length = request.headers.get(BINARY_HEADER)
            if len(body) > _OFFLOAD_BYTES:
                call = await run_in_threadpool(parse_infer, body, header_length, fn)
            else:
                call = parse_infer(body, header_length, fn)
            results = await gw.call(fn, tenant, call)
            if len(body) > _OFFLOAD_BYTES:
                payload, headers = await run_in_threadpool(encode_outputs, fn, call, results)
            else:
                payload, headers = encode_outputs(fn, call, results)
            bytes_out, status = len(payload), 200
            return Response(payload, status_code=200, headers=headers)
        except OipError as e:
            status = e.status
            return _error(e.status, e.message, e.headers)
        except Exception:  # noqa: BLE001 - a caller gets a status, never a traceback; the log gets the cause
            logger.exception("gateway: unexpected error serving %s", request.url.path)
            return _error(500, "internal error in the gateway (see its log)")
        finally:
            gw.metrics.in_flight.dec()
            gw.metrics.observe(tenant, model_name, status, time.perf_counter() - started, bytes_in, bytes_out)

    async def guarded(handler, request):
        try:
            return await handler(request)
        except OipError as e:
            return _error(e.status, e.message, e.headers)

    def route(path, handler, methods=("GET",)):
        async def endpoint(request):
            return await guarded(handler, request)
        return Route(path, endpoint, methods=list(methods))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    routes = [
        route("/v2", server_metadata),
        route("/v2/health/live", live),
        route("/v2/health/ready", ready),
        route("/metrics", metrics),
        route("/v2/repository/index", index, ("POST", "GET")),
        route("/v2/models/{model}", model),
        route("/v2/models/{model}/ready", model_ready),
        route("/v2/models/{model}/infer", infer, ("POST",)),
        route("/v2/models/{model}/versions/{version}", model),
        route("/v2/models/{model}/versions/{version}/ready", model_ready),
        route("/v2/models/{model}/versions/{version}/infer", infer, ("POST",)),
    ]
    async def http_error(request, exc):
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path[:200]}")

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: http_error, 405: http_error})
    app.state.gateway = gw
    return app

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

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import config
from ..batching import Batcher
from ..errors import AdmissionRejected, FunctionNotFound, KaasError, RequestError, TenantError
from ..functions import FunctionRepository
from ..store import BufferStore, open_store
from .catalog import Catalog
from .metrics import GatewayMetrics
from .oip import BINARY_HEADER, OipError, decode_body, encode_outputs, model_metadata, parse_infer
from .ratelimit import RateLimiter
from .tokens import Tokens

__all__ = ["GatewaySettings", "create_app"]

logger = logging.getLogger("dask_kaas.gateway")
_OFFLOAD_BYTES = 256 * 1024  # bodies larger than this are parsed and encoded off the event loop


@dataclass
class GatewaySettings:
    """What one gateway serves; defaults from ``kaas.gateway.*``."""

    scheduler: str | None = None   # the scheduler's address (None: the client passed to create_app)
    store: str | BufferStore | None = None
    tokens: str | None = None
    max_body: int | None = None
    timeout: float | None = None
    function_ttl: float | None = None

    def resolved(self) -> "GatewaySettings":
        return GatewaySettings(
            scheduler=self.scheduler,
            store=self.store,
            tokens=self.tokens or config.get("gateway.tokens"),
            max_body=config.parse_size(self.max_body if self.max_body is not None else config.get("gateway.max-body"),
                                       name="kaas.gateway.max-body"),
            timeout=float(self.timeout if self.timeout is not None else config.get("gateway.timeout")),
            function_ttl=float(self.function_ttl if self.function_ttl is not None
                               else config.get("gateway.function-ttl")),
        )


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Gateway:
    """State shared by the routes: the client, the catalog, tokens, limits, metrics."""

    def __init__(self, settings: GatewaySettings, client=None):
        self.settings = settings.resolved()
        self.client = client
        self.batcher: Batcher | None = None
        self._own_client = client is None
        self.store = open_store(self.settings.store)
        self.catalog = Catalog(FunctionRepository(self.store), self.settings.function_ttl, time.monotonic)
        self.tokens = Tokens(self.settings.tokens)
        self.limiter = RateLimiter()
        self.metrics = GatewayMetrics()
        self._limits_loaded = -1
        self._refresh_tokens()

    def _refresh_tokens(self) -> None:
        self.tokens.refresh()
        if self.tokens.loads != self._limits_loaded:  # the rates change only when the file is read again
            self.limiter.configure({t: (e.rate, e.burst or max(1.0, e.rate)) for t, e in self.tokens.tenants.items()
                                    if e.rate is not None})
            self._limits_loaded = self.tokens.loads

    async def start(self) -> None:
        if self.client is None:
            from distributed import Client

            self.client = await Client(self.settings.scheduler, asynchronous=True, direct_to_workers=True)
        self.batcher = Batcher(self.client)
        logger.info("gateway on scheduler %s, store %s, tokens %s (%d tenants)", self.client.scheduler.address,
                    self.store.url, self.tokens.path, len(self.tokens.tenants))

    async def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self._own_client and self.client is not None:
            await self.client.close()

    # -- helpers ------------------------------------------------------------------
    def tenant(self, request: HttpRequest) -> str:
        self._refresh_tokens()
        tenant = self.tokens.tenant_of(request.headers.get("authorization"))
        if tenant is None:
            raise OipError(401, "a valid bearer token is required (Authorization: Bearer <token>)",
                           {"www-authenticate": 'Bearer realm="dask-kaas"'})
        return tenant

    async def find(self, request: HttpRequest, tenant: str):
        model = request.path_params["model"]
        version = request.path_params.get("version")
        try:
            return await run_in_threadpool(self.catalog.find, model, tenant, version)
        except FunctionNotFound as e:
            raise OipError(404, str(e)) from None

    async def body(self, request: HttpRequest) -> bytes:
        limit = self.settings.max_body
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

    async def ready(self) -> bool:
        """Connected to the scheduler, and it has at least one worker."""
        client = self.client
        if client is None or client.status != "running":
            return False
        try:
            return bool(await asyncio.wait_for(client.nthreads(), 5))
        except Exception:  # noqa: BLE001 - not answering is not ready
            return False


def _deadline(parameters: dict) -> float | None:
    """A call's deadline: ``parameters.deadline`` (seconds) or Triton's ``timeout`` (microseconds)."""
    if "deadline" in parameters:
        value, scale, name = parameters["deadline"], 1.0, "deadline (seconds)"
    elif "timeout" in parameters:
        value, scale, name = parameters["timeout"], 1e-6, "timeout (microseconds)"
    else:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise OipError(400, f"parameter {name} must be a positive number, got {str(value)[:40]}")
    return float(value) * scale


def _retry_after(seconds: float) -> dict:
    return {"retry-after": str(max(1, math.ceil(seconds)))}


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
        tenant = gw.tenant(request)
        fn, versions = await gw.find(request, tenant)
        return JSONResponse(model_metadata(fn, versions))

    async def model_ready(request):
        tenant = gw.tenant(request)
        fn, _ = await gw.find(request, tenant)
        ok = await gw.ready()
        return JSONResponse({"name": fn.name, "ready": ok}, status_code=200 if ok else 503)

    async def index(request):
        tenant = gw.tenant(request)
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
            tenant = gw.tenant(request)
            wait = gw.limiter.wait(tenant, time.monotonic())
            if wait > 0:
                raise OipError(429, f"tenant {tenant!r} is over its rate limit; retry in {wait:.3f} s",
                               _retry_after(wait))
            fn, _ = await gw.find(request, tenant)
            model_name = fn.qualified_name
            body = await gw.body(request)
            bytes_in = len(body)
            header_length = request.headers.get(BINARY_HEADER)
            if len(body) > _OFFLOAD_BYTES:
                call = await run_in_threadpool(parse_infer, body, header_length, fn)
            else:
                call = parse_infer(body, header_length, fn)
            try:
                kaas_request = fn.request_for(tenant, _deadline(call.parameters))
            except RequestError as e:
                raise OipError(400, str(e)) from None
            results = await gw_call(kaas_request, call.inputs)
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

    async def gw_call(kaas_request, inputs):
        # through the batcher: concurrent calls of one function run as one task, payloads skip the scheduler
        future = gw.batcher.submit(kaas_request, **inputs)
        try:
            return await asyncio.wait_for(future, gw.settings.timeout)
        except asyncio.TimeoutError:
            future.cancel()  # a call still queued never leaves; one in a running batch is left to finish
            raise OipError(504, f"the call did not finish within the gateway's timeout of "
                                f"{gw.settings.timeout:g} s") from None
        except AdmissionRejected as e:
            late = (e.predicted or 0.0) - (e.deadline or 0.0)
            raise OipError(429, f"admission: {e.message}", _retry_after(late)) from None
        except TenantError as e:
            raise OipError(403, str(e)) from None
        except RequestError as e:
            raise OipError(400, str(e)) from None
        except KaasError as e:
            raise OipError(500, f"{type(e).__name__}: {e}") from None

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

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
import concurrent.futures
import contextlib
import hmac
import logging
import time
from importlib import metadata

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .catalog import visible_name
from .oip import (
    BINARY_HEADER,
    InferCall,
    OipError,
    body_budget,
    encode_outputs,
    model_config,
    model_metadata,
    read_infer,
)
from .openapi import openapi_document
from .service import Gateway, GatewaySettings, ResolvedGatewaySettings
from .tokens import PREFIX, hash_token

__all__ = ["GatewaySettings", "create_app"]

logger = logging.getLogger("dask_kaas.gateway")
_OFFLOAD_BYTES = 2 << 20  # bodies larger than this are encoded off the event loop
_PARSE_INLINE = 64 * 1024  # JSON up to this, not compressed, is parsed on the event loop; the rest in the threads
_PARSERS = 2  # bodies decompressed and parsed at once, whoever sends them; one tenant's: one at a time
_DRAIN_BYTES = 64 << 20  # a body answered early is read and dropped up to this, so that its caller sees the answer


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _tenant(gw: Gateway, request: HttpRequest) -> str:
    return gw.tenant(request.headers.get("authorization"))


async def _find(gw: Gateway, request: HttpRequest, tenant: str):
    return await gw.find(request.path_params["model"], request.path_params.get("version"), tenant)


class _Parsers:
    """The REST side's own few threads for decompressing and parsing bodies: bodies parsed at once are
    bounded whoever sends them, no flood of them takes the threads the routes share (catalog,
    encoding), and one tenant's bodies go one at a time, so that they never hold them all."""

    def __init__(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(_PARSERS, thread_name_prefix="kaas-gateway-parse")
        self.by_tenant: dict[str, asyncio.Semaphore] = {}

    async def run(self, tenant: str, fn, *args):
        async with self.by_tenant.setdefault(tenant, asyncio.Semaphore(1)):
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _metrics_hash(settings: ResolvedGatewaySettings) -> str | None:
    token = settings.metrics_token  # the token itself, or its "sha256:..." hash
    return None if not token else token if token.startswith(PREFIX) else hash_token(token)


class _Body:
    """One call's body from the ASGI ``receive``: read within ``kaas.gateway.read-timeout`` (408 past
    it), a caller that hangs up raised as :class:`ClientDisconnect`, and drained before an early answer."""

    def __init__(self, request: HttpRequest, timeout: float) -> None:
        self.receive, self.timeout = request.receive, timeout
        # a caller waiting for "100 Continue" sends nothing until then: an early answer needs no draining
        self.waiting = request.headers.get("expect", "").lower() == "100-continue"
        self.deadline: float | None = None  # set by the first read
        self.size = 0
        self.complete = False  # its last chunk has arrived
        self.abandoned = False  # timed out or hung up: nothing more to read

    async def _chunk(self) -> bytes:
        if self.deadline is None:
            self.deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self.receive()
        except TimeoutError:
            self.abandoned = True
            raise OipError(
                408,
                f"the body did not arrive within the gateway's read timeout of {self.timeout:g} s "
                f"({self.size} bytes came)",
                {"connection": "close"},
            ) from None
        if message["type"] == "http.disconnect":
            self.abandoned = True
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        self.size += len(chunk)
        self.complete = not message.get("more_body", False)
        return chunk

    async def read(self, limit: int, declared: int | None) -> bytes:
        """The whole body, 413 when it (or its ``Content-Length``, before a byte is read) is over ``limit``."""
        if declared is not None and declared > limit:
            raise OipError(413, f"the body is {declared} bytes, more than the limit of {limit} for this call")
        chunks = []
        while not self.complete:
            chunks.append(await self._chunk())
            if self.size > limit:
                raise OipError(413, f"the body is more than the limit of {limit} bytes for this call")
        return b"".join(chunks)

    async def drain(self, declared: int | None) -> dict:
        """Read and drop what is left of the body (up to ``_DRAIN_BYTES``, within the read timeout) before
        an answer, so that a caller still sending sees the answer, not a reset connection. The headers
        the answer needs: ``connection: close`` when the body could not be read to its end."""
        if self.complete:
            return {}
        if self.abandoned or (declared or 0) > _DRAIN_BYTES or (self.waiting and self.size == 0):
            return {"connection": "close"}
        try:
            while not self.complete and self.size <= _DRAIN_BYTES:
                await self._chunk()
        except (OipError, ClientDisconnect):
            pass
        return {} if self.complete else {"connection": "close"}


def _content_length(request: HttpRequest) -> int | None:
    length = request.headers.get("content-length")
    return int(length) if length is not None and length.isdigit() else None


async def _read_call(gw: Gateway, parsers: _Parsers, body: _Body, request: HttpRequest, fn, tenant: str) -> InferCall:
    """The call in ``request``'s body: read, decompressed and parsed within what ``fn`` declares
    (:func:`~.oip.body_budget`), parsed on the event loop only when small and not compressed."""
    budget = body_budget(fn, gw.settings.max_body, gw.settings.max_json)
    encoding = request.headers.get("content-encoding")
    header_length = request.headers.get(BINARY_HEADER)
    identity = not encoding or encoding.lower() == "identity"
    json_bytes = limit = budget.json if header_length is None else budget.total
    if header_length is not None and header_length.isdigit():
        json_bytes = int(header_length)
        if json_bytes > budget.json:
            raise OipError(
                413,
                f"Inference-Header-Content-Length is {json_bytes} bytes of JSON, more than the "
                f"limit of {budget.json} for this model's inputs",
            )
        if identity:
            limit = min(limit, json_bytes + budget.binary)
    if not identity:  # compressed data a little larger than what it holds
        limit = min(gw.settings.max_body, limit + limit // 256 + 1024)
    raw = await body.read(limit, _content_length(request))
    if identity and min(len(raw), json_bytes) <= _PARSE_INLINE:
        return read_infer(raw, encoding, header_length, fn, budget)
    return await parsers.run(tenant, read_infer, raw, encoding, header_length, fn, budget)


def _metrics_caller(gw: Gateway, metrics_hash: str | None, request: HttpRequest) -> None:
    """``/metrics`` names tenants and their private functions: only for ``kaas.gateway.metrics-token``'s
    bearer (a scraper's, not a tenant's), or anyone where ``kaas.gateway.metrics-public`` says so."""
    if gw.settings.metrics_public:
        return
    if metrics_hash is None:
        raise OipError(
            403,
            "/metrics is off: set kaas.gateway.metrics-token (a bearer token for the scraper) "
            "or kaas.gateway.metrics-public",
        )
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    token = token.strip()
    if (
        scheme.lower() != "bearer"
        or not token
        or len(token) > 512
        or not hmac.compare_digest(hash_token(token), metrics_hash)
    ):
        raise OipError(
            401,
            "/metrics needs the metrics bearer token (kaas.gateway.metrics-token)",
            {"www-authenticate": 'Bearer realm="dask-kaas metrics"'},
        )


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
    parsers = _Parsers()
    metrics_hash = _metrics_hash(gw.settings)

    version = metadata.version("dask-kaas")

    async def server_metadata(request):
        return JSONResponse(
            {
                "name": "dask-kaas",
                "version": version,
                "extensions": ["binary_tensor_data", "model_repository", "model_configuration", "statistics"],
            }
        )

    async def openapi(request):
        return JSONResponse(openapi_document(version))

    async def live(request):
        return JSONResponse({"live": True})

    async def ready(request):
        ok = await gw.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def metrics(request):
        _metrics_caller(gw, metrics_hash, request)
        body, content_type = gw.metrics.exposition()
        return Response(body, media_type=content_type)

    async def called(request):
        """The caller's tenant, and the function and versions the path names as that tenant sees them."""
        tenant = _tenant(gw, request)
        return (tenant, *await _find(gw, request, tenant))

    async def model(request):
        _, fn, versions = await called(request)
        return JSONResponse(model_metadata(fn, versions))

    async def model_ready(request):
        _, fn, _ = await called(request)
        ok = await gw.ready()
        return JSONResponse({"name": fn.name, "ready": ok}, status_code=200 if ok else 503)

    async def config(request):
        _, fn, versions = await called(request)
        return JSONResponse(model_config(fn, versions))

    async def stats(request):
        tenant, fn, versions = await called(request)
        wanted = [fn.version] if "version" in request.path_params else versions
        return JSONResponse(gw.statistics.report(tenant, [(fn, wanted)]))

    async def all_stats(request):
        tenant = _tenant(gw, request)
        return JSONResponse(gw.statistics.report(tenant, await run_in_threadpool(gw.catalog.visible, tenant)))

    async def index(request):
        tenant = _tenant(gw, request)
        found = await run_in_threadpool(gw.catalog.visible, tenant)
        return JSONResponse(
            [
                {
                    "name": visible_name(fn, tenant),
                    "version": str(fn.version),
                    "versions": [str(v) for v in versions],
                    "state": "READY",
                }
                for fn, versions in found
            ]
        )

    async def infer(request):
        started = time.perf_counter()
        tenant = fn = None
        bytes_in = bytes_out = 0
        status = 500
        body = _Body(request, gw.settings.read_timeout)
        gw.metrics.in_flight.inc()
        try:
            tenant = _tenant(gw, request)
            gw.admit(tenant)
            fn, _ = await _find(gw, request, tenant)
            call = await _read_call(gw, parsers, body, request, fn, tenant)
            bytes_in = body.size
            results = await gw.call(fn, tenant, call)
            if body.size > _OFFLOAD_BYTES:
                payload, headers = await run_in_threadpool(encode_outputs, fn, call, results)
            else:
                payload, headers = encode_outputs(fn, call, results)
            bytes_out, status = len(payload), 200
            return Response(payload, status_code=200, headers=headers)
        except ClientDisconnect:  # counted apart from the gateway's own errors, as nginx does
            status, bytes_in = 499, body.size
            logger.info(
                "gateway: the caller of %s hung up after %d bytes of its body (499)", request.url.path[:200], body.size
            )
            return Response(status_code=499)
        except OipError as e:
            status, bytes_in = e.status, body.size
            return _error(e.status, e.message, {**e.headers, **await body.drain(_content_length(request))})
        except Exception:
            logger.exception("gateway: unexpected error serving %s", request.url.path)
            return _error(500, "internal error in the gateway (see its log)")
        finally:
            gw.served(tenant, fn, status, time.perf_counter() - started, bytes_in, bytes_out)

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
            parsers.close()

    routes = [
        route("/v2", server_metadata),
        route("/v2/openapi.json", openapi),
        route("/v2/health/live", live),
        route("/v2/health/ready", ready),
        route("/metrics", metrics),
        route("/v2/repository/index", index, ("POST", "GET")),
        route("/v2/models/stats", all_stats),  # before /v2/models/{model}, as in Triton
        route("/v2/models/{model}", model),
        route("/v2/models/{model}/ready", model_ready),
        route("/v2/models/{model}/config", config),
        route("/v2/models/{model}/stats", stats),
        route("/v2/models/{model}/infer", infer, ("POST",)),
        route("/v2/models/{model}/versions/{version}", model),
        route("/v2/models/{model}/versions/{version}/ready", model_ready),
        route("/v2/models/{model}/versions/{version}/config", config),
        route("/v2/models/{model}/versions/{version}/stats", stats),
        route("/v2/models/{model}/versions/{version}/infer", infer, ("POST",)),
    ]

    async def http_error(request, exc):
        return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path[:200]}")

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: http_error, 405: http_error})
    app.state.gateway = gw
    return app

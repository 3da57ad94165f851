"""The gateway's transport-free service: tokens, rate limits, the function catalog, calls through a Batcher.

What the REST application (:mod:`.app`) and the gRPC service (:mod:`.grpc_service`) share: a caller is
authenticated by its bearer token alone (which says the tenant), limited by its tenant's rate,
finds functions as its tenant sees them, and its parsed call runs on the cluster as that tenant
through one asynchronous Dask client and its :class:`~dask_kaas.Batcher`. Every refusal is an
:class:`~.oip.OipError` with the HTTP status to answer; a transport maps it to its own codes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from .. import config
from ..batching import Batcher
from ..errors import (
    AdmissionRejected,
    ConfigError,
    FunctionNotFound,
    FunctionStale,
    KaasError,
    RequestError,
    TenantError,
)
from ..functions import FunctionRepository
from ..store import BufferStore, open_store
from .catalog import Catalog, Uncached
from .metrics import GatewayMetrics
from .oip import InferCall, InferenceStats, OipError
from .ratelimit import RateLimiter
from .tokens import Tokens

if TYPE_CHECKING:
    from .grpc_service import GrpcServer

__all__ = ["Gateway", "GatewaySettings", "ResolvedGatewaySettings", "deadline", "retry_after"]

logger = logging.getLogger("dask_kaas.gateway")


@dataclass
class GatewaySettings:
    """What one gateway serves; defaults from ``kaas.gateway.*``."""

    scheduler: str | None = None  # the scheduler's address (None: the client passed to create_app)
    store: str | BufferStore | None = None
    tokens: str | None = None
    max_body: int | str | None = None
    timeout: float | None = None
    function_ttl: float | None = None
    max_json: int | str | None = None  # JSON of one infer body at most, after decompression
    read_timeout: float | None = None  # seconds a body may take to arrive (then 408)
    metrics_token: str | None = None  # the bearer token /metrics needs (or its "sha256:" hash)
    metrics_public: bool | None = None  # /metrics for anyone

    def resolve(self) -> ResolvedGatewaySettings:
        """These settings with every default filled in from ``kaas.gateway.*`` and checked (a
        :class:`~dask_kaas.errors.ConfigError` naming a bad one): what a :class:`Gateway` runs on."""

        def pick(value, key):
            return value if value is not None else config.get(f"gateway.{key}")

        tokens = self.tokens or config.get("gateway.tokens")
        if not isinstance(tokens, str):
            raise ConfigError(f"kaas.gateway.tokens: expected the path of the tokens file, got {tokens!r}")
        token = pick(self.metrics_token, "metrics-token")
        return ResolvedGatewaySettings(
            scheduler=self.scheduler,
            store=self.store,
            tokens=tokens,
            max_body=config.parse_size(pick(self.max_body, "max-body"), name="kaas.gateway.max-body"),
            timeout=float(pick(self.timeout, "timeout")),
            function_ttl=float(pick(self.function_ttl, "function-ttl")),
            max_json=config.parse_size(pick(self.max_json, "max-json"), name="kaas.gateway.max-json"),
            read_timeout=float(pick(self.read_timeout, "read-timeout")),
            metrics_token=None if token is None or token == "" else str(token),
            metrics_public=config.parse_bool(
                pick(self.metrics_public, "metrics-public"), "kaas.gateway.metrics-public"
            ),
        )

    def resolved(self) -> GatewaySettings:
        """:meth:`resolve`'s values as GatewaySettings (nothing left to default)."""
        resolved = self.resolve()
        return GatewaySettings(**{f.name: getattr(resolved, f.name) for f in fields(resolved)})


@dataclass(frozen=True)
class ResolvedGatewaySettings:
    """:class:`GatewaySettings` resolved once (:meth:`GatewaySettings.resolve`): every value concrete."""

    scheduler: str | None  # None: the client passed to create_app
    store: str | BufferStore | None  # None: the kaas.store setting (open_store)
    tokens: str
    max_body: int
    timeout: float
    function_ttl: float
    max_json: int
    read_timeout: float
    metrics_token: str | None  # None: /metrics has no token (403 unless public)
    metrics_public: bool


class Gateway:
    """State shared by the routes: the client, the catalog, tokens, limits, metrics."""

    def __init__(self, settings: GatewaySettings, client=None, grpc_address: tuple[str, int] | None = None):
        self.settings = settings.resolve()
        self.client = client
        self.grpc_address = grpc_address  # (host, port) to serve gRPC on from start(); None: no gRPC
        self.grpc: GrpcServer | None = None
        self.statistics = InferenceStats()  # Triton's statistics extension, both transports' calls
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
            self.limiter.configure(
                {t: (e.rate, e.burst or max(1.0, e.rate)) for t, e in self.tokens.tenants.items() if e.rate is not None}
            )
            self._limits_loaded = self.tokens.loads

    async def start(self) -> None:
        if self.client is None:
            from distributed import Client

            self.client = await Client(self.settings.scheduler, asynchronous=True, direct_to_workers=True)
        self.batcher = Batcher(self.client)
        logger.info(
            "gateway on scheduler %s, store %s, tokens %s (%d tenants)",
            self.client.scheduler.address,
            self.store.url,
            self.tokens.path,
            len(self.tokens.tenants),
        )
        if self.grpc_address is not None:
            from .grpc_service import GrpcServer

            grpc = GrpcServer(self, *self.grpc_address)
            try:
                await grpc.start()
            except BaseException:
                await self.stop()
                raise
            self.grpc = grpc

    async def stop(self) -> None:
        if self.grpc is not None:  # first: its calls in flight finish on the batcher and client
            await self.grpc.stop()
            self.grpc = None
        if self.batcher is not None:
            self.batcher.close()
        if self._own_client and self.client is not None:
            await self.client.close()

    # -- what every transport does ------------------------------------------------
    def tenant(self, authorization: str | None) -> str:
        """The tenant of a bearer token (``Authorization`` header or gRPC metadata); 401 without one."""
        self._refresh_tokens()
        tenant = self.tokens.tenant_of(authorization)
        if tenant is None:
            raise OipError(
                401,
                "a valid bearer token is required (Authorization: Bearer <token>)",
                {"www-authenticate": 'Bearer realm="dask-kaas"'},
            )
        return tenant

    def served(self, tenant: str | None, fn, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        """Account one infer call as it ends, whichever transport served it (``fn`` None: its function was
        never found): the metrics (which counted it in flight when it started) and the statistics."""
        self.metrics.in_flight.dec()
        self.metrics.observe(
            tenant, fn.qualified_name if fn is not None else None, status, seconds, bytes_in, bytes_out
        )
        if fn is not None and tenant is not None:  # a function is found only for a known tenant
            self.statistics.record(tenant, fn, status == 200, seconds)

    def admit(self, tenant: str) -> None:
        """429 when the tenant is over its rate limit."""
        wait = self.limiter.wait(tenant, time.monotonic())
        if wait > 0:
            raise OipError(429, f"tenant {tenant!r} is over its rate limit; retry in {wait:.3f} s", retry_after(wait))

    async def find(self, model: str, version: str | None, tenant: str):
        """``(function, its versions)`` as the tenant sees it; 404 when it cannot (missing or private)."""
        try:
            try:  # a known function is found without a thread hop (a third of a millisecond)
                return self.catalog.find(model, tenant, version, cached_only=True)
            except Uncached:
                return await run_in_threadpool(self.catalog.find, model, tenant, version)
        except FunctionNotFound as e:
            raise OipError(404, str(e)) from None
        except FunctionStale as e:  # the store changed under the function: it would read the wrong bytes
            raise OipError(409, str(e)) from None

    async def call(self, fn, tenant: str, call: InferCall) -> dict:
        """Run a parsed call of ``fn`` as ``tenant``; its outputs by name. Errors become OipErrors: 400 for
        the caller's, 403 for a tenant refused, 429 for admission, 504 past the timeout, 500 for the rest."""
        try:
            kaas_request = fn.request_for(tenant, deadline(call.parameters))
        except RequestError as e:
            raise OipError(400, str(e)) from None
        if self.batcher is None:
            raise OipError(503, "the gateway is not started (no connection to the cluster yet)")
        # through the batcher: concurrent calls of one function run as one task, payloads skip the scheduler
        future = self.batcher.submit(kaas_request, **call.inputs)
        try:
            return await asyncio.wait_for(future, self.settings.timeout)
        except TimeoutError:
            future.cancel()  # a call still queued never leaves; one in a running batch is left to finish
            raise OipError(
                504, f"the call did not finish within the gateway's timeout of {self.settings.timeout:g} s"
            ) from None
        except AdmissionRejected as e:
            late = (e.predicted or 0.0) - (e.deadline or 0.0)
            raise OipError(429, f"admission: {e.message}", retry_after(late)) from None
        except TenantError as e:
            raise OipError(403, str(e)) from None
        except RequestError as e:
            raise OipError(400, str(e)) from None
        except KaasError as e:
            raise OipError(500, f"{type(e).__name__}: {e}") from None

    async def ready(self) -> bool:
        """Connected to the scheduler, and it has at least one worker."""
        client = self.client
        if client is None or client.status != "running":
            return False
        try:
            return bool(await asyncio.wait_for(client.nthreads(), 5))
        except Exception:
            return False


def deadline(parameters: dict) -> float | None:
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


def retry_after(seconds: float) -> dict:
    return {"retry-after": str(max(1, math.ceil(seconds)))}

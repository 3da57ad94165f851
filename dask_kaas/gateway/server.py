"""``dask kaas gateway``: the gateway's application on uvicorn, one process, one event loop."""

from __future__ import annotations

import logging

from .. import config
from ..errors import ConfigError
from .app import GatewaySettings, create_app

__all__ = ["serve"]

logger = logging.getLogger("dask_kaas.gateway")


def serve(
    settings: GatewaySettings, *, host: str, port: int, log_level: str = "info", grpc_port: int | None = None
) -> None:
    """Serve the gateway until interrupted (SIGINT/SIGTERM end it cleanly, closing its Dask client);
    with ``grpc_port`` also the protocol's gRPC service on it (0: a free port, logged), on the same loop."""
    import uvicorn

    if not settings.scheduler:
        raise ConfigError("the gateway needs a scheduler address (--scheduler or DASK_SCHEDULER_ADDRESS)")
    app = create_app(settings)
    gw = app.state.gateway
    if grpc_port is not None:
        gw.grpc_address = (host, grpc_port)
    if not gw.tokens.tenants:
        logger.warning(
            "gateway: tokens file %s has no tenants: every call will be refused with 401 "
            "(add one with `dask kaas token add TENANT --tokens %s`)",
            gw.tokens.path,
            gw.tokens.path,
        )
    # h11, not httptools: httptools holds a header of any size (200 MiB, tried), h11 stops at max-header.
    # uvicorn has no timeout for a request's headers: what slow callers can hold is bounded by the
    # connections it keeps at once (503 beyond) and max-header each; a body's by kaas.gateway.read-timeout
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="on",
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=5,
            http="h11",
            h11_max_incomplete_event_size=config.parse_size(
                config.get("gateway.max-header"), name="kaas.gateway.max-header"
            ),
            limit_concurrency=int(config.get("gateway.max-connections")),
        )
    )
    server.run()
    if not server.started:
        raise ConfigError(f"the gateway could not start on {host}:{port} (see the log above)")

"""``dask kaas gateway``: the gateway's application on uvicorn, one process, one event loop."""
from __future__ import annotations

import logging

from ..errors import ConfigError
from .app import GatewaySettings, create_app

__all__ = ["serve"]

logger = logging.getLogger("dask_kaas.gateway")


def serve(settings: GatewaySettings, *, host: str, port: int, log_level: str = "info") -> None:
    """Serve the gateway until interrupted (SIGINT/SIGTERM end it cleanly, closing its Dask client)."""
    import uvicorn

    if not settings.scheduler:
        raise ConfigError("the gateway needs a scheduler address (--scheduler or DASK_SCHEDULER_ADDRESS)")
    app = create_app(settings)
    gw = app.state.gateway
    if not gw.tokens.tenants:
        logger.warning("gateway: tokens file %s has no tenants: every call will be refused with 401 "
                       "(add one with `dask kaas token add TENANT --tokens %s`)", gw.tokens.path, gw.tokens.path)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="on", log_level=log_level,
                                           access_log=False, timeout_graceful_shutdown=5))
    server.run()
    if not server.started:
        raise ConfigError(f"the gateway could not start on {host}:{port} (see the log above)")

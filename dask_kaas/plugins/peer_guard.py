"""Workers and nannies take connections from the cluster's own certificates only, when the scheduler
holds tenants to requests (``kaas.scheduler.tenant-clients: requests-only``).

A worker deserializes every message it reads (a pickle can run any code) and answers ``get_data``,
``update_data`` and ``run``; a nanny answers ``run`` and ``plugin_add``. A tenant reaches workers only
through the scheduler, so a connection whose certificate is no worker's or operator's is closed before
Dask's handshake. The rules come from the scheduler (its ``kaas_access`` handler), so a worker started
without the operator's settings still follows them.
"""

from __future__ import annotations

import logging

from .. import compat
from .access import AccessRules

logger = logging.getLogger("dask_kaas")


async def cluster_access(scheduler_rpc) -> dict | None:
    """The scheduler's access settings (``AccessRules.to_dict`` and ``tenant_identity``), or None
    without the KaaS scheduler plugin."""
    try:
        info = await scheduler_rpc.kaas_access()
    except Exception:
        logger.debug("dask-kaas: the scheduler did not say its access rules", exc_info=True)
        return None
    return info if isinstance(info, dict) else None


def guard_server(server, info: dict | None) -> AccessRules | None:
    """Hold ``server``'s listeners to the cluster's certificates when ``info`` (:func:`cluster_access`)
    locks tenants to requests; the rules, or None without any."""
    if info is None:
        return None
    rules = AccessRules.from_dict(info)
    if rules.locked:
        compat.guard_listeners(server, lambda cert: rules.peer_refusal(rules.role(cert)))
    return rules

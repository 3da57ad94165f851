"""dask-kaas on the Dask dashboard: the ``/kaas`` page and Prometheus collectors."""
from __future__ import annotations

ROUTE = "/kaas"
_registered = False


def register_dashboard_page() -> None:
    """Add ``/kaas`` to the scheduler dashboard's applications and navigation.

    Takes effect for schedulers whose dashboard starts afterwards (the KaaS
    scheduler plugin calls it when created, so ``LocalKaasCluster`` and
    ``dask scheduler --preload dask_kaas.dashboard`` both get the page).
    """
    global _registered
    if _registered:
        return
    from .. import compat
    from .page import kaas_doc

    compat.add_dashboard_page(ROUTE, kaas_doc, "kaas")
    _registered = True


def dask_setup(scheduler) -> None:
    """``dask scheduler --preload dask_kaas.dashboard``: register the page before the dashboard starts."""
    register_dashboard_page()

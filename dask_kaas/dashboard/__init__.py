"""dask-kaas on the Dask dashboard: the ``/kaas`` page and Prometheus collectors."""

from __future__ import annotations

ROUTE = "/kaas"
_registered = False


def register_dashboard_page() -> None:
    """Add ``/kaas`` to the scheduler dashboard's applications and navigation.

    Takes effect for schedulers whose dashboard starts afterwards (the KaaS
    scheduler plugin calls it when created, so ``LocalKaasCluster`` gets the page; a stand-alone
    scheduler gets it from ``--preload dask_kaas.preload``, which registers it at import).
    """
    global _registered
    if _registered:
        return
    from .. import compat
    from .page import INDIVIDUAL, individual_doc, kaas_doc

    compat.add_dashboard_page(ROUTE, kaas_doc, "kaas")
    for route, attribute in INDIVIDUAL.items():
        compat.add_dashboard_page(route, individual_doc(attribute), None)
    _registered = True


def dask_setup(scheduler) -> None:
    """``dask scheduler --preload dask_kaas.dashboard``: the page only (registered when Dask imports
    this module, before the dashboard starts). ``--preload dask_kaas.preload`` adds the plugin too."""
    register_dashboard_page()


# Dask imports a preload module before the scheduler's dashboard starts: registering here (not only
# in dask_setup, which runs after) is what makes ``--preload dask_kaas.dashboard`` serve the page.
register_dashboard_page()

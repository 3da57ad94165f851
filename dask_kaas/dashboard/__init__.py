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
    import distributed.dashboard.scheduler as dashboard

    from .page import kaas_doc

    dashboard.applications[ROUTE] = kaas_doc
    base = dashboard.template_variables

    def template_variables(scheduler):
        variables = base(scheduler)
        if "kaas" not in variables["pages"]:
            variables["pages"].insert(variables["pages"].index("system") + 1 if "system" in variables["pages"]
                                      else len(variables["pages"]), "kaas")
        return variables

    dashboard.template_variables = template_variables
    _registered = True


def dask_setup(scheduler) -> None:
    """``dask scheduler --preload dask_kaas.dashboard``: register the page before the dashboard starts."""
    register_dashboard_page()

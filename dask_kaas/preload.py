"""``dask scheduler --preload dask_kaas.preload``: a stand-alone scheduler with the KaaS plugin and
the ``/kaas`` page from the start (``dask kaas scheduler`` is that command).

Dask imports a preload module while it builds the scheduler, before the dashboard starts, and
calls its ``dask_setup`` before the scheduler's plugins start; so the page is registered at import
and the plugin added in ``dask_setup``. A restarted scheduler runs both again: nothing for a client
to redo.
"""

from __future__ import annotations

from .dashboard import register_dashboard_page
from .logs import setup_logging

register_dashboard_page()


def dask_setup(scheduler) -> None:
    """Add the KaaS scheduler plugin (settings from the scheduler's ``kaas.scheduler.*``) unless one is there."""
    from .plugins.scheduler import KaasSchedulerPlugin

    if "kaas" not in scheduler.plugins:
        scheduler.add_plugin(KaasSchedulerPlugin())
    from . import compat

    link = compat.dashboard_page_link(scheduler, "/kaas")
    setup_logging().info(
        "dask-kaas scheduler: KaaS plugin (policy %s); the KaaS page at %s",
        scheduler.plugins["kaas"].policy,
        link or "/kaas of the dashboard",
    )

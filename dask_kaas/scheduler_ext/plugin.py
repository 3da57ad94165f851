"""The Dask SchedulerPlugin: recognise KaaS tasks and keep them on KaaS workers.

A task is a KaaS task when its function is a :class:`~dask_kaas.Request`, as
with ``client.submit(request, x=x)`` or ``dask.delayed(request)(x=x)``. It gets
the ``GPU`` resource restriction, so it runs only on workers that advertise one
(every KaaS worker does). Placement policies come later; the tenant and the
const footprint are recorded now for them.
"""
from __future__ import annotations

import logging
from typing import Any

from distributed import SchedulerPlugin

from ..request import Request

logger = logging.getLogger(__name__)

RESOURCE = "GPU"


def request_of(run_spec: Any) -> Request | None:
    """The Request a task runs, if it runs one."""
    func = getattr(run_spec, "func", None)
    return func if isinstance(func, Request) else None


class KaasSchedulerPlugin(SchedulerPlugin):
    name = "kaas"

    def __init__(self):
        self.scheduler = None
        self.tasks: dict = {}  # key -> {"tenant", "const_bytes", "kernels"} for live KaaS tasks
        self.submitted: dict[str, int] = {}

    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        scheduler.extensions.setdefault("kaas", self)

    def update_graph(self, scheduler, *, client: str, tasks: list, **kwargs) -> None:
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is None or ts.key in self.tasks:
                continue
            request = request_of(ts.run_spec)
            if request is None:
                continue
            if not ts.resource_restrictions or RESOURCE not in ts.resource_restrictions:
                ts.resource_restrictions = {**(ts.resource_restrictions or {}), RESOURCE: 1}
            tenant = request.tenant or client
            self.tasks[key] = {"tenant": tenant, "const_bytes": request.const_bytes, "kernels": request.kernel_names}
            self.submitted[tenant] = self.submitted.get(tenant, 0) + 1

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish in ("memory", "erred", "released", "forgotten") and key in self.tasks:
            self.tasks.pop(key, None)

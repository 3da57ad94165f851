"""The KaaS scheduling policy as pure code: fair queueing, placement, admission, the runtime model.

Nothing in this package imports ``distributed``: the scheduler plugin (``dask_kaas.plugins.scheduler``)
drives :class:`SchedulingCore` from Dask's hooks, and tests (and a simulator) drive it directly.
"""

from .cluster import Cluster, WorkerView
from .core import Decision, SchedulingCore, Task
from .fair import FairQueue
from .model import RuntimeModel
from .placement import POLICIES, StaticAssignment, choose_worker
from .tenants import TenantStats

__all__ = [
    "POLICIES",
    "Cluster",
    "Decision",
    "FairQueue",
    "RuntimeModel",
    "SchedulingCore",
    "StaticAssignment",
    "Task",
    "TenantStats",
    "WorkerView",
    "choose_worker",
]

"""Which worker a dispatched task goes to, under each policy, looking at a handful of workers.

- ``affinity``: the candidates are the workers holding (or about to load) one of the task's consts
  (the const index) and the least loaded worker with a free slot; each costs its queued seconds
  plus the time to load what it lacks (and to reload what that load would evict) at the observed
  store bandwidth, times ``stickiness``. The cheapest wins, even when its own slots are taken: a
  free slot anywhere admits a task to the workers (the slots bound the work in flight), and the
  task then queues where its data is if that is cheaper than loading it elsewhere.
- ``balance``: the least loaded worker with a free slot (Dask's own least-loaded idea).
- ``static`` and ``exclusive``: each tenant's one worker (round robin in order of first appearance).
"""
from __future__ import annotations

from .cluster import Cluster, Consts

POLICIES = ("affinity", "balance", "static", "exclusive")
PINNED = ("static", "exclusive")


def choose_worker(cluster: Cluster, consts: Consts, policy: str, *, stickiness: float, bandwidth: float,
                  pinned: str | None = None) -> str | None:
    """The worker the task should go to, or None when it should wait (no free slot anywhere, or, pinned,
    none on its worker)."""
    if pinned is not None:
        return pinned if cluster.is_open(pinned) else None
    least = cluster.least_loaded()
    if policy != "affinity" or least is None or not consts:
        return least
    best, best_rank = None, None
    for address in cluster.holding(consts) | {least}:
        view = cluster.views.get(address)
        if view is None or not view.running:
            continue
        cost = view.queued_seconds + stickiness * view.placement_bytes(consts) / bandwidth
        rank = (cost, -view.free, address)
        if best_rank is None or rank < best_rank:
            best, best_rank = address, rank
    return best


def placement_cost(cluster: Cluster, address: str, consts: Consts, *, stickiness: float, bandwidth: float) -> float:
    """Seconds placing a task on ``address`` costs beyond Dask's own estimate: what Dask's worker
    objective and work stealing add (through ``get_comm_cost``) under ``affinity``."""
    view = cluster.views.get(address)
    if view is None or not consts:
        return 0.0
    return stickiness * view.placement_bytes(consts) / bandwidth


class StaticAssignment:
    """The paper's static baseline: each tenant pinned to one worker, round-robin in order of first
    appearance; a tenant whose worker went away gets its next one."""

    def __init__(self):
        self.order: dict[str, int] = {}
        self.homes: dict[str, str] = {}

    def worker_for(self, tenant: str, workers) -> str:
        home = self.homes.get(tenant)
        if home is None or home not in workers:
            index = self.order.setdefault(tenant, len(self.order))
            home = self.homes[tenant] = sorted(workers)[index % len(workers)]
        return home

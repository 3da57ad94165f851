"""Which worker a dispatched task goes to, under each policy, looking at a handful of workers.

- ``affinity``: the candidates are the workers holding (or about to load) one of the task's consts
  (the const index) and the least loaded worker with a free slot; each costs its queued seconds
  plus the time to load what it lacks (and to reload what that load would evict) at the observed
  store bandwidth, times ``stickiness``. The cheapest wins, even when its own slots are taken: a
  free slot anywhere admits a task to the workers (the slots bound the work in flight), and the
  task then queues where its data is if that is cheaper than loading it elsewhere.
  With ``replicate``, a tenant whose demand (its arrival rate x the predicted seconds of a request
  whose consts are cached, in workers' worth of work) exceeds ``REPLICATE_AT`` of the workers
  holding its consts, while none of them has a free slot, goes to the least loaded worker, which
  loads one more replica, before a queue builds up on its holders; and the holders also carry the
  tenant's requests still waiting in the fair queue, shared among them.
- ``locality`` (Hermes, MQFQ-Sticky): the least loaded worker holding the consts while one of them
  has a free slot, else the least loaded worker.
- ``balance``: the least loaded worker with a free slot (Dask's own least-loaded idea).
- ``static`` and ``exclusive``: each tenant's one worker (round robin in order of first appearance).
"""

from __future__ import annotations

from collections.abc import Collection

from .cluster import Cluster, Consts

POLICIES = ("affinity", "balance", "static", "exclusive", "locality")
REPLICATE_AT = 0.8  # busy share of its holders beyond which a tenant's consts get one more replica
PINNED = ("static", "exclusive")


def choose_worker(
    cluster: Cluster,
    consts: Consts,
    policy: str,
    *,
    stickiness: float,
    bandwidth: float,
    pinned: str | None = None,
    replicate: bool = False,
    backlog: float = 0.0,
    demand: float = 0.0,
) -> str | None:
    """The worker the task should go to, or None when it should wait (no free slot anywhere, or, pinned,
    none on its worker). ``backlog``: seconds of the task's tenant's requests waiting in the fair queue;
    ``demand``: workers' worth of work the tenant brings (arrival rate x seconds per request)."""
    if pinned is not None:
        return pinned if cluster.is_open(pinned) else None
    least = cluster.least_loaded()
    if policy not in ("affinity", "locality") or least is None or not consts:
        return least
    holders = cluster.holding(consts)
    if policy == "locality":
        open_holders = [a for a in holders if cluster.is_open(a) and cluster.views[a].running]
        return min(open_holders, key=lambda a: (cluster.views[a].queued_seconds, a)) if open_holders else least
    if replicate and holders and least not in holders:
        copies = max(len(cluster.holders.get(ref, ())) for ref, _ in consts)
        if demand > REPLICATE_AT * copies and not any(cluster.is_open(a) for a in holders):
            return least
    share = backlog / len(holders) if replicate and holders else 0.0
    best, best_rank = None, None
    for address in holders | {least}:
        view = cluster.views.get(address)
        if view is None or not view.running:
            continue
        wait = view.queued_seconds + (share if address in holders else 0.0)
        cost = wait + stickiness * view.placement_bytes(consts) / bandwidth
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

    def __init__(self) -> None:
        self.order: dict[str, int] = {}
        self.homes: dict[str, str] = {}

    def worker_for(self, tenant: str, workers: Collection[str]) -> str:
        home = self.homes.get(tenant)
        if home is None or home not in workers:
            index = self.order.setdefault(tenant, len(self.order))
            home = self.homes[tenant] = sorted(workers)[index % len(workers)]
        return home

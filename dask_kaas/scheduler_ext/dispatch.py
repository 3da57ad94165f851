"""Central weighted fair dispatch: KaaS tasks wait on the scheduler, one queue per tenant.

Workers run what they are sent, so fairness decided only in each worker's
queue is local: a tenant whose requests sit on a less crowded GPU gets more
than its share. Instead, every KaaS task is held on the scheduler (restricted
to a worker that never exists, so Dask parks it in ``no-worker``) and released
when a worker has room (at most ``depth`` KaaS tasks in flight per worker).

Which task fills a free slot: each tenant has a weighted service count (the
predicted GPU seconds dispatched for it / its weight), as in Linux's CFS; a
tenant that becomes backlogged again starts at the least service among the
backlogged, so idle time banks no credit and a burst buys no advantage. Among
the tenants within ``slack`` of the least-served one, the slot goes to the one
whose next task suits that worker best (fewest const bytes to load there), as
in MQFQ-Sticky: fairness is kept to within one task, and inside that bound
requests stay where their data is. The released task then goes through Dask's
own worker choice, which the placement objective makes cache-aware.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

HELD = "kaas://held-for-fair-dispatch"  # a worker that never exists
MIN_COST = 1e-3  # seconds charged before any runtime of a shape is known


class FairDispatcher:
    def __init__(self, depth: int = 2, weights: dict[str, float] | None = None, slack_tasks: float = 1.0):
        self.depth = depth
        self.weights = dict(weights or {})
        self.slack_tasks = slack_tasks
        self.queues: dict[str, deque] = {}    # tenant -> held keys, in arrival order
        self.service: dict[str, float] = {}   # tenant -> weighted service dispatched so far
        self._held = 0

    def __len__(self) -> int:
        return self._held

    def weight(self, tenant: str) -> float:
        return float(self.weights.get(tenant, 1.0))

    def _floor(self) -> float:
        backlogged = [self.service[t] for t, q in self.queues.items() if q]
        return min(backlogged) if backlogged else max(self.service.values(), default=0.0)

    def hold(self, tenant: str, key) -> None:
        queue = self.queues.setdefault(tenant, deque())
        if not queue:  # (re)joining the backlog: no credit from idle time
            self.service[tenant] = max(self.service.get(tenant, 0.0), self._floor())
        queue.append(key)
        self._held += 1

    def charge(self, tenant: str, cost: float) -> None:
        """Account a task dispatched without waiting in the queue."""
        if not self.queues.get(tenant):
            self.service[tenant] = max(self.service.get(tenant, 0.0), self._floor())
        self.service[tenant] += max(cost, MIN_COST) / self.weight(tenant)

    def held(self, tenant: str) -> int:
        return len(self.queues.get(tenant, ()))

    def backlogged_weight(self) -> float:
        return sum(self.weight(t) for t, q in self.queues.items() if q)

    def pick(self, ready: Callable, cost: Callable, fit: Callable | None = None):
        """The key to dispatch next, or None.

        ``ready(key)``: True (runnable now), False (not yet: keep) or None (gone:
        drop). ``cost(key)``: predicted seconds, charged to its tenant.
        ``fit(key)``: how badly the key suits the free worker (lower is better;
        None means it cannot go there); without it the least-served tenant wins.
        """
        heads = {}
        for tenant, queue in self.queues.items():
            key = self._first_ready(queue, ready)
            if key is not None:
                heads[tenant] = key
        if not heads:
            return None
        least = min(heads, key=lambda t: self.service[t])
        slack = self.slack_tasks * max(cost(heads[least]), MIN_COST) / self.weight(least)
        floor = self.service[least]
        best, best_rank = None, None
        for tenant, key in heads.items():
            if self.service[tenant] > floor + slack and fit is not None:
                continue
            badness = 0.0 if fit is None else fit(key)
            if badness is None:
                continue
            rank = (badness, self.service[tenant])
            if best_rank is None or rank < best_rank:
                best, best_rank = tenant, rank
        if best is None:
            return None
        key = heads[best]
        self.queues[best].remove(key)
        self._held -= 1
        self.service[best] += max(cost(key), MIN_COST) / self.weight(best)
        return key

    def requeue(self, tenant: str, key) -> None:
        """Put a picked key back at the head of its tenant's queue (its service is not refunded)."""
        self.queues.setdefault(tenant, deque()).appendleft(key)
        self._held += 1

    def _first_ready(self, queue: deque, ready: Callable):
        """The first runnable key of a queue, dropping gone ones on the way."""
        i = 0
        while i < len(queue):
            key = queue[i]
            verdict = ready(key)
            if verdict is None:
                del queue[i]
                self._held -= 1
            elif verdict:
                return key
            else:
                i += 1
        return None

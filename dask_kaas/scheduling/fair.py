"""Weighted fair queueing of tenants' tasks, as in Linux's CFS: O(log tenants) per operation.

Each tenant has a FIFO queue of tasks ready to run and a weighted service count (predicted GPU
seconds dispatched for it / its weight). The next slot goes to the least-served backlogged
tenant; a tenant that becomes backlogged again starts at the least service among the
backlogged, so idle time banks no credit and a burst buys nothing. Backlogged tenants sit in a
heap by service (entries made stale by a later change are skipped when they surface), so finding
the least-served one, and the few within a slack of it, costs O(log tenants).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Hashable

MIN_COST = 1e-3  # seconds charged for a task before any runtime of its shape is known


class FairQueue:
    def __init__(self, weights: dict[str, float] | None = None) -> None:
        self.weights = dict(weights or {})
        self.queues: dict[str, deque[Hashable]] = {}
        self.service: dict[str, float] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._gone: set[Hashable] = set()  # keys withdrawn while queued, skipped when they reach a head
        self._live: dict[str, int] = {}  # tenant -> keys queued and not withdrawn
        self._where: dict[Hashable, str] = {}  # key -> tenant, while queued
        self._held = 0
        self._backlogged_weight = 0.0
        self._most = 0.0  # the largest service of any tenant (the floor when nobody is backlogged)

    # -- state ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._held

    def weight(self, tenant: str) -> float:
        return float(self.weights.get(tenant, 1.0))

    def held(self, tenant: str) -> int:
        return self._live.get(tenant, 0)

    def backlogged_weight(self) -> float:
        return self._backlogged_weight

    def floor(self) -> float:
        """The least service among backlogged tenants (the most of all when none is backlogged)."""
        top = self._top()
        if top is not None:
            return self.service[top]
        return self._most

    # -- changes ----------------------------------------------------------------------------
    def push(self, tenant: str, key: Hashable) -> None:
        """``key`` is ready to run: at the back of its tenant's queue."""
        queue = self.queues.get(tenant)
        if queue is None:
            queue = self.queues[tenant] = deque()
        if not queue:
            self._join(tenant)
        queue.append(key)
        self._count(tenant, key, 1)

    def push_front(self, tenant: str, key: Hashable) -> None:
        """A picked key that could not go after all: back at the head (its service is not refunded)."""
        queue = self.queues.setdefault(tenant, deque())
        if not queue:
            self._join(tenant)
        queue.appendleft(key)
        self._count(tenant, key, 1)

    def charge(self, tenant: str, cost: float) -> None:
        """Account ``cost`` seconds of service to ``tenant`` (a task dispatched, from its queue or not)."""
        if not self.queues.get(tenant):
            self.service[tenant] = max(self.service.get(tenant, 0.0), self.floor())
        self.service[tenant] += max(cost, MIN_COST) / self.weight(tenant)
        self._most = max(self._most, self.service[tenant])
        if self.queues.get(tenant):
            self._push_entry(tenant)

    def withdraw(self, key: Hashable) -> None:
        """``key`` left before it was dispatched (forgotten, failed): it is skipped when it surfaces."""
        tenant = self._where.get(key)
        if tenant is not None and key not in self._gone:
            self._gone.add(key)
            self._count(tenant, key, -1, keep_where=True)

    def pop(self, tenant: str) -> Hashable:
        """Take the head of ``tenant``'s queue (the caller charges it)."""
        self.head(tenant)  # past withdrawn keys
        queue = self.queues[tenant]
        key = queue.popleft()
        self._count(tenant, key, -1)
        if not queue:
            self._backlogged_weight -= self.weight(tenant)
        return key

    # -- choosing ---------------------------------------------------------------------------
    def head(self, tenant: str) -> Hashable | None:
        queue = self.queues.get(tenant)
        while queue:
            key = queue[0]
            if key not in self._gone:
                return key
            self._gone.discard(key)
            self._where.pop(key, None)
            queue.popleft()
            if not queue:
                self._backlogged_weight -= self.weight(tenant)
        return None

    def least_served(self, limit: int, within: float | None = None) -> list[str]:
        """Up to ``limit`` backlogged tenants in order of service, least first; with ``within``, only
        those within ``within`` of the least. The heap is left as it was."""
        out: list[str] = []
        taken: list[tuple[float, int, str]] = []
        while self._heap and len(out) < limit:
            entry = heapq.heappop(self._heap)
            service, _, tenant = entry
            if not self._valid(entry) or tenant in out or self.head(tenant) is None:
                continue
            if within is not None and out and service > self.service[out[0]] + within:
                taken.append(entry)
                break
            out.append(tenant)
            taken.append(entry)
        for entry in taken:
            heapq.heappush(self._heap, entry)
        return out

    # -- internals --------------------------------------------------------------------------
    def _count(self, tenant: str, key: Hashable, n: int, keep_where: bool = False) -> None:
        self._held += n
        self._live[tenant] = self._live.get(tenant, 0) + n
        if n > 0:
            self._where[key] = tenant
        elif not keep_where:
            self._where.pop(key, None)

    def _join(self, tenant: str) -> None:
        """(Re)joining the backlog: no credit from idle time."""
        self.service[tenant] = max(self.service.get(tenant, 0.0), self.floor())
        self._most = max(self._most, self.service[tenant])
        self._backlogged_weight += self.weight(tenant)
        self._push_entry(tenant)

    def _push_entry(self, tenant: str) -> None:
        heapq.heappush(self._heap, (self.service[tenant], next(self._seq), tenant))
        if len(self._heap) > 4 * (len(self.queues) + 16):  # drop stale entries now and then
            self._heap = [e for e in self._heap if self._valid(e)]
            heapq.heapify(self._heap)

    def _valid(self, entry: tuple[float, int, str]) -> bool:
        service, _, tenant = entry
        return bool(self.queues.get(tenant)) and self.service.get(tenant) == service

    def _top(self) -> str | None:
        while self._heap:
            entry = self._heap[0]
            if self._valid(entry) and self.head(entry[2]) is not None:
                return entry[2]
            heapq.heappop(self._heap)
        return None

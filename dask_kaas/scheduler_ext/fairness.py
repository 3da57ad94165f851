"""Weighted fair share across tenants: start-time fair queueing over predicted GPU time.

Each request gets a start tag ``S = max(V, F_tenant)`` and advances its tenant's
finish tag by ``cost / weight``; ``V`` follows the start tags of completed
requests. Workers run their queued tasks in priority order, and the start tag
leads a KaaS task's priority, so backlogged tenants share each GPU by weight
however much each of them submits.
"""
from __future__ import annotations

DEFAULT_COST = 1e-3  # seconds charged before any runtime of a shape is known


class FairQueue:
    def __init__(self, weights: dict[str, float] | None = None):
        self.weights = dict(weights or {})
        self.finish: dict[str, float] = {}
        self.virtual_time = 0.0

    def weight(self, tenant: str) -> float:
        return float(self.weights.get(tenant, 1.0))

    def start_tag(self, tenant: str, cost: float) -> float:
        start = max(self.virtual_time, self.finish.get(tenant, 0.0))
        self.finish[tenant] = start + max(cost, DEFAULT_COST) / self.weight(tenant)
        return start

    def completed(self, start_tag: float) -> None:
        self.virtual_time = max(self.virtual_time, start_tag)

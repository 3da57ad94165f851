"""Per-tenant rate limits: a token bucket each, on a clock the caller passes (pure, testable)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Bucket", "RateLimiter"]


@dataclass
class Bucket:
    """``rate`` requests per second on average, up to ``burst`` at once."""

    rate: float
    burst: float
    level: float
    updated: float

    def take(self, now: float) -> float:
        """Take one request's token: 0.0 when it may go now, else the seconds until it could."""
        elapsed = max(0.0, now - self.updated)
        self.level = min(self.burst, self.level + elapsed * self.rate)
        self.updated = max(self.updated, now)
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate


class RateLimiter:
    """A bucket per tenant that has a rate; tenants without one are never limited."""

    def __init__(self) -> None:
        self._buckets: dict[str, Bucket] = {}
        self._limits: dict[str, tuple[float, float]] = {}

    def configure(self, limits: dict[str, tuple[float, float]]) -> None:
        """``{tenant: (rate, burst)}``; a changed limit starts a full bucket, others keep theirs."""
        for tenant in list(self._buckets):
            if limits.get(tenant) != self._limits.get(tenant):
                del self._buckets[tenant]
        self._limits = dict(limits)

    def wait(self, tenant: str, now: float) -> float:
        """0.0 when ``tenant`` may send a request at ``now`` (and it is counted), else seconds to wait."""
        limit = self._limits.get(tenant)
        if limit is None:
            return 0.0
        bucket = self._buckets.get(tenant)
        if bucket is None:
            rate, burst = limit
            bucket = self._buckets[tenant] = Bucket(rate, burst, burst, now)
        return bucket.take(now)

"""Per-tenant accounting on the scheduler: submitted, completed, rejected, failed, latency percentiles."""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from itertools import repeat

import numpy as np

LATENCY_WINDOW = 2000  # most recent latencies kept per tenant
# Upper bounds (seconds) of the cumulative latency histogram (Prometheus' dask_kaas_request_latency_seconds)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass
class TenantStats:
    submitted: int = 0  # calls (a batch counts each of its calls)
    tasks: int = 0  # Dask tasks those calls came in (fewer than calls when they were batched)
    completed: int = 0
    rejected: int = 0
    failed: int = 0
    gpu_seconds: float = 0.0
    # the cache as this tenant's requests met it (their workers' reports)
    hits: int = 0
    misses: int = 0
    bytes_loaded: int = 0
    evictions_caused: int = 0  # entries evicted on a worker while one of this tenant's requests ran there
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    # since the start, unlike the window above: completions per bucket (the last one: above LATENCY_BUCKETS)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_count: int = 0

    def observe(self, latency: float, n: int = 1) -> None:
        """Record ``n`` completed requests of one latency (seconds; a batch's calls): in the window and in
        the cumulative histogram."""
        self.latencies.extend(repeat(latency, n))
        self.latency_buckets[bisect_left(LATENCY_BUCKETS, latency)] += n  # bucket i: latency <= LATENCY_BUCKETS[i]
        self.latency_sum += latency * n
        self.latency_count += n

    def histogram(self) -> list[tuple[float, int]]:
        """``(upper bound, completions with latency <= it)`` per bucket, cumulative, ending with ``inf``."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.latency_buckets):
            total += n
            out.append((bound, total))
        return out

    def snapshot(self) -> dict[str, float | None]:
        lat = np.fromiter(self.latencies, dtype=float) if self.latencies else None
        return {
            "submitted": self.submitted,
            "tasks": self.tasks,
            "completed": self.completed,
            "rejected": self.rejected,
            "failed": self.failed,
            "gpu_seconds": self.gpu_seconds,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / (self.hits + self.misses) if self.hits + self.misses else None,
            "bytes_loaded": self.bytes_loaded,
            "evictions_caused": self.evictions_caused,
            "latency_p50": float(np.percentile(lat, 50)) if lat is not None else None,
            "latency_p99": float(np.percentile(lat, 99)) if lat is not None else None,
            "latency_mean": float(lat.mean()) if lat is not None else None,
        }

"""Per-tenant accounting on the scheduler: submitted, completed, rejected, failed, latency percentiles."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

LATENCY_WINDOW = 2000  # most recent latencies kept per tenant


@dataclass
class TenantStats:
    submitted: int = 0
    completed: int = 0
    rejected: int = 0
    failed: int = 0
    gpu_seconds: float = 0.0
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def snapshot(self) -> dict:
        lat = np.fromiter(self.latencies, dtype=float) if self.latencies else None
        return {
            "submitted": self.submitted,
            "completed": self.completed,
            "rejected": self.rejected,
            "failed": self.failed,
            "gpu_seconds": self.gpu_seconds,
            "latency_p50": float(np.percentile(lat, 50)) if lat is not None else None,
            "latency_p99": float(np.percentile(lat, 99)) if lat is not None else None,
            "latency_mean": float(lat.mean()) if lat is not None else None,
        }

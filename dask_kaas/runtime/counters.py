"""Counters and phase timers for one worker's device, owned by one object.

Everything that measures (the caches, the runtime) writes here; everything that
reports (``worker_stats``, the scheduler extension) reads ``snapshot()``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

COUNTERS = (
    "requests",
    "kernel_launches",
    "hits",
    "compulsory_misses",
    "capacity_misses",
    "evictions",
    "bytes_evicted",
    "allocation_retries",
    "bytes_h2d",
    "bytes_d2h",
    "bytes_from_store",
    "bytes_to_store",
    "kernel_cache_hits",
    "kernel_cache_misses",
    "errors",
    "timed_requests",
)

PHASES = ("validate", "load", "h2d", "allocate", "kernels", "d2h", "store_write", "total")
#: What the device itself measured of its timed requests (CUDA events on a GPU): the copies in,
#: the kernels and the copies out. Per request: ``seconds[...] / counts["timed_requests"]``.
DEVICE_STAGES = ("device_h2d", "device_kernels", "device_d2h")


class Counters:
    """Monotonic counters plus accumulated seconds per phase, and per-tenant counters."""

    def __init__(self):
        self._lock = threading.Lock()
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.seconds: dict[str, float] = dict.fromkeys(PHASES + DEVICE_STAGES, 0.0)
        self.tenants: defaultdict[str, dict[str, float]] = defaultdict(
            lambda: {"requests": 0, "hits": 0, "misses": 0, "bytes_loaded": 0, "errors": 0, "seconds": 0.0}
        )

    def add(self, name: str, value: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + value

    def add_tenant(self, tenant: str | None, **values) -> None:
        with self._lock:
            row = self.tenants[tenant or "default"]
            for name, value in values.items():
                row[name] = row.get(name, 0) + value

    def add_stages(self, seconds) -> None:
        """One timed request's device stages (:data:`DEVICE_STAGES`, in order)."""
        with self._lock:
            for name, value in zip(DEVICE_STAGES, seconds):
                self.seconds[name] += value
            self.counts["timed_requests"] += 1

    def phase(self, name: str) -> _Phase:
        """``with counters.phase("load"): ...`` adds the block's seconds to that phase."""
        return _Phase(self, name)

    def hit_rate(self) -> float:
        hits = self.counts["hits"]
        total = hits + self.counts["compulsory_misses"] + self.counts["capacity_misses"]
        return hits / total if total else 0.0

    def snapshot(self) -> dict:
        with self._lock:
            out: dict[str, Any] = dict(self.counts)
            out["seconds"] = dict(self.seconds)
            out["tenants"] = {t: dict(row) for t, row in self.tenants.items()}
        out["misses"] = out["compulsory_misses"] + out["capacity_misses"]
        out["hit_rate"] = self.hit_rate()
        return out


class _Phase:
    """A phase timer: a plain object rather than a generator, since the runtime opens several per request."""

    __slots__ = ("counters", "name", "start")

    def __init__(self, counters: Counters, name: str):
        self.counters, self.name = counters, name

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.start
        counters = self.counters
        with counters._lock:
            counters.seconds[self.name] = counters.seconds.get(self.name, 0.0) + elapsed
        return False

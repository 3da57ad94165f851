"""The scheduler's picture of each worker's device cache, and what a request would have to load there."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..report import CachePicture

ConstRef = tuple[str, str]  # (namespace, key)


@dataclass
class WorkerView:
    """One KaaS worker as the scheduler sees it, refreshed by the worker after every request."""

    address: str
    resident: dict[ConstRef, tuple[str, int, int]] = field(default_factory=dict)  # -> (uid, version, nbytes)
    pending: Counter = field(default_factory=Counter)  # consts that tasks assigned here will load
    queued_seconds: float = 0.0  # predicted work of the KaaS tasks assigned here and not finished
    queued: int = 0
    capacity: int = 0
    used: int = 0
    pinned: int = 0
    counters: dict = field(default_factory=dict)
    device: str | None = None  # "cuda" or "host", once the worker has reported
    reports: int = 0
    picture: CachePicture = field(default_factory=CachePicture)
    service_interval: float | None = None  # seconds between completions while busy, as observed (contention included)
    service_deviation: float = 0.0          # its mean absolute deviation
    last_completion: float = 0.0

    def update(self, report: dict) -> None:
        self.picture.apply(report)
        self.resident = self.picture.resident
        self.counters = self.picture.counters
        self.capacity = report["capacity"]
        self.used = report["used"]
        self.pinned = report["pinned"]
        self.device = report.get("device", self.device)
        self.reports += 1

    def completed(self, assigned: float, now: float, alpha: float = 0.3) -> None:
        """A task assigned at ``assigned`` finished now: sample how long the worker took to serve it."""
        sample = now - max(self.last_completion, assigned)
        if self.service_interval is None:
            self.service_interval = sample
        else:
            self.service_deviation = (1 - alpha) * self.service_deviation + alpha * abs(sample - self.service_interval)
            self.service_interval = (1 - alpha) * self.service_interval + alpha * sample
        self.last_completion = now

    def missing_bytes(self, consts: tuple[tuple[ConstRef, int], ...]) -> int:
        """Bytes of ``consts`` neither cached here nor about to be loaded by a task already assigned here."""
        return sum(nbytes for ref, nbytes in consts if ref not in self.resident and not self.pending[ref])

    def placement_bytes(self, consts: tuple[tuple[ConstRef, int], ...]) -> int:
        """Bytes placing the task here costs: its missing consts, plus the cached bytes their loading would
        evict (someone will have to load those again)."""
        missing = self.missing_bytes(consts)
        if not missing or not self.capacity:
            return missing
        return missing + max(0, self.used + missing - self.capacity)

    def snapshot(self) -> dict:
        return {
            "cache": [{"namespace": ns, "key": key, "version": version, "uid": uid, "bytes": nbytes}
                      for (ns, key), (uid, version, nbytes) in sorted(self.resident.items())],
            "capacity": self.capacity,
            "used": self.used,
            "pinned": self.pinned,
            "free": max(0, self.capacity - self.used),
            "queue": self.queued,
            "queued_seconds": self.queued_seconds,
            "service_interval": self.service_interval,
            "counters": dict(self.counters),
            "device": self.device,
            "reports": self.reports,
        }


class StaticAssignment:
    """The paper's static baseline: each tenant pinned to one worker, round-robin in order of first appearance."""

    def __init__(self):
        self.tenants: dict[str, int] = {}

    def worker_for(self, tenant: str, workers: list[str]) -> str:
        index = self.tenants.setdefault(tenant, len(self.tenants))
        return sorted(workers)[index % len(workers)]

"""The scheduler's picture of the KaaS workers, kept so that no decision scans every worker.

- Each worker's view: its cache (from its reports), the consts the tasks assigned to it will load,
  its queue of KaaS tasks and their predicted seconds, its free dispatch slots, its service rate.
- An index from each const to the workers that hold it (or are about to): the candidates for a
  task that needs it are found without looking at the others.
- The workers with a free slot, in a heap by queued work: the least loaded one in O(log workers).
- Sums over all workers (tasks queued, service rate), kept up to date, for admission's predictions.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..report import CachePicture, ConstRef, ConstState, Report

Consts = tuple[tuple[ConstRef, int], ...]  # ((ConstRef, nbytes), ...): the consts a task reads


@dataclass
class WorkerView:
    """One KaaS worker as the scheduler sees it."""

    address: str
    depth: int = 2
    picture: CachePicture = field(default_factory=CachePicture)
    pending: Counter[ConstRef] = field(default_factory=Counter)  # consts that tasks assigned here will load
    queued: int = 0  # KaaS tasks (what the slots bound)
    queued_calls: int = 0  # the calls in them (a batch is one task of several calls)
    queued_seconds: float = 0.0
    capacity: int = 0
    used: int = 0
    pinned: int = 0
    device: str | None = None
    reports: int = 0
    running: bool = True
    entry: int = -1  # the sequence number of its current entry in the heap of open workers
    service_interval: float | None = None  # seconds per call served while busy, as observed
    service_deviation: float = 0.0
    last_completion: float = 0.0
    # const -> when a request that read it here last finished
    last_used: dict[ConstRef, float] = field(default_factory=dict)

    def used_now(self, consts: Iterable[tuple[ConstRef, int]], now: float) -> None:
        """A request that read ``consts`` (``(ref, nbytes)`` pairs) finished here at ``now``."""
        for ref, _ in consts:
            self.last_used[ref] = now
        if len(self.last_used) > 2 * len(self.resident) + 64:  # forget consts long gone from the cache
            self.last_used = {ref: t for ref, t in self.last_used.items() if ref in self.resident}

    @property
    def resident(self) -> dict[ConstRef, ConstState]:
        return self.picture.resident

    @property
    def counters(self) -> dict[str, int]:
        return self.picture.counters

    @property
    def free(self) -> int:
        return self.depth - self.queued if self.running else 0

    def missing_bytes(self, consts: Consts) -> int:
        """Bytes of ``consts`` neither cached here nor about to be loaded by a task already assigned here."""
        resident, pending = self.picture.resident, self.pending
        if len(consts) == 1:  # the common case, on every placement decision: no generator
            ref, nbytes = consts[0]
            return 0 if ref in resident or pending[ref] else nbytes
        return sum(nbytes for ref, nbytes in consts if ref not in resident and not pending[ref])

    def placement_bytes(self, consts: Consts) -> int:
        """What placing a task here costs in bytes: its missing consts, plus the cached bytes their
        loading would evict (someone will have to load those again)."""
        missing = self.missing_bytes(consts)
        if not missing or not self.capacity:
            return missing
        return missing + max(0, self.used + missing - self.capacity)

    def rate(self, fallback: float) -> float:
        """Calls per second this worker completes (from ``fallback`` seconds per call until observed)."""
        if self.service_interval:
            return 1.0 / max(self.service_interval + self.service_deviation, 1e-6)
        return 1.0 / max(fallback, 1e-6)

    def completed(self, assigned: float, now: float, alpha: float = 0.3, calls: int = 1) -> None:
        """A task of ``calls`` calls assigned at ``assigned`` finished at ``now``: sample how long the worker
        took to serve each of its calls."""
        sample = (now - max(self.last_completion, assigned)) / max(1, calls)
        if self.service_interval is None:
            self.service_interval = sample
        else:
            self.service_deviation = (1 - alpha) * self.service_deviation + alpha * abs(sample - self.service_interval)
            self.service_interval = (1 - alpha) * self.service_interval + alpha * sample
        self.last_completion = now

    def snapshot(self) -> dict[str, Any]:
        return {
            "cache": [
                {
                    "namespace": ns,
                    "key": key,
                    "version": version,
                    "uid": uid,
                    "bytes": nbytes,
                    "last_used": self.last_used.get((ns, key)),
                }
                for (ns, key), (uid, version, nbytes) in sorted(self.resident.items())
            ],
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
            "exact": self.picture.exact,
        }


class Cluster:
    """Every KaaS worker's view, the const index, the open workers and the cluster-wide sums."""

    def __init__(self, depth: int = 2) -> None:
        self.depth = depth
        self.views: dict[str, WorkerView] = {}
        self.holders: dict[ConstRef, set[str]] = {}  # const -> workers holding it or about to load it
        self._open: list[tuple[float, int, str]] = []  # (queued seconds, seq, worker) of workers with a free slot
        self._seq = itertools.count()
        self.queued = 0  # KaaS tasks assigned to workers and not finished, all workers
        self.queued_calls = 0  # the calls in them
        self._observed_rate = 0.0  # sum of the observed workers' service rates
        self._unobserved = 0  # workers whose service rate is not known yet

    # -- workers ----------------------------------------------------------------------------
    def add(self, address: str) -> WorkerView:
        view = self.views.get(address)
        if view is None:
            view = self.views[address] = WorkerView(address, depth=self.depth)
            self._unobserved += 1
            self._reopen(view)
        return view

    def remove(self, address: str) -> None:
        view = self.views.pop(address, None)
        if view is None:
            return
        self.queued -= view.queued
        self.queued_calls -= view.queued_calls
        if view.service_interval:
            self._observed_rate -= view.rate(1.0)
        else:
            self._unobserved -= 1
        for ref in set(view.resident) | set(view.pending):
            self._unhold(ref, address)

    def set_running(self, address: str, running: bool) -> None:
        view = self.views.get(address)
        if view is not None and view.running != running:
            view.running = running
            self._reopen(view)

    def __contains__(self, address: object) -> bool:
        return address in self.views

    def __len__(self) -> int:
        return len(self.views)

    # -- reports ----------------------------------------------------------------------------
    def apply_report(self, address: str, report: Report) -> WorkerView:
        view = self.add(address)
        before = set(view.resident)
        view.picture.apply(report)
        view.capacity = report.get("capacity", view.capacity)
        view.used = report.get("used", view.used)
        view.pinned = report.get("pinned", view.pinned)
        view.device = report.get("device", view.device)
        view.reports += 1
        after = set(view.resident)
        for ref in after - before:
            self.holders.setdefault(ref, set()).add(address)
        for ref in before - after:
            if not view.pending[ref]:
                self._unhold(ref, address)
        return view

    def forget_caches(self) -> None:
        """Every worker just emptied its cache (a policy switch that clears them)."""
        for view in self.views.values():
            view.picture.resident.clear()
        self.holders = {}
        for view in self.views.values():
            for ref in view.pending:
                self.holders.setdefault(ref, set()).add(view.address)

    # -- tasks ------------------------------------------------------------------------------
    def assign(self, address: str, consts: Consts, seconds: float, calls: int = 1) -> None:
        """A task (of ``calls`` calls) goes to ``address``: a slot taken, its consts about to be loaded there."""
        view = self.views[address]
        view.queued += 1
        view.queued_calls += calls
        view.queued_seconds += seconds
        self.queued += 1
        self.queued_calls += calls
        for ref, _ in consts:
            view.pending[ref] += 1
            self.holders.setdefault(ref, set()).add(address)
        self._reopen(view)

    def release(self, address: str, consts: Consts, seconds: float, calls: int = 1) -> None:
        """A task assigned to ``address`` left it (finished, failed, moved): its slot is free again."""
        view = self.views.get(address)
        if view is None:
            return
        view.queued = max(0, view.queued - 1)
        view.queued_calls = max(0, view.queued_calls - calls)
        self.queued_calls = max(0, self.queued_calls - calls)
        # exactly 0 when idle: a float residue of the running sum would break every tie between idle
        # workers the same way (balance sent everything to one worker, affinity every new tenant)
        view.queued_seconds = max(0.0, view.queued_seconds - seconds) if view.queued else 0.0
        self.queued = max(0, self.queued - 1)
        for ref, _ in consts:
            view.pending[ref] -= 1
            if view.pending[ref] <= 0:
                del view.pending[ref]
                if ref not in view.resident:
                    self._unhold(ref, address)
        self._reopen(view)

    # -- choosing ---------------------------------------------------------------------------
    def is_open(self, address: str) -> bool:
        view = self.views.get(address)
        return view is not None and view.free > 0

    def least_loaded(self) -> str | None:
        """The worker with a free slot and the least queued work; None when every slot is taken."""
        while self._open:
            if self._current(self._open[0]):
                return self._open[0][2]
            heapq.heappop(self._open)
        return None

    def holding(self, consts: Consts, most: int = 8) -> set[str]:
        """Up to ``most`` workers per const holding (or about to load) any of ``consts``: a const that
        many workers hold costs nothing to load on any of them, so a few of them (and the least loaded
        worker, which placement always weighs) stand for all, and no decision grows with the cluster."""
        out: set[str] = set()
        for ref, _ in consts:
            holders = self.holders.get(ref)
            if holders:
                out.update(holders if len(holders) <= most else itertools.islice(holders, most))
        return out

    def total_rate(self, fallback: float) -> float:
        """Calls per second the cluster completes (workers not yet observed at ``fallback`` s per call)."""
        return self._observed_rate + self._unobserved / max(fallback, 1e-6)

    def completed(self, address: str, assigned: float, now: float, calls: int = 1) -> None:
        """A task of ``calls`` calls assigned to ``address`` at ``assigned`` finished at ``now``: its
        service rate, and the sum."""
        view = self.views.get(address)
        if view is None:
            return
        if view.service_interval:
            self._observed_rate -= view.rate(1.0)
        else:
            self._unobserved -= 1
        view.completed(assigned, now, calls=calls)
        self._observed_rate += view.rate(1.0)

    # -- internals --------------------------------------------------------------------------
    def _reopen(self, view: WorkerView) -> None:
        """The worker's entry in the heap of open workers, renewed (its older entries go stale)."""
        view.entry = next(self._seq)
        if view.free > 0:
            heapq.heappush(self._open, (view.queued_seconds, view.entry, view.address))
            if len(self._open) > 2 * len(self.views) + 64:  # at most one current entry per worker
                self._open = [e for e in self._open if self._current(e)]
                heapq.heapify(self._open)

    def _current(self, entry: tuple[float, int, str]) -> bool:
        view = self.views.get(entry[2])
        return view is not None and view.entry == entry[1] and view.free > 0

    def _unhold(self, ref: ConstRef, address: str) -> None:
        workers = self.holders.get(ref)
        if workers is not None:
            workers.discard(address)
            if not workers:
                del self.holders[ref]

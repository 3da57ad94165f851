"""A small discrete-event harness around the pure scheduling core, on a virtual clock.

Workers serve their assigned tasks one at a time, first come first served; a task's service time
is its kernel time plus the load time of the consts its worker lacks (then holds). Used to test
the core's policies without timing: the clock is virtual, every run is deterministic.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

from dask_kaas.scheduling import SchedulingCore, Task


@dataclass
class SimWorker:
    address: str
    capacity: int
    queue: deque = field(default_factory=deque)
    busy: bool = False
    cache: dict = field(default_factory=dict)  # ref -> nbytes, LRU order
    loaded: int = 0


class Sim:
    def __init__(self, core: SchedulingCore, workers: int, *, capacity: int = 2**40, bandwidth: float = 1e9):
        self.now = 0.0
        self.core = core
        core.clock = lambda: self.now
        self.bandwidth = bandwidth
        self.workers = {f"w{i}": SimWorker(f"w{i}", capacity) for i in range(workers)}
        for address in self.workers:
            core.add_worker(address)
        self._events: list = []
        self._seq = itertools.count()
        self.submitted: dict = {}
        self.finished: dict = {}
        self.rejected: dict = {}
        self.ran_on: dict = {}
        self._work: dict = {}
        self._reports = 0

    def at(self, when: float, fn, *args) -> None:
        heapq.heappush(self._events, (when, next(self._seq), fn, args))

    def submit(self, key, tenant: str, seconds: float, consts=(), deadline=None, shape=None) -> None:
        """At the current time: a request of ``seconds`` kernel time needing ``consts`` ((ref, nbytes), ...)."""
        self.submitted[key] = self.now
        self._work[key] = seconds
        decision = self.core.submit(
            Task(key, tenant, shape or f"shape-{seconds}", tuple(consts), submitted=self.now, deadline=deadline)
        )
        if decision.action == "reject":
            self.rejected[key] = decision
        elif decision.action == "run":
            self._start(key, decision.worker)
        self._dispatch()

    def _dispatch(self) -> None:
        for key, worker in self.core.dispatch():
            self._start(key, worker)

    def _start(self, key, address: str) -> None:
        self.core.placed(key, address)
        worker = self.workers[address]
        worker.queue.append(key)
        if not worker.busy:
            self._next(worker)

    def _next(self, worker: SimWorker) -> None:
        if not worker.queue:
            worker.busy = False
            return
        worker.busy = True
        key = worker.queue.popleft()
        task = self.core.tasks[key]
        load = 0
        for ref, nbytes in task.consts:
            if ref in worker.cache:
                worker.cache[ref] = worker.cache.pop(ref)
            else:
                load += nbytes
                worker.cache[ref] = nbytes
                while sum(worker.cache.values()) > worker.capacity:
                    worker.cache.pop(next(iter(worker.cache)))
        worker.loaded += load
        seconds = self._work[key] + load / self.bandwidth
        self.at(self.now + seconds, self._done, worker, key, seconds, task.tenant, task.shape, load)

    def _done(self, worker: SimWorker, key, seconds: float, tenant: str, shape: str, load: int) -> None:
        self._reports += 1
        self.core.report(
            worker.address,
            {
                "ok": True,
                "tenant": tenant,
                "shape": shape,
                "seconds": seconds,
                "capacity": worker.capacity,
                "used": sum(worker.cache.values()),
                "pinned": 0,
                "consts": [[*ref, "uid", 1, n] for ref, n in worker.cache.items()],
                "counters": {"bytes_from_store": worker.loaded},
                "load_seconds": worker.loaded / self.bandwidth,
                **self.report_fields(key, seconds),
            },
        )
        self.core.finished(key, True, duration=seconds)
        self.finished[key] = self.now
        self.ran_on[key] = worker.address
        self._next(worker)
        self._dispatch()

    def report_fields(self, key, seconds: float) -> dict:
        """What a subclass adds to (or changes in) the report of ``key``, which ran ``seconds``."""
        return {}

    def run(self, until: float = float("inf")) -> None:
        while self._events and self._events[0][0] <= until:
            when, _, fn, args = heapq.heappop(self._events)
            self.now = when
            fn(*args)
        self.now = max(self.now, until) if until != float("inf") else self.now

    def latency(self, key) -> float:
        return self.finished[key] - self.submitted[key]

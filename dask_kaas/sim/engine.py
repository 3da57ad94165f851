"""The discrete-event simulation: a GPU pool on a virtual clock, driven by the live scheduling core.

The scheduler side is :class:`dask_kaas.scheduling.SchedulingCore` itself, on the simulation's
clock: admission, fair queueing, dispatch and placement are the code the scheduler plugin runs. It
sees a call once Dask has spent its submit CPU on it (``CostModel.submit_seconds``), as the plugin
sees a task only once Dask made it, and hears of its completion once the scheduler has handled the
worker's message. Messages travel on Dask's batched streams (:class:`BatchedStream`).
The workers are simulated: each serves the requests assigned to it one at a time, first come first
served; its device cache evicts in :func:`dask_kaas.eviction.eviction_order`'s order
(the live cache's code) with the hints the core gave when it dispatched the worker's latest task
that carried any (:meth:`SchedulingCore.hints`, as live they travel in the task's annotation);
after each request it reports to the core in the live reports' format (:mod:`dask_kaas.report`,
changes only). Costs: :mod:`dask_kaas.sim.costs`.

``exclusive`` (the paper's baseline): a worker empties its cache whenever the tenant changes.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from .. import config
from ..eviction import check_eviction, eviction_order
from ..report import Report
from ..scheduling import SchedulingCore, Task
from .costs import CostModel
from .workloads import Workload

ARRIVE, START, DONE, SWITCH, ADMIT, FINISH, RESULT, SEND, WORK, NOTHING = range(10)
SWITCHABLE = ("policy", "replication", "eviction")  # what a switch mid-run may change, as set_policy does live


class BatchedStream:
    """One of Dask's batched streams (``distributed.batched.BatchedSend``): a message goes at once when
    the last batch left at least ``interval`` ago, else with the batch that leaves ``interval`` after
    it. :meth:`departure` is asked in time order."""

    __slots__ = ("interval", "last")

    def __init__(self, interval: float):
        self.interval = interval
        self.last = -np.inf

    def departure(self, now: float) -> float:
        if now <= self.last:  # the batch about to leave takes it
            return self.last
        self.last = now if now >= self.last + self.interval else self.last + self.interval
        return self.last


@dataclass(slots=True)
class _Entry:
    key: tuple
    nbytes: int
    last_use: int
    uses: int = 1
    const: bool = True


@dataclass
class SimWorker:
    address: str
    capacity: int
    queue: deque = field(default_factory=deque)
    busy: bool = False
    cache: dict = field(default_factory=dict)  # ref -> _Entry
    used: int = 0
    tenant: str | None = None
    seq: int = 0
    added: dict = field(default_factory=dict)  # consts loaded since the last report
    removed: set = field(default_factory=set)  # consts evicted since the last report
    reported_loaded: int = 0
    reported_load_seconds: float = 0.0
    loaded: int = 0
    load_seconds: float = 0.0
    busy_seconds: float = 0.0
    requests: int = 0
    accesses: list | None = None  # (ref, nbytes) in the order this worker used them, when recorded
    wanted: dict = field(default_factory=dict)  # the hints that came with its latest task that had any
    inbox: BatchedStream | None = None  # the scheduler's stream to it
    outbox: BatchedStream | None = None  # its stream to the scheduler


@dataclass
class SimResult:
    """What happened to each call (NaN latency: rejected or failed), and the cluster's counters."""

    workload: Workload
    latency: np.ndarray
    submitted: np.ndarray  # when each call was submitted (seconds)
    rejected: np.ndarray
    failed: np.ndarray
    worker_of: np.ndarray
    end: float
    hits: int
    misses: int
    bytes_loaded: int
    load_seconds: float  # the workers' loads as they measured them (stretched by waits for a core)
    gpu_seconds: float
    requests_per_worker: list
    accesses: dict | None
    capacity: int
    events: int
    settings: dict


class Simulation:
    """``gpus`` simulated workers of ``capacity`` cache bytes each, scheduled by a :class:`SchedulingCore`.

    ``policy``, ``replication``, ``depth``, ``stickiness``, ``margin``, ``slack_tasks``: the core's
    settings (``kaas.scheduler.*``); ``eviction``: the workers' (``kaas.eviction``); ``admission``:
    give each call its function's SLO as its deadline (else no deadlines); ``record``: keep each
    worker's const accesses (for Belady's optimum over the same placement).
    """

    def __init__(
        self,
        gpus: int,
        *,
        capacity: int,
        costs: CostModel,
        policy: str = "affinity",
        replication: bool = False,
        eviction: str = "lru",
        depth: int = 2,
        stickiness: float = 2.0,
        margin: float = 0.85,
        slack_tasks: float = 1.0,
        admission: bool = False,
        record: bool = False,
        seed: int = 0,
    ):
        self.costs = costs
        self.eviction = check_eviction(eviction)
        self.exclusive = policy == "exclusive"
        self.admission = admission
        self.now = 0.0
        # as live, the core starts from kaas.scheduler.load-bandwidth and learns the rest from reports
        self.core = SchedulingCore(
            policy=policy,
            depth=depth,
            weights=None,
            margin=margin,
            stickiness=stickiness,
            load_bandwidth=config.scheduler_settings()["load_bandwidth"],
            slack_tasks=slack_tasks,
            replication=replication,
            clock=lambda: self.now,
        )
        width = len(str(gpus - 1))
        self.workers = {f"gpu-{i:0{width}d}": SimWorker(f"gpu-{i:0{width}d}", int(capacity)) for i in range(gpus)}
        self._client_stream = BatchedStream(costs.client_interval)
        self._to_client = BatchedStream(costs.to_client_interval)
        for w in self.workers.values():
            w.inbox, w.outbox = BatchedStream(costs.to_worker_interval), BatchedStream(costs.from_worker_interval)
            self.core.add_worker(w.address)
            if record:
                w.accesses = []
        self.settings: dict[str, Any] = {
            "gpus": gpus,
            "capacity": int(capacity),
            "policy": policy,
            "replication": replication,
            "eviction": eviction,
            "depth": depth,
            "stickiness": stickiness,
            "admission": admission,
            "seed": seed,
        }
        self._rng = np.random.default_rng(seed)
        self._jitter = self._jitter_draws(costs.jitter_cv)
        self._load_jitter = self._jitter_draws(costs.load_cv)
        self._tick = itertools.count(1)
        self._events: list = []
        self._seq = itertools.count()
        self._scheduler_free = 0.0
        self._cores = [0.0] * costs.shared_cores if costs.shared_cores else None  # when each shared core frees
        self.hits = self.misses = 0

    # -- the run -------------------------------------------------------------------------------
    def run(self, workload: Workload, switches=()) -> SimResult:
        """Replay ``workload``; ``switches``: ``(seconds, settings)`` pairs, each changing the policy,
        replication or eviction at that time, as :func:`dask_kaas.set_policy` does on a live cluster."""
        for when, changes in switches:
            unknown = set(changes) - set(SWITCHABLE)
            if unknown or not when >= 0:
                raise ValueError(
                    f"a switch is (seconds >= 0, settings of {', '.join(SWITCHABLE)}), got ({when!r}, {changes!r})"
                )
            self._at(float(when), SWITCH, dict(changes), None)
        n = len(workload)
        self._workload = workload
        self._functions = workload.functions
        self._calls = workload.calls
        self._latency = np.full(n, np.nan)
        self._submitted = np.zeros(n)
        self._rejected = np.zeros(n, dtype=bool)
        self._failed = np.zeros(n, dtype=bool)
        self._worker_of = np.full(n, -1, dtype=np.int32)
        self._index = {a: i for i, a in enumerate(self.workers)}
        events = 0
        heap = self._events
        times = workload.times
        open_calls, loops = workload.plan()
        self._loops = [deque(calls) for calls, _ in loops]  # each closed-loop client's calls still to send
        self._loop_of = np.full(n, -1, dtype=np.int64)
        for c, (calls, window) in enumerate(loops):
            self._loop_of[calls] = c
            for _ in range(min(window, len(calls))):
                self._submit_next(c, 0.0)
        self._next_open = 0
        pop = heapq.heappop
        while True:
            arrival = times[open_calls[self._next_open]] if self._next_open < len(open_calls) else np.inf
            if heap and heap[0][0] <= arrival:
                when, _, kind, a, b = pop(heap)
                self.now = when
                if kind == DONE:
                    self._done(a, b)
                elif kind == START:
                    self._arrive(a, *b)
                elif kind == SWITCH:
                    self._switch(a)
                elif kind == ADMIT:
                    self._admit(a)
                elif kind == FINISH:
                    self._finish(a, b)
                elif kind == RESULT:
                    self._result(a, b)
                elif kind == SEND:
                    self._send(a, *b)
                elif kind == WORK:
                    self._scheduler_work(*b)
                else:  # ARRIVE: a closed loop's next call
                    self._submit(a)
            elif arrival != np.inf:
                self.now = float(arrival)
                self._submit(int(open_calls[self._next_open]))
                self._next_open += 1
            else:
                break
            events += 1
        accesses = {w.address: w.accesses for w in self.workers.values()} if self._record else None
        return SimResult(
            workload=workload,
            latency=self._latency,
            submitted=self._submitted,
            rejected=self._rejected,
            failed=self._failed,
            worker_of=self._worker_of,
            end=self.now,
            hits=self.hits,
            misses=self.misses,
            bytes_loaded=sum(w.loaded for w in self.workers.values()),
            load_seconds=sum(w.load_seconds for w in self.workers.values()),
            gpu_seconds=sum(w.busy_seconds for w in self.workers.values()),
            requests_per_worker=[w.requests for w in self.workers.values()],
            accesses=accesses,
            capacity=next(iter(self.workers.values())).capacity if self.workers else 0,
            events=events,
            settings=dict(self.settings, costs=self.costs.as_dict()),
        )

    @property
    def _record(self) -> bool:
        return any(w.accesses is not None for w in self.workers.values())

    def _submit_next(self, loop: int, when: float) -> None:
        """The next call of closed-loop client ``loop``, sent at ``when``."""
        if self._loops[loop]:
            self._at(when, ARRIVE, self._loops[loop].popleft(), None)

    # -- events --------------------------------------------------------------------------------
    def _at(self, when: float, kind: int, a, b) -> None:
        heapq.heappush(self._events, (when, next(self._seq), kind, a, b))

    def _submit(self, i: int) -> None:
        """A client submits call ``i``: it leaves on the client's stream, Dask spends its submit CPU, then
        the core sees it."""
        fn = self._functions[self._calls[i]]
        self._submitted[i] = self.now
        work = self.costs.submit_seconds + fn.in_bytes * self.costs.byte_seconds
        self._send(self._client_stream, 0.0, WORK, None, (work * self._jitter_draw(), ADMIT, i, None))

    def _admit(self, i: int) -> None:
        fn = self._functions[self._calls[i]]
        deadline = fn.slo_seconds if self.admission else None
        decision = self.core.submit(
            Task(i, fn.tenant, fn.shape_token, fn.consts, submitted=self.now, deadline=deadline)
        )
        if decision.action == "reject":
            self._rejected[i] = True
            if self._loop_of[i] >= 0:
                self._submit_next(self._loop_of[i], self.now)
            return
        if decision.action == "run" and decision.worker is not None:
            self._start(i, decision.worker)
        self._dispatch()

    def _dispatch(self) -> None:
        for key, worker in self.core.dispatch():
            self._start(cast(int, key), worker)  # the simulation's task keys are call indices

    def _start(self, i: int, address: str) -> None:
        """The scheduler sends call ``i`` to ``address`` with the core's hints for that worker, as the
        live plugin annotates the task when it places it: its share of the scheduler, the scheduler's
        stream to the worker, then the wire."""
        hints = self.core.hints(address) if self.eviction == "queue-aware" else None
        self._scheduler_work(
            self.costs.scheduler_seconds * self._jitter_draw(),
            START,
            i,
            (address, hints),
            self.costs.dispatch_seconds,
            self.workers[address].inbox,
        )

    def _scheduler_work(
        self, seconds: float, kind: int, a, b, delay: float = 0.0, stream: BatchedStream | None = None
    ) -> None:
        """``seconds`` of Dask's CPU (on the shared cores, else on the one scheduler), then event ``kind``
        ``delay`` seconds after it ends (after leaving on ``stream``, when given)."""
        if self._cores is not None:
            end = self._on_core(seconds)
        else:
            end = self._scheduler_free = max(self.now, self._scheduler_free) + seconds
        if stream is not None:
            self._at(end, SEND, stream, (delay, kind, a, b))
        else:
            self._at(end + delay, kind, a, b)

    def _send(self, stream: BatchedStream, delay: float, kind: int, a, b) -> None:
        """A message leaves on ``stream`` now (or with its next batch); event ``kind`` ``delay`` seconds
        after it leaves (WORK: Dask's CPU on it first, ``b`` being :meth:`_scheduler_work`'s arguments)."""
        departure = stream.departure(self.now)
        if kind != NOTHING:
            self._at(departure + delay, kind, a, b)

    def _switch(self, changes: dict) -> None:
        policy = changes.get("policy", self.core.policy)
        clear = policy == "exclusive" and not self.exclusive  # live, switching to exclusive empties the caches
        self.core.set_policy(policy, caches_cleared=clear)
        if clear:
            for worker in self.workers.values():
                for ref in worker.cache:
                    self._evicted(worker, ref)
                worker.cache.clear()
                worker.used = 0
        self.exclusive = policy == "exclusive"
        if "replication" in changes:
            self.core.replication = bool(changes["replication"])
        if "eviction" in changes:
            self.eviction = check_eviction(changes["eviction"])
        self.settings.setdefault("switches", []).append([self.now, dict(changes)])
        self._dispatch()

    def _on_core(self, seconds: float) -> float:
        """``seconds`` of work on the first shared core free: when it ends."""
        cores = cast(list, self._cores)  # only called with shared cores
        end = max(self.now, cores[0]) + seconds
        heapq.heapreplace(cores, end)
        return end

    def _arrive(self, i: int, address: str, hints: dict | None) -> None:
        worker = self.workers[address]
        worker.queue.append((i, hints))
        if not worker.busy:
            self._run_next(worker)

    def _run_next(self, worker: SimWorker) -> None:
        while worker.queue:
            i, hints = worker.queue.popleft()
            if i in self.core.tasks:
                break
        else:
            worker.busy = False
            return
        worker.busy = True
        if hints:  # live, a task without hints leaves the worker's last ones in place
            worker.wanted = hints
        fn = self._functions[self._calls[i]]
        loaded, count = self._use(worker, fn)
        if loaded is None:  # its consts cannot fit this device at all
            self._failed[i] = True
            self.core.finished(i, False)
            self._after(i)
            self._run_next(worker)
            return
        costs = self.costs
        load = costs.load_seconds(loaded, count) * (next(self._load_jitter) if loaded else 1.0)
        compute = load + fn.kernel_seconds  # what the task's own function takes, as Dask and the runtime time it
        seconds = (costs.worker_seconds + fn.out_bytes * costs.byte_seconds) * self._jitter_draw() + compute
        end = self._on_core(seconds) if self._cores is not None else self.now + seconds
        # waiting for a shared core stretches the whole request, its loads too, as the worker measures them
        stretch = (end - self.now) / seconds if seconds > 0 else 1.0
        worker.loaded += loaded
        worker.load_seconds += load * stretch
        worker.busy_seconds += seconds
        worker.requests += 1
        self._worker_of[i] = self._index[worker.address]
        self._at(end, DONE, i, (worker, compute * stretch, loaded))

    def _done(self, i: int, ran) -> None:
        """The worker is done with call ``i`` and takes its next; its ``task-finished`` leaves on its
        stream to the scheduler, which then spends its CPU on the completion."""
        worker = ran[0]
        self._run_next(worker)
        self._send(worker.outbox, 0.0, WORK, None, (self.costs.finish_seconds * self._jitter_draw(), FINISH, i, ran))

    def _finish(self, i: int, ran) -> None:
        """The scheduler has handled call ``i``'s completion: the core gets the worker's report and the
        free slot; the news leaves on the scheduler's stream to the client, which fetches the result."""
        worker, seconds, loaded = ran
        fn = self._functions[self._calls[i]]
        self.core.report(worker.address, self._report(worker, fn, seconds, loaded))
        self.core.finished(i, True, duration=seconds)
        self._dispatch()
        self._send(
            self._to_client,
            self.costs.return_seconds,
            WORK,
            None,
            (self.costs.receive_seconds * self._jitter_draw(), RESULT, i, worker),
        )

    def _result(self, i: int, worker: SimWorker) -> None:
        """The client has call ``i``'s result and releases it (its message on the client's stream, the
        scheduler's to the worker on that worker's stream)."""
        self._latency[i] = self.now - self._submitted[i]
        self._send(self._client_stream, 0.0, SEND, worker.inbox, (0.0, NOTHING, None, None))
        if self._loop_of[i] >= 0:  # its client sends its next call once it has this one's result
            self._submit_next(self._loop_of[i], self.now)

    def _after(self, i: int) -> None:
        if self._loop_of[i] >= 0:  # its client sends its next call once it has this one's result
            self._submit_next(self._loop_of[i], self.now + self.costs.return_seconds)

    # -- the device cache ------------------------------------------------------------------------
    def _use(self, worker: SimWorker, fn) -> tuple[int | None, int]:
        """Bring ``fn``'s consts onto ``worker`` (evicting as the cache would): (bytes loaded, consts
        loaded), or (None, 0) when they cannot fit at all."""
        if fn.const_bytes > worker.capacity:
            return None, 0
        cache = worker.cache
        if self.exclusive and worker.tenant != fn.tenant and cache:
            for ref in cache:
                self._evicted(worker, ref)
            cache.clear()
            worker.used = 0
        worker.tenant = fn.tenant
        loaded = count = 0
        mine = {ref for ref, _ in fn.consts}
        for ref, nbytes in fn.consts:
            if worker.accesses is not None:
                worker.accesses.append((ref, nbytes))
            entry = cache.get(ref)
            tick = next(self._tick)
            if entry is not None:
                entry.last_use = tick
                entry.uses += 1
                self.hits += 1
                continue
            self.misses += 1
            count += 1
            if worker.used + nbytes > worker.capacity:
                self._make_room(worker, nbytes, mine)
            cache[ref] = _Entry(ref, nbytes, tick)
            worker.added[ref] = nbytes
            worker.removed.discard(ref)
            worker.used += nbytes
            loaded += nbytes
        return loaded, count

    def _make_room(self, worker: SimWorker, nbytes: int, pinned: set) -> None:
        wanted = worker.wanted if self.eviction == "queue-aware" else None
        victims = eviction_order((e for ref, e in worker.cache.items() if ref not in pinned), self.eviction, wanted)
        for entry in victims:
            if worker.used + nbytes <= worker.capacity:
                break
            del worker.cache[entry.key]
            self._evicted(worker, entry.key)
            worker.used -= entry.nbytes

    @staticmethod
    def _evicted(worker: SimWorker, ref) -> None:
        if worker.added.pop(ref, None) is None:
            worker.removed.add(ref)

    def _report(self, worker: SimWorker, fn, seconds: float, loaded: int) -> Report:
        """The worker's report after a request, in the live reports' format (:mod:`dask_kaas.report`:
        the consts added and removed since the last one, counter increments). ``seconds``: the
        request's own time (loads and kernels, stretched by waits for a core), as the runtime
        reports it; Dask's handling of the task on the worker is not in it."""
        worker.seq += 1
        report: Report = {
            "ok": True,
            "tenant": fn.tenant,
            "shape": fn.shape_token,
            "seconds": seconds,
            "bytes_loaded": loaded,
            "capacity": worker.capacity,
            "used": worker.used,
            "pinned": 0,
            "seq": worker.seq,
            "added": [[ns, key, "v", 1, n] for (ns, key), n in worker.added.items()],
            "removed": [list(ref) for ref in worker.removed],
            "counters_delta": {"bytes_from_store": worker.loaded - worker.reported_loaded},
            "load_seconds_delta": worker.load_seconds - worker.reported_load_seconds,
        }
        worker.added, worker.removed = {}, set()
        worker.reported_loaded, worker.reported_load_seconds = worker.loaded, worker.load_seconds
        return report

    # -- jitter ------------------------------------------------------------------------------------
    def _jitter_draws(self, cv: float):
        if cv <= 0:
            while True:
                yield 1.0
        sigma = float(np.sqrt(np.log1p(cv * cv)))
        while True:
            yield from self._rng.lognormal(-sigma * sigma / 2, sigma, 4096).tolist()

    def _jitter_draw(self) -> float:
        return next(self._jitter)

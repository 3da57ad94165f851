"""The scheduling core: what the KaaS scheduler decides, as pure code driven by events.

Nothing here knows Dask. The scheduler plugin (``dask_kaas.plugins.scheduler``) turns Dask's hooks
into these events and carries out the decisions; tests and a simulator drive the same code with
their own clock. Events:

- ``submit(task)``: admission (a deadline the request cannot meet: rejected at once), then either
  a worker to run on now (nothing waits, a slot is free) or a place in its tenant's fair queue;
- ``set_ready(key)``: a task held for its dependencies may now be dispatched;
- ``dispatch()``: fill free slots from the fair queues, each task with the worker it goes to;
- ``placed(key, worker)`` / ``unplaced(key)``: where it really went, or that it could not go;
- ``finished(key, ok)`` / ``forget(key)``: it left its worker (a slot frees) or was withdrawn;
- ``report(worker, report)``: what a worker said after a request (its cache, the request's cost);
- ``add_worker`` / ``remove_worker`` / ``set_policy``.

Costs: per task O(log tenants + log workers + consts), never a scan of all workers or tenants
(the ``static``/``exclusive`` baselines look at the workers with requests queued for them).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict

import numpy as np

from ..report import ConstRef, Report
from .cluster import Cluster, Consts
from .fair import MIN_COST, FairQueue
from .model import RuntimeModel
from .placement import PINNED, POLICIES, StaticAssignment, choose_worker, placement_cost
from .tenants import TenantStats

RECENT_REQUESTS = 200
CANDIDATE_TENANTS = 8  # tenants within the slack that compete for a slot by locality (MQFQ-Sticky)
ARRIVAL_ALPHA = 0.05  # weight of the newest gap in a tenant's mean arrival interval (replication)


@dataclass
class Task:
    key: Hashable
    tenant: str
    shape: str
    consts: Consts = ()
    submitted: float = 0.0
    deadline: float | None = None
    ready: bool = True
    estimate: float = 0.0
    pinned: str | None = None
    state: str = "new"  # held | assigned
    worker: str | None = None
    assigned: float = 0.0
    predicted: float | None = None  # predicted latency of an admitted request with a deadline
    count: int = 1  # calls in the task (a batch: RequestBatch); fair share, admission and counts are per call


class Decision(NamedTuple):
    action: str  # "run" (on ``worker`` now), "hold" (in the fair queue) or "reject"
    worker: str | None = None
    message: str | None = None
    predicted: float | None = None
    admitted: int | None = None  # a batch admitted in part: its first calls this many; the rest rejected


class Rejection(TypedDict):
    """A request admission turned away (:attr:`SchedulingCore.rejections`)."""

    time: float
    tenant: str
    key: Hashable
    calls: int
    predicted: float | None  # seconds, calibrated
    deadline: float


class RecentRequest(TypedDict):
    """A finished request as its worker reported it (:attr:`SchedulingCore.recent`)."""

    time: float
    tenant: str
    kernels: list[str]
    key: Hashable | None
    waited: float | None  # seconds in the fair queue before its worker was chosen
    phases: dict[str, float]
    worker: str
    seconds: float
    hits: int
    misses: int
    bytes_loaded: int
    ok: bool
    calls: int
    failed: int


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


class SchedulingCore:
    """The KaaS scheduler's decisions for one cluster (see the module docstring for its events).

    Parameters
    ----------
    policy : {"affinity", "balance", "static", "exclusive", "locality"}
        Where a request goes: to the worker where it starts soonest counting const loads
        (``affinity``), the least loaded (``balance``), a fixed worker per tenant (``static``), a
        worker of its own per tenant (``exclusive``), or the least loaded worker holding its consts
        while one has a free slot (``locality``).
    depth : int
        KaaS tasks in flight per worker; the rest wait in the fair queue.
    weights : dict or None
        Fair-share weight per tenant (others weigh 1).
    margin : float
        Admit a request with a deadline only if its predicted latency is below this share of it.
    stickiness : float
        ``affinity``: a worker lacking a request's consts must be ahead by this many load times.
    load_bandwidth : float
        Store-to-device bytes per second assumed until measured.
    slack_tasks : float
        Requests' worth of queueing an admitted request may wait behind.
    replication : bool
        ``affinity``: a tenant whose arrival rate x seconds per (warm) request outgrows the workers
        holding its consts, all of them busy, gets one more replica on the least loaded worker, and
        its requests waiting in the fair queue count against its holders (see :mod:`.placement`).
    clock : callable
        Seconds now (``time.time``; a virtual clock in tests and the simulator).

    The plugin builds one from ``kaas.scheduler.*`` (:func:`dask_kaas.config.scheduler_settings`);
    the defaults live in ``kaas.yaml`` only.
    """

    def __init__(
        self,
        *,
        policy: str,
        depth: int,
        weights: dict[str, float] | None,
        margin: float,
        stickiness: float,
        load_bandwidth: float,
        slack_tasks: float = 1.0,
        replication: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.margin = margin
        self.stickiness = stickiness
        self.slack_tasks = slack_tasks
        self.replication = bool(replication)
        self.clock = clock
        self.cluster = Cluster(depth)
        self.queue = FairQueue(weights)
        self.model = RuntimeModel(load_bandwidth)
        self.static = StaticAssignment()
        self.tasks: dict[Hashable, Task] = {}
        self.tenants: dict[str, TenantStats] = {}
        # requests admission turned away: predicted vs deadline
        self.rejections: deque[Rejection] = deque(maxlen=RECENT_REQUESTS)
        self.recent: deque[RecentRequest] = deque(maxlen=RECENT_REQUESTS)
        self._admitted: dict[Hashable, Task] = {}
        self.pinned_backlog: dict[str, set[str]] = {}  # static/exclusive: worker -> tenants with requests queued for it
        self.wanted: Counter[ConstRef] = Counter()  # const -> held requests (not yet on a worker) that need it
        self.arrivals: dict[str, tuple[float, float]] = {}  # tenant -> (last arrival, mean interval), replication
        self.decisions = 0  # worker choices made, for the overhead benchmark
        self.held_calls: Counter[str] = Counter()  # tenant -> calls in its tasks waiting in the fair queue
        self.held_calls_total = 0

    # -- workers ----------------------------------------------------------------------------
    def add_worker(self, address: str) -> None:
        self.cluster.add(address)
        if self.policy in PINNED and self.tasks:
            self._repin_held(everyone=False)

    def remove_worker(self, address: str) -> list[Hashable]:
        """The worker is gone; returns the keys that were assigned to it (Dask reschedules them)."""
        lost = [t.key for t in self.tasks.values() if t.state == "assigned" and t.worker == address]
        for key in lost:
            task = self.tasks[key]
            task.state, task.worker = "new", None
        self.cluster.remove(address)
        return lost

    def set_running(self, address: str, running: bool) -> None:
        self.cluster.set_running(address, running)

    def set_policy(self, policy: str, *, caches_cleared: bool = False) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.static = StaticAssignment()
        if caches_cleared:
            self.cluster.forget_caches()
        self._repin_held(everyone=True)

    # -- tasks ------------------------------------------------------------------------------
    def submit(self, task: Task) -> Decision:
        """A new task (of ``task.count`` calls): rejected, run now on a worker, or held.

        A batch whose later calls would miss the deadline is admitted in part: the decision's
        ``admitted`` says how many of its first calls run (the rest count as rejected).
        """
        stats = self.tenants.setdefault(task.tenant, TenantStats())
        stats.submitted += task.count
        stats.tasks += 1
        if self.replication:
            self._arrived(task.tenant)
        self._price(task)
        if self.policy in PINNED and self.cluster.views:
            task.pinned = self.static.worker_for(task.tenant, self.cluster.views)
        part = Decision("hold")  # a batch admitted in part: how many calls, and why not the rest
        if task.deadline is not None:
            rejection = self._admit(task)
            if rejection is not None and rejection.action == "reject":
                stats.rejected += task.count
                self.rejections.append(
                    {
                        "time": self.clock(),
                        "tenant": task.tenant,
                        "key": task.key,
                        "calls": task.count,
                        "predicted": rejection.predicted,
                        "deadline": task.deadline,
                    }
                )
                return rejection
            if rejection is not None and rejection.admitted is not None:
                part = rejection
                stats.rejected += task.count - rejection.admitted
                task.count = rejection.admitted
                self._price(task)
        self.tasks[task.key] = task
        self._hold(task)
        if task.ready and not len(self.queue):  # nothing waits: no one to be fair to, so straight to a worker
            worker = self._choose(task)
            if worker is not None:
                self.queue.charge(task.tenant, task.estimate)
                self._assign(task, worker)
                return part._replace(action="run", worker=worker)
        if task.ready:
            self._enqueue(task)
        return part._replace(action="hold")

    def _price(self, task: Task) -> None:
        """The task's predicted seconds (all its calls): what fair share charges and workers queue."""
        task.estimate = self.model.estimate_or_mean(task.shape) * task.count

    def set_ready(self, key: Hashable) -> None:
        """A held task's dependencies are done."""
        task = self.tasks.get(key)
        if task is not None and task.state == "held" and not task.ready:
            task.ready = True
            self._enqueue(task)

    def dispatch(self) -> list[tuple[Hashable, str]]:
        """Tasks to start now, each with its worker: free slots filled from the fair queues."""
        out: list[tuple[Hashable, str]] = []
        while len(self.queue):
            picked = self._pick()
            if picked is None:
                break
            out.append(picked)
        return out

    def placed(self, key: Hashable, worker: str) -> None:
        """Dask runs the task on ``worker`` (normally the one chosen; stealing may move it)."""
        task = self.tasks.get(key)
        if task is None or task.worker == worker:
            return
        if task.state == "assigned" and task.worker is not None:
            self.cluster.release(task.worker, task.consts, task.estimate, task.count)
        if worker in self.cluster:
            self._assign(task, worker)

    def unplaced(self, key: Hashable, *, ready: bool = True) -> None:
        """A dispatched task could not go to its worker after all (or lost it): held again, at the
        head of its queue when ``ready``, else until :meth:`set_ready`."""
        task = self.tasks.get(key)
        if task is None or task.state != "assigned" or task.worker is None:
            return
        self.cluster.release(task.worker, task.consts, task.estimate, task.count)
        task.worker, task.ready = None, ready
        self._hold(task)
        if ready:
            self._enqueue(task, front=True)

    def finished(self, key: Hashable, ok: bool, *, duration: float | None = None, failed: int = 0) -> None:
        """The task left its worker: completed (``ok``) or failed. ``duration``: its compute seconds;
        ``failed``: of a completed batch, how many calls failed (each call counts for its tenant)."""
        task = self.tasks.pop(key, None)
        self._admitted.pop(key, None)
        if task is None:
            return
        if task.state == "held":
            self._unhold(task)
        now = self.clock()
        if task.state == "assigned" and task.worker is not None:
            if ok:
                self.cluster.completed(task.worker, task.assigned, now, task.count)
                view = self.cluster.views.get(task.worker)
                if view is not None:
                    view.used_now(task.consts, now)
            self.cluster.release(task.worker, task.consts, task.estimate, task.count)
        stats = self.tenants.setdefault(task.tenant, TenantStats())
        if not ok:
            stats.failed += task.count
            return
        failed = min(max(0, failed), task.count)
        stats.failed += failed
        stats.completed += task.count - failed
        stats.observe(now - task.submitted, task.count - failed)
        if task.predicted:
            self.model.observe_calibration((now - task.submitted) / task.predicted)
        if duration is not None:
            stats.gpu_seconds += duration
            runtime = self.model.runtime.get(task.shape)
            if runtime is not None and task.assigned:
                self.model.observe_overhead((duration - runtime * task.count) / task.count)

    def forget(self, key: Hashable) -> None:
        """The task went away before it finished (cancelled, released, lost)."""
        task = self.tasks.pop(key, None)
        self._admitted.pop(key, None)
        if task is None:
            return
        if task.state == "assigned" and task.worker is not None:
            self.cluster.release(task.worker, task.consts, task.estimate, task.count)
        elif task.state == "held":
            self._unhold(task)
            if task.ready:
                self.queue.withdraw(key)
                self._unqueued(task)

    def report(self, worker: str, report: Report, key: Hashable | None = None) -> None:
        """A worker's report of one request (``key``: its task, when known; its tenant is the task's)."""
        view = self.cluster.views.get(worker)
        loaded_before = view.counters.get("bytes_from_store", 0) if view else 0
        evicted_before = view.counters.get("evictions", 0) if view else 0
        load_before = view.picture.load_seconds if view else 0.0
        view = self.cluster.apply_report(worker, report)
        task = self.tasks.get(key) if key is not None else None
        tenant = task.tenant if task is not None else report.get("tenant") or "default"
        if "tenant" in report:  # the cache as this tenant's request met it
            stats = self.tenants.setdefault(tenant, TenantStats())
            stats.hits += report.get("hits", 0)
            stats.misses += report.get("misses", 0)
            stats.bytes_loaded += report.get("bytes_loaded", 0)
            stats.evictions_caused += max(0, view.counters.get("evictions", 0) - evicted_before)
        self.model.observe_load(
            view.counters.get("bytes_from_store", 0) - loaded_before, view.picture.load_seconds - load_before
        )
        count, failed = report.get("count", 1), report.get("failed", 0)
        if report.get("ok") and "shape" in report and failed < count:
            self.model.observe(report["shape"], report.get("seconds", 0.0))  # a batch: seconds per call
            if not report.get("bytes_loaded"):
                self.model.observe_warm(report["shape"], report.get("seconds", 0.0))
        self.recent.append(
            {
                "time": self.clock(),
                "tenant": tenant,
                "kernels": report.get("kernels", []),
                "key": key,
                # why it took what it took: waiting for a slot (fair share, full workers), then on the worker
                "waited": task.assigned - task.submitted if task is not None and task.assigned else None,
                "phases": dict(report.get("phases") or {}),
                "worker": worker,
                "seconds": report.get("seconds", 0.0),
                "hits": report.get("hits", 0),
                "misses": report.get("misses", 0),
                "bytes_loaded": report.get("bytes_loaded", 0),
                "ok": bool(report.get("ok")) and not failed,
                "calls": count,
                "failed": failed,
            }
        )

    def hints(self, worker: str) -> dict[ConstRef, int]:
        """For each const cached on ``worker``, how many requests want it (held in the fair queue, or
        assigned to this worker and not finished): what queue-aware eviction keeps longest."""
        view = self.cluster.views.get(worker)
        if view is None:
            return {}
        wanted, pending = self.wanted, view.pending
        out: dict[ConstRef, int] = {}
        for ref in view.resident:
            n = wanted.get(ref, 0) + pending.get(ref, 0)
            if n:
                out[ref] = n
        return out

    # -- placement as Dask asks for it ----------------------------------------------------------
    def comm_cost(self, key: Hashable, worker: str) -> float:
        """Seconds beyond Dask's own that placing ``key`` on ``worker`` costs (stealing asks too)."""
        task = self.tasks.get(key)
        if task is None or self.policy != "affinity":
            return 0.0
        return placement_cost(
            self.cluster, worker, task.consts, stickiness=self.stickiness, bandwidth=self.model.load_bandwidth()
        )

    # -- internals --------------------------------------------------------------------------
    def _choose(self, task: Task) -> str | None:
        self.decisions += 1
        backlog = demand = 0.0
        if self.replication:
            backlog = self.queue.held(task.tenant) * task.estimate
            demand = self.demand(task.tenant, self.model.warm_estimate(task.shape))
        return choose_worker(
            self.cluster,
            task.consts,
            self.policy,
            stickiness=self.stickiness,
            bandwidth=self.model.load_bandwidth(),
            pinned=task.pinned,
            replicate=self.replication,
            backlog=backlog,
            demand=demand,
        )

    def _arrived(self, tenant: str) -> None:
        now = self.clock()
        last = self.arrivals.get(tenant)
        if last is None:
            self.arrivals[tenant] = (now, float("inf"))
            return
        gap = now - last[0]
        self.arrivals[tenant] = (
            now,
            gap if last[1] == float("inf") else (1 - ARRIVAL_ALPHA) * last[1] + ARRIVAL_ALPHA * gap,
        )

    def demand(self, tenant: str, seconds: float) -> float:
        """Workers' worth of work ``tenant`` brings: its arrival rate (a moving average of the gaps
        between its requests, the time since the last counted too) x ``seconds`` per request."""
        last = self.arrivals.get(tenant)
        if last is None or last[1] == float("inf"):
            return 0.0
        interval = max(last[1], (self.clock() - last[0]) * ARRIVAL_ALPHA + (1 - ARRIVAL_ALPHA) * last[1], 1e-9)
        return seconds / interval

    def _hold(self, task: Task) -> None:
        if task.state != "held":
            task.state = "held"
            for ref, _ in task.consts:
                self.wanted[ref] += 1

    def _unhold(self, task: Task) -> None:
        if task.state == "held":
            task.state = "new"
            wanted = self.wanted
            for ref, _ in task.consts:
                if wanted[ref] <= 1:
                    del wanted[ref]
                else:
                    wanted[ref] -= 1

    def _assign(self, task: Task, worker: str) -> None:
        self._unhold(task)
        task.state, task.worker, task.assigned = "assigned", worker, self.clock()
        self.cluster.assign(worker, task.consts, task.estimate, task.count)

    def _enqueue(self, task: Task, front: bool = False) -> None:
        (self.queue.push_front if front else self.queue.push)(task.tenant, task.key)
        self.held_calls[task.tenant] += task.count
        self.held_calls_total += task.count
        if task.pinned is not None:
            self.pinned_backlog.setdefault(task.pinned, set()).add(task.tenant)

    def _pop(self, tenant: str) -> Task:
        """The head of ``tenant``'s fair queue, taken out and priced now (same shape, same charge)."""
        task = self.tasks[self.queue.pop(tenant)]
        self._unqueued(task)
        self._price(task)
        return task

    def _unqueued(self, task: Task) -> None:
        self.held_calls_total -= task.count
        held = self.held_calls[task.tenant] - task.count
        if held > 0:
            self.held_calls[task.tenant] = held
        else:
            del self.held_calls[task.tenant]

    def _pick_pinned(self) -> tuple[Hashable, str] | None:
        """``static``/``exclusive``: the least-served tenant queued for a worker with a free slot (only
        the workers with a backlog are looked at, never every tenant)."""
        queue, cluster = self.queue, self.cluster
        for worker in list(self.pinned_backlog):
            tenants = self.pinned_backlog[worker]
            if not cluster.is_open(worker):
                if worker not in cluster:  # gone: its tenants' requests go to their next worker
                    del self.pinned_backlog[worker]
                    self._repin_held(everyone=False)
                continue
            for tenant in [t for t in tenants if queue.head(t) is None]:
                tenants.discard(tenant)
            if not tenants:
                del self.pinned_backlog[worker]
                continue
            tenant = min(tenants, key=lambda t: (queue.service[t], t))
            task = self._pop(tenant)
            queue.charge(tenant, task.estimate)
            self.decisions += 1
            self._assign(task, worker)
            return task.key, worker
        return None

    def _repin_held(self, everyone: bool) -> None:
        """Held tasks pinned (or not) as the policy says: all of them after a policy switch, else those
        pinned to no current worker (they arrived before any worker, or theirs is gone)."""
        pinned = self.policy in PINNED and self.cluster.views
        if everyone:
            self.pinned_backlog = {}
        for task in self.tasks.values():
            if task.state != "held" or (not everyone and task.pinned in self.cluster):
                continue
            task.pinned = self.static.worker_for(task.tenant, self.cluster.views) if pinned else None
            if task.pinned is not None and task.ready:
                self.pinned_backlog.setdefault(task.pinned, set()).add(task.tenant)

    def _pick(self) -> tuple[Hashable, str] | None:
        """The next (task, worker): among the least-served tenants within one task of slack, the one
        whose next task suits a free worker best (fewest bytes to load there)."""
        if self.policy in PINNED:
            return self._pick_pinned()
        if self.cluster.least_loaded() is None:  # every slot taken: no candidate could get a worker
            return None
        queue = self.queue
        limit = CANDIDATE_TENANTS
        while True:
            tenants = queue.least_served(limit)
            if not tenants:
                return None
            least = tenants[0]
            head = self.tasks[queue.head(least)]
            self._price(head)  # priced now: same shape, same charge
            slack = self.slack_tasks * max(head.estimate, MIN_COST) / queue.weight(least)
            floor = queue.service[least]
            best, best_rank = None, None
            for tenant in tenants:
                if queue.service[tenant] > floor + slack and best is not None:
                    break
                task = self.tasks[queue.head(tenant)]
                worker = self._choose(task)
                if worker is None:
                    continue
                view = self.cluster.views[worker]
                rank = (view.missing_bytes(task.consts) if self.policy == "affinity" else 0, queue.service[tenant])
                if best_rank is None or rank < best_rank:
                    best, best_rank = (task, worker), rank
                if rank[0] == 0:  # nothing to load, and no tenant after it is less served: none can beat it
                    break
            if best is not None:
                task, worker = best
                self._pop(task.tenant)
                queue.charge(task.tenant, task.estimate)
                self._assign(task, worker)
                return task.key, worker
            return None  # every slot taken

    def _admit(self, task: Task) -> Decision | None:
        """None to admit; else the rejection (its predicted latency is too close to the deadline). A
        batch's calls run one after another, so its ``i``-th call finishes ``i`` runtimes after the
        first: those that would miss the deadline are rejected (``Decision("partial", admitted=n)``
        when its first ``n`` calls make it)."""
        runtime = self.model.estimate(task.shape)
        if runtime is None or task.deadline is None:
            return None  # nothing known about this shape yet (or no deadline): admit, and learn from it
        wait, interval = self._predicted_wait(task)
        first = wait + max(runtime, interval)
        calibration = max(self.model.calibration, self._running_late())
        budget = task.deadline * self.margin / calibration
        admitted = (
            task.count
            if first + (task.count - 1) * runtime <= budget
            else (0 if first > budget else min(task.count, 1 + int((budget - first) / max(runtime, 1e-12))))
        )
        if admitted:
            task.predicted = first + (admitted - 1) * runtime
            self._admitted[task.key] = task
            if admitted == task.count:
                return None
        raw = first + admitted * runtime
        predicted = raw * calibration
        call = f"call {admitted + 1} of {task.count} of its batch " if task.count > 1 else ""
        message = (
            f"{call}would finish in {_ms(predicted)} (queue {_ms(wait)} + run {_ms(raw - wait)}"
            f"{f' x {calibration:.2f} calibration' if calibration != 1 else ''}), too close to its "
            f"deadline of {_ms(task.deadline)} (admission keeps a {1 - self.margin:.0%} margin for "
            "dispatch and result transfer)"
        )
        return Decision(
            "partial" if admitted else "reject", message=message, predicted=predicted, admitted=admitted or None
        )

    def _predicted_wait(self, task: Task) -> tuple[float, float]:
        """Seconds until the task would start (the work ahead of it in its queue and on the workers,
        served at the observed rate, plus its const loads), and the shortest observed service interval."""
        cluster = self.cluster
        if not cluster.views:
            return 0.0, 0.0
        fallback = self.model.estimate_or_mean(task.shape)  # seconds per call; rates and queues count calls
        if task.pinned is not None and task.pinned in cluster.views:
            views = [cluster.views[task.pinned]]
            rate, queued = views[0].rate(fallback), views[0].queued_calls
        else:
            near = cluster.holding(task.consts)
            least = cluster.least_loaded()
            views = [cluster.views[a] for a in (near | {least} if least else near) if a in cluster.views]
            rate, queued = cluster.total_rate(fallback), cluster.queued_calls
        queue = self.queue
        share = queue.weight(task.tenant) / max(queue.backlogged_weight(), queue.weight(task.tenant))
        ahead = min(self.held_calls.get(task.tenant, 0) / share, self.held_calls_total) + queued
        bandwidth = self.model.load_bandwidth()
        total = sum(nbytes for _, nbytes in task.consts)
        load = min((v.missing_bytes(task.consts) for v in views), default=total) / bandwidth
        intervals = [v.service_interval for v in views if v.service_interval]
        return ahead / max(rate, 1e-9) + load, min(intervals) if intervals else 0.0

    def _running_late(self) -> float:
        """How far behind their predictions the admitted, unfinished requests already are: the 90th
        percentile of elapsed / predicted (0 with fewer than a handful in flight). Completed requests
        calibrate predictions only once they finish; when the workers slow down, the requests still in
        flight show it first, so admission reacts before deadlines are missed."""
        now = self.clock()
        ratios = [(now - t.submitted) / t.predicted for t in self._admitted.values() if t.predicted]
        if len(ratios) < 5:
            return 0.0
        return float(np.quantile(ratios, 0.9))

    # -- state ------------------------------------------------------------------------------
    def counters(self) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]]]:
        """The cumulative counters :class:`~dask_kaas.scheduling.history.History` samples:
        ``({worker: {hits, misses, evictions, bytes_loaded}}, {tenant: {completed, rejected, hits, ...}})``."""
        workers: dict[str, dict[str, int]] = {}
        for address, view in self.cluster.views.items():
            c = view.counters
            workers[address] = {
                "hits": c.get("hits", 0),
                "evictions": c.get("evictions", 0),
                "misses": c.get("compulsory_misses", 0) + c.get("capacity_misses", 0),
                "bytes_loaded": c.get("bytes_from_store", 0),
            }
        tenants = {
            t: {
                "completed": s.completed,
                "rejected": s.rejected,
                "hits": s.hits,
                "misses": s.misses,
                "bytes_loaded": s.bytes_loaded,
                "evictions_caused": s.evictions_caused,
            }
            for t, s in self.tenants.items()
        }
        return workers, tenants

    def snapshot(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "replication": self.replication,
            "workers": {addr: view.snapshot() for addr, view in sorted(self.cluster.views.items())},
            "tenants": {
                tenant: {**stats.snapshot(), "held": self.queue.held(tenant)}
                for tenant, stats in sorted(self.tenants.items())
            },
            "model": {
                "shapes": len(self.model.runtime),
                "overhead": self.model.overhead,
                "load_bandwidth": self.model.load_bandwidth(),
            },
            "held": len(self.queue),
            "decisions": self.decisions,
            "recent": list(self.recent),
            "rejections": list(self.rejections),
        }

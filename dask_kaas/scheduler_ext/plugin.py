"""The Dask SchedulerPlugin: KaaS tasks get the GPU restriction, cache-aware placement, fair share and admission.

A task is a KaaS task when its function is a :class:`~dask_kaas.Request`, as
with ``client.submit(request, x=x)`` or ``dask.delayed(request)(x=x)``.

- **Placement** happens inside Dask's own decision: the scheduler's
  ``get_comm_cost(ts, ws)`` (which its ``worker_objective`` and work stealing
  both use) is extended, for KaaS tasks under the ``affinity`` policy, by the
  time to load the request's const bytes that the worker neither holds nor is
  about to load. The objective becomes queued work + missing bytes / bandwidth,
  and stealing moves a KaaS task only when the thief's backlog plus that load
  still beats the victim's backlog.
- **Policies** (``kaas.scheduler.policy``): ``affinity``, ``balance`` (Dask's
  least-loaded), ``static`` and ``exclusive`` (tenants pinned to workers; with
  ``exclusive`` a worker also empties its cache when the tenant changes).
- **Fair share**: the start tag of a start-time fair queue leads each KaaS
  task's priority (see ``fairness.py``).
- **Admission**: a request with a ``deadline`` whose predicted completion is
  later is failed at once with :class:`~dask_kaas.AdmissionRejected`.
- **State**: workers report their cache after every request (stream op
  ``kaas-report``); :func:`dask_kaas.cluster_state` reads :meth:`snapshot`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from distributed import SchedulerPlugin
from distributed.core import error_message

from .. import config
from ..errors import AdmissionRejected
from ..request import Request
from ..store import split_key
from .fairness import FairQueue
from .model import RuntimeModel
from .placement import StaticAssignment, WorkerView
from .tenants import TenantStats

logger = logging.getLogger(__name__)

RESOURCE = "GPU"
POLICIES = ("affinity", "balance", "static", "exclusive")
REJECTED = "kaas://admission-rejected"  # a worker that never exists: rejected tasks wait in no-worker


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def request_of(run_spec: Any) -> Request | None:
    """The Request a task runs, if it runs one."""
    func = getattr(run_spec, "func", None)
    return func if isinstance(func, Request) else None


@dataclass
class KaasTask:
    tenant: str
    shape: str
    consts: tuple  # ((namespace, key), nbytes) per const buffer
    estimate: float
    start_tag: float
    submitted: float
    worker: str | None = None
    assigned: float = 0.0


class KaasSchedulerPlugin(SchedulerPlugin):
    name = "kaas"

    def __init__(self, policy: str | None = None, weights: dict[str, float] | None = None):
        policy = policy or config.get("scheduler.policy") or "affinity"
        if policy not in POLICIES:
            raise ValueError(f"kaas.scheduler.policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.scheduler = None
        self.tasks: dict = {}
        self.workers: dict[str, WorkerView] = {}
        self.tenants: dict[str, TenantStats] = {}
        self.model = RuntimeModel()
        self.fair = FairQueue(weights if weights is not None else (config.get("scheduler.weights") or {}))
        self.static = StaticAssignment()
        self._base_comm_cost = None
        self.decisions = 0  # placement objective evaluations, for the overhead benchmark

    # ------------------------------------------------------------- lifecycle
    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        scheduler.extensions["kaas"] = self
        scheduler.stream_handlers["kaas-report"] = self.handle_report
        scheduler.handlers["kaas_set_policy"] = self._handle_set_policy
        self._base_comm_cost = scheduler.get_comm_cost
        scheduler.get_comm_cost = self.get_comm_cost
        for ws in scheduler.workers.values():
            self.add_worker(scheduler, ws.address)

    async def close(self) -> None:
        if self.scheduler is not None and self._base_comm_cost is not None:
            self.scheduler.get_comm_cost = self._base_comm_cost

    def add_worker(self, scheduler, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        if ws is not None and ws.resources.get(RESOURCE):
            self.workers.setdefault(worker, WorkerView(worker))

    def remove_worker(self, scheduler, worker: str, **kwargs) -> None:
        self.workers.pop(worker, None)

    def set_policy(self, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.static = StaticAssignment()

    def _handle_set_policy(self, policy: str) -> str:
        self.set_policy(policy)
        return policy

    # ------------------------------------------------------------- placement
    def get_comm_cost(self, ts, ws) -> float:
        cost = self._base_comm_cost(ts, ws)
        if self.policy != "affinity":
            return cost
        task = self.tasks.get(ts.key)
        view = self.workers.get(ws.address)
        if task is None or view is None or not task.consts:
            return cost
        self.decisions += 1
        return cost + view.missing_bytes(task.consts) / self.model.load_bandwidth()

    def _best_start(self, task: KaasTask) -> tuple[float, str | None]:
        """Predicted queue wait + load time on the worker where the task would start soonest."""
        best, where = None, None
        for addr in self._candidates(task):
            view = self.workers[addr]
            wait = view.queued_seconds + view.missing_bytes(task.consts) / self.model.load_bandwidth()
            if best is None or wait < best:
                best, where = wait, addr
        return (best if best is not None else 0.0), where

    def _candidates(self, task: KaasTask) -> list[str]:
        if self.policy in ("static", "exclusive") and self.workers:
            return [self.static.worker_for(task.tenant, list(self.workers))]
        return list(self.workers)

    # ------------------------------------------------------------- new tasks
    def update_graph(self, scheduler, *, client: str, tasks: list, **kwargs) -> None:
        now = time.time()
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is None or key in self.tasks:
                continue
            request = request_of(ts.run_spec)
            if request is None:
                continue
            if not ts.resource_restrictions or RESOURCE not in ts.resource_restrictions:
                ts.resource_restrictions = {**(ts.resource_restrictions or {}), RESOURCE: 1}
            tenant = request.tenant or client
            consts = tuple((split_key(spec.store_key, request.tenant), spec.size) for spec in request.consts)
            estimate = self.model.estimate_or_mean(request.shape_token)
            start_tag = self.fair.start_tag(tenant, estimate)
            task = KaasTask(tenant, request.shape_token, consts, estimate, start_tag, now)
            self.tasks[key] = task
            stats = self.tenants.setdefault(tenant, TenantStats())
            stats.submitted += 1
            if ts.priority:
                ts.priority = (ts.priority[0], start_tag, *ts.priority[1:])
            if self.policy in ("static", "exclusive") and self.workers:
                ts.worker_restrictions = {self.static.worker_for(tenant, list(self.workers))}
                ts.loose_restrictions = False
            if request.deadline is not None:
                self._admit(scheduler, ts, task, request)

    def _admit(self, scheduler, ts, task: KaasTask, request: Request) -> None:
        runtime = self.model.estimate(task.shape)
        if runtime is None:
            return  # nothing known about this shape yet: admit, and learn from it
        wait, _ = self._best_start(task)
        predicted = wait + runtime
        if predicted <= request.deadline:
            return
        self.tenants[task.tenant].rejected += 1
        error = AdmissionRejected(
            f"{request!r} would finish in {_ms(predicted)} (queue {_ms(wait)} + run {_ms(runtime)}), "
            f"after its deadline of {_ms(request.deadline)}",
            predicted, request.deadline,
        )
        # Never dispatched: restricted to a worker that does not exist, it waits in no-worker
        # until the callback below fails it, right after this graph update.
        ts.worker_restrictions = {REJECTED}
        ts.loose_restrictions = False
        scheduler.loop.add_callback(self._fail, ts.key, error)

    def _fail(self, key, error: AdmissionRejected) -> None:
        scheduler = self.scheduler
        ts = scheduler.tasks.get(key)
        if ts is None or ts.state != "no-worker":
            return
        msg = error_message(error)
        stimulus_id = f"kaas-admission-rejected-{time.time()}"
        recs, client_msgs, worker_msgs = scheduler._transition(
            key, "erred", stimulus_id, cause=key, exception=msg["exception"], traceback=msg["traceback"],
            exception_text=msg["exception_text"], traceback_text=msg["traceback_text"],
        )
        scheduler._transitions(recs, client_msgs, worker_msgs, stimulus_id)
        scheduler.send_all(client_msgs, worker_msgs)

    # ------------------------------------------------------------ transitions
    def transition(self, key, start, finish, *args, **kwargs) -> None:
        task = self.tasks.get(key)
        if task is None:
            return
        if finish == "processing":
            ts = self.scheduler.tasks[key]
            view = self.workers.get(ts.processing_on.address) if ts.processing_on else None
            if view is not None:
                task.worker, task.assigned = view.address, time.time()
                view.queued += 1
                view.queued_seconds += task.estimate
                view.pending.update(ref for ref, _ in task.consts)
        elif start == "processing":
            self._leave_worker(task)
            if finish == "memory":
                self._completed(task, kwargs.get("startstops") or ())
            elif finish == "erred":
                self.tenants[task.tenant].failed += 1
        if finish in ("memory", "erred", "forgotten"):
            self.tasks.pop(key, None)

    def _leave_worker(self, task: KaasTask) -> None:
        view = self.workers.get(task.worker) if task.worker else None
        if view is not None:
            view.queued = max(0, view.queued - 1)
            view.queued_seconds = max(0.0, view.queued_seconds - task.estimate)
            view.pending.subtract(ref for ref, _ in task.consts)
            view.pending += type(view.pending)()  # drop the zero counts
        task.worker = None

    def _completed(self, task: KaasTask, startstops) -> None:
        now = time.time()
        stats = self.tenants[task.tenant]
        stats.completed += 1
        stats.latencies.append(now - task.submitted)
        self.fair.completed(task.start_tag)
        compute = [s for s in startstops if s.get("action") == "compute"]
        if compute:
            duration = compute[-1]["stop"] - compute[-1]["start"]
            stats.gpu_seconds += duration
            runtime = self.model.runtime.get(task.shape)
            if runtime is not None and task.assigned:
                self.model.observe_overhead(duration - runtime)

    # ---------------------------------------------------------------- reports
    def handle_report(self, worker: str, **report) -> None:
        view = self.workers.get(worker)
        if view is None:
            view = self.workers[worker] = WorkerView(worker)
        loaded_before = view.counters.get("bytes_from_store", 0)
        load_before = view.counters.get("_load_seconds", 0.0)
        view.update(report)
        view.counters["_load_seconds"] = report.get("load_seconds", 0.0)
        self.model.observe_load(view.counters.get("bytes_from_store", 0) - loaded_before,
                                report.get("load_seconds", 0.0) - load_before)
        if report.get("ok"):
            self.model.observe(report["shape"], report["seconds"])

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict:
        return {
            "policy": self.policy,
            "workers": {addr: view.snapshot() for addr, view in sorted(self.workers.items())},
            "tenants": {tenant: stats.snapshot() for tenant, stats in sorted(self.tenants.items())},
            "model": {"shapes": len(self.model.runtime), "overhead": self.model.overhead,
                      "load_bandwidth": self.model.load_bandwidth()},
            "decisions": self.decisions,
        }

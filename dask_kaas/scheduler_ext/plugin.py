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
- **Fair share**: every KaaS task waits on the scheduler in its tenant's queue
  until the workers have room; the least-served tenant (by predicted GPU
  seconds / weight) goes next (``dispatch.py``), and Dask's worker objective
  then places the task.
- **Admission**: a request with a ``deadline`` whose predicted completion is
  later is failed at once with :class:`~dask_kaas.AdmissionRejected`.
- **State**: workers report their cache after every request (stream op
  ``kaas-report``); :func:`dask_kaas.cluster_state` reads :meth:`snapshot`.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed import SchedulerPlugin

from .. import compat, config
from ..errors import AdmissionRejected, ConfigError, RequestError, TenantError
from ..request import Request
from ..names import namespace_problem, split_key
from .dispatch import HELD, FairDispatcher
from .model import RuntimeModel
from .placement import StaticAssignment, WorkerView
from .tenants import TenantStats

logger = logging.getLogger(__name__)

RESOURCE = "GPU"
RECENT_REQUESTS = 200
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
    submitted: float
    worker: str | None = None
    assigned: float = 0.0
    predicted: float | None = None  # predicted latency, for requests with a deadline
    pinned: str | None = None  # the worker of its tenant under the static and exclusive policies


class KaasSchedulerPlugin(SchedulerPlugin):
    name = "kaas"

    def __init__(self, policy: str | None = None, weights: dict[str, float] | None = None):
        policy = policy or config.get("scheduler.policy") or "affinity"
        if policy not in POLICIES:
            raise ConfigError(f"kaas.scheduler.policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.identity = config.get("scheduler.tenant-identity")
        if self.identity not in (None, "tls"):
            raise ConfigError(f"kaas.scheduler.tenant-identity must be null or 'tls', got {self.identity!r}")
        self.tenant_map = dict(config.get("scheduler.tenant-map") or {})
        self.scheduler = None
        self.tasks: dict = {}
        self.workers: dict[str, WorkerView] = {}
        self.tenants: dict[str, TenantStats] = {}
        self.model = RuntimeModel()
        self.static = StaticAssignment()
        self.margin = float(config.get("scheduler.admission-margin") or 0.85)
        # Moving a tenant also spreads its consts over more caches; make a move pay for that.
        self.stickiness = float(config.get("scheduler.stickiness") or 1.0)
        self.dispatcher = FairDispatcher(int(config.get("scheduler.queue-depth") or 2),
                                         weights if weights is not None else (config.get("scheduler.weights") or {}))
        self._dispatch_pending = False
        self._base_comm_cost = None
        self.decisions = 0  # placement objective evaluations, for the overhead benchmark
        self.recent: deque = deque(maxlen=RECENT_REQUESTS)  # the latest requests as workers reported them
        self._admitted: dict = {}  # key -> KaasTask: admitted against a deadline and not finished yet
        try:  # before the scheduler (and its dashboard) exists, where this plugin is created first
            from ..dashboard import register_dashboard_page

            register_dashboard_page()
        except ImportError:  # no bokeh: no dashboard page, everything else works
            logger.debug("dask-kaas dashboard page not registered", exc_info=True)

    # ------------------------------------------------------------- lifecycle
    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        scheduler.extensions["kaas"] = self
        scheduler.stream_handlers["kaas-report"] = self.handle_report
        self._base_comm_cost = compat.replace_comm_cost(scheduler, self.get_comm_cost)
        for ws in scheduler.workers.values():
            self.add_worker(scheduler, ws.address)
        try:  # dask_kaas_* on the scheduler's /metrics (distributed serves it when prometheus_client is installed)
            from ..dashboard.metrics import register as register_metrics

            register_metrics(self)
        except ImportError:
            logger.debug("dask-kaas Prometheus metrics not registered", exc_info=True)

    async def close(self) -> None:
        if self.scheduler is not None and self._base_comm_cost is not None:
            compat.restore_comm_cost(self.scheduler, self._base_comm_cost)

    def add_worker(self, scheduler, worker: str) -> None:
        ws = scheduler.workers.get(worker)
        if ws is not None and ws.resources.get(RESOURCE):
            self.workers.setdefault(worker, WorkerView(worker))
            self._schedule_dispatch()

    def remove_worker(self, scheduler, worker: str, **kwargs) -> None:
        self.workers.pop(worker, None)

    def set_policy(self, policy: str, *, caches_cleared: bool = False) -> None:
        """Switch policy; ``caches_cleared`` says the workers just emptied their caches."""
        if policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.static = StaticAssignment()
        if caches_cleared:
            for view in self.workers.values():
                view.resident.clear()

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
        return cost + self.stickiness * view.placement_bytes(task.consts) / self.model.load_bandwidth()

    def _load_seconds(self, task: KaasTask) -> float:
        """Load time on the worker that holds most of the task's consts (the one placement will prefer)."""
        views = [self.workers[a] for a in self._candidates(task)]
        if not views:
            return 0.0
        return min(v.missing_bytes(task.consts) for v in views) / self.model.load_bandwidth()

    def _predicted_wait(self, task: KaasTask) -> float:
        """Seconds until the task would start: the work ahead of it in the fair queue and on the workers,
        served at the rate the workers have been observed to complete tasks, plus its const loads."""
        views = [self.workers[a] for a in self._candidates(task)]
        if not views:
            return 0.0
        fallback = task.estimate or self.model.estimate_or_mean(task.shape)
        rate = sum(1.0 / max(v.service_interval + v.service_deviation, 1e-6) if v.service_interval else
                   1.0 / max(fallback, 1e-6) for v in views)
        # under fair share the tenant's own backlog is served at its weight's share of the cluster
        own = self.dispatcher.held(task.tenant)
        share = self.dispatcher.weight(task.tenant) / max(self.dispatcher.backlogged_weight(),
                                                          self.dispatcher.weight(task.tenant))
        ahead = min(own / share, len(self.dispatcher)) + sum(v.queued for v in views)
        return ahead / rate + self._load_seconds(task)

    def _candidates(self, task: KaasTask) -> list[str]:
        if task.pinned is not None:
            return [task.pinned] if task.pinned in self.workers else []
        return list(self.workers)

    # ------------------------------------------------------------- new tasks
    def update_graph(self, scheduler, *, client: str, tasks: list, **kwargs) -> None:
        now = time.time()
        free: dict[str, int] = {}  # free slots per worker, read once the first task needs them
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is None or key in self.tasks:
                continue
            request = request_of(ts.run_spec)
            if request is None:
                continue
            problem = None if request.tenant is None else namespace_problem(request.tenant, "tenant")
            if problem:  # only a request built around its own validation gets here; it goes no further
                self._reject(scheduler, ts, RequestError(f"{request!r}: {problem}"))
                continue
            if self.identity == "tls":
                bound = self._tls_tenant(scheduler, client)
                if bound is None or request.tenant != bound:
                    self._reject(scheduler, ts, TenantError(
                        f"{request!r}: this scheduler binds tenants to TLS client certificates, and "
                        + (f"this client's certificate is tenant {bound!r}, not {request.tenant!r}" if bound
                           else "this client presented no certificate with a common name")))
                    continue
            if not ts.resource_restrictions or RESOURCE not in ts.resource_restrictions:
                ts.resource_restrictions = {**(ts.resource_restrictions or {}), RESOURCE: 1}
            tenant = request.tenant or client
            consts = tuple((split_key(spec.store_key, request.tenant), spec.size) for spec in request.consts)
            estimate = self.model.estimate_or_mean(request.shape_token)
            task = KaasTask(tenant, request.shape_token, consts, estimate, now)
            self.tasks[key] = task
            stats = self.tenants.setdefault(tenant, TenantStats())
            stats.submitted += 1
            if self.policy in ("static", "exclusive") and self.workers:
                task.pinned = self.static.worker_for(tenant, list(self.workers))
            if request.deadline is not None and not self._admit(scheduler, ts, task, request):
                continue
            if self._dispatch_now(ts, task, free):
                continue
            ts.worker_restrictions = {HELD}  # parked in no-worker until _dispatch releases it
            ts.loose_restrictions = False
            self.dispatcher.hold(tenant, key)
        self._schedule_dispatch()

    def _tls_tenant(self, scheduler, client: str) -> str | None:
        """The tenant of a client's TLS certificate: its common name, through ``kaas.scheduler.tenant-map``."""
        cert = compat.client_certificate(scheduler, client)
        names = [value for rdn in (cert or {}).get("subject", ()) for key, value in rdn if key == "commonName"]
        return self.tenant_map.get(names[0], names[0]) if names else None

    def _dispatch_now(self, ts, task: KaasTask, free: dict) -> bool:
        """With nothing held and a slot free, a task goes straight to Dask's own scheduling: holding it
        would only add a round through the event loop, and with no backlog there is nothing to be fair about."""
        if len(self.dispatcher) or ts.dependencies:
            return False
        if not free:
            free.update(self._free_slots() or {"": 0})
        targets = [task.pinned] if task.pinned else [a for a, n in free.items() if a and n > 0]
        target = next((a for a in targets if free.get(a, 0) > 0), None)
        if target is None:
            return False
        free[target] -= 1
        self.dispatcher.charge(task.tenant, task.estimate)
        if task.pinned:
            ts.worker_restrictions = {task.pinned}
            ts.loose_restrictions = False
        return True

    # --------------------------------------------------------------- dispatch
    def _schedule_dispatch(self) -> None:
        if self.scheduler is not None and not self._dispatch_pending:
            self._dispatch_pending = True
            self.scheduler.loop.add_callback(self._dispatch)

    def _dispatch(self) -> None:
        """Fill free worker slots from the tenants' queues (see ``dispatch.py``)."""
        self._dispatch_pending = False
        scheduler = self.scheduler
        stimulus_id = f"kaas-dispatch-{time.time()}"

        def ready(key):
            ts = scheduler.tasks.get(key)
            if ts is None or key not in self.tasks or ts.state in ("memory", "erred", "forgotten", "released"):
                return None
            return ts.state == "no-worker"  # False: still waiting for its dependencies

        def cost(key):
            # priced now, not at submission: same shape, same charge, whoever submitted first
            task = self.tasks[key]
            task.estimate = self.model.estimate_or_mean(task.shape)
            return task.estimate

        while len(self.dispatcher):
            for worker in sorted((free := self._free_slots()), key=free.get, reverse=True):
                key = self.dispatcher.pick(ready, cost, self._fit_for(worker))
                if key is not None:
                    break
            else:
                return  # no free slot, or nothing that can use one
            task = self.tasks[key]
            ts = scheduler.tasks[key]
            # Dask's worker objective chooses among all workers; the free one wins unless another
            # holds the task's consts and starts it sooner.
            ts.worker_restrictions = {task.pinned} if task.pinned else None
            scheduler.transitions({key: "processing"}, stimulus_id)
            if ts.state == "no-worker":  # nowhere to run it now: back to the head of its queue
                ts.worker_restrictions = {HELD}
                self.dispatcher.requeue(task.tenant, key)
                return

    def _fit_for(self, worker: str):
        """How badly a held task suits a free slot on ``worker`` (None: it may not go there)."""
        view = self.workers[worker]

        def fit(key):
            task = self.tasks[key]
            if task.pinned is not None and task.pinned != worker:
                return None
            return view.missing_bytes(task.consts) if self.policy == "affinity" else 0.0

        return fit

    def _free_slots(self) -> dict[str, int]:
        """Free KaaS slots per running GPU worker."""
        depth = self.dispatcher.depth
        free = {}
        for ws in self.scheduler.workers.values():
            if ws.resources.get(RESOURCE) and ws.status.name == "running":
                self.workers.setdefault(ws.address, WorkerView(ws.address))  # e.g. GPU resource added late
                room = depth - sum(1 for pts in ws.processing if pts.key in self.tasks)
                if room > 0:
                    free[ws.address] = room
        return free

    def _admit(self, scheduler, ts, task: KaasTask, request: Request) -> bool:
        """Admit the request, or fail it at once when it cannot finish before its deadline."""
        runtime = self.model.estimate(task.shape)
        if runtime is None:
            return True  # nothing known about this shape yet: admit, and learn from it
        wait = self._predicted_wait(task)
        intervals = [self.workers[a].service_interval for a in self._candidates(task)
                     if self.workers[a].service_interval]
        interval = min(intervals) if intervals else 0.0
        raw = wait + max(runtime, interval)
        calibration = max(self.model.calibration, self._running_late())
        predicted = raw * calibration
        if predicted <= request.deadline * self.margin:
            task.predicted = raw
            self._admitted[ts.key] = task
            return True
        self.tenants[task.tenant].rejected += 1
        error = AdmissionRejected(
            f"{request!r} would finish in {_ms(predicted)} (queue {_ms(wait)} + run {_ms(max(runtime, interval))}"
            f"{f' x {calibration:.2f} calibration' if calibration != 1 else ''}), "
            f"too close to its deadline of {_ms(request.deadline)} (admission keeps a "
            f"{1 - self.margin:.0%} margin for dispatch and result transfer)",
            predicted, request.deadline,
        )
        self._reject(scheduler, ts, error)
        return False

    def _reject(self, scheduler, ts, error: Exception) -> None:
        """Fail a task at once, before any worker sees it: restricted to a worker that does not
        exist, it waits in no-worker until the callback fails it, right after this graph update."""
        ts.worker_restrictions = {REJECTED}
        ts.loose_restrictions = False
        scheduler.loop.add_callback(self._fail, ts.key, error)

    def _running_late(self) -> float:
        """How far behind their predictions the admitted, unfinished requests already are: the 90th
        percentile of elapsed / predicted (0 with fewer than a handful in flight).

        Completed requests calibrate predictions only once they finish; when the workers slow down,
        the requests still in flight show it first, so admission reacts before deadlines are missed.
        """
        if len(self._admitted) < 5:
            return 0.0
        now = time.time()
        return float(np.quantile([(now - t.submitted) / t.predicted for t in self._admitted.values()], 0.9))

    def _fail(self, key, error: Exception) -> None:
        ts = self.scheduler.tasks.get(key)
        if ts is not None and ts.state == "no-worker":
            compat.fail_task(self.scheduler, key, error, f"kaas-rejected-{time.time()}")

    # ------------------------------------------------------------ transitions
    def transition(self, key, start, finish, *args, **kwargs) -> None:
        task = self.tasks.get(key)
        if task is None:
            return
        if start == "processing" and finish == "memory":
            report = compat.finished_metadata(kwargs)
            if report is not None:
                self.handle_report(kwargs.get("worker"), **report)
        if finish == "processing":
            ts = self.scheduler.tasks[key]
            view = self.workers.get(ts.processing_on.address) if ts.processing_on else None
            if view is not None:
                task.worker, task.assigned = view.address, time.time()
                view.queued += 1
                view.queued_seconds += task.estimate
                view.pending.update(ref for ref, _ in task.consts)
        elif finish == "no-worker" and self.dispatcher:
            self._schedule_dispatch()  # its dependencies are done: it may go now
        elif start == "processing":
            self._schedule_dispatch()  # a worker has room again
            view = self.workers.get(task.worker) if task.worker else None
            if view is not None and finish == "memory":
                view.completed(task.assigned, time.time())
            self._leave_worker(task)
            if finish == "memory":
                self._completed(task, kwargs.get("startstops") or ())
            elif finish == "erred":
                self.tenants[task.tenant].failed += 1
        if finish in ("memory", "erred", "forgotten"):
            self.tasks.pop(key, None)
            self._admitted.pop(key, None)

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
        stats.observe(now - task.submitted)  # the latency window and the cumulative histogram
        if task.predicted:
            self.model.observe_calibration((now - task.submitted) / task.predicted)
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
        load_before = view.picture.load_seconds
        view.update(report)
        self.model.observe_load(view.counters.get("bytes_from_store", 0) - loaded_before,
                                view.picture.load_seconds - load_before)
        if report.get("ok"):
            self.model.observe(report["shape"], report["seconds"])
        self.recent.append({
            "time": time.time(), "tenant": report.get("tenant") or "default", "kernels": report.get("kernels", []),
            "worker": worker, "seconds": report.get("seconds", 0.0), "hits": report.get("hits", 0),
            "misses": report.get("misses", 0), "bytes_loaded": report.get("bytes_loaded", 0),
            "ok": bool(report.get("ok")),
        })

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict:
        return {
            "policy": self.policy,
            "workers": {addr: view.snapshot() for addr, view in sorted(self.workers.items())},
            "tenants": {tenant: stats.snapshot() for tenant, stats in sorted(self.tenants.items())},
            "model": {"shapes": len(self.model.runtime), "overhead": self.model.overhead,
                      "load_bandwidth": self.model.load_bandwidth()},
            "decisions": self.decisions,
            "recent": list(self.recent),
        }

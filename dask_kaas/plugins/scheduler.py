"""The Dask SchedulerPlugin: Dask's hooks turned into the scheduling core's events, its decisions carried out.

A task is a KaaS task when its function is a :class:`~dask_kaas.Request`, as with
``client.submit(request, x=x)`` or ``dask.delayed(request)(x=x)``. What to decide lives in
:mod:`dask_kaas.scheduling` (pure code, tested on its own); this module only connects it to Dask:

- **update_graph**: each KaaS task gets the ``GPU`` resource restriction and is submitted to the
  core: rejected at once (admission, an invalid tenant, a tenant its TLS client may not act for),
  sent to a worker now, or held in its tenant's fair queue. A held task waits in ``no-worker``,
  restricted to a worker that never exists.
- **dispatch**: when slots free up, the core names (task, worker) pairs; the task is restricted to
  that worker and moved to ``processing``, so Dask evaluates one worker, not all of them. Once
  placed, the restriction is lifted (except under ``static``/``exclusive``), so work stealing may
  still move it; stealing and Dask's objective price a worker through ``get_comm_cost``, which the
  plugin extends by the core's placement cost (load time of missing consts, stickiness).
- **transitions**: where a task runs, when it leaves its worker, its worker's report (which rides
  in the task's ``task-finished`` metadata; failed requests' reports come as ``kaas-report``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Unpack, overload

from distributed import SchedulerPlugin

from .. import compat, config
from ..errors import AdmissionRejected, ConfigError, KaasError, RequestError, TenantError
from ..names import namespace_problem, show, split_key
from ..report import REJECTED_ANNOTATION, TENANT_ANNOTATION, WANTED_ANNOTATION, Report
from ..request import Request
from ..request.batch import RequestBatch
from ..request.model import InvalidRequest
from ..scheduling import POLICIES, SchedulingCore, Task
from ..scheduling.history import History
from .access import AccessRules
from .graph_scan import SCAN_LIMIT, requests_within
from .identity import worker_refusal
from .tenant_guard import TenantGuard

if TYPE_CHECKING:
    from tornado.ioloop import PeriodicCallback

logger = logging.getLogger(__name__)

RESERVED_ANNOTATIONS = frozenset({REJECTED_ANNOTATION, TENANT_ANNOTATION, WANTED_ANNOTATION})

RESOURCE = "GPU"
HELD = "kaas://held-for-fair-dispatch"  # a worker that never exists: held tasks wait in no-worker
REJECTED = "kaas://rejected"  # likewise, for tasks failed before any worker sees them


def request_of_task(ts) -> tuple[Request | InvalidRequest | None, int]:
    """The Request a scheduler-side task runs (None: no KaaS task; an InvalidRequest: one that did not
    validate when unpickled) and how many calls of it: a batch's count, else 1."""
    func = compat.task_function(ts)
    if isinstance(func, RequestBatch):
        return func.request, func.count
    return (func, 1) if isinstance(func, (Request, InvalidRequest)) else (None, 0)


def _hidden_request(ts) -> TenantError | None:
    """Under TLS tenant binding a Request runs only as a task's own function (or a batch's), where the
    binding checks its tenant: one anywhere else in the task (a bound method, a partial, an argument of
    ``apply``, an element of an argument) is refused, as is a task too large to look through."""
    found, whole = requests_within(compat.task_spec(ts))
    func = compat.task_function(ts)
    top = func if isinstance(func, (Request, RequestBatch, InvalidRequest)) else None
    hidden = [r for r in found if r is not top]
    if hidden:
        return TenantError(
            f"{hidden[0]!r} is inside task {show(str(ts.key), 80)} other than as its function: this "
            f"scheduler binds tenants to TLS certificates and checks a Request only as a task's "
            f"function (client.submit(request, ...), dask.delayed(request)(...))"
        )
    if not whole:
        return TenantError(
            f"task {show(str(ts.key), 80)} holds more than {SCAN_LIMIT} objects: this scheduler "
            f"binds tenants to TLS certificates and looks through every task for Requests"
        )
    return None


@overload
def _patterns(name: str, allow_null: Literal[False] = False) -> tuple[str, ...]: ...
@overload
def _patterns(name: str, allow_null: bool) -> tuple[str, ...] | None: ...
def _patterns(name: str, allow_null: bool = False) -> tuple[str, ...] | None:
    """``kaas.<name>``: a list of shell patterns of certificate common names (null where allowed)."""
    value = config.get(name)
    if value is None and allow_null:
        return None
    if (
        value is None
        or isinstance(value, str)
        or not isinstance(value, (list, tuple))
        or not all(type(p) is str for p in value)
    ):
        raise ConfigError(
            f"kaas.{name} must be {'null or ' if allow_null else ''}a list of name patterns, got {value!r}"
        )
    return tuple(value)


def _consts(request: Request) -> tuple:
    """``((namespace, key), nbytes)`` of each const the request reads, as the core takes them."""
    return tuple((split_key(spec.store_key, request.tenant), spec.size) for spec in request.consts)


class KaasSchedulerPlugin(SchedulerPlugin):
    """The KaaS scheduler plugin: fair dispatch, cache-aware placement and admission for KaaS tasks.

    Every task whose function is a :class:`~dask_kaas.Request` gets the ``GPU`` resource
    restriction (so it runs only on KaaS workers) and goes through a
    :class:`~dask_kaas.scheduling.SchedulingCore`: rejected at once (a deadline it cannot meet,
    an invalid tenant, a tenant its TLS client may not act for), sent to the worker the policy
    picks, or held in its tenant's fair queue until a worker has a free slot (at most
    ``kaas.scheduler.queue-depth`` KaaS tasks in flight per worker). It also serves the
    ``/kaas`` dashboard page and, with ``prometheus_client``, ``dask_kaas_*`` metrics. Other
    tasks are left to Dask.

    It pickles as ``(policy, weights)``: what is sent to a running scheduler
    (``client.register_plugin``) is the settings, resolved where the plugin was built; the
    rest of ``kaas.scheduler.*`` (queue depth, admission margin, stickiness, load bandwidth,
    tenant identity and map) is read where it is built again, on the scheduler.

    Parameters
    ----------
    policy : {"affinity", "balance", "static", "exclusive"}, optional
        Placement: ``affinity`` weighs each candidate's queue against the time to load the
        consts it lacks (workers caching them win), ``balance`` takes the least loaded worker,
        ``static`` pins each tenant to one worker (round robin), ``exclusive`` too, with the
        workers emptying their caches on every tenant switch. Default from
        ``kaas.scheduler.policy``.
    weights : dict of str to float, optional
        Fair-share weight per tenant (others weigh 1); default from ``kaas.scheduler.weights``.

    Raises
    ------
    ConfigError
        For an unknown policy, or a ``kaas.scheduler.tenant-identity`` other than null and
        ``"tls"``, or an unreadable ``kaas.scheduler.*`` setting.

    See Also
    --------
    KaasWorkerPlugin : its worker-side counterpart.
    dask_kaas.set_policy, dask_kaas.cluster_state

    Examples
    --------
    >>> from dask_kaas import KaasSchedulerPlugin
    >>> plugin = KaasSchedulerPlugin(policy="balance", weights={"alice": 2.0})
    >>> plugin.name, plugin.policy
    ('kaas', 'balance')
    >>> KaasSchedulerPlugin(policy="fastest")
    Traceback (most recent call last):
    ...
    dask_kaas.errors.ConfigError: kaas.scheduler.policy must be one of affinity, balance, static, exclusive, ...

    On a running cluster (``dask_kaas.install`` does this, with the worker plugin):

    >>> from distributed import Client
    >>> client = Client("tcp://scheduler:8786")  # doctest: +SKIP
    >>> client.register_plugin(KaasSchedulerPlugin(policy="affinity"))  # doctest: +SKIP
    """

    name = "kaas"

    def __init__(self, policy: str | None = None, weights: dict[str, float] | None = None) -> None:
        policy = policy or config.get("scheduler.policy")
        if policy not in POLICIES:
            raise ConfigError(f"kaas.scheduler.policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.identity = config.get("scheduler.tenant-identity")
        if self.identity not in (None, "tls"):
            raise ConfigError(f"kaas.scheduler.tenant-identity must be null or 'tls', got {self.identity!r}")
        self.access = AccessRules(
            config.get("scheduler.tenant-clients"),
            _patterns("scheduler.worker-names", allow_null=True),
            _patterns("scheduler.operator-names"),
            config.get_dict("scheduler.tenant-map"),
        )
        if self.access.locked and not compat.graphs_arrive_as_expressions():
            raise ConfigError(
                "kaas.scheduler.tenant-clients: requests-only needs distributed 2025.4 or later "
                "(clients send graphs as expressions of task specs)"
            )
        if self.access.locked and self.identity != "tls":
            raise ConfigError(
                "kaas.scheduler.tenant-clients: requests-only needs kaas.scheduler.tenant-identity: tls "
                "(a tenant is known by its client's certificate)"
            )
        self.graph_objects = config.get("scheduler.tenant-graph-objects")
        if type(self.graph_objects) is not int or self.graph_objects < 1:
            raise ConfigError(
                f"kaas.scheduler.tenant-graph-objects must be a positive integer, got {self.graph_objects!r}"
            )
        self.guard = TenantGuard(self.access, self.graph_objects)  # requests-only: what a tenant may do
        self.history = History(
            float(config.get("dashboard.history-seconds")), float(config.get("dashboard.history-interval"))
        )
        self._history_callback: PeriodicCallback | None = None
        settings = config.scheduler_settings()
        if weights is not None:
            settings["weights"] = dict(weights)
        self.core = SchedulingCore(policy=policy, **settings)
        self._args = (policy, weights)
        self.scheduler: Any | None = None  # the Scheduler, from start(): no hook or handler runs before it
        self._dispatch_pending = False
        self._base_comm_cost: Callable[..., float] | None = None
        self._gpu_workers = 0  # GPU workers the scheduler knew at the last sync
        self._paused: set[str] = set()  # workers a dispatch found not running
        try:  # before the scheduler (and its dashboard) exists, where this plugin is created first
            from ..dashboard import register_dashboard_page

            register_dashboard_page()
        except ImportError:  # no bokeh: no dashboard page, everything else works
            logger.debug("dask-kaas dashboard page not registered", exc_info=True)

    def __reduce__(self):
        # what travels to the scheduler (client.register_plugin): the settings, not a core's state
        return type(self), self._args

    # -- the core's state, under the names the dashboard and the metrics read ----------------------
    @property
    def policy(self) -> str:
        return self.core.policy

    @property
    def tasks(self) -> dict:
        return self.core.tasks

    @property
    def workers(self) -> dict:
        return self.core.cluster.views

    @property
    def tenants(self) -> dict:
        return self.core.tenants

    @property
    def model(self):
        return self.core.model

    @property
    def dispatcher(self):
        """The fair queue (``len()`` is how many tasks it holds)."""
        return self.core.queue

    @property
    def recent(self):
        return self.core.recent

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, scheduler) -> None:
        self.scheduler = scheduler
        scheduler.extensions["kaas"] = self
        compat.add_stream_handler(scheduler, "kaas-report", self.handle_report)
        # a message's "client" field never replaces its connection's; requests-only: tenants' messages checked
        compat.bind_stream_identity(scheduler, self.guard.guard_stream if self.access.locked else None)
        if self.access.locked:
            self.guard.install(scheduler)
        scheduler.handlers["kaas_batch_info"] = self.batch_info
        scheduler.handlers["kaas_access"] = self.access_info
        if self.access.worker_names is not None:
            patterns = list(self.access.worker_names)
            compat.guard_worker_registration(scheduler, lambda cert: worker_refusal(cert, patterns))
        self._base_comm_cost = compat.replace_comm_cost(scheduler, self.get_comm_cost)
        from tornado.ioloop import PeriodicCallback

        self._history_callback = PeriodicCallback(self.sample_history, self.history.interval * 1000)
        self._history_callback.start()
        self._sync_workers()
        try:  # dask_kaas_* on the scheduler's /metrics (distributed serves it when prometheus_client is installed)
            from ..dashboard.metrics import register as register_metrics

            register_metrics(self)
        except ImportError:
            logger.debug("dask-kaas Prometheus metrics not registered", exc_info=True)

    def sample_history(self) -> None:
        """Record the cache's and tenants' counters in :attr:`history` (every ``kaas.dashboard.history-interval``)."""
        self.history.sample(time.time(), *self.core.counters())

    async def close(self) -> None:
        if self._history_callback is not None:
            self._history_callback.stop()
        if self.scheduler is not None and self._base_comm_cost is not None:
            compat.restore_comm_cost(self.scheduler, self._base_comm_cost)

    def add_worker(self, scheduler, worker: str) -> None:
        self._sync_workers()

    def remove_worker(self, scheduler, worker: str, **kwargs) -> None:
        self.core.remove_worker(worker)
        self._gpu_workers = len(compat.workers_with_resource(scheduler, RESOURCE))

    def _sync_workers(self) -> None:
        """Views for the GPU workers; O(1) unless the scheduler's GPU workers changed (a worker may
        get its GPU resource after it registered, with no hook to say so)."""
        gpu = compat.workers_with_resource(self.scheduler, RESOURCE) if self.scheduler is not None else {}
        if len(gpu) == self._gpu_workers:
            return
        self._gpu_workers = len(gpu)
        for address, amount in gpu.items():
            known = compat.worker_is_running(self.scheduler, address) is not None
            if amount and known and address not in self.core.cluster:
                self.core.add_worker(address)
        self._schedule_dispatch()

    def set_policy(self, policy: str, *, caches_cleared: bool = False, replication: bool | None = None) -> None:
        """Switch policy; ``caches_cleared`` says the workers just emptied their caches; ``replication``
        (not None) turns replication on or off.

        Raises :class:`ConfigError` for an unknown policy. Only the scheduler's side:
        :func:`dask_kaas.set_policy` also tells the workers.
        """
        if policy not in POLICIES:
            raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.core.set_policy(policy, caches_cleared=caches_cleared)
        if replication is not None:
            self.core.replication = bool(replication)

    # -- placement, as Dask's objective and work stealing ask for it ---------------------------
    def get_comm_cost(self, ts, ws) -> float:
        # Dask asks for every worker for each plain task too: those cost one dict lookup here
        assert self._base_comm_cost is not None  # start() installs this method and keeps the one it replaced
        base = self._base_comm_cost(ts, ws)
        return base + self.core.comm_cost(ts.key, ws.address) if ts.key in self.core.tasks else base

    # -- new tasks -----------------------------------------------------------------------------
    def update_graph(self, scheduler, *, client: str, tasks: list, keys=(), **kwargs) -> None:
        self._sync_workers()
        now = time.time()
        try:
            tenant_only = self.guard.graph_update(scheduler, client, tasks, keys) if self.access.locked else {}
        except Exception as e:
            logger.exception("dask-kaas: could not check a graph update; its tasks are refused")
            tenant_only = {
                key: KaasError(f"the KaaS scheduler plugin could not check this task ({e!r})") for key in tasks
            }
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is None or key in self.core.tasks:
                continue
            try:
                self._admit(scheduler, client, ts, tenant_only.get(key), now)
            except Exception as e:
                logger.exception("dask-kaas: could not check task %s; it is refused", show(str(key), 80))
                self._reject(scheduler, ts, KaasError(f"the KaaS scheduler plugin could not check this task ({e!r})"))
        self._schedule_dispatch()

    def _admit(self, scheduler, client: str, ts, tenant_verdict, now: float) -> None:
        """Check one new task; a KaaS task is restricted to GPU workers, approved for its tenant and
        handed to the core (run now, held, or rejected)."""
        if tenant_verdict is not None:
            error = self.guard.task_refusal(ts, tenant_verdict)
            if error is not None:
                self._reject(scheduler, ts, error)
                return
        if ts.annotations and not ts.annotations.keys().isdisjoint(RESERVED_ANNOTATIONS):
            compat.drop_annotations(ts, RESERVED_ANNOTATIONS)  # the scheduler's to write, never a client's
        request, calls = request_of_task(ts)
        if self.identity == "tls":
            error = _hidden_request(ts)
            if error is not None:
                self._reject(scheduler, ts, error)
                return
        if request is None:
            return
        if isinstance(request, InvalidRequest):  # it did not validate when unpickled here
            self._reject(scheduler, ts, request.error)
            return
        error = self._refusal(scheduler, client, request)
        if error is not None:
            self._reject(scheduler, ts, error)
            return
        compat.require_resource(ts, RESOURCE, 1)
        compat.annotate(ts, TENANT_ANNOTATION, request.tenant or "")  # the worker runs it as this tenant only
        task = Task(
            ts.key,
            request.tenant or client,
            request.shape_token,
            _consts(request),
            submitted=now,
            deadline=request.deadline,
            ready=not ts.dependencies,
            count=calls,
        )
        decision = self.core.submit(task)
        if decision.action == "reject":
            self._reject(
                scheduler,
                ts,
                AdmissionRejected(f"{request!r} {decision.message}", decision.predicted, request.deadline),
            )
            return
        if decision.admitted is not None:  # a batch admitted in part: its worker answers the rest
            compat.annotate(
                ts,
                REJECTED_ANNOTATION,
                [decision.admitted, f"{request!r} {decision.message}", decision.predicted, request.deadline],
            )
        if decision.action == "run":
            assert decision.worker is not None  # the core names the worker of every "run"
            compat.restrict_to(ts, {decision.worker})  # Dask evaluates this one worker
            self._hint(ts, decision.worker)
        else:
            compat.restrict_to(ts, {HELD})  # parked in no-worker until dispatch releases it

    def access_info(self) -> dict:
        """The access settings workers and nannies follow (the scheduler's ``kaas_access`` handler)."""
        return {**self.access.to_dict(), "tenant_identity": self.identity}

    def batch_info(self, comm=None) -> dict:
        """For :class:`~dask_kaas.Batcher` (the scheduler's ``kaas_batch_info`` handler): batches of one
        request to keep in flight (one per KaaS worker; None without workers) and whether this client may
        move a batch's bytes straight to and from the workers (not a tenant's, when tenants are held to
        requests: workers take no tenant's connection)."""
        direct = not self.access.locked or self.access.role(compat.peer_certificate(comm)).trusted
        return {"slots": len(self.core.cluster) or None, "direct": direct}

    def _refusal(self, scheduler, client: str, request: Request | InvalidRequest) -> Exception | None:
        """Why a request may not run at all, before any worker sees it (None: it may)."""
        if isinstance(request, InvalidRequest):  # it did not validate when unpickled here
            return request.error
        problem = None if request.tenant is None else namespace_problem(request.tenant, "tenant")  # exactly str
        if problem:  # only a request built around its own validation gets here
            return RequestError(f"{request!r}: {problem}")
        if self.identity == "tls":
            role = self.guard.client_role(scheduler, client)
            if role.trusted:  # a worker's or an operator's client (the gateway) acts for any tenant
                return None
            bound = role.tenant
            if bound is None or request.tenant != bound:
                return TenantError(
                    f"{request!r}: this scheduler binds tenants to TLS client certificates, and "
                    + (
                        f"this client's certificate is tenant {bound!r}, not {request.tenant!r}"
                        if bound
                        else "this client presented no certificate with a common name"
                    )
                )
        return None

    def _reject(self, scheduler, ts, error: Exception) -> None:
        """Fail a task at once, before any worker sees it: restricted to a worker that does not
        exist, it waits in no-worker until the callback fails it, right after this graph update."""
        compat.restrict_to(ts, {REJECTED})
        scheduler.loop.add_callback(self._fail, ts.key, error)

    def _fail(self, key, error: Exception) -> None:
        assert self.scheduler is not None  # _reject schedules this on the scheduler's loop
        ts = self.scheduler.tasks.get(key)
        if ts is not None and ts.state == "no-worker":
            compat.fail_task(self.scheduler, key, error, f"kaas-rejected-{time.time()}")

    # -- dispatch ------------------------------------------------------------------------------
    def _schedule_dispatch(self) -> None:
        if self.scheduler is not None and not self._dispatch_pending and len(self.core.queue):
            self._dispatch_pending = True
            self.scheduler.loop.add_callback(self._dispatch)

    def _dispatch(self) -> None:
        """Start what the core dispatches, each task on the one worker it names."""
        self._dispatch_pending = False
        scheduler = self.scheduler
        assert scheduler is not None  # _schedule_dispatch schedules this only once there is a scheduler
        for address in list(self._paused):  # workers that could not take work: back?
            if compat.worker_is_running(scheduler, address) is not False:
                self._paused.discard(address)
                self.core.set_running(address, True)
        stimulus_id = f"kaas-dispatch-{time.time()}"
        for key, worker in self.core.dispatch():
            ts = scheduler.tasks.get(key)
            if ts is None:
                self.core.forget(key)
                continue
            if ts.state != "no-worker":  # not runnable here and now: it waits for the next event
                self.core.unplaced(key, ready=False)
                continue
            compat.restrict_to(ts, {worker})
            self._hint(ts, worker)
            if compat.start_processing(scheduler, key, stimulus_id) == "no-worker":
                # the worker is paused, gone or closing: back to the head of its queue
                compat.restrict_to(ts, {HELD})
                self.core.unplaced(key)
                self.core.set_running(worker, False)
                self._paused.add(worker)

    def _hint(self, ts, worker: str) -> None:
        """The task tells its worker which of its cached consts queued requests want (queue-aware eviction)."""
        hints = self.core.hints(worker)
        if hints:
            compat.annotate(ts, WANTED_ANNOTATION, [[ns, key, n] for (ns, key), n in hints.items()])

    # -- transitions ---------------------------------------------------------------------------
    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "forgotten" and self.guard.owners:
            self.guard.owners.pop(key, None)
        core = self.core
        task = core.tasks.get(key)
        if task is None:
            return
        scheduler = self.scheduler  # the core has tasks only from update_graph, which Dask calls after start()
        if finish == "processing":
            assert scheduler is not None
            ts = scheduler.tasks[key]
            worker = compat.processing_on(ts)
            if worker is not None:
                core.placed(key, worker)
            if task.pinned is None:
                compat.lift_restrictions(ts)  # the choice is made; stealing may still move it
        elif start == "processing":
            if finish == "memory":
                report, worker = compat.finished_metadata(kwargs), kwargs.get("worker")
                if report is not None and isinstance(worker, str):
                    core.report(worker, report, key=key)
                core.finished(
                    key,
                    True,
                    duration=compat.compute_seconds(kwargs),
                    failed=report.get("failed", 0) if isinstance(report, dict) else 0,
                )
            elif finish == "erred":
                core.finished(key, False)
            else:  # released (its worker is gone, say): Dask runs it again, through the fair queue
                assert scheduler is not None
                ts = scheduler.tasks.get(key)
                if ts is not None and finish in ("released", "waiting"):
                    compat.restrict_to(ts, {HELD})
                    core.unplaced(key, ready=False)
                else:
                    core.forget(key)
            self._schedule_dispatch()  # a slot is free again
        elif finish == "no-worker":
            core.set_ready(key)  # its dependencies are done (or it came back): it may go now
            self._schedule_dispatch()
        if finish in ("erred", "forgotten") and key in core.tasks:
            core.forget(key)

    # -- reports -------------------------------------------------------------------------------
    def handle_report(self, worker: str, **report: Unpack[Report]) -> None:
        """A report sent over the worker's stream (a failed request's: successful ones ride in task-finished)."""
        self.core.report(worker, report)

    # -- state ---------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """The scheduling core's state (what :func:`dask_kaas.cluster_state` returns)."""
        return self.core.snapshot()

"""Every use of distributed's internals, in one place.

dask-kaas extends Dask through its public hooks (scheduler and worker plugins, their
``transition``/``update_graph`` callbacks, ``client.run``) wherever they reach; where they do not,
it uses the functions below, and nothing else of distributed's private or undocumented API. Each
was read in the distributed versions the pyproject allows (``distributed>=2025.1,<2027``), and
``tests/test_compat.py`` fails loudly when an attribute one relies on disappears or changes its
signature. No other module of dask_kaas touches a private attribute of distributed.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

logger = logging.getLogger("dask_kaas")
TASK_METADATA_KEY = "kaas"


# -- worker ------------------------------------------------------------------------------------
def set_task_metadata(worker, value: Any) -> bool:
    """Attach ``value`` to the metadata of the task running in this thread, which the worker sends
    to the scheduler inside that task's ``task-finished`` message (``TaskState.metadata``); False
    outside a task."""
    try:
        key = worker.get_current_task()
    except (AttributeError, KeyError):
        return False
    ts = worker.state.tasks.get(key)
    if ts is None:
        return False
    ts.metadata[TASK_METADATA_KEY] = value
    return True


def in_task(worker) -> bool:
    """Whether this thread is running one of ``worker``'s tasks."""
    try:
        return worker.get_current_task() in worker.state.tasks
    except (AttributeError, KeyError):
        return False


def current_task_annotation(worker, name: str) -> Any:
    """The annotation ``name`` of the task running in this thread (None outside a task or without it):
    what the scheduler attached when it sent the task (:func:`annotate`)."""
    try:
        key = worker.get_current_task()
    except (AttributeError, KeyError):
        return None
    ts = worker.state.tasks.get(key)
    return (ts.annotations or {}).get(name) if ts is not None else None


def annotate(ts, name: str, value: Any) -> None:
    """Attach ``value`` as annotation ``name`` of a scheduler task: it travels to the worker in the
    task's ``compute-task`` message (a copy: annotations may be shared between tasks of one graph)."""
    ts.annotations = {**(ts.annotations or {}), name: value}


def drop_annotations(ts, names) -> None:
    """Remove the annotations ``names`` from a scheduler task (a copy: annotations may be shared)."""
    ts.annotations = {k: v for k, v in (ts.annotations or {}).items() if k not in names}


def send_to_scheduler(worker, msg: dict) -> None:
    """Queue ``msg`` (``{"op": ..., ...}``) on the worker's batched stream to the scheduler, from any thread."""
    worker.loop.add_callback(worker.batched_send, msg)


async def ensure_worker_resource(worker, name: str, amount: float) -> None:
    """Give ``worker`` the resource ``name`` (keeping the others) unless it already advertises it."""
    total = dict(worker.state.total_resources)
    if name not in total:
        await worker.set_resources(**{**total, name: amount})


# -- scheduler: one task -----------------------------------------------------------------------
def task_children(node) -> tuple | None:
    """What a node of dask's task spec holds (a task's function, arguments and keyword values, a data
    node's value, a container's items); None for anything that is not a task spec node."""
    from dask._task_spec import DataNode, GraphNode, Task

    if not isinstance(node, GraphNode):
        return None
    if isinstance(node, Task):
        kwargs = node.kwargs
        return (node.func, *node.args, *(kwargs.values() if isinstance(kwargs, dict) else (kwargs,)))
    if isinstance(node, DataNode):
        return (node.value,)
    return ()


def bind_stream_identity(scheduler) -> None:
    """Make a stream message's ``client`` or ``worker`` field the connection's, whatever it says.

    ``Server.handle_stream`` calls each handler with ``merge(extra, msg)``: a field of the message
    replaces the identity of the connection it came on (a client could send ``update-graph`` as any
    other client id, and so be taken for that client's TLS certificate)."""
    base = scheduler.handle_stream

    async def handle_stream(comm, extra=None, **kwargs):
        if extra:
            comm = _IdentityComm(comm, extra)
        return await base(comm=comm, extra=extra, **kwargs)

    scheduler.handle_stream = handle_stream


def guard_worker_registration(scheduler, refusal: Callable[[dict | None], str | None]) -> None:
    """Refuse a worker whose TLS certificate ``refusal(cert)`` names a reason for (``cert`` as
    ``getpeercert`` gives it, None without one), before the scheduler adds it: the answer is the
    error ``register-worker`` gives for a taken name, which the worker raises and closes on."""
    base = scheduler.handlers["register-worker"]

    async def register_worker(comm, **msg):
        problem = refusal((comm.extra_info or {}).get("peercert"))
        if problem is not None:
            logger.warning("dask-kaas: refused worker %s from %s: %s", msg.get("name"), comm.peer_address, problem)
            await comm.write({"status": "error", "message": problem, "time": time.time()})
            return None  # as register-worker's own refusal: the answer is written, nothing more
        return await base(comm, **msg)

    scheduler.handlers["register-worker"] = register_worker


class _IdentityComm:
    """A comm whose messages carry the connection's identity fields, not their own."""

    def __init__(self, comm, extra: dict) -> None:
        self._comm, self._extra = comm, dict(extra)

    async def read(self, *args, **kwargs):
        msgs = await self._comm.read(*args, **kwargs)
        for msg in msgs if isinstance(msgs, (list, tuple)) else (msgs,):
            if isinstance(msg, dict):
                for name, value in self._extra.items():
                    if name in msg:
                        msg[name] = value
        return msgs

    def __getattr__(self, name):
        return getattr(self._comm, name)


def task_spec(ts) -> Any:
    """A scheduler-side task's whole run spec (its function, arguments, nested tasks)."""
    return ts.run_spec


def task_function(ts) -> Any:
    """What a scheduler-side task calls (``client.submit(f, ...)``: ``f``), or None."""
    return getattr(ts.run_spec, "func", None)


def require_resource(ts, name: str, amount: float = 1) -> None:
    """Add a resource restriction to a task (as ``client.submit(..., resources={name: amount})`` does)."""
    if not ts.resource_restrictions or name not in ts.resource_restrictions:
        ts.resource_restrictions = {**(ts.resource_restrictions or {}), name: amount}


def restrict_to(ts, workers) -> None:
    """Let the task run only on ``workers`` (addresses). An address no worker has parks the task in
    ``no-worker`` until :func:`restrict_to` names a real worker and :func:`start_processing` runs it."""
    ts.worker_restrictions = set(workers)
    ts.loose_restrictions = False


def lift_restrictions(ts) -> None:
    """Drop the worker restriction: the scheduler (and work stealing) may move the task again."""
    ts.worker_restrictions = None


def start_processing(scheduler, key, stimulus_id: str) -> str:
    """Ask the scheduler to move a ``no-worker`` task to ``processing`` now (on the worker its
    restrictions allow); returns the task's state afterwards (still ``no-worker`` if that worker
    cannot take it)."""
    scheduler.transitions({key: "processing"}, stimulus_id)
    ts = scheduler.tasks.get(key)
    return ts.state if ts is not None else "forgotten"


def fail_task(scheduler, key, error: Exception, stimulus: str) -> None:
    """Move a task that no worker has seen (``no-worker``) to ``erred`` with ``error``, as the scheduler
    does for a task that raised."""
    from distributed.core import error_message

    msg = error_message(error)
    stimulus_id = f"{stimulus}-{key}"
    recs, client_msgs, worker_msgs = scheduler._transition(
        key, "erred", stimulus_id, cause=key, exception=msg["exception"], traceback=msg["traceback"],
        exception_text=msg["exception_text"], traceback_text=msg["traceback_text"],
    )
    scheduler._transitions(recs, client_msgs, worker_msgs, stimulus_id)
    scheduler.send_all(client_msgs, worker_msgs)


def finished_metadata(kwargs: dict) -> Any:
    """What a worker attached with :func:`set_task_metadata`, from the keyword arguments a
    ``SchedulerPlugin.transition`` receives for ``processing -> memory``."""
    return (kwargs.get("metadata") or {}).get(TASK_METADATA_KEY)


def compute_seconds(kwargs: dict) -> float | None:
    """How long the task's function ran on its worker, from a ``processing -> memory`` transition."""
    compute = [s for s in kwargs.get("startstops") or () if s.get("action") == "compute"]
    return compute[-1]["stop"] - compute[-1]["start"] if compute else None


# -- scheduler: its state ----------------------------------------------------------------------
def add_stream_handler(scheduler, op: str, handler: Callable) -> None:
    """Call ``handler(worker=..., **msg)`` for each ``{"op": op, ...}`` a worker sends on its stream."""
    scheduler.stream_handlers[op] = handler


def workers_with_resource(scheduler, name: str) -> dict[str, float]:
    """``{worker address: amount}`` of the workers advertising resource ``name``."""
    return dict(scheduler.resources.get(name, {}))


def worker_is_running(scheduler, address: str) -> bool | None:
    """Whether the worker takes new tasks (status ``running``); None when the scheduler does not know it."""
    ws = scheduler.workers.get(address)
    return None if ws is None else ws.status.name == "running"


def processing_on(ts) -> str | None:
    """The address of the worker a ``processing`` task was sent to, or None."""
    return ts.processing_on.address if ts.processing_on is not None else None


def client_certificate(scheduler, client: str) -> dict | None:
    """The TLS certificate (as ``ssl.SSLSocket.getpeercert`` gives it) a client connected with, if any."""
    stream = scheduler.client_comms.get(client)
    comm = getattr(stream, "comm", None)
    return (comm.extra_info or {}).get("peercert") if comm is not None else None


def replace_comm_cost(scheduler, cost):
    """Make ``cost(ts, ws)`` the scheduler's ``get_comm_cost``, which its worker objective and work
    stealing both call; returns the one it replaced."""
    base = scheduler.get_comm_cost
    scheduler.get_comm_cost = cost
    return base


def restore_comm_cost(scheduler, base) -> None:
    scheduler.get_comm_cost = base


# -- dashboard and metrics ---------------------------------------------------------------------
def add_dashboard_page(route: str, make_document: Callable, label: str) -> None:
    """Serve ``make_document(scheduler, extra, doc)`` at ``route`` of schedulers whose dashboard starts
    afterwards, with ``label`` in the dashboard's navigation (after "system")."""
    import distributed.dashboard.scheduler as dashboard

    dashboard.applications[route] = make_document
    base = dashboard.template_variables

    def template_variables(scheduler):
        variables = base(scheduler)
        pages = variables["pages"]
        if label not in pages:
            pages.insert(pages.index("system") + 1 if "system" in pages else len(pages), label)
        return variables

    dashboard.template_variables = template_variables


def style_dashboard_document(doc, component, extra: dict, title: str, interval_ms: int = 500) -> None:
    """Show ``component.root`` in a Bokeh document with the look of distributed's own pages (template,
    theme, navigation from ``extra``), calling ``component.update()`` every ``interval_ms`` (the
    document holds the component weakly, as distributed's pages do)."""
    from distributed.dashboard.components import add_periodic_callback
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    add_periodic_callback(doc, component, interval_ms)
    doc.title = title
    doc.add_root(component.root)
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)
    doc.theme = BOKEH_THEME


def metrics_scheduler() -> Any:
    """The scheduler whose ``/metrics`` distributed serves in this process, or None."""
    try:
        from distributed.http.scheduler.prometheus.core import PrometheusHandler

        collectors = PrometheusHandler._collectors or ()
        return collectors[0].server if collectors else None
    except Exception:  # noqa: BLE001 - moved: the caller falls back to the latest plugin
        return None


# -- command line ------------------------------------------------------------------------------
def scheduler_command():
    """``dask scheduler``'s click command (its options and the function that runs it), which
    ``dask kaas scheduler`` reuses with the KaaS preload added."""
    from distributed.cli import dask_scheduler

    return dask_scheduler.main

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
from collections.abc import Awaitable, Callable
from typing import Any

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


def task_call(node) -> tuple[bool, Any]:
    """``(True, function)`` for a node of dask's task spec that calls a function, else ``(False, None)``
    (data, aliases, references, and the list, tuple, set and dict containers a task's arguments become)."""
    from dask._task_spec import NestedContainer, Task

    if isinstance(node, Task) and not isinstance(node, NestedContainer):
        return True, node.func
    return False, None


def bind_stream_identity(scheduler, guard: Callable[[Any, dict], Awaitable[dict | None]] | None = None) -> None:
    """Make a stream message's ``client`` or ``worker`` field the connection's, whatever it says; with
    ``guard``, pass each message of a client's stream through ``await guard(comm, msg)`` first (the
    message to handle, or None to drop it), ``comm`` the connection it came on.

    ``Server.handle_stream`` calls each handler with ``merge(extra, msg)``: a field of the message
    replaces the identity of the connection it came on (a client could send ``update-graph`` as any
    other client id, and so be taken for that client's TLS certificate)."""
    base = scheduler.handle_stream

    async def handle_stream(comm, extra=None, **kwargs):
        if extra:
            comm = _IdentityComm(comm, extra, guard if "client" in extra else None)
        try:
            return await base(comm=comm, extra=extra, **kwargs)
        finally:
            if isinstance(comm, _IdentityComm):
                comm.forget_vetted()

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
    """A comm whose messages carry the connection's identity fields, not their own, and pass its guard."""

    def __init__(self, comm, extra: dict, guard=None) -> None:
        self._comm, self._extra, self._guard = comm, dict(extra), guard
        self._vetted: list[str] = []  # graphs handed over in the last batch read

    def forget_vetted(self) -> None:
        """Drop the graphs of the last batch that no handler took (a message before them failed)."""
        for token in self._vetted:
            _VETTED.pop(token, None)
        self._vetted.clear()

    async def read(self, *args, **kwargs):
        self.forget_vetted()  # handle_stream handles a batch whole before it reads the next
        msgs = await self._comm.read(*args, **kwargs)
        batch = msgs if isinstance(msgs, (list, tuple)) else (msgs,)
        for msg in batch:
            if isinstance(msg, dict) and msg.get("op") is not None:
                msg.update(self._extra)  # as handle_stream's merge(extra, msg) should have
        if self._guard is None:
            return msgs
        kept = []
        for msg in batch:
            if not isinstance(msg, dict) or msg.get("op") == "close-stream":
                kept.append(msg)
            elif (msg := await self._guard(self._comm, msg)) is not None:
                header = msg.get("graph_header") or getattr(msg.get("expr_ser"), "header", None)
                if isinstance(header, dict) and header.get("serializer") == _VETTED_FAMILY:
                    self._vetted.append(header["token"])
                kept.append(msg)
        return kept

    def __getattr__(self, name):
        return getattr(self._comm, name)


def peer_certificate(comm) -> dict | None:
    """The TLS certificate (as ``getpeercert`` gives it) of the peer of a connection, or None."""
    return (getattr(comm, "extra_info", None) or {}).get("peercert")


def guard_handlers(scheduler, refusal: Callable[[dict | None, str, dict], str | None]) -> None:
    """Before the scheduler's handler ``op`` answers a connection, ask ``refusal(cert, op, msg)``
    (``cert`` the peer's TLS certificate): a reason refuses the call, answered as an error the caller
    raises (a ``TenantError`` naming the reason); ``register-client`` is refused as distributed refuses
    a client, with the reason in its ``stream-start``. Handlers added later are guarded too."""
    scheduler.handlers = _GuardedHandlers(scheduler.handlers, refusal)


class _GuardedHandlers(dict):
    def __init__(self, handlers: dict, refusal) -> None:
        super().__init__(handlers)
        self._refusal = refusal
        self._wrapped: dict = {}

    def __getitem__(self, op):
        base = super().__getitem__(op)
        cached = self._wrapped.get(op)
        if cached is not None and cached[0] is base:
            return cached[1]
        wrapped = _guarded_handler(op, base, self._refusal)
        self._wrapped[op] = (base, wrapped)
        return wrapped


def _guarded_handler(op: str, base: Callable, refusal) -> Callable:
    import inspect

    from distributed.core import error_message

    from .errors import TenantError

    params = inspect.signature(base).parameters
    takes_comm = bool(params) and next(iter(params)) == "comm"

    async def call(comm, msg):
        problem = refusal(peer_certificate(comm), op, msg)
        if problem is not None:
            logger.warning("dask-kaas: refused %r from %s: %s", op, comm.peer_address, problem)
            if op == "register-client":
                await comm.write([{"op": "stream-start", "error": f"TenantError: {problem}"}])
                return None
            return error_message(TenantError(problem), status="uncaught-error")
        result = base(comm, **msg) if takes_comm else base(**msg)
        return await result if inspect.isawaitable(result) else result

    async def guarded(comm, **msg):
        return await call(comm, msg)

    async def guarded_serializers(comm, serializers=None, **msg):
        return await call(comm, {**msg, "serializers": serializers})

    # distributed passes a caller's serializers only to handlers that name them
    handler: Callable = guarded_serializers if "serializers" in params else guarded
    handler.__name__ = getattr(base, "__name__", op)
    return handler


def guard_listeners(server, refusal: Callable[[dict | None], str | None]) -> None:
    """Refuse connections to ``server`` (a worker or nanny) whose TLS certificate ``refusal(cert)``
    names a reason for: closed before Dask's handshake, whose message a worker would already
    deserialize. Connections made before this call are checked too, and closed."""

    def before(comm) -> None:
        problem = refusal(peer_certificate(comm))
        if problem is not None:
            from distributed.comm.core import CommClosedError

            logger.warning("dask-kaas: refused a connection from %s: %s", comm.peer_address, problem)
            comm.abort()
            raise CommClosedError(problem)

    _before_each_connection(server, before)
    _close_existing(server, lambda cert: refusal(cert) is not None)


def restrict_unpickling(server, loads_for: Callable[[dict | None], Callable | None]) -> None:
    """Unpickle what a connection to ``server`` sends with ``loads_for(cert)(data, buffers)`` instead of
    pickle where that gives a function (None: as distributed does).

    distributed unpickles a message's ``ToPickle`` parts while it reads the message, even on the
    scheduler, which leaves everything else serialized: before any handler could look at it. The
    choice is made per connection, before Dask's handshake (a context variable of the task that reads
    the connection, which the tasks and threads it starts inherit). Connections made before this call
    with a restricted certificate are closed."""
    _route_pickle_loads()

    def before(comm) -> None:
        loads = loads_for(peer_certificate(comm))
        if loads is not None:
            comm.read = _restricted_read(comm, loads)

    _before_each_connection(server, before)
    _close_existing(server, lambda cert: loads_for(cert) is not None)


_RESTRICTED_LOADS: Any = None  # a contextvars.ContextVar once restrict_unpickling has run


def _route_pickle_loads() -> None:
    global _RESTRICTED_LOADS
    import contextvars

    from distributed.protocol import pickle as dask_pickle

    if _RESTRICTED_LOADS is not None:
        return
    _RESTRICTED_LOADS = contextvars.ContextVar("dask_kaas_restricted_loads", default=None)
    base = dask_pickle.loads

    def loads(x, *, buffers=()):
        restricted = _RESTRICTED_LOADS.get()
        return base(x, buffers=buffers) if restricted is None else restricted(x, list(buffers or ()))

    dask_pickle.loads = loads  # distributed.protocol.core and serialize call pickle.loads through the module


def _restricted_read(comm, loads: Callable) -> Callable:
    """``comm.read`` with ``loads`` for its ToPickle parts; a message that fails to decode closes the
    connection (it may be the handshake, which nothing would answer)."""
    from distributed.comm.core import CommClosedError

    read = comm.read

    async def restricted(*args, **kwargs):
        token = _RESTRICTED_LOADS.set(loads)
        try:
            return await read(*args, **kwargs)
        except (CommClosedError, OSError):
            raise
        except Exception as e:
            logger.warning("dask-kaas: closed the connection from %s: %s", comm.peer_address, e)
            comm.abort()
            raise CommClosedError(f"dask-kaas refused a message: {e}") from None
        finally:
            _RESTRICTED_LOADS.reset(token)

    return restricted


def _before_each_connection(server, before: Callable[[Any], None]) -> None:
    """Call ``before(comm)`` for each new connection to ``server``, in the task that reads it, before
    Dask's handshake (a listener's ``on_connection``)."""
    for listener in getattr(server, "listeners", ()):
        base = listener.on_connection

        async def on_connection(comm, *args, _base=base, **kwargs):
            before(comm)
            return await _base(comm, *args, **kwargs)

        listener.on_connection = on_connection


def _close_existing(server, condition: Callable[[dict | None], bool]) -> None:
    """Close the connections ``server`` is reading (requests and client streams) whose peer's
    certificate meets ``condition``."""
    comms = list(getattr(server, "_comms", {}))
    comms += [getattr(stream, "comm", None) for stream in getattr(server, "client_comms", {}).values()]
    for comm in comms:
        if comm is not None and condition(peer_certificate(comm)):
            comm.abort()


def tell_client(scheduler, client: str, msg: dict) -> None:
    """Send ``msg`` on one client's stream (not to the other clients that want the same key)."""
    stream = scheduler.client_comms.get(client)
    if stream is not None:
        stream.send(msg)


def refuse_keys(scheduler, client: str, keys, error: Exception) -> None:
    """Tell one client that ``keys`` of its failed (their futures raise ``error``)."""
    from distributed.core import error_message

    msg = error_message(error)
    for key in keys:
        tell_client(
            scheduler,
            client,
            {"op": "task-erred", "key": key, "exception": msg["exception"], "traceback": msg["traceback"]},
        )


def release_for_client(scheduler, client: str, keys, stimulus: str) -> None:
    """Remove ``client`` from those that want ``keys`` (the tasks stay for the others)."""
    if client in scheduler.clients:
        scheduler.client_releases_keys(keys=list(keys), client=client, stimulus_id=f"{stimulus}-{time.time()}")


_VETTED: dict[str, Any] = {}
_VETTED_FAMILY = "kaas-vetted"


def vetted_expression(expr: Any) -> Any:
    """A stand-in for an ``update-graph`` message's serialized graph that distributed deserializes to
    ``expr`` itself (already unpickled, by :mod:`dask_kaas.plugins.tenant_pickle`): a one-time token in
    a serialization family of its own, so nothing is unpickled twice."""
    import secrets

    from distributed.protocol.serialize import Serialized, families, register_serialization_family

    if _VETTED_FAMILY not in families:
        register_serialization_family(_VETTED_FAMILY, None, _take_vetted)
    token = secrets.token_hex(16)
    _VETTED[token] = expr
    return Serialized({"serializer": _VETTED_FAMILY, "token": token}, [])


def _take_vetted(header: dict, frames: list) -> Any:
    return _VETTED.pop(header["token"])


def graphs_arrive_as_expressions() -> bool:
    """Whether clients send graphs as one pickled expression of dask's task specs (distributed
    2025.4 and later), which the requests-only mode unpickles itself."""
    import inspect

    from distributed import Scheduler

    return "expr_ser" in inspect.signature(Scheduler.update_graph).parameters


def update_graph_parts(msg: dict) -> tuple[Any, list, list]:
    """``(header, frames, keys)`` of an ``update-graph`` message: its serialized graph (``expr_ser``;
    ``graph_header``/``graph_frames`` in older distributed releases) and the keys it wants. The header
    is what the message holds (a dict from distributed; None, or anything, from another sender)."""
    if "graph_header" in msg:
        return msg.get("graph_header"), list(msg.get("graph_frames") or ()), list(msg.get("keys") or ())
    expr = msg.get("expr_ser")
    return getattr(expr, "header", None), list(getattr(expr, "frames", None) or ()), list(msg.get("keys") or ())


def with_expression(msg: dict, expr: Any) -> dict:
    """The ``update-graph`` message ``msg`` carrying ``expr`` (unpickled already) as its graph."""
    vetted = vetted_expression(expr)
    if "graph_header" in msg:
        return {**msg, "graph_header": vetted.header, "graph_frames": vetted.frames}
    return {**msg, "expr_ser": vetted}


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
        key,
        "erred",
        stimulus_id,
        cause=key,
        exception=msg["exception"],
        traceback=msg["traceback"],
        exception_text=msg["exception_text"],
        traceback_text=msg["traceback_text"],
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


def worker_metrics(scheduler, address: str) -> dict:
    """What a worker's heartbeats last said of it (``WorkerState.metrics``: memory, CPU, and with
    pynvml ``gpu_utilization`` and ``gpu_memory_used``), or {} for a worker the scheduler does not know."""
    ws = scheduler.workers.get(address)
    return dict(getattr(ws, "metrics", None) or {}) if ws is not None else {}


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
def add_dashboard_page(route: str, make_document: Callable, label: str | None) -> None:
    """Serve ``make_document(scheduler, extra, doc)`` at ``route`` of schedulers whose dashboard starts
    afterwards, with ``label`` in the dashboard's navigation (after "system"; None: not listed there,
    as distributed's ``/individual-*`` plots, which JupyterLab's Dask extension finds by their route)."""
    import distributed.dashboard.scheduler as dashboard

    dashboard.applications[route] = make_document
    if label is None:
        return
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


def dashboard_page_link(scheduler, route: str) -> str | None:
    """The address of the scheduler dashboard's page ``route`` (``distributed.dashboard.link`` formatted
    as distributed logs its own), or None without a dashboard."""
    from distributed.comm import get_address_host
    from distributed.utils import format_dashboard_link

    server = scheduler.services.get("dashboard")
    if server is None or not scheduler.listeners:
        return None
    try:
        link = format_dashboard_link(get_address_host(scheduler.listeners[0].contact_address), server.port)
    except KeyError:  # distributed.dashboard.link names an unset variable
        return None
    return link.rsplit("/", 1)[0] + route


def plain_dashboard_document(doc, component, root, interval_ms: int = 500) -> None:
    """Show one model ``root`` of ``component`` alone, in distributed's theme (an ``/individual-*`` plot),
    calling ``component.update()`` every ``interval_ms``."""
    from distributed.dashboard.components import add_periodic_callback
    from distributed.dashboard.components.scheduler import BOKEH_THEME

    add_periodic_callback(doc, component, interval_ms)
    doc.add_root(root)
    doc.theme = BOKEH_THEME


def metrics_scheduler() -> Any:
    """The scheduler whose ``/metrics`` distributed serves in this process, or None."""
    try:
        from distributed.http.scheduler.prometheus.core import PrometheusHandler

        collectors = PrometheusHandler._collectors or ()
        return collectors[0].server if collectors else None
    except Exception:
        return None


# -- command line ------------------------------------------------------------------------------
def scheduler_command():
    """``dask scheduler``'s click command (its options and the function that runs it), which
    ``dask kaas scheduler`` reuses with the KaaS preload added."""
    from distributed.cli import dask_scheduler

    return dask_scheduler.main

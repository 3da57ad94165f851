"""Everything of distributed's internals that dask_kaas.compat relies on is still there, with the
signature it was written against; an upgrade of distributed that moves one fails here, loudly.

Each test names the compat function whose assumptions it checks. The live checks run on the real
scheduler and workers of a LocalKaasCluster (``client.run``/``run_on_scheduler``)."""

import inspect
import re
import tomllib
from pathlib import Path
from typing import ClassVar

import distributed
import pytest
from distributed import Client, Scheduler, Worker
from distributed.batched import BatchedSend
from distributed.worker_state_machine import TaskFinishedMsg
from distributed.worker_state_machine import TaskState as WorkerTaskState
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from dask_kaas import compat

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def slots(cls) -> set[str]:
    """Attribute names instances of ``cls`` have: slots, annotations and properties."""
    names = {name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())}
    names |= {name for klass in cls.__mro__ for name in getattr(klass, "__annotations__", {})}
    return names | {name for name, value in inspect.getmembers(cls) if isinstance(value, property)}


def test_scheduler_methods():
    # fail_task
    assert params(Scheduler._transition)[:3] == ["key", "finish", "stimulus_id"]
    assert params(Scheduler._transitions) == ["recommendations", "client_msgs", "worker_msgs", "stimulus_id"]
    assert params(Scheduler.send_all) == ["client_msgs", "worker_msgs"]
    from distributed.core import error_message

    assert {"exception", "traceback", "exception_text", "traceback_text"} <= set(error_message(ValueError("x")))
    # start_processing
    assert params(Scheduler.transitions) == ["recommendations", "stimulus_id"]
    # replace_comm_cost / restore_comm_cost
    assert params(Scheduler.get_comm_cost) == ["ts", "ws"]
    # finished_metadata / compute_seconds: what SchedulerPlugin.transition receives for processing -> memory
    # (a named parameter in newer releases; in older ones among the keyword arguments it passes on)
    finished = inspect.signature(Scheduler.stimulus_task_finished).parameters
    assert "metadata" in finished or any(p.kind is p.VAR_KEYWORD for p in finished.values())


def test_scheduler_task_and_worker_state():
    from distributed.scheduler import TaskState, WorkerState

    # task_function, require_resource, restrict_to, lift_restrictions, processing_on
    assert {
        "run_spec",
        "resource_restrictions",
        "worker_restrictions",
        "loose_restrictions",
        "processing_on",
        "state",
        "dependencies",
        "key",
    } <= slots(TaskState)
    # worker_is_running
    assert {"status", "address"} <= slots(WorkerState)


def test_worker_internals():
    # set_task_metadata
    assert params(Worker.get_current_task) == []
    assert "metadata" in WorkerTaskState.__dataclass_fields__
    assert "metadata" in TaskFinishedMsg.__annotations__
    # send_to_scheduler
    assert params(Worker.batched_send) == ["msg"]
    # ensure_worker_resource
    assert inspect.iscoroutinefunction(Worker.set_resources)
    assert [p.kind for p in inspect.signature(Worker.set_resources).parameters.values()][
        -1
    ] == inspect.Parameter.VAR_KEYWORD


def test_comm_internals():
    # client_certificate: client_comms[c] is a BatchedSend whose .comm has extra_info
    assert "comm" in inspect.signature(BatchedSend.start).parameters
    from distributed.comm.core import Comm

    assert isinstance(inspect.getattr_static(Comm, "extra_info"), property)
    # bind_stream_identity: handle_stream(comm, extra), its handlers called with merge(extra, msg)
    from distributed.core import Server

    assert params(Server.handle_stream)[:2] == ["comm", "extra"]
    # guard_worker_registration: handlers["register-worker"] is add_worker(comm, ...), which refuses a worker by
    # writing {"status": "error", "message": ...} and returning
    assert params(Scheduler.add_worker)[0] == "comm"
    assert '"status": "error"' in inspect.getsource(Scheduler.add_worker)
    from distributed.core import _expects_comm

    async def handler(comm, **msg):
        pass

    assert _expects_comm(handler)
    assert 'extra={"client": client}' in inspect.getsource(Scheduler.add_client).replace("'", '"')


def test_lockdown_internals():
    """What the requests-only mode relies on."""
    from distributed.comm.core import BaseListener, Listener
    from distributed.comm.tcp import TCPListener
    from distributed.core import Server, error_message
    from distributed.protocol.serialize import Serialized, deserialize, families, register_serialization_family

    # guard_handlers: handle_comm looks a handler up as self.handlers[op] for every message, and answers an
    # "uncaught-error" status by raising the exception at the caller
    source = inspect.getsource(Server._handle_comm)
    assert "self.handlers[op]" in source and 'has_keyword(handler, "serializers")' in source
    assert error_message(ValueError("x"), status="uncaught-error")["status"] == "uncaught-error"
    # guard_listeners: a listener's on_connection(comm, ...) runs Dask's handshake (the first read) before
    # comm_handler; a worker's or nanny's connections in Server._comms
    assert params(Listener.on_connection)[0] == "comm" and params(BaseListener.on_connection)[0] == "comm"
    tcp = inspect.getsource(TCPListener._handle_stream)
    assert tcp.index("self.on_connection(comm)") < tcp.index("self.comm_handler(comm)")
    assert "self._comms[comm]" in source
    # tell_client, release_for_client, client_certificate
    assert params(Scheduler.client_releases_keys)[:3] == ["keys", "client", "stimulus_id"]
    assert "client_comms" in inspect.getsource(Scheduler.add_client)
    # vetted_expression: update_graph deserializes the message's graph with every family allowed
    source = inspect.getsource(Scheduler.update_graph)
    if compat.graphs_arrive_as_expressions():
        assert "deserialize(expr_ser.header, expr_ser.frames)" in source
    else:  # older releases: the requests-only mode refuses to start there
        assert "deserialize(graph_header, graph_frames)" in source
    register_serialization_family("kaas-compat-test", None, lambda header, frames: header["value"])
    try:
        assert deserialize(*_serialized_parts(Serialized({"serializer": "kaas-compat-test", "value": 7}, []))) == 7
    finally:
        families.pop("kaas-compat-test")
    # update_graph_parts / with_expression: the message's fields
    assert {"client", "keys"} <= set(params(Scheduler.update_graph))


def _serialized_parts(ser):
    return ser.header, ser.frames


def test_task_call_tells_calls_from_containers():
    import operator

    from dask._task_spec import DataNode, List, Task

    assert compat.task_call(Task("k", operator.getitem, [1], 0)) == (True, operator.getitem)
    assert compat.task_call(List(1, 2))[0] is False
    assert compat.task_call(DataNode("d", 1)) == (False, None)
    assert compat.task_call(42) == (False, None)


def test_task_spec_internals():
    # task_children: a Task's func, args and kwargs, a DataNode's value, on every node of a converted graph
    import functools
    import operator

    from dask._task_spec import DataNode, GraphNode, Task, convert_legacy_graph
    from dask.utils import apply

    assert issubclass(Task, GraphNode) and issubclass(DataNode, GraphNode)
    marker = object()
    graph = convert_legacy_graph({"t": (operator.getitem, (apply, functools.partial(max), [marker], {}), 0)})
    seen, stack = [], [graph["t"]]
    while stack:
        node = stack.pop()
        seen.append(node)
        children = compat.task_children(node)
        if children is not None:
            stack.extend(children)
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    assert any(node is marker for node in seen) and operator.getitem in seen
    assert compat.task_children(marker) is None


def test_dashboard_internals():
    # add_dashboard_page
    import distributed.dashboard.scheduler as dashboard

    assert isinstance(dashboard.applications, dict) and "/status" in dashboard.applications
    assert params(dashboard.template_variables) == ["scheduler"]
    # style_dashboard_document
    from distributed.dashboard.components import add_periodic_callback
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    assert params(add_periodic_callback) == ["doc", "component", "interval"]
    assert env.get_template("simple.html") is not None and BOKEH_THEME is not None
    # metrics_scheduler
    from distributed.http.scheduler.prometheus.core import PrometheusHandler

    assert hasattr(PrometheusHandler, "_collectors")


def _scheduler_state(dask_scheduler):
    import distributed.dashboard.scheduler as dashboard

    return {
        "stream_handlers": isinstance(dask_scheduler.stream_handlers, dict),
        "kaas-report": "kaas-report" in dask_scheduler.stream_handlers,
        "resources": dict(dask_scheduler.resources.get("GPU", {})),
        "workers_with_resource": compat.workers_with_resource(dask_scheduler, "GPU"),
        "running": [compat.worker_is_running(dask_scheduler, a) for a in dask_scheduler.workers],
        "unknown": compat.worker_is_running(dask_scheduler, "tcp://nowhere:1"),
        "comm_cost": dask_scheduler.get_comm_cost.__self__.__class__.__name__,
        "metrics": compat.metrics_scheduler() in (None, dask_scheduler),
        "pages": dashboard.template_variables(dask_scheduler)["pages"],
    }


def _worker_state(dask_worker):
    return {"total_resources": dict(dask_worker.state.total_resources), "tasks": hasattr(dask_worker.state, "tasks")}


def test_the_fenced_calls_on_a_live_cluster(cluster):
    with Client(cluster) as client:
        state = client.run_on_scheduler(_scheduler_state)
        workers = client.run(_worker_state)
    assert state["stream_handlers"] and state["kaas-report"]
    assert len(state["resources"]) == 2 and state["workers_with_resource"] == state["resources"]
    assert state["running"] == [True, True] and state["unknown"] is None
    assert state["comm_cost"] == "KaasSchedulerPlugin"  # replace_comm_cost took effect
    assert state["metrics"] and "kaas" in state["pages"]
    assert all(w["total_resources"].get("GPU") == 1 and w["tasks"] for w in workers.values())


def test_a_rejected_task_fails_through_the_fenced_path(cluster):
    """compat.fail_task end to end: a request the scheduler refuses fails on the client at once."""
    import numpy as np
    from helpers import matvec_request

    from dask_kaas import RequestError
    from dask_kaas.request.model import _rebuild_request

    bad = _rebuild_request(matvec_request("A").kernels, 1, "no/such tenant")
    with Client(cluster) as client:
        with pytest.raises(RequestError, match="tenant"):
            client.submit(bad, x=np.ones(64, np.float32), pure=False).result(timeout=30)


def _bounds(name: str) -> SpecifierSet:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    spec = next(d for d in deps if re.match(rf"{name}\b", d))
    return SpecifierSet(spec[len(name) :])


@pytest.mark.parametrize("name, module", [("distributed", distributed), ("dask", pytest.importorskip("dask"))])
def test_installed_within_the_bounds_the_pyproject_allows(name, module):
    """The pyproject bounds dask and distributed above, and what runs here is inside the bounds:
    CI installs the newest release the bound admits, so the bound is what CI proved."""
    bounds = _bounds(name)
    assert any(s.operator in ("<", "<=") for s in bounds), f"{name} has no upper bound in pyproject.toml"
    assert Version(module.__version__) in bounds, (module.__version__, str(bounds))


def test_scheduler_command():
    # scheduler_command: dask kaas scheduler reuses dask scheduler's options and callback, adding a preload
    command = compat.scheduler_command()
    names = {p.name for p in command.params}
    assert {"host", "port", "dashboard_address", "preload", "scheduler_file"} <= names
    preload = next(p for p in command.params if p.name == "preload")
    assert preload.multiple and callable(command.callback)
    accepted = inspect.signature(command.callback).parameters  # preload arrives among its **kwargs
    assert "preload" in accepted or any(p.kind is p.VAR_KEYWORD for p in accepted.values())


def test_a_graph_no_handler_took_is_not_kept():
    import asyncio

    class Comm:
        extra_info: ClassVar[dict] = {}

        def __init__(self, batches):
            self.batches = list(batches)

        async def read(self):
            return self.batches.pop(0)

    async def guard(comm, msg):
        return compat.with_expression(msg, object()) if msg["op"] == "update-graph" else msg

    async def main():
        comm = compat._IdentityComm(Comm([[{"op": "update-graph", "client": "forged"}], []]), {"client": "c"}, guard)
        before = len(compat._VETTED)
        (msg,) = await comm.read()
        assert msg["client"] == "c" and len(compat._VETTED) == before + 1
        await comm.read()  # the next batch: a graph of the last one no handler took is dropped
        assert len(compat._VETTED) == before

    asyncio.run(main())

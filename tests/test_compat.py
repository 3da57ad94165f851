"""Everything of distributed's internals that dask_kaas.compat relies on is still there, with the
signature it was written against; an upgrade of distributed that moves one fails here, loudly."""
import inspect

import distributed
import pytest
from distributed import Scheduler, Worker
from distributed.batched import BatchedSend
from distributed.worker_state_machine import TaskFinishedMsg, TaskState


def params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


def test_scheduler_internals():
    assert params(Scheduler._transition)[:3] == ["key", "finish", "stimulus_id"]
    assert params(Scheduler._transitions) == ["recommendations", "client_msgs", "worker_msgs", "stimulus_id"]
    assert params(Scheduler.send_all) == ["client_msgs", "worker_msgs"]
    assert params(Scheduler.get_comm_cost) == ["ts", "ws"]
    assert "metadata" in params(Scheduler.stimulus_task_finished)  # task-finished metadata reaches transitions


def test_worker_internals():
    assert params(Worker.get_current_task) == []
    assert "metadata" in TaskState.__dataclass_fields__  # what the worker sends in task-finished
    assert "metadata" in TaskFinishedMsg.__annotations__


def test_comm_internals():
    assert "comm" in inspect.signature(BatchedSend.start).parameters  # client_comms[c].comm is the client's comm
    from distributed.comm.core import Comm

    assert isinstance(inspect.getattr_static(Comm, "extra_info"), property)


def test_a_rejected_task_fails_through_the_fenced_path(cluster):
    """compat.fail_task end to end: a request the scheduler refuses fails on the client at once."""
    import numpy as np
    from distributed import Client

    from dask_kaas import RequestError
    from dask_kaas.request import _rebuild_request
    from helpers import matvec_request

    bad = _rebuild_request(matvec_request("A").kernels, 1, "no/such tenant")
    with Client(cluster) as client:
        with pytest.raises(RequestError, match="tenant"):
            client.submit(bad, x=np.ones(64, np.float32), pure=False).result(timeout=30)


def test_distributed_is_within_the_bounds_the_pyproject_allows():
    from packaging.version import Version

    assert Version("2025.1") <= Version(distributed.__version__)

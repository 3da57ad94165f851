"""Every use of distributed's internals, in one place.

dask-kaas extends Dask through its public hooks (scheduler and worker plugins, stream handlers,
the dashboard's application registry) wherever they reach; where they do not, it uses the
attributes and methods below, and nothing else of distributed's private API. Each was read in
the distributed version the pyproject allows, and ``tests/test_compat.py`` fails loudly when one
disappears or changes its signature.
"""
from __future__ import annotations

from typing import Any

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


# -- scheduler ---------------------------------------------------------------------------------
def finished_metadata(kwargs: dict) -> Any:
    """What a worker attached with :func:`set_task_metadata`, from the keyword arguments a
    ``SchedulerPlugin.transition`` receives for ``processing -> memory``."""
    return (kwargs.get("metadata") or {}).get(TASK_METADATA_KEY)


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

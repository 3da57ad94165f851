"""Where Requests are inside a submitted task: the scheduler's check that a Request runs only as a
task's own function, where the tenant binding sees it.

A client can hand a Request to a worker in many forms besides ``client.submit(request, ...)``: a
bound method (``request.__call__``), ``functools.partial(request)``, an argument of ``apply`` in a
low-level graph, an element of a list argument. Every one of them runs the request through KaaS's
own call path, so the scheduler looks through a task's whole run spec, not only its function.
"""

from __future__ import annotations

import functools
import operator
import types

import numpy as np

from .. import compat
from ..request import Request
from ..request.batch import RequestBatch
from ..request.model import InvalidRequest

__all__ = ["PLUMBING", "SCAN_LIMIT", "foreign_call", "requests_within"]

SCAN_LIMIT = 100_000  # objects looked at in one task, at most (a task holding more is refused where it matters)
_LEAVES = (str, bytes, bytearray, memoryview, int, float, complex, bool, type(None), np.ndarray, np.generic)


_REQUESTS = (Request, RequestBatch, InvalidRequest)
PLUMBING = (operator.getitem,)  # what a graph of requests calls besides them: a request's output by name


class _TooLarge(Exception):
    pass


def _walk(root, children, limit: int):
    """Every object under ``root`` (depth first, ``children(obj)`` naming what to look into next);
    raises ``_TooLarge`` at the object after the ``limit``-th."""
    stack = [root]
    seen = 0
    while stack:
        obj = stack.pop()
        seen += 1
        if seen > limit:
            raise _TooLarge
        yield obj
        stack.extend(children(obj))


def _containers(obj):
    if isinstance(obj, (list, tuple, set, frozenset)):
        return obj
    if isinstance(obj, dict):
        return (*obj.keys(), *obj.values())
    return ()


def _everything_that_runs(obj):
    """What a request could hide in: task nodes, containers, partials and bound methods."""
    if isinstance(obj, _REQUESTS) or isinstance(obj, _LEAVES):
        return ()
    children = compat.task_children(obj)
    if children is not None:
        return children
    if isinstance(obj, functools.partial):
        return (obj.func, *obj.args, *obj.keywords.values())
    if isinstance(obj, types.MethodType):
        return (obj.__self__, obj.__func__)
    return _containers(obj)


def _arguments(obj):
    """Task nodes' arguments (not their functions) and containers."""
    if isinstance(obj, _LEAVES):
        return ()
    calls, _ = compat.task_call(obj)
    children = compat.task_children(obj)
    if children is not None:
        return children[1:] if calls else children
    return _containers(obj)


def requests_within(node, limit: int = SCAN_LIMIT) -> tuple[list, bool]:
    """``(the Requests and RequestBatches found in node, whether it was looked through whole)``.

    Looks through dask's task spec nodes, Python containers, ``functools.partial`` objects and bound
    methods; other objects are opaque (running what they hold needs code of the submitter's own).
    """
    found: list = []
    try:
        for obj in _walk(node, _everything_that_runs, limit):
            if isinstance(obj, _REQUESTS):
                found.append(obj)
    except _TooLarge:
        return found, False
    return found, True


def foreign_call(node, limit: int = SCAN_LIMIT):
    """The first function a task spec calls that is neither a Request (or batch) nor
    :data:`PLUMBING`; None when there is none. A spec too large to look through whole counts as
    calling something else (``...``)."""
    try:
        for obj in _walk(node, _arguments, limit):
            calls, func = compat.task_call(obj)
            if calls and not isinstance(func, _REQUESTS) and not any(func is p for p in PLUMBING):
                return func
    except _TooLarge:
        return ...
    return None

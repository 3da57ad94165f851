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

__all__ = ["SCAN_LIMIT", "PLUMBING", "foreign_call", "requests_within"]

SCAN_LIMIT = 100_000  # objects looked at in one task, at most (a task holding more is refused where it matters)
_LEAVES = (str, bytes, bytearray, memoryview, int, float, complex, bool, type(None), np.ndarray, np.generic)


def requests_within(node, limit: int = SCAN_LIMIT) -> tuple[list, bool]:
    """``(the Requests and RequestBatches found in node, whether it was looked through whole)``.

    Looks through dask's task spec nodes, Python containers, ``functools.partial`` objects and bound
    methods; other objects are opaque (running what they hold needs code of the submitter's own).
    """
    found: list = []
    stack = [node]
    seen = 0
    while stack:
        obj = stack.pop()
        seen += 1
        if seen > limit:
            return found, False
        if isinstance(obj, (Request, RequestBatch, InvalidRequest)):
            found.append(obj)
        elif isinstance(obj, _LEAVES):
            continue
        elif (children := compat.task_children(obj)) is not None:
            stack.extend(children)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, functools.partial):
            stack.append(obj.func)
            stack.extend(obj.args)
            stack.extend(obj.keywords.values())
        elif isinstance(obj, types.MethodType):
            stack.append(obj.__self__)
            stack.append(obj.__func__)
    return found, True


PLUMBING = (operator.getitem,)  # what a graph of requests calls besides them: a request's output by name


def foreign_call(node, limit: int = SCAN_LIMIT):
    """The first function a task spec calls that is neither a Request (or batch) nor
    :data:`PLUMBING`; None when there is none. A spec too large to look through whole counts as
    calling something else (``...``)."""
    stack = [node]
    seen = 0
    while stack:
        obj = stack.pop()
        seen += 1
        if seen > limit:
            return ...
        calls, func = compat.task_call(obj)
        if calls and not isinstance(func, (Request, RequestBatch, InvalidRequest)) and \
                not any(func is p for p in PLUMBING):
            return func
        children = compat.task_children(obj)
        if children is not None:
            stack.extend(children[1:] if calls else children)
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
    return None

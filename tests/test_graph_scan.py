"""Where the scheduler finds Requests inside a task (pure: dask's task spec, no cluster)."""

import functools
import operator

from dask._task_spec import convert_legacy_graph
from dask.utils import apply
from helpers import matvec_request

from dask_kaas.plugins.graph_scan import requests_within
from dask_kaas.request.batch import RequestBatch


def test_every_form_that_reaches_a_request_is_found():
    r = matvec_request("A", tenant="bob")
    forms = {
        "method": (r.__call__,),
        "partial": (functools.partial(r),),
        "apply": (apply, r, [], {}),
        "nested": (operator.getitem, (apply, r, [], {}), "y"),
        "list": (len, [[r]]),
        "dict": (len, {"k": r}),
        "kwargs": (apply, len, [], {"r": r}),
        "set": (len, frozenset([r])),
        "batch": (RequestBatch(r, 1),),
        "partial-kw": (functools.partial(len, r=r),),
    }
    graph = convert_legacy_graph(forms)
    for name, task in graph.items():
        found, whole = requests_within(task)
        assert whole and len(found) == 1, name
        assert found[0] is r or found[0].request is r, name


def test_plain_tasks_hold_none_and_a_huge_one_is_not_looked_through_whole():
    graph = convert_legacy_graph({"a": (sum, list(range(1000))), "b": (len, "text")})
    assert all(requests_within(t) == ([], True) for t in graph.values())
    deep = [matvec_request("A")]
    for _ in range(50):
        deep = [deep, list(range(10))]
    found, whole = requests_within(convert_legacy_graph({"c": (len, deep)})["c"], limit=100)
    assert not whole
    found, whole = requests_within(convert_legacy_graph({"c": (len, deep)})["c"])
    assert whole and len(found) == 1


def test_a_graph_of_requests_calls_nothing_else():
    from dask._task_spec import Alias, DataNode, List, Task, TaskRef

    from dask_kaas.plugins.graph_scan import foreign_call

    r = matvec_request("A", tenant="alice")
    plain = [
        Task("a", r, x=DataNode(None, [1.0])),
        Task("b", operator.getitem, TaskRef("a"), "y"),
        Task("c", RequestBatch(r, 2), List(TaskRef("a"), TaskRef("b"))),
        Alias("d", "a"),
        DataNode("e", {"k": [1, 2]}),
    ]
    assert all(foreign_call(t) is None for t in plain)
    hidden = Task("f", r, x=Task("g", len, [1, 2]))  # another call inside a request's arguments
    assert foreign_call(hidden) is len
    assert foreign_call(Task("h", max, 1, 2)) is max
    assert foreign_call(DataNode("i", [Task("j", min, 1)])) is min  # even held as data
    deep = Task("k", operator.getitem, [list(range(10))] * 20, 0)
    assert foreign_call(deep, limit=50) is ...  # too large to look through whole

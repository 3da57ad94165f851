"""Where the scheduler finds Requests inside a task (pure: dask's task spec, no cluster)."""
import functools
import operator

from dask._task_spec import convert_legacy_graph
from dask.utils import apply

from dask_kaas.plugins.graph_scan import requests_within
from dask_kaas.request.batch import RequestBatch
from helpers import matvec_request


def test_every_form_that_reaches_a_request_is_found():
    r = matvec_request("A", tenant="bob")
    forms = {"method": (r.__call__,), "partial": (functools.partial(r),), "apply": (apply, r, [], {}),
             "nested": (operator.getitem, (apply, r, [], {}), "y"), "list": (len, [[r]]), "dict": (len, {"k": r}),
             "kwargs": (apply, len, [], {"r": r}), "set": (len, frozenset([r])),
             "batch": (RequestBatch(r, 1),), "partial-kw": (functools.partial(len, r=r),)}
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

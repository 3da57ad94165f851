"""Unpickling a tenant's graph (dask_kaas.plugins.tenant_pickle): what a client of KaaS requests sends loads;
code, unknown globals and graphs of exponential size are refused before anything runs; no bytes make it
raise anything but PickleRefused."""

import builtins
import functools
import operator
import os
import pickle

import dask
import numpy as np
import pytest
from dask._task_spec import Task, TaskRef
from distributed.protocol.serialize import serialize, to_serialize
from helpers import matvec_request
from tenant_attacks import Opens

from dask_kaas import compat
from dask_kaas.errors import TenantError
from dask_kaas.plugins.tenant_pickle import ALLOWED_GLOBALS, PickleRefused, check_shape, tenant_loads
from dask_kaas.request.batch import BatchCalls, RequestBatch

if not compat.graphs_arrive_as_expressions():
    pytest.skip("the requests-only mode needs distributed 2025.4 or later", allow_module_level=True)
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings
from hypothesis import strategies as st


def as_client_sends(obj):
    """``(header, frames)`` as distributed's client serializes a graph for update-graph."""
    header, frames = serialize(to_serialize(obj), on_error="raise")
    return header, frames


def graph_of(*tasks):
    """A graph as a client sends it: an expression of tasks (a plain graph in older dask releases)."""
    try:
        from dask._expr import LLGExpr
    except ImportError:
        return {t.key: t for t in tasks}
    return LLGExpr({t.key: t for t in tasks})


REQ = matvec_request("A", tenant="alice")
X = np.arange(64, dtype=np.float32)


def test_what_a_client_of_requests_sends_loads_as_it_was():
    first = Task("first", REQ, x=X)
    second = Task("second", REQ, x=Task("y", operator.getitem, TaskRef("first"), "y"))
    batch = Task("batch", RequestBatch(REQ, 2), BatchCalls([{"x": X}, {"x": X * 2}]))
    expr = graph_of(first, second, batch)
    loaded = tenant_loads(*as_client_sends(expr))
    dsk = loaded if isinstance(loaded, dict) else loaded.__dask_graph__()
    assert dsk["first"].func == REQ and dsk["first"].func.tenant == "alice"
    np.testing.assert_array_equal(dsk["first"].kwargs["x"], X)
    assert dsk["batch"].func.count == 2
    delayed = dask.delayed(REQ, pure=False)(x=dask.delayed(operator.getitem)(dask.delayed(REQ)(x=X), "y"))
    assert tenant_loads(*as_client_sends(delayed.__dask_graph__())) is not None


@pytest.mark.parametrize(
    "payload, name",
    [
        (lambda: 1, "cloudpickle"),
        (functools.partial(REQ), "functools.partial"),
        (REQ.__call__, "builtins.getattr"),
        (os.system, "posix.system"),
        (builtins.eval, "builtins.eval"),
        (operator.attrgetter("x"), "operator.attrgetter"),
        (dask.utils.apply, "dask.utils.apply"),
    ],
)
def test_any_other_global_is_refused_by_name(payload, name):
    with pytest.raises(PickleRefused, match=name.split(".")[-1]):
        tenant_loads(*as_client_sends(graph_of(Task("t", REQ, x=payload))))


def test_a_pickle_that_would_run_code_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    data = pickle.dumps(Opens(str(target)), protocol=5)
    with pytest.raises(PickleRefused, match="open"):
        tenant_loads({"serializer": "pickle", "writeable": []}, [data])
    assert not target.exists()
    assert issubclass(PickleRefused, TenantError)


def test_shared_references_are_counted_where_they_are_reached():
    node = [0]
    for _ in range(60):
        node = [node, node]
    data = pickle.dumps(node, protocol=5)
    assert len(data) < 2000
    with pytest.raises(PickleRefused, match="shared references"):
        check_shape(data)
    shared = list(range(10))
    assert check_shape(pickle.dumps([shared, shared])) == 1 + 2 * 11  # counted at each place it is reached


def test_a_list_filled_after_it_was_shared_is_counted_whole():
    # an empty list memoized, referenced 1,000 times, then filled with 10,000 items (a hand-written pickle:
    # Python's pickler fills a list before it refers to it again)
    data = b"\x80\x05]\x94(" + b"h\x00" * 1000 + b"lh\x00(" + b"K\x01" * 10_000 + b"e\x86."
    outer, inner = pickle.loads(data)
    assert len(outer) == 1000 and outer[0] is inner and len(inner) == 10_000
    with pytest.raises(PickleRefused, match="shared references"):
        check_shape(data, max_nodes=1_000_000)
    assert check_shape(data, max_nodes=20_000_000) > 10_000_000


def test_cycles_and_depth_are_refused():
    cyclic = []
    cyclic.append(cyclic)
    with pytest.raises(PickleRefused, match="cycle"):
        check_shape(pickle.dumps(cyclic))
    deep = 0
    for _ in range(300):
        deep = [deep]
    with pytest.raises(PickleRefused, match="deeper"):
        check_shape(pickle.dumps(deep))


@pytest.mark.parametrize(
    "header, frames, match",
    [
        ({"serializer": "dask"}, [b""], "pickled"),
        ({"serializer": "kaas-vetted", "token": "x"}, [], "pickled"),
        ("pickle", [b""], "pickled"),
        ({"serializer": "pickle", "writeable": []}, [], "no frames"),
        ({"serializer": "pickle", "writeable": [True]}, [pickle.dumps(1)], "does not match"),
        ({"serializer": "pickle", "writeable": []}, [b"\x80\x05garbage"], "not a readable pickle"),
        ({"serializer": "pickle", "writeable": []}, [pickle.dumps(1)[:-1]], "not a readable pickle"),
    ],
)
def test_malformed_messages_are_refused(header, frames, match):
    with pytest.raises(PickleRefused, match=match):
        tenant_loads(header, frames)


class BadDtype:
    def __reduce__(self):
        return np.dtype, ("no such dtype",)


def test_an_allowed_constructor_refusing_its_arguments_is_a_refusal():
    with pytest.raises(PickleRefused, match="could not be unpickled: TypeError"):
        tenant_loads({"serializer": "pickle", "writeable": []}, [pickle.dumps(BadDtype(), protocol=5)])


def test_the_allowed_globals_hold_no_known_gadget():
    names = {f"{m}.{n}" for m, n in ALLOWED_GLOBALS}
    for gadget in (
        "builtins.getattr",
        "builtins.eval",
        "builtins.exec",
        "builtins.__import__",
        "os.system",
        "operator.attrgetter",
        "operator.methodcaller",
        "dask.utils.apply",
        "pickle.loads",
        "copyreg._reconstructor",
        "numpy.load",
        "numpy._core.multiarray._reconstruct",
    ):
        assert gadget not in names
    for module, _name in ALLOWED_GLOBALS:
        assert not module.startswith(("os", "sys", "subprocess", "cloudpickle", "importlib", "pickle"))


LEGIT = as_client_sends(graph_of(Task("first", REQ, x=X)))[1][0]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_no_bytes_raise_anything_but_a_refusal(data):
    try:
        tenant_loads({"serializer": "pickle", "writeable": []}, [data])
    except PickleRefused:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(bytes(LEGIT)) - 1), st.integers(0, 255), st.integers(0, len(bytes(LEGIT))))
def test_a_mutated_graph_loads_or_is_refused(position, value, cut):
    data = bytearray(bytes(LEGIT))
    data[position] = value
    try:
        tenant_loads(
            {"serializer": "pickle", "writeable": [False]},
            [bytes(data[: max(cut, position + 1)]), memoryview(X.tobytes())],
        )
    except PickleRefused:
        pass

"""The public API's docstrings: their numpydoc sections are there, and every example in them is true.

Each public object is listed with the sections its docstring must have. ``Parameters`` is required
exactly where the callable takes parameters other than ``self`` (checked against its signature).
The examples run as doctests (ELLIPSIS, NORMALIZE_WHITESPACE), each docstring in fresh, empty
globals, so every example imports what it uses. Examples that need a Dask cluster are marked
``# doctest: +SKIP``; everything else runs here, on the host device, in a few seconds.
"""

from __future__ import annotations

import doctest
import inspect
import io
import re
import tempfile

import pytest

import dask_kaas
import dask_kaas.runtime.local
from dask_kaas import kernels, runtime, store
from dask_kaas.device import HostDevice
from dask_kaas.plugins import scheduler as scheduler_plugin
from dask_kaas.plugins import worker as worker_plugin

P, R, X, E = "Parameters", "Returns", "Raises", "Examples"

BufferStore = dask_kaas.BufferStore
Request = dask_kaas.Request
Runtime = runtime.Runtime

DOCUMENTED = [
    # the function repository
    (dask_kaas.FunctionRepository, {P, E}),
    # the request model
    (dask_kaas.Request, {P, X, E}),
    (Request.__call__, {P, R, X, E}),
    (Request.check_inputs, {P, R, X, E}),
    (Request.to_dict, {R, E}),
    (Request.to_json, {P, R, E}),
    (Request.from_dict, {P, R, X, E}),
    (Request.from_json, {P, R, X, E}),
    (dask_kaas.BufferSpec, {P, X, E}),
    (dask_kaas.KernelSpec, {P, X, E}),
    (dask_kaas.Literal, {P, X, E}),
    # kernel libraries
    (dask_kaas.Library, {P, X, E}),
    (dask_kaas.register_library, {P, R, X, E}),
    (kernels.resolve_library, {P, R, X, E}),
    # the store
    (dask_kaas.BufferStore, {P, X, E}),
    (BufferStore.put, {P, R, X, E}),
    (BufferStore.get, {P, R, X, E}),
    (BufferStore.get_bytes, {P, R, X, E}),
    (BufferStore.info, {P, R, X, E}),
    (BufferStore.version, {P, R, X, E}),
    (BufferStore.keys, {P, R, X, E}),
    (BufferStore.exists, {P, R, X, E}),
    (BufferStore.delete, {P, X, E}),
    (BufferStore.namespaces, {R, X, E}),
    (BufferStore.namespace, {P, R, X, E}),
    (BufferStore.resolve, {P, R, X, E}),
    (BufferStore.gc, {P, R, E}),
    (store.NamespaceView, {P, E}),
    (store.open_store, {P, R, X, E}),
    (store.list_profiles, {R, X, E}),
    (store.load_profile, {P, R, X, E}),
    (store.resolve_store, {P, R, X, E}),
    (store.profile_dirs, {R, X, E}),
    (store.default_store_spec, {R, E}),
    # running requests
    (Runtime, {P, X, E}),
    (Runtime.run, {P, R, X, E}),
    (Runtime.clear_cache, {R, E}),
    (Runtime.report, {P, R, E}),
    (dask_kaas.run_request, {P, R, X, E}),
    (runtime.local_runtime, {R, X, E}),
    # Dask
    (dask_kaas.LocalKaasCluster, {P, X, E}),
    (dask_kaas.install, {P, X, E}),
    (dask_kaas.set_policy, {P, X, E}),
    (dask_kaas.cluster_state, {P, R, X, E}),
    (dask_kaas.worker_stats, {P, R, X, E}),
    (dask_kaas.KaasWorkerPlugin, {P, X, E}),
    (dask_kaas.KaasSchedulerPlugin, {P, X, E}),
]
SECTIONS = (P, R, X, E)
IDS = [obj.__qualname__ for obj, _ in DOCUMENTED]


def sections(obj) -> set[str]:
    """The numpydoc sections of ``obj``'s own docstring (a title underlined with dashes)."""
    doc = inspect.cleandoc(obj.__doc__ or "")
    return {title for title in SECTIONS if re.search(rf"^{title}\n-{{{len(title)}}}$", doc, re.MULTILINE)}


def takes_parameters(obj) -> bool:
    """Whether calling ``obj`` (a class: building one) takes any parameter other than self/cls."""
    return any(name not in ("self", "cls") for name in inspect.signature(obj).parameters)


def test_the_list_covers_the_exported_api():
    listed = {obj for obj, _ in DOCUMENTED}
    for name in (
        "BufferSpec",
        "BufferStore",
        "KaasSchedulerPlugin",
        "KaasWorkerPlugin",
        "KernelSpec",
        "Library",
        "Literal",
        "LocalKaasCluster",
        "Request",
        "Runtime",
        "cluster_state",
        "install",
        "register_library",
        "resolve_library",
        "run_request",
        "set_policy",
        "worker_stats",
    ):
        assert getattr(dask_kaas, name) in listed, name
    assert dask_kaas.KaasWorkerPlugin is worker_plugin.KaasWorkerPlugin
    assert dask_kaas.KaasSchedulerPlugin is scheduler_plugin.KaasSchedulerPlugin


@pytest.mark.parametrize(("obj", "required"), DOCUMENTED, ids=IDS)
def test_numpydoc_sections(obj, required):
    assert (P in required) == takes_parameters(obj), (
        f"{obj.__qualname__}: Parameters is listed iff it takes parameters other than self"
    )
    missing = required - sections(obj)
    assert not missing, f"{obj.__qualname__}'s docstring lacks the section(s) {sorted(missing)}"


@pytest.fixture
def host_only(tmp_path, monkeypatch):
    """Examples' ``tempfile.mkdtemp()`` stores under this test's directory, and a request called
    outside a worker on a host device even where a GPU is present."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    local = Runtime(HostDevice(64 << 20), None)
    monkeypatch.setattr(dask_kaas.runtime.local, "_local", local)
    yield
    local.close()


@pytest.mark.parametrize("obj", [obj for obj, _ in DOCUMENTED], ids=IDS)
def test_examples_are_true(obj, host_only):
    finder = doctest.DocTestFinder(recurse=False)
    tests = [t for t in finder.find(obj, obj.__qualname__, module=inspect.getmodule(obj), globs={}) if t.examples]
    assert tests, f"{obj.__qualname__} has no examples"
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test, out=out.write)
    assert runner.failures == 0, out.getvalue()

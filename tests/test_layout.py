"""The package's shape, checked: no import circles, the layers below the plugins free of
``distributed``, distributed's internals touched only in ``dask_kaas.compat``, the scheduler side
free of the store, and every public name importable from ``dask_kaas``.

The import graph is read from the source (``ast``), deferred imports inside functions included and
``if TYPE_CHECKING:`` blocks left out (they never run). Importing ``a.b.c`` also runs ``a/__init__``
and ``a/b/__init__``, so an edge to a module is an edge to its packages too (except the importer's
own packages, which are already running, and the root package, whose names load lazily).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

import dask_kaas

PACKAGE = Path(dask_kaas.__file__).parent
ROOT = "dask_kaas"

# The layers below the plugins: what a worker's runtime, the store and the scheduling policy are made
# of. None of them imports distributed, directly or through another module of dask_kaas.
BELOW_PLUGINS = (
    "request",
    "kernels",
    "batching.queue",
    "store",
    "device",
    "runtime",
    "scheduling",
    "report",
    "eviction",
    "bounded",
    "validators",
    "names",
    "errors",
    "config",
    "files",
    "selfcheck",
    "logs",
    "text",
    "deploy.gpus",
    "functions",
    "datatypes",
    "gateway.tokens",
    "gateway.ratelimit",
    "gateway.oip",
    "gateway.oip_error",
    "gateway.body",
    "gateway.inference_stats",
    "gateway.catalog",
    "sim",
)
# The scheduler process loads these (the plugin, its policy, the dashboard page and metrics); none
# reaches the store, Zarr or fsspec.
SCHEDULER_SIDE = ("plugins.scheduler", "scheduling", "dashboard", "preload")
# Settings whose values name modules ("module" or "module:function") imported at run time: edges the
# source never shows, so the checks below read them from the defaults.
CONFIGURED_IMPORTS = (("runtime-resolvers",), ("twins", "allowed-modules"))
# The one such edge that leaves the layers below the plugins, and why: a Request called on a Dask worker
# runs on that worker's runtime, which only the worker plugin knows. It is imported the first time a
# request is called, never by importing dask_kaas.request or building a Request.
ACCEPTED_CONFIGURED = {"dask_kaas.plugins.worker"}
# Attributes of distributed's objects that only dask_kaas.compat may touch.
INTERNALS = {
    "worker_restrictions",
    "loose_restrictions",
    "_transition",
    "_transitions",
    "transitions",
    "get_comm_cost",
    "template_variables",
    "stream_handlers",
    "batched_send",
    "processing_on",
    "client_comms",
    "run_spec",
    "resource_restrictions",
    "total_resources",
    "get_current_task",
    "_collectors",
    "send_all",
    "set_resources",
    "applications",
    "extra_info",
}


# ------------------------------------------------------------------ the graph
@cache
def modules() -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (path, is_package)}`` of every module of dask_kaas."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_package)
    return out


class _Imports(ast.NodeVisitor):
    def __init__(self):
        self.nodes: list[ast.Import | ast.ImportFrom] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.nodes.append(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.nodes.append(node)


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name][0].read_text(), filename=str(modules()[name][0]))


def import_nodes(name: str) -> list[ast.Import | ast.ImportFrom]:
    visitor = _Imports()
    visitor.visit(tree(name))
    return visitor.nodes


def absolute_targets(name: str) -> set[str]:
    """Every module ``name`` imports (absolute dotted names; a ``from m import x`` gives ``m.x`` when
    that is a module, else ``m``)."""
    _, is_package = modules()[name]
    base = name.split(".") if is_package else name.split(".")[:-1]
    out = set()
    for node in import_nodes(name):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        if node.level:
            target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            out.add(sub if sub in modules() else target)
    return out


def _packages(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(2, len(parts))}


@cache
def graph() -> dict[str, frozenset[str]]:
    """``{module: modules of dask_kaas that importing it runs}`` (one step)."""
    out = {}
    for name, (_, is_package) in modules().items():
        own = _packages(name) | ({name} if is_package else set())
        edges = set()
        for target in absolute_targets(name):
            if target in modules():
                edges.add(target)
                edges |= _packages(target) - own
        edges.discard(name)
        edges.discard(ROOT)
        out[name] = frozenset(edges)
    return out


def reach(start: str) -> set[str]:
    """Every module of dask_kaas that importing ``start`` may run (``start`` included)."""
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph()[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(g: dict[str, frozenset[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def in_layer(name: str, layers) -> bool:
    return any(name == f"{ROOT}.{layer}" or name.startswith(f"{ROOT}.{layer}.") for layer in layers)


# ------------------------------------------------------------------ the checker checks itself
def test_cycle_finder_finds_circles():
    g = {
        "a": frozenset({"b"}),
        "b": frozenset({"c"}),
        "c": frozenset({"a"}),
        "d": frozenset({"a"}),
        "e": frozenset({"f"}),
        "f": frozenset({"e"}),
        "g": frozenset(),
    }
    assert sorted(cycles(g)) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": frozenset({"b"}), "b": frozenset()}) == []


def test_graph_sees_deferred_relative_and_package_imports():
    g = graph()
    assert len(modules()) > 40 and "dask_kaas.store.buffer_store" in modules()
    # a relative import of a module, and the package it sits in
    assert "dask_kaas.store.versions" in g["dask_kaas.store.buffer_store"]
    assert "dask_kaas.request" in g["dask_kaas.runtime.runtime"]
    # the root package's names load lazily: importing dask_kaas runs only config and errors
    assert g[ROOT] == {"dask_kaas.config", "dask_kaas.errors"}
    # ``if TYPE_CHECKING:`` imports never run
    assert "dask_kaas.request.model" not in g["dask_kaas.store.access"]


# ------------------------------------------------------------------ the rules
def test_no_import_circles():
    found = cycles(graph())
    assert found == [], "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_nothing_below_the_plugins_imports_distributed():
    offenders = {}
    for name in modules():
        if not in_layer(name, BELOW_PLUGINS):
            continue
        for reached in reach(name):
            hits = sorted(t for t in absolute_targets(reached) if t == "distributed" or t.startswith("distributed."))
            if hits:
                offenders[name] = (reached, hits)
    assert offenders == {}


def test_distributed_internals_only_in_compat():
    compat = f"{ROOT}.compat"
    offenders = []
    for name in modules():
        if name == compat:
            continue
        for node in import_nodes(name):  # only ``from distributed import <public name>``
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "distributed" for a in node.names):
                offenders.append(f"{name}: import {', '.join(a.name for a in node.names)}")
            if (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module or "").split(".")[0] == "distributed"
            ):
                import distributed

                bad = [a.name for a in node.names if node.module != "distributed" or a.name not in distributed.__all__]
                if bad:
                    offenders.append(f"{name}: from {node.module} import {', '.join(bad)}")
        for node in ast.walk(tree(name)):  # ``x.worker_restrictions`` and the like, but not ``compat.x``/``self.x``
            if (
                isinstance(node, ast.Attribute)
                and node.attr in INTERNALS
                and not (isinstance(node.value, ast.Name) and node.value.id in ("compat", "self"))
            ):
                offenders.append(f"{name}:{node.lineno}: .{node.attr}")
    assert offenders == []


def test_scheduler_side_never_reaches_the_store():
    for name in modules():
        if in_layer(name, SCHEDULER_SIDE):
            store = sorted(m for m in reach(name) if in_layer(m, ("store", "runtime", "device")))
            assert store == [], f"{name} reaches {store}"


def test_a_scheduler_process_loads_no_store_zarr_or_device():
    code = (
        "import sys, dask_kaas.plugins.scheduler, dask_kaas.dashboard, dask_kaas.scheduling, dask_kaas.preload; "
        "import dask_kaas; dask_kaas.KaasSchedulerPlugin; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('zarr', 'fsspec', 'cupy', 'rmm') "
        "or m.startswith(('dask_kaas.store', 'dask_kaas.runtime', 'dask_kaas.device'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def configured_specs() -> list[str]:
    import yaml

    defaults = yaml.safe_load((PACKAGE / "kaas.yaml").read_text())["kaas"]
    specs = []
    for path in CONFIGURED_IMPORTS:
        value = defaults
        for part in path:
            value = value[part]
        specs.extend(value)
    return specs


def test_modules_named_in_the_config_keep_the_layers():
    import importlib

    specs = configured_specs()
    named = {spec.partition(":")[0] for spec in specs}
    assert {"dask_kaas.plugins.worker", "dask_kaas.runtime", "dask_kaas.kernels.twins"} <= named  # seen at all
    for spec in specs:
        module, sep, function = spec.partition(":")
        assert module in modules(), spec
        if sep:
            assert callable(getattr(importlib.import_module(module), function)), spec
    crossing = {m for m in named if not in_layer(m, BELOW_PLUGINS)}
    assert crossing == ACCEPTED_CONFIGURED, f"a setting makes a lower layer import {crossing - ACCEPTED_CONFIGURED}"


def test_the_configured_edge_up_is_taken_only_when_a_request_is_called():
    code = (
        "import sys; from dask_kaas.request import Request, KernelSpec, BufferSpec; "
        "from dask_kaas.request.call import runtime_resolvers; "
        "w = BufferSpec('w', 128, ephemeral=True); "
        "Request([KernelSpec('builtin', 'fill', 1, 32, literals=[('i', 1), ('f', 1.0)], arguments=[(w, 'o')])]); "
        "import dask_kaas.runtime, dask_kaas.store, dask_kaas.scheduling; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'distributed' "
        "or m.startswith('dask_kaas.plugins'))); "
        "runtime_resolvers(); print('dask_kaas.plugins.worker' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["[]", "True"]


def test_plugins_package_imports_nothing_eagerly():
    assert graph()[f"{ROOT}.plugins"] == frozenset()


# ------------------------------------------------------------------ the public face
def test_every_public_name_resolves():
    assert sorted(dask_kaas.__all__) == sorted(set(dask_kaas.__all__))
    for name in dask_kaas.__all__:
        assert getattr(dask_kaas, name) is not None, name
        assert name in dir(dask_kaas)
    namespace: dict = {}
    exec("from dask_kaas import *", namespace)
    assert set(dask_kaas.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no_such_name"):
        dask_kaas.no_such_name  # noqa: B018


@pytest.mark.parametrize("package", ["request", "kernels", "store", "runtime", "scheduling", "device"])
def test_each_package_all_resolves(package):
    import importlib

    module = importlib.import_module(f"{ROOT}.{package}")
    for name in getattr(module, "__all__", ()):
        assert hasattr(module, name), f"{module.__name__}.{name}"


def test_public_classes_are_the_same_objects_everywhere():
    from dask_kaas.kernels import Library
    from dask_kaas.plugins.scheduler import KaasSchedulerPlugin
    from dask_kaas.plugins.worker import KaasWorkerPlugin
    from dask_kaas.request import Request
    from dask_kaas.runtime import Runtime
    from dask_kaas.store import BufferStore

    assert dask_kaas.Request is Request and dask_kaas.BufferStore is BufferStore and dask_kaas.Runtime is Runtime
    assert dask_kaas.Library is Library and dask_kaas.KaasWorkerPlugin is KaasWorkerPlugin
    assert dask_kaas.KaasSchedulerPlugin is KaasSchedulerPlugin

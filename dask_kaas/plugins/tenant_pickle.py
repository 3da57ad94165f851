"""Unpickling a tenant's graph in the locked-down mode (``kaas.scheduler.tenant-clients: requests-only``).

Dask's scheduler unpickles every graph a client sends, and a pickle can call any importable function.
A tenant's graph is unpickled here instead, before distributed sees it, in two steps:

1. **Its shape, without running anything**: the pickle's opcodes are replayed on a stack of
   placeholders (``pickletools``), which gives the tree the objects would form, shared references
   counted each time they are reached. A pickle whose tree exceeds ``max_nodes`` (a few hundred bytes
   can describe 2**100 nodes through shared references, and dask walks its tasks' arguments as
   trees) or ``max_depth``, or that refers to itself, is refused.
2. **Only the globals a graph of KaaS requests is made of** (:data:`ALLOWED_GLOBALS`): dask's graph
   expressions and task nodes, ``operator.getitem``, NumPy's dtypes and arrays from buffers, and
   dask-kaas's request, batch and spec classes, each of which validates what it is built from. Every
   other global (``os.system``, ``builtins.eval``, cloudpickle's function builders, a tenant's own
   library with Python host twins) is refused by name before anything is called.

Each allowed callable is safe to call with any arguments built from allowed objects: the set holds no
``getattr``, ``eval``, ``apply``, ``methodcaller`` or ``attrgetter``, nothing that imports, opens
files or unpickles again.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import sys
from typing import Any

from ..errors import TenantError

__all__ = [
    "ALLOWED_GLOBALS",
    "MAX_DEPTH",
    "MAX_NODES",
    "PickleRefused",
    "check_shape",
    "restricted_loads",
    "tenant_loads",
]

MAX_NODES = 5_000_000  # objects in a graph's tree, shared references counted each time
MAX_DEPTH = 200  # nesting: dask and the checks after this recurse through arguments

ALLOWED_GLOBALS = frozenset(
    {
        ("dask._expr", "Expr._reconstruct"),
        ("dask._expr", "LLGExpr"),
        ("dask._expr", "HLGExpr"),
        ("dask._expr", "_HLGExprSequence"),
        ("dask._expr", "_HLGExprGroup"),
        ("dask._task_spec", "Task"),
        ("dask._task_spec", "Alias"),
        ("dask._task_spec", "TaskRef"),
        ("dask._task_spec", "DataNode"),
        ("dask._task_spec", "List"),
        ("dask._task_spec", "Tuple"),
        ("dask._task_spec", "Dict"),
        ("dask._task_spec", "Set"),
        ("dask.highlevelgraph", "HighLevelGraph"),
        ("dask.highlevelgraph", "MaterializedLayer"),
        ("dask.delayed", "optimize"),
        ("dask.delayed", "single_key"),
        ("_operator", "getitem"),
        ("operator", "getitem"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
        ("numpy", "dtype"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.core.numeric", "_frombuffer"),
        ("dask_kaas.request.model", "_rebuild_request"),
        ("dask_kaas.request.specs", "BufferSpec"),
        ("dask_kaas.request.specs", "KernelSpec"),
        ("dask_kaas.request.specs", "Literal"),
        ("dask_kaas.request.batch", "_rebuild_batch"),
        ("dask_kaas.request.batch", "BatchCalls"),
        # what distributed's client wraps in its messages: the calling code shown on the dashboard, and
        # (in older releases) the graph itself
        ("distributed.client", "SourceCode"),
        ("distributed.protocol.serialize", "ToPickle"),
    }
)

_IN_PLACE = frozenset({"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD", "READONLY_BUFFER"})
_PUT = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET = frozenset({"GET", "BINGET", "LONG_BINGET"})


class PickleRefused(TenantError):
    """A tenant's graph that the locked-down scheduler does not unpickle."""


class _Node:
    __slots__ = ("children",)

    def __init__(self, children=()) -> None:
        self.children = list(children)


_MARK = object()


def check_shape(data: bytes | memoryview, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> int:
    """The number of objects in the tree the pickle ``data`` builds (shared references counted where
    they are reached); :class:`PickleRefused` when that exceeds ``max_nodes``, its nesting exceeds
    ``max_depth``, it refers to itself, or it is no pickle. Nothing in it runs."""
    stack: list = []
    memo: dict = {}
    root = None
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = opcode.name
            if name == "MARK":
                stack.append(_MARK)
            elif name in _PUT:
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in _GET:
                stack.append(memo[arg])
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "STOP":
                root = stack.pop()
            else:
                popped = _pop(stack, opcode.stack_before)
                if name in _IN_PLACE:
                    target = popped[0]
                    target.children.extend(popped[1:])
                    stack.append(target)
                else:
                    stack.extend(_Node(popped) for _ in opcode.stack_after)
    except PickleRefused:
        raise
    except Exception as e:
        raise PickleRefused(f"the graph is not a readable pickle ({type(e).__name__}: {e})") from None
    if not isinstance(root, _Node):
        raise PickleRefused("the graph is not a readable pickle (it builds nothing)")
    return _tree_size(root, max_nodes, max_depth)


def _pop(stack: list, before) -> list:
    """Pop what an opcode takes (its ``stack_before``), in stack order, marks dropped."""
    out: list = []
    for item in reversed(before):
        if item is pickletools.stackslice:
            while stack[-1] is not _MARK:
                out.append(stack.pop())
            stack.pop()
        elif item is pickletools.markobject:
            continue  # taken with its slice
        else:
            value = stack.pop()
            if value is _MARK:
                raise PickleRefused("the graph is not a readable pickle (a mark where an object belongs)")
            out.append(value)
    out.reverse()
    return out


def _tree_size(root: _Node, max_nodes: int, max_depth: int) -> int:
    """Objects in the tree under ``root`` (each node's count computed once; a node reached again on
    its own path is a cycle)."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    on_path: set[int] = set()
    work = [(root, False)]
    while work:
        node, done = work.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            size = 1 + sum(sizes[id(c)] for c in node.children)
            depth = 1 + max((depths[id(c)] for c in node.children), default=0)
            if size > max_nodes:
                raise PickleRefused(
                    f"the graph's objects, shared references counted where they are reached, "
                    f"exceed {max_nodes:,} (kaas.scheduler.tenant-graph-objects)"
                )
            if depth > max_depth:
                raise PickleRefused(f"the graph nests deeper than {max_depth} levels")
            sizes[key], depths[key] = size, depth
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise PickleRefused("the graph refers to itself (a cycle)")
        on_path.add(key)
        work.append((node, True))
        for child in node.children:
            if id(child) in on_path:
                raise PickleRefused("the graph refers to itself (a cycle)")
            if id(child) not in sizes:
                work.append((child, False))
    return sizes[id(root)]


# exceptions may come from these modules (the scheduler's own errors, checked by unpickling them in the
# tenant's connection): any exception class there, once the module is imported, and nothing else
EXCEPTION_MODULES = frozenset(
    {
        "builtins",
        "dask_kaas.errors",
        "distributed.core",
        "distributed.client",
        "distributed.comm.core",
        "distributed.scheduler",
        "asyncio.exceptions",
        "concurrent.futures._base",
    }
)


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module in EXCEPTION_MODULES and module in sys.modules:
            found = super().find_class(module, name)  # imported already: an attribute lookup
            if isinstance(found, type) and issubclass(found, BaseException):
                return found
        raise PickleRefused(
            f"a tenant's graph may hold KaaS requests and dask's graph nodes only, not "
            f"{module}.{name} (kaas.scheduler.tenant-clients: requests-only)"
        )

    def persistent_load(self, pid) -> Any:
        raise PickleRefused("a tenant's graph may not hold persistent references")


def tenant_loads(header: dict, frames: list, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """What distributed's ``pickle`` serializer would build from ``(header, frames)``, for a tenant:
    the shape checked first (:func:`check_shape`), then unpickled with :data:`ALLOWED_GLOBALS` only.
    Raises :class:`PickleRefused` (a :class:`~dask_kaas.errors.TenantError`) naming the reason."""
    if not isinstance(header, dict) or header.get("serializer") != "pickle":
        raise PickleRefused(
            f"a tenant's graph must come pickled, not as "
            f"{header.get('serializer') if isinstance(header, dict) else type(header).__name__!r}"
        )
    if not frames:
        raise PickleRefused("the graph is not a readable pickle (no frames)")
    data, buffers = frames[0], list(frames[1:])
    writeable = header.get("writeable") or ()
    if len(writeable) != len(buffers):
        raise PickleRefused("the graph's header does not match its frames")
    views = []
    for buffer, flag in zip(buffers, writeable):
        view = memoryview(buffer)
        views.append(memoryview(bytearray(view)) if flag and view.readonly else view if flag else view.toreadonly())
    return restricted_loads(data, views, max_nodes, max_depth)


def restricted_loads(data, buffers=(), max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Any:
    """``pickle.loads(data, buffers=buffers)`` for a tenant: the shape checked first (:func:`check_shape`),
    then unpickled with :data:`ALLOWED_GLOBALS` only; :class:`PickleRefused` naming the reason."""
    check_shape(data, max_nodes, max_depth)
    try:
        return _Unpickler(io.BytesIO(data), buffers=buffers).load()
    except PickleRefused:
        raise
    except Exception as e:
        raise PickleRefused(f"the graph could not be unpickled: {type(e).__name__}: {str(e)[:200]}") from None

"""The function repository: named, versioned KaaS requests with declared input and output tensors.

A function (a "model" in Open Inference Protocol terms) is a request plus which of its buffers a
caller passes and gets back, each with an OIP datatype and a shape. It belongs to a namespace,
whose store holds its consts; each ``put`` adds a version, and versions never change. A function of
a namespace the store lists as shared is callable by every tenant; any other only by the tenant of
its namespace. Called, it runs as the caller's tenant (fair share, admission and counters are the
caller's), while its keys still name its own namespace's buffers.

Records are documents in the store (``<namespace>/docs/functions/<name>/<version>``), so a function
lives exactly as long and as far as the buffers it reads.
"""

from __future__ import annotations

import json
import math
import numbers
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .datatypes import to_datatype, to_numpy
from .errors import FunctionNotFound, RequestError, StoreKeyError
from .names import DEFAULT_NAMESPACE, namespace_problem, show, split_key
from .request import Request
from .store import BufferStore, check_namespace
from .store.documents import create_document, delete_document, list_documents, read_document

__all__ = ["Function", "FunctionRepository", "TensorSpec", "function_from_doc"]

KIND = "functions"
MAX_DIMS = 32
_FILE_FIELDS = ("request", "inputs", "outputs", "deadline", "description")
_REQUEST_CACHE = 256  # built requests kept per function version (one per calling tenant and deadline)


def _name_problem(name) -> str | None:
    return namespace_problem(name, "function name")


@dataclass(frozen=True)
class TensorSpec:
    """An input or output of a function: a buffer's name, its OIP datatype and its shape."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    @property
    def dtype(self) -> np.dtype:
        return to_numpy(self.datatype)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _tensor(item, where: str, request: Request, names: tuple[str, ...], role: str) -> TensorSpec:
    if not isinstance(item, Mapping):
        raise RequestError(f"{where}: must be an object with name, datatype and shape, got {show(item)}")
    unknown = set(item) - {"name", "datatype", "shape"}
    if unknown:
        raise RequestError(f"{where}: unknown field(s) {sorted(map(str, unknown))}; known: name, datatype, shape")
    name = item.get("name")
    if name not in names:
        raise RequestError(f"{where}: {show(name)} is not an {role} of the request ({role}s: {', '.join(names)})")
    spec = request.buffers[name]
    datatype = item.get("datatype")
    if datatype is None:
        datatype = to_datatype(spec.dtype or np.uint8)
    elif isinstance(datatype, str) and datatype.upper() == datatype:
        try:
            to_numpy(datatype)
        except ValueError as e:
            raise RequestError(f"{where}: {e}") from None
    else:
        try:
            datatype = to_datatype(np.dtype(datatype))
        except (TypeError, ValueError) as e:
            raise RequestError(f"{where}: datatype {show(datatype)}: {e}") from None
    dtype = to_numpy(datatype)
    if spec.dtype is not None and np.dtype(spec.dtype) != dtype:
        raise RequestError(f"{where}: datatype {datatype} ({dtype}) but buffer {name!r} is {np.dtype(spec.dtype)}")
    shape = item.get("shape")
    if shape is None:
        shape = spec.shape if spec.shape is not None else (spec.size // dtype.itemsize,)
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise RequestError(f"{where}: shape must be a list of at most {MAX_DIMS} positive integers, got {show(shape)}")
    tensor = TensorSpec(name, datatype, tuple(shape))
    if tensor.nbytes != spec.size:
        raise RequestError(
            f"{where}: {datatype} {list(shape)} is {tensor.nbytes} bytes, buffer {name!r} holds {spec.size}"
        )
    return tensor


def _tensors(items, where: str, request: Request, names: tuple[str, ...], role: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list) or (role == "output" and not items):
        what = "a non-empty list" if role == "output" else "a list"
        raise RequestError(f"{where}: must be {what} of tensors, got {show(items)}")
    out = tuple(_tensor(item, f"{where}[{i}]", request, names, role) for i, item in enumerate(items))
    seen = [t.name for t in out]
    if len(set(seen)) != len(seen):
        raise RequestError(f"{where}: a buffer is listed twice ({', '.join(seen)})")
    return out


def _deadline(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise RequestError(f"{where}: must be a positive number of seconds, got {show(value)}")
    return float(value)


def _qualified(request_dict: dict, namespace: str) -> dict:
    """The request with every plain store key named in ``namespace``: callers of another tenant
    read the function's consts where its owner put them."""
    out = dict(request_dict)
    buffers = []
    for b in request_dict["buffers"]:
        b = dict(b)
        key = b.get("key") or b["name"]
        if ":" not in key:
            b["key"] = f"{namespace}:{key}"
        buffers.append(b)
    out["buffers"] = buffers
    return out


@dataclass(frozen=True)
class Function:
    """One version of a function: what :meth:`FunctionRepository.get` returns.

    Attributes
    ----------
    name, namespace : str
        The function and the namespace it belongs to (its consts are read from there).
    version : int
        From 1; every ``put`` adds one.
    request : Request
        The request as registered, without tenant or deadline.
    inputs, outputs : tuple of TensorSpec
        What a caller passes and gets back.
    deadline : float or None
        Default seconds from submission for each call (admission), unless the call gives one.
    """

    name: str
    namespace: str
    version: int
    request: Request
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    deadline: float | None = None
    description: str = ""
    created: float = 0.0
    # (namespace, key, nbytes, version) of each const as the store held it when this version was put
    consts: tuple = ()
    _built: OrderedDict = field(default_factory=OrderedDict, compare=False, hash=False, repr=False)

    @property
    def qualified_name(self) -> str:
        return f"{self.namespace}:{self.name}"

    def request_for(self, tenant: str | None, deadline: float | None = None) -> Request:
        """The request a call by ``tenant`` runs: that tenant's, reading this function's namespace."""
        deadline = self.deadline if deadline is None else deadline
        cache_key = (tenant, deadline)
        built = self._built.get(cache_key)
        if built is None:
            base = self._built.get(None)
            if base is None:
                base = Request.from_dict(_qualified(self.request.to_dict(), self.namespace))
                self._built[None] = base
            built = Request(base.kernels, n_iter=base.n_iter, tenant=tenant, deadline=deadline)
            self._built[cache_key] = built
            if len(self._built) > _REQUEST_CACHE:
                self._built.popitem(last=False)
        return built

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "namespace": self.namespace,
            "version": self.version,
            "request": self.request.to_dict(),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "created": self.created,
        }
        if self.deadline is not None:
            d["deadline"] = self.deadline
        if self.description:
            d["description"] = self.description
        if self.consts:
            d["consts"] = [list(c) for c in self.consts]
        return d

    def const_keys(self) -> list[tuple[str, str]]:
        """``(namespace, key)`` of each const the function reads (plain keys in its own namespace)."""
        return [split_key(spec.store_key, self.namespace) for spec in self.request.consts]

    def const_mismatch(self, current: Mapping[tuple[str, str], tuple[int, int] | None]) -> str | None:
        """Why the store no longer holds the consts this version was written for (None: it does):
        ``current`` maps ``(namespace, key)`` to ``(nbytes, version)`` now, or None for a missing key. A
        new version of the same size is an update (a model retrained), not a mismatch."""
        for namespace, key, nbytes, version in self.consts:
            now = current.get((namespace, key))
            if now is None:
                return (
                    f"function {self.qualified_name} (version {self.version}) reads {namespace}:{key}, which "
                    f"the store no longer holds"
                )
            if now[0] != nbytes:
                return (
                    f"function {self.qualified_name} (version {self.version}) was written for "
                    f"{namespace}:{key} of {nbytes} bytes (store version {version}); the store holds "
                    f"{now[0]} bytes (version {now[1]}) now: put the function again for the new const, or "
                    f"put back a const of {nbytes} bytes"
                )
        return None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Function:
        """A stored record back (checked again: a record is read from a store others may write)."""
        fn = function_from_doc({k: d[k] for k in _FILE_FIELDS if k in d}, name=d["name"], namespace=d["namespace"])
        return _with(
            fn,
            version=int(d["version"]),
            created=float(d.get("created", 0.0)),
            consts=_recorded_consts(d.get("consts", ())),
        )


def _recorded_consts(items) -> tuple:
    """A stored record's ``consts``, checked (a record is read from a store others may write)."""
    out = []
    for item in items if isinstance(items, (list, tuple)) else ():
        if not (
            isinstance(item, (list, tuple))
            and len(item) == 4
            and all(type(v) is str for v in item[:2])
            and all(type(v) is int and v >= 0 for v in item[2:])
        ):
            raise RequestError(
                f"a function record's consts must be [namespace, key, nbytes, version] entries, got {show(item)}"
            )
        out.append(tuple(item))
    return tuple(out)


def _with(fn: Function, **changes) -> Function:
    values = {
        k: getattr(fn, k)
        for k in (
            "name",
            "namespace",
            "version",
            "request",
            "inputs",
            "outputs",
            "deadline",
            "description",
            "created",
            "consts",
        )
    }
    values.update(changes)
    return Function(**values)


def function_from_doc(doc, *, name: str, namespace: str = DEFAULT_NAMESPACE) -> Function:
    """A function (version 0: not stored yet) from a function file's JSON.

    Parameters
    ----------
    doc : mapping
        A request dict in either format (its inputs: the ephemeral buffers it must be passed;
        its outputs: every output; dtype and shape from the buffer specs), or
        ``{"request": ..., "inputs": [...], "outputs": [...], "deadline": s, "description": "..."}``
        with tensors as ``{"name", "datatype" (OIP, e.g. "FP32", or a NumPy dtype), "shape"}``.
        A tenant or deadline inside the request itself is dropped: calls run as their caller.
    name : str
        The function's name (letters, digits, ``_ . -``, not first; at most 128 characters).
    namespace : str, default "default"
        The namespace it belongs to: its plain keys are read there.

    Returns
    -------
    Function

    Raises
    ------
    RequestError
        Naming what is wrong: the request, a tensor that is not an input or output of it, a
        datatype or shape that does not match its buffer, an ephemeral input left undeclared.
    """
    problem = _name_problem(name)
    if problem:
        raise RequestError(problem)
    check_namespace(namespace)
    if not isinstance(doc, Mapping):
        raise RequestError(f"function {name!r}: the file must hold a JSON object, got {show(doc)}")
    if "request" in doc:
        unknown = set(doc) - set(_FILE_FIELDS)
        if unknown:
            raise RequestError(
                f"function {name!r}: unknown field(s) {sorted(map(str, unknown))}; known: {', '.join(_FILE_FIELDS)}"
            )
        body = doc["request"]
    else:
        body, doc = doc, {}
    if not isinstance(body, Mapping):
        raise RequestError(f"function {name!r}: 'request' must be a request object, got {show(body)}")
    body = {k: v for k, v in body.items() if k not in ("tenant", "deadline")}
    request = Request.from_dict(body)
    if doc.get("inputs") is None:
        inputs = tuple(
            _tensor({"name": n}, f"inputs ({n})", request, request.inputs, "input")
            for n in request.inputs
            if request.buffers[n].ephemeral
        )
    else:
        inputs = _tensors(doc["inputs"], "inputs", request, request.inputs, "input")
    declared = {t.name for t in inputs}
    missing = [n for n in request.inputs if request.buffers[n].ephemeral and n not in declared]
    if missing:
        raise RequestError(
            f"function {name!r}: ephemeral input(s) {', '.join(missing)} must be declared in 'inputs' "
            "(they are in no store, so every call passes them)"
        )
    if doc.get("outputs") is None:
        outputs = tuple(
            _tensor({"name": n}, f"outputs ({n})", request, request.outputs, "output") for n in request.outputs
        )
    else:
        outputs = _tensors(doc["outputs"], "outputs", request, request.outputs, "output")
    if not outputs:
        raise RequestError(f"function {name!r}: the request has no outputs")
    description = doc.get("description", "")
    if not isinstance(description, str) or len(description) > 4096:
        raise RequestError(f"function {name!r}: description must be a string of at most 4096 characters")
    return Function(
        name=name,
        namespace=namespace,
        version=0,
        request=request,
        inputs=inputs,
        outputs=outputs,
        deadline=_deadline(doc.get("deadline"), f"function {name!r}: deadline"),
        description=description,
    )


def split_model_name(model: str) -> tuple[str | None, str]:
    """``(namespace or None, name)`` of a model name as a caller gives it: ``"name"`` or ``"ns:name"``."""
    namespace, sep, name = str(model).rpartition(":")
    return (namespace if sep else None), name


class FunctionRepository:
    """The functions of a store, by namespace, name and version.

    ``put`` checks a function file and adds a version; ``get``, ``versions``, ``names``, ``ls`` and
    ``rm`` manage them; ``find`` is what the gateway asks: the function a tenant calls by a model
    name, only among its own namespace and the store's shared ones (a private function of another
    tenant is as missing as one that does not exist).

    Parameters
    ----------
    store : BufferStore
        Where records live (beside the buffers their functions read).

    Examples
    --------
    >>> import tempfile
    >>> from dask_kaas import BufferStore
    >>> from dask_kaas.functions import FunctionRepository
    >>> repo = FunctionRepository(BufferStore(tempfile.mkdtemp(), shared=["public"]))
    >>> fill = {"buffers": [{"name": "y", "size": 16, "ephemeral": True, "dtype": "float32"}],
    ...         "kernels": [{"library": "builtin", "kernel": "fill", "grid": [1], "block": [32],
    ...                      "literals": [{"type": "i", "value": 4}, {"type": "f", "value": 2.0}],
    ...                      "arguments": [["y", "o"]]}]}
    >>> fn = repo.put("twos", fill, namespace="public")
    >>> fn.qualified_name, fn.version, [t.to_dict() for t in fn.outputs]
    ('public:twos', 1, [{'name': 'y', 'datatype': 'FP32', 'shape': [4]}])
    >>> repo.find("twos", tenant="alice").version       # shared: every tenant may call it
    1
    >>> repo.put("twos", fill, namespace="public").version
    2
    >>> repo.find("public:twos", tenant="bob", version=1).version
    1
    """

    def __init__(self, store: BufferStore) -> None:
        self.store = store

    def __repr__(self):
        return f"FunctionRepository({self.store.url!r})"

    def put(self, name: str, doc, *, namespace: str = DEFAULT_NAMESPACE) -> Function:
        """Check ``doc`` (:func:`function_from_doc`) and store it as the next version of ``name``."""
        fn = function_from_doc(doc, name=name, namespace=namespace)
        fn = _with(
            fn, consts=tuple((ns, key, *now) for (ns, key), now in self.consts_now(fn).items() if now is not None)
        )
        for _ in range(64):
            version = max(self.versions(name, namespace=namespace), default=0) + 1
            stored = _with(fn, version=version, created=time.time())
            data = json.dumps(stored.to_dict()).encode("utf-8")
            if create_document(self.store, namespace, KIND, f"{name}/{version}", data):
                return stored
        raise RequestError(f"function {name!r}: 64 other writers added a version first")

    def consts_now(self, fn: Function) -> dict[tuple[str, str], tuple[int, int] | None]:
        """``(nbytes, version)`` of each const ``fn`` reads as the store holds it now (None: missing)."""
        out: dict[tuple[str, str], tuple[int, int] | None] = {}
        for namespace, key in fn.const_keys():
            try:
                info = self.store.info(key, namespace=namespace)
            except StoreKeyError:
                out[(namespace, key)] = None
            else:
                out[(namespace, key)] = (int(info["nbytes"]), int(info["version"]))
        return out

    def versions(self, name: str, *, namespace: str = DEFAULT_NAMESPACE) -> list[int]:
        """The stored versions of ``name`` in ``namespace``, ascending (empty when there are none)."""
        if _name_problem(name):
            return []
        found = []
        for rel in list_documents(self.store, namespace, KIND, name):
            head, _, tail = rel.partition("/")
            if head == name and tail.isdigit():
                found.append(int(tail))
        return sorted(found)

    def names(self, *, namespace: str = DEFAULT_NAMESPACE) -> list[str]:
        """The names of a namespace's functions, sorted."""
        return sorted({rel.partition("/")[0] for rel in list_documents(self.store, namespace, KIND)})

    def get(self, name: str, *, namespace: str = DEFAULT_NAMESPACE, version: int | None = None) -> Function:
        """One version of a function (the newest by default); :class:`FunctionNotFound` if absent."""
        problem = _name_problem(name)
        if problem:
            raise FunctionNotFound(problem)
        if version is None:
            versions = self.versions(name, namespace=namespace)
            if not versions:
                raise FunctionNotFound(f"no function {name!r} in namespace {namespace!r}")
            version = versions[-1]
        try:
            data = read_document(self.store, namespace, KIND, f"{name}/{int(version)}")
        except StoreKeyError:
            raise FunctionNotFound(f"no version {version} of function {name!r} in namespace {namespace!r}") from None
        return Function.from_dict(json.loads(data))

    def ls(self, *, namespace: str = DEFAULT_NAMESPACE) -> list[Function]:
        """The newest version of each function of a namespace."""
        out = []
        for name in self.names(namespace=namespace):
            try:
                out.append(self.get(name, namespace=namespace))
            except FunctionNotFound:  # removed meanwhile
                pass
        return out

    def rm(self, name: str, *, namespace: str = DEFAULT_NAMESPACE, version: int | None = None) -> list[int]:
        """Remove one version, or every version; the versions removed. :class:`FunctionNotFound` if none."""
        versions = self.versions(name, namespace=namespace)
        targets = versions if version is None else [v for v in versions if v == int(version)]
        if not targets:
            what = f"function {name!r}" if version is None else f"version {version} of function {name!r}"
            raise FunctionNotFound(f"no {what} in namespace {namespace!r}")
        for v in targets:
            try:
                delete_document(self.store, namespace, KIND, f"{name}/{v}")
            except StoreKeyError:
                pass
        return targets

    def visible_namespaces(self, tenant: str | None) -> list[str]:
        """Where ``tenant`` looks for a plain function name: its own namespace, then the shared ones."""
        own = DEFAULT_NAMESPACE if tenant is None else tenant
        return [own, *(ns for ns in self.store.shared if ns != own)]

    def locate(self, model: str, tenant: str | None) -> list[tuple[str, str]]:
        """The ``(namespace, name)`` places ``tenant`` may find ``model`` in, in order of preference.

        ``"ns:name"`` names one namespace, allowed only when it is the tenant's own or shared;
        a plain name is looked up in :meth:`visible_namespaces`. Anything else: no places (a
        caller cannot tell a private function from a missing one).
        """
        namespace, name = split_model_name(model)
        if _name_problem(name):
            return []
        visible = self.visible_namespaces(tenant)
        if namespace is None:
            return [(ns, name) for ns in visible]
        return [(namespace, name)] if namespace in visible else []

    def find(self, model: str, tenant: str | None, version: int | None = None) -> Function:
        """The function ``tenant`` calls as ``model``; :class:`FunctionNotFound` for a missing or private one."""
        for namespace, name in self.locate(model, tenant):
            try:
                return self.get(name, namespace=namespace, version=version)
            except FunctionNotFound:
                continue
        what = f"model {show(model)}" + ("" if version is None else f" version {version}")
        raise FunctionNotFound(f"{what} is not found")

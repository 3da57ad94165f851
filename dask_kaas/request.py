"""The request model: buffers, kernels, literals and the request that orders them.

A :class:`Request` is immutable, hashable and cheap to pickle. It is validated
when it is built, so an invalid request never reaches a device; the inputs of a
call are checked by :meth:`Request.check_inputs` before anything is allocated.
Calling a request (``request(**inputs)``) runs it on the current worker's
runtime, which is what makes ``client.submit(request, x=x)`` work.
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np

from . import config
from .errors import RequestError
from .names import buffer_key_problem, identifier_problem, namespace_problem, show, text_problem

IO_CODES = ("i", "o", "t", "io")
LITERAL_TYPES = {
    "i": np.int32,
    "I": np.uint32,
    "q": np.int64,
    "Q": np.uint64,
    "f": np.float32,
    "d": np.float64,
}
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BYTES = 2**48          # no buffer, offset or shared-memory size beyond 256 TiB
MAX_DIMS = 32              # NumPy's own limit on a shape's dimensions
MAX_LITERALS = 64
MAX_ARGUMENTS = 256
_DTYPE_KINDS = frozenset("biufc")  # bool, ints, floats, complex: what a kernel buffer can hold


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check(problem: str | None, where: str = "") -> None:
    if problem is not None:
        raise RequestError(f"{where}: {problem}" if where else problem)


def _flag(value, what: str, where: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise RequestError(f"{where}: {what} must be true or false, got {show(value)}")
    return bool(value)


def _dtype(value, where: str) -> np.dtype:
    if isinstance(value, str) and len(value) > 32:
        raise RequestError(f"{where}: unknown dtype {show(value)}")
    try:
        np_dtype = np.dtype(value)
    except (TypeError, ValueError, SyntaxError, RecursionError):
        raise RequestError(f"{where}: unknown dtype {show(value)}") from None
    if np_dtype.kind not in _DTYPE_KINDS or np_dtype.fields is not None or np_dtype.subdtype is not None:
        raise RequestError(f"{where}: dtype {show(value)} is not a plain bool, integer, float or complex type")
    return np_dtype


# --------------------------------------------------------------------- buffers
@dataclass(frozen=True)
class BufferSpec:
    """A buffer a kernel reads or writes.

    ``size`` is in bytes. ``key`` names the buffer in the store (default: the
    name) and ``offset`` is where its bytes start inside the stored key.
    ``const`` buffers never change and stay cached on devices across requests;
    ``ephemeral`` buffers live for one request and are never persisted.
    ``dtype``/``shape`` only shape the result handed back to the caller.
    """

    name: str
    size: int
    key: str | None = None
    offset: int = 0
    ephemeral: bool = False
    const: bool = False
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    def __init__(self, name, size, *, key=None, offset=0, ephemeral=False, const=False, dtype=None, shape=None):
        _check(text_problem(name, "buffer name"))
        where = f"buffer {name!r}"
        if not _is_int(size) or not 0 < size <= MAX_BYTES:
            raise RequestError(f"{where}: size must be a positive integer number of bytes (at most 2**48), "
                               f"got {show(size)}")
        if key is not None:
            _check(buffer_key_problem(key), where)
        if not _is_int(offset) or not 0 <= offset <= MAX_BYTES:
            raise RequestError(f"{where}: offset must be a non-negative integer (at most 2**48), got {show(offset)}")
        ephemeral, const = _flag(ephemeral, "ephemeral", where), _flag(const, "const", where)
        if const and ephemeral:
            raise RequestError(f"{where}: a buffer cannot be both const (cached across requests) and ephemeral")
        np_dtype = None if dtype is None else _dtype(dtype, where)
        if shape is not None:
            if _is_int(shape):
                shape = (shape,)
            if not isinstance(shape, (tuple, list)) or len(shape) > MAX_DIMS:
                raise RequestError(f"{where}: shape must be a tuple of at most {MAX_DIMS} integers, got {show(shape)}")
            if not all(_is_int(s) and 0 <= s <= MAX_BYTES for s in shape):
                raise RequestError(f"{where}: shape must be a tuple of non-negative integers, got {show(shape)}")
            shape = tuple(int(s) for s in shape)
            itemsize = np_dtype.itemsize if np_dtype is not None else 1
            if math.prod(shape) * itemsize != size:
                raise RequestError(
                    f"{where}: shape {shape} of {np_dtype or 'uint8'} is {math.prod(shape) * itemsize} bytes, "
                    f"but size is {size}"
                )
        elif np_dtype is not None and size % np_dtype.itemsize:
            raise RequestError(f"{where}: size {size} is not a multiple of the {np_dtype} item size {np_dtype.itemsize}")
        set_ = object.__setattr__
        set_(self, "name", name)
        set_(self, "size", int(size))
        set_(self, "key", key)
        set_(self, "offset", int(offset))
        set_(self, "ephemeral", bool(ephemeral))
        set_(self, "const", bool(const))
        set_(self, "dtype", None if np_dtype is None else np_dtype.str)
        set_(self, "shape", shape)

    @property
    def store_key(self) -> str:
        """The key under which this buffer lives in the store."""
        return self.key or self.name

    def as_result(self, raw: np.ndarray) -> np.ndarray:
        """View raw uint8 bytes as this buffer's dtype and shape (uint8 when none is given)."""
        out = raw if self.dtype is None else raw.view(self.dtype)
        return out.reshape(self.shape) if self.shape is not None else out

    def to_dict(self) -> dict:
        d = {"name": self.name, "size": self.size}
        if self.key is not None:
            d["key"] = self.key
        if self.offset:
            d["offset"] = self.offset
        if self.ephemeral:
            d["ephemeral"] = True
        if self.const:
            d["const"] = True
        if self.dtype is not None:
            d["dtype"] = np.dtype(self.dtype).name
        if self.shape is not None:
            d["shape"] = list(self.shape)
        return d

    FIELDS = ("name", "size", "key", "offset", "ephemeral", "const", "dtype", "shape")

    @classmethod
    def from_dict(cls, d: Mapping) -> "BufferSpec":
        """The buffer a :meth:`to_dict` mapping (or an original KaaS buffer dict) describes."""
        if not isinstance(d, Mapping) or "name" not in d or "size" not in d:
            raise RequestError(f"a buffer must be a mapping with 'name' and 'size', got {show(d)}")
        unknown = [k for k in d if k not in cls.FIELDS]
        if unknown:
            raise RequestError(f"buffer {show(d['name'])}: unknown fields {show(unknown)}")
        return cls(d["name"], d["size"], key=d.get("key"), offset=d.get("offset", 0),
                   ephemeral=d.get("ephemeral", False), const=d.get("const", False), dtype=d.get("dtype"),
                   shape=d.get("shape"))


# -------------------------------------------------------------------- literals
@dataclass(frozen=True)
class Literal:
    """A scalar kernel parameter with a struct type code (``i I q Q f d``)."""

    type: str
    value: int | float

    def __post_init__(self):
        if not isinstance(self.type, str) or self.type not in LITERAL_TYPES:
            raise RequestError(f"unknown literal type {show(self.type)}; expected one of {' '.join(LITERAL_TYPES)}")
        np_type = LITERAL_TYPES[self.type]
        value = self.value
        if np.issubdtype(np_type, np.integer):
            if not _is_int(value):
                raise RequestError(f"literal of type {self.type!r} needs an integer, got {show(value)}")
            info = np.iinfo(np_type)
            if not info.min <= int(value) <= info.max:
                raise RequestError(
                    f"literal {show(value)} is out of range for type {self.type!r} ({info.min}..{info.max})"
                )
            object.__setattr__(self, "value", int(value))
        else:
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise RequestError(f"literal of type {self.type!r} needs a number, got {show(value)}")
            value = float(value)
            limit = float(np.finfo(np_type).max)
            if math.isfinite(value) and abs(value) > limit:
                raise RequestError(f"literal {value} is out of range for type {self.type!r} (|x| <= {limit:g})")
            object.__setattr__(self, "value", value)

    def numpy(self):
        """The value as the NumPy scalar a kernel launch passes."""
        return LITERAL_TYPES[self.type](self.value)

    def to_dict(self) -> dict:
        return {"type": self.type, "value": self.value}

    @classmethod
    def from_dict(cls, d) -> "Literal":
        if isinstance(d, Literal):
            return d
        if isinstance(d, Mapping):
            if "type" not in d or not ("value" in d or "val" in d):
                raise RequestError(f"a literal needs 'type' and 'value' (or 'val'), got {show(d)}")
            return cls(d["type"], d["value"] if "value" in d else d["val"])
        if isinstance(d, (tuple, list)) and len(d) == 2:
            return cls(d[0], d[1])
        raise RequestError(f"cannot read a literal from {show(d)}; use Literal(type, value)")


# --------------------------------------------------------------------- kernels
def _dims(value, what: str, where: str, limits: tuple[int, int, int]) -> tuple[int, int, int]:
    dims = (value,) if _is_int(value) else value
    if not isinstance(dims, (tuple, list, np.ndarray)) or not 1 <= len(dims) <= 3 \
            or not all(_is_int(d) and d > 0 for d in dims):
        raise RequestError(f"{where}: {what} must be 1 to 3 positive integers, got {show(value)}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    for axis, (d, limit) in enumerate(zip(dims, limits)):
        if d > limit:
            raise RequestError(f"{where}: {what} dimension {'xyz'[axis]} is {d}, more than the limit {limit}")
    return dims


def _library_label(library) -> str:
    return library if isinstance(library, str) else getattr(library, "name", repr(library))


@dataclass(frozen=True)
class KernelSpec:
    """One kernel launch: ``library``/``kernel`` name, launch shape, literals and buffer arguments.

    Kernel parameters are passed literals first, then buffers, in order.
    ``arguments`` are ``(BufferSpec, io)`` pairs, io one of ``i o t io``.
    """

    library: Any
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared: int = 0
    literals: tuple[Literal, ...] = ()
    arguments: tuple[tuple[BufferSpec, str], ...] = ()

    def __init__(self, library, kernel, grid, block, *, shared=0, literals=(), arguments=()):
        _check(identifier_problem(kernel, "kernel name"))
        where = f"kernel {kernel!r}"
        if isinstance(library, str):
            _check(text_problem(library, "library", 4096), where)
        grid = _dims(grid, "grid", where, MAX_GRID)
        block = _dims(block, "block", where, MAX_BLOCK)
        threads = math.prod(block)
        if threads > MAX_THREADS_PER_BLOCK:
            raise RequestError(f"{where}: block {block} has {threads} threads, more than {MAX_THREADS_PER_BLOCK}")
        if not _is_int(shared) or not 0 <= shared <= MAX_BYTES:
            raise RequestError(f"{where}: shared memory must be a non-negative integer of bytes, got {show(shared)}")
        if not isinstance(literals, (tuple, list)) or len(literals) > MAX_LITERALS:
            raise RequestError(f"{where}: literals must be a list of at most {MAX_LITERALS}, got {show(literals)}")
        if not isinstance(arguments, (tuple, list)) or len(arguments) > MAX_ARGUMENTS:
            raise RequestError(f"{where}: arguments must be a list of at most {MAX_ARGUMENTS} (BufferSpec, io) "
                               f"pairs, got {show(arguments)}")
        try:
            literals = tuple(Literal.from_dict(lit) for lit in literals)
        except RequestError as e:
            raise RequestError(f"{where}: {e}") from None
        args = []
        for arg in arguments:
            if not (isinstance(arg, (tuple, list)) and len(arg) == 2 and isinstance(arg[0], BufferSpec)):
                raise RequestError(f"{where}: arguments must be (BufferSpec, io) pairs, got {show(arg)}")
            buf, io = arg
            if not isinstance(io, str) or io not in IO_CODES:
                raise RequestError(
                    f"{where}, buffer {buf.name!r}: unknown io code {show(io)}; expected one of {', '.join(IO_CODES)}"
                )
            args.append((buf, io))
        set_ = object.__setattr__
        set_(self, "library", library)
        set_(self, "kernel", kernel)
        set_(self, "grid", grid)
        set_(self, "block", block)
        set_(self, "shared", int(shared))
        set_(self, "literals", literals)
        set_(self, "arguments", tuple(args))
        self._check_library()

    def _check_library(self):
        from .library import resolve_library

        lib = resolve_library(self.library)
        where = f"kernel {self.kernel!r} of library {lib.name!r}"
        if not lib.has_kernel(self.kernel):
            known = ", ".join(sorted(lib.kernels)) or "none declared"
            raise RequestError(f"unknown kernel {self.kernel!r} in library {lib.name!r} (it has: {known})")
        sig = lib.signature(self.kernel)
        if sig is not None:
            if not sig.scalars_first:
                order = ", ".join(f"{p.ctype}{'*' if p.pointer else ''} {p.name}" for p in sig.params)
                raise RequestError(
                    f"{where}: declares a pointer before a scalar ({order}); KaaS passes literals first, "
                    "then buffers, so every scalar parameter must come before every pointer"
                )
            codes = tuple(lit.type for lit in self.literals)
            if codes != tuple(sig.literal_codes):
                raise RequestError(
                    f"{where}: literals have types {''.join(codes) or '(none)'}, "
                    f"the kernel takes {''.join(c or '?' for c in sig.literal_codes) or '(none)'}"
                )
            if len(self.arguments) != len(sig.buffers):
                raise RequestError(
                    f"{where}: {len(self.arguments)} buffer arguments given, the kernel takes {len(sig.buffers)} "
                    f"({', '.join(p.name for p in sig.buffers)})"
                )
        lib.check_launch(self.kernel, self.grid, self.block)

    @property
    def library_name(self) -> str:
        return _library_label(self.library)

    def to_dict(self) -> dict:
        return {
            "library": self.library if isinstance(self.library, str) else self.library.to_dict(),
            "kernel": self.kernel,
            "grid": list(self.grid),
            "block": list(self.block),
            "shared": self.shared,
            "literals": [lit.to_dict() for lit in self.literals],
            "arguments": [[buf.name, io] for buf, io in self.arguments],
        }


# --------------------------------------------------------------------- request
@dataclass(frozen=True)
class BufferRole:
    """How one request uses one buffer, derived from all its kernel arguments."""

    spec: BufferSpec
    first_io: str
    reads_first: bool  # its first use reads it: it needs data from the call, the cache or the store
    written: bool      # some kernel writes it
    temporary: bool    # some use is "t": device scratch, never loaded or returned


@dataclass(frozen=True, eq=True)
class Request:
    """An ordered list of kernels, run ``n_iter`` times over, with the buffers they declare."""

    kernels: tuple[KernelSpec, ...]
    n_iter: int = 1
    tenant: str | None = None
    deadline: float | None = None
    _roles: dict = field(default=None, compare=False, hash=False, repr=False)

    def __init__(self, kernels, *, n_iter=1, tenant=None, deadline=None):
        if isinstance(kernels, KernelSpec):
            kernels = (kernels,)
        if not isinstance(kernels, (tuple, list)):
            raise RequestError(f"kernels must be a sequence of KernelSpec, got {show(kernels)}")
        kernels = tuple(kernels)
        if not kernels:
            raise RequestError("a request needs at least one kernel")
        for k in kernels:
            if not isinstance(k, KernelSpec):
                raise RequestError(f"kernels must be KernelSpec objects, got {show(k)}")
        limits = config.get("limits")
        if len(kernels) > limits["kernels"]:
            raise RequestError(f"a request has {len(kernels)} kernels, more than kaas.limits.kernels "
                               f"({limits['kernels']})")
        if not _is_int(n_iter) or n_iter < 1:
            raise RequestError(f"n_iter must be an integer >= 1, got {show(n_iter)}")
        if n_iter > limits["n-iter"] or n_iter * len(kernels) > limits["launches"]:
            raise RequestError(f"n_iter {n_iter} x {len(kernels)} kernels is beyond kaas.limits.n-iter "
                               f"({limits['n-iter']}) or kaas.limits.launches ({limits['launches']})")
        if tenant is not None:
            _check(namespace_problem(tenant, "tenant"))
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, numbers.Real)
                                     or not math.isfinite(deadline) or deadline <= 0):
            raise RequestError(f"deadline must be a positive number of seconds or None, got {show(deadline)}")
        _set_request_fields(self, kernels, int(n_iter), tenant, None if deadline is None else float(deadline))

    # -- derived views --------------------------------------------------------
    @cached_property
    def buffers(self) -> dict[str, BufferSpec]:
        """Every buffer by name, in order of first use."""
        return {name: role.spec for name, role in self._roles.items()}

    @property
    def roles(self) -> Mapping[str, BufferRole]:
        """How the request uses each buffer, by name (read only)."""
        return MappingProxyType(self._roles)

    @cached_property
    def inputs(self) -> tuple[str, ...]:
        """Buffers whose first use reads them: from the call, else the cache (const) or the store."""
        return tuple(n for n, r in self._roles.items() if r.reads_first and not r.temporary)

    @cached_property
    def outputs(self) -> tuple[str, ...]:
        """Buffers some kernel writes that are not temporaries: these come back to the caller."""
        return tuple(n for n, r in self._roles.items() if r.written and not r.temporary)

    @cached_property
    def temporaries(self) -> tuple[str, ...]:
        return tuple(n for n, r in self._roles.items() if r.temporary)

    @cached_property
    def consts(self) -> tuple[BufferSpec, ...]:
        return tuple(r.spec for r in self._roles.values() if r.spec.const)

    @cached_property
    def const_bytes(self) -> int:
        return sum(s.size for s in self.consts)

    @cached_property
    def footprint(self) -> int:
        """Device bytes the request pins while it runs."""
        return sum(r.spec.size for r in self._roles.values())

    @property
    def __name__(self) -> str:
        # Dask names tasks after their function: "kaas-sgemm-bias_relu-..." groups well on the dashboard.
        return "kaas-" + "-".join(dict.fromkeys(self.kernel_names))

    @cached_property
    def kernel_names(self) -> tuple[str, ...]:
        return tuple(k.kernel for k in self.kernels)

    # -- calling --------------------------------------------------------------
    def check_inputs(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Validate a call's inputs; return them as flat uint8 arrays by buffer name.

        An array must have the buffer's dtype when the buffer declares one (raw ``bytes`` and
        uint8 arrays are taken as the buffer's bytes); lists and scalars are converted to it.
        """
        out = {}
        for name, value in inputs.items():
            role = self._roles.get(name) if isinstance(name, str) else None
            if role is None:
                raise RequestError(
                    f"input {show(name)} is not a buffer of this request (buffers: {', '.join(self._roles)})"
                )
            if not role.reads_first or role.temporary:
                what = "a temporary" if role.temporary else "written before it is read (an output)"
                raise RequestError(f"input {name!r}: buffer {name!r} is {what}, so it takes no input data")
            raw = _as_bytes(value, name, role.spec.dtype)
            if raw.nbytes != role.spec.size:
                raise RequestError(
                    f"input {name!r}: {raw.nbytes} bytes given, buffer {name!r} is declared with size {role.spec.size}"
                )
            out[name] = raw
        for name in self.inputs:
            spec = self._roles[name].spec
            if name not in out and spec.ephemeral:
                raise RequestError(
                    f"missing input {name!r}: the buffer is ephemeral (never in the store), so the call must pass it"
                )
        return out

    def __call__(self, *args, **inputs):
        if args:
            raise RequestError(f"{self!r} takes its inputs by buffer name ({', '.join(self.inputs) or 'none'}), "
                               f"e.g. client.submit(request, x=...); got {len(args)} positional argument(s)")
        from .runtime import current_runtime

        return current_runtime().run(self, inputs)

    # -- serialisation --------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "buffers": [spec.to_dict() for spec in self.buffers.values()],
            "kernels": [k.to_dict() for k in self.kernels],
            "n_iter": self.n_iter,
        }
        if self.tenant is not None:
            d["tenant"] = self.tenant
        if self.deadline is not None:
            d["deadline"] = self.deadline
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Request":
        """:meth:`from_dict` of a JSON text."""
        from .request_dict import request_from_json

        return request_from_json(text)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Request":
        """Build a request from :meth:`to_dict` output or from the original KaaS dict format.

        The dict is read as hostile input (:mod:`dask_kaas.request_dict`): anything malformed
        is a :class:`RequestError` naming the path of the bad field, and it can name no Python
        code and no file outside ``kaas.library-paths``.
        """
        from .request_dict import request_from_dict

        return request_from_dict(d)

    def __dask_tokenize__(self):
        return ("dask_kaas.Request", self.token)

    @cached_property
    def shape_token(self) -> str:
        """Identifies requests that cost the same: same kernels, launch shapes, literals, buffer sizes and n_iter
        (not keys, names or tenant). The scheduler predicts runtimes per shape."""
        parts = [self.n_iter]
        for k in self.kernels:
            lib = k.library if isinstance(k.library, str) else k.library.hash
            parts.append([lib, k.kernel, k.grid, k.block, k.shared, [(lit.type, lit.value) for lit in k.literals],
                          [(b.size, io) for b, io in k.arguments]])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    @cached_property
    def token(self) -> str:
        """A stable content hash (libraries by their own hash)."""
        def lib_id(k):
            return k.library if isinstance(k.library, str) else k.library.hash

        payload = self.to_dict()
        for kd, k in zip(payload["kernels"], self.kernels):
            kd["library"] = lib_id(k)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def __repr__(self):
        kernels = " -> ".join(self.kernel_names)
        tenant = f", tenant={self.tenant!r}" if self.tenant else ""
        n_iter = f", n_iter={self.n_iter}" if self.n_iter != 1 else ""
        return f"Request({kernels}{n_iter}{tenant})"

    # -- notebooks (dask_kaas.jupyter) ----------------------------------------
    def _repr_html_(self) -> str:
        from .jupyter import request_html

        return request_html(self)

    def visualize(self, filename=None, format=None):
        """The kernel/buffer dataflow graph: a ``graphviz.Digraph`` where Graphviz works, else SVG."""
        from .jupyter import visualize_request

        return visualize_request(self, filename=filename, format=format)

    def __reduce__(self):
        # Unpickling skips re-validation: a pickled request was valid when built.
        # The shape token travels too: the scheduler unpickles every task's request and needs it at once.
        return (_rebuild_request, (self.kernels, self.n_iter, self.tenant, self.deadline, self.shape_token))


def _set_request_fields(req: Request, kernels, n_iter, tenant, deadline) -> None:
    set_ = object.__setattr__
    set_(req, "kernels", kernels)
    set_(req, "n_iter", n_iter)
    set_(req, "tenant", tenant)
    set_(req, "deadline", deadline)
    set_(req, "_roles", _derive_roles(kernels))


def _rebuild_request(kernels, n_iter, tenant, deadline=None, shape_token=None):
    req = object.__new__(Request)
    _set_request_fields(req, kernels, n_iter, tenant, deadline)
    if shape_token is not None:
        req.__dict__["shape_token"] = shape_token
    return req


def _as_bytes(value, name: str, dtype: str | None = None) -> np.ndarray:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return np.frombuffer(value, dtype=np.uint8)
    want = np.dtype(dtype) if dtype is not None else None
    if not isinstance(value, np.ndarray):  # lists and scalars take the buffer's dtype (uint8 without one)
        try:
            value = np.asarray(value, dtype=want or np.uint8)
        except (OverflowError, ValueError, TypeError) as e:
            raise RequestError(f"input {name!r}: cannot be read as {want or 'uint8 (the buffer declares no dtype)'}"
                               f" ({type(e).__name__}: {show(str(e), 100)})") from None
    if value.dtype.hasobject:
        raise RequestError(f"input {name!r}: object arrays cannot be copied to a device")
    if want is not None and value.dtype != want and value.dtype != np.uint8:
        raise RequestError(f"input {name!r}: {value.dtype} data for a {want} buffer; convert it "
                           f"(x.astype({want.name!r})) or pass its raw bytes")
    return np.ascontiguousarray(value).reshape(-1).view(np.uint8)


def _derive_roles(kernels: Sequence[KernelSpec]) -> dict[str, BufferRole]:
    specs: dict[str, BufferSpec] = {}
    uses: dict[str, list[str]] = {}
    for k in kernels:
        for buf, io in k.arguments:
            known = specs.get(buf.name)
            if known is None:
                specs[buf.name] = buf
                uses[buf.name] = []
            elif known != buf:
                raise RequestError(
                    f"kernel {k.kernel!r}: buffer {buf.name!r} is used with two different specs: {known} and {buf}"
                )
            uses[buf.name].append(io)
    roles = {}
    for name, spec in specs.items():
        ios = uses[name]
        temporary = "t" in ios
        written = any(io in ("o", "io") for io in ios)
        if spec.const and (written or temporary):
            raise RequestError(f"buffer {name!r} is const but a kernel writes it (io {'/'.join(ios)})")
        if written and not temporary and not spec.ephemeral and spec.offset:
            raise RequestError(
                f"buffer {name!r} is an output persisted under key {spec.store_key!r}, so it cannot have an offset "
                f"({spec.offset}); make it ephemeral or drop the offset"
            )
        roles[name] = BufferRole(spec, ios[0], ios[0] in ("i", "io"), written, temporary)
    return roles

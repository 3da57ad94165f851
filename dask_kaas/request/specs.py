"""The parts of a request: buffers, literals and kernel launches, each checked when it is built.

A :class:`BufferSpec` declares a device buffer (size, store key, const or ephemeral, dtype); a
:class:`Literal` is a scalar kernel argument; a :class:`KernelSpec` is one launch of a library
kernel over literals and buffers. All three are immutable, and raise :class:`RequestError`
naming the field when something is wrong.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import RequestError
from ..kernels.launch import MAX_BLOCK, MAX_GRID, MAX_THREADS_PER_BLOCK, dims
from ..names import buffer_key_problem, identifier_problem, show, text_problem
from ..validators import check, is_int

if TYPE_CHECKING:  # annotations only
    import os

    from numpy.typing import DTypeLike

    from ..kernels.library import Library

IO_CODES = ("i", "o", "t", "io")
LITERAL_TYPES = {
    "i": np.int32,
    "I": np.uint32,
    "q": np.int64,
    "Q": np.uint64,
    "f": np.float32,
    "d": np.float64,
}
MAX_BYTES = 2**48  # no buffer, offset or shared-memory size beyond 256 TiB
MAX_DIMS = 32  # NumPy's own limit on a shape's dimensions
MAX_LITERALS = 64
MAX_ARGUMENTS = 256
_DTYPE_KINDS = frozenset("biufc")  # bool, ints, floats, complex: what a kernel buffer can hold


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
    ``dtype``/``shape`` only shape the result handed back to the caller (and
    type the call inputs). Immutable and hashable; two specs are equal when
    every field is.

    Parameters
    ----------
    name : str
        The buffer's name inside its request: kernel arguments, call inputs
        (``request(x=...)``) and results refer to it. A non-empty string of at
        most 256 characters, valid Unicode, no control characters.
    size : int
        Bytes, positive, at most ``2**48``.
    key : str, optional
        The store key the buffer lives under (:attr:`store_key`); default: the
        name. ``"namespace:key"`` names a key of another namespace, which a
        tenant may read only when the store lists it as shared.
    offset : int, default 0
        Where the buffer's bytes start inside the stored key (at most ``2**48``).
        An output that is persisted to the store may not have one.
    ephemeral : bool, default False
        The buffer lives for one request: as an input it must be passed in the
        call, as an output it comes back to the caller and is never persisted.
    const : bool, default False
        The buffer never changes: it is read from the store and stays cached on
        the device across requests and tenants (per stored version). No kernel
        may write it.
    dtype : str, numpy.dtype or type, optional
        A plain bool, integer, float or complex type. Call inputs must have it
        (raw ``bytes`` and uint8 arrays excepted), results are viewed as it, and
        ``size`` must be a multiple of its item size. Kept as its ``str``
        (``"<f4"``). Default: raw bytes (uint8).
    shape : int or sequence of int, optional
        The shape of the result (at most 32 dimensions); its bytes at ``dtype``
        (uint8 without one) must equal ``size``.

    Raises
    ------
    RequestError
        When a field breaks a rule: a bad name, key, size, offset, dtype or
        shape, a flag that is not a bool, or ``const`` together with
        ``ephemeral``. The message names the buffer and the field.

    See Also
    --------
    KernelSpec : a launch over buffers.
    Request : the kernels of a request and the roles of their buffers.

    Examples
    --------
    >>> from dask_kaas import BufferSpec
    >>> x = BufferSpec("x", 16, dtype="float32", shape=(2, 2), ephemeral=True)
    >>> x.dtype, x.shape, x.store_key
    ('<f4', (2, 2), 'x')
    >>> w = BufferSpec("w", 4096, key="model/w", const=True)
    >>> w.store_key
    'model/w'
    >>> w.to_dict()
    {'name': 'w', 'size': 4096, 'key': 'model/w', 'const': True}
    >>> BufferSpec.from_dict(w.to_dict()) == w
    True
    >>> BufferSpec("y", 6, dtype="float32")
    Traceback (most recent call last):
    ...
    dask_kaas.errors.RequestError: buffer 'y': size 6 is not a multiple of the float32 item size 4
    """

    name: str
    size: int
    key: str | None = None
    offset: int = 0
    ephemeral: bool = False
    const: bool = False
    dtype: str | None = None
    shape: tuple[int, ...] | None = None

    def __init__(
        self,
        name: str,
        size: int,
        *,
        key: str | None = None,
        offset: int = 0,
        ephemeral: bool = False,
        const: bool = False,
        dtype: DTypeLike | None = None,
        shape: int | Sequence[int] | None = None,
    ) -> None:
        check(text_problem(name, "buffer name"))
        where = f"buffer {name!r}"
        if not is_int(size) or not 0 < size <= MAX_BYTES:
            raise RequestError(
                f"{where}: size must be a positive integer number of bytes (at most 2**48), got {show(size)}"
            )
        if key is not None:
            check(buffer_key_problem(key), where)
        if not is_int(offset) or not 0 <= offset <= MAX_BYTES:
            raise RequestError(f"{where}: offset must be a non-negative integer (at most 2**48), got {show(offset)}")
        ephemeral, const = _flag(ephemeral, "ephemeral", where), _flag(const, "const", where)
        if const and ephemeral:
            raise RequestError(f"{where}: a buffer cannot be both const (cached across requests) and ephemeral")
        if key is None and not ephemeral:  # its name is its store key: a bad one fails here, not on a worker
            problem = buffer_key_problem(name)
            if problem is not None:
                raise RequestError(f"{where}: without key=, the name is the store key: {problem}")
        np_dtype = None if dtype is None else _dtype(dtype, where)
        if shape is not None:
            if is_int(shape):
                shape = (shape,)  # type: ignore[assignment]  # is_int said so
            if not isinstance(shape, (tuple, list)) or len(shape) > MAX_DIMS:
                raise RequestError(f"{where}: shape must be a tuple of at most {MAX_DIMS} integers, got {show(shape)}")
            if not all(is_int(s) and 0 <= s <= MAX_BYTES for s in shape):
                raise RequestError(f"{where}: shape must be a tuple of non-negative integers, got {show(shape)}")
            shape = tuple(int(s) for s in shape)
            itemsize = np_dtype.itemsize if np_dtype is not None else 1
            if math.prod(shape) * itemsize != size:
                raise RequestError(
                    f"{where}: shape {shape} of {np_dtype or 'uint8'} is {math.prod(shape) * itemsize} bytes, "
                    f"but size is {size}"
                )
        elif np_dtype is not None and size % np_dtype.itemsize:
            raise RequestError(
                f"{where}: size {size} is not a multiple of the {np_dtype} item size {np_dtype.itemsize}"
            )
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
        """The fields that differ from their defaults, JSON-able (``dtype`` by name); :meth:`from_dict` reads it."""
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
    def from_dict(cls, d: Mapping) -> BufferSpec:
        """The buffer a :meth:`to_dict` mapping (or an original KaaS buffer dict) describes."""
        if not isinstance(d, Mapping) or "name" not in d or "size" not in d:
            raise RequestError(f"a buffer must be a mapping with 'name' and 'size', got {show(d)}")
        unknown = [k for k in d if k not in cls.FIELDS]
        if unknown:
            raise RequestError(f"buffer {show(d['name'])}: unknown fields {show(unknown)}")
        return cls(
            d["name"],
            d["size"],
            key=d.get("key"),
            offset=d.get("offset", 0),
            ephemeral=d.get("ephemeral", False),
            const=d.get("const", False),
            dtype=d.get("dtype"),
            shape=d.get("shape"),
        )


# -------------------------------------------------------------------- literals
@dataclass(frozen=True)
class Literal:
    """A scalar kernel parameter with a struct type code (``i I q Q f d``).

    Kernels take their literals first, then their buffers; a :class:`KernelSpec`
    checks the literals' type codes against the kernel's parsed signature.
    Immutable and hashable.

    Parameters
    ----------
    type : {"i", "I", "q", "Q", "f", "d"}
        int32, uint32, int64, uint64, float32 or float64.
    value : int or float
        An integer (not a bool) within the range of an integer type, or a real
        number for a float type (stored as ``float``; finite values beyond the
        type's largest are refused, ``inf`` and ``nan`` pass).

    Raises
    ------
    RequestError
        For an unknown type code, a value of the wrong kind, or one out of range.

    Examples
    --------
    >>> from dask_kaas import Literal
    >>> Literal("i", 1024)
    Literal(type='i', value=1024)
    >>> Literal("f", 2).value, Literal("f", 2).numpy().dtype
    (2.0, dtype('float32'))
    >>> Literal.from_dict({"type": "d", "val": 0.5})  # the original KaaS spelling
    Literal(type='d', value=0.5)
    >>> Literal("i", 2**31)
    Traceback (most recent call last):
    ...
    dask_kaas.errors.RequestError: literal 2147483648 is out of range for type 'i' (-2147483648..2147483647)
    """

    type: str
    value: int | float

    def __post_init__(self):
        if not isinstance(self.type, str) or self.type not in LITERAL_TYPES:
            raise RequestError(f"unknown literal type {show(self.type)}; expected one of {' '.join(LITERAL_TYPES)}")
        np_type = LITERAL_TYPES[self.type]
        value = self.value
        if np.issubdtype(np_type, np.integer):
            if not is_int(value):
                raise RequestError(f"literal of type {self.type!r} needs an integer, got {show(value)}")
            info = np.iinfo(np_type)  # type: ignore[type-var]  # an integer type: issubdtype said so
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
        return LITERAL_TYPES[self.type](self.value)  # type: ignore[arg-type]  # checked against the type

    def to_dict(self) -> dict:
        """``{"type": ..., "value": ...}``, which :meth:`from_dict` reads back."""
        return {"type": self.type, "value": self.value}

    @classmethod
    def from_dict(cls, d: Literal | Mapping[str, Any] | Sequence[Any]) -> Literal:
        """A literal from a :class:`Literal` (as is), ``{"type", "value"}`` (or the original KaaS
        ``{"type", "val"}``), or a ``(type, value)`` pair; :class:`RequestError` otherwise."""
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
def _library_label(library) -> str:
    return library if isinstance(library, str) else getattr(library, "name", repr(library))


@dataclass(frozen=True)
class KernelSpec:
    """One kernel launch: ``library``/``kernel`` name, launch shape, literals and buffer arguments.

    Kernel parameters are passed literals first, then buffers, in order.
    ``arguments`` are ``(BufferSpec, io)`` pairs, io one of ``i o t io``.
    The spec is checked against its library when it is built: the kernel must
    exist, and where its signature is known (parsed from CUDA source, or given
    as ``signatures=``) the literals' type codes and the number of buffers must
    match it, every scalar parameter must come before every pointer, and the
    launch must meet the kernel's constraints (the built-in ``sgemm`` needs
    block ``(16, 16)``). Immutable and hashable.

    Parameters
    ----------
    library : Library, str or os.PathLike
        A :class:`~dask_kaas.Library`, the name of a registered one (``"builtin"``),
        or a path to a ``.cu``, ``.cubin``, ``.ptx`` or ``.fatbin`` file
        (:func:`~dask_kaas.resolve_library`, which loads it here).
    kernel : str
        The kernel's name, a C identifier.
    grid, block : int or sequence of int
        1 to 3 positive integers each (missing axes are 1), within CUDA's limits;
        at most 1024 threads per block.
    shared : int, default 0
        Bytes of dynamic shared memory.
    literals : sequence of Literal, default ()
        The kernel's scalar parameters, in order (at most 64); mappings and
        ``(type, value)`` pairs are read by :meth:`Literal.from_dict`.
    arguments : sequence of (BufferSpec, str), default ()
        The kernel's pointer parameters, in order (at most 256), each with its
        io code: ``"i"`` read, ``"o"`` written, ``"io"`` both (in place), ``"t"``
        a device temporary (never loaded or returned).

    Raises
    ------
    RequestError
        For a bad name, launch shape, shared size, literal or argument; an
        unknown library or kernel; literals or buffer counts that do not match
        the kernel's signature; or a launch that breaks its constraints. The
        message names the kernel, its library and the rule.
    KernelError
        When a library given by path cannot be read.

    See Also
    --------
    BufferSpec, Literal, Request

    Examples
    --------
    >>> from dask_kaas import BufferSpec, KernelSpec, Literal
    >>> y = BufferSpec("y", 4 * 8, dtype="float32", ephemeral=True)
    >>> fill = KernelSpec("builtin", "fill", 1, 32, literals=[Literal("i", 8), Literal("f", 1.5)],
    ...                   arguments=[(y, "o")])
    >>> fill.grid, fill.block, fill.library_name
    ((1, 1, 1), (32, 1, 1), 'builtin')
    >>> KernelSpec("builtin", "fill", 1, 32, literals=[Literal("i", 8)], arguments=[(y, "o")])
    Traceback (most recent call last):
    ...
    dask_kaas.errors.RequestError: kernel 'fill' of library 'builtin': literals have types i, the kernel takes if
    """

    library: Any
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared: int = 0
    literals: tuple[Literal, ...] = ()
    arguments: tuple[tuple[BufferSpec, str], ...] = ()

    def __init__(
        self,
        library: Library | str | os.PathLike,
        kernel: str,
        grid: int | Sequence[int],
        block: int | Sequence[int],
        *,
        shared: int = 0,
        literals: Sequence[Literal | Mapping[str, Any] | Sequence[Any]] = (),
        arguments: Sequence[tuple[BufferSpec, str]] = (),
    ) -> None:
        check(identifier_problem(kernel, "kernel name"))
        where = f"kernel {kernel!r}"
        if isinstance(library, str):
            check(text_problem(library, "library", 4096), where)
        grid = dims(grid, "grid", where, MAX_GRID)
        block = dims(block, "block", where, MAX_BLOCK)
        threads = math.prod(block)
        if threads > MAX_THREADS_PER_BLOCK:
            raise RequestError(f"{where}: block {block} has {threads} threads, more than {MAX_THREADS_PER_BLOCK}")
        if not is_int(shared) or not 0 <= shared <= MAX_BYTES:
            raise RequestError(f"{where}: shared memory must be a non-negative integer of bytes, got {show(shared)}")
        if not isinstance(literals, (tuple, list)) or len(literals) > MAX_LITERALS:
            raise RequestError(f"{where}: literals must be a list of at most {MAX_LITERALS}, got {show(literals)}")
        if not isinstance(arguments, (tuple, list)) or len(arguments) > MAX_ARGUMENTS:
            raise RequestError(
                f"{where}: arguments must be a list of at most {MAX_ARGUMENTS} (BufferSpec, io) "
                f"pairs, got {show(arguments)}"
            )
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
        from ..kernels import resolve_library

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
        """The library's name (``library`` itself when it is a string)."""
        return _library_label(self.library)

    def to_dict(self) -> dict:
        """JSON-able fields; buffers by name (the request's ``to_dict`` lists them), a library object
        as its own :meth:`~dask_kaas.Library.to_dict`."""
        return {
            "library": self.library if isinstance(self.library, str) else self.library.to_dict(),
            "kernel": self.kernel,
            "grid": list(self.grid),
            "block": list(self.block),
            "shared": self.shared,
            "literals": [lit.to_dict() for lit in self.literals],
            "arguments": [[buf.name, io] for buf, io in self.arguments],
        }

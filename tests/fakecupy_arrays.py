"""A small stand-in for CuPy's arrays and memory pools, for the benchmarks' baselines without a GPU.

``ndarray`` wraps a NumPy array and behaves as CuPy's does where host code goes wrong on a GPU:
NumPy's ufuncs, operators and functions dispatch to it (``__array_ufunc__``,
``__array_function__``) only when every array operand is a device array (a NumPy array mixed in
raises CuPy's ``TypeError: Unsupported type <class 'numpy.ndarray'>``), it refuses implicit
conversion (``np.asarray``), and ``.get()`` brings it back as NumPy. Every device array draws its
bytes from the current allocator: the one ``cuda.using_allocator`` set in this thread, else the
process-wide default (``cuda.default_pool``, which counts what it hands out). A
``cuda.MemoryPool`` (every one made is in ``cuda.pools``) counts its bytes and raises
``cuda.memory.OutOfMemoryError`` past its limit. ``make()`` returns a fresh ``cupy`` module to
install with ``monkeypatch.setitem(sys.modules, "cupy", make())``. Nothing is computed on a GPU.
"""

from __future__ import annotations

import contextlib
import threading
import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin


class OutOfMemoryError(MemoryError):
    """Like ``cupy.cuda.memory.OutOfMemoryError``."""


class Memory:
    """One allocation; its bytes go back to the pool when the array holding it is gone."""

    def __init__(self, pool: MemoryPool, nbytes: int):
        self.pool, self.nbytes = pool, nbytes

    def __del__(self):
        self.pool.used -= self.nbytes


class MemoryPool:
    """``cupy.cuda.MemoryPool``: ``handed_out`` bytes in all, ``used`` now, ``limit`` (0: none)."""

    def __init__(self, register: bool = True):
        self.limit = self.used = self.handed_out = 0
        if register:
            _state.pools.append(self)

    def malloc(self, nbytes: int) -> Memory:
        if self.limit and self.used + nbytes > self.limit:
            raise OutOfMemoryError(
                f"Out of memory allocating {nbytes:,} bytes (allocated so far: "
                f"{self.used:,} bytes, limit set to: {self.limit:,} bytes)."
            )
        self.used += nbytes
        self.handed_out += nbytes
        return Memory(self, nbytes)

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        self.limit = int(size or 0)

    def get_limit(self) -> int:
        return self.limit

    def used_bytes(self) -> int:
        return self.used

    def free_all_blocks(self) -> None:
        pass


class _State:
    def __init__(self):
        self.default_pool = MemoryPool(register=False)
        self.pools: list[MemoryPool] = []
        self.local = threading.local()

    def malloc(self, nbytes: int) -> Memory:
        allocator = getattr(self.local, "allocator", None)
        return allocator(nbytes) if allocator is not None else self.default_pool.malloc(nbytes)


_state = _State()


def _unwrap(value):
    """NumPy values of device arrays, through lists, tuples and dicts; a NumPy array is refused, as by CuPy."""
    if isinstance(value, ndarray):
        return value._array
    if isinstance(value, np.ndarray):
        raise TypeError(f"Unsupported type {type(value)}")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _wrap(value):
    """Results on the device: arrays and NumPy scalars (CuPy returns 0-d arrays) become device arrays."""
    if isinstance(value, (np.ndarray, np.generic)):
        return ndarray(np.asarray(value))
    if isinstance(value, (list, tuple)):
        return type(value)(_wrap(v) for v in value)
    return value


class ndarray(NDArrayOperatorsMixin):
    """A device array: NumPy data held "on the GPU", its bytes drawn from the current allocator."""

    def __init__(self, array: np.ndarray):
        self._array = array
        self._memory = _state.malloc(array.nbytes)

    shape = property(lambda self: self._array.shape)
    dtype = property(lambda self: self._array.dtype)
    nbytes = property(lambda self: self._array.nbytes)
    ndim = property(lambda self: self._array.ndim)
    size = property(lambda self: self._array.size)

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct "
            "a NumPy array explicitly."
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)))

    def __array_function__(self, func, types, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getitem__(self, index):
        return _wrap(self._array[_unwrap(index)])

    def __setitem__(self, index, value):
        self._array[_unwrap(index)] = _unwrap(value)

    def __len__(self):
        return len(self._array)

    def astype(self, dtype, **kwargs):
        return ndarray(self._array.astype(dtype, **kwargs))

    def reshape(self, *shape, **kwargs):
        return ndarray(self._array.reshape(*shape, **kwargs))

    def get(self) -> np.ndarray:
        return self._array.copy()

    def __getattr__(self, name):
        # the rest of NumPy's array API (T, real, sum, max, item, ...), results on the device; never
        # NumPy's conversion hooks (__array_interface__, ...), which would let np.asarray through
        if name.startswith("__") or name == "_array":
            raise AttributeError(name)
        value = getattr(self._array, name)
        if callable(value):
            return lambda *args, **kwargs: _wrap(value(*_unwrap(args), **_unwrap(kwargs)))
        return _wrap(value)

    def __repr__(self):
        return f"fakecupy.ndarray({self._array!r})"


def asarray(value, dtype=None) -> ndarray:
    if isinstance(value, ndarray):
        return value if dtype is None or value.dtype == dtype else value.astype(dtype)
    return ndarray(np.array(value, dtype=dtype))


def matmul(a, b) -> ndarray:
    return _wrap(np.matmul(*_unwrap((a, b))))


@contextlib.contextmanager
def using_allocator(allocator=None):
    previous = getattr(_state.local, "allocator", None)
    _state.local.allocator = allocator
    try:
        yield
    finally:
        _state.local.allocator = previous


def make() -> types.ModuleType:
    """A fresh ``cupy`` module: new default allocator, no pools yet."""
    global _state
    _state = _State()
    cupy = types.ModuleType("cupy")
    cuda = types.ModuleType("cupy.cuda")
    cuda.memory = types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError)
    cuda.MemoryPool, cuda.using_allocator = MemoryPool, using_allocator
    cuda.default_pool, cuda.pools = _state.default_pool, _state.pools
    cupy.cuda, cupy.ndarray, cupy.asarray, cupy.matmul = cuda, ndarray, asarray, matmul
    cupy.float32 = np.float32
    return cupy

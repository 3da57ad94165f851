"""Running a kernel's NumPy host twin on host-device buffers: the buffers viewed as the kernel's
parameter types, the literals cast, everything but the buffers decided once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import KernelError, RequestError
from .launch import LaunchConfig
from .signatures import Param

if TYPE_CHECKING:
    from .library import Library

__all__ = ["prepare"]


def prepare(
    lib: Library, kernel: str, launch: LaunchConfig, literal_values: Sequence
) -> Callable[[Sequence[np.ndarray]], None]:
    """``call(buffers)`` running ``kernel``'s twin (:meth:`Library.prepare_twin`)."""
    fn = lib.twin(kernel)
    if fn is None:
        raise KernelError(
            f"kernel {kernel!r} of library {lib.name!r} has no host twin, it can only run on a CUDA device"
        )
    sig = lib.signature(kernel)
    literals = list(literal_values)
    where = f"library {lib.name!r} kernel {kernel!r}"
    dtypes = None
    if sig is not None:
        if len(literals) != len(sig.literals):
            raise RequestError(f"{where}: takes {len(sig.literals)} literal(s), got {len(literals)}")
        literals = [_cast_literal(p, v) for p, v in zip(sig.literals, literals)]
        dtypes = [p.dtype for p in sig.buffers]

    def call(buffers: Sequence[np.ndarray]) -> None:
        if dtypes is None:
            views = [_as_bytes(b) for b in buffers]
        elif len(buffers) != len(dtypes):
            raise RequestError(f"{where}: takes {len(dtypes)} buffer(s), got {len(buffers)}")
        else:
            views = [_typed_view(_as_bytes(b), d) for b, d in zip(buffers, dtypes)]
        fn(launch, *literals, *views)

    return call


def _as_bytes(buf: Any) -> np.ndarray:
    arr = np.asarray(buf)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        arr = arr.reshape(-1).view(np.uint8)  # view (not copy) for contiguous inputs
    return arr


def _typed_view(buf: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    if dtype is None or dtype == np.uint8:
        return buf
    n = buf.nbytes // dtype.itemsize
    return buf[: n * dtype.itemsize].view(dtype)


def _cast_literal(param: Param, value: Any) -> Any:
    dtype = param.dtype
    if dtype is None:
        return value
    if dtype.kind in "iu":
        return int(value)
    if dtype.kind == "b":
        return bool(value)
    return dtype.type(value)

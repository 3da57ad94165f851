"""A call's inputs as the bytes of its buffers: each named, sized and typed as the request declares,
counted before conversion (no input can make a worker allocate more than its buffer)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import RequestError
from ..names import show

__all__ = ["check_call_inputs"]


def check_call_inputs(roles: Mapping[str, Any], input_names: Sequence[str], inputs: Mapping[str, Any]) -> dict:
    """``inputs`` by buffer name as flat uint8 arrays, checked against the buffers' ``roles``
    (:meth:`dask_kaas.Request.check_inputs` documents the rules); ``input_names``: the buffers a call may
    fill."""
    out = {}
    for name, value in inputs.items():
        role = roles.get(name) if isinstance(name, str) else None
        if role is None:
            raise RequestError(f"input {show(name)} is not a buffer of this request (buffers: {', '.join(roles)})")
        if not role.reads_first or role.temporary:
            what = "a temporary" if role.temporary else "written before it is read (an output)"
            raise RequestError(f"input {name!r}: buffer {name!r} is {what}, so it takes no input data")
        raw = _as_bytes(value, name, role.spec.dtype, role.spec.size)
        if raw.nbytes != role.spec.size:
            raise RequestError(
                f"input {name!r}: {raw.nbytes} bytes given, buffer {name!r} is declared with size {role.spec.size}"
            )
        out[name] = raw
    for name in input_names:
        spec = roles[name].spec
        if name not in out and spec.ephemeral:
            raise RequestError(
                f"missing input {name!r}: the buffer is ephemeral (never in the store), so the call must pass it"
            )
    return out


def _elements_over(value, budget: int) -> bool:
    """Whether ``value`` (nested sequences, ranges, arrays, scalars) holds more than ``budget`` elements,
    counted without converting it: a ``range(10**12)`` is a few bytes until NumPy makes it an array."""
    stack, count = [value], 0
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            count += item.size
        elif isinstance(item, range):
            count += len(item)
        elif isinstance(item, (list, tuple)):
            if count + len(item) > budget:  # every element is at least one
                return True
            stack.extend(item)
            continue
        else:
            count += 1
        if count > budget:
            return True
    return False


def _as_bytes(value, name: str, dtype: str | None = None, size: int | None = None) -> np.ndarray:
    """``value`` as the bytes of a buffer of ``dtype``; ``size``: the buffer's bytes, which bounds the
    elements converted (more could only be refused after NumPy allocated them all)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return np.frombuffer(value, dtype=np.uint8)
    want = np.dtype(dtype) if dtype is not None else None
    if not isinstance(value, np.ndarray):  # lists and scalars take the buffer's dtype (uint8 without one)
        if size is not None and _elements_over(value, size // (want.itemsize if want is not None else 1)):
            raise RequestError(
                f"input {name!r}: more elements than buffer {name!r} holds ({size} bytes"
                f"{f' of {want}' if want is not None else ''})"
            )
        try:
            value = np.asarray(value, dtype=want or np.uint8)
        except (OverflowError, ValueError, TypeError) as e:
            raise RequestError(
                f"input {name!r}: cannot be read as {want or 'uint8 (the buffer declares no dtype)'}"
                f" ({type(e).__name__}: {show(str(e), 100)})"
            ) from None
    if value.dtype.hasobject:
        raise RequestError(f"input {name!r}: object arrays cannot be copied to a device")
    if want is not None and value.dtype != want and value.dtype != np.uint8:
        raise RequestError(
            f"input {name!r}: {value.dtype} data for a {want} buffer; convert it "
            f"(x.astype({want.name!r})) or pass its raw bytes"
        )
    return np.ascontiguousarray(value).reshape(-1).view(np.uint8)

"""Launch shapes: grid and block dimensions, checked once for the request model and the libraries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import RequestError
from ..names import show
from ..validators import is_int

MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)


def dims(value: Any, what: str, where: str = "", limits: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    """``value`` (an int or 1-3 ints) as a 3-tuple of positive ints, within ``limits`` per axis;
    :class:`RequestError` naming ``where`` and ``what`` otherwise."""
    prefix = f"{where}: " if where else ""
    value_dims = (value,) if is_int(value) else value
    if (
        not isinstance(value_dims, (tuple, list, np.ndarray))
        or not 1 <= len(value_dims) <= 3
        or not all(is_int(d) and d > 0 for d in value_dims)
    ):
        raise RequestError(f"{prefix}{what} must be 1 to 3 positive integers, got {show(value)}")
    out = tuple(int(d) for d in value_dims) + (1,) * (3 - len(value_dims))
    for axis, (d, limit) in enumerate(zip(out, limits or (None, None, None))):
        if limit is not None and d > limit:
            raise RequestError(f"{prefix}{what} dimension {'xyz'[axis]} is {d}, more than the limit {limit}")
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class LaunchConfig:
    """Grid and block shapes (always 3-tuples) and dynamic shared memory bytes of a launch."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared: int = 0

    def __post_init__(self):
        object.__setattr__(self, "grid", dims(self.grid, "grid"))
        object.__setattr__(self, "block", dims(self.block, "block"))
        object.__setattr__(self, "shared", int(self.shared))

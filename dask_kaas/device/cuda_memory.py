"""How much of a GPU one KaaS worker takes: its memory pool and its buffer cache.

Pure decisions (tested on any machine); :mod:`.cuda` applies them with RMM and CuPy.

- ``kaas.cuda.pool-size`` as a percentage is a share of the GPU's *total* memory, split
  evenly among the KaaS workers on that GPU (``kaas.cuda.workers-per-device``), so workers
  that start together get equal pools whatever order they start in. It never takes more than
  is free (less a reserve for the CUDA context); bytes given explicitly must fit.
- When the worker already has an RMM resource (``dask cuda worker --rmm-pool-size``, or
  ``rmm.reinitialize``), KaaS allocates from it instead of stacking a second pool, and takes
  its size where RMM can tell it (split among the KaaS workers of that process on that GPU).
- The buffer cache holds ``kaas.cuda.cache-capacity`` of the pool (95% by default): the rest
  absorbs the pool's rounding and fragmentation, so a request the cache thinks fits does.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import config
from ..errors import ConfigError, DeviceMemoryError

#: Left free for the CUDA context itself (modules, stacks, driver bookkeeping).
CONTEXT_RESERVE = 256 * 2**20
#: RMM's pool hands out 256-byte aligned blocks.
ALIGNMENT = 256


@dataclass(frozen=True)
class MemoryPlan:
    """What a worker's device takes: ``pool_bytes`` for all its allocations, ``capacity`` for
    its buffer cache, whether it ``reuse``\\s an RMM resource set up before it, and ``note``
    saying how the figures were reached (for logs and ``dask-kaas doctor``)."""

    pool_bytes: int
    capacity: int
    reuse: bool
    note: str


def _is_share(setting) -> bool:
    return isinstance(setting, str) and setting.strip().endswith("%")


def plan_memory(
    *,
    total: int,
    free: int,
    pool_size,
    cache_capacity,
    share: int = 1,
    existing_bytes: int | None = None,
    reuse: bool = False,
) -> MemoryPlan:
    """Decide a worker's pool and cache sizes on a GPU of ``total`` bytes with ``free`` free.

    ``pool_size``/``cache_capacity`` are the settings (bytes, ``"8GiB"``, ``"80%"``);
    ``share`` is how many KaaS workers use this GPU; ``reuse`` says an RMM resource is
    already set up, ``existing_bytes`` its size when known.
    """
    if not isinstance(share, int) or isinstance(share, bool) or share < 1:
        raise ConfigError(f"kaas.cuda.workers-per-device must be a positive integer, got {share!r}")
    if reuse and existing_bytes:
        pool, note = int(existing_bytes) // share, f"the worker's RMM resource ({existing_bytes} bytes)"
        if share > 1:
            note += f", split among {share} workers"
    else:
        pool = config.parse_size(pool_size, total=total, name="kaas.cuda.pool-size")
        note = f"kaas.cuda.pool-size {pool_size}"
        if _is_share(pool_size):
            if share > 1:
                pool //= share
                note += f" of {total} bytes, split among {share} workers"
            obtainable = max(free - CONTEXT_RESERVE, 0)
            if pool > obtainable and not reuse:
                pool, note = obtainable, note + f", cut to the {free} bytes free less {CONTEXT_RESERVE} reserved"
        elif pool > free and not reuse:
            raise DeviceMemoryError(
                f"kaas.cuda.pool-size {pool_size} asks for {pool} bytes but only {free} of "
                f"the GPU's {total} bytes are free"
            )
        if reuse:
            note = f"the worker's RMM resource (size unknown; planned as {note})"
    pool -= pool % ALIGNMENT
    if pool <= 0:
        raise DeviceMemoryError(f"no GPU memory for a pool: {free} of {total} bytes free ({note})")
    capacity = config.parse_size(cache_capacity, total=pool, name="kaas.cuda.cache-capacity")
    if capacity > pool:
        raise ConfigError(
            f"kaas.cuda.cache-capacity {cache_capacity} ({capacity} bytes) exceeds the pool ({pool} bytes, {note})"
        )
    return MemoryPlan(pool_bytes=pool, capacity=capacity, reuse=reuse, note=note)


def resource_bytes(mr) -> int | None:
    """The bytes an RMM memory resource can hand out, where RMM can tell (a pool's size, a
    limiting adaptor's limit), looking through adaptors; None otherwise."""
    seen = 0
    while mr is not None and seen < 16:
        seen += 1
        limit = getattr(mr, "get_allocation_limit", None)
        if callable(limit):
            return int(limit())
        size = getattr(mr, "pool_size", None)
        if callable(size):
            return int(size())
        upstream = getattr(mr, "get_upstream", None)
        mr = upstream() if callable(upstream) else None
    return None


def is_default_resource(mr) -> bool:
    """Whether ``mr`` is RMM's default (plain ``cudaMalloc``): nobody set one up."""
    return mr is None or type(mr).__name__ == "CudaMemoryResource"

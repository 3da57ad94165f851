"""Which cached buffers go first when a device needs room: the eviction order, as pure code.

The worker's device cache (:class:`dask_kaas.runtime.cache.BufferCache`) and the simulator's
(:mod:`dask_kaas.sim`) both ask :func:`eviction_order`; nothing here knows devices or Dask.

- ``lru``: non-const buffers first, then consts, least recently used first in each group.
- ``queue-aware``: non-const buffers first; then consts no queued request wants, fewest uses
  since they were loaded first (a const loaded for one request and not used again goes before a
  const in steady use: a scan of one-off loads cannot flush the working set), least recently used
  among equals; last, consts that queued requests want, the fewest wanting first. ``wanted`` is
  what the scheduler knows and a worker does not: how many requests waiting in the fair queue (or
  already assigned to this worker) need each const. Under a cyclic working set slightly larger
  than the cache, LRU evicts exactly the const the next request needs; the queue says which one
  that is.

Belady's offline optimum (evict the const used furthest in the future) needs the whole future,
so it lives with the simulator's figures (:func:`dask_kaas.sim.belady.belady_hits`), not here.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Protocol, TypeVar

EVICTIONS = ("lru", "queue-aware")


class Evictable(Protocol):
    key: Hashable
    const: bool
    last_use: int
    uses: int


E = TypeVar("E", bound=Evictable)


def check_eviction(name: str) -> str:
    if name not in EVICTIONS:
        raise ValueError(f"eviction must be one of {', '.join(EVICTIONS)}, got {name!r}")
    return name


def eviction_order(entries: Iterable[E], policy: str, wanted: Mapping[Hashable, int] | None = None) -> list[E]:
    """``entries`` (unpinned: the caller leaves pinned ones out) in the order they should be evicted."""
    if policy == "lru":
        return sorted(entries, key=lambda e: (e.const, e.last_use))
    wanted = wanted or {}

    def rank(e):
        n = wanted.get(e.key, 0) if e.const else 0
        return (e.const, n > 0, n, e.uses if not n else 0, e.last_use)

    return sorted(entries, key=rank)

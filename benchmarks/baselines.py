"""The fair baselines: what a Dask user writes today instead of KaaS.

A plain Dask task (no KaaS) that keeps the tenants' weights in a worker-local cache, keyed by the
store version it read (so a new version is never served stale), loads them from the same
``BufferStore`` on a miss, and computes with NumPy on the host (CuPy on a GPU: the call's inputs
copied to the GPU in the task, the weights cached in device memory, the result copied back):

- ``dask-dict``: an unbounded dict (every worker ends up holding every tenant's weights);
- ``dask-lru``: an LRU bounded by the same bytes as a KaaS device's cache.

On a GPU the baselines run in the KaaS workers' processes, whose CuPy allocator is the KaaS
device's own RMM pool; so they allocate from a CuPy ``MemoryPool`` of their own per worker
process instead (``allocator``): ``dask-lru``'s limited to the KaaS worker's pool bytes,
``dask-dict``'s unlimited (the GPU's remaining memory). ``memory_budget`` records the figures.

Version checks use ``BufferStore.cached_version``, the same (stat- or TTL-based) check KaaS uses,
so the baselines pay no more for it than KaaS does. Dask places these tasks by its own
least-loaded rule: no affinity, which is what KaaS adds.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import numpy as np

_STORES: dict = {}
_CACHES: dict = {}
_POOLS: dict = {}


class WeightCache:
    """Arrays by (namespace, key, version uid), least recently used first; ``capacity`` None: unbounded."""

    def __init__(self, capacity: int | None):
        self.capacity = capacity
        self.entries: OrderedDict = OrderedDict()
        self.used = 0

    def get(self, ident):
        value = self.entries.get(ident)
        if value is not None:
            self.entries.move_to_end(ident)
        return value

    def put(self, ident, value, nbytes: int) -> None:
        self.entries[ident] = (value, nbytes)
        self.used += nbytes
        while self.capacity is not None and self.used > self.capacity and len(self.entries) > 1:
            _, (_, old) = self.entries.popitem(last=False)
            self.used -= old


def store_for(url: str):
    """This worker's BufferStore of ``url`` (one object per URL, kept as long as the worker)."""
    from dask_kaas.store import BufferStore

    store = _STORES.get(url)
    if store is None:  # the store object (not its data) lives as long as the worker, as a service's would
        store = _STORES[url] = BufferStore(url)
    return store


def weights(url: str, namespace: str, keys: dict, capacity: int | None, device: str = "host") -> tuple[dict, int]:
    """``({name: array}, bytes loaded)``: the named keys of ``namespace``, from this worker's cache."""
    store = store_for(url)
    cache = _CACHES.get(capacity)
    if cache is None:
        cache = _CACHES[capacity] = WeightCache(capacity)
    out, loaded = {}, 0
    for name, key in keys.items():
        version = store.cached_version(key, namespace=namespace)
        ident = (namespace, key, version.uid)
        hit = cache.get(ident)
        if hit is None:
            value = store.read(version).view(version.dtype).reshape(version.shape)
            if device == "cuda":
                import cupy

                value = cupy.asarray(value)
            cache.put(ident, value, version.nbytes)
            loaded += version.nbytes
            out[name] = value
        else:
            out[name] = hit[0]
    return out, loaded


def allocator(device: str, pool_bytes: int | None):
    """A context in which this thread's device allocations come from this worker process's own
    baseline pool of ``pool_bytes`` (None: unlimited); wrap the weight loads and the compute in it.
    On the host: nothing to do."""
    if device != "cuda":
        return contextlib.nullcontext()
    import cupy

    pool = _POOLS.get(pool_bytes)
    if pool is None:
        pool = _POOLS[pool_bytes] = cupy.cuda.MemoryPool()
        if pool_bytes is not None:
            pool.set_limit(size=pool_bytes)
    return cupy.cuda.using_allocator(pool.malloc)


def to_device(value, device: str):
    """``value`` (a NumPy array) where the baseline computes: on cuda copied to the GPU, except a 0-d
    array (a scalar such as a step count), which becomes a NumPy scalar: CuPy takes those as they
    are, and reading one back from the GPU would synchronize."""
    if device != "cuda":
        return value
    import cupy

    return cupy.asarray(value) if np.ndim(value) else np.asarray(value)[()]


def to_host(value):
    """A NumPy array of ``value`` (CuPy arrays come back from the GPU)."""
    get = getattr(value, "get", None)
    return get() if callable(get) and not isinstance(value, (np.ndarray, dict)) else value


def clear(dask_worker=None) -> int:
    """Empty this worker's baseline caches (``client.run(clear)``); returns how many there were."""
    n = len(_CACHES)
    _CACHES.clear()
    for pool in _POOLS.values():  # the emptied caches' device memory goes back to the GPU
        pool.free_all_blocks()
    _POOLS.clear()
    return n


def memory_budget(stats: dict, device: str) -> dict:
    """The bytes each system may use per worker, for the results: the KaaS device's pool and cache
    capacity from ``stats`` (``dask_kaas.worker_stats``; a host device's pool is its capacity) and
    the baselines' (``dask-lru``: the same; ``dask-dict``: unbounded)."""
    pool = min(s["memory"].get("pool", s["memory"]["total"]) for s in stats.values())
    capacity = min(s["capacity"] for s in stats.values())
    if device == "cuda":
        how = (
            f"own cupy.cuda.MemoryPool per worker process, limited to the KaaS worker's pool ({pool} bytes) "
            "for dask-lru, unlimited (the GPU's remaining memory) for dask-dict; KaaS: its RMM pool"
        )
    else:
        how = (
            "host memory through NumPy, no pool: dask-lru's cache bounded by the KaaS host device's capacity, "
            "dask-dict's unbounded"
        )
    return {
        "kaas_pool_bytes": pool,
        "kaas_cache_capacity": capacity,
        "baseline_pool_bytes": pool if device == "cuda" else None,
        "baseline_cache_capacity": capacity,
        "dask_dict": "cache unbounded" + (", pool unlimited" if device == "cuda" else ""),
        "allocator": how,
    }

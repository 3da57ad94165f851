"""The fair baselines: what a Dask user writes today instead of KaaS.

A plain Dask task (no KaaS) that keeps the tenants' weights in a worker-local cache, keyed by the
store version it read (so a new version is never served stale), loads them from the same
``BufferStore`` on a miss, and computes with NumPy on the host (CuPy on a GPU, the weights then
cached in device memory):

- ``dask-dict``: an unbounded dict (every worker ends up holding every tenant's weights);
- ``dask-lru``: an LRU bounded by the same bytes as a KaaS device's cache.

Version checks use ``BufferStore.cached_version``, the same (stat- or TTL-based) check KaaS uses,
so the baselines pay no more for it than KaaS does. Dask places these tasks by its own
least-loaded rule: no affinity, which is what KaaS adds.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

_STORES: dict = {}
_CACHES: dict = {}


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


def to_host(value):
    """A NumPy array of ``value`` (CuPy arrays come back from the GPU)."""
    get = getattr(value, "get", None)
    return get() if callable(get) and not isinstance(value, (np.ndarray, dict)) else value


def clear(dask_worker=None) -> int:
    """Empty this worker's baseline caches (``client.run(clear)``); returns how many there were."""
    n = len(_CACHES)
    _CACHES.clear()
    return n

"""Device-side caches: buffers (bytes-bounded, pin-aware) and loaded kernel modules (count-bounded).

Neither cache knows anything of CUDA or of Dask. They manage opaque handles through the
callables they are given (``allocate``/``free`` for buffers, ``load``/``unload``
for modules), which makes them easy to test with fakes and to reuse on any device backend.

Both caches are thread-safe: every public method holds one re-entrant lock, including while
it calls the user's callables (so ``fill`` and ``load`` run under the lock; keep them free of
calls back into another thread that needs this cache).
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import DeviceMemoryError
from ..eviction import check_eviction, eviction_order
from ..text import exact_bytes
from .counters import Counters

Handle = TypeVar("Handle")
Module = TypeVar("Module")

__all__ = ["BufferCache", "KernelCache"]


@dataclass
class _Entry(Generic[Handle]):
    key: Hashable
    handle: Handle
    nbytes: int
    const: bool
    pins: int = 0
    last_use: int = 0
    uses: int = 0


class BufferCache(Generic[Handle]):
    """Device buffers keyed by any hashable id, never more than ``capacity`` bytes in total.

    Each entry holds ``key, handle, nbytes, const, pins, last_use``. Pinned entries
    (``pins > 0``) are in use by a running request and are never evicted or freed. Unpinned
    entries stay resident (cached) until room is needed, then are evicted non-const first,
    then const, in ``eviction``'s order (:mod:`dask_kaas.eviction`: ``lru``, least
    recently used first; ``queue-aware``, consts no queued request wants first, by uses, then
    those wanted, as the last :meth:`want` said). Nothing is written back: a const
    never changes on the device, and outputs are copied out by the request that wrote them.

    Counters (when given): only ``const=True`` acquisitions count ``hits`` /
    ``compulsory_misses`` (key never resident in this cache before) / ``capacity_misses``
    (key resident before, since evicted, dropped or cleared); misses are counted once the
    buffer is successfully inserted. Every entry evicted to make room (by ``acquire``) counts
    ``evictions`` and its size in ``bytes_evicted``; explicit frees (``drop``, ``clear``,
    ``release(keep=False)``) are not evictions.
    """

    def __init__(
        self,
        capacity: int,
        allocate: Callable[[int], Handle],
        free: Callable[[Handle], None],
        *,
        counters: Counters | None = None,
        eviction: str = "lru",
        hint_key: Callable[[Hashable], Hashable] | None = None,
    ):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.eviction = check_eviction(eviction)
        self._hint_key = hint_key or (lambda key: key)  # an entry's key -> the key hints name it by
        self._wanted: dict = {}
        self._capacity = int(capacity)
        self._allocate = allocate
        self._free = free
        self._counters = counters
        self._lock = threading.RLock()
        self._entries: OrderedDict[Hashable, _Entry[Handle]] = OrderedDict()  # LRU order, oldest first
        self._seen: set[Hashable] = set()
        self._used = 0
        self._pinned = 0  # bytes of entries with pins, kept as they change
        self._tick = itertools.count(1)

    # ------------------------------------------------------------------ properties
    @property
    def capacity(self) -> int:
        """Maximum total bytes of resident entries."""
        return self._capacity

    @property
    def used(self) -> int:
        """Total bytes of resident entries (pinned or not)."""
        with self._lock:
            return self._used

    @property
    def pinned_bytes(self) -> int:
        """Total bytes of pinned entries (those that cannot be evicted now)."""
        with self._lock:
            return self._pinned

    @property
    def free_bytes(self) -> int:
        """``capacity - used``: bytes available without evicting anything."""
        with self._lock:
            return self._capacity - self._used

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def contents(self) -> list[dict[str, Any]]:
        """A snapshot of the entries in LRU order (oldest first).

        Each row: ``key, nbytes, const, pinned (bool), pins (int)``.
        """
        with self._lock:
            return [
                {"key": e.key, "nbytes": e.nbytes, "const": e.const, "pinned": e.pins > 0, "pins": e.pins}
                for e in self._entries.values()
            ]

    # ------------------------------------------------------------------ fit checks
    def can_fit(self, nbytes_total: int) -> bool:
        """Whether new pinned buffers totalling ``nbytes_total`` bytes could fit once every
        unpinned entry were evicted. Changes nothing."""
        with self._lock:
            return nbytes_total <= self._capacity - self.pinned_bytes

    def check_fits(self, nbytes_total: int, what) -> None:
        """Raise :class:`DeviceMemoryError` unless ``can_fit(nbytes_total)``.

        ``what`` describes the demand in the message, e.g. ``"request r1 needs 3 buffers"`` (or a
        callable that returns it, called only when the message is needed).
        """
        with self._lock:
            pinned = self.pinned_bytes
            if nbytes_total > self._capacity - pinned:
                if callable(what):
                    what = what()
                raise DeviceMemoryError(
                    f"{what}: {exact_bytes(nbytes_total)} needed, but device capacity is "
                    f"{exact_bytes(self._capacity)} with {exact_bytes(pinned)} pinned "
                    f"({exact_bytes(self._capacity - pinned)} obtainable)"
                )

    # ------------------------------------------------------------------ acquire / release
    def acquire(
        self,
        key: Hashable,
        nbytes: int,
        *,
        const: bool = False,
        fill: Callable[[Handle], None] | None = None,
    ) -> tuple[Handle, bool]:
        """Pin the buffer for ``key`` and return ``(handle, hit)``.

        Hit: the key is resident with the same ``nbytes``; it is pinned once more, marked
        most recently used, and ``(handle, True)`` returned (``fill`` is not called; the entry
        keeps the ``const`` flag it was inserted with). A resident key with a different
        ``nbytes`` raises ``ValueError`` and changes nothing.

        Miss: unpinned entries are evicted (non-const first, then const, LRU first in each
        group; only as many as needed), then ``allocate(nbytes)`` and ``fill(handle)`` (if
        given) are called; if ``allocate`` raises :class:`DeviceMemoryError`, the next entry in
        eviction order is evicted and the allocation retried (counted as
        ``allocation_retries``) until it succeeds or nothing unpinned is left. The entry is
        inserted with one pin; returns ``(handle, False)``.
        If the buffer cannot fit even with every unpinned entry evicted, raises
        :class:`DeviceMemoryError` before anything changes. If ``allocate`` or ``fill``
        raises, the new allocation (if any) is freed, nothing is inserted and the error
        propagates (entries already evicted stay evicted).
        """
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes} for key {key!r}")
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if entry.nbytes != nbytes:
                    raise ValueError(
                        f"buffer {key!r} is cached with {entry.nbytes} bytes but was acquired with {nbytes} bytes"
                    )
                if not entry.pins:
                    self._pinned += entry.nbytes
                entry.pins += 1
                self._touch(entry)
                if const:
                    self._count("hits")
                return entry.handle, True

            self.check_fits(nbytes, f"buffer {key!r}")
            self._make_room(nbytes)
            handle = self._allocate_evicting(nbytes)
            if fill is not None:
                try:
                    fill(handle)
                except BaseException:
                    self._free(handle)
                    raise
            entry = _Entry(key=key, handle=handle, nbytes=nbytes, const=bool(const), pins=1)
            self._pinned += nbytes
            self._entries[key] = entry
            self._used += nbytes
            self._touch(entry)
            if const:
                self._count("capacity_misses" if key in self._seen else "compulsory_misses")
            self._seen.add(key)
            return handle, False

    def release(self, key: Hashable, *, keep: bool = True) -> None:
        """Unpin ``key`` once. ``KeyError`` if absent, ``ValueError`` if not pinned.

        With ``keep=False`` and no pins left, the entry is freed now.
        """
        with self._lock:
            entry = self._get(key)
            if entry.pins <= 0:
                raise ValueError(f"buffer {key!r} is not pinned")
            entry.pins -= 1
            if entry.pins == 0:
                self._pinned -= entry.nbytes
            if not keep and entry.pins == 0:
                self._remove(entry)

    def drop(self, key: Hashable) -> None:
        """Free the unpinned entry ``key`` now. ``KeyError`` if absent, ``ValueError`` if pinned."""
        with self._lock:
            entry = self._get(key)
            if entry.pins:
                raise ValueError(f"cannot drop buffer {key!r}: it is pinned ({entry.pins} pins)")
            self._remove(entry)

    def clear(self) -> None:
        """Free every unpinned entry, LRU first; pinned ones stay."""
        with self._lock:
            for entry in [e for e in self._entries.values() if not e.pins]:
                self._remove(entry)

    # ------------------------------------------------------------------ internals
    def _get(self, key: Hashable) -> _Entry[Handle]:
        try:
            return self._entries[key]
        except KeyError:
            raise KeyError(f"buffer {key!r} is not in the cache") from None

    def want(self, wanted: dict) -> None:
        """``{hint key: requests queued for it}`` (an entry's hint key is ``hint_key(key)``, the key
        itself by default): the scheduler's hints, what ``queue-aware`` eviction keeps longest. They
        replace the previous ones, and are matched to entries only when something must be evicted."""
        with self._lock:
            self._wanted = dict(wanted)

    def _touch(self, entry: _Entry[Handle]) -> None:
        entry.uses += 1
        entry.last_use = next(self._tick)
        self._entries.move_to_end(entry.key)

    def _count(self, name: str, n: int = 1) -> None:
        if self._counters is not None:
            self._counters.add(name, n)

    def _remove(self, entry: _Entry[Handle]) -> None:
        """Unlink and free one entry. The entry lets go of its handle too: a device whose memory
        returns to its pool with the last reference (CuPy's) gets it back now, not when the
        caller's list of victims goes."""
        del self._entries[entry.key]
        self._used -= entry.nbytes
        handle, entry.handle = entry.handle, None  # type: ignore[assignment]  # the entry is gone
        self._free(handle)

    def _victims(self) -> list[_Entry[Handle]]:
        """Unpinned entries in eviction order: non-const before const, then by the eviction policy."""
        unpinned = [e for e in self._entries.values() if not e.pins]
        wanted = None
        if self._wanted and self.eviction != "lru":
            hints, hint_key = self._wanted, self._hint_key
            wanted = {e.key: n for e in unpinned if (n := hints.get(hint_key(e.key)))}
        return eviction_order(unpinned, self.eviction, wanted)

    def _evict(self, entry: _Entry[Handle]) -> None:
        self._remove(entry)
        self._count("evictions")
        self._count("bytes_evicted", entry.nbytes)

    def _make_room(self, nbytes: int) -> None:
        """Evict unpinned entries until ``nbytes`` more fit. The caller has checked that this is feasible."""
        if self._used + nbytes <= self._capacity:
            return
        for entry in self._victims():  # sorted() is stable: LRU order within each group
            if self._used + nbytes <= self._capacity:
                break
            self._evict(entry)

    def _allocate_evicting(self, nbytes: int) -> Handle:
        """``allocate(nbytes)``; when the device refuses (``DeviceMemoryError``: a pool's rounding
        and fragmentation can refuse what the byte count says fits), evict the next victim and
        try again, until nothing unpinned is left to evict."""
        while True:
            try:
                return self._allocate(nbytes)
            except DeviceMemoryError:
                victims = self._victims()
                if not victims:
                    raise
                self._evict(victims[0])
                self._count("allocation_retries")


class KernelCache(Generic[Module]):
    """Loaded kernel modules keyed by any hashable id, at most ``max_entries``, LRU.

    ``get`` counts ``kernel_cache_hits`` / ``kernel_cache_misses`` (a miss is counted
    only once ``load`` succeeds).
    """

    def __init__(
        self,
        load: Callable[[Any], Module],
        *,
        max_entries: int = 64,
        unload: Callable[[Module], None] | None = None,
        counters: Counters | None = None,
    ):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self._load = load
        self._unload = unload
        self._counters = counters
        self.max_entries = int(max_entries)
        self._lock = threading.RLock()
        self._modules: OrderedDict[Hashable, Module] = OrderedDict()

    def get(self, key: Hashable) -> Module:
        """Return the module for ``key``, calling ``load(key)`` on a miss and then evicting
        the least recently used modules beyond ``max_entries`` (calling ``unload`` on each).
        If ``load`` raises, nothing is cached and the error propagates."""
        with self._lock:
            if key in self._modules:
                self._modules.move_to_end(key)
                self._count("kernel_cache_hits")
                return self._modules[key]
            module = self._load(key)
            self._modules[key] = module
            self._count("kernel_cache_misses")
            while len(self._modules) > self.max_entries:
                _, old = self._modules.popitem(last=False)
                if self._unload is not None:
                    self._unload(old)
            return module

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._modules

    def __len__(self) -> int:
        with self._lock:
            return len(self._modules)

    def keys(self) -> list[Hashable]:
        """Cached keys in LRU order (oldest first)."""
        with self._lock:
            return list(self._modules)

    def clear(self) -> None:
        """Unload and forget every module (LRU first)."""
        with self._lock:
            while self._modules:
                _, module = self._modules.popitem(last=False)
                if self._unload is not None:
                    self._unload(module)

    def _count(self, name: str, n: int = 1) -> None:
        if self._counters is not None:
            self._counters.add(name, n)

"""Tests for dask_kaas.runtime.cache: a model-based state machine for BufferCache, plus unit tests."""

from __future__ import annotations

import threading
from collections import OrderedDict

import pytest

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dask_kaas.errors import DeviceMemoryError
from dask_kaas.runtime.cache import BufferCache, KernelCache
from dask_kaas.runtime.counters import Counters

N_KEYS = 8
COUNTED = ("hits", "compulsory_misses", "capacity_misses", "evictions", "bytes_evicted")


class FillFailed(Exception):
    pass


class AllocFailed(Exception):
    pass


class FakeDevice:
    """Allocations as integer handles; logs every call and checks for leaks / double frees."""

    def __init__(self):
        self.live: dict[int, int] = {}  # handle -> nbytes
        self.next_handle = 0
        self.log: list[tuple] = []
        self.fail_alloc = False

    def allocate(self, nbytes):
        if self.fail_alloc:
            raise AllocFailed(nbytes)
        h = self.next_handle
        self.next_handle += 1
        self.live[h] = nbytes
        self.log.append(("alloc", h))
        return h

    def free(self, h):
        assert h in self.live, f"double free / unknown handle {h}"
        del self.live[h]
        self.log.append(("free", h))


# ---------------------------------------------------------------------------- state machine
class BufferCacheMachine(RuleBasedStateMachine):
    """Drives a BufferCache and an independent model side by side.

    Each rule first predicts, from the model, the exact device calls (as key-level events),
    the exception (if any) and the result; then calls the cache and compares.
    """

    @initialize(
        capacity=st.integers(10, 80),
        sizes=st.lists(st.integers(0, 25), min_size=N_KEYS, max_size=N_KEYS),
    )
    def setup(self, capacity, sizes):
        self.dev = FakeDevice()
        self.counters = Counters()
        self.cache = BufferCache(capacity, self.dev.allocate, self.dev.free, counters=self.counters)
        self.capacity = capacity
        self.sizes = sizes
        # model: key -> {nbytes, const, pins, handle}, in LRU order (oldest first)
        self.model: OrderedDict[int, dict] = OrderedDict()
        self.seen: set[int] = set()
        self.counts = dict.fromkeys(COUNTED, 0)
        self.handle_key: dict[int, int] = {}

    # ---- model helpers -------------------------------------------------------------------
    def _used(self):
        return sum(e["nbytes"] for e in self.model.values())

    def _pinned(self):
        return sum(e["nbytes"] for e in self.model.values() if e["pins"])

    def _model_remove(self, key, events):
        events.append(("free", key))
        del self.model[key]

    def _model_make_room(self, nbytes, capacity, events):
        victims = [k for k, e in self.model.items() if not e["pins"] and not e["const"]]
        victims += [k for k, e in self.model.items() if not e["pins"] and e["const"]]
        for k in victims:
            if self._used() + nbytes <= capacity:
                break
            size = self.model[k]["nbytes"]
            self._model_remove(k, events)
            self.counts["evictions"] += 1
            self.counts["bytes_evicted"] += size
        assert self._used() + nbytes <= capacity

    def _run(self, call, expected_events, expected_exc, current_key=None):
        """Call the cache; check the exception type and the exact sequence of device calls."""
        start = len(self.dev.log)
        result, raised = None, None
        try:
            result = call()
        except Exception as exc:
            raised = exc
        new = self.dev.log[start:]
        for ev, h in new:
            if ev == "alloc":
                self.handle_key[h] = current_key
        got_events = [(ev, self.handle_key[h]) for ev, h in new]
        if expected_exc is None:
            assert raised is None, f"unexpected {raised!r}"
        else:
            assert isinstance(raised, expected_exc), f"expected {expected_exc.__name__}, got {raised!r}"
        assert got_events == expected_events
        return result

    # ---- rules -----------------------------------------------------------------------------
    @rule(
        key=st.integers(0, N_KEYS - 1),
        const=st.booleans(),
        fill_fails=st.sampled_from([False] * 9 + [True]),
        alloc_fails=st.sampled_from([False] * 19 + [True]),
    )
    def acquire(self, key, const, fill_fails, alloc_fails):
        nbytes = self.sizes[key]
        events, exc = [], None
        entry = self.model.get(key)
        if entry is not None:
            entry["pins"] += 1
            self.model.move_to_end(key)
            if const:
                self.counts["hits"] += 1
        elif nbytes > self.capacity - self._pinned():
            exc = DeviceMemoryError
        else:
            self._model_make_room(nbytes, self.capacity, events)
            if alloc_fails:
                exc = AllocFailed
            else:
                events.append(("alloc", key))
                if fill_fails:
                    events.append(("free", key))
                    exc = FillFailed
                else:
                    self.model[key] = {"nbytes": nbytes, "const": const, "pins": 1, "handle": None}
                    if const:
                        self.counts["capacity_misses" if key in self.seen else "compulsory_misses"] += 1
                    self.seen.add(key)

        def fill(handle):
            if fill_fails:
                raise FillFailed(key)

        before = self.cache.contents()
        self.dev.fail_alloc = alloc_fails
        try:
            result = self._run(lambda: self.cache.acquire(key, nbytes, const=const, fill=fill), events, exc, key)
        finally:
            self.dev.fail_alloc = False
        if exc is DeviceMemoryError:
            assert self.cache.contents() == before, "a failed acquire changed the cache"
        if exc is None:
            handle, hit = result
            assert hit == (entry is not None)
            if entry is None:
                self.model[key]["handle"] = handle
            assert handle == self.model[key]["handle"]

    @rule(key=st.integers(0, N_KEYS - 1))
    def acquire_wrong_size(self, key):
        if key not in self.model:
            return
        before = self.cache.contents()
        self._run(lambda: self.cache.acquire(key, self.sizes[key] + 1), [], ValueError)
        assert self.cache.contents() == before

    @rule(key=st.integers(0, N_KEYS - 1), keep=st.booleans(), pick_pinned=st.integers(0, 9))
    def release(self, key, keep, pick_pinned):
        pinned = [k for k, e in self.model.items() if e["pins"]]
        if pinned and pick_pinned:  # mostly release something pinned; sometimes misuse
            key = pinned[(key + pick_pinned) % len(pinned)]
        self._release(key, keep)

    @rule(key=st.integers(0, N_KEYS - 1), const=st.booleans())
    def use(self, key, const):
        """A transient request: acquire, then release keeping the entry cached."""
        self.acquire(key, const, fill_fails=False, alloc_fails=False)
        if key in self.model and self.model[key]["pins"]:
            self._release(key, True)

    def _release(self, key, keep):
        events, exc = [], None
        entry = self.model.get(key)
        if entry is None:
            exc = KeyError
        elif entry["pins"] == 0:
            exc = ValueError
        else:
            entry["pins"] -= 1
            if not keep and entry["pins"] == 0:
                self._model_remove(key, events)
        self._run(lambda: self.cache.release(key, keep=keep), events, exc)

    @rule(key=st.integers(0, N_KEYS - 1))
    def drop(self, key):
        events, exc = [], None
        entry = self.model.get(key)
        if entry is None:
            exc = KeyError
        elif entry["pins"]:
            exc = ValueError
        else:
            self._model_remove(key, events)
        self._run(lambda: self.cache.drop(key), events, exc)

    @rule()
    def clear(self):
        events = []
        for key in [k for k, e in self.model.items() if not e["pins"]]:
            self._model_remove(key, events)
        self._run(self.cache.clear, events, None)

    @rule(extra=st.integers(0, 60))
    def can_fit(self, extra):
        assert self.cache.can_fit(extra) == (extra <= self.capacity - self._pinned())

    # ---- invariants ------------------------------------------------------------------------
    @invariant()
    def capacity_respected_and_no_leaks(self):
        if not hasattr(self, "cache"):
            return
        assert self.cache.used <= self.cache.capacity == self.capacity
        assert sum(self.dev.live.values()) == self.cache.used == self._used()
        assert set(self.dev.live) == {e["handle"] for e in self.model.values()}
        assert self.cache.pinned_bytes == self._pinned()
        assert self.cache.free_bytes == self.capacity - self._used()
        assert len(self.cache) == len(self.model)

    @invariant()
    def contents_match_model(self):
        if not hasattr(self, "cache"):
            return
        expected = [
            {"key": k, "nbytes": e["nbytes"], "const": e["const"], "pinned": e["pins"] > 0, "pins": e["pins"]}
            for k, e in self.model.items()
        ]
        assert self.cache.contents() == expected

    @invariant()
    def counters_match_model(self):
        if not hasattr(self, "cache"):
            return
        assert {name: self.counters.counts[name] for name in COUNTED} == self.counts


BufferCacheMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestBufferCacheStateful = BufferCacheMachine.TestCase


# ---------------------------------------------------------------------------- unit tests
def make_cache(capacity=100, **kw):
    dev = FakeDevice()
    counters = Counters()
    cache = BufferCache(capacity, dev.allocate, dev.free, counters=counters, **kw)
    return cache, dev, counters


def test_fill_failure_leaks_nothing():
    cache, dev, counters = make_cache()

    def bad_fill(handle):
        raise FillFailed("boom")

    with pytest.raises(FillFailed):
        cache.acquire("w", 40, const=True, fill=bad_fill)
    assert "w" not in cache and len(cache) == 0 and cache.used == 0
    assert dev.live == {}
    assert counters.counts["compulsory_misses"] == 0
    # the key was never resident, so the next successful load is still compulsory
    handle, hit = cache.acquire("w", 40, const=True)
    assert not hit and dev.live == {handle: 40}
    assert counters.counts["compulsory_misses"] == 1


def test_allocate_failure_inserts_nothing():
    cache, dev, _ = make_cache()
    dev.fail_alloc = True
    with pytest.raises(AllocFailed):
        cache.acquire("a", 10)
    assert len(cache) == 0 and cache.used == 0 and dev.live == {}


def test_fill_is_called_with_the_new_handle_only_on_miss():
    cache, _, _ = make_cache()
    filled = []
    h, hit = cache.acquire("a", 10, fill=filled.append)
    assert (hit, filled) == (False, [h])
    cache.release("a")
    h2, hit = cache.acquire("a", 10, fill=filled.append)
    assert (h2, hit, filled) == (h, True, [h])


def test_device_memory_error_names_key_and_sizes():
    cache, _, _ = make_cache(capacity=100)
    cache.acquire("big-pinned", 70)
    with pytest.raises(DeviceMemoryError) as info:
        cache.acquire("weights-7", 50)
    msg = str(info.value)
    assert "weights-7" in msg and "50 B" in msg and "100 B" in msg and "70 B" in msg
    assert "weights-7" not in cache and cache.used == 70


def test_check_fits_and_can_fit():
    cache, _, _ = make_cache(capacity=2048)
    cache.acquire("p", 1024)
    cache.acquire("u", 512)
    cache.release("u")
    assert cache.can_fit(1024) and not cache.can_fit(1025)
    cache.check_fits(1024, "request r1 needs 2 buffers")
    with pytest.raises(DeviceMemoryError, match="request r1 needs 3 buffers") as info:
        cache.check_fits(1500, "request r1 needs 3 buffers")
    msg = str(info.value)
    assert "1500 B" in msg and "2048 B" in msg and "1024 B" in msg
    assert len(cache) == 2  # checks evict nothing


def test_eviction_order_non_const_first_then_lru():
    cache, dev, counters = make_cache(capacity=40)
    for key, const in [("c1", True), ("n1", False), ("c2", True), ("n2", False)]:
        cache.acquire(key, 10, const=const)
        cache.release(key)
    cache.acquire("n1", 10)  # n1 is now the most recently used non-const
    cache.release("n1")
    cache.acquire("x", 20)  # needs two evictions: n2 (LRU non-const), then n1
    assert [r["key"] for r in cache.contents()] == ["c1", "c2", "x"]
    cache.acquire("y", 10)  # then const entries, LRU first
    assert [r["key"] for r in cache.contents()] == ["c2", "x", "y"]
    assert counters.counts["evictions"] == 3 and counters.counts["bytes_evicted"] == 30
    assert sum(dev.live.values()) == cache.used == 40


def test_counters_hits_and_misses_only_for_const():
    cache, _, counters = make_cache(capacity=10)
    cache.acquire("w", 10, const=True)
    cache.release("w")
    cache.acquire("w", 10, const=True)  # hit
    cache.release("w")
    cache.acquire("a", 10)  # non-const: not counted; evicts w
    cache.release("a")
    cache.acquire("w", 10, const=True)  # capacity miss
    c = counters.counts
    assert (c["hits"], c["compulsory_misses"], c["capacity_misses"]) == (1, 1, 1)
    assert counters.hit_rate() == pytest.approx(1 / 3)


def test_misuse_errors():
    cache, _, _ = make_cache()
    with pytest.raises(KeyError, match="nope"):
        cache.release("nope")
    cache.acquire("a", 10)
    with pytest.raises(ValueError, match="pinned"):
        cache.drop("a")
    with pytest.raises(ValueError, match=r"'a'.*10.*11"):
        cache.acquire("a", 11)
    cache.release("a")
    with pytest.raises(ValueError, match="not pinned"):
        cache.release("a")
    with pytest.raises(ValueError):
        cache.acquire("neg", -1)
    with pytest.raises(KeyError, match="gone"):
        cache.drop("gone")


def test_multiple_pins():
    cache, dev, _ = make_cache(capacity=10)
    cache.acquire("a", 10)
    cache.acquire("a", 10)
    cache.release("a", keep=False)  # one pin left: not freed
    assert "a" in cache and cache.pinned_bytes == 10
    with pytest.raises(DeviceMemoryError):
        cache.acquire("b", 1)
    cache.release("a", keep=False)
    assert "a" not in cache and dev.live == {}


def test_clear_keeps_pinned():
    cache, dev, _ = make_cache()
    cache.acquire("p", 10)
    cache.acquire("u", 10)
    cache.release("u")
    cache.clear()
    assert [r["key"] for r in cache.contents()] == ["p"] and cache.used == 10 and len(dev.live) == 1


def test_zero_byte_buffers():
    cache, _, _ = make_cache(capacity=0)
    _h, hit = cache.acquire("empty", 0)
    assert not hit and cache.used == 0
    with pytest.raises(DeviceMemoryError):
        cache.acquire("one", 1)


def test_thread_safety_smoke():
    cache, dev, _ = make_cache(capacity=200)
    errors = []

    def worker(tid):
        try:
            for i in range(300):
                key = (tid + i) % 12
                cache.acquire(key, 10 + key, const=key % 2 == 0)
                cache.contents()
                cache.release(key, keep=i % 5 != 0)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cache.used <= cache.capacity and sum(dev.live.values()) == cache.used
    assert cache.pinned_bytes == 0


# ---------------------------------------------------------------------------- KernelCache
def test_kernel_cache_lru_and_counters():
    loads, unloads = [], []
    counters = Counters()

    def load(key):
        loads.append(key)
        return f"module-{key}"

    kc = KernelCache(load, max_entries=2, unload=unloads.append, counters=counters)
    assert kc.get("a") == "module-a"
    assert kc.get("b") == "module-b"
    assert kc.get("a") == "module-a"  # hit; a is now most recent
    assert kc.get("c") == "module-c"  # evicts b
    assert "b" not in kc and "a" in kc and "c" in kc and len(kc) == 2
    assert unloads == ["module-b"]
    assert kc.keys() == ["a", "c"]
    assert loads == ["a", "b", "c"]
    assert counters.counts["kernel_cache_hits"] == 1
    assert counters.counts["kernel_cache_misses"] == 3
    kc.clear()
    assert len(kc) == 0 and sorted(unloads) == ["module-a", "module-b", "module-c"]


def test_kernel_cache_load_failure_caches_nothing():
    calls = []

    def load(key):
        calls.append(key)
        if len(calls) == 1:
            raise RuntimeError("compile failed")
        return object()

    counters = Counters()
    kc = KernelCache(load, counters=counters)
    with pytest.raises(RuntimeError, match="compile failed"):
        kc.get("k")
    assert "k" not in kc and len(kc) == 0
    kc.get("k")
    assert calls == ["k", "k"] and "k" in kc
    assert counters.counts["kernel_cache_misses"] == 1


def test_kernel_cache_rejects_bad_size():
    with pytest.raises(ValueError):
        KernelCache(lambda k: k, max_entries=0)


# ------------------------------------------------------------- a device that refuses what fits
class RoundingPool:
    """A pool of ``size`` bytes whose blocks are rounded up to ``block``: like RMM's pool, it can
    refuse an allocation that the cache's byte count says fits."""

    def __init__(self, size, block):
        self.size, self.block = size, block
        self.live: dict[int, int] = {}
        self.next_handle = 0

    def cost(self, nbytes):
        return -(-nbytes // self.block) * self.block

    def allocate(self, nbytes):
        if sum(self.live.values()) + self.cost(nbytes) > self.size:
            raise DeviceMemoryError(f"pool: {nbytes} bytes do not fit")
        self.next_handle += 1
        self.live[self.next_handle] = self.cost(nbytes)
        return self.next_handle

    def free(self, handle):
        del self.live[handle]


def test_refused_allocation_evicts_and_retries():
    pool = RoundingPool(100, 16)
    counters = Counters()
    cache = BufferCache(100, pool.allocate, pool.free, counters=counters)
    for i in range(6):  # 60 bytes by the cache's count, 96 in the pool
        cache.acquire(("w", i), 10, const=True)
        cache.release(("w", i))
    handle, hit = cache.acquire("x", 40)
    assert not hit and handle in pool.live
    assert counters.counts["allocation_retries"] == 3  # 96 - 3 * 16 + 48 <= 100
    assert [r["key"] for r in cache.contents()] == [("w", 3), ("w", 4), ("w", 5), "x"]
    assert counters.counts["evictions"] == 3 and len(pool.live) == len(cache)


class RefcountPool:
    """Device memory like CuPy's: a block returns to the pool only when the last reference to its
    array goes (``free`` drops the caller's reference, nothing more)."""

    def __init__(self, size):
        self.size, self.used = size, 0

    def allocate(self, nbytes):
        if self.used + nbytes > self.size:
            raise DeviceMemoryError(f"pool: {nbytes} bytes do not fit")
        self.used += nbytes
        return RefcountPool.Block(self, nbytes)

    def free(self, handle):
        del handle

    class Block:
        def __init__(self, pool, nbytes):
            self.pool, self.nbytes = pool, nbytes

        def __del__(self):
            self.pool.used -= self.nbytes


def test_evict_and_retry_returns_the_victims_memory_before_retrying():
    pool = RefcountPool(100)  # the pool is smaller than the cache thinks (another user holds 30 bytes)
    ballast = pool.allocate(30)
    counters = Counters()
    cache = BufferCache(100, pool.allocate, pool.free, counters=counters)
    for i in range(3):
        cache.acquire(("w", i), 20, const=True)
        cache.release(("w", i))
    assert pool.used == 90
    handle, _ = cache.acquire("x", 20)  # fits once one victim's block is really back in the pool
    assert counters.counts["evictions"] == 1 and counters.counts["allocation_retries"] == 1
    assert [r["key"] for r in cache.contents()] == [("w", 1), ("w", 2), "x"] and pool.used == 90
    cache.release("x", keep=False)
    del handle
    cache.clear()
    assert pool.used == 30
    del ballast


def test_refused_allocation_with_everything_pinned_fails_cleanly():
    pool = RoundingPool(100, 16)
    cache = BufferCache(100, pool.allocate, pool.free)
    for i in range(6):
        cache.acquire(("w", i), 10)  # all pinned
    with pytest.raises(DeviceMemoryError, match="do not fit"):
        cache.acquire("x", 40)
    assert "x" not in cache and cache.used == 60 and len(pool.live) == 6


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["acquire", "release"]), st.integers(0, 7), st.integers(1, 40)), max_size=40
    ),
    block=st.sampled_from([1, 8, 16, 32]),
)
def test_rounding_pool_never_fails_a_request_that_eviction_could_serve(ops, block):
    """Against a pool that rounds, an acquisition fails only when every other entry is pinned
    (or the byte count cannot fit at all), and the pool never holds a block the cache forgot."""
    pool = RoundingPool(128, block)
    cache = BufferCache(128, pool.allocate, pool.free)
    pins: dict[int, int] = {}
    sizes: dict[int, int] = {}
    for op, key, nbytes in ops:
        if op == "acquire":
            nbytes = sizes.setdefault(key, nbytes)
            try:
                cache.acquire(key, nbytes)
            except DeviceMemoryError:
                unpinned = [r for r in cache.contents() if not r["pinned"]]
                assert unpinned == [] or not cache.can_fit(nbytes)
                assert key not in cache or pins.get(key)
                continue
            pins[key] = pins.get(key, 0) + 1
        elif pins.get(key):
            cache.release(key)
            pins[key] -= 1
        assert len(pool.live) == len(cache) and cache.used <= 128

"""The fair baselines (``benchmarks.baselines``) on ``--device cuda``, with a stand-in for CuPy
(``fakecupy_arrays``): the workloads' ``run_cached`` and contention's ``cached_matmul`` compute on
device arrays only and give NumPy back, and their device memory comes from their own pool,
limited to the KaaS worker's pool bytes, never from the process-wide allocator (on a KaaS
worker, the KaaS device's own RMM pool)."""

from __future__ import annotations

import importlib
import os
import sys

import fakecupy_arrays
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the benchmarks package lives at the repository root, not in the installed package
    sys.path.insert(0, ROOT)

from benchmarks import baselines
from benchmarks.contention import cached_matmul
from benchmarks.workloads import WORKLOADS
from benchmarks.workloads.base import run_cached
from dask_kaas.store import BufferStore

MiB = 2**20


@pytest.fixture
def cupy(monkeypatch):
    fake = fakecupy_arrays.make()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    baselines.clear()  # this process's baseline caches, as on a fresh worker
    yield fake
    baselines.clear()


def test_the_stand_in_refuses_what_cupy_refuses(cupy):
    a = cupy.asarray(np.ones((2, 2), np.float32))
    assert isinstance(np.exp(a) @ a + 1, cupy.ndarray)
    with pytest.raises(TypeError, match=r"Unsupported type <class 'numpy.ndarray'>"):
        a @ np.ones((2, 2), np.float32)
    with pytest.raises(TypeError, match="Unsupported type"):
        np.maximum(np.ones(2), a[0])
    with pytest.raises(TypeError):
        np.asarray(a)


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_baselines_on_device(name, cupy, tmp_path):
    w = importlib.import_module(f"benchmarks.workloads.{name}").setup(True)
    store = BufferStore(f"file://{tmp_path}/store")
    for key, value in w.stored_consts().items():
        store.put(w.key(key), value, namespace=w.tenant)
    keys = {key: w.key(key) for key in w.stored_consts()}
    travelling = {k: v for k, v in w.consts.items() if k not in keys}
    for capacity in (sum(v.nbytes for v in w.stored_consts().values()), None):  # dask-lru, dask-dict
        for i, case in enumerate(w.cases):
            got = run_cached(w.numpy_fn, case, store.url, w.tenant, keys, capacity, "cuda", travelling)
            assert type(got) is np.ndarray
            w.check(i, got)  # WrongResult unless within the workload's rtol/atol of its expected output


def put_weight(tmp_path, n=256):
    store = BufferStore(f"file://{tmp_path}/store")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1024, n)).astype(np.float32)
    store.put("w", w, namespace="t0")
    return store, w, rng.standard_normal((8, 1024)).astype(np.float32)


def test_contention_baseline_on_device(cupy, tmp_path):
    store, w, x = put_weight(tmp_path)
    for capacity in (4 * MiB, None):
        got, loaded = cached_matmul(store.url, "t0", x, capacity, "cuda")
        assert type(got) is np.ndarray and loaded == w.nbytes
        np.testing.assert_allclose(got, x @ w, rtol=1e-4, atol=1e-5)
        assert cached_matmul(store.url, "t0", x, capacity, "cuda")[1] == 0  # cached on the device


def test_baselines_allocate_from_their_own_pool(cupy, tmp_path):
    store, w, x = put_weight(tmp_path)
    kaas_pool, kaas_capacity = 8 * MiB, int(0.95 * 8 * MiB)
    for _ in range(2):
        got, _ = cached_matmul(store.url, "t0", x, kaas_capacity, "cuda", kaas_pool)  # dask-lru
        np.testing.assert_allclose(got, x @ w, rtol=1e-4, atol=1e-5)
    assert cupy.cuda.default_pool.handed_out == 0  # never the process-wide allocator
    [pool] = cupy.cuda.pools  # one of the baseline's own in this process, limited to the KaaS pool's bytes
    assert pool.get_limit() == kaas_pool and pool.handed_out >= w.nbytes + 2 * x.nbytes
    assert pool.used >= w.nbytes  # the weights cached on the device, in that pool

    cached_matmul(store.url, "t0", x, None, "cuda", None)  # dask-dict: its own pool, unlimited
    assert len(cupy.cuda.pools) == 2 and cupy.cuda.pools[1].get_limit() == 0
    assert cupy.cuda.default_pool.handed_out == 0

    wl = importlib.import_module("benchmarks.workloads.sgemm").setup(True)
    for key, value in wl.stored_consts().items():
        store.put(wl.key(key), value, namespace=wl.tenant)
    keys = {key: wl.key(key) for key in wl.stored_consts()}
    before = pool.handed_out
    wl.check(0, run_cached(wl.numpy_fn, wl.cases[0], store.url, wl.tenant, keys, kaas_capacity, "cuda", {}, kaas_pool))
    assert cupy.cuda.default_pool.handed_out == 0 and pool.handed_out > before

    baselines.clear()
    with pytest.raises(cupy.cuda.memory.OutOfMemoryError):  # the limit holds: a pool too small for w
        cached_matmul(store.url, "t0", x, None, "cuda", w.nbytes // 2)


def test_memory_budget_records_what_each_system_may_use():
    kaas = {
        "a": {"capacity": 95 * MiB, "memory": {"pool": 100 * MiB, "total": 80 * 2**30}},
        "b": {"capacity": 95 * MiB, "memory": {"pool": 100 * MiB, "total": 80 * 2**30}},
    }
    m = baselines.memory_budget(kaas, "cuda")
    assert m["kaas_pool_bytes"] == m["baseline_pool_bytes"] == 100 * MiB
    assert m["kaas_cache_capacity"] == m["baseline_cache_capacity"] == 95 * MiB
    assert "MemoryPool" in m["allocator"]
    host = baselines.memory_budget({"a": {"capacity": 64 * MiB, "memory": {"total": 64 * MiB}}}, "host")
    assert host["kaas_pool_bytes"] == host["kaas_cache_capacity"] == host["baseline_cache_capacity"] == 64 * MiB


def test_contention_sizes_the_gpu_pool_so_its_cache_holds_the_consts_the_suite_assumes():
    from benchmarks.tenants import device_capacity, device_memory
    from dask_kaas.device.cuda_memory import plan_memory

    cap = device_capacity(3, 8 * 2**20, 64, 8 * 2**20 // (64 * 4), 8)
    pool = device_memory(cap, "cuda")
    plan = plan_memory(total=80 * 2**30, free=80 * 2**30, pool_size=pool, cache_capacity="95%")
    assert plan.capacity >= cap and plan.pool_bytes == pool
    assert device_memory(cap, "host") == cap

"""The runtime on the host device: data flow, caching, capacity, errors that leak nothing."""

import numpy as np
import pytest

from dask_kaas import (
    BufferSpec,
    BufferStore,
    DeviceMemoryError,
    KernelError,
    KernelSpec,
    Library,
    Literal,
    Request,
    RequestError,
    StoreError,
)
from dask_kaas.device import HostDevice
from dask_kaas.runtime import Runtime

F = 4


@pytest.fixture
def store(tmp_path):
    return BufferStore(f"file://{tmp_path}/store")


def make_runtime(store, capacity=1 << 20):
    return Runtime(HostDevice(capacity), store)


def assert_no_leak(rt):
    """The device holds exactly what the cache accounts for, and nothing is pinned."""
    assert rt.device.memory_info()["used"] == rt.cache.used
    assert rt.cache.pinned_bytes == 0


def gemm(m, n, k, a, b, c, *, tenant=None):
    return KernelSpec(
        "builtin",
        "sgemm",
        (-(-n // 16), -(-m // 16)),
        (16, 16),
        literals=[Literal("i", m), Literal("i", n), Literal("i", k)],
        arguments=[(a, "i"), (b, "i"), (c, "o")],
    )


def test_vadd_typed_result_and_uint8_default(store):
    rt = make_runtime(store)
    n = 37
    a = BufferSpec("a", n * F, dtype="float32", ephemeral=True)
    b = BufferSpec("b", n * F, dtype="float32", ephemeral=True)
    c = BufferSpec("c", n * F, ephemeral=True)  # no dtype: raw bytes come back
    d = BufferSpec("d", n * F, dtype="float32", shape=(1, n), ephemeral=True)
    r = Request(
        [
            KernelSpec("builtin", "vadd", 2, 32, literals=[Literal("i", n)], arguments=[(a, "i"), (b, "i"), (c, "o")]),
            KernelSpec("builtin", "vadd", 2, 32, literals=[Literal("i", n)], arguments=[(a, "i"), (c, "i"), (d, "o")]),
        ]
    )
    x, y = np.arange(n, dtype=np.float32), np.full(n, 2, np.float32)
    out = rt.run(r, {"a": x, "b": y})
    assert set(out) == {"c", "d"}
    assert out["c"].dtype == np.uint8 and out["c"].shape == (n * F,)
    np.testing.assert_array_equal(out["c"].view(np.float32), x + y)
    assert out["d"].dtype == np.float32 and out["d"].shape == (1, n)
    np.testing.assert_array_equal(out["d"][0], 2 * x + y)
    assert_no_leak(rt)
    assert rt.cache.used == 0  # nothing const: everything was freed


def test_calling_a_request_runs_it_locally():
    n = 8
    y = BufferSpec("y", n * F, dtype="float32", ephemeral=True)
    r = Request(
        [KernelSpec("builtin", "fill", 1, 32, literals=[Literal("i", n), Literal("f", 1.5)], arguments=[(y, "o")])]
    )
    np.testing.assert_array_equal(r()["y"], np.full(n, 1.5, np.float32))


def test_consts_come_from_the_store_and_are_cached(store):
    rt = make_runtime(store)
    m, k, n = 5, 7, 9
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    store.put("model/w", w, namespace="alice")
    a = BufferSpec("a", m * k * F, dtype="float32", shape=(m, k), ephemeral=True)
    wb = BufferSpec("w", k * n * F, key="model/w", const=True)
    c = BufferSpec("c", m * n * F, dtype="float32", shape=(m, n), ephemeral=True)
    r = Request([gemm(m, n, k, a, wb, c)], tenant="alice")
    for i in range(3):
        x = np.full((m, k), i + 1, np.float32)
        np.testing.assert_allclose(rt.run(r, {"a": x})["c"], x @ w, rtol=1e-5)
    s = rt.stats()
    assert (s["compulsory_misses"], s["hits"], s["capacity_misses"]) == (1, 2, 0)
    assert s["bytes_from_store"] == w.nbytes
    assert s["bytes_h2d"] == w.nbytes + 3 * a.size
    assert s["bytes_d2h"] == 3 * c.size
    assert s["requests"] == 3 and s["kernel_launches"] == 3
    assert s["tenants"]["alice"]["hits"] == 2 and s["tenants"]["alice"]["bytes_loaded"] == w.nbytes
    assert s["device"] == "host" and s["capacity"] == 1 << 20 and s["used"] == w.nbytes
    assert all(s["seconds"][p] >= 0 for p in ("load", "kernels", "d2h", "total"))
    assert_no_leak(rt)


def test_const_passed_in_the_call_is_used_but_not_cached(store):
    rt = make_runtime(store)
    x = BufferSpec("x", 4 * F, key="xs", const=True)
    y = BufferSpec("y", 4 * F, dtype="float32", ephemeral=True)
    r = Request(
        [
            KernelSpec(
                "builtin", "axpy", 1, 4, literals=[Literal("i", 4), Literal("f", 1.0)], arguments=[(x, "i"), (y, "io")]
            )
        ]
    )
    out = rt.run(r, {"x": np.ones(4, np.float32), "y": np.ones(4, np.float32)})
    np.testing.assert_array_equal(out["y"], 2 * np.ones(4))
    assert rt.cache.used == 0 and rt.stats()["bytes_from_store"] == 0


def test_offset_reads_part_of_a_key(store):
    rt = make_runtime(store)
    store.put("packed", np.arange(10, dtype=np.float32))
    x = BufferSpec("x", 4 * F, key="packed", offset=3 * F, const=True)
    y = BufferSpec("y", 4 * F, dtype="float32", ephemeral=True)
    r = Request(
        [
            KernelSpec(
                "builtin", "axpy", 1, 4, literals=[Literal("i", 4), Literal("f", 1.0)], arguments=[(x, "i"), (y, "io")]
            )
        ]
    )
    np.testing.assert_array_equal(rt.run(r, {"y": np.zeros(4, np.float32)})["y"], [3, 4, 5, 6])


def test_n_iter_repeats_in_place(store):
    rt = make_runtime(store)
    n = 50
    x = BufferSpec("x", n * F, dtype="float32", ephemeral=True)
    y = BufferSpec("y", n * F, dtype="float32", ephemeral=True)
    r = Request(
        [
            KernelSpec(
                "builtin", "axpy", 2, 32, literals=[Literal("i", n), Literal("f", 0.5)], arguments=[(x, "i"), (y, "io")]
            )
        ],
        n_iter=4,
    )
    xv = np.arange(n, dtype=np.float32)
    out = rt.run(r, {"x": xv, "y": np.ones(n, np.float32)})
    np.testing.assert_allclose(out["y"], 1 + 4 * 0.5 * xv)
    assert rt.stats()["kernel_launches"] == 4


def test_keyed_input_from_store_and_output_persisted(store):
    rt = make_runtime(store)
    n = 16
    store.put("in/x", np.arange(n, dtype=np.float32))
    x = BufferSpec("x", n * F, key="in/x")
    t = BufferSpec("t", n * F)
    total = BufferSpec("total", F, dtype="float32", key="out/total")
    r = Request(
        [
            KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", n)], arguments=[(x, "i"), (x, "i"), (t, "t")]),
            KernelSpec("builtin", "reduce_sum", 2, 8, literals=[Literal("i", n)], arguments=[(t, "t"), (total, "o")]),
        ]
    )
    out = rt.run(r)
    assert set(out) == {"total"}  # temporaries never come back
    expected = 2 * np.arange(n).sum()
    assert out["total"][0] == expected
    np.testing.assert_array_equal(store.get("out/total"), [expected])
    assert rt.stats()["bytes_to_store"] == F
    assert_no_leak(rt)


def test_missing_keyed_input(store):
    rt = make_runtime(store)
    x = BufferSpec("x", 4 * F, key="not/there")
    y = BufferSpec("y", 4 * F, ephemeral=True)
    r = Request(
        [
            KernelSpec(
                "builtin", "axpy", 1, 4, literals=[Literal("i", 4), Literal("f", 1.0)], arguments=[(x, "i"), (y, "io")]
            )
        ]
    )
    with pytest.raises(RequestError, match=r"missing input 'x'.*not/there"):
        rt.run(r, {"y": np.zeros(4, np.float32)})
    assert_no_leak(rt)


def test_missing_const_is_a_store_error_and_leaks_nothing(store):
    rt = make_runtime(store)
    x = BufferSpec("x", 4 * F, key="absent", const=True)
    y = BufferSpec("y", 4 * F, ephemeral=True)
    r = Request(
        [
            KernelSpec(
                "builtin", "axpy", 1, 4, literals=[Literal("i", 4), Literal("f", 1.0)], arguments=[(x, "i"), (y, "io")]
            )
        ]
    )
    with pytest.raises(StoreError, match="absent"):
        rt.run(r, {"y": np.zeros(4, np.float32)})
    assert_no_leak(rt)
    assert rt.cache.used == 0 and rt.stats()["errors"] == 1


def test_outputs_start_zeroed(store):
    rt = make_runtime(store)
    y = BufferSpec("y", 10 * F, dtype="float32", ephemeral=True)
    fill5 = Request(
        [KernelSpec("builtin", "fill", 1, 32, literals=[Literal("i", 5), Literal("f", 7.0)], arguments=[(y, "o")])]
    )
    fill10 = Request(
        [KernelSpec("builtin", "fill", 1, 32, literals=[Literal("i", 10), Literal("f", 9.0)], arguments=[(y, "o")])]
    )
    rt.run(fill10)  # leaves 9s in freed host memory
    np.testing.assert_array_equal(rt.run(fill5)["y"], [7] * 5 + [0] * 5)


def test_capacity_smaller_than_working_set_still_correct(store):
    """Two consts that cannot both stay cached: every request runs, evicting the other."""
    n = 256
    size = n * n * F
    rt = make_runtime(store, capacity=size + 4 * n * F)
    mats = {}
    for i in range(2):
        mats[i] = np.random.default_rng(i).standard_normal((n, n)).astype(np.float32)
        store.put(f"m{i}", mats[i])
    x = BufferSpec("x", n * F, dtype="float32", ephemeral=True)
    y = BufferSpec("y", n * F, dtype="float32", ephemeral=True)
    for rep in range(3):
        for i in range(2):
            a = BufferSpec("A", size, key=f"m{i}", const=True)
            r = Request([gemm(1, n, n, x, a, y)])
            xv = np.ones(n, np.float32) * (rep + 1)
            np.testing.assert_allclose(rt.run(r, {"x": xv})["y"], xv @ mats[i], rtol=1e-4)
            assert rt.cache.used <= rt.cache.capacity
    s = rt.stats()
    assert s["compulsory_misses"] == 2 and s["capacity_misses"] == 4 and s["hits"] == 0
    assert s["evictions"] == 5
    assert_no_leak(rt)


def test_request_larger_than_capacity(store):
    rt = make_runtime(store, capacity=1000)
    n = 200
    a = BufferSpec("a", n * F, ephemeral=True)
    b = BufferSpec("b", n * F, ephemeral=True)
    r = Request(
        [KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", n)], arguments=[(a, "i"), (a, "i"), (b, "o")])]
    )
    with pytest.raises(DeviceMemoryError, match="1600"):
        rt.run(r, {"a": np.zeros(n, np.float32)})
    assert_no_leak(rt)
    assert rt.cache.used == 0


def test_kernel_failure_releases_everything(store):
    src = 'extern "C" __global__ void boom(int n, float* y) { }'

    def boom(launch, n, y):
        raise ZeroDivisionError("boom")

    lib = Library.from_source("boomlib", src, twins={"boom": boom})
    rt = make_runtime(store)
    store.put("w", np.ones(4, np.float32))
    w = BufferSpec("w", 16, key="w", const=True)
    y = BufferSpec("y", 16, ephemeral=True)
    r = Request(
        [
            KernelSpec(
                "builtin", "axpy", 1, 4, literals=[Literal("i", 4), Literal("f", 1.0)], arguments=[(w, "i"), (y, "io")]
            ),
            KernelSpec(lib, "boom", 1, 1, literals=[Literal("i", 4)], arguments=[(y, "io")]),
        ]
    )
    with pytest.raises(KernelError, match="boom"):
        rt.run(r, {"y": np.zeros(4, np.float32)})
    assert_no_leak(rt)
    assert rt.cache.used == 16  # the const stays cached, nothing else
    # and the runtime goes on serving
    ok = Request([r.kernels[0]])
    np.testing.assert_array_equal(rt.run(ok, {"y": np.zeros(4, np.float32)})["y"].view(np.float32), np.ones(4))


def test_kernel_without_host_twin(store):
    lib = Library.from_source("notwin", 'extern "C" __global__ void k(float* y) { }')
    rt = make_runtime(store)
    r = Request([KernelSpec(lib, "k", 1, 1, arguments=[(BufferSpec("y", 4, ephemeral=True), "o")])])
    with pytest.raises(KernelError, match="no host twin"):
        rt.run(r)
    assert_no_leak(rt)


@pytest.mark.parametrize("hints", [None, "junk", [["ns"]], [["ns", "w", "many"]], 42, [[None, None, None, 1]]])
def test_malformed_eviction_hints_are_ignored(store, hints):
    """The scheduler's hints only order evictions: a malformed one changes nothing and raises nothing."""
    rt = make_runtime(store)
    rt.want([["t", "w", 3]])
    before = dict(rt.cache._wanted)
    rt.want(hints)
    assert rt.cache._wanted == (before if hints is not None else {})

"""CUDA backend: every built-in kernel against its host twin, and end to end with the RMM pool.

These need an NVIDIA GPU with CuPy (the cuda13/cuda12 extra); elsewhere they skip.
"""
import numpy as np
import pytest

from dask_kaas import BufferSpec, BufferStore, KernelSpec, Literal, Request
from dask_kaas.device import HostDevice
from dask_kaas.runtime import Runtime

pytestmark = pytest.mark.gpu
F = 4


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    from dask_kaas.device.cuda import CudaDevice

    store = BufferStore(f"file://{tmp_path_factory.mktemp('gpu-store')}")
    cuda = Runtime(CudaDevice(0, pool_size="2GiB"), store)
    host = Runtime(HostDevice(2**31), store)
    yield cuda, host
    cuda.close()


def buf(name, n, **kw):
    return BufferSpec(name, n * F, dtype="float32", ephemeral=True, **kw)


def one(kernel, grid, block, lits, args, n_iter=1):
    return Request([KernelSpec("builtin", kernel, grid, block, literals=lits, arguments=args)], n_iter=n_iter)


def cases(n, rng):
    """(request, inputs) per built-in kernel at size n, with launch shapes that do not cover n exactly."""
    v = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    rows, cols = max(1, n // 7), 7
    m, k, p = n // 3 + 1, n // 5 + 2, n // 4 + 3
    a_jac = v(n, n)
    a_jac[np.diag_indices(n)] = np.abs(a_jac).sum(axis=1) + 1
    yield "fill", one("fill", 3, 64, [Literal("i", n), Literal("f", 2.5)], [(buf("y", n), "o")]), {}
    yield "vadd", one("vadd", 2, 96, [Literal("i", n)], [(buf("a", n), "i"), (buf("b", n), "i"), (buf("c", n), "o")]), \
        {"a": v(n), "b": v(n)}
    yield "axpy", one("axpy", 5, 33, [Literal("i", n), Literal("f", -0.75)], [(buf("x", n), "i"), (buf("y", n), "io")],
                      n_iter=3), {"x": v(n), "y": v(n)}
    yield "sgemm", one("sgemm", (2, 3), (16, 16), [Literal("i", m), Literal("i", p), Literal("i", k)],
                       [(buf("A", m * k), "i"), (buf("B", k * p), "i"), (buf("C", m * p), "o")]), \
        {"A": v(m * k), "B": v(k * p)}
    yield "bias_relu", one("bias_relu", 4, 128, [Literal("i", rows), Literal("i", cols)],
                           [(buf("bias", cols), "i"), (buf("x", rows * cols), "io")]), \
        {"bias": v(cols), "x": v(rows * cols)}
    yield "softmax_rows", one("softmax_rows", 3, 50, [Literal("i", rows), Literal("i", cols)],
                              [(buf("x", rows * cols), "i"), (buf("y", rows * cols), "o")]), {"x": 5 * v(rows * cols)}
    yield "jacobi_step", one("jacobi_step", 2, 64, [Literal("i", n)],
                             [(buf("A", n * n), "i"), (buf("b", n), "i"), (buf("x", n), "i"), (buf("xn", n), "o")]), \
        {"A": a_jac, "b": v(n), "x": v(n)}
    yield "reduce_sum", one("reduce_sum", 3, 200, [Literal("i", n)], [(buf("x", n), "i"), (buf("out", 1), "o")]), \
        {"x": v(n)}


@pytest.mark.parametrize("n", [1, 17, 255, 1000, 4099])
def test_every_builtin_kernel_matches_its_host_twin(runtimes, n):
    cuda, host = runtimes
    rng = np.random.default_rng(n)
    for name, request, inputs in cases(n, rng):
        got = cuda.run(request, inputs)
        want = host.run(request, inputs)
        assert set(got) == set(want), name
        for out in want:
            np.testing.assert_allclose(got[out], want[out], rtol=2e-4, atol=2e-4 * max(1, np.sqrt(n)),
                                       err_msg=f"{name} n={n} output {out}")
    assert cuda.cache.pinned_bytes == 0


def test_rmm_pool_serves_the_allocations(runtimes):
    cuda, _ = runtimes
    info = cuda.device.memory_info()
    assert info["rmm"] is True
    assert info["rmm_total_count"] > 0 and info["rmm_total_bytes"] > 0


def test_end_to_end_on_cuda_with_rmm(tmp_path):
    from distributed import Client

    from dask_kaas import LocalKaasCluster, worker_stats

    store_url = f"file://{tmp_path}"
    n = 512
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    BufferStore(store_url).put("gpu/A", a)
    x = BufferSpec("x", n * F, dtype="float32", ephemeral=True)
    w = BufferSpec("A", n * n * F, key="gpu/A", const=True)
    y = BufferSpec("y", n * F, dtype="float32", ephemeral=True)
    r = Request([KernelSpec("builtin", "sgemm", (n // 16, 1), (16, 16),
                            literals=[Literal("i", 1), Literal("i", n), Literal("i", n)],
                            arguments=[(x, "i"), (w, "i"), (y, "o")])])
    with LocalKaasCluster(device="cuda", device_memory="1GiB", store=store_url, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        xs = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i in range(8)]
        for xv, out in zip(xs, client.gather([client.submit(r, x=xv, pure=False) for xv in xs])):
            np.testing.assert_allclose(out["y"], xv @ a, rtol=1e-3, atol=1e-3)
        stats = list(worker_stats(client).values())
        assert all(s["device"] == "cuda" for s in stats)
        assert sum(s["hits"] for s in stats) >= 8 - len(stats)
        assert all(s["memory"]["rmm"] and s["memory"]["rmm_total_count"] > 0 for s in stats)

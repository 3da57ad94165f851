"""CUDA backend: every built-in kernel against NumPy and its host twin, faults, threads, doctor, end to end.

These need an NVIDIA GPU with CuPy and RMM (the cuda13/cuda12 extra). They skip only where no
GPU is present; on a machine with a GPU and a broken stack they fail.
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


@pytest.mark.parametrize("n", [1, 17, 255, 1000, 4099])
def test_every_builtin_kernel_matches_numpy_and_its_host_twin(runtimes, n):
    from dask_kaas.selfcheck import cases, compare

    cuda, host = runtimes
    for case in cases(n, np.random.default_rng(n)):
        got = cuda.run(case.request, case.inputs)
        assert compare(case, got, n) is None
        want = host.run(case.request, case.inputs)
        for out in want:
            np.testing.assert_allclose(got[out], want[out], **case.tolerance(n), err_msg=f"{case.kernel} n={n} {out}")
    assert cuda.cache.pinned_bytes == 0


def test_device_used_from_another_thread(runtimes):
    """Dask builds the device on its event loop and runs tasks in executor threads."""
    import threading

    from dask_kaas.selfcheck import cases, compare

    cuda, _ = runtimes
    case = cases(100, np.random.default_rng(0))[1]
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", cuda.run(case.request, case.inputs)))
    thread.start()
    thread.join()
    assert compare(case, out["r"], 100) is None


def test_out_of_bounds_kernel_is_a_sticky_kernel_error():
    """In a fresh process (the fault poisons its CUDA context): KernelError, device marked lost."""
    import subprocess
    import sys

    code = """
import tempfile
import dask_kaas as dk
from dask_kaas.device.cuda import CudaDevice
from dask_kaas.runtime import Runtime
bad = dk.Library.from_source("bad", 'extern "C" __global__ void oob(int n, float* y) { y[(long long)n << 40] = 1.f; }')
y = dk.BufferSpec("y", 4, dtype="float32", ephemeral=True)
r = dk.Request([dk.KernelSpec(bad, "oob", 1, 1, literals=[dk.Literal("i", 1)], arguments=[(y, "o")])])
rt = Runtime(CudaDevice(0, pool_size="1GiB"), dk.BufferStore("file://" + tempfile.mkdtemp()))
try:
    rt.run(r)
except dk.KernelError as e:
    print("KernelError", rt.device.healthy, e)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "KernelError False" in done.stdout, done.stdout + done.stderr
    assert "context is lost" in done.stdout


def test_doctor_passes_on_this_gpu(tmp_path):
    from dask_kaas.doctor import diagnose

    report = diagnose("cuda", quick=True)
    assert report["ok"], report["failed"]
    assert report["device"]["kind"] == "cuda"


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
    r = Request(
        [
            KernelSpec(
                "builtin",
                "sgemm",
                (n // 16, 1),
                (16, 16),
                literals=[Literal("i", 1), Literal("i", n), Literal("i", n)],
                arguments=[(x, "i"), (w, "i"), (y, "o")],
            )
        ]
    )
    with (
        LocalKaasCluster(device="cuda", device_memory="1GiB", store=store_url, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        xs = [np.random.default_rng(i).standard_normal(n).astype(np.float32) for i in range(8)]
        for xv, out in zip(xs, client.gather([client.submit(r, x=xv, pure=False) for xv in xs])):
            np.testing.assert_allclose(out["y"], xv @ a, rtol=1e-3, atol=1e-3)
        stats = list(worker_stats(client).values())
        assert all(s["device"] == "cuda" for s in stats)
        assert sum(s["hits"] for s in stats) >= 8 - len(stats)
        assert all(s["memory"]["rmm"] and s["memory"]["rmm_total_count"] > 0 for s in stats)

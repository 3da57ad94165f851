"""The CUDA backend's logic on the host: error classes, thread binding, module loading, memory plans.

``fakecuda`` stands in for CuPy and RMM (see its docstring): these are unit tests of
dask-kaas's decisions, not a claim that CUDA works; ``test_gpu.py`` runs the real thing.
"""

import threading

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
import fakecuda
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_kaas import BufferSpec, BufferStore, KernelSpec, Library, Literal, Request
from dask_kaas.device.cuda_errors import STICKY_STATUS, describe, is_out_of_memory, is_sticky, status_of
from dask_kaas.device.cuda_memory import CONTEXT_RESERVE, is_default_resource, plan_memory, resource_bytes
from dask_kaas.errors import DeviceMemoryError, KernelError

GiB = 2**30


# ------------------------------------------------------------------ error classification
@pytest.mark.parametrize("status", sorted(STICKY_STATUS))
def test_every_sticky_status_is_sticky(status):
    assert is_sticky(fakecuda.CUDARuntimeError(status))
    assert not is_out_of_memory(fakecuda.CUDARuntimeError(status))


@pytest.mark.parametrize("status", [1, 101, 200, 209, 222, 400, 500, 701, 720])
def test_other_statuses_are_not(status):
    assert not is_sticky(fakecuda.CUDARuntimeError(status))


def test_classification_by_name_status_and_cause():
    assert is_sticky(RuntimeError("CUDA error at: device_buffer.cpp:97: cudaErrorMisalignedAddress misaligned"))
    assert is_sticky(RuntimeError("CUDA_ERROR_ILLEGAL_INSTRUCTION: an illegal instruction was encountered"))
    assert is_sticky(RuntimeError("CUDA_ERROR_INVALID_PC"))
    assert not is_sticky(RuntimeError("cudaErrorInvalidValue: invalid argument"))
    try:
        try:
            raise fakecuda.CUDARuntimeError(717)
        except Exception as inner:
            raise KernelError("wrapped") from inner
    except KernelError as outer:
        assert status_of(outer) == 717 and is_sticky(outer)
    assert is_out_of_memory(fakecuda.OutOfMemoryError("pool"))
    assert is_out_of_memory(MemoryError("std::bad_alloc: out_of_memory"))
    assert is_out_of_memory(fakecuda.CUDARuntimeError(2))
    assert not is_out_of_memory(RuntimeError("cudaErrorInvalidValue"))
    assert "[status 700, sticky]" in describe(fakecuda.CUDARuntimeError(700))


# ------------------------------------------------------------------ memory plans
def test_percentage_pool_is_split_among_workers():
    one = plan_memory(total=80 * GiB, free=80 * GiB, pool_size="80%", cache_capacity="95%")
    two = plan_memory(total=80 * GiB, free=80 * GiB, pool_size="80%", cache_capacity="95%", share=2)
    assert one.pool_bytes == 64 * GiB and two.pool_bytes == 32 * GiB
    assert two.capacity == int(32 * GiB * 0.95) and "split among 2 workers" in two.note
    # the second worker starts after the first took its pool: same share, whatever the order
    later = plan_memory(total=80 * GiB, free=48 * GiB, pool_size="80%", cache_capacity="95%", share=2)
    assert later.pool_bytes == two.pool_bytes


def test_percentage_pool_never_takes_more_than_is_free():
    plan = plan_memory(total=80 * GiB, free=10 * GiB, pool_size="80%", cache_capacity="95%")
    assert plan.pool_bytes == 10 * GiB - CONTEXT_RESERVE and "cut to" in plan.note


def test_explicit_pool_that_does_not_fit_is_an_error():
    with pytest.raises(DeviceMemoryError, match=r"kaas.cuda.pool-size 20GiB asks for .* only"):
        plan_memory(total=80 * GiB, free=10 * GiB, pool_size="20GiB", cache_capacity="95%")
    with pytest.raises(ValueError, match="cache-capacity"):
        plan_memory(total=80 * GiB, free=80 * GiB, pool_size="1GiB", cache_capacity="2GiB")
    with pytest.raises(ValueError, match="workers-per-device"):
        plan_memory(total=80 * GiB, free=80 * GiB, pool_size="1GiB", cache_capacity="95%", share=0)


def test_existing_resource_size_is_taken():
    plan = plan_memory(
        total=80 * GiB, free=40 * GiB, pool_size="80%", cache_capacity="95%", existing_bytes=30 * GiB, reuse=True
    )
    assert (plan.pool_bytes, plan.reuse) == (30 * GiB, True) and plan.capacity == int(30 * GiB * 0.95)
    unknown = plan_memory(total=80 * GiB, free=10 * GiB, pool_size="50%", cache_capacity="95%", reuse=True)
    assert unknown.pool_bytes == 40 * GiB and "size unknown" in unknown.note  # the pool already holds it


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, 2**40),
    free_share=st.floats(0, 1),
    pct=st.integers(1, 100),
    share=st.integers(1, 16),
    cache_pct=st.integers(1, 100),
)
def test_plans_stay_inside_the_gpu(total, free_share, pct, share, cache_pct):
    free = int(total * free_share)
    try:
        plan = plan_memory(total=total, free=free, pool_size=f"{pct}%", cache_capacity=f"{cache_pct}%", share=share)
    except DeviceMemoryError:
        assert free - CONTEXT_RESERVE < 256 or total * pct // 100 // share < 256
        return
    assert 0 < plan.pool_bytes <= free - CONTEXT_RESERVE
    assert plan.pool_bytes <= total * pct / 100 / share
    assert plan.pool_bytes % 256 == 0 and 0 < plan.capacity <= plan.pool_bytes


def test_resource_size_through_adaptors(monkeypatch):
    m = fakecuda.install(monkeypatch, n_gpus=1)
    mr = m.rmm.mr
    pool = mr.PoolMemoryResource(mr.CudaMemoryResource(), initial_pool_size=2 * GiB)
    assert resource_bytes(mr.StatisticsResourceAdaptor(pool)) == 2 * GiB
    assert resource_bytes(mr.LimitingResourceAdaptor(mr.CudaMemoryResource(), 3 * GiB)) == 3 * GiB
    assert resource_bytes(mr.CudaMemoryResource()) is None
    assert is_default_resource(mr.CudaMemoryResource()) and not is_default_resource(pool)


# ------------------------------------------------------------------ the device on fake CUDA
@pytest.fixture
def machine(monkeypatch):
    return fakecuda.install(monkeypatch, n_gpus=2, total=16 * GiB)


def make(index=0, **kw):
    from dask_kaas.device.cuda import CudaDevice

    return CudaDevice(index, pool_size=kw.pop("pool_size", "1GiB"), **kw)


def in_thread(fn):
    """Run ``fn`` in a new thread (as Dask runs tasks in its executor); return or raise its outcome."""
    out = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def test_every_entry_point_binds_the_device_in_the_calling_thread(machine):
    dev = make(1)  # built in this thread, as the worker plugin does on the event loop
    data = np.arange(64, dtype=np.uint8)

    def task():
        handle = dev.allocate(64)
        dev.copy_in(handle, data)
        dev.zero(handle)
        out = dev.copy_out(handle)
        dev.synchronize()
        dev.memory_info()
        return out

    assert in_thread(task).nbytes == 64
    assert machine.gpus[1].free < machine.gpus[1].total and machine.gpus[0].free == machine.gpus[0].total
    dev.close()


def kernel_file(tmp_path, name="k.cubin", content=b"\x7fELF fill\0fault\0"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_modules_load_eagerly_from_bytes_and_look_functions_up_once(machine, tmp_path, monkeypatch):
    dev = make(0)
    path = kernel_file(tmp_path)
    lib = Library.from_file(path, signatures={"fill": "int n, float v, float* y"})
    module = dev.load_module(lib)
    assert machine.loaded[-1] == path.read_bytes()
    looked_up = []
    real = type(module._module).get_function
    monkeypatch.setattr(type(module._module), "get_function", lambda self, n: looked_up.append(n) or real(self, n))
    y = dev.allocate(4)
    for _ in range(3):
        dev.launch(module, "fill", _launch(), [Literal("i", 1), Literal("f", 2.0)], [y])
    assert looked_up == ["fill"] and len(machine.launches) == 3
    assert machine.launches[-1][5] is dev.stream  # queued on the worker's stream
    # a rebuilt binary at the same path is a new library, and its new bytes are what load
    path.write_bytes(b"\x7fELF fill\0 v2")
    assert dev.load_module(Library.from_file(path, signatures={"fill": "int n, float v, float* y"})) is not module
    assert machine.loaded[-1].endswith(b"v2")
    dev.close()


def test_a_bad_image_fails_at_load_and_the_device_stays_healthy(machine, tmp_path):
    dev = make(0)
    lib = Library.from_file(kernel_file(tmp_path, content=b"not a cubin at all"), signatures={"k": "float* y"})
    with pytest.raises(KernelError, match=r"load library 'k' \(cubin\).*cudaErrorInvalidKernelImage"):
        dev.load_module(lib)
    assert dev.healthy
    module = dev.load_module(Library.from_file(kernel_file(tmp_path, "ok.cubin"), signatures={"k": "float* y"}))
    with pytest.raises(KernelError, match=r"kernel 'absent' is not in library 'ok'"):
        dev.launch(module, "absent", _launch(), [], [])
    assert dev.healthy
    dev.close()


def test_ptx_is_fitted_to_the_driver(monkeypatch, tmp_path):
    m = fakecuda.install(monkeypatch, n_gpus=1, driver=13000)
    dev = make(0)
    ptx = b"//\n.version 9.5\n.target sm_90\n.address_size 64\n.visible .entry k(\n)\n{\n ret;\n}\n"
    dev.load_module(Library.from_file(kernel_file(tmp_path, "p.ptx", ptx)))
    assert b".version 9.0\n" in m.loaded[-1]
    dev.close()


def _launch():
    from dask_kaas.kernels import LaunchConfig

    return LaunchConfig(1, 1)


def test_sticky_fault_fails_the_request_and_marks_the_device_lost(machine, tmp_path):
    from dask_kaas.runtime import Runtime

    lib = Library.from_file(kernel_file(tmp_path), signatures={"fault": "int n, float* y"})
    y = BufferSpec("y", 4, dtype="float32", ephemeral=True)
    runtime = Runtime(make(1), BufferStore(f"file://{tmp_path}/store"))
    lost = []
    runtime.on_device_lost = lost.append
    bad = Request([KernelSpec(lib, "fault", 1, 1, literals=[Literal("i", 1)], arguments=[(y, "o")])])
    with pytest.raises(KernelError, match=r"synchronize failed, and the GPU context is lost.*status 700"):
        in_thread(lambda: runtime.run(bad))
    assert not runtime.device.healthy and len(lost) == 1
    assert runtime.cache.pinned_bytes == 0  # the failed request's pins are released
    # every later call fails the same way (CUDA's sticky errors), still as a KernelError
    with pytest.raises(KernelError, match="context is lost"):
        runtime.device.allocate(16)
    runtime.close()


def test_out_of_memory_is_device_memory_error_and_other_failures_kernel_error(machine):
    dev = make(0, pool_size="1GiB", capacity="100%")
    with pytest.raises(DeviceMemoryError, match="out of device memory"):
        dev.allocate(2 * GiB)
    assert dev.healthy
    machine.gpus[0].poisoned = 716  # a fault seen first by an allocation
    with pytest.raises(KernelError, match="cudaErrorMisalignedAddress"):
        dev.allocate(16)
    assert not dev.healthy
    dev.close()


def test_two_workers_on_one_gpu_split_its_memory(machine):
    first = make(0, pool_size="80%", share=2)
    machine.gpus[0].resource = None  # the second worker is another process: it sees RMM's default
    second = make(0, pool_size="80%", share=2)
    assert first.pool_bytes == second.pool_bytes == int(16 * GiB * 0.8 / 2) // 256 * 256
    assert machine.gpus[0].free == 16 * GiB - 2 * first.pool_bytes
    first.close()
    second.close()


def test_an_existing_rmm_resource_is_used_and_left_in_place(machine):
    mr = machine.rmm.mr
    operators = mr.PoolMemoryResource(mr.CudaMemoryResource(), initial_pool_size=4 * GiB)
    mr.set_current_device_resource(operators)  # as dask-cuda's --rmm-pool-size does
    free_before = machine.gpus[0].free
    dev = make(0, pool_size="80%")
    assert dev.plan.reuse and dev.pool_bytes == 4 * GiB and dev.capacity == int(4 * GiB * 0.95)
    assert machine.gpus[0].free == free_before  # no second pool
    handle = dev.allocate(1024)
    assert operators.used == 1024 and dev.memory_info()["rmm_current_bytes"] == 1024
    del handle
    dev.close()
    assert mr.get_current_device_resource() is operators and machine.allocator is None


def test_nothing_process_wide_changes(machine):
    """CuPy's allocator and RMM's current resource stay as they were: other CuPy code in the worker
    (a user's task, a baseline) allocates as before, and closing restores nothing."""
    dev = make(0)
    handle = dev.allocate(1024)
    assert machine.allocator is None and is_default_resource(machine.rmm.mr.get_current_device_resource())
    assert machine.gpus[0].free == 16 * GiB - dev.pool_bytes  # the device's own pool serves it
    del handle
    dev.close()
    assert machine.allocator is None and is_default_resource(machine.rmm.mr.get_current_device_resource())
    dev.close()  # twice is fine


def test_devices_in_one_process_keep_their_own_pools_and_close_in_any_order(machine):
    """As the scale suite runs many workers in one process: each device's pool is its own."""
    first, second = make(0, pool_size="2GiB", capacity="100%"), make(0, pool_size="2GiB", capacity="100%")
    assert machine.gpus[0].free == 16 * GiB - 4 * GiB
    a, b = first.allocate(2 * GiB), second.allocate(2 * GiB)  # each has its 2 GiB: nothing shared
    first.close()
    del b
    c = second.allocate(2 * GiB)  # the second still works after the first closed
    assert c.nbytes == 2 * GiB and second.memory_info()["rmm_current_bytes"] == 2 * GiB
    second.close()
    del a, c
    assert machine.gpus[0].free == 16 * GiB  # every pool given back once its buffers went


def test_devices_in_one_process_split_an_existing_rmm_resource_or_refuse(machine):
    from dask_kaas.errors import ConfigError

    mr = machine.rmm.mr
    operators = mr.PoolMemoryResource(mr.CudaMemoryResource(), initial_pool_size=4 * GiB)
    mr.set_current_device_resource(operators)
    first, second = make(0, pool_size="80%", share=2), make(0, pool_size="80%", share=2)
    assert first.pool_bytes == second.pool_bytes == 2 * GiB and "split among 2" in second.plan.note
    assert first.capacity + second.capacity <= 4 * GiB
    with pytest.raises(ConfigError, match=r"already used by 2 KaaS device.*workers-per-device"):
        make(0, pool_size="80%", share=2)
    first.close()  # closing in any order frees its place
    third = make(0, pool_size="80%", share=2)
    second.close()
    third.close()
    assert mr.get_current_device_resource() is operators


def test_without_rmm_a_cupy_pool_of_its_own_is_limited(machine, monkeypatch):
    fakecuda.without_rmm(monkeypatch)
    dev = make(0, pool_size="2GiB")
    assert not dev.rmm and machine.cupy_pool_limit == 0  # CuPy's default pool is left alone
    with pytest.raises(DeviceMemoryError):
        dev.allocate(3 * GiB)
    handle = dev.allocate(GiB)
    assert dev.memory_info()["cupy_pool_used_bytes"] == GiB
    del handle
    dev.close()


def test_bad_device_index_is_a_kernel_error(machine):
    with pytest.raises(KernelError, match=r"open the device failed.*cudaErrorInvalidDevice"):
        make(5)


# ------------------------------------------------------------------ is there a GPU at all
def test_gpu_presence_does_not_depend_on_cupy(monkeypatch):
    from dask_kaas.device import cuda

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(cuda.glob, "glob", lambda pattern: ["/dev/nvidia0", "/dev/nvidiactl"])
    assert cuda.gpu_present()
    monkeypatch.setattr(cuda.glob, "glob", lambda pattern: ["/dev/nvidiactl"])
    monkeypatch.setattr(cuda.os, "listdir", lambda path: ["0000:18:00.0"])
    assert cuda.gpu_present()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not cuda.gpu_present()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert not cuda.gpu_present()


def test_gpu_tests_run_where_a_gpu_is_present_even_if_cupy_is_broken(monkeypatch):
    """The gpu marker skips only without a GPU: a present GPU with a broken stack fails loudly."""
    import conftest

    from dask_kaas import device

    monkeypatch.setattr(device, "gpu_present", lambda: True)
    fakecuda.without_rmm(monkeypatch)
    monkeypatch.setitem(__import__("sys").modules, "cupy", None)  # CuPy cannot even be imported
    assert conftest.gpu_skip_reason() is None
    monkeypatch.setattr(device, "gpu_present", lambda: False)
    assert conftest.gpu_skip_reason() == "no NVIDIA GPU on this machine"


def test_auto_says_why_it_falls_back_to_the_host(monkeypatch, caplog):
    from dask_kaas import device

    monkeypatch.setattr(device, "gpu_count", lambda: 0)
    monkeypatch.setattr(device, "gpu_present", lambda: True)
    monkeypatch.setitem(__import__("sys").modules, "cupy", None)
    with caplog.at_level("WARNING", logger="dask_kaas.device"):
        assert device.resolve_kind("auto") == "host"
    assert "NVIDIA GPU but CuPy cannot be imported" in caplog.text and "doctor" in caplog.text


# ------------------------------------------------------------------ one request: staged copies, one synchronize
def io_request(tmp_path, n=64):
    """A request whose outputs are its inputs, written in place (the stand-in's kernels compute nothing)."""
    lib = Library.from_file(kernel_file(tmp_path), signatures={"fill": "int n, float v, float* y"})
    a = BufferSpec("a", 4 * n, dtype="float32", ephemeral=True)
    b = BufferSpec("b", 4 * n, dtype="float32", ephemeral=True)
    kernels = [
        KernelSpec(lib, "fill", 1, 1, literals=[Literal("i", 0), Literal("f", 0.0)], arguments=[(buf, "io")])
        for buf in (a, b)
    ]
    return Request(kernels, n_iter=3)


def test_each_byte_is_copied_once_per_direction_with_one_synchronize(machine, tmp_path):
    from dask_kaas.runtime import Runtime

    runtime = Runtime(make(0), BufferStore(f"file://{tmp_path}/store"))
    request = io_request(tmp_path)
    a, b = np.arange(64, dtype=np.float32), -np.arange(64, dtype=np.float32)
    syncs, copies = machine.syncs, len(machine.copies)
    out = in_thread(lambda: runtime.run(request, {"a": a, "b": b}))
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"], b)
    assert machine.syncs - syncs == 1  # kernels and both copies out: one wait
    h2d = [c for c in machine.copies[copies:] if c[0] == 1]
    d2h = [c for c in machine.copies[copies:] if c[0] == 2]
    assert sorted(c[1] for c in h2d) == sorted(c[1] for c in d2h) == [256, 256]
    assert {c[3] for c in h2d} == {a.ctypes.data, b.ctypes.data}  # straight from the caller's arrays
    assert {c[2] for c in d2h} == {out["a"].ctypes.data, out["b"].ctypes.data}  # handed over where they landed
    assert len(machine.launches) == 6  # 2 kernels x n_iter 3, each function looked up once

    held = out
    again = runtime.run(request, {"a": b, "b": a})  # the first outputs are still held: other blocks
    np.testing.assert_array_equal(held["a"], a)
    np.testing.assert_array_equal(again["a"], b)
    blocks = runtime.device._pinned.nbytes
    landed = {again["a"].ctypes.data, again["b"].ctypes.data}
    del again
    third = runtime.run(request, {"a": a, "b": b})
    assert {third["a"].ctypes.data, third["b"].ctypes.data} == landed  # let go of: served again
    assert runtime.device._pinned.nbytes == blocks
    runtime.close()


def test_outputs_past_the_pinned_limit_or_when_pinning_fails_go_through_pageable_memory(machine, tmp_path):
    import dask

    from dask_kaas.runtime import Runtime

    with dask.config.set({"kaas.cuda.pinned-bytes": 300}):
        runtime = Runtime(make(0), BufferStore(f"file://{tmp_path}/store"))
    a, b = np.ones(64, np.float32), np.full(64, 2.0, np.float32)
    out = runtime.run(io_request(tmp_path), {"a": a, "b": b})
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["b"], b)
    assert runtime.device._pinned.nbytes == 0
    runtime.close()

    machine.pinned_error = fakecuda.CUDARuntimeError(2)  # the OS refuses to lock more pages
    runtime = Runtime(make(0), BufferStore(f"file://{tmp_path}/store"))
    out = runtime.run(io_request(tmp_path), {"a": a, "b": b})  # not a device out-of-memory error
    np.testing.assert_array_equal(out["b"], b)
    assert "cudaErrorMemoryAllocation" in runtime.device.memory_info()["pinned_failed"]
    assert runtime.device.healthy
    runtime.close()


def test_a_request_stopped_between_its_copies_out_and_the_synchronize_waits_for_them(machine, tmp_path, monkeypatch):
    from dask_kaas.runtime import Runtime

    runtime = Runtime(make(0), BufferStore(f"file://{tmp_path}/store"))
    request = io_request(tmp_path)
    real = machine.cupy.cuda.runtime.memcpyAsync
    d2h = []

    def second_copy_out_fails(dst, src, nbytes, kind, stream):
        if kind == 2:
            d2h.append(1)
            if len(d2h) == 2:
                raise fakecuda.CUDARuntimeError(1)
        return real(dst, src, nbytes, kind, stream)

    monkeypatch.setattr(machine.cupy.cuda.runtime, "memcpyAsync", second_copy_out_fails)
    syncs = machine.syncs
    with pytest.raises(KernelError, match="copy from the device failed"):
        runtime.run(request, {"a": np.ones(64, np.float32), "b": np.ones(64, np.float32)})
    assert machine.syncs - syncs == 1 and not runtime.device._pending  # waited before the blocks serve again
    assert runtime.cache.pinned_bytes == 0 and runtime.device.healthy
    runtime.close()


def warm_request(tmp_path, store):
    """One kernel: an input, a const (cached after the first call) and an output."""
    lib = Library.from_file(kernel_file(tmp_path), signatures={"fill": "int n, float v, float* x, float* w, float* y"})
    store.put("w", np.ones(64, np.float32))
    x = BufferSpec("x", 256, dtype="float32", ephemeral=True)
    w = BufferSpec("w", 256, key="w", const=True)
    y = BufferSpec("y", 256, dtype="float32", ephemeral=True)
    return Request(
        [
            KernelSpec(
                lib,
                "fill",
                1,
                1,
                literals=[Literal("i", 0), Literal("f", 0.0)],
                arguments=[(x, "i"), (w, "i"), (y, "o")],
            )
        ]
    )


def test_a_warm_one_kernel_request_makes_six_driver_calls(machine, tmp_path):
    """What README states: the GPU made current once, one copy each way, a memset, the launch, one
    synchronize; buffers come from the previous request's spares and outputs land in pinned blocks
    already made, so nothing is allocated or freed."""
    from collections import Counter

    import dask

    from dask_kaas.runtime import Runtime

    store = BufferStore(f"file://{tmp_path}/store")
    with dask.config.set({"kaas.cuda.time-every": 0}):
        runtime = Runtime(make(0), store)
    request = warm_request(tmp_path, store)
    for _ in range(2):
        runtime.run(request, {"x": np.ones(64, np.float32)})
    calls = len(machine.calls)
    runtime.run(request, {"x": np.ones(64, np.float32)})
    warm = Counter(machine.calls[calls:])
    assert warm == Counter(getDevice=1, memcpyAsync=2, memsetAsync=1, launch=1, synchronize=1), warm
    runtime.close()


def test_kernels_are_timed_with_events_read_after_the_one_synchronize(machine, tmp_path):
    """On one request in kaas.cuda.time-every: events at its start, after its copies in, after its
    launches and after its copies out are queued; their spans read once the synchronize is done."""
    import dask

    from dask_kaas.runtime import Runtime

    store = BufferStore(f"file://{tmp_path}/store")
    with dask.config.set({"kaas.cuda.time-every": 4}):
        runtime = Runtime(make(0), store)
    request = warm_request(tmp_path, store)
    calls = len(machine.calls)
    runtime.run(request, {"x": np.ones(64, np.float32)})
    timed = [
        c
        for c in machine.calls[calls:]
        if c in ("eventRecord", "eventElapsedTime", "memcpyAsync", "memsetAsync", "launch", "synchronize")
    ]
    records = [i for i, c in enumerate(timed) if c == "eventRecord"]
    assert len(records) == 4 and records[0] == 0
    assert "launch" not in timed[: records[1]] and timed[records[1] + 1] == "launch"
    assert timed[records[2] - 1] == "launch" and timed[records[2] + 1] == "memcpyAsync"
    assert timed[records[3] :] == ["eventRecord", "synchronize"] + ["eventElapsedTime"] * 3
    for _ in range(7):
        runtime.run(request, {"x": np.ones(64, np.float32)})
    stats = runtime.stats()
    assert stats["timed_requests"] == 2 and stats["requests"] == 8  # one in four
    assert all(stats["seconds"][f"device_{s}"] > 0 for s in ("h2d", "kernels", "d2h"))
    runtime.close()


def test_binding_the_device_and_looking_up_a_kernel_on_a_lost_context_are_sticky_faults(machine, tmp_path):
    from dask_kaas.runtime import Runtime

    runtime = Runtime(make(1), BufferStore(f"file://{tmp_path}/store"))
    request, inputs = io_request(tmp_path), {"a": np.ones(64, np.float32), "b": np.ones(64, np.float32)}
    runtime.run(request, inputs)  # loaded and prepared: the next request's first GPU call is the binding
    machine.gpus[1].poisoned = 700
    with pytest.raises(KernelError, match="make the GPU current failed, and the GPU context is lost"):
        in_thread(lambda: runtime.run(request, inputs))  # a thread where GPU 0 is current
    assert not runtime.device.healthy
    runtime.close()

    dev = make(0)
    module = dev.load_module(Library.from_file(kernel_file(tmp_path), signatures={"fill": "int n, float v, float* y"}))
    machine.gpus[0].poisoned = 719
    with pytest.raises(KernelError, match="look up kernel 'fill' failed, and the GPU context is lost"):
        dev.prepare(module, "fill", _launch(), [])
    assert not dev.healthy
    dev.close()


def test_a_failed_requests_traceback_keeps_no_device_buffer_alive(machine, tmp_path):
    """Dask keeps a failed task's exception and traceback; the buffers the cache freed must really go."""
    from dask_kaas.device.reuse import SpareBuffers
    from dask_kaas.runtime import Runtime

    runtime = Runtime(make(0), BufferStore(f"file://{tmp_path}/store"))
    runtime.device._spares = SpareBuffers(0)  # freed buffers go back to the pool at once
    lib = Library.from_file(kernel_file(tmp_path, content=b"\x7fELF invalid\0"), signatures={"invalid": "float* y"})
    y = BufferSpec("y", 1 << 20, dtype="float32", ephemeral=True)
    bad = Request([KernelSpec(lib, "invalid", 1, 1, arguments=[(y, "o")])])
    live = machine.live_bytes
    with pytest.raises(KernelError, match="launch 'invalid' failed") as failure:
        runtime.run(bad)
    assert failure.value.__traceback__ is not None and runtime.cache.used == 0
    assert machine.live_bytes == live  # the traceback still held, its buffers gone
    runtime.close()


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(1, 3 * 2**20), st.booleans()), max_size=20),
    limit=st.integers(2**20, 16 * 2**20),
)
def test_pinned_blocks_are_never_handed_out_while_held(steps, limit):
    from dask_kaas.device.reuse import PinnedBlocks

    blocks = PinnedBlocks(bytearray, limit)
    held = []
    for nbytes, keep in steps:
        out = blocks.take(nbytes)
        if out is None:  # past the limit
            assert blocks.nbytes + PinnedBlocks.block_size(nbytes) > limit
            continue
        view = out.view(np.uint8).reshape(1, -1)[:, : max(1, nbytes // 2)]  # a view of a view still holds it
        start, end = out.ctypes.data, out.ctypes.data + nbytes
        assert all(end <= s or e <= start for s, e, _ in held)  # never overlaps a block still held
        if keep:
            held.append((start, end, view))
        del out, view
        assert blocks.nbytes <= limit
    assert blocks.busy() >= sum(e - s for s, e, _ in held)


def test_spare_buffers_are_bounded_by_size_and_bytes():
    from dask_kaas.device.reuse import SpareBuffers

    spares = SpareBuffers(100, per_size=2)
    assert spares.put("a", 40) and spares.put("b", 40) and not spares.put("c", 40)  # two of a size
    assert not spares.put("d", 30)  # 110 bytes > 100
    assert spares.take(40) == "b" and spares.take(30) is None and spares.nbytes == 40
    assert spares.clear() == 40 and len(spares) == 0 and spares.take(40) is None

"""A small stand-in for the parts of CuPy and RMM that ``dask_kaas.device.cuda`` touches.

It lets the CUDA backend's *logic* run on a machine without a GPU: which device is current
in which thread, which errors poison the context, how the memory pool is sized, split,
reused and given back, and that modules load eagerly from bytes. It is a unit-test double,
not a claim that CUDA works: kernels are recorded, never executed. ``install(monkeypatch)``
puts ``cupy``, ``rmm`` and their submodules in ``sys.modules`` and returns the fake machine.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
import types
from types import SimpleNamespace
from typing import ClassVar

import numpy as np

GiB = 2**30


class CUDARuntimeError(RuntimeError):
    """Like CuPy's: the CUDA status code in ``status``, the error's name in the message."""

    NAMES: ClassVar[dict[int, str]] = {
        1: "cudaErrorInvalidValue",
        2: "cudaErrorMemoryAllocation",
        101: "cudaErrorInvalidDevice",
        200: "cudaErrorInvalidKernelImage",
        222: "cudaErrorUnsupportedPtxVersion",
        400: "cudaErrorInvalidResourceHandle",
        500: "cudaErrorNotFound",
        700: "cudaErrorIllegalAddress",
        716: "cudaErrorMisalignedAddress",
        719: "cudaErrorLaunchFailure",
        999: "cudaErrorUnknown",
    }

    def __init__(self, status: int):
        self.status = status
        super().__init__(f"{self.NAMES.get(status, 'cudaError')}: fake CUDA error {status}")


class OutOfMemoryError(MemoryError):
    pass


class GPU:
    def __init__(self, index, total, cc):
        self.index, self.total, self.free, self.cc = index, total, total, cc
        self.poisoned: int | None = None  # a sticky status: every later call on this GPU fails with it
        self.pending_fault: int | None = None  # raised at the next synchronize, then sticky
        self.resource = None  # RMM's per-device resource (None: the default)

    def check(self):
        if self.poisoned is not None:
            raise CUDARuntimeError(self.poisoned)


class Machine:
    """The fake GPUs and the per-thread CUDA state."""

    def __init__(self, n_gpus=2, total=80 * GiB, cc=90, driver=13000):
        self.gpus = [GPU(i, total, cc) for i in range(n_gpus)]
        self.driver = driver
        self.local = threading.local()
        self.allocator = None  # None: CuPy's default pool
        self.cupy_pool_limit = 0
        self.pinned_error: BaseException | None = None  # what pinning host memory raises, if anything
        self.loaded: list[bytes] = []
        self.launches: list[tuple] = []
        self.memsets: list[int] = []
        self.copies: list[tuple[int, int, int, int]] = []  # (kind, bytes, dst, src) of memcpyAsync
        self.syncs = 0
        self.calls: list[str] = []  # every driver/runtime call, allocation and free, by name, in order
        self.live_bytes = 0  # device memory held by buffers not yet collected
        self.cupy = self.rmm = None

    # -- per-thread state ---------------------------------------------------------------
    def current(self) -> GPU:
        return self.gpus[getattr(self.local, "device", 0)]

    def current_stream(self):
        return getattr(self.local, "stream", None) or self.null_stream(self.current().index)

    def null_stream(self, index):
        return SimpleNamespace(ptr=0, device=index)

    # -- memory -------------------------------------------------------------------------
    def take(self, gpu: GPU, nbytes: int, error=OutOfMemoryError):
        if nbytes > gpu.free:
            raise error(f"out of memory allocating {nbytes} bytes")
        gpu.free -= nbytes


class Memory:
    """A block of fake device memory (host bytes); its ``release`` runs when the last reference goes."""

    def __init__(self, machine, gpu, nbytes, release):
        self._machine, self._release = machine, release
        self.gpu, self.size = gpu, int(nbytes)
        self.host = np.zeros(self.size, np.uint8)
        self.ptr = self.host.ctypes.data  # "device" pointers are host addresses here
        machine.live_bytes += self.size

    def __del__(self):
        self._machine.live_bytes -= self.size
        self._machine.calls.append("free")
        if self._release is not None:
            self._release()


class FakeArray:
    """A flat uint8 device array over a :class:`Memory` (kept alive by the array and its views)."""

    def __init__(self, gpu, host, owner):
        self._gpu, self._host, self._owner = gpu, host, owner
        self.nbytes = self._host.nbytes
        self.data = SimpleNamespace(ptr=self._host.ctypes.data)

    def __getitem__(self, item):
        return FakeArray(self._gpu, self._host[item], self._owner)

    def set(self, data, stream=None):
        self._gpu.check()
        self._host[...] = np.asarray(data).reshape(-1).view(np.uint8)

    def get(self, stream=None, out=None):
        self._gpu.check()
        if out is None:
            return self._host.copy()
        out[...] = self._host
        return out


def install(monkeypatch, **machine_kwargs) -> Machine:
    m = Machine(**machine_kwargs)

    # -- cupy.cuda.runtime -------------------------------------------------------------------
    def getDevice():
        m.calls.append("getDevice")
        return getattr(m.local, "device", 0)

    def setDevice(i):
        m.calls.append("setDevice")
        if not 0 <= i < len(m.gpus):
            raise CUDARuntimeError(101)
        m.gpus[i].check()  # a lost context answers every call with its error
        m.local.device = i

    def memGetInfo():
        m.calls.append("memGetInfo")
        gpu = m.current()
        gpu.check()
        return gpu.free, gpu.total

    def memsetAsync(ptr, value, nbytes, stream_ptr):
        m.calls.append("memsetAsync")
        m.current().check()
        ctypes.memset(ptr, value, nbytes)
        m.memsets.append(nbytes)

    def memcpyAsync(dst, src, nbytes, kind, stream_ptr):
        m.calls.append("memcpyAsync")
        m.current().check()
        ctypes.memmove(dst, src, nbytes)
        m.copies.append((kind, nbytes, dst, src))

    runtime = types.ModuleType("cupy.cuda.runtime")
    runtime.getDevice, runtime.setDevice, runtime.memGetInfo, runtime.memsetAsync = (
        getDevice,
        setDevice,
        memGetInfo,
        memsetAsync,
    )
    runtime.memcpyAsync, runtime.memcpyHostToDevice, runtime.memcpyDeviceToHost = memcpyAsync, 1, 2
    runtime.getDeviceCount = lambda: len(m.gpus)
    runtime.getDeviceProperties = lambda i: {"name": f"Fake GPU {i}".encode()}
    runtime.driverGetVersion = lambda: m.driver
    runtime.CUDARuntimeError = CUDARuntimeError

    class Device:
        def __init__(self, index=0):
            if not 0 <= index < len(m.gpus):
                raise CUDARuntimeError(101)
            self.id = index
            self.compute_capability = str(m.gpus[index].cc)

        def use(self):
            setDevice(self.id)

    class Stream:
        def __init__(self, null=False, non_blocking=False):
            gpu = m.current()
            gpu.check()
            self.device = gpu.index  # a stream belongs to the device current when it was made
            self.ptr = id(self)

        def __enter__(self):
            self._previous = getattr(m.local, "stream", None)
            m.local.stream = self
            return self

        def __exit__(self, *exc):
            m.local.stream = self._previous

        def synchronize(self):
            m.calls.append("synchronize")
            m.syncs += 1
            gpu = m.gpus[self.device]
            if gpu.pending_fault is not None:
                gpu.poisoned, gpu.pending_fault = gpu.pending_fault, None
            gpu.check()

    class Function:
        def __init__(self, module, name):
            self.module, self.name = module, name

        def __call__(self, grid, block, args, shared_mem=0, stream=None):
            m.calls.append("launch")
            gpu = m.current()
            gpu.check()
            if stream is not None and stream.device != gpu.index:
                raise CUDARuntimeError(400)
            if self.name == "invalid":  # a launch the driver refuses (not a fault: the context survives)
                raise CUDARuntimeError(1)
            m.launches.append((self.name, grid, block, args, shared_mem, stream))
            if self.name == "fault":
                gpu.pending_fault = 700

    class Module:
        def __init__(self):
            self.data = None

        def load(self, data: bytes):
            m.current().check()
            if data.startswith(b"\x7fELF"):
                pass
            elif b".version" in data:
                version = data.split(b".version", 1)[1].split()[0]
                major, minor = (int(x) for x in version.split(b"."))
                driver = (m.driver // 1000, (m.driver % 1000) // 10)
                if (major, minor) > (driver[0] - 4, driver[1]):
                    raise CUDARuntimeError(222)
            else:
                raise CUDARuntimeError(200)
            self.data = data
            m.loaded.append(data)

        def get_function(self, name):
            m.current().check()
            if name.encode() not in self.data:
                raise CUDARuntimeError(500)
            return Function(self, name)

    class UnownedMemory:
        def __init__(self, ptr, size, owner, device_id=-1):
            self.ptr, self.size, self.owner, self.device_id = ptr, size, owner, device_id

    class MemoryPointer:
        def __init__(self, mem, offset):
            self.mem, self.ptr = mem, mem.ptr + offset

    def ndarray(shape, dtype=np.uint8, memptr=None):
        (nbytes,) = shape
        block = memptr.mem.owner if isinstance(memptr.mem, UnownedMemory) else memptr.mem
        gpu = m.current()
        if m.current_stream().device != gpu.index:
            raise CUDARuntimeError(400)  # what a stream of another device gives: invalid resource handle
        return FakeArray(block.gpu, block.host[:nbytes], block)

    class MemoryPool:
        """CuPy's device memory pool: a limit, bytes in use; blocks go back when their arrays go."""

        def __init__(self):
            self.limit, self.used = 0, 0

        def set_limit(self, size=0):
            self.limit = size

        def get_limit(self):
            return self.limit

        def used_bytes(self):
            return self.used

        def total_bytes(self):
            return self.used

        def free_all_blocks(self):
            pass

        def malloc(self, nbytes):
            m.calls.append("malloc")
            gpu = m.current()
            gpu.check()
            if self.limit and self.used + nbytes > self.limit:
                raise OutOfMemoryError(f"CuPy pool limit {self.limit} exceeded by {nbytes} bytes")
            m.take(gpu, nbytes)
            self.used += nbytes

            def release():
                gpu.free += nbytes
                self.used -= nbytes

            return MemoryPointer(Memory(m, gpu, nbytes, release), 0)

    class CupyPool:
        def get_limit(self):
            return m.cupy_pool_limit

        def set_limit(self, size=0):
            m.cupy_pool_limit = size

    class Event:
        def __init__(self, block=False, disable_timing=False, interprocess=False):
            self.time = None

        def record(self, stream=None):
            m.calls.append("eventRecord")
            m.current().check()
            self.time = time.perf_counter()

    def get_elapsed_time(start, end):
        m.calls.append("eventElapsedTime")
        return (end.time - start.time) * 1e3

    def alloc_pinned_memory(nbytes):
        m.calls.append("allocPinned")
        if m.pinned_error is not None:
            raise m.pinned_error
        return bytearray(nbytes)

    cuda = types.ModuleType("cupy.cuda")
    cuda.runtime, cuda.Device, cuda.Stream = runtime, Device, Stream
    cuda.function = SimpleNamespace(Module=Module, Function=Function)
    cuda.memory = SimpleNamespace(OutOfMemoryError=OutOfMemoryError)
    cuda.UnownedMemory, cuda.MemoryPointer, cuda.MemoryPool = UnownedMemory, MemoryPointer, MemoryPool
    cuda.Event, cuda.get_elapsed_time = Event, get_elapsed_time
    cuda.get_allocator = lambda: m.allocator
    cuda.set_allocator = lambda fn=None: setattr(m, "allocator", fn)
    cuda.get_current_stream = m.current_stream
    cuda.alloc_pinned_memory = alloc_pinned_memory
    cupy = types.ModuleType("cupy")
    cupy.cuda, cupy.uint8, cupy.ndarray = cuda, np.uint8, ndarray
    cupy.get_default_memory_pool = CupyPool
    m.cupy = cupy

    # -- rmm ---------------------------------------------------------------------------------
    class CudaMemoryResource:
        def allocate(self, gpu, nbytes):
            m.take(gpu, nbytes, MemoryError)

            def release():
                gpu.free += nbytes

            return release

    class PoolMemoryResource:
        def __init__(self, upstream, initial_pool_size=None, maximum_pool_size=None):
            self.upstream, self.size, self.used = upstream, int(initial_pool_size), 0
            self.gpu = m.current()
            m.take(self.gpu, self.size, MemoryError)

        def pool_size(self):
            return self.size

        def get_upstream(self):
            return self.upstream

        def allocate(self, gpu, nbytes):
            if self.used + nbytes > self.size:
                raise MemoryError(f"std::bad_alloc: out_of_memory: RMM pool of {self.size} bytes exhausted")
            self.used += nbytes

            def release():
                self.used -= nbytes

            return release

        def __del__(self):
            self.gpu.free += self.size

    class LimitingResourceAdaptor:
        def __init__(self, upstream, allocation_limit):
            self.upstream, self.limit = upstream, allocation_limit

        def get_allocation_limit(self):
            return self.limit

        def get_upstream(self):
            return self.upstream

        def allocate(self, gpu, nbytes):
            return self.upstream.allocate(gpu, nbytes)

    class StatisticsResourceAdaptor:
        def __init__(self, upstream):
            self.upstream = upstream
            self.allocation_counts = SimpleNamespace(
                current_bytes=0, current_count=0, peak_bytes=0, peak_count=0, total_bytes=0, total_count=0
            )

        def get_upstream(self):
            return self.upstream

        def allocate(self, gpu, nbytes):
            release = self.upstream.allocate(gpu, nbytes)
            c = self.allocation_counts
            c.current_bytes += nbytes
            c.current_count += 1
            c.total_bytes += nbytes
            c.total_count += 1
            c.peak_bytes, c.peak_count = max(c.peak_bytes, c.current_bytes), max(c.peak_count, c.current_count)

            def stats_release():
                release()
                c.current_bytes -= nbytes
                c.current_count -= 1

            return stats_release

    default_resource = CudaMemoryResource()

    def get_current_device_resource():
        return m.current().resource or default_resource

    def set_current_device_resource(mr):
        m.current().resource = mr

    def DeviceBuffer(*, size=0, stream=None, mr=None):
        """RMM's device buffer: allocated from ``mr`` (default: the current resource), on ``stream``."""
        m.calls.append("malloc")
        gpu = m.current()
        gpu.check()
        release = (mr or get_current_device_resource()).allocate(gpu, size)
        return Memory(m, gpu, size, release)

    class RmmStream:
        def __init__(self, obj=None):
            self.obj = obj

    def rmm_cupy_allocator(nbytes):
        raise AssertionError("dask-kaas must not use RMM's CuPy allocator (it changes CuPy's process-wide allocator)")

    mr = types.ModuleType("rmm.mr")
    mr.CudaMemoryResource, mr.PoolMemoryResource = CudaMemoryResource, PoolMemoryResource
    mr.StatisticsResourceAdaptor, mr.LimitingResourceAdaptor = StatisticsResourceAdaptor, LimitingResourceAdaptor
    mr.get_current_device_resource, mr.set_current_device_resource = (
        get_current_device_resource,
        set_current_device_resource,
    )
    allocators = types.ModuleType("rmm.allocators")
    allocators_cupy = types.ModuleType("rmm.allocators.cupy")
    allocators_cupy.rmm_cupy_allocator = rmm_cupy_allocator
    allocators.cupy = allocators_cupy
    pylibrmm = types.ModuleType("rmm.pylibrmm")
    pylibrmm_stream = types.ModuleType("rmm.pylibrmm.stream")
    pylibrmm_stream.Stream = RmmStream
    pylibrmm.stream = pylibrmm_stream
    rmm = types.ModuleType("rmm")
    rmm.mr, rmm.allocators, rmm.pylibrmm, rmm.DeviceBuffer = mr, allocators, pylibrmm, DeviceBuffer
    m.rmm = rmm

    for name, module in {
        "cupy": cupy,
        "cupy.cuda": cuda,
        "cupy.cuda.runtime": runtime,
        "rmm": rmm,
        "rmm.mr": mr,
        "rmm.allocators": allocators,
        "rmm.allocators.cupy": allocators_cupy,
        "rmm.pylibrmm": pylibrmm,
        "rmm.pylibrmm.stream": pylibrmm_stream,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return m


def without_rmm(monkeypatch):
    """Make ``import rmm`` fail, as where only CuPy is installed."""
    for name in ("rmm", "rmm.mr", "rmm.allocators", "rmm.allocators.cupy", "rmm.pylibrmm", "rmm.pylibrmm.stream"):
        monkeypatch.setitem(sys.modules, name, None)

"""The CUDA device: modules loaded from NVRTC-compiled cubins, an RMM pool, one stream.

Memory comes from an RMM pool set as CuPy's allocator (sized as
:mod:`.cuda_memory` decides), or from the RMM resource the worker already has.
Every copy and launch is queued on the worker's one non-blocking stream, so
frees are stream-ordered. The CUDA device is current per *thread*: every entry
point binds this device first, because Dask builds the device on its event
loop and runs tasks in its executor threads.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os

import numpy as np

from .. import config
from ..kernels import nvrtc
from ..errors import DeviceMemoryError, KernelError
from .base import Device
from .cuda_errors import describe, is_out_of_memory, is_sticky
from .cuda_memory import MemoryPlan, is_default_resource, plan_memory, resource_bytes

logger = logging.getLogger(__name__)


def gpu_count() -> int:
    """How many CUDA devices CuPy can use in this process (0 without CuPy or a driver)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


def gpu_present() -> bool:
    """Whether this machine shows an NVIDIA GPU to this process, whether or not CuPy can use it.

    ``CUDA_VISIBLE_DEVICES`` set to nothing (or ``-1``) hides every GPU.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if any(os.path.basename(p)[len("nvidia"):].isdigit() for p in glob.glob("/dev/nvidia[0-9]*")):
        return True
    try:
        return bool(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return False


def cuda_unavailable_reason() -> str | None:
    """Why CuPy cannot use a GPU here, or None when it can."""
    try:
        import cupy
    except Exception as e:
        return f"CuPy cannot be imported ({type(e).__name__}: {e}); install the cuda13 or cuda12 extra"
    try:
        n = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as e:
        return f"the CUDA driver does not answer ({describe(e)})"
    return None if n > 0 else "the CUDA driver reports no device"


class CudaModule:
    """One library loaded on one device, with its kernel functions looked up once each."""

    def __init__(self, library, module, kind: str):
        self.library = library
        self.name = library.name
        self.kind = kind
        self._module = module
        self._functions: dict[str, object] = {}

    def function(self, kernel: str):
        fn = self._functions.get(kernel)
        if fn is None:
            try:
                fn = self._module.get_function(kernel)
            except Exception as e:
                raise KernelError(f"kernel {kernel!r} is not in library {self.name!r} "
                                  f"(loaded as {self.kind}): {describe(e)}") from e
            self._functions[kernel] = fn
        return fn


class CudaDevice(Device):
    """One GPU, used by one KaaS worker (or ``share`` of them, splitting its memory).

    Parameters
    ----------
    device_index: which visible CUDA device.
    pool_size: the worker's RMM pool (bytes, "8GiB", or a share "80%" of the GPU's memory
        split among ``share`` workers); default ``kaas.cuda.pool-size``.
    capacity: the buffer cache's bytes, or a share of the pool; default
        ``kaas.cuda.cache-capacity``.
    use_rmm: allocate through RMM (else CuPy's own pool, limited to the pool size).
    share: KaaS workers on this GPU; default ``kaas.cuda.workers-per-device``.
    """

    kind = "cuda"

    def __init__(self, device_index: int = 0, *, pool_size=None, capacity=None, use_rmm: bool = True,
                 share: int | None = None):
        import cupy as cp

        self._cp = cp
        self.index = int(device_index)
        self.healthy = True
        self._closed = False
        with self._errors("open the device"):
            self._bind()
            device = cp.cuda.Device(self.index)
            free, total = cp.cuda.runtime.memGetInfo()
            props = cp.cuda.runtime.getDeviceProperties(self.index)
            self.driver = nvrtc.cuda_version(int(cp.cuda.runtime.driverGetVersion()))
            self.compute_capability = int(device.compute_capability)
        name = props["name"]
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.arch = f"sm_{self.compute_capability}"
        self.total_memory = int(total)
        self._target: str | None = None
        self._previous_allocator = cp.cuda.get_allocator()
        self._previous_resource = None
        self._installed_resource = False
        self._cupy_pool_limit: int | None = None
        self._stats_mr = None
        self.rmm = False
        self.plan = self._setup_memory(
            total=int(total), free=int(free),
            pool_size=pool_size if pool_size is not None else config.get("cuda.pool-size"),
            cache_capacity=capacity if capacity is not None else config.get("cuda.cache-capacity"),
            share=share if share is not None else int(config.get("cuda.workers-per-device")),
            use_rmm=use_rmm)
        self.pool_bytes = self.plan.pool_bytes
        self.capacity = self.plan.capacity
        with self._errors("create a stream"):
            self.stream = cp.cuda.Stream(non_blocking=True)
        self._in_session = False
        self._staged = False  # async copies from staging memory queued since the last synchronize
        self._staging = PinnedStaging(cp, config.parse_size(config.get("cuda.staging-bytes"), name="kaas.cuda.staging-bytes"))

    # -- memory setup ---------------------------------------------------------
    def _setup_memory(self, *, total, free, pool_size, cache_capacity, share, use_rmm) -> MemoryPlan:
        cp = self._cp
        rmm = None
        if use_rmm:
            try:
                import rmm
                import rmm.mr
                from rmm.allocators.cupy import rmm_cupy_allocator
            except ImportError:
                logger.warning("RMM is not installed: using CuPy's memory pool (install the cuda13/cuda12 extra)")
                rmm = None
        if rmm is None:
            plan = plan_memory(total=total, free=free, pool_size=pool_size, cache_capacity=cache_capacity,
                               share=share)
            pool = cp.get_default_memory_pool()
            self._cupy_pool_limit = pool.get_limit()
            pool.set_limit(size=plan.pool_bytes)
            return plan
        current = rmm.mr.get_current_device_resource()
        reuse = not is_default_resource(current)
        plan = plan_memory(total=total, free=free, pool_size=pool_size, cache_capacity=cache_capacity,
                           share=share, existing_bytes=resource_bytes(current) if reuse else None, reuse=reuse)
        with self._errors(f"set up an RMM pool of {plan.pool_bytes} bytes"):
            upstream = current if reuse else rmm.mr.PoolMemoryResource(
                rmm.mr.CudaMemoryResource(), initial_pool_size=plan.pool_bytes, maximum_pool_size=plan.pool_bytes)
            self._stats_mr = rmm.mr.StatisticsResourceAdaptor(upstream)
            self._previous_resource = current
            rmm.mr.set_current_device_resource(self._stats_mr)
            self._installed_resource = True
            cp.cuda.set_allocator(rmm_cupy_allocator)
        self.rmm = True
        return plan

    # -- binding --------------------------------------------------------------
    def _bind(self) -> None:
        """Make this GPU current for the calling thread (a cheap check when it already is)."""
        runtime = self._cp.cuda.runtime
        if runtime.getDevice() != self.index:
            runtime.setDevice(self.index)

    def _errors(self, what: str):
        return _CudaErrors(self, what)

    def _translate(self, what: str, exc: BaseException) -> Exception:
        return translate_error(self, what, exc)

    # -- memory ---------------------------------------------------------------
    def allocate(self, nbytes: int):
        with self._errors(f"allocate {nbytes} bytes"):
            self._bind()
            with self.stream:
                return self._cp.empty(nbytes, dtype=self._cp.uint8)

    def free(self, handle) -> None:
        # The array's memory returns to the pool, ordered on the stream it was allocated on.
        del handle

    def copy_in(self, handle, data: np.ndarray) -> None:
        """Within a session, through pinned staging and asynchronously; else a plain copy."""
        with self._errors("copy to the device"):
            slot = self._staging.take(data.nbytes) if self._in_session else None
            if slot is None:
                self._bind()
                handle[: data.nbytes].set(data, stream=self.stream)
                return
            np.copyto(slot, data.reshape(-1).view(np.uint8))
            self._staged = True
            runtime = self._cp.cuda.runtime
            runtime.memcpyAsync(handle.data.ptr, slot.ctypes.data, data.nbytes, runtime.memcpyHostToDevice,
                                self.stream.ptr)

    def copy_out(self, handle) -> np.ndarray:
        return self.copy_out_many([handle])[0]

    def copy_out_many(self, handles) -> list[np.ndarray]:
        """Every buffer's bytes queued into pinned staging (within a session), one synchronize for
        the request's kernels and copies together, then copied out of the staging memory."""
        with self._errors("copy from the device"):
            if not self._in_session:
                self._bind()
            runtime = self._cp.cuda.runtime
            slots = []
            for handle in handles:
                slot = self._staging.take(handle.nbytes) if self._in_session else None
                staged = slot is not None
                if slot is None:
                    slot = np.empty(handle.nbytes, dtype=np.uint8)
                runtime.memcpyAsync(slot.ctypes.data, handle.data.ptr, handle.nbytes, runtime.memcpyDeviceToHost,
                                    self.stream.ptr)
                slots.append((slot, staged))
        self.synchronize()
        self._staged = False
        return [slot.copy() if staged else slot for slot, staged in slots]

    def zero(self, handle) -> None:
        with self._errors("memset"):
            self._bind()
            self._cp.cuda.runtime.memsetAsync(handle.data.ptr, 0, handle.nbytes, self.stream.ptr)

    # -- kernels --------------------------------------------------------------
    def compile_target(self) -> str:
        """This GPU's ``sm_XX`` (a CUBIN), or PTX for the newest arch NVRTC knows when NVRTC
        predates the GPU (the driver JIT-compiles it)."""
        if self._target is None:
            self._target = nvrtc.choose_target(self.compute_capability, nvrtc.supported_archs())
        return self._target

    def load_module(self, library) -> CudaModule:
        """Load ``library`` now, from its bytes: a bad image fails here, with the driver's error."""
        data, kind = library.binary(self.compile_target())
        if kind == "ptx":
            data = nvrtc.fit_ptx_to_driver(data, self.driver)
        with self._errors(f"load library {library.name!r} ({kind})"):
            self._bind()
            module = self._cp.cuda.function.Module()
            module.load(bytes(data))
        return CudaModule(library, module, kind)

    def launch(self, module: CudaModule, kernel, launch, literals, buffers) -> None:
        self.run(self.prepare(module, kernel, launch, literals), buffers)

    def prepare(self, module: CudaModule, kernel, launch, literals):
        """The kernel's function, launch shape and literal values, ready for :meth:`run`."""
        return (module.function(kernel), launch.grid, launch.block, launch.shared,
                tuple(lit.numpy() for lit in literals), kernel)

    def run(self, prepared, buffers) -> None:
        fn, grid, block, shared, literals, kernel = prepared
        try:
            if not self._in_session:
                self._bind()
            fn(grid, block, literals + tuple(buffers), shared_mem=shared, stream=self.stream)
        except Exception as e:  # noqa: BLE001 - translated, as _errors does, without an object per launch
            raise self._translate(f"launch {kernel!r}", e) from e

    @contextlib.contextmanager
    def session(self):
        """One request: the GPU made current once, copies staged through pinned memory; at the end
        the staging memory is free again (after a synchronize if copies may still read it)."""
        self._bind()
        self._in_session = True
        try:
            yield
        finally:
            self._in_session = False
            if self._staged:  # the request stopped between an async copy and its synchronize
                with contextlib.suppress(Exception):
                    self.stream.synchronize()
                self._staged = False
            self._staging.reset()

    def synchronize(self) -> None:
        with self._errors("synchronize"):
            self._bind()
            self.stream.synchronize()

    def memory_info(self) -> dict:
        with self._errors("read memory figures"):
            self._bind()
            free, total = self._cp.cuda.runtime.memGetInfo()
        info = {"total": int(total), "free": int(free), "pool": self.pool_bytes, "capacity": self.capacity,
                "rmm": self.rmm, "reused_rmm_resource": self.plan.reuse, "plan": self.plan.note}
        if self._stats_mr is not None:
            counts = self._stats_mr.allocation_counts
            for field in ("current_bytes", "current_count", "peak_bytes", "peak_count", "total_bytes", "total_count"):
                info[f"rmm_{field}"] = int(getattr(counts, field))
        return info

    def describe(self) -> dict:
        return {**super().describe(), "index": self.index, "driver": ".".join(map(str, self.driver)),
                "pool": self.pool_bytes, "reused_rmm_resource": self.plan.reuse}

    def close(self) -> None:
        """Wait for queued work, then give back the allocator and RMM resource found at start."""
        if self._closed:
            return
        self._closed = True
        try:
            self._bind()
            self.stream.synchronize()
        except Exception:
            pass  # a poisoned context cannot synchronize; the process is about to go anyway
        try:
            if self._installed_resource:
                import rmm.mr

                rmm.mr.set_current_device_resource(self._previous_resource)
            if self._cupy_pool_limit is not None:
                self._cp.get_default_memory_pool().set_limit(size=self._cupy_pool_limit)
            self._cp.cuda.set_allocator(self._previous_allocator)
        except Exception as e:
            logger.warning("dask-kaas: could not restore the memory allocator on close: %s", describe(e))
        self._stats_mr = None


class PinnedStaging:
    """Pinned host memory reused across requests, handed out by bumping an offset.

    A request's inputs are copied into it and sent to the GPU asynchronously, and its outputs
    land in it before the request's one synchronize; :meth:`reset` hands it all back once that
    synchronize is done. Chunks are added as needed up to ``limit`` bytes in all; past that,
    :meth:`take` answers None and the copy goes through pageable memory.
    """

    ALIGN = 256

    def __init__(self, cupy, limit: int):
        self._cp = cupy
        self.limit = int(limit)
        self.chunks: list[np.ndarray] = []
        self._chunk = 0
        self._offset = 0

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.chunks)

    def reset(self) -> None:
        self._chunk = self._offset = 0

    def take(self, nbytes: int) -> np.ndarray | None:
        step = -(-max(nbytes, 1) // self.ALIGN) * self.ALIGN
        while self._chunk < len(self.chunks):
            chunk = self.chunks[self._chunk]
            if self._offset + nbytes <= chunk.nbytes:
                slot = chunk[self._offset: self._offset + nbytes]
                self._offset += step
                return slot
            self._chunk, self._offset = self._chunk + 1, 0
        size = max(step, 2 * (self.chunks[-1].nbytes if self.chunks else 0), 2**20)
        if self.nbytes + size > self.limit:
            size = step
            if self.nbytes + size > self.limit:
                return None
        memory = self._cp.cuda.alloc_pinned_memory(size)
        self.chunks.append(np.frombuffer(memory, dtype=np.uint8, count=size))  # keeps ``memory`` alive
        self._chunk, self._offset = len(self.chunks) - 1, step
        return self.chunks[-1][:nbytes]


def translate_error(device, what: str, exc: BaseException) -> Exception:
    """The KaasError a CUDA failure becomes: DeviceMemoryError for out-of-memory, KernelError for
    the rest; a sticky failure marks the device unhealthy (the worker then restarts)."""
    if isinstance(exc, (KernelError, DeviceMemoryError)):
        return exc
    name = getattr(device, "name", f"GPU {device.index}")
    if is_sticky(exc):
        device.healthy = False
        return KernelError(f"{name}: {what} failed, and the GPU context is lost: {describe(exc)}")
    if is_out_of_memory(exc):
        return DeviceMemoryError(f"{name}: {what} failed: out of device memory ({describe(exc)})")
    return KernelError(f"{name}: {what} failed: {describe(exc)}")


class _CudaErrors:
    """Turns CUDA failures inside a ``with`` block into KaasErrors (:func:`translate_error`)."""

    __slots__ = ("device", "what")

    def __init__(self, device: CudaDevice, what: str):
        self.device = device
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (KernelError, DeviceMemoryError)) or not isinstance(exc, Exception):
            return False
        raise translate_error(self.device, self.what, exc) from exc


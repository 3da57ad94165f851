"""The CUDA device: CuPy modules from NVRTC-compiled cubins, an RMM pool, one stream.

Memory comes from an RMM pool set as CuPy's allocator (sized by
``kaas.cuda.pool-size``, default 80% of free memory); every copy and launch is
queued on the worker's one non-blocking stream, so frees are stream-ordered.
"""
from __future__ import annotations

import logging

import numpy as np

from .. import config
from ..errors import DeviceMemoryError, KernelError
from .base import Device

logger = logging.getLogger(__name__)

# CUDA errors after which the context is unusable: the worker must restart.
STICKY_ERRORS = ("cudaErrorIllegalAddress", "cudaErrorLaunchFailure", "cudaErrorIllegalInstruction",
                 "cudaErrorMisalignedAddress", "cudaErrorInvalidPc", "cudaErrorHardwareStackError",
                 "cudaErrorAssert", "CUDA_ERROR_ILLEGAL_ADDRESS", "CUDA_ERROR_LAUNCH_FAILED")


def gpu_count() -> int:
    """How many CUDA devices answer in this process (0 without CuPy or a driver)."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


class CudaDevice(Device):
    kind = "cuda"

    def __init__(self, device_index: int = 0, *, pool_size=None, capacity=None, use_rmm: bool = True):
        import cupy as cp

        self._cp = cp
        self.index = device_index
        self._device = cp.cuda.Device(device_index)
        self._device.use()
        free, total = cp.cuda.runtime.memGetInfo()
        pool_bytes = config.parse_size(
            pool_size if pool_size is not None else config.get("cuda.pool-size"), total=free, name="kaas.cuda.pool-size"
        )
        self.pool_bytes = pool_bytes
        capacity = capacity if capacity is not None else config.get("cuda.cache-capacity")
        self.capacity = config.parse_size(capacity, total=pool_bytes, name="kaas.cuda.cache-capacity") if capacity \
            else pool_bytes
        if self.capacity > pool_bytes:
            raise ValueError(f"cache capacity {self.capacity} exceeds the RMM pool ({pool_bytes} bytes)")
        props = cp.cuda.runtime.getDeviceProperties(device_index)
        name = props["name"]
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.arch = f"sm_{self._device.compute_capability}"
        self._stats_mr = None
        self.rmm = False
        if use_rmm:
            self._setup_rmm(pool_bytes)
        else:
            cp.get_default_memory_pool().set_limit(size=pool_bytes)
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.healthy = True

    def _setup_rmm(self, pool_bytes: int) -> None:
        try:
            import rmm
            from rmm.allocators.cupy import rmm_cupy_allocator
        except ImportError:
            logger.warning("RMM is not installed: using CuPy's memory pool (install the cuda13/cuda12 extra)")
            self._cp.get_default_memory_pool().set_limit(size=pool_bytes)
            return
        # The pool's granularity rounds sizes up; keep it a multiple of 256 bytes.
        pool_bytes -= pool_bytes % 256
        pool = rmm.mr.PoolMemoryResource(
            rmm.mr.CudaMemoryResource(), initial_pool_size=pool_bytes, maximum_pool_size=pool_bytes
        )
        self._stats_mr = rmm.mr.StatisticsResourceAdaptor(pool)
        rmm.mr.set_current_device_resource(self._stats_mr)
        self._cp.cuda.set_allocator(rmm_cupy_allocator)
        self.rmm = True

    # -- memory ---------------------------------------------------------------
    def allocate(self, nbytes: int):
        cp = self._cp
        try:
            with self.stream:
                return cp.empty(nbytes, dtype=cp.uint8)
        except (cp.cuda.memory.OutOfMemoryError, MemoryError) as e:
            raise DeviceMemoryError(f"{self.name}: cannot allocate {nbytes} bytes ({e})") from e

    def free(self, handle) -> None:
        # The array's memory returns to the pool, ordered on the stream it was allocated on.
        del handle

    def copy_in(self, handle, data: np.ndarray) -> None:
        with self._errors("copy to device"):
            handle[: data.nbytes].set(data, stream=self.stream)

    def copy_out(self, handle) -> np.ndarray:
        with self._errors("copy from device"):
            out = handle.get(stream=self.stream)
            self.stream.synchronize()
            return out

    def zero(self, handle) -> None:
        with self._errors("memset"):
            self._cp.cuda.runtime.memsetAsync(handle.data.ptr, 0, handle.nbytes, self.stream.ptr)

    # -- kernels --------------------------------------------------------------
    def load_module(self, library):
        with self._errors(f"load library {library.name!r}"):
            return self._cp.RawModule(path=library.binary_path(self.compile_target()))

    def compile_target(self) -> str:
        """This GPU's sm_XX, or PTX for the newest arch NVRTC knows when it predates the GPU (the driver JITs it)."""
        from .. import nvrtc

        cc = int(self.arch[3:])
        supported = nvrtc.supported_archs()
        if cc in supported:
            return self.arch
        older = [a for a in supported if a <= cc]
        if not older:
            raise KernelError(f"{self.name} ({self.arch}) is older than every arch NVRTC supports ({supported})")
        return f"compute_{max(older)}"

    def launch(self, module, kernel, launch, literals, buffers) -> None:
        try:
            fn = module.get_function(kernel)
        except Exception as e:
            raise KernelError(f"kernel {kernel!r} is not in the loaded module: {e}") from e
        args = tuple(lit.numpy() for lit in literals) + tuple(buffers)
        with self._errors(f"launch {kernel!r}"):
            with self.stream:
                fn(launch.grid, launch.block, args, shared_mem=launch.shared)

    def synchronize(self) -> None:
        with self._errors("synchronize"):
            self.stream.synchronize()

    def _errors(self, what: str):
        return _CudaErrors(self, what)

    def memory_info(self) -> dict:
        free, total = self._cp.cuda.runtime.memGetInfo()
        info = {"total": int(total), "free": int(free), "pool": self.pool_bytes, "rmm": self.rmm}
        if self._stats_mr is not None:
            counts = self._stats_mr.allocation_counts
            for field in ("current_bytes", "current_count", "peak_bytes", "peak_count", "total_bytes", "total_count"):
                info[f"rmm_{field}"] = int(getattr(counts, field))
        return info

    def close(self) -> None:
        try:
            self.stream.synchronize()
        except Exception:
            pass


class _CudaErrors:
    """Turns CUDA failures into KernelError, and marks the device unhealthy on sticky errors."""

    def __init__(self, device: CudaDevice, what: str):
        self.device = device
        self.what = what

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, (KernelError, DeviceMemoryError)):
            return False
        text = f"{exc_type.__name__}: {exc}"
        if any(code in text for code in STICKY_ERRORS):
            self.device.healthy = False
        raise KernelError(f"{self.device.name}: {self.what} failed: {text}") from exc

"""The CUDA device: modules loaded from NVRTC-compiled cubins, a memory pool of its own, one stream.

Memory comes from an RMM pool the device owns (sized as :mod:`.cuda_memory` decides), or from
the RMM resource the worker already has, allocated explicitly from it (without RMM: a CuPy
memory pool of the device's own). Nothing process-wide changes: CuPy's allocator and RMM's
current resource stay what they were, so several devices in one process keep apart and close
in any order, and other CuPy code in the worker allocates as it did.

Every copy and launch is queued on the device's one non-blocking stream, so frees are
stream-ordered. The CUDA device is current per *thread*: a request's :meth:`CudaDevice.session`
binds it once, and every entry point used outside a session binds it first, because Dask
builds the device on its event loop and runs tasks in its executor threads.

Within a request, each byte is copied once per direction: inputs straight from the caller's
arrays (the driver stages pageable memory itself; a pinned copy of ours would only add a
host copy), outputs into pinned blocks that are handed to the caller as they are
(:class:`~.reuse.PinnedBlocks`); then one synchronize. Buffers the request frees serve the
next one of the same size (:class:`~.reuse.SpareBuffers`), so a warm request allocates
nothing. On one request in ``kaas.cuda.time-every``, CUDA events time its copies in, its
kernels and its copies out.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import logging
import os
import threading
from typing import Any

import numpy as np

from .. import config
from ..errors import ConfigError, DeviceMemoryError, KernelError
from ..kernels import nvrtc
from .base import Device
from .cuda_errors import describe, is_out_of_memory, is_sticky
from .cuda_memory import MemoryPlan, is_default_resource, plan_memory, resource_bytes
from .reuse import PinnedBlocks, SpareBuffers

logger = logging.getLogger(__name__)

#: Freed device buffers kept for the next request, per device (spares never stop an allocation:
#: they are let go before one is refused).
SPARE_BYTES = 64 * 2**20


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
    if any(os.path.basename(p)[len("nvidia") :].isdigit() for p in glob.glob("/dev/nvidia[0-9]*")):
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

    def __init__(self, device: CudaDevice, library, module, kind: str):
        self.library = library
        self.name = library.name
        self.kind = kind
        self._device = device
        self._module = module
        self._functions: dict[str, object] = {}

    def function(self, kernel: str):
        fn = self._functions.get(kernel)
        if fn is None:
            try:
                fn = self._module.get_function(kernel)
            except Exception as e:
                if is_sticky(e):  # the context is gone, not the kernel
                    raise translate_error(self._device, f"look up kernel {kernel!r}", e) from e
                raise KernelError(
                    f"kernel {kernel!r} is not in library {self.name!r} (loaded as {self.kind}): {describe(e)}"
                ) from e
            self._functions[kernel] = fn
        return fn


_shared_lock = threading.Lock()
_shared: dict[tuple[int, int], list] = {}  # (GPU, id(resource)) -> [resource, KaaS devices allocating from it]


def _claim_shared(index: int, resource, share: int) -> tuple[int, int]:
    """Count one more device of this process allocating from the worker's RMM ``resource`` on GPU
    ``index``; refuse more than ``share`` (each plans for 1/share of the resource)."""
    key = (index, id(resource))
    with _shared_lock:
        entry = _shared.setdefault(key, [resource, 0])
        if entry[1] >= share:
            raise ConfigError(
                f"GPU {index}: the RMM resource this process set up is already used by {entry[1]} "
                f"KaaS device(s) of this process, each planned as 1/{share} of it "
                f"(kaas.cuda.workers-per-device {share}); raise kaas.cuda.workers-per-device to "
                "split it among more"
            )
        entry[1] += 1
    return key


def _release_shared(key: tuple[int, int]) -> None:
    with _shared_lock:
        entry = _shared.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _shared[key]


class CudaDevice(Device):
    """One GPU, used by one KaaS worker (or ``share`` of them, splitting its memory).

    Parameters
    ----------
    device_index: which visible CUDA device.
    pool_size: the worker's RMM pool (bytes, "8GiB", or a share "80%" of the GPU's memory
        split among ``share`` workers); default ``kaas.cuda.pool-size``.
    capacity: the buffer cache's bytes, or a share of the pool; default
        ``kaas.cuda.cache-capacity``.
    use_rmm: allocate through RMM (else a CuPy memory pool, limited to the pool size).
    share: KaaS workers on this GPU; default ``kaas.cuda.workers-per-device``.
    """

    kind = "cuda"

    def __init__(
        self, device_index: int = 0, *, pool_size=None, capacity=None, use_rmm: bool = True, share: int | None = None
    ):
        import cupy as cp

        self._cp = cp
        self.index = int(device_index)
        self.healthy = True
        self._closed = False
        self._mr: Any = None
        self._pool: Any = None
        self._shared_key: tuple[int, int] | None = None
        self.rmm = False
        with self._errors("open the device"):
            self._bind()
            device = cp.cuda.Device(self.index)
            free, total = cp.cuda.runtime.memGetInfo()
            props = cp.cuda.runtime.getDeviceProperties(self.index)
            self.driver = nvrtc.cuda_version(int(cp.cuda.runtime.driverGetVersion()))
            self.compute_capability = int(device.compute_capability)
            self.stream = cp.cuda.Stream(non_blocking=True)
            self._events = [cp.cuda.Event() for _ in range(4)]  # the marks of a timed request
        name = props["name"]
        self.name = name.decode() if isinstance(name, bytes) else str(name)
        self.arch = f"sm_{self.compute_capability}"
        self.total_memory = int(total)
        self._target: str | None = None
        self.plan = self._setup_memory(
            total=int(total),
            free=int(free),
            pool_size=pool_size if pool_size is not None else config.get("cuda.pool-size"),
            cache_capacity=capacity if capacity is not None else config.get("cuda.cache-capacity"),
            share=share if share is not None else int(config.get("cuda.workers-per-device")),
            use_rmm=use_rmm,
        )
        self.pool_bytes = self.plan.pool_bytes
        self.capacity = self.plan.capacity
        self._spares = SpareBuffers(SPARE_BYTES)
        self._pinned = PinnedBlocks(
            cp.cuda.alloc_pinned_memory,
            config.parse_size(config.get("cuda.pinned-bytes"), name="kaas.cuda.pinned-bytes"),
        )
        self._time_every = int(config.get("cuda.time-every") or 0)
        self._sessions = 0
        self._in_session = False
        self._timed = False
        self._marks_made = 0
        self._pending = False  # copies out queued since the last synchronize

    # -- memory setup ---------------------------------------------------------
    def _setup_memory(self, *, total, free, pool_size, cache_capacity, share, use_rmm) -> MemoryPlan:
        cp = self._cp
        rmm: Any = None
        if use_rmm:
            try:
                import rmm as rmm_module
                import rmm.mr as _rmm_mr  # noqa: F401 - loads the submodule that rmm.mr names below

                rmm = rmm_module
            except ImportError:
                logger.warning("RMM is not installed: using a CuPy memory pool (install the cuda13/cuda12 extra)")
        if rmm is None:
            plan = plan_memory(total=total, free=free, pool_size=pool_size, cache_capacity=cache_capacity, share=share)
            self._pool = cp.cuda.MemoryPool()
            self._pool.set_limit(size=plan.pool_bytes)
            self._malloc = self._pool.malloc
            return plan
        current = rmm.mr.get_current_device_resource()
        reuse = not is_default_resource(current)
        plan = plan_memory(
            total=total,
            free=free,
            pool_size=pool_size,
            cache_capacity=cache_capacity,
            share=share,
            existing_bytes=resource_bytes(current) if reuse else None,
            reuse=reuse,
        )
        if reuse:
            self._shared_key = _claim_shared(self.index, current, share)
        try:
            with self._errors(f"set up an RMM pool of {plan.pool_bytes} bytes"):
                upstream = (
                    current
                    if reuse
                    else rmm.mr.PoolMemoryResource(
                        rmm.mr.CudaMemoryResource(),
                        initial_pool_size=plan.pool_bytes,
                        maximum_pool_size=plan.pool_bytes,
                    )
                )
                self._mr = rmm.mr.StatisticsResourceAdaptor(upstream)
                self._rmm_stream = _rmm_stream(self.stream)
                self._device_buffer = rmm.DeviceBuffer
        except BaseException:
            if self._shared_key is not None:
                _release_shared(self._shared_key)
            raise
        self._malloc = self._rmm_malloc
        self.rmm = True
        return plan

    def _rmm_malloc(self, nbytes: int):
        cp = self._cp
        buffer = self._device_buffer(size=nbytes, stream=self._rmm_stream, mr=self._mr)
        return cp.cuda.MemoryPointer(cp.cuda.UnownedMemory(buffer.ptr, buffer.size, buffer, self.index), 0)

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
        """A buffer of ``nbytes``: a spare one of that size if the last requests freed one, else a new
        one from the pool (spares are let go first when the pool refuses)."""
        spare = self._spares.take(nbytes)
        if spare is not None:
            return spare
        with self._errors(f"allocate {nbytes} bytes"):
            if not self._in_session:
                self._bind()
            try:
                return self._new_buffer(nbytes)
            except Exception as e:
                if not is_out_of_memory(e) or not self._spares.nbytes:
                    raise
            self._spares.clear()
            return self._new_buffer(nbytes)

    def _new_buffer(self, nbytes: int):
        cp = self._cp
        with self.stream:  # a CuPy pool orders reuse on the stream current at allocation
            return cp.ndarray((nbytes,), dtype=cp.uint8, memptr=self._malloc(nbytes))

    def free(self, handle) -> None:
        # Kept for the next request of this size, or back to the pool once the last reference goes
        # (stream-ordered: work already queued on the buffer completes first).
        self._spares.put(handle, handle.nbytes)

    def copy_in(self, handle, data: np.ndarray) -> None:
        """Straight from the caller's array: for pageable memory the driver stages the bytes itself and
        returns once it has them, so the array may go as soon as this returns."""
        src = np.ascontiguousarray(data)
        with self._errors("copy to the device"):
            if not self._in_session:
                self._bind()
            runtime = self._cp.cuda.runtime
            runtime.memcpyAsync(
                handle.data.ptr, src.ctypes.data, src.nbytes, runtime.memcpyHostToDevice, self.stream.ptr
            )

    def copy_out(self, handle) -> np.ndarray:
        return self.copy_out_many([handle])[0]

    def copy_out_many(self, handles) -> list[np.ndarray]:
        """Every buffer's bytes queued into a pinned block (pageable memory past ``kaas.cuda.pinned-bytes``
        or where pinning fails), the end of the copies marked, then one synchronize for the request's
        kernels and copies together. The blocks are handed back as they are: no second copy."""
        outs = []
        with self._errors("copy from the device"):
            if not self._in_session:
                self._bind()
            runtime = self._cp.cuda.runtime
            for handle in handles:
                out = self._pinned.take(handle.nbytes)
                if out is None:
                    out = np.empty(handle.nbytes, dtype=np.uint8)
                self._pending = True
                runtime.memcpyAsync(
                    out.ctypes.data, handle.data.ptr, handle.nbytes, runtime.memcpyDeviceToHost, self.stream.ptr
                )
                outs.append(out)
            self.mark()
        self.synchronize()
        self._pending = False
        return outs

    def zero(self, handle) -> None:
        with self._errors("memset"):
            if not self._in_session:
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
        return CudaModule(self, library, module, kind)

    def launch(self, module: CudaModule, kernel, launch, literals, buffers) -> None:
        self.run(self.prepare(module, kernel, launch, literals), buffers)

    def prepare(self, module: CudaModule, kernel, launch, literals):
        """The kernel's function, launch shape and literal values, ready for :meth:`run`."""
        return (
            module.function(kernel),
            launch.grid,
            launch.block,
            launch.shared,
            tuple(lit.numpy() for lit in literals),
            kernel,
        )

    def run(self, prepared, buffers) -> None:
        fn, grid, block, shared, literals, kernel = prepared
        try:
            if not self._in_session:
                self._bind()
            fn(grid, block, literals + tuple(buffers), shared_mem=shared, stream=self.stream)
        except Exception as e:
            raise self._translate(f"launch {kernel!r}", e) from e

    @contextlib.contextmanager
    def session(self):
        """One request: the GPU made current once for all its calls; timed with CUDA events when it is
        the one in ``kaas.cuda.time-every``; at the end nothing it queued is still writing to host memory."""
        with self._errors("make the GPU current"):
            self._bind()
        self._in_session = True
        self._timed = self._time_every > 0 and self._sessions % self._time_every == 0
        self._sessions += 1
        self._marks_made = 0
        try:
            yield
        finally:
            self._in_session = False
            if self._pending:  # the request stopped between a copy out and its synchronize
                with contextlib.suppress(Exception):
                    self.stream.synchronize()
                self._pending = False

    def mark(self) -> None:
        if self._timed and self._marks_made < len(self._events):
            with self._errors("record an event"):
                self._events[self._marks_made].record(self.stream)
            self._marks_made += 1

    def stage_seconds(self) -> list[float] | None:
        """The spans between a timed request's marks, read from its CUDA events (after its synchronize)."""
        if not self._timed or self._marks_made < 2:
            return None
        self._timed = False
        events, elapsed = self._events[: self._marks_made], self._cp.cuda.get_elapsed_time
        with self._errors("read the request's events"):
            return [elapsed(a, b) / 1e3 for a, b in itertools.pairwise(events)]

    def synchronize(self) -> None:
        with self._errors("synchronize"):
            if not self._in_session:
                self._bind()
            self.stream.synchronize()

    def memory_info(self) -> dict:
        with self._errors("read memory figures"):
            self._bind()
            free, total = self._cp.cuda.runtime.memGetInfo()
        info = {
            "total": int(total),
            "free": int(free),
            "pool": self.pool_bytes,
            "capacity": self.capacity,
            "rmm": self.rmm,
            "reused_rmm_resource": self.plan.reuse,
            "plan": self.plan.note,
            "spare_bytes": self._spares.nbytes,
            "pinned_bytes": self._pinned.nbytes,
            "pinned_busy_bytes": self._pinned.busy(),
        }
        if self._pinned.failed is not None:
            info["pinned_failed"] = describe(self._pinned.failed)
        if self._mr is not None:
            counts = self._mr.allocation_counts
            for field in ("current_bytes", "current_count", "peak_bytes", "peak_count", "total_bytes", "total_count"):
                info[f"rmm_{field}"] = int(getattr(counts, field))
        elif self._pool is not None:
            info.update(
                cupy_pool_used_bytes=int(self._pool.used_bytes()), cupy_pool_total_bytes=int(self._pool.total_bytes())
            )
        return info

    def describe(self) -> dict:
        return {
            **super().describe(),
            "index": self.index,
            "driver": ".".join(map(str, self.driver)),
            "pool": self.pool_bytes,
            "reused_rmm_resource": self.plan.reuse,
        }

    def close(self) -> None:
        """Wait for queued work, then let go of the spares, the pinned blocks and the pool (its memory
        returns once the last buffer allocated from it goes)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._bind()
            self.stream.synchronize()
        except Exception:
            pass  # a poisoned context cannot synchronize; the process is about to go anyway
        self._spares.clear()
        self._pinned.clear()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                self._pool.free_all_blocks()
        self._mr = None
        if self._shared_key is not None:
            _release_shared(self._shared_key)
            self._shared_key = None


def _rmm_stream(stream):
    """RMM's view of a CuPy stream (the module moved between RMM releases)."""
    try:
        from rmm.pylibrmm.stream import Stream
    except ImportError:  # RMM before 24.12
        from rmm._cuda.stream import Stream
    return Stream(obj=stream)


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

"""The host device: NumPy memory inside a fixed capacity, kernels run by their host twins.

It behaves like a GPU where it matters to the rest of the system: memory is
finite (allocation past the capacity fails), buffers are opaque, and every
kernel must exist in the library.
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import ConfigError, DeviceMemoryError, KernelError
from .base import Device


class HostDevice(Device):
    kind = "host"
    arch = None

    def __init__(self, capacity: int, name: str = "host"):
        if capacity <= 0:
            raise ConfigError(f"host device capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.name = name
        self._used = 0
        self._lock = threading.Lock()

    def allocate(self, nbytes: int) -> np.ndarray:
        with self._lock:
            if self._used + nbytes > self.capacity:
                raise DeviceMemoryError(
                    f"host device out of memory: {nbytes} bytes asked, {self.capacity - self._used} of "
                    f"{self.capacity} free"
                )
            self._used += nbytes
        return np.empty(nbytes, dtype=np.uint8)

    def free(self, handle: np.ndarray) -> None:
        with self._lock:
            self._used -= handle.nbytes

    def copy_in(self, handle: np.ndarray, data: np.ndarray) -> None:
        handle[: data.nbytes] = data

    def copy_out(self, handle: np.ndarray) -> np.ndarray:
        return handle.copy()

    def zero(self, handle: np.ndarray) -> None:
        handle.fill(0)

    def load_module(self, library):
        return library

    def launch(self, module, kernel, launch, literals, buffers) -> None:
        self.run(self.prepare(module, kernel, launch, literals), buffers)

    def prepare(self, module, kernel, launch, literals):
        return module, kernel, module.prepare_twin(kernel, launch, [lit.numpy() for lit in literals])

    def run(self, prepared, buffers) -> None:
        module, kernel, call = prepared
        try:
            call(buffers)
        except KernelError:
            raise
        except Exception as e:
            raise KernelError(f"kernel {kernel!r} of library {module.name!r} failed on the host device: {e!r}") from e

    def synchronize(self) -> None:
        pass

    def memory_info(self) -> dict:
        with self._lock:
            return {"total": self.capacity, "free": self.capacity - self._used, "used": self._used}

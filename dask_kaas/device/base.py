"""The device protocol: what the runtime needs from a GPU (or its host stand-in).

A device owns raw memory and launches kernels; it knows nothing of requests,
caches or stores. Handles are opaque to every caller: the runtime only passes
them back to the device that made them.
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np

Handle = Any
_NO_SESSION = nullcontext()


class Device(ABC):
    """One accelerator (or the host standing in for one).

    Attributes: ``kind`` ("cuda" or "host"), ``name`` (human readable),
    ``capacity`` (bytes the buffer cache may hold on it), ``arch`` (the
    compile target, e.g. "sm_90"; None on the host).
    """

    kind: str
    name: str
    capacity: int
    arch: str | None = None

    @abstractmethod
    def allocate(self, nbytes: int) -> Handle:
        """Return a buffer of ``nbytes`` (contents undefined). Raises DeviceMemoryError when out of memory."""

    @abstractmethod
    def free(self, handle: Handle) -> None:
        """Give a buffer back. Work already queued that uses it still completes correctly."""

    @abstractmethod
    def copy_in(self, handle: Handle, data: np.ndarray) -> None:
        """Copy flat uint8 host bytes into the start of a buffer."""

    @abstractmethod
    def copy_out(self, handle: Handle) -> np.ndarray:
        """Return the buffer's bytes as a new flat uint8 host array, after all queued work."""

    @abstractmethod
    def zero(self, handle: Handle) -> None:
        """Set every byte of the buffer to zero."""

    @abstractmethod
    def load_module(self, library) -> Any:
        """Load a kernel library for this device (compiling it if needed); raises KernelError."""

    @abstractmethod
    def launch(self, module, kernel: str, launch, literals: Sequence, buffers: Sequence[Handle]) -> None:
        """Queue one kernel: ``literals`` (Literal objects) first, then ``buffers``; raises KernelError."""

    def prepare(self, module, kernel: str, launch, literals: Sequence) -> Any:
        """Everything about a launch but its buffers, decided once (the function looked up, the
        literal values converted), for :meth:`run`. A runtime keeps it for launches that recur."""
        return (module, kernel, launch, tuple(literals))

    def run(self, prepared, buffers: Sequence[Handle]) -> None:
        """Queue one prepared launch on ``buffers``; raises KernelError."""
        module, kernel, launch, literals = prepared
        self.launch(module, kernel, launch, literals, buffers)

    def session(self):
        """Around one request: whatever a device sets up once per request rather than per call
        (CUDA: making the GPU and its stream current; staging buffers handed back at the end)."""
        return _NO_SESSION

    def copy_out_many(self, handles: Sequence[Handle]) -> list[np.ndarray]:
        """:meth:`copy_out` of several buffers after all queued work, with one wait for it all, and
        :meth:`mark` once the copies are done (or queued); raises KernelError if a queued kernel failed
        (even with no buffers)."""
        self.synchronize()
        outs = [self.copy_out(h) for h in handles]
        self.mark()
        return outs

    _marks: list | None = None

    def mark(self) -> None:
        """A point on the device's timeline in the running request: the runtime marks its start, its
        copies in done and its kernels done; :meth:`copy_out_many` marks its copies out. Here the work
        is done when queued, so the host's clock serves."""
        if self._marks is None:
            self._marks = []
        self._marks.append(time.perf_counter())

    def stage_seconds(self) -> list[float] | None:
        """Seconds between the last request's marks (copies in, kernels, copies out), as the device
        measured them; None when that request was not timed. Read once, after the request."""
        marks, self._marks = self._marks, None
        return [b - a for a, b in itertools.pairwise(marks)] if marks and len(marks) > 1 else None

    @abstractmethod
    def synchronize(self) -> None:
        """Wait for all queued work; raises KernelError if a kernel failed."""

    @abstractmethod
    def memory_info(self) -> dict:
        """``{"total": bytes, "free": bytes, ...}`` as the device itself reports it."""

    def close(self) -> None:  # noqa: B027 - optional: a device with nothing to release keeps this
        """Release the device's resources. The device is unusable afterwards."""

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "capacity": self.capacity, "arch": self.arch}

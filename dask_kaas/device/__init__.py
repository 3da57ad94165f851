"""Device layer: one protocol (``base.Device``), a CUDA backend and a host backend."""

from __future__ import annotations

import logging

from .. import config
from ..errors import ConfigError
from .base import Device
from .cuda import cuda_unavailable_reason, gpu_count, gpu_present
from .host import HostDevice

KINDS = ("auto", "cuda", "host")
logger = logging.getLogger(__name__)


def resolve_kind(kind: str | None) -> str:
    """Turn "auto" (or None: the ``kaas.device`` setting) into "cuda" or "host".

    "auto" picks "host" where no GPU answers; where a GPU is present but CuPy cannot use it,
    it says why in a warning instead of falling back silently.
    """
    kind = kind or config.get("device")
    if kind not in KINDS:
        raise ConfigError(f"device must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "auto":
        if gpu_count() > 0:
            return "cuda"
        if gpu_present():
            logger.warning(
                "dask-kaas: this machine has an NVIDIA GPU but %s; using the host device "
                "(run `dask-kaas doctor` for details)",
                cuda_unavailable_reason(),
            )
        return "host"
    return kind


def make_device(kind: str | None = None, *, memory=None, device_index: int = 0, share: int | None = None) -> Device:
    """Build a device. ``memory`` is the host capacity or the CUDA pool size (bytes, "2GiB", "80%");
    ``share`` is how many KaaS workers use the same GPU, or on the host the same machine (they split
    a percentage: of the GPU's memory, or of the machine's physical memory)."""
    kind = resolve_kind(kind)
    if kind == "cuda":
        from .cuda import CudaDevice

        return CudaDevice(device_index, pool_size=memory, share=share)
    import psutil  # (a dependency of distributed)

    capacity = config.parse_size(
        memory if memory is not None else config.get("host.memory"),
        name="kaas.host.memory",
        total=psutil.virtual_memory().total // max(1, share or 1),
    )
    return HostDevice(capacity)


__all__ = [
    "Device",
    "HostDevice",
    "cuda_unavailable_reason",
    "gpu_count",
    "gpu_present",
    "make_device",
    "resolve_kind",
]

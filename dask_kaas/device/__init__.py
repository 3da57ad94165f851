"""Device layer: one protocol (``base.Device``), a CUDA backend and a host backend."""
from __future__ import annotations

from .. import config
from .base import Device
from .cuda import gpu_count
from .host import HostDevice

KINDS = ("auto", "cuda", "host")


def resolve_kind(kind: str | None) -> str:
    """Turn "auto" (or None: the ``kaas.device`` setting) into "cuda" or "host"."""
    kind = kind or config.get("device") or "auto"
    if kind not in KINDS:
        raise ValueError(f"device must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "auto":
        return "cuda" if gpu_count() > 0 else "host"
    return kind


def make_device(kind: str | None = "auto", *, memory=None, device_index: int = 0) -> Device:
    """Build a device. ``memory`` is the host capacity or the CUDA pool size (bytes, "2GiB", "80%")."""
    kind = resolve_kind(kind)
    if kind == "cuda":
        from .cuda import CudaDevice

        return CudaDevice(device_index, pool_size=memory)
    capacity = config.parse_size(memory if memory is not None else config.get("host.memory"), name="kaas.host.memory")
    return HostDevice(capacity)


__all__ = ["Device", "HostDevice", "make_device", "resolve_kind", "gpu_count"]

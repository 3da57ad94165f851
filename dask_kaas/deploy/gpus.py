"""Which GPU each KaaS worker of a node gets: pure rules, shared by ``dask kaas worker`` and
:class:`~dask_kaas.LocalKaasCluster`.

As ``dask cuda worker`` does, worker ``i`` sees every GPU the node lets it see, its own first: its
``CUDA_VISIBLE_DEVICES`` is the parent's list rotated to start at GPU ``i mod n`` (entries kept as
they are, indices or UUIDs), so device 0 of the worker is its GPU. Workers beyond the GPU count
share GPUs round-robin, and each knows how many share its GPU (they split a percentage pool).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ..errors import ConfigError

__all__ = ["WorkerSlot", "visible_devices", "worker_slots"]


class WorkerSlot(NamedTuple):
    """One worker's place on a node: its ``CUDA_VISIBLE_DEVICES`` (None on the host device), its
    GPU (the first entry), and how many workers share that GPU."""

    visible: str | None
    gpu: str | None
    share: int


def visible_devices(env: Mapping[str, str] | None = None, count: int = 0) -> list[str]:
    """The GPUs this process may hand out: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set
    (empty, or ``-1``: none), else ``0 .. count-1``."""
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return [str(i) for i in range(count)]
    entries = [e.strip() for e in raw.split(",")]
    if entries == [""] or entries[0] == "-1":
        return []
    if any(not e for e in entries):
        raise ConfigError(f"CUDA_VISIBLE_DEVICES={raw!r} has an empty entry")
    return entries[: entries.index("-1")] if "-1" in entries else entries  # CUDA stops at -1


def worker_slots(devices: Sequence[str], n_workers: int | None) -> list[WorkerSlot]:
    """The slots of ``n_workers`` workers over ``devices`` (None: one per GPU). With no devices (the
    host device) every slot is ``(None, None, n_workers)``: host workers share the machine's memory."""
    if n_workers is None:
        if not devices:
            raise ConfigError("no GPU is visible: give the number of workers (or use the host device)")
        n_workers = len(devices)
    if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
        raise ConfigError(f"the number of workers must be a positive integer, got {n_workers!r}")
    if not devices:
        return [WorkerSlot(None, None, n_workers)] * n_workers
    n = len(devices)
    shares = [len(range(g, n_workers, n)) for g in range(n)]  # workers on GPU g: g, g+n, g+2n, ...
    return [
        WorkerSlot(",".join([*devices[i % n :], *devices[: i % n]]), devices[i % n], shares[i % n])
        for i in range(n_workers)
    ]

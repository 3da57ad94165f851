"""``dask kaas worker``: the KaaS workers of one node, one process per GPU (modelled on
``dask_cuda.CUDAWorker``).

Each worker runs under its own nanny with one thread, the ``GPU`` resource and the KaaS worker
plugin from the start, pinned to its GPU by ``CUDA_VISIBLE_DEVICES`` (:mod:`.gpus`); with the host
device, ``nworkers`` host workers. Everything is checked here, before any process starts.
"""

from __future__ import annotations

import asyncio
from typing import Any

from distributed import Nanny

from .. import config
from ..device import resolve_kind
from ..errors import ConfigError
from ..logs import setup_logging
from ..plugins.peer_guard import cluster_access, guard_server
from ..plugins.worker import KaasWorkerPlugin
from ..store import open_store
from .gpus import visible_devices, worker_slots

__all__ = ["KaasWorkers"]


class KaasWorkers:
    """The KaaS worker processes of one node.

    Parameters
    ----------
    scheduler : str, optional
        The scheduler's address (or give ``scheduler_file``).
    nworkers : int, optional
        Worker processes; default one per visible GPU (``CUDA_VISIBLE_DEVICES`` of this process,
        else every GPU). More workers than GPUs share them and split a percentage pool; with the
        host device it must be given.
    device : {"auto", "cuda", "host"}, optional
        Default from ``kaas.device``.
    device_memory, rmm_pool_size : int or str, optional
        Each worker's RMM pool (CUDA; ``rmm_pool_size`` is the same, under dask-cuda's name) or
        host device capacity; bytes, ``"8GiB"`` or ``"80%"``. Default from ``kaas.cuda.pool-size``
        / ``kaas.host.memory``.
    store : BufferStore or str, optional
        The workers' store (URL, path or profile; default ``kaas.store``).
    name : str, optional
        Worker names ``<name>-<i>`` (``<name>`` alone for one worker).
    resources : dict, optional
        More resources beside ``GPU``.
    **nanny_kwargs
        Passed to each :class:`distributed.Nanny` (``scheduler_file``, ``memory_limit``,
        ``local_directory``, ``death_timeout``, ``security``, ``host``, ``interface``, ``protocol``,
        ``dashboard``, ``preload``, ...).

    Raises
    ------
    ConfigError
        For a bad option, ``device="cuda"`` without a visible GPU, or ``nthreads`` other than 1.

    Examples
    --------
    >>> import asyncio
    >>> async def main():  # doctest: +SKIP
    ...     async with KaasWorkers("tcp://10.0.0.1:8786", device="cuda") as workers:
    ...         await workers.finished()
    """

    def __init__(
        self,
        scheduler: str | None = None,
        *,
        nworkers: int | None = None,
        device: str | None = None,
        device_memory: int | str | None = None,
        rmm_pool_size: int | str | None = None,
        store: Any = None,
        name: str | None = None,
        resources: dict | None = None,
        **nanny_kwargs: Any,
    ) -> None:
        if nanny_kwargs.pop("nthreads", 1) != 1:
            raise ConfigError("a KaaS worker runs one request at a time on its device: nthreads must be 1")
        kind = resolve_kind(device)
        if rmm_pool_size is not None:
            if kind != "cuda":
                raise ConfigError(f"--rmm-pool-size sizes an RMM pool on a GPU; this node's device is {kind}")
            if device_memory is not None and device_memory != rmm_pool_size:
                raise ConfigError("give --device-memory or --rmm-pool-size (the same thing on a GPU), not both")
            device_memory = rmm_pool_size
        if device_memory is not None:
            config.parse_size(device_memory, total=1, name="device memory")
        devices: list[str] = []
        if kind == "cuda":
            from ..device import gpu_count

            devices = visible_devices(count=gpu_count())
            if not devices:
                raise ConfigError("--device cuda, but no GPU is visible to this process")
        elif nworkers is None:
            nworkers = 1
        self.kind = kind
        self.slots = worker_slots(devices, nworkers)
        self.store = open_store(store)
        resources = {**(resources or {}), "GPU": 1}
        base_env = dict(nanny_kwargs.pop("env", None) or {})
        self._specs = []  # the nannies' arguments; Nanny objects belong to the loop that starts them
        for i, slot in enumerate(self.slots):
            plugin = KaasWorkerPlugin(
                device=kind,
                device_memory=device_memory,
                store=self.store,
                device_index=0 if slot.visible else None,
                workers_per_device=slot.share,
            )
            env = dict(base_env)
            if slot.visible is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot.visible
            worker_name = None if name is None else (name if len(self.slots) == 1 else f"{name}-{i}")
            self._specs.append(
                dict(
                    scheduler_ip=scheduler,
                    nthreads=1,
                    resources=resources,
                    plugins={plugin},
                    env=env,
                    name=worker_name,
                    **nanny_kwargs,
                )
            )
        self.nannies: list[Nanny] = []
        self._closing = False

    async def start(self) -> KaasWorkers:
        setup_logging().info(
            "dask-kaas: starting %d %s worker%s (store %s)",
            len(self._specs),
            self.kind,
            "" if len(self._specs) == 1 else "s",
            self.store.url,
        )
        self.nannies = [Nanny(**spec) for spec in self._specs]
        await asyncio.gather(*self.nannies)
        if self.nannies:  # requests-only: a nanny (run, plugin_add) takes the cluster's certificates only
            access = await cluster_access(self.nannies[0].scheduler)
            for nanny in self.nannies:
                guard_server(nanny, access)
        return self

    def __await__(self):
        return self.start().__await__()

    async def __aenter__(self) -> KaasWorkers:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def finished(self) -> None:
        """Wait until every worker has finished (closed, or its nanny gave up)."""
        await asyncio.gather(*(n.finished() for n in self.nannies))

    async def close(self, timeout: float = 30) -> None:
        self._closing = True
        await asyncio.gather(*(n.close(timeout=timeout) for n in self.nannies), return_exceptions=True)

    async def serve(self, *, reconnect: bool = True) -> None:
        """Start the workers and keep them: when they all close because the scheduler went away (not
        because :meth:`close` was called), start them again; they wait for the scheduler to be back
        (a restarted scheduler has its plugin from its preload, so nothing else is needed)."""
        self._closing = False
        while True:
            await self.start()
            await self.finished()
            if self._closing or not reconnect:
                return
            setup_logging().warning("dask-kaas: the workers closed (scheduler lost?); starting them again")

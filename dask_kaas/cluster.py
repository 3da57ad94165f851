"""LocalKaasCluster: a local Dask cluster of KaaS worker processes."""

from __future__ import annotations

import copy
import functools
from collections import Counter
from typing import TYPE_CHECKING, Any

from distributed import LocalCluster

from .deploy.gpus import visible_devices, worker_slots
from .deploy.main_guard import check_main_guard
from .device import resolve_kind
from .device.cuda import gpu_count
from .errors import ConfigError, KaasError
from .plugins.scheduler import KaasSchedulerPlugin
from .plugins.worker import KaasWorkerPlugin
from .store import open_store

if TYPE_CHECKING:  # annotations only
    from .store import BufferStore

DEFAULT_HOST_WORKERS = 2


class LocalKaasCluster(LocalCluster):
    """A LocalCluster of worker processes, one per GPU (or ``n_workers`` host devices).

    Each worker runs one thread, advertises ``resources={"GPU": 1}`` and carries
    the KaaS worker plugin; the scheduler carries the KaaS scheduler plugin.
    ``device_memory`` is each host device's capacity or each GPU's RMM pool
    size; ``store`` defaults to ``kaas.store``, else the profile ``local`` (a file store under
    ``$XDG_DATA_HOME/dask-kaas/store``, by default ``~/.local/share/dask-kaas/store``);
    ``policy`` overrides ``kaas.scheduler.policy``. Other
    keyword arguments go to :class:`distributed.LocalCluster`.

    With CUDA, each worker sees every GPU, its own first (``CUDA_VISIBLE_DEVICES``
    rotated); with more workers than GPUs, the workers on one GPU split a percentage
    pool size among them. Unless ``asynchronous=True``, the constructor returns when
    all the workers have joined (waiting at most 120 s).

    Parameters
    ----------
    n_workers : int, optional
        Worker processes; default: one per GPU with CUDA, else 2.
    device : {"auto", "cuda", "host"}, optional
        The workers' device; ``"auto"`` is CUDA where a GPU answers, else the host device.
        Default from ``kaas.device``.
        None: ``kaas.device``.
    device_memory : int or str, optional
        Each host device's capacity, or each GPU's RMM pool size (bytes, ``"2GiB"``, ``"80%"``).
        Default from ``kaas.host.memory`` / ``kaas.cuda.pool-size``.
    store : BufferStore or str, optional
        The store every worker reads consts from and writes outputs to: a store, a URL, a
        local path or a profile name (:func:`~dask_kaas.store.open_store`). Default from
        ``kaas.store``, else the profile ``local``. Not ``memory://``, which worker processes
        cannot see.
    policy : {"affinity", "balance", "static", "exclusive", "locality"}, optional
        The scheduler's placement policy; default from ``kaas.scheduler.policy``.
    **kwargs
        Passed to :class:`distributed.LocalCluster` (``dashboard_address`` defaults to
        ``":8787"``; ``resources`` gain ``GPU: 1``; the KaaS plugin joins any scheduler
        ``plugins``). ``threads_per_worker`` and ``processes`` are fixed at 1 and True.

    Attributes
    ----------
    store : BufferStore
        The cluster's store (also ``kaas_store``), to put consts into before requests run.
    kaas_device : str
        ``"cuda"`` or ``"host"``.

    Raises
    ------
    ConfigError
        For an unknown device or policy, ``device="cuda"`` where no GPU answers, a
        ``n_workers`` that is not a positive integer, an unreadable ``device_memory``, a
        ``memory://`` store, or ``threads_per_worker``/``processes`` other than 1/True.
    StoreError
        When ``store`` names no usable store (an unknown profile, say).

    See Also
    --------
    dask_kaas.install : make an existing cluster a KaaS cluster.
    dask_kaas.worker_stats, dask_kaas.cluster_state

    Examples
    --------
    >>> import numpy as np
    >>> from distributed import Client
    >>> from dask_kaas import BufferSpec, KernelSpec, Literal, LocalKaasCluster, Request, worker_stats
    >>> n = 1024
    >>> x = BufferSpec("x", 4 * n, dtype="float32", ephemeral=True)
    >>> w = BufferSpec("w", 4 * n, key="model/w", const=True)
    >>> y = BufferSpec("y", 4 * n, dtype="float32", ephemeral=True)
    >>> req = Request([KernelSpec("builtin", "vadd", grid=8, block=128, literals=[Literal("i", n)],
    ...                           arguments=[(x, "i"), (w, "i"), (y, "o")])], tenant="alice")
    >>> cluster = LocalKaasCluster(n_workers=2, device="host", device_memory="256MiB")  # doctest: +SKIP
    >>> client = Client(cluster)  # doctest: +SKIP
    >>> _ = cluster.store.put("model/w", np.ones(n, np.float32), namespace="alice")  # doctest: +SKIP
    >>> client.submit(req, x=np.arange(n, dtype=np.float32)).result()["y"][:4]  # doctest: +SKIP
    array([1., 2., 3., 4.], dtype=float32)
    >>> {stats["device"] for stats in worker_stats(client).values()}  # doctest: +SKIP
    {'host'}
    >>> client.close(); cluster.close()  # doctest: +SKIP
    """

    def __init__(
        self,
        n_workers: int | None = None,
        device: str | None = None,
        device_memory: int | str | None = None,
        store: BufferStore | str | None = None,
        *,
        policy: str | None = None,
        **kwargs: Any,
    ) -> None:
        check_main_guard()
        kind = resolve_kind(device)
        devices = visible_devices(count=gpu_count()) if kind == "cuda" else []
        if kind == "cuda" and not devices:
            raise ConfigError(
                "device='cuda' but no CUDA device answers (is CuPy installed for this CUDA version, "
                "and does CUDA_VISIBLE_DEVICES show one?)"
            )
        if n_workers is None:
            n_workers = len(devices) if kind == "cuda" else DEFAULT_HOST_WORKERS
        if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
            raise ConfigError(f"n_workers must be a positive integer, got {n_workers!r}")
        self._slots = worker_slots(devices, n_workers)
        self.kaas_device = kind
        self.kaas_store = open_store(store)
        if self.kaas_store.url.startswith("memory://"):
            raise ConfigError(
                f"store {self.kaas_store.url} lives in one process's memory, which LocalKaasCluster's worker "
                "processes cannot see; use a file:// or s3:// store (or a profile such as 'local')"
            )
        for fixed in ("threads_per_worker", "processes"):
            if fixed in kwargs and kwargs[fixed] != {"threads_per_worker": 1, "processes": True}[fixed]:
                raise ConfigError(f"LocalKaasCluster runs one-thread worker processes; {fixed} cannot be changed")
            kwargs.pop(fixed, None)
        resources = {**kwargs.pop("resources", {}), "GPU": 1}
        scheduler_kwargs = dict(kwargs.pop("scheduler_kwargs", None) or {})
        scheduler_kwargs["plugins"] = [*scheduler_kwargs.get("plugins", ()), KaasSchedulerPlugin(policy=policy)]
        self._worker_plugin = functools.partial(
            KaasWorkerPlugin, device=kind, device_memory=device_memory, store=self.kaas_store, policy=policy
        )
        self._plugin = self._worker_plugin()  # checks the options here, before any process
        kwargs.setdefault("dashboard_address", ":8787")
        super().__init__(
            n_workers=0,
            threads_per_worker=1,
            processes=True,
            resources=resources,
            scheduler_kwargs=scheduler_kwargs,
            plugins={self._plugin},
            **kwargs,
        )
        for _ in range(n_workers):  # not scale(): it starts them in a callback that would swallow their errors
            self.worker_spec.update(self.new_worker_spec())
        if not self.asynchronous:
            try:
                self.sync(self._correct_state)
            except Exception as e:
                self.close()
                cause = e.__cause__ or e
                raise KaasError(
                    f"a worker of this LocalKaasCluster failed to start: {type(cause).__name__}: {cause}"
                ) from e
            self.wait_for_workers(n_workers, timeout=120)

    def new_worker_spec(self):
        """Each new worker's place on this machine's GPUs (:func:`~dask_kaas.deploy.worker_slots`): its
        ``CUDA_VISIBLE_DEVICES``, the parent's rotated to its GPU, and a plugin that knows how many
        workers share that GPU (they split a percentage pool)."""
        specs = super().new_worker_spec()
        used = Counter(s["options"].get("env", {}).get("CUDA_VISIBLE_DEVICES") for s in self.worker_spec.values())
        for name, spec in specs.items():
            slot = self._next_slot(used)
            used[slot.visible] += 1
            spec = copy.deepcopy(spec)
            if slot.visible is not None:
                spec["options"]["env"] = {**spec["options"].get("env", {}), "CUDA_VISIBLE_DEVICES": slot.visible}
            plugin = self._worker_plugin(
                device_index=None if slot.visible is None else 0, workers_per_device=slot.share
            )
            spec["options"]["plugins"] = {plugin}
            specs[name] = spec
        return specs

    def _next_slot(self, used: Counter):
        """The first slot (in :func:`worker_slots` order) no current worker fills."""
        seen: Counter = Counter()
        for slot in self._slots:
            seen[slot.visible] += 1
            if seen[slot.visible] > used[slot.visible]:
                return slot
        return self._slots[sum(used.values()) % len(self._slots)]  # scaled past n_workers

    @property
    def store(self) -> BufferStore:
        """The cluster's :class:`~dask_kaas.BufferStore` (what every worker reads and writes)."""
        return self.kaas_store

    def __repr__(self):
        return (
            f"LocalKaasCluster({self.name!r}, {self.scheduler_address!r}, device={self.kaas_device!r}, "
            f"workers={len(self.workers)}, store={self.kaas_store.url!r})"
        )

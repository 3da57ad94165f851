"""LocalKaasCluster: a local Dask cluster of KaaS worker processes."""
from __future__ import annotations

import copy

from distributed import LocalCluster

from .errors import ConfigError
from .device import resolve_kind
from .device.cuda import gpu_count
from .plugins import KaasWorkerPlugin
from .scheduler_ext import KaasSchedulerPlugin
from .store import open_store

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
    """

    def __init__(self, n_workers=None, device="auto", device_memory=None, store=None, *, policy=None, **kwargs):
        kind = resolve_kind(device)
        gpus = gpu_count() if kind == "cuda" else 0
        if kind == "cuda" and gpus == 0:
            raise ConfigError("device='cuda' but no CUDA device answers (is CuPy installed for this CUDA version?)")
        if n_workers is None:
            n_workers = gpus if kind == "cuda" else DEFAULT_HOST_WORKERS
        if not isinstance(n_workers, int) or n_workers < 1:
            raise ConfigError(f"n_workers must be a positive integer, got {n_workers!r}")
        self.kaas_device = kind
        self.kaas_store = open_store(store)
        if self.kaas_store.url.startswith("memory://"):
            raise ConfigError(
                f"store {self.kaas_store.url} lives in one process's memory, which LocalKaasCluster's worker "
                "processes cannot see; use a file:// or s3:// store (or a profile such as 'local')"
            )
        self._gpus = gpus
        for fixed in ("threads_per_worker", "processes"):
            if fixed in kwargs and kwargs[fixed] != {"threads_per_worker": 1, "processes": True}[fixed]:
                raise ConfigError(f"LocalKaasCluster runs one-thread worker processes; {fixed} cannot be changed")
            kwargs.pop(fixed, None)
        resources = {**kwargs.pop("resources", {}), "GPU": 1}
        scheduler_kwargs = dict(kwargs.pop("scheduler_kwargs", None) or {})
        scheduler_kwargs["plugins"] = [*scheduler_kwargs.get("plugins", ()), KaasSchedulerPlugin(policy=policy)]
        share = -(-n_workers // gpus) if gpus else None  # more workers than GPUs: they split each GPU's pool
        self._plugin = KaasWorkerPlugin(device=kind, device_memory=device_memory, store=self.kaas_store, policy=policy,
                                        workers_per_device=share)
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
        self.scale(n_workers)
        if not self.asynchronous:
            self.sync(self._correct_state)
            self.wait_for_workers(n_workers, timeout=120)

    def new_worker_spec(self):
        specs = super().new_worker_spec()
        if self._gpus:
            for name, spec in specs.items():
                spec = copy.deepcopy(spec)
                index = self._i_gpu()
                devices = [str((index + i) % self._gpus) for i in range(self._gpus)]
                spec["options"]["env"] = {**spec["options"].get("env", {}),
                                          "CUDA_VISIBLE_DEVICES": ",".join(devices)}
                specs[name] = spec
        return specs

    def _i_gpu(self) -> int:
        used = {s["options"].get("env", {}).get("CUDA_VISIBLE_DEVICES", "").split(",")[0]
                for s in self.worker_spec.values()}
        for i in range(self._gpus):
            if str(i) not in used:
                return i
        return len(self.worker_spec) % self._gpus

    @property
    def store(self):
        return self.kaas_store

    def __repr__(self):
        return (f"LocalKaasCluster({self.name!r}, {self.scheduler_address!r}, device={self.kaas_device!r}, "
                f"workers={len(self.workers)}, store={self.kaas_store.url!r})")

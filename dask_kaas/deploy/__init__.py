"""Running KaaS clusters: GPU workers per node (``dask kaas worker``, :class:`KaasWorkers`), a
scheduler with the KaaS plugin and page from the start (``dask kaas scheduler``, the
``dask_kaas.preload`` module), and the pure rules of which GPU each worker gets (:mod:`.gpus`).

``KaasWorkers`` loads on first use (it needs distributed; the GPU rules do not), so
``worker_class="dask_kaas.deploy.KaasWorkers"`` works for ``SSHCluster`` and ``dask spec``.
"""

from .gpus import WorkerSlot, visible_devices, worker_slots

__all__ = ["KaasWorkers", "WorkerSlot", "visible_devices", "worker_slots"]


def __getattr__(name: str):
    if name == "KaasWorkers":
        from .worker import KaasWorkers

        return KaasWorkers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Running KaaS clusters: GPU workers per node (``dask kaas worker``), a scheduler with the KaaS
plugin and page from the start (``dask kaas scheduler``, the ``dask_kaas.preload`` module), and the
pure rules of which GPU each worker gets."""
from .gpus import WorkerSlot, visible_devices, worker_slots

__all__ = ["WorkerSlot", "visible_devices", "worker_slots"]

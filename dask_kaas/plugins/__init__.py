"""Dask worker plugins for dask-kaas."""
from .worker import PLUGIN_NAME, KaasWorkerPlugin, stats_on_worker, worker_runtime

__all__ = ["KaasWorkerPlugin", "PLUGIN_NAME", "stats_on_worker", "worker_runtime"]

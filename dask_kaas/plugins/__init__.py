"""Dask worker plugins for dask-kaas."""
from .worker import (PLUGIN_NAME, KaasWorkerPlugin, clear_cache_on_worker, set_exclusive_on_worker,
                     stats_on_worker, worker_runtime)

__all__ = ["KaasWorkerPlugin", "PLUGIN_NAME", "clear_cache_on_worker", "set_exclusive_on_worker",
           "stats_on_worker", "worker_runtime"]

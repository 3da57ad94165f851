"""Scheduler side of dask-kaas."""
from .plugin import KaasSchedulerPlugin, request_of

__all__ = ["KaasSchedulerPlugin", "request_of"]

"""dask-kaas: Kernel-as-a-Service on Dask."""
from . import config  # noqa: F401  (registers the kaas.* defaults)
from .errors import (AdmissionRejected, ConfigError, DeviceMemoryError, KaasError, KernelError, RequestError,
                     StoreError, StoreKeyError, TenantError)
from .library import Library, builtin, register_library, resolve_library
from .request import BufferSpec, KernelSpec, Literal, Request
from .store import BufferStore
from .runtime import Runtime, run_request
from .api import cluster_state, install, set_policy, worker_stats
from .cluster import LocalKaasCluster
from .plugins import KaasWorkerPlugin
from .scheduler_ext import KaasSchedulerPlugin

__version__ = "0.1.0"

__all__ = [
    "AdmissionRejected", "BufferSpec", "BufferStore", "ConfigError", "DeviceMemoryError", "KaasError",
    "KaasSchedulerPlugin", "TenantError",
    "KaasWorkerPlugin", "KernelError", "KernelSpec", "Library", "Literal", "LocalKaasCluster", "Request",
    "RequestError", "Runtime", "StoreError", "StoreKeyError", "builtin", "cluster_state", "install",
    "register_library", "resolve_library", "run_request", "set_policy", "worker_stats",
]

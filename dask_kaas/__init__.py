"""dask-kaas: Kernel-as-a-Service on Dask.

The public names below are loaded on first use, so a process imports only the layers it needs
(the scheduler never loads the store, Zarr or the device code). Where things live:

==============  ========================================================================
``request/``    what a tenant asks: buffer and kernel specs, :class:`Request`, parsing dicts
``kernels/``    kernel libraries and their registry, signatures, NVRTC, the built-in library
``store/``      persistent buffers: versions, commits, namespaces, Zarr I/O, profiles
``device/``     the host and CUDA devices a runtime drives
``runtime/``    the worker side: one request at a time on one device, the buffer cache
``scheduling/`` the scheduler's decisions as pure code: fair queue, placement, admission
``plugins/``    the Dask worker and scheduler plugins that connect those to Dask
``dashboard/``  the ``/kaas`` dashboard page and Prometheus metrics
``functions``   the function repository: named, versioned requests with declared tensors
``batching/``   the client's dynamic batching: calls of one request that queue up run as one task
``gateway/``    the Open Inference Protocol v2 front door: tokens, rate limits, the ASGI app
``compat.py``   every use of distributed's internals
==============  ========================================================================
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING

from . import config  # noqa: F401  (registers the kaas.* defaults)
from .errors import (
    AdmissionRejected,
    ConfigError,
    DeviceMemoryError,
    FunctionNotFound,
    KaasError,
    KernelError,
    RequestError,
    StoreError,
    StoreKeyError,
    TenantError,
)

try:
    __version__ = _metadata.version("dask-kaas")  # written once, in pyproject.toml
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "BufferSpec": "request",
    "KernelSpec": "request",
    "Literal": "request",
    "Request": "request",
    "Library": "kernels",
    "builtin": "kernels",
    "register_library": "kernels",
    "resolve_library": "kernels",
    "BufferStore": "store",
    "Function": "functions",
    "FunctionRepository": "functions",
    "Runtime": "runtime",
    "run_request": "runtime",
    "cluster_state": "api",
    "cluster_store": "api",
    "install": "api",
    "set_policy": "api",
    "worker_stats": "api",
    "LocalKaasCluster": "cluster",
    "Batcher": "batching",
    "KaasWorkerPlugin": "plugins.worker",
    "KaasSchedulerPlugin": "plugins.scheduler",
}

__all__ = [
    "AdmissionRejected",
    "Batcher",
    "BufferSpec",
    "BufferStore",
    "ConfigError",
    "DeviceMemoryError",
    "Function",
    "FunctionNotFound",
    "FunctionRepository",
    "KaasError",
    "KaasSchedulerPlugin",
    "KaasWorkerPlugin",
    "KernelError",
    "KernelSpec",
    "Library",
    "Literal",
    "LocalKaasCluster",
    "Request",
    "RequestError",
    "Runtime",
    "StoreError",
    "StoreKeyError",
    "TenantError",
    "builtin",
    "cluster_state",
    "cluster_store",
    "install",
    "register_library",
    "resolve_library",
    "run_request",
    "set_policy",
    "worker_stats",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dask_kaas' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .api import cluster_state, install, set_policy, worker_stats
    from .batching import Batcher
    from .cluster import LocalKaasCluster
    from .functions import Function, FunctionRepository
    from .kernels import Library, register_library, resolve_library
    from .kernels.builtin import builtin  # the Library, not its module of the same name
    from .plugins.scheduler import KaasSchedulerPlugin
    from .plugins.worker import KaasWorkerPlugin
    from .request import BufferSpec, KernelSpec, Literal, Request
    from .runtime import Runtime, run_request
    from .store import BufferStore

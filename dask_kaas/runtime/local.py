"""The runtime of a process that is not a KaaS worker: one per process, on the ``kaas.device`` device."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..device import make_device
from ..request import Request
from ..request.call import current_runtime
from .runtime import Runtime

__all__ = ["local_runtime", "run_request"]

_local: Runtime | None = None
_lock = threading.Lock()


def local_runtime() -> Runtime:
    """This process's own runtime (created on first use, with the default store); the last of
    ``kaas.runtime-resolvers``, so a request called outside any worker runs here.

    Created once per process, thread-safely: a device from :func:`dask_kaas.device.make_device`
    with its defaults (``kaas.device``, ``auto``: CUDA where a GPU answers, else the host device of
    ``kaas.host.memory`` bytes), and the store of ``kaas.store`` (else the profile ``local``),
    which is not touched until a request reads or writes it.

    Returns
    -------
    Runtime
        The same object on every call in this process.

    Raises
    ------
    ConfigError
        When the device cannot be built (an unreadable ``kaas.host.memory``, say).
    StoreError
        When ``kaas.store`` names no usable store.

    Examples
    --------
    >>> from dask_kaas.runtime import local_runtime
    >>> rt = local_runtime()
    >>> rt is local_runtime(), rt.device.kind in ("host", "cuda")
    (True, True)
    """
    global _local
    with _lock:
        if _local is None:
            _local = Runtime(make_device(), None)
        return _local


def run_request(request: Request, inputs: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Run ``request`` on the runtime of the current context, as ``request(**inputs)`` does.

    On a Dask worker with the KaaS plugin that is the worker's runtime; outside any worker it is
    this process's own (:func:`local_runtime`: the host device where no GPU answers). To run a
    request on the cluster, submit it instead: ``client.submit(request, x=...)``.

    Parameters
    ----------
    request : Request
        The request to run.
    inputs : mapping of str to array-like, optional
        Call inputs by buffer name (:meth:`Request.check_inputs`); None: no inputs.

    Returns
    -------
    dict of str to numpy.ndarray
        The request's outputs by buffer name, viewed as their buffers' dtypes and shapes.

    Raises
    ------
    RequestError
        For bad inputs, or a missing input that is not in the store either.
    KaasError
        When called on a Dask worker without the KaaS plugin.
    DeviceMemoryError
        When the request's buffers cannot fit the device even after eviction.
    KernelError
        When a kernel cannot be compiled, loaded or run.
    StoreError
        When a buffer read from the store is missing (:class:`StoreKeyError`) or does not agree
        with its spec, the tenant may not reach its key, or the store fails.

    See Also
    --------
    Request.__call__ : ``request(**inputs)``, the same.
    dask_kaas.runtime.Runtime.run : run on a runtime of your own.

    Examples
    --------
    >>> import numpy as np
    >>> from dask_kaas import BufferSpec, KernelSpec, Literal, Request, run_request
    >>> n = 8
    >>> x = BufferSpec("x", 4 * n, dtype="float32", ephemeral=True)
    >>> y = BufferSpec("y", 4 * n, dtype="float32", ephemeral=True)
    >>> axpy = Request(KernelSpec("builtin", "axpy", 1, 32, literals=[Literal("i", n), Literal("f", 2.0)],
    ...                           arguments=[(x, "i"), (y, "io")]))
    >>> out = run_request(axpy, {"x": np.arange(n, dtype=np.float32), "y": np.ones(n, np.float32)})
    >>> out["y"]
    array([ 1.,  3.,  5.,  7.,  9., 11., 13., 15.], dtype=float32)
    >>> run_request(axpy, {"x": np.arange(n, dtype=np.float32)})
    Traceback (most recent call last):
    ...
    dask_kaas.errors.RequestError: missing input 'y': the buffer is ephemeral (never in the store), ...
    """
    return current_runtime().run(request, inputs or {})

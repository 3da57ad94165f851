"""Where a called request runs: the runtime of the context it is called in.

``client.submit(request, x=x)`` makes a Dask worker call ``request(x=x)``. The request layer
does not know workers or devices; it asks, in order, the resolvers named in
``kaas.runtime-resolvers`` (``"module:function"`` strings, each returning a runtime or None),
and the first answer runs the request. By default the Dask worker's KaaS runtime
(:func:`dask_kaas.plugins.worker.worker_runtime`, an error on a worker without the KaaS plugin)
comes first, then one runtime per process (:func:`dask_kaas.runtime.local_runtime`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .. import config
from ..errors import ConfigError, KaasError

__all__ = ["add_runtime_resolver", "current_runtime", "runtime_resolvers"]

_added: list[Callable[[], Any]] = []
_loaded: dict[str, Callable[[], Any]] = {}


def add_runtime_resolver(resolver: Callable[[], Any]) -> None:
    """Ask ``resolver()`` for a runtime before the configured resolvers (e.g. in a test harness)."""
    if resolver not in _added:
        _added.append(resolver)


def _load(spec: str) -> Callable[[], Any]:
    resolver = _loaded.get(spec)
    if resolver is None:
        module, sep, name = str(spec).partition(":")
        try:
            resolver = getattr(importlib.import_module(module), name) if sep else None
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"kaas.runtime-resolvers: cannot load {spec!r} ({type(e).__name__}: {e})") from e
        if not callable(resolver):
            raise ConfigError(f"kaas.runtime-resolvers: {spec!r} must name a function as 'module:function'")
        _loaded[spec] = resolver
    return resolver


def runtime_resolvers() -> list[Callable[[], Any]]:
    """The resolvers :func:`current_runtime` asks, in order."""
    return [*_added, *(_load(spec) for spec in config.get("runtime-resolvers"))]


def current_runtime():
    """The runtime a request called here runs on: the first resolver's answer that is not None.

    Raises
    ------
    KaasError
        When no resolver gives one (or one refuses, as a Dask worker without the KaaS plugin does).
    """
    for resolver in runtime_resolvers():
        runtime = resolver()
        if runtime is not None:
            return runtime
    raise KaasError("no KaaS runtime here: every resolver in kaas.runtime-resolvers declined")

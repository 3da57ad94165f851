"""The gateway's view of the function repository: cached, so a call costs no store round trip.

Versions never change once written, so a loaded version is kept (LRU). Which versions a name has
changes with ``put`` and ``rm`` from other processes, so that list is trusted for
``kaas.gateway.function-ttl`` seconds. The clock is passed in (pure, testable).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from ..errors import FunctionNotFound
from ..functions import Function, FunctionRepository
from ..names import show

__all__ = ["Catalog"]

LOADED_VERSIONS = 1024


class Catalog:
    def __init__(self, repository: FunctionRepository, ttl: float, clock: Callable[[], float]) -> None:
        self.repository = repository
        self.ttl = ttl
        self.clock = clock
        self._versions: dict[tuple[str, str], tuple[float, list[int]]] = {}
        self._loaded: OrderedDict[tuple[str, str, int], Function] = OrderedDict()

    def versions(self, namespace: str, name: str) -> list[int]:
        now = self.clock()
        entry = self._versions.get((namespace, name))
        if entry is None or now - entry[0] >= self.ttl:
            entry = (now, self.repository.versions(name, namespace=namespace))
            self._versions[(namespace, name)] = entry
            if len(self._versions) > 4 * LOADED_VERSIONS:
                self._versions.pop(next(iter(self._versions)))
        return entry[1]

    def _load(self, namespace: str, name: str, version: int) -> Function:
        key = (namespace, name, version)
        fn = self._loaded.get(key)
        if fn is None:
            fn = self.repository.get(name, namespace=namespace, version=version)
            self._loaded[key] = fn
            if len(self._loaded) > LOADED_VERSIONS:
                self._loaded.popitem(last=False)
        else:
            self._loaded.move_to_end(key)
        return fn

    def find(self, model: str, tenant: str, version: str | None = None) -> tuple[Function, list[int]]:
        """The function ``tenant`` calls as ``model`` (newest version unless given) and its versions."""
        wanted = None
        if version is not None:
            if not (isinstance(version, str) and version.isdigit() and len(version) <= 18):
                raise FunctionNotFound(f"model {show(model)} has no version {show(version)}")
            wanted = int(version)
        for namespace, name in self.repository.locate(model, tenant):
            versions = self.versions(namespace, name)
            if not versions:
                continue
            if wanted is not None and wanted not in versions:
                raise FunctionNotFound(f"model {show(model)} has no version {wanted} (versions: "
                                       f"{', '.join(map(str, versions))})")
            return self._load(namespace, name, versions[-1] if wanted is None else wanted), versions
        raise FunctionNotFound(f"model {show(model)} is not found")

    def visible(self, tenant: str) -> list[tuple[Function, list[int]]]:
        """Every function ``tenant`` may call, newest versions (its own first, then shared)."""
        out = []
        for namespace in self.repository.visible_namespaces(tenant):
            for name in self.repository.names(namespace=namespace):
                versions = self.versions(namespace, name)
                if versions:
                    try:
                        out.append((self._load(namespace, name, versions[-1]), versions))
                    except FunctionNotFound:
                        pass
        return out

"""The gateway's view of the function repository: cached, so a call costs no store round trip.

Versions never change once written, so a loaded version is kept (LRU). Which versions a name has
changes with ``put`` and ``rm`` from other processes, so that list is trusted for
``kaas.gateway.function-ttl`` seconds. The clock is passed in (pure, testable).

:meth:`Catalog.find` with ``cached_only`` answers from the caches alone or raises :class:`Uncached`:
the gateway looks there first on its event loop and goes to a thread (and the store) only on a miss.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..bounded import BoundedDict
from ..errors import FunctionNotFound, FunctionStale
from ..functions import Function, FunctionRepository
from ..names import show

__all__ = ["Catalog", "Uncached", "visible_name"]

LOADED_VERSIONS = 1024


def visible_name(fn: Function, tenant: str) -> str:
    """The name ``tenant`` calls ``fn`` by: its own functions plainly, others' as ``namespace:name``."""
    return fn.name if fn.namespace == tenant else fn.qualified_name


class Uncached(LookupError):
    """``find(..., cached_only=True)`` needs the store."""


class Catalog:
    def __init__(self, repository: FunctionRepository, ttl: float, clock: Callable[[], float]) -> None:
        self.repository = repository
        self.ttl = ttl
        self.clock = clock
        self._versions: BoundedDict[tuple[str, str], tuple[float, list[int]]] = BoundedDict(4 * LOADED_VERSIONS)
        self._loaded: BoundedDict[tuple[str, str, int], Function] = BoundedDict(LOADED_VERSIONS)  # LRU
        # consts checked: when, problem
        self._checked: BoundedDict[tuple[str, str, int], tuple[float, str | None]] = BoundedDict(LOADED_VERSIONS)
        self._lock = threading.Lock()  # the event loop and the gateway's threads both look up; never held over I/O

    def versions(self, namespace: str, name: str, cached_only: bool = False) -> list[int]:
        now = self.clock()
        with self._lock:
            entry = self._versions.get((namespace, name))
        if entry is None or now - entry[0] >= self.ttl:
            if cached_only:
                raise Uncached(namespace, name)
            entry = (now, self.repository.versions(name, namespace=namespace))
            with self._lock:
                self._versions[(namespace, name)] = entry
        return entry[1]

    def _load(self, namespace: str, name: str, version: int, cached_only: bool = False) -> Function:
        key = (namespace, name, version)
        with self._lock:
            fn = self._loaded.get(key)
            if fn is not None:
                self._loaded.move_to_end(key)
                return fn
        if cached_only:
            raise Uncached(namespace, name, version)
        fn = self.repository.get(name, namespace=namespace, version=version)
        with self._lock:
            self._loaded[key] = fn
        return fn

    def find(
        self, model: str, tenant: str, version: str | None = None, *, cached_only: bool = False
    ) -> tuple[Function, list[int]]:
        """The function ``tenant`` calls as ``model`` (newest version unless given) and its versions;
        with ``cached_only``, :class:`Uncached` where answering needs the store."""
        wanted = None
        if version is not None:
            if not (isinstance(version, str) and version.isdigit() and len(version) <= 18):
                raise FunctionNotFound(f"model {show(model)} has no version {show(version)}")
            wanted = int(version)
        for namespace, name in self.repository.locate(model, tenant):
            versions = self.versions(namespace, name, cached_only)
            if not versions:
                continue
            if wanted is not None and wanted not in versions:
                raise FunctionNotFound(
                    f"model {show(model)} has no version {wanted} (versions: {', '.join(map(str, versions))})"
                )
            fn = self._load(namespace, name, versions[-1] if wanted is None else wanted, cached_only)
            self.check_consts(fn, cached_only)
            return fn, versions
        raise FunctionNotFound(f"model {show(model)} is not found")

    def check_consts(self, fn: Function, cached_only: bool = False) -> None:
        """:class:`FunctionStale` when the store no longer holds the consts ``fn`` was written for
        (checked at most once per ``ttl`` seconds per function version)."""
        if not fn.consts:
            return
        key = (fn.namespace, fn.name, fn.version)
        now = self.clock()
        with self._lock:
            entry = self._checked.get(key)
        if entry is None or now - entry[0] >= self.ttl:
            if cached_only:
                raise Uncached(*key)
            entry = (now, fn.const_mismatch(self.repository.consts_now(fn)))
            with self._lock:
                self._checked[key] = entry
        if entry[1] is not None:
            raise FunctionStale(entry[1])

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

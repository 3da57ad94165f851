"""What the runtime's caches key things by: a loaded library (shared, or its tenant's own), a const's
committed version and byte range, a buffer of one run."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..kernels import is_registered

__all__ = ["ConstId", "ModuleKey", "RunBufferId", "const_ref", "module_key"]


class ModuleKey(NamedTuple):
    """Kernel-cache identity of a loaded library: ``owner`` None for a registered (shared) library,
    else the tenant that brought it."""

    owner: str | None
    library: Any


def module_key(library, tenant: str | None) -> ModuleKey:
    """Kernel-cache key of a library: registered libraries are shared, a library a request brings
    is loaded for its tenant alone (no tenant's request can reach another's loaded kernels)."""
    return ModuleKey(None if is_registered(library) else (tenant or "default"), library)


class ConstId(NamedTuple):
    """Cache identity of a const buffer: which committed version of which key, and which bytes of it
    (the uid alone identifies the version; its number is kept for reports)."""

    namespace: str
    key: str
    uid: str
    offset: int
    size: int
    version: int

    @classmethod
    def of(cls, spec, version) -> ConstId:
        return cls(version.namespace, version.key, version.uid, spec.offset, spec.size, version.version)


def const_ref(key) -> tuple | None:
    """The (namespace, key) the scheduler's eviction hints name a cached const by (None: not a const)."""
    return (key.namespace, key.key) if isinstance(key, ConstId) else None


class RunBufferId(NamedTuple):
    """Cache identity of a buffer that lives for one run only (inputs, outputs, temporaries)."""

    run: int
    name: str

"""Which stored versions a request reads and where it writes: resolved and checked before any device work.

Every buffer that comes from the store (a const or keyed input not passed in
the call) is resolved in the request's tenant namespace, checked against the
namespace rules and against its spec (bytes and dtype), and pinned to the
version committed now; every persisted output is checked for write access.
A request that breaks a rule fails here, having read nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import RequestError, StoreError, StoreKeyError
from .buffer_store import BufferStore
from .versions import Version

if TYPE_CHECKING:  # the request layer sits above the store
    from ..request import BufferSpec, Request


@dataclass
class StorePlan:
    reads: dict[str, Version] = field(default_factory=dict)  # buffer name -> version to load
    writes: dict[str, tuple[str, str]] = field(default_factory=dict)  # buffer name -> (namespace, key)


def plan_store_access(store: BufferStore, request: Request, passed: Collection[str]) -> StorePlan:
    plan = StorePlan()
    tenant = request.tenant
    for name in request.inputs:
        if name in passed:
            continue
        spec = request.roles[name].spec
        namespace, key = store.resolve(spec.store_key, tenant)
        try:
            # consts: the version cache (exact locally, bounded staleness remotely); other inputs: the pointer
            version = (
                store.cached_version(key, namespace=namespace)
                if spec.const
                else store.version(key, namespace=namespace)
            )
        except StoreKeyError:
            if spec.const:
                raise
            raise RequestError(
                f"missing input {name!r}: not passed in the call, and key {key!r} is not in namespace "
                f"{namespace!r} of store {store.url}"
            ) from None
        _check_agrees(store, name, spec, version)
        plan.reads[name] = version
    for name in request.outputs:
        spec = request.roles[name].spec
        if not spec.ephemeral:
            plan.writes[name] = store.resolve(spec.store_key, tenant, write=True)
    return plan


def _check_agrees(store: BufferStore, name: str, spec: BufferSpec, version: Version) -> None:
    where = (
        f"buffer {name!r}: key {version.key!r} (namespace {version.namespace!r}, version {version.version}) "
        f"in store {store.url}"
    )
    if spec.offset + spec.size > version.nbytes:
        raise StoreError(
            f"{where} holds {version.nbytes} bytes, the spec needs bytes [{spec.offset}, {spec.offset + spec.size})"
        )
    if spec.dtype is not None and np.dtype(spec.dtype) != version.dtype:
        raise StoreError(f"{where} holds {version.dtype}, the spec says {np.dtype(spec.dtype)}")

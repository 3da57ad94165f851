"""Namespaces and access: which ``(namespace, key)`` a tenant's buffer key names, and whether it may.

Keys live in namespaces, one per tenant (``"default"`` when none is given). A request reaches
another namespace only with an explicit ``"namespace:key"``, and only to read a namespace the
store lists in ``shared``. The rules are pure functions of the key, the tenant and the shared
list; :class:`~dask_kaas.store.BufferStore` applies them.
"""

from __future__ import annotations

from collections.abc import Collection

from ..errors import StoreError
from ..names import DEFAULT_NAMESPACE, key_problem, namespace_problem

__all__ = ["StoreAccessError", "check_key", "check_namespace", "resolve_key", "tenant_namespace"]


class StoreAccessError(StoreError):
    """A tenant named a key in a namespace it may not read (or write)."""


def check_key(key: str) -> str:
    """Return ``key`` if it is a valid store key (no ``namespace:`` prefix), else raise StoreError."""
    problem = key_problem(key)
    if problem is not None:
        raise StoreError(problem)
    return key


def check_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a valid namespace name, else raise StoreError."""
    problem = namespace_problem(namespace)
    if problem is not None:
        raise StoreError(problem)
    return namespace


def tenant_namespace(tenant: str | None) -> str:
    """The namespace a tenant's requests live in (``"default"`` for no tenant)."""
    return DEFAULT_NAMESPACE if tenant is None else check_namespace(tenant)


def resolve_key(
    key: str, tenant: str | None, shared: Collection[str], *, write: bool = False, where: str = "the store"
) -> tuple[str, str]:
    """``(namespace, key)`` that a tenant's buffer key names, or :class:`StoreAccessError`.

    A plain key lives in the tenant's own namespace; ``"ns:key"`` names namespace ``ns``, which a
    tenant may read only when it is its own or listed in ``shared``, and write only when it is its
    own. ``where`` names the store in the error.
    """
    own = tenant_namespace(tenant)
    namespace, sep, plain = key.rpartition(":")
    if not sep:
        return own, check_key(key)
    check_namespace(namespace)
    check_key(plain)
    if namespace != own and (write or namespace not in shared):
        what = "write" if write else "read"
        raise StoreAccessError(
            f"tenant {tenant or DEFAULT_NAMESPACE!r} may not {what} key {plain!r} of namespace {namespace!r} "
            f"in {where}" + ("" if write else f" (shared namespaces: {list(shared) or 'none'})")
        )
    return namespace, plain

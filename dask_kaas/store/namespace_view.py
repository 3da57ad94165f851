"""A :class:`~dask_kaas.store.BufferStore` bound to one namespace, as zarr's ``StorePath`` binds a
store and a path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .versions import Version

if TYPE_CHECKING:
    from .buffer_store import BufferStore

__all__ = ["NamespaceView"]


class NamespaceView:
    """A :class:`BufferStore` with every call bound to one namespace.

    Made by :meth:`BufferStore.namespace`, which checks the name. Each method is the store's
    method of the same name with ``namespace=`` filled in, and raises what it raises.

    Parameters
    ----------
    store : BufferStore
        The store.
    namespace : str
        The namespace (not checked here).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from dask_kaas import BufferStore
    >>> store = BufferStore(tempfile.mkdtemp())
    >>> alice = store.namespace("alice")
    >>> alice
    BufferStore('file://...').namespace('alice')
    >>> alice.put("w", np.arange(3, dtype=np.int16)).version
    1
    >>> alice.get("w"), alice.info("w")["nbytes"], alice.keys(), "w" in alice
    (array([0, 1, 2], dtype=int16), 6, ['w'], True)
    >>> alice.delete("w")
    >>> alice.keys()
    []
    """

    def __init__(self, store: BufferStore, namespace: str) -> None:
        self.store = store
        self.name = namespace

    def __repr__(self) -> str:
        return f"{self.store!r}.namespace({self.name!r})"

    def put(self, key: str, array: np.ndarray | bytes | bytearray | memoryview, *, wait: bool = True) -> Version:
        """:meth:`BufferStore.put` in this namespace."""
        return self.store.put(key, array, namespace=self.name, wait=wait)

    def get(self, key: str) -> np.ndarray:
        """:meth:`BufferStore.get` in this namespace."""
        return self.store.get(key, namespace=self.name)

    def get_bytes(self, key: str, offset: int = 0, size: int | None = None) -> np.ndarray:
        """:meth:`BufferStore.get_bytes` in this namespace."""
        return self.store.get_bytes(key, offset, size, namespace=self.name)

    def version(self, key: str) -> Version:
        """:meth:`BufferStore.version` in this namespace."""
        return self.store.version(key, namespace=self.name)

    def info(self, key: str) -> dict[str, Any]:
        """:meth:`BufferStore.info` in this namespace."""
        return self.store.info(key, namespace=self.name)

    def delete(self, key: str) -> None:
        """:meth:`BufferStore.delete` in this namespace."""
        self.store.delete(key, namespace=self.name)

    def keys(self) -> list[str]:
        """:meth:`BufferStore.keys` of this namespace."""
        return self.store.keys(namespace=self.name)

    def __contains__(self, key: str) -> bool:
        """:meth:`BufferStore.exists` in this namespace."""
        return self.store.exists(key, namespace=self.name)

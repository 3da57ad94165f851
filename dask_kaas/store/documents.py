"""Small immutable documents kept beside a store's buffers (the function repository's records).

Layout under the store's URL::

    <namespace>/docs/<kind>/<path>      one document, created once and never rewritten

A document is created with the same compare-and-swap a buffer's commit uses
(:mod:`~dask_kaas.store.pointers`), conditioned on its absence: of two writers
creating the same path, one wins and the other is told so, on local files, S3
and ``memory://`` alike. Readers see a whole document or none.
"""

from __future__ import annotations

import contextlib

from ..errors import StoreKeyError
from .buffer_store import BufferStore
from .namespaces import check_key, check_namespace

__all__ = ["create_document", "delete_document", "list_documents", "read_document"]


def _path(store: BufferStore, namespace: str, kind: str, path: str) -> str:
    check_namespace(namespace)
    check_key(kind)
    check_key(path)
    return store.backend.doc_path(namespace, kind, path)


def create_document(store: BufferStore, namespace: str, kind: str, path: str, data: bytes) -> bool:
    """Write ``data`` at ``path`` if nothing is there yet; False when another writer got there first."""
    full = _path(store, namespace, kind, path)
    pointers = store.backend.pointers
    with store.backend.errors(f"{kind}/{path}", "create", namespace):
        with pointers.lock(full):
            existing, token = pointers.read(full)
            if existing is not None:
                return False
            return pointers.swap(full, bytes(data), token)


def read_document(store: BufferStore, namespace: str, kind: str, path: str) -> bytes:
    """The document's bytes; :class:`StoreKeyError` when there is none."""
    full = _path(store, namespace, kind, path)
    with store.backend.errors(f"{kind}/{path}", "read", namespace):
        data, _ = store.backend.pointers.read(full)
    if data is None:
        raise StoreKeyError(f"no {kind} document {path!r} in namespace {namespace!r} of store {store.url}")
    return data


def list_documents(store: BufferStore, namespace: str, kind: str, prefix: str = "") -> list[str]:
    """The paths (relative to ``kind``) of a namespace's documents under ``prefix``, sorted."""
    base = _path(store, namespace, kind, "x")[: -len("/x")]
    if prefix:
        check_key(prefix)
        base = f"{base}/{prefix}"
    with store.backend.errors(f"{kind}/{prefix}", "list", namespace):
        found = store.backend.find(base)
    root = _path(store, namespace, kind, "x")[: -len("x")]
    out = []
    for p in found:
        rel = p[len(root) :] if p.startswith(root) else p.split(f"/docs/{kind}/", 1)[-1]
        if not rel.rsplit("/", 1)[-1].startswith(".tmp"):
            out.append(rel)
    return sorted(out)


def delete_document(store: BufferStore, namespace: str, kind: str, path: str) -> None:
    """Remove a document; :class:`StoreKeyError` when there is none."""
    full = _path(store, namespace, kind, path)
    pointers = store.backend.pointers
    with store.backend.errors(f"{kind}/{path}", "delete", namespace):
        with pointers.lock(full):
            existing, _ = pointers.read(full)
            if existing is None:
                raise StoreKeyError(f"no {kind} document {path!r} in namespace {namespace!r} of store {store.url}")
            with contextlib.suppress(FileNotFoundError):
                pointers.remove(full)

"""A store's opened side: the fsspec filesystem, its root, the Zarr store and the pointers'
compare-and-swap, opened once on first use; and the paths of the layout under the root::

    <namespace>/refs/<key>.json     a key's commit pointer
    <namespace>/data/<uid>/         one immutable Zarr v3 array per written version
    <namespace>/docs/<kind>/<path>  small immutable documents (:mod:`~dask_kaas.store.documents`)
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import fsspec

from ..errors import KaasError, StoreError
from . import zarr_io
from .pointers import Pointers, pointers_for

__all__ = ["StoreBackend"]


class StoreBackend:
    """What a :class:`~dask_kaas.store.BufferStore` reads and writes through, opened lazily.

    Parameters
    ----------
    url : str
        The store's normalized URL (``file://...`` for local files).
    storage_options : dict
        Passed to fsspec for non-local URLs.
    """

    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        self.url = url
        self.storage_options = storage_options
        self.local_root = url[len("file://") :] if url.startswith("file://") else None
        self._lock = threading.Lock()
        self._opened: tuple[Any, str, Any, Pointers] | None = None  # fs, root, zarr store, pointers

    def _open(self) -> tuple[Any, str, Any, Pointers]:
        if self._opened is None:
            with self._lock:
                if self._opened is None:
                    with self.errors("<root>", "open"):
                        if self.local_root is not None:
                            os.makedirs(self.local_root, exist_ok=True)
                            fs, root = fsspec.filesystem("file"), self.local_root
                        else:
                            fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
                        zstore = zarr_io.open_zarr_store(self.url, self.local_root, self.storage_options)
                        self._opened = (fs, root.rstrip("/"), zstore, pointers_for(fs, self.local_root))
        return self._opened

    @property
    def fs(self) -> Any:
        """The fsspec filesystem."""
        return self._open()[0]

    @property
    def root(self) -> str:
        """The store's root path on :attr:`fs` (no trailing ``/``)."""
        return self._open()[1]

    @property
    def zstore(self) -> Any:
        """The Zarr store the versions' arrays live in."""
        return self._open()[2]

    @property
    def pointers(self) -> Pointers:
        """Compare-and-swap of pointers on this backend."""
        return self._open()[3]

    @contextlib.contextmanager
    def errors(self, key: str, action: str, namespace: str | None = None) -> Iterator[None]:
        """Re-raise anything that is not already a KaasError as StoreError naming key and store."""
        try:
            yield
        except KaasError:
            raise
        except Exception as exc:
            where = f"key {key!r}" + (f" (namespace {namespace!r})" if namespace else "")
            raise StoreError(f"cannot {action} {where} in store {self.url}: {type(exc).__name__}: {exc}") from exc

    # -- the layout ---------------------------------------------------------------------
    def ref_path(self, namespace: str, key: str) -> str:
        return f"{self.root}/{namespace}/refs/{key}.json"

    def data_dir(self, namespace: str) -> str:
        return f"{self.root}/{namespace}/data"

    def doc_path(self, namespace: str, kind: str, path: str) -> str:
        return f"{self.root}/{namespace}/docs/{kind}/{path}"

    def remove_data(self, namespace: str, uid: str) -> None:
        """Remove one version's array; already gone is fine."""
        with contextlib.suppress(FileNotFoundError, OSError):
            self.fs.rm(f"{self.data_dir(namespace)}/{uid}", recursive=True)

    def fresh_listings(self) -> None:
        """Forget cached directory listings (s3fs keeps them): listings must show what is there now."""
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache()  # all of it: s3fs forgets a path and its parents, not the dirs below

    def find(self, base: str) -> list[str]:
        """Every file below ``base`` (none if ``base`` is absent), listings fresh."""
        self.fresh_listings()
        try:
            found: list[str] = self.fs.find(base)  # fsspec is untyped
        except FileNotFoundError:
            return []
        return found

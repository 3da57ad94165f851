"""Persistent buffers: one Zarr v3 array per key, under one fsspec URL.

A :class:`BufferStore` maps keys such as ``"W1"`` or ``"tenantA/W1"`` to
numpy arrays kept as uncompressed Zarr v3 arrays. ``file://`` URLs (and plain
local paths) use zarr's ``LocalStore``; every other scheme (``memory://``,
``s3://``, ...) goes through zarr's ``FsspecStore``. fsspec's memory
filesystem is process-global, so two stores on the same ``memory://`` URL
share their data inside one process (but not across processes).

Layout: each key is an array node whose path is the key, so ``"a/b"`` makes
a group ``a`` holding array ``b``. Writes currently go straight to the
array's final location (not atomic); every write passes through
:meth:`BufferStore._write`, the single place where versioned or atomic writes
can be added later.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import threading

import dask.config
import numpy as np
import zarr
import zarr.storage
from zarr.codecs import BytesCodec

from .errors import KaasError, StoreError, StoreKeyError

__all__ = ["BufferStore", "open_store", "CHUNK_BYTES"]

#: Largest chunk written, in bytes; bigger arrays are chunked along axis 0.
CHUNK_BYTES = 64 * 2**20

# dtype kinds with a stable Zarr v3 representation: bool, ints, floats,
# complex, datetime64, timedelta64.
_KINDS = frozenset("biufcmM")


def _normalize_url(url: str) -> str:
    if not isinstance(url, str) or not url:
        raise StoreError(f"store URL must be a non-empty str, got {url!r}")
    if url.startswith("file://"):
        return "file://" + os.path.abspath(url[len("file://"):])
    if "://" not in url:
        return "file://" + os.path.abspath(url)
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rstrip('/')}"


def _check_key(key) -> str:
    """Return ``key`` if it is a valid store key, else raise StoreError."""
    if not isinstance(key, str) or not key:
        raise StoreError(f"store key must be a non-empty str, got {key!r}")
    if "\\" in key:
        raise StoreError(f"store key {key!r} must not contain a backslash")
    for seg in key.split("/"):
        if seg in ("", ".", "..", "zarr.json"):
            raise StoreError(
                f"store key {key!r}: segments separated by '/' must be non-empty "
                "and not '.', '..' or 'zarr.json' (no leading or trailing '/')"
            )
    return key


def _as_array(key: str, value) -> np.ndarray:
    """The C-contiguous, native-byte-order numpy array that ``put`` stores."""
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray):
        try:
            value = np.frombuffer(memoryview(value).cast("B"), dtype=np.uint8)
        except TypeError as exc:
            raise StoreError(
                f"put {key!r}: expected a numpy array or bytes-like, got {type(value).__name__}"
            ) from exc
    if value.dtype.kind not in _KINDS:
        raise StoreError(f"put {key!r}: dtype {value.dtype} cannot be stored")
    if value.size == 0:
        raise StoreError(f"put {key!r}: empty arrays (shape {value.shape}) cannot be stored")
    if not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    # not np.ascontiguousarray: it turns 0-d arrays into 1-d ones
    return np.require(value, requirements="C")


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    nbytes = math.prod(shape) * itemsize
    if not shape or nbytes <= CHUNK_BYTES:
        return shape
    row_bytes = nbytes // shape[0]
    return (max(1, CHUNK_BYTES // row_bytes), *shape[1:])


class BufferStore:
    """Numpy buffers kept under a URL, one Zarr v3 array per key.

    Parameters
    ----------
    url:
        ``file://`` URL or local path (made absolute), ``memory://name``, or
        any fsspec URL zarr's ``FsspecStore`` accepts (``s3://`` with s3fs).
    storage_options:
        Passed to fsspec for non-``file://`` URLs.

    Contracts:

    * Keys are non-empty strings of '/'-separated segments, none empty, '.',
      '..' or 'zarr.json' (zarr's metadata file); no backslash. A bad key
      raises :class:`StoreError`.
    * A missing key raises :class:`StoreKeyError`; any backend failure
      (unreachable, permission, corrupt metadata) raises :class:`StoreError`
      naming key and URL, chained from the original exception.
    * Instances pickle as ``(url, storage_options)`` and reopen lazily, so
      they can travel to Dask workers. Equality and hash go by ``url``.
    * Safe to call from several threads; the lazily opened zarr group is
      guarded by a lock.
    """

    def __init__(self, url: str, *, storage_options: dict | None = None):
        self.url = _normalize_url(url)
        self.storage_options = dict(storage_options or {})
        self._lock = threading.Lock()
        self._root = None  # zarr.Group, opened on first use
        self._local_root: str | None = None  # directory, for file:// stores

    # -- pickling, identity -------------------------------------------------
    def __getstate__(self):
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state):
        self.__init__(state["url"], storage_options=state["storage_options"])

    def __repr__(self):
        return f"BufferStore({self.url!r})"

    def __eq__(self, other):
        if not isinstance(other, BufferStore):
            return NotImplemented
        return self.url == other.url

    def __hash__(self):
        return hash((BufferStore, self.url))

    # -- backend --------------------------------------------------------------
    def _group(self) -> zarr.Group:
        root = self._root
        if root is not None:
            return root
        with self._lock:
            if self._root is None:
                with self._errors("<root>", "open"):
                    if self.url.startswith("file://"):
                        path = self.url[len("file://"):]
                        store = zarr.storage.LocalStore(path)
                        self._local_root = path
                    else:
                        # Sync filesystems (memory://) get wrapped by zarr in
                        # fsspec's AsyncFileSystemWrapper.
                        store = zarr.storage.FsspecStore.from_url(
                            self.url, storage_options=self.storage_options or None
                        )
                    self._root = zarr.open_group(store=store, mode="a", use_consolidated=False)
            return self._root

    @contextlib.contextmanager
    def _errors(self, key: str, action: str):
        """Re-raise anything that is not already a KaasError as StoreError."""
        try:
            yield
        except KaasError:
            raise
        except Exception as exc:
            raise StoreError(
                f"cannot {action} key {key!r} in store {self.url}: {type(exc).__name__}: {exc}"
            ) from exc

    def _array(self, key: str) -> zarr.Array:
        """The zarr array at ``key``; StoreKeyError if there is none."""
        _check_key(key)
        group = self._group()
        with self._errors(key, "open"):
            try:
                node = group[key]
            except KeyError:
                node = None
        if not isinstance(node, zarr.Array):
            raise StoreKeyError(f"key {key!r} is not in store {self.url}")
        return node

    # -- writing --------------------------------------------------------------
    def put(self, key: str, array) -> None:
        """Store ``array`` under ``key``, replacing whatever buffer was there.

        Accepts any numpy array with size >= 1 and a bool, integer, float,
        complex, datetime64 or timedelta64 dtype, or a bytes-like object
        (stored as 1-D uint8). The data is stored as a C-contiguous copy in
        native byte order; dtype and shape may differ from a previous value.

        Chunking: one chunk if the array is at most :data:`CHUNK_BYTES`
        (64 MiB), else chunks of as many whole rows along axis 0 as fit in
        64 MiB (at least one row). No compression.

        Raises StoreError for a bad key or value, for a key that names a
        folder of other buffers, for a key below an existing buffer, or for
        any backend failure.
        """
        _check_key(key)
        data = _as_array(key, array)
        group = self._group()
        with self._errors(key, "write"):
            # Checked before writing: zarr's overwrite deletes the target prefix
            # first, and for "a/b/c" below array "a/b" that prefix holds a/b's
            # chunk files ("a/b/c/0"), before zarr notices the array parent.
            segments = key.split("/")
            for depth in range(1, len(segments)):
                parent = "/".join(segments[:depth])
                try:
                    node = group[parent]
                except KeyError:
                    break  # nothing deeper can exist either
                if isinstance(node, zarr.Array):
                    raise StoreError(
                        f"cannot write key {key!r} in store {self.url}: "
                        f"its parent {parent!r} is a buffer"
                    )
            try:
                existing = group[key]
            except KeyError:
                existing = None
            # zarr's overwrite would delete the whole subtree of a group.
            if isinstance(existing, zarr.Group) and any(
                isinstance(node, zarr.Array) for _, node in existing.members(max_depth=None)
            ):
                raise StoreError(
                    f"cannot write key {key!r} in store {self.url}: it names a folder of buffers"
                )
            self._write(group, key, data)

    def _write(self, group: zarr.Group, key: str, data: np.ndarray) -> None:
        """Write ``data`` as the array at ``key`` (checked by ``put``); the hook
        for atomic, versioned writes later."""
        arr = group.create_array(
            key,
            shape=data.shape,
            dtype=data.dtype,
            chunks=_chunks(data.shape, data.dtype.itemsize),
            compressors=None,
            filters=None,
            overwrite=True,
            # keep every chunk on disk so reads never depend on fill values
            config={"write_empty_chunks": True},
        )
        arr[...] = data

    def delete(self, key: str) -> None:
        """Remove the buffer at ``key``; StoreKeyError if there is none."""
        self._array(key)
        with self._errors(key, "delete"):
            del self._group()[key]

    # -- reading --------------------------------------------------------------
    def info(self, key: str) -> dict:
        """``dict(nbytes=, dtype=, shape=)`` of ``key``, from metadata only."""
        arr = self._array(key)
        dtype = np.dtype(arr.dtype)
        shape = tuple(arr.shape)
        return {"nbytes": math.prod(shape) * dtype.itemsize, "dtype": dtype, "shape": shape}

    def get(self, key: str) -> np.ndarray:
        """The buffer at ``key`` as a new C-contiguous array of its stored dtype and shape."""
        arr = self._array(key)
        dtype = np.dtype(arr.dtype)
        shape = tuple(arr.shape)
        nbytes = math.prod(shape) * dtype.itemsize
        raw = self._read_raw(key, arr, 0, nbytes)
        if raw is not None:
            return raw.view(dtype).reshape(shape)
        with self._errors(key, "read"):
            return np.require(arr[...], requirements="C")

    def get_bytes(self, key: str, offset: int = 0, size: int | None = None) -> np.ndarray:
        """Bytes ``[offset, offset + size)`` of ``get(key)`` as a 1-D uint8 array.

        ``size=None`` means up to the end. Raises StoreError if the range
        does not lie within the stored bytes.
        """
        arr = self._array(key)
        dtype = np.dtype(arr.dtype)
        shape = tuple(arr.shape)
        nbytes = math.prod(shape) * dtype.itemsize
        if size is None:
            size = nbytes - offset
        if offset < 0 or size < 0 or offset + size > nbytes:
            raise StoreError(
                f"byte range [{offset}, {offset + size}) of key {key!r} in store "
                f"{self.url} exceeds its {nbytes} bytes"
            )
        raw = self._read_raw(key, arr, offset, size)
        if raw is not None:
            return raw
        with self._errors(key, "read"):
            if not shape:
                data = np.asarray(arr[...])
                start = 0
            else:
                # read only the rows that cover the range
                row_bytes = nbytes // shape[0]
                r0 = offset // row_bytes
                r1 = -(-(offset + size) // row_bytes)
                data = arr[r0:r1]
                start = r0 * row_bytes
            flat = np.require(data, requirements="C").reshape(-1).view(np.uint8)
            return flat[offset - start:offset - start + size]

    def _read_raw(self, key: str, arr: zarr.Array, offset: int, size: int) -> np.ndarray | None:
        """Read bytes straight from a local store's chunk files into one buffer.

        This skips zarr's decode-and-copy: the file bytes land directly in the
        result. Returns None (caller falls back to zarr) unless the store is
        local and the array has the layout ``put`` writes: a single native- or
        no-endian ``bytes`` codec and chunks that split axis 0 only.
        """
        meta = arr.metadata
        shape = tuple(arr.shape)
        if self._local_root is None or getattr(meta, "zarr_format", None) != 3:
            return None
        codecs = meta.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
            return None
        endian = codecs[0].endian
        if endian is not None and endian.value != sys.byteorder:
            return None
        chunks = tuple(arr.chunks)
        if chunks[1:] != shape[1:]:
            return None
        out = np.empty(size, dtype=np.uint8)
        if size == 0:
            return out
        itemsize = np.dtype(arr.dtype).itemsize
        # edge chunks are stored padded to full size, so chunk i starts at
        # logical byte i * chunk_bytes and its valid part is a prefix
        chunk_bytes = math.prod(chunks) * itemsize
        buf = memoryview(out)
        base = os.path.join(self._local_root, *key.split("/"))
        pos, end = offset, offset + size
        with self._errors(key, "read"):
            while pos < end:
                i = pos // chunk_bytes
                stop = min(end, (i + 1) * chunk_bytes)
                coords = (i,) + (0,) * (len(shape) - 1) if shape else ()
                path = os.path.join(base, *meta.encode_chunk_key(coords).split("/"))
                try:
                    f = open(path, "rb", buffering=0)
                except FileNotFoundError:
                    return None  # chunk left at fill value by another writer
                with f:
                    f.seek(pos - i * chunk_bytes)
                    view = buf[pos - offset:stop - offset]
                    while len(view):
                        n = f.readinto(view)
                        if not n:
                            raise StoreError(
                                f"chunk file {path} of key {key!r} in store {self.url} is truncated"
                            )
                        view = view[n:]
                pos = stop
        return out

    # -- listing --------------------------------------------------------------
    def keys(self) -> list[str]:
        """All buffer keys, recursively, sorted."""
        group = self._group()
        with self._errors("<all>", "list"):
            return sorted(
                path for path, node in group.members(max_depth=None) if isinstance(node, zarr.Array)
            )

    def __contains__(self, key) -> bool:
        """Whether ``key`` names a buffer (StoreError for a malformed key)."""
        try:
            self._array(key)
        except StoreKeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.keys())


def open_store(store: BufferStore | str | None = None) -> BufferStore:
    """A BufferStore from a store, a URL, or None.

    None means the ``kaas.store`` dask config value, and when that is null,
    ``file://<cwd>/stores/local``.
    """
    if isinstance(store, BufferStore):
        return store
    if store is None:
        store = dask.config.get("kaas.store", default=None)
        if store is None:
            store = "file://" + os.path.abspath(os.path.join("stores", "local"))
    if isinstance(store, str):
        return BufferStore(store)
    raise StoreError(f"expected a BufferStore, a URL or None, got {type(store).__name__}")

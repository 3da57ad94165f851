"""Persistent buffers: versioned Zarr v3 arrays in tenant namespaces, over any fsspec URL.

Layout under the store's URL::

    <namespace>/refs/<key>.json     the commit pointer of a key: version, uid, dtype, shape, nbytes
    <namespace>/data/<uid>/         one immutable Zarr v3 array per written version

A write stores the new data under a fresh uid, then commits it in one step by
replacing the key's pointer (an atomic rename on local files, a single PUT on
object stores). A reader reads the pointer, then that version's data: it sees
the old version or the new one, never a mix. A writer killed before its commit
leaves the previous version in place and nothing visible under the key (its
orphaned data is removed by :meth:`BufferStore.gc`). A superseded version's
data is kept one write longer and at least ``kaas.store-retain-seconds``, so
readers that just read an older pointer finish.

Keys live in namespaces, one per tenant (``"default"`` when none is given). A
request reaches another namespace only with an explicit ``"namespace:key"``,
and only to read a namespace the store lists in ``shared``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import config
from ..errors import StoreError, StoreKeyError
from ..names import DEFAULT_NAMESPACE, NAMESPACE_RE
from . import zarr_io
from .backend import StoreBackend
from .gc import ORPHAN_AGE, collect_garbage
from .namespace_view import NamespaceView
from .namespaces import check_key, check_namespace, resolve_key, tenant_namespace
from .profiles import default_store_spec, resolve_store
from .urls import is_location, normalize_url
from .version_cache import VersionCache
from .versions import COMMIT_ATTEMPTS, Version, new_uid, next_record, referenced

__all__ = ["CHUNK_BYTES", "BufferStore", "NamespaceView", "open_store"]

CHUNK_BYTES = zarr_io.CHUNK_BYTES


class BufferStore:
    """Numpy buffers kept under a URL: versioned, atomic, namespaced by tenant.

    Every key has a version. A write stores the new data as an immutable Zarr v3 array under a
    fresh uid, then commits it by replacing the key's pointer with compare-and-swap (an
    exclusive ``flock`` and an atomic rename on local files, a conditional PUT on S3, a process
    lock on ``memory://``; other fsspec backends: last writer wins). A reader sees the old
    version or the new one, never a mix. Keys live in namespaces, one per tenant
    (``"default"`` when none is given).

    Parameters
    ----------
    url : str
        ``file://`` URL or local path (made absolute, ``~`` expanded; a path has a separator:
        ``./mystore``), a store profile's name (``"local"``: as :func:`open_store` and ``--store``
        read it), ``memory://name``
        (per process: not seen by worker processes), or any fsspec URL
        (``s3://bucket/prefix`` with s3fs). Nothing is opened or created until first use.
    storage_options : dict, optional
        Passed to fsspec for non-local URLs.
    shared : str or sequence of str, default ()
        Namespaces every tenant may read (public model weights, say); only their own
        namespace is writable by a tenant's requests.

    Raises
    ------
    StoreError
        When ``url`` is not a non-empty string, or a ``shared`` entry is not a valid
        namespace name.

    Notes
    -----
    A missing key raises :class:`StoreKeyError`; a backend failure (unreachable,
    permission, corrupt metadata) raises :class:`StoreError` naming the key and
    the store. Instances pickle as ``(url, storage_options, shared)`` and reopen
    lazily, so they travel to Dask workers; equality goes by URL. ``key in store``
    and ``len(store)`` look at the ``"default"`` namespace only.

    See Also
    --------
    open_store : a store from a URL, a path, a profile name or the ``kaas.store`` setting.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from dask_kaas import BufferStore
    >>> store = BufferStore(tempfile.mkdtemp(), shared=["public"])
    >>> v = store.put("mlp/w1", np.arange(6, dtype=np.float32).reshape(2, 3), namespace="alice")
    >>> v.namespace, v.key, v.version, v.dtype, v.shape, v.nbytes
    ('alice', 'mlp/w1', 1, dtype('float32'), (2, 3), 24)
    >>> store.get("mlp/w1", namespace="alice")
    array([[0., 1., 2.],
           [3., 4., 5.]], dtype=float32)
    >>> store.put("mlp/w1", np.ones(3, np.float32), namespace="alice").version
    2
    >>> store.namespace("public").put("emb", b"abc").version
    1
    >>> store.keys(namespace="alice"), store.namespaces()
    (['mlp/w1'], ['alice', 'public'])
    >>> store.get("missing", namespace="alice")
    Traceback (most recent call last):
    ...
    dask_kaas.errors.StoreKeyError: key 'missing' is not in namespace 'alice' of store file://...
    """

    DEFAULT_NAMESPACE = DEFAULT_NAMESPACE

    def __init__(
        self, url: str, *, storage_options: dict[str, Any] | None = None, shared: str | Sequence[str] = ()
    ) -> None:
        if isinstance(url, str) and url.strip() and not is_location(url.strip()):
            # the rule of open_store and the command line: a bare name is a store profile, not a folder here
            url, profile_options, profile_shared = resolve_store(url)
            storage_options = {**profile_options, **(storage_options or {})}
            shared = shared or profile_shared
        self.url = normalize_url(url)
        self.storage_options = dict(storage_options or {})
        if isinstance(shared, str):
            shared = (shared,)
        self.shared = tuple(check_namespace(ns) for ns in shared)
        self.backend = StoreBackend(self.url, self.storage_options)
        self._versions = VersionCache()

    # -- identity and pickling ------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options, "shared": self.shared}

    def __setstate__(self, state: dict[str, Any]) -> None:
        shared = state.get("shared", ())
        BufferStore.__init__(self, state["url"], storage_options=state["storage_options"], shared=shared)

    def __repr__(self) -> str:
        return f"BufferStore({self.url!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BufferStore):
            return NotImplemented
        return self.url == other.url

    def __hash__(self) -> int:
        return hash((BufferStore, self.url))

    # -- names -----------------------------------------------------------------------
    def _ns(self, namespace: str | None) -> str:
        return DEFAULT_NAMESPACE if namespace is None else check_namespace(namespace)

    # -- namespaces and access ----------------------------------------------------
    def namespace(self, name: str) -> NamespaceView:
        """The same store with every call bound to namespace ``name``.

        Parameters
        ----------
        name : str
            A namespace name (letters, digits, ``_ . -``, not first); it need not exist yet.

        Returns
        -------
        NamespaceView
            With ``put``, ``get``, ``get_bytes``, ``version``, ``info``, ``delete``, ``keys``
            and ``in``, each without the ``namespace`` argument.

        Raises
        ------
        StoreError
            When ``name`` is not a valid namespace name.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> public = store.namespace("public")
        >>> public.put("bert/emb", np.zeros(4, np.float32)).namespace
        'public'
        >>> public.keys(), "bert/emb" in public, store.keys(namespace="public")
        (['bert/emb'], True, ['bert/emb'])
        """
        return NamespaceView(self, check_namespace(name))

    @staticmethod
    def tenant_namespace(tenant: str | None) -> str:
        """The namespace a tenant's requests live in."""
        return tenant_namespace(tenant)

    def resolve(self, key: str, tenant: str | None, *, write: bool = False) -> tuple[str, str]:
        """``(namespace, key)`` that a tenant's buffer key names, or StoreAccessError.

        A plain key lives in the tenant's own namespace; ``"ns:key"`` names
        namespace ``ns``, which a tenant may read only when it is its own or
        listed in ``shared``, and write only when it is its own.

        Parameters
        ----------
        key : str
            A buffer's store key: ``"key"`` or ``"namespace:key"``.
        tenant : str or None
            The request's tenant (None: the ``"default"`` namespace).
        write : bool, default False
            Resolve for writing (an output persisted under the key).

        Returns
        -------
        tuple of (str, str)
            ``(namespace, key)``.

        Raises
        ------
        StoreError
            For an invalid key, namespace or tenant; its subclass
            :class:`~dask_kaas.store.StoreAccessError` when the tenant may not reach the namespace.

        Examples
        --------
        >>> import tempfile
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp(), shared=["public"])
        >>> store.resolve("mlp/w1", "alice"), store.resolve("public:emb", "alice")
        (('alice', 'mlp/w1'), ('public', 'emb'))
        >>> store.resolve("public:emb", "alice", write=True)
        Traceback (most recent call last):
        ...
        dask_kaas.store.namespaces.StoreAccessError: tenant 'alice' may not write key 'emb' of namespace 'public' ...
        """
        return resolve_key(key, tenant, self.shared, write=write, where=f"store {self.url}")

    def namespaces(self) -> list[str]:
        """Every namespace written to, sorted (one whose keys were all deleted stays listed).

        Returns
        -------
        list of str
            Empty for a store nothing was written to.

        Raises
        ------
        StoreError
            When the store cannot be listed.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> store.namespaces()
        []
        >>> _ = store.put("w", np.ones(2), namespace="bob")
        >>> _ = store.put("w", np.ones(2))
        >>> store.namespaces()
        ['bob', 'default']
        """
        backend = self.backend
        backend.fresh_listings()
        with backend.errors("<all>", "list"):
            try:
                entries = backend.fs.ls(backend.root, detail=True)
            except FileNotFoundError:
                return []
        names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"]
        return sorted(n for n in names if NAMESPACE_RE.match(n))

    # -- versions -------------------------------------------------------------------
    def version(self, key: str, *, namespace: str | None = None) -> Version:
        """The committed version of ``key`` (reads only its pointer); StoreKeyError if none.

        Parameters
        ----------
        key : str
            A store key (no ``namespace:`` prefix).
        namespace : str, optional
            Default: ``"default"``.

        Returns
        -------
        Version
            ``namespace``, ``key``, ``version`` (1 for the first commit, one more for each
            later one), ``uid``, ``dtype``, ``shape``, ``nbytes`` and ``written`` (commit time).

        Raises
        ------
        StoreKeyError
            When the key is not committed in the namespace.
        StoreError
            For an invalid key or namespace, a backend failure, or an unreadable pointer.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> _ = store.put("w", np.ones(3, np.int64))
        >>> v = store.version("w")
        >>> v.version, v.dtype, v.shape, v.nbytes
        (1, dtype('int64'), (3,), 24)
        """
        ns = self._ns(namespace)
        check_key(key)
        backend = self.backend
        with backend.errors(key, "read", ns):
            try:
                text = backend.fs.cat_file(backend.ref_path(ns, key))
            except FileNotFoundError:
                text = None
            except IsADirectoryError:
                text = None
        if text is None:
            raise StoreKeyError(f"key {key!r} is not in namespace {ns!r} of store {self.url}")
        with backend.errors(key, "decode the pointer of", ns):
            return Version.from_json(ns, key, text)

    def cached_version(self, key: str, *, namespace: str | None = None) -> Version:
        """The committed version of ``key``, without a store round trip where that stays exact.

        What a worker asks for every const of every request, so it must be cheap: on local files
        the pointer is read again only when its ``stat`` changed (every commit renames a new file
        into place); on object stores a version read is trusted for ``kaas.store-version-ttl``
        seconds (``put`` waits that long before it returns, so a request submitted after ``put``
        returned never sees the old bytes); ``memory://`` is read each time (a dict lookup).
        """
        ns = self._ns(namespace)
        pointers = self.backend.pointers
        return self._versions.lookup(
            pointers,
            self.backend.ref_path(ns, key),
            ns,
            key,
            lambda: self.version(key, namespace=ns),
            float(config.get("store-version-ttl")) if pointers.remote else 0.0,  # local: the stat decides
        )

    # -- writing ----------------------------------------------------------------------
    def put(
        self,
        key: str,
        array: np.ndarray | bytes | bytearray | memoryview,
        *,
        namespace: str | None = None,
        wait: bool = True,
    ) -> Version:
        """Store ``array`` as the next version of ``key``; return the committed :class:`Version`.

        Any numpy array with size >= 1 and a bool, integer, float, complex or
        datetime dtype, or bytes (stored as 1-D uint8). The data is written
        under a fresh uid, then the pointer is swapped in one step, only if no
        other writer committed in between (else the next number is taken): every
        acknowledged put has its own version number. Data of superseded versions
        is kept one write longer and at least ``kaas.store-retain-seconds``, so
        readers that just read an older pointer finish; then it is deleted.

        On object stores, ``put`` returns only ``kaas.store-version-ttl`` seconds
        after its commit (``wait=False``: at once), the time other processes may
        still trust the version before (:meth:`cached_version`).

        Parameters
        ----------
        key : str
            A store key of at most 1024 characters: segments separated by ``/``, each non-empty,
            not ``.`` or ``..``, not ending in ``.json`` nor starting with ``.tmp``; no ``:`` or
            backslash.
        array : numpy.ndarray or bytes-like
            The data. Non-native byte order is stored as native; a key's dtype and shape may
            change from one version to the next.
        namespace : str, optional
            Default: ``"default"``.
        wait : bool, default True
            On object stores, wait out ``kaas.store-version-ttl`` before returning.

        Returns
        -------
        Version
            The committed version.

        Raises
        ------
        StoreError
            For an invalid key or namespace, data that is empty, not an array or bytes-like, or
            of an unstorable dtype (object, string, ...), a backend failure, or a commit that
            lost the race to other writers 64 times in a row.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> store.put("model/w", np.ones((2, 2), np.float32), namespace="alice")
        Version(namespace='alice', key='model/w', version=1, uid='...', dtype=dtype('float32'), shape=(2, 2), ...)
        >>> store.put("model/w", b"raw bytes", namespace="alice").version
        2
        >>> store.put("model/w", np.array([], np.float32))
        Traceback (most recent call last):
        ...
        dask_kaas.errors.StoreError: put 'model/w': empty arrays (shape (0,)) cannot be stored
        """
        ns = self._ns(namespace)
        check_key(key)
        data = zarr_io.as_storable(key, array)
        uid = new_uid()
        backend = self.backend
        retain = float(config.get("store-retain-seconds"))
        with backend.errors(key, "write", ns):
            zarr_io.write_array(backend.zstore, f"{ns}/data/{uid}", data, backend.local_root)
            committed = backend.pointers.commit(
                backend.ref_path(ns, key),
                lambda old: next_record(old, uid, data, time.time(), retain),
                COMMIT_ATTEMPTS,
            )
        if committed is None:
            backend.remove_data(ns, uid)
            raise StoreError(
                f"cannot commit key {key!r} (namespace {ns!r}) in store {self.url}: "
                f"{COMMIT_ATTEMPTS} other writers committed first"
            )
        record, expired = committed
        for old_uid in expired:
            backend.remove_data(ns, old_uid)
        version = Version.from_json(ns, key, json.dumps(record))
        self._versions.committed(version, backend.pointers)
        if backend.pointers.remote and wait:
            time.sleep(max(0.0, float(config.get("store-version-ttl"))))
        return version

    def delete(self, key: str, *, namespace: str | None = None) -> None:
        """Remove ``key`` (its pointer first, then its data); StoreKeyError if absent.

        The data of every version the pointer still kept goes at once, so a reader that read
        the pointer just before may find its version gone (:class:`StoreKeyError`).

        Parameters
        ----------
        key : str
            A store key.
        namespace : str, optional
            Default: ``"default"``.

        Raises
        ------
        StoreKeyError
            When the key is not committed in the namespace.
        StoreError
            For an invalid key or namespace, or a backend failure.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> _ = store.put("w", np.ones(2))
        >>> store.delete("w")
        >>> store.exists("w")
        False
        >>> store.delete("w")
        Traceback (most recent call last):
        ...
        dask_kaas.errors.StoreKeyError: key 'w' is not in namespace 'default' of store file://...
        """
        ns = self._ns(namespace)
        check_key(key)
        backend = self.backend
        with backend.errors(key, "delete", ns):
            record = backend.pointers.take(backend.ref_path(ns, key))
        if record is None:
            raise StoreKeyError(f"key {key!r} is not in namespace {ns!r} of store {self.url}")
        self._versions.forget(ns, key)
        for uid in referenced(record, time.time(), retain=float("inf")):
            backend.remove_data(ns, uid)

    def gc(self, *, older_than: float = ORPHAN_AGE) -> int:
        """Delete data no pointer references any more and older than ``older_than`` seconds (left by
        writers killed before their commit), and, on local stores, temporary files as old; return
        how many data directories went.

        Parameters
        ----------
        older_than : float, default 3600
            Seconds; younger unreferenced data may belong to a write in flight and stays.

        Returns
        -------
        int
            How many data directories were removed.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> _ = store.put("w", np.ones(2))
        >>> store.gc()
        0
        """
        return collect_garbage(
            self.backend,
            self.namespaces(),
            lambda ns: self.keys(namespace=ns),
            retain=float(config.get("store-retain-seconds")),
            older_than=older_than,
        )

    # -- reading ----------------------------------------------------------------------
    def info(self, key: str, *, namespace: str | None = None) -> dict[str, Any]:
        """``nbytes``, ``dtype``, ``shape``, ``version``, ``uid`` and ``written`` of ``key`` (pointer only).

        Parameters
        ----------
        key : str
            A store key.
        namespace : str, optional
            Default: ``"default"``.

        Returns
        -------
        dict
            :meth:`version`'s fields as a dict (``dtype`` a :class:`numpy.dtype`, ``written``
            seconds since the epoch).

        Raises
        ------
        StoreKeyError
            When the key is not committed in the namespace.
        StoreError
            For an invalid key or namespace, or a backend failure.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> _ = store.put("w", np.zeros((2, 3), np.float32))
        >>> info = store.info("w")
        >>> sorted(info)
        ['dtype', 'nbytes', 'shape', 'uid', 'version', 'written']
        >>> info["nbytes"], info["shape"], info["version"]
        (24, (2, 3), 1)
        """
        v = self.version(key, namespace=namespace)
        return {
            "nbytes": v.nbytes,
            "dtype": v.dtype,
            "shape": v.shape,
            "version": v.version,
            "uid": v.uid,
            "written": v.written,
        }

    def get(self, key: str, *, namespace: str | None = None) -> np.ndarray:
        """The current version of ``key`` as a new array of its stored dtype and shape.

        Reads the pointer, then that version's data; if writers replace the version twice while
        it reads (its data is gone), it follows the pointer again (up to five times).

        Parameters
        ----------
        key : str
            A store key.
        namespace : str, optional
            Default: ``"default"``.

        Returns
        -------
        numpy.ndarray

        Raises
        ------
        StoreKeyError
            When the key is not committed in the namespace (or its data keeps vanishing).
        StoreError
            For an invalid key or namespace, or a backend failure.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> _ = store.put("w", np.arange(4, dtype=np.int32).reshape(2, 2), namespace="alice")
        >>> store.get("w", namespace="alice")
        array([[0, 1],
               [2, 3]], dtype=int32)
        >>> store.get("w")
        Traceback (most recent call last):
        ...
        dask_kaas.errors.StoreKeyError: key 'w' is not in namespace 'default' of store file://...
        """
        v, raw = self._read_current(key, namespace, 0, None)
        return raw.view(v.dtype).reshape(v.shape)

    def get_bytes(
        self, key: str, offset: int = 0, size: int | None = None, *, namespace: str | None = None
    ) -> np.ndarray:
        """Bytes ``[offset, offset + size)`` of the current version as 1-D uint8 (``size=None``: to the end).

        Only the chunks that hold the range are read (a const buffer's ``offset`` reads this way).

        Parameters
        ----------
        key : str
            A store key.
        offset : int, default 0
            First byte.
        size : int, optional
            Bytes to read; default: to the end.
        namespace : str, optional
            Default: ``"default"``.

        Returns
        -------
        numpy.ndarray
            1-D uint8.

        Raises
        ------
        StoreKeyError
            When the key is not committed in the namespace.
        StoreError
            For a range outside the stored bytes, an invalid key or namespace, or a backend failure.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> _ = store.put("w", np.arange(4, dtype=np.float32))
        >>> store.get_bytes("w", 4, 8).view(np.float32)
        array([1., 2.], dtype=float32)
        >>> store.get_bytes("w", 12, 8)
        Traceback (most recent call last):
        ...
        dask_kaas.errors.StoreError: byte range [12, 20) of key 'w' (namespace 'default') in store ... 16 bytes
        """
        return self._read_current(key, namespace, offset, size)[1]

    def _read_current(
        self, key: str, namespace: str | None, offset: int, size: int | None, attempts: int = 5
    ) -> tuple[Version, np.ndarray]:
        """Read the current version; if writers replace it twice while we read, follow the pointer again."""
        for attempt in range(attempts):
            v = self.version(key, namespace=namespace)
            try:
                return v, self.read(v, offset, size)
            except StoreKeyError:
                if attempt == attempts - 1 or self.version(key, namespace=namespace).uid == v.uid:
                    raise
        raise AssertionError("unreachable")

    def read(self, version: Version, offset: int = 0, size: int | None = None) -> np.ndarray:
        """Bytes of one committed version (not necessarily the current one) as 1-D uint8."""
        if size is None:
            size = version.nbytes - offset
        if offset < 0 or size < 0 or offset + size > version.nbytes:
            raise StoreError(
                f"byte range [{offset}, {offset + size}) of key {version.key!r} (namespace {version.namespace!r}) "
                f"in store {self.url} exceeds its {version.nbytes} bytes"
            )
        backend = self.backend
        with backend.errors(version.key, f"read version {version.version} of", version.namespace):
            try:
                return zarr_io.read_bytes(
                    backend.zstore,
                    version.data_path,
                    offset,
                    size,
                    local_root=backend.local_root,
                    fs=backend.fs,
                    root=backend.root,
                )
            except FileNotFoundError as e:
                raise StoreKeyError(
                    f"version {version.version} of key {version.key!r} (namespace {version.namespace!r}) is gone "
                    f"from store {self.url}: it was overwritten twice or deleted"
                ) from e

    # -- listing ----------------------------------------------------------------------
    def keys(self, *, namespace: str | None = None) -> list[str]:
        """Every committed key of a namespace, sorted.

        Parameters
        ----------
        namespace : str, optional
            Default: ``"default"``.

        Returns
        -------
        list of str
            Empty for a namespace that holds nothing.

        Raises
        ------
        StoreError
            For an invalid namespace, or a store that cannot be listed.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> for key in ("mlp/w2", "mlp/w1", "emb"):
        ...     _ = store.put(key, np.ones(2), namespace="alice")
        >>> store.keys(namespace="alice"), store.keys()
        (['emb', 'mlp/w1', 'mlp/w2'], [])
        """
        ns = self._ns(namespace)
        backend = self.backend
        base = f"{backend.root}/{ns}/refs"
        with backend.errors("<all>", "list", ns):
            found = backend.find(base)
        out = []
        for path in found:
            rel = path[len(base) :].lstrip("/") if path.startswith(base) else path.split("/refs/", 1)[-1]
            name = rel.rsplit("/", 1)[-1]
            if rel.endswith(".json") and not name.startswith(".tmp"):
                out.append(rel[: -len(".json")])
        return sorted(out)

    def __contains__(self, key: str) -> bool:
        """Whether ``key`` is committed in the default namespace."""
        try:
            self.version(key)
        except StoreKeyError:
            return False
        return True

    def exists(self, key: str, *, namespace: str | None = None) -> bool:
        """Whether ``key`` is committed in ``namespace`` (default: ``"default"``).

        Parameters
        ----------
        key : str
            A store key.
        namespace : str, optional
            Default: ``"default"``.

        Returns
        -------
        bool

        Raises
        ------
        StoreError
            For an invalid key or namespace, or a backend failure.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferStore
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> _ = store.put("w", np.ones(2), namespace="alice")
        >>> store.exists("w", namespace="alice"), store.exists("w")
        (True, False)
        """
        try:
            self.version(key, namespace=namespace)
        except StoreKeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.keys())


def open_store(store: BufferStore | str | None = None) -> BufferStore:
    """A BufferStore from a store, a URL or local path, a profile name (``stores/<name>.yaml``), or None
    (the ``kaas.store`` setting; null means the profile ``local``).

    Parameters
    ----------
    store : BufferStore, str or None, optional
        A store (returned as is); a string with ``://`` (a URL) or a path separator (a local
        path), whose ``shared`` namespaces come from ``kaas.store-shared``; any other string is
        a profile name (:func:`~dask_kaas.store.resolve_store`); None: the ``kaas.store``
        setting, else the profile ``local``.

    Returns
    -------
    BufferStore
        Not opened yet: nothing is read or created until first use.

    Raises
    ------
    StoreError
        For an unknown or invalid profile, an environment variable a profile needs that is
        not set, an empty string, or a ``store`` of another type.

    See Also
    --------
    dask_kaas.store.resolve_store, dask_kaas.store.list_profiles

    Examples
    --------
    >>> import tempfile
    >>> from dask_kaas.store import open_store
    >>> open_store("memory://doc-store")
    BufferStore('memory://doc-store')
    >>> open_store("memory").url  # the built-in profile
    'memory://dask-kaas'
    >>> store = open_store(tempfile.mkdtemp())
    >>> store.url.startswith("file:///"), open_store(store) is store
    (True, True)
    >>> open_store("no-such-profile")
    Traceback (most recent call last):
    ...
    dask_kaas.errors.StoreError: no store profile 'no-such-profile': no no-such-profile.yaml in ...
    """
    if isinstance(store, BufferStore):
        return store
    if store is None:
        store = default_store_spec()
    if isinstance(store, str):
        url, options, shared = resolve_store(store)
        return BufferStore(url, storage_options=options, shared=shared)
    raise StoreError(f"expected a BufferStore, a URL, a profile name or None, got {type(store).__name__}")

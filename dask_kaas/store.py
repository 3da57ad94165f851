"""Persistent buffers: versioned Zarr v3 arrays in tenant namespaces, over any fsspec URL.

Layout under the store's URL::

    <namespace>/refs/<key>.json     the commit pointer of a key: version, uid, dtype, shape, nbytes
    <namespace>/data/<uid>/         one immutable Zarr v3 array per written version

A write stores the new data under a fresh uid, then commits it in one step by
replacing the key's pointer (an atomic rename on local files, a single PUT on
object stores). A reader reads the pointer, then that version's data: it sees
the old version or the new one, never a mix. A writer killed before its commit
leaves the previous version in place and nothing visible under the key (its
orphaned data is removed by :meth:`BufferStore.gc`). The previous version's
data is kept one write longer, so readers that just read the old pointer finish.

Keys live in namespaces, one per tenant (``"default"`` when none is given). A
request reaches another namespace only with an explicit ``"namespace:key"``,
and only to read a namespace the store lists in ``shared``.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Sequence

import fsspec
import numpy as np

from . import config, zarr_io
from .errors import KaasError, StoreError, StoreKeyError
from .names import DEFAULT_NAMESPACE, NAMESPACE_RE, key_problem, namespace_problem, split_key  # noqa: F401
from .pointers import Pointers, pointers_for

__all__ = ["BufferStore", "Version", "StoreAccessError", "open_store", "CHUNK_BYTES"]

CHUNK_BYTES = zarr_io.CHUNK_BYTES
_ORPHAN_AGE = 3600.0  # seconds before gc() treats unreferenced data as abandoned, not in flight
COMMIT_ATTEMPTS = 64  # compare-and-swap retries before a put gives up on a key many writers race for
MAX_RETIRED = 32      # superseded versions a pointer keeps alive for in-flight readers
VERSION_CACHE_ENTRIES = 4096


class StoreAccessError(StoreError):
    """A tenant named a key in a namespace it may not read (or write)."""


@dataclass(frozen=True)
class Version:
    """One committed version of a key: what its pointer says."""

    namespace: str
    key: str
    version: int
    uid: str
    dtype: np.dtype
    shape: tuple
    nbytes: int
    written: float

    @property
    def data_path(self) -> str:
        return f"{self.namespace}/data/{self.uid}"

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "uid": self.uid, "dtype": self.dtype.str,
                           "shape": list(self.shape), "nbytes": self.nbytes, "written": self.written})

    @classmethod
    def from_json(cls, namespace: str, key: str, text: bytes | str) -> "Version":
        d = json.loads(text)
        return cls(namespace, key, int(d["version"]), str(d["uid"]), np.dtype(d["dtype"]), tuple(d["shape"]),
                   int(d["nbytes"]), float(d["written"]))


def _normalize_url(url: str) -> str:
    if not isinstance(url, str) or not url:
        raise StoreError(f"store URL must be a non-empty str, got {url!r}")
    if url.startswith("file://"):
        return "file://" + os.path.abspath(url[len("file://"):])
    if "://" not in url:
        return "file://" + os.path.abspath(url)
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rstrip('/')}"


def check_key(key) -> str:
    """Return ``key`` if it is a valid store key, else raise StoreError."""
    problem = key_problem(key)
    if problem is not None:
        raise StoreError(problem)
    return key


def check_namespace(namespace) -> str:
    problem = namespace_problem(namespace)
    if problem is not None:
        raise StoreError(problem)
    return namespace


class BufferStore:
    """Numpy buffers kept under a URL: versioned, atomic, namespaced by tenant.

    Parameters
    ----------
    url:
        ``file://`` URL or local path (made absolute), ``memory://name``, or any
        fsspec URL (``s3://bucket/prefix`` with s3fs).
    storage_options:
        Passed to fsspec for non-local URLs.
    shared:
        Namespaces every tenant may read (public model weights, say).

    A missing key raises :class:`StoreKeyError`; a backend failure (unreachable,
    permission, corrupt metadata) raises :class:`StoreError` naming the key and
    the store. Instances pickle as ``(url, storage_options, shared)`` and reopen
    lazily, so they travel to Dask workers; equality goes by URL.
    """

    DEFAULT_NAMESPACE = DEFAULT_NAMESPACE

    def __init__(self, url: str, *, storage_options: dict | None = None, shared: Sequence[str] = ()):
        self.url = _normalize_url(url)
        self.storage_options = dict(storage_options or {})
        if isinstance(shared, str):
            shared = (shared,)
        self.shared = tuple(check_namespace(ns) for ns in shared)
        self._local_root = self.url[len("file://"):] if self.url.startswith("file://") else None
        self._lock = threading.Lock()
        self._fs = None
        self._root_path = None
        self._zstore = None
        self._pointer_ops: Pointers | None = None
        self._versions: dict = {}  # (namespace, key) -> (Version, signature or time read): cached_version

    # -- identity and pickling ------------------------------------------------
    def __getstate__(self):
        return {"url": self.url, "storage_options": self.storage_options, "shared": self.shared}

    def __setstate__(self, state):
        self.__init__(state["url"], storage_options=state["storage_options"], shared=state.get("shared", ()))

    def __repr__(self):
        return f"BufferStore({self.url!r})"

    def __eq__(self, other):
        if not isinstance(other, BufferStore):
            return NotImplemented
        return self.url == other.url

    def __hash__(self):
        return hash((BufferStore, self.url))

    # -- backend ----------------------------------------------------------------
    def _backend(self):
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    with self._errors("<root>", "open"):
                        if self._local_root is not None:
                            os.makedirs(self._local_root, exist_ok=True)
                            fs, root = fsspec.filesystem("file"), self._local_root
                        else:
                            fs, root = fsspec.core.url_to_fs(self.url, **self.storage_options)
                        self._zstore = zarr_io.open_zarr_store(self.url, self._local_root, self.storage_options)
                        self._root_path = root.rstrip("/")
                        self._fs = fs
        return self._fs, self._root_path

    @contextlib.contextmanager
    def _errors(self, key: str, action: str, namespace: str | None = None):
        """Re-raise anything that is not already a KaasError as StoreError naming key and store."""
        try:
            yield
        except KaasError:
            raise
        except Exception as exc:
            where = f"key {key!r}" + (f" (namespace {namespace!r})" if namespace else "")
            raise StoreError(f"cannot {action} {where} in store {self.url}: {type(exc).__name__}: {exc}") from exc

    def _ref_path(self, namespace: str, key: str) -> str:
        return f"{self._backend()[1]}/{namespace}/refs/{key}.json"

    def _ns(self, namespace: str | None) -> str:
        return DEFAULT_NAMESPACE if namespace is None else check_namespace(namespace)

    # -- namespaces and access ----------------------------------------------------
    def namespace(self, name: str) -> "NamespaceView":
        """The same store with every call bound to namespace ``name``."""
        return NamespaceView(self, check_namespace(name))

    @staticmethod
    def tenant_namespace(tenant: str | None) -> str:
        """The namespace a tenant's requests live in."""
        return DEFAULT_NAMESPACE if tenant is None else check_namespace(tenant)

    def resolve(self, key: str, tenant: str | None, *, write: bool = False) -> tuple[str, str]:
        """``(namespace, key)`` that a tenant's buffer key names, or StoreAccessError.

        A plain key lives in the tenant's own namespace; ``"ns:key"`` names
        namespace ``ns``, which a tenant may read only when it is its own or
        listed in ``shared``, and write only when it is its own.
        """
        own = self.tenant_namespace(tenant)
        namespace, sep, plain = key.rpartition(":")
        if not sep:
            return own, check_key(key)
        check_namespace(namespace)
        check_key(plain)
        if namespace != own and (write or namespace not in self.shared):
            what = "write" if write else "read"
            raise StoreAccessError(
                f"tenant {tenant or DEFAULT_NAMESPACE!r} may not {what} key {plain!r} of namespace {namespace!r} "
                f"in store {self.url}" + ("" if write else f" (shared namespaces: {list(self.shared) or 'none'})")
            )
        return namespace, plain

    def namespaces(self) -> list[str]:
        fs, root = self._backend()
        self._fresh_listings()
        with self._errors("<all>", "list"):
            try:
                entries = fs.ls(root, detail=True)
            except FileNotFoundError:
                return []
        names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory"]
        return sorted(n for n in names if NAMESPACE_RE.match(n))

    # -- versions -------------------------------------------------------------------
    def version(self, key: str, *, namespace: str | None = None) -> Version:
        """The committed version of ``key`` (reads only its pointer); StoreKeyError if none."""
        ns = self._ns(namespace)
        check_key(key)
        fs, _ = self._backend()
        path = self._ref_path(ns, key)
        with self._errors(key, "read", ns):
            try:
                text = fs.cat_file(path)
            except FileNotFoundError:
                text = None
            except IsADirectoryError:
                text = None
        if text is None:
            raise StoreKeyError(f"key {key!r} is not in namespace {ns!r} of store {self.url}")
        with self._errors(key, "decode the pointer of", ns):
            return Version.from_json(ns, key, text)

    def _pointers(self) -> Pointers:
        if self._pointer_ops is None:
            fs, _ = self._backend()
            self._pointer_ops = pointers_for(fs, self._local_root)
        return self._pointer_ops

    def cached_version(self, key: str, *, namespace: str | None = None) -> Version:
        """The committed version of ``key``, without a store round trip where that stays exact.

        What a worker asks for every const of every request, so it must be cheap: on local files
        the pointer is read again only when its ``stat`` changed (every commit renames a new file
        into place); on object stores a version read is trusted for ``kaas.store-version-ttl``
        seconds (``put`` waits that long before it returns, so a request submitted after ``put``
        returned never sees the old bytes); ``memory://`` is read each time (a dict lookup).
        """
        ns = self._ns(namespace)
        pointers = self._pointers()
        path = self._ref_path(ns, key)
        entry = self._versions.get((ns, key))
        if pointers.remote:
            ttl = float(config.get("store-version-ttl") or 0)
            if entry is not None and time.monotonic() - entry[1] < ttl:
                return entry[0]
            version = self.version(key, namespace=ns)
            self._remember(version, time.monotonic())
            return version
        signature = pointers.signature(path)
        if signature is None:
            return self.version(key, namespace=ns)
        if entry is not None and entry[1] == signature:
            return entry[0]
        version = self.version(key, namespace=ns)
        self._remember(version, signature)
        return version

    def _remember(self, version: Version, check) -> None:
        self._versions[(version.namespace, version.key)] = (version, check)
        if len(self._versions) > VERSION_CACHE_ENTRIES:
            self._versions.pop(next(iter(self._versions)))

    # -- writing ----------------------------------------------------------------------
    def put(self, key: str, array, *, namespace: str | None = None, wait: bool = True) -> Version:
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
        """
        ns = self._ns(namespace)
        check_key(key)
        data = zarr_io.as_storable(key, array)
        self._backend()
        uid = f"{int(time.time() * 1e6):x}-{uuid.uuid4().hex[:12]}"
        path = self._ref_path(ns, key)
        pointers = self._pointers()
        with self._errors(key, "write", ns):
            zarr_io.write_array(self._zstore, f"{ns}/data/{uid}", data, self._local_root)
            for _ in range(COMMIT_ATTEMPTS):
                with pointers.lock(path):
                    text, token = pointers.read(path)
                    record, expired = _next_record(json.loads(text) if text else None, uid, data, time.time(),
                                                   float(config.get("store-retain-seconds") or 0))
                    if pointers.swap(path, json.dumps(record).encode(), token):
                        break
            else:
                raise StoreError(f"cannot commit key {key!r} (namespace {ns!r}) in store {self.url}: "
                                 f"{COMMIT_ATTEMPTS} other writers committed first")
        for old_uid in expired:
            self._remove_data(ns, old_uid)
        committed = Version.from_json(ns, key, json.dumps(record))
        self._versions.pop((ns, key), None)
        if pointers.remote:
            self._remember(committed, time.monotonic())
            ttl = float(config.get("store-version-ttl") or 0)
            if wait and ttl > 0:
                time.sleep(ttl)
        return committed

    def _remove_data(self, namespace: str, uid: str) -> None:
        fs, root = self._backend()
        with contextlib.suppress(FileNotFoundError, OSError):
            fs.rm(f"{root}/{namespace}/data/{uid}", recursive=True)

    def delete(self, key: str, *, namespace: str | None = None) -> None:
        """Remove ``key`` (its pointer first, then its data); StoreKeyError if absent."""
        ns = self._ns(namespace)
        check_key(key)
        path = self._ref_path(ns, key)
        pointers = self._pointers()
        with self._errors(key, "delete", ns):
            with pointers.lock(path):
                text, _ = pointers.read(path)
                if text is None:
                    raise StoreKeyError(f"key {key!r} is not in namespace {ns!r} of store {self.url}")
                pointers.remove(path)
        self._versions.pop((ns, key), None)
        for uid in _referenced(json.loads(text), time.time(), retain=float("inf")):
            self._remove_data(ns, uid)

    def gc(self, *, older_than: float = _ORPHAN_AGE) -> int:
        """Delete data no pointer references any more and older than ``older_than`` seconds (left by
        writers killed before their commit), and, on local stores, temporary files as old; return
        how many data directories went."""
        fs, root = self._backend()
        self._fresh_listings()
        pointers = self._pointers()
        retain = float(config.get("store-retain-seconds") or 0)
        removed = 0
        for ns in self.namespaces():
            live: set[str] = set()
            for key in self.keys(namespace=ns):
                text, _ = pointers.read(self._ref_path(ns, key))
                if text:
                    live |= _referenced(json.loads(text), time.time(), retain)
            with contextlib.suppress(FileNotFoundError):
                for entry in fs.ls(f"{root}/{ns}/data", detail=False):
                    uid = entry.rstrip("/").rsplit("/", 1)[-1]
                    born = _uid_time(uid)
                    if uid not in live and born is not None and time.time() - born > older_than:
                        self._remove_data(ns, uid)
                        removed += 1
            if self._local_root is not None:
                _remove_stale_temporaries(os.path.join(self._local_root, ns), older_than)
        return removed

    def _fresh_listings(self) -> None:
        """Forget cached directory listings (s3fs keeps them): listings must show what is there now."""
        fs, _ = self._backend()
        with contextlib.suppress(Exception):
            fs.invalidate_cache()  # all of it: s3fs forgets a path and its parents, not the dirs below

    # -- reading ----------------------------------------------------------------------
    def info(self, key: str, *, namespace: str | None = None) -> dict:
        """``nbytes``, ``dtype``, ``shape``, ``version``, ``uid`` and ``written`` of ``key`` (pointer only)."""
        v = self.version(key, namespace=namespace)
        return {"nbytes": v.nbytes, "dtype": v.dtype, "shape": v.shape, "version": v.version, "uid": v.uid,
                "written": v.written}

    def get(self, key: str, *, namespace: str | None = None) -> np.ndarray:
        """The current version of ``key`` as a new array of its stored dtype and shape."""
        v, raw = self._read_current(key, namespace, 0, None)
        return raw.view(v.dtype).reshape(v.shape)

    def get_bytes(self, key: str, offset: int = 0, size: int | None = None, *,
                  namespace: str | None = None) -> np.ndarray:
        """Bytes ``[offset, offset + size)`` of the current version as 1-D uint8 (``size=None``: to the end)."""
        return self._read_current(key, namespace, offset, size)[1]

    def _read_current(self, key, namespace, offset, size, attempts: int = 5) -> tuple[Version, np.ndarray]:
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
        self._backend()
        with self._errors(version.key, f"read version {version.version} of", version.namespace):
            try:
                return zarr_io.read_bytes(self._zstore, version.data_path, offset, size, local_root=self._local_root,
                                          fs=self._fs, root=self._root_path)
            except FileNotFoundError as e:
                raise StoreKeyError(
                    f"version {version.version} of key {version.key!r} (namespace {version.namespace!r}) is gone "
                    f"from store {self.url}: it was overwritten twice or deleted"
                ) from e

    # -- listing ----------------------------------------------------------------------
    def keys(self, *, namespace: str | None = None) -> list[str]:
        """Every committed key of a namespace, sorted."""
        ns = self._ns(namespace)
        fs, root = self._backend()
        self._fresh_listings()
        base = f"{root}/{ns}/refs"
        with self._errors("<all>", "list", ns):
            try:
                found = fs.find(base)
            except FileNotFoundError:
                return []
        out = []
        for path in found:
            rel = path[len(base):].lstrip("/") if path.startswith(base) else path.split("/refs/", 1)[-1]
            name = rel.rsplit("/", 1)[-1]
            if rel.endswith(".json") and not name.startswith(".tmp"):
                out.append(rel[: -len(".json")])
        return sorted(out)

    def __contains__(self, key) -> bool:
        """Whether ``key`` is committed in the default namespace."""
        try:
            self.version(key)
        except StoreKeyError:
            return False
        return True

    def exists(self, key: str, *, namespace: str | None = None) -> bool:
        try:
            self.version(key, namespace=namespace)
        except StoreKeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self.keys())


class NamespaceView:
    """A :class:`BufferStore` with every call bound to one namespace."""

    def __init__(self, store: BufferStore, namespace: str):
        self.store = store
        self.name = namespace

    def __repr__(self):
        return f"{self.store!r}.namespace({self.name!r})"

    def put(self, key, array, *, wait: bool = True) -> Version:
        return self.store.put(key, array, namespace=self.name, wait=wait)

    def get(self, key) -> np.ndarray:
        return self.store.get(key, namespace=self.name)

    def get_bytes(self, key, offset=0, size=None) -> np.ndarray:
        return self.store.get_bytes(key, offset, size, namespace=self.name)

    def version(self, key) -> Version:
        return self.store.version(key, namespace=self.name)

    def info(self, key) -> dict:
        return self.store.info(key, namespace=self.name)

    def delete(self, key) -> None:
        self.store.delete(key, namespace=self.name)

    def keys(self) -> list[str]:
        return self.store.keys(namespace=self.name)

    def __contains__(self, key) -> bool:
        return self.store.exists(key, namespace=self.name)


def _next_record(old: dict | None, uid: str, data: np.ndarray, now: float, retain: float) -> tuple[dict, list[str]]:
    """The pointer record that commits ``uid`` after ``old`` (None: a new key), and the uids of
    superseded versions whose data may now go: the one just replaced stays (one write longer), and
    older ones stay while retired for less than ``retain`` seconds (at most MAX_RETIRED of them)."""
    record = {"version": 1, "uid": uid, "dtype": data.dtype.str, "shape": list(data.shape),
              "nbytes": int(data.nbytes), "written": now, "previous": None, "retired": []}
    if old is None:
        return record, []
    retired = [[str(u), float(t)] for u, t in old.get("retired", ()) if u]
    if "retired" not in old and old.get("previous"):  # a pointer from before retirement times were kept
        retired.append([old["previous"], 0.0])
    retired.append([old["uid"], now])
    keep = [e for e in retired if e[0] == old["uid"] or now - e[1] < retain][-MAX_RETIRED:]
    kept = {u for u, _ in keep}
    record.update(version=int(old["version"]) + 1, previous=old["uid"], retired=keep)
    return record, [u for u, _ in retired if u not in kept]


def _referenced(record: dict, now: float, retain: float) -> set[str]:
    """The uids whose data a pointer record still needs."""
    uids = {record.get("uid"), record.get("previous")}
    uids.update(u for u, t in record.get("retired", ()) if now - t < retain)
    return {u for u in uids if u}


def _remove_stale_temporaries(directory: str, older_than: float) -> None:
    """``.tmp-*`` pointers and zarr's ``*.partial`` files that a killed writer left behind."""
    now = time.time()
    for base, _, files in os.walk(directory):
        for name in files:
            if name.startswith(".tmp-") or name.endswith(".partial"):
                path = os.path.join(base, name)
                with contextlib.suppress(OSError):
                    if now - os.path.getmtime(path) > older_than:
                        os.unlink(path)


def _uid_time(uid: str) -> float | None:
    try:
        return int(uid.split("-", 1)[0], 16) / 1e6
    except ValueError:
        return None


def open_store(store: BufferStore | str | None = None) -> BufferStore:
    """A BufferStore from a store, a URL or local path, a profile name (``stores/<name>.yaml``), or None
    (the ``kaas.store`` setting; null means the profile ``local``)."""
    from .profiles import default_store_spec, resolve_store

    if isinstance(store, BufferStore):
        return store
    if store is None:
        store = default_store_spec()
    if isinstance(store, str):
        url, options, shared = resolve_store(store)
        return BufferStore(url, storage_options=options, shared=shared)
    raise StoreError(f"expected a BufferStore, a URL, a profile name or None, got {type(store).__name__}")

"""Which committed version of a key a process may use without asking the store again.

A worker asks for the version of every const of every request, so the answer must be cheap and
still exact: on local files the pointer is read again only when its ``stat`` changed (every
commit renames a new file into place); on object stores a version read is trusted for
``kaas.store-version-ttl`` seconds (``put`` waits that long before it returns, so a request
submitted after ``put`` returned never sees the old bytes); where neither holds (``memory://``:
a dict lookup) the pointer is read each time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ..bounded import BoundedDict
from .pointers import Pointers
from .versions import Version

__all__ = ["VERSION_CACHE_ENTRIES", "VersionCache"]

VERSION_CACHE_ENTRIES = 4096


class VersionCache:
    """Versions read from a store, each with what tells whether it is still current: the
    pointer's signature (local files) or the monotonic time it was read (object stores)."""

    def __init__(self, max_entries: int = VERSION_CACHE_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        # (namespace, key) -> (version, pointer signature or None, monotonic time read)
        self._entries: BoundedDict[tuple[str, str], tuple[Version, object, float]] = BoundedDict(max_entries)
        self._lock = threading.Lock()
        self.clock = clock

    def lookup(
        self, pointers: Pointers, path: str, namespace: str, key: str, read: Callable[[], Version], ttl: float
    ) -> Version:
        """The version of ``key`` at pointer ``path``: the cached one while it provably stays
        current (same signature, or younger than ``ttl`` on a remote backend), else ``read()``."""
        with self._lock:
            entry = self._entries.get((namespace, key))
        if pointers.remote:
            now = self.clock()
            if entry is not None and now - entry[2] < ttl:
                return entry[0]
            version = read()
            self._remember(version, None, now)
            return version
        signature = pointers.signature(path)
        if signature is None:
            return read()
        if entry is not None and entry[1] == signature:
            return entry[0]
        version = read()
        self._remember(version, signature, self.clock())
        return version

    def committed(self, version: Version, pointers: Pointers) -> None:
        """A commit by this process: a remote backend trusts it for the time to live from now;
        a local one forgets the old entry (the new pointer's signature is read on next use)."""
        if pointers.remote:
            self._remember(version, None, self.clock())
        else:
            self.forget(version.namespace, version.key)

    def forget(self, namespace: str, key: str) -> None:
        with self._lock:
            self._entries.pop((namespace, key), None)

    def _remember(self, version: Version, signature: object, read_at: float) -> None:
        with self._lock:
            self._entries[(version.namespace, version.key)] = (version, signature, read_at)

"""Garbage collection of a store: the data of versions no pointer needs any more.

A writer killed between writing its data and committing the pointer leaves an array nothing
references; so may a process that died before removing a superseded version. :func:`collectable`
decides (pure); :func:`collect_garbage` lists, decides and removes.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable

from .backend import StoreBackend
from .versions import referenced, uid_time

__all__ = ["ORPHAN_AGE", "collect_garbage", "collectable"]

ORPHAN_AGE = 3600.0  # seconds before gc treats unreferenced data as abandoned, not in flight


def collectable(data_uids: Iterable[str], live: set[str], now: float, older_than: float) -> list[str]:
    """The uids to remove: referenced by no pointer, and created more than ``older_than`` seconds
    ago (younger ones may belong to a write in flight). Names that are not uids stay."""
    out = []
    for uid in data_uids:
        born = uid_time(uid)
        if uid not in live and born is not None and now - born > older_than:
            out.append(uid)
    return out


def collect_garbage(
    backend: StoreBackend,
    namespaces: Iterable[str],
    keys_of: Callable[[str], list[str]],
    *,
    retain: float,
    older_than: float = ORPHAN_AGE,
) -> int:
    """Remove the collectable data of every namespace and, on local stores, temporary files
    older than ``older_than``; return how many data directories went."""
    removed = 0
    for ns in namespaces:
        live: set[str] = set()
        for key in keys_of(ns):
            record = backend.pointers.record(backend.ref_path(ns, key))
            if record:
                live |= referenced(record, time.time(), retain)
        with contextlib.suppress(FileNotFoundError):
            entries = backend.fs.ls(backend.data_dir(ns), detail=False)
            listed = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries]
            for uid in collectable(listed, live, time.time(), older_than):
                backend.remove_data(ns, uid)
                removed += 1
        if backend.local_root is not None:
            remove_stale_temporaries(os.path.join(backend.local_root, ns), older_than)
    return removed


def remove_stale_temporaries(directory: str, older_than: float) -> None:
    """``.tmp-*`` pointers and zarr's ``*.partial`` files that a killed writer left behind."""
    now = time.time()
    for base, _, files in os.walk(directory):
        for name in files:
            if name.startswith(".tmp-") or name.endswith(".partial"):
                path = os.path.join(base, name)
                with contextlib.suppress(OSError):
                    if now - os.path.getmtime(path) > older_than:
                        os.unlink(path)

"""Versions and their pointer records: what a commit writes and which data it keeps alive.

A key's pointer (``<namespace>/refs/<key>.json``) is one JSON record: the committed version
number, the uid of its data directory, dtype, shape, byte size and commit time, plus the
superseded versions still kept for in-flight readers. These functions decide the next record;
:mod:`dask_kaas.store.pointers` makes swapping it in atomic.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from .pointers import Record

__all__ = ["COMMIT_ATTEMPTS", "MAX_RETIRED", "Version", "new_uid", "next_record", "referenced", "uid_time"]

COMMIT_ATTEMPTS = 64  # compare-and-swap retries before a put gives up on a key many writers race for
MAX_RETIRED = 32  # superseded versions a pointer keeps alive for in-flight readers


@dataclass(frozen=True)
class Version:
    """One committed version of a key: what its pointer says.

    Attributes
    ----------
    namespace, key : str
        Where the key lives.
    version : int
        1 for the first commit of the key, one more for each later commit.
    uid : str
        Name of the immutable Zarr array holding this version's bytes.
    dtype : numpy.dtype
    shape : tuple of int
    nbytes : int
    written : float
        Commit time (seconds since the epoch).
    """

    namespace: str
    key: str
    version: int
    uid: str
    dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int
    written: float

    @property
    def data_path(self) -> str:
        """Path of this version's Zarr array below the store's root."""
        return f"{self.namespace}/data/{self.uid}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "uid": self.uid,
                "dtype": self.dtype.str,
                "shape": list(self.shape),
                "nbytes": self.nbytes,
                "written": self.written,
            }
        )

    @classmethod
    def from_json(cls, namespace: str, key: str, text: bytes | str) -> Version:
        d = json.loads(text)
        return cls(
            namespace,
            key,
            int(d["version"]),
            str(d["uid"]),
            np.dtype(d["dtype"]),
            tuple(d["shape"]),
            int(d["nbytes"]),
            float(d["written"]),
        )


def new_uid() -> str:
    """A fresh data uid; it starts with its creation time in microseconds (hex), which gc reads."""
    return f"{int(time.time() * 1e6):x}-{uuid.uuid4().hex[:12]}"


def uid_time(uid: str) -> float | None:
    """When the data of ``uid`` was created (seconds since the epoch); None for a foreign name."""
    try:
        return int(uid.split("-", 1)[0], 16) / 1e6
    except ValueError:
        return None


def next_record(old: Record | None, uid: str, data: np.ndarray, now: float, retain: float) -> tuple[Record, list[str]]:
    """The pointer record that commits ``uid`` after ``old`` (None: a new key), and the uids of
    superseded versions whose data may now go: the one just replaced stays (one write longer), and
    older ones stay while retired for less than ``retain`` seconds (at most MAX_RETIRED of them)."""
    record: Record = {
        "version": 1,
        "uid": uid,
        "dtype": data.dtype.str,
        "shape": list(data.shape),
        "nbytes": int(data.nbytes),
        "written": now,
        "previous": None,
        "retired": [],
    }
    if old is None:
        return record, []
    retired: list[list[Any]] = [[str(u), float(t)] for u, t in old.get("retired", ()) if u]
    retired.append([old["uid"], now])
    keep = [e for e in retired if e[0] == old["uid"] or now - e[1] < retain][-MAX_RETIRED:]
    kept = {u for u, _ in keep}
    record.update(version=int(old["version"]) + 1, previous=old["uid"], retired=keep)
    return record, [u for u, _ in retired if u not in kept]


def referenced(record: Record, now: float, retain: float) -> set[str]:
    """The uids whose data a pointer record still needs."""
    uids = {record.get("uid"), record.get("previous")}
    uids.update(u for u, t in record.get("retired", ()) if now - t < retain)
    return {u for u in uids if u}

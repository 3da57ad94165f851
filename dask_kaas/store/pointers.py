"""Commit pointers with compare-and-swap, so concurrent writers never share a version number.

A key's pointer (``<namespace>/refs/<key>.json``) is replaced by each commit. The writer reads
the pointer, decides the next version from it, and swaps it in only if nobody committed in
between; otherwise it reads again and retries. How that is made atomic depends on the backend:

- local files: an exclusive ``flock`` on a lock file per key (``<namespace>/locks/``) around
  read and replace, and the replace itself is an atomic rename;
- S3 (s3fs): a conditional PUT, ``If-Match`` the ETag read (``If-None-Match: *`` for a new key),
  as S3 offers since 2024;
- ``memory://``: a lock in this process (the store lives in one process anyway);
- any other fsspec backend: read and write without a guarantee (the last writer wins, and two
  concurrent writers may commit the same number).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from ..files import write_atomic

_memory_locks: dict[str, threading.Lock] = {}
_memory_locks_guard = threading.Lock()


MISSING = "missing"  # the signature of a pointer that does not exist

T = TypeVar("T")
Record = dict[str, Any]  # a pointer's JSON record (see dask_kaas.store.versions)
# a pointer's fingerprint: (inode, mtime, size) of a local file, MISSING, or None where no cheap one exists
Signature = tuple[int, int, int] | str | None


class Pointers:
    """Unconditional pointers over any fsspec filesystem (the fallback)."""

    #: Whether a version read from this backend may be trusted for ``kaas.store-version-ttl`` seconds
    #: without asking again (remote stores); local files have :meth:`signature` instead.
    remote = True

    def signature(self, path: str) -> Signature:
        """A cheap fingerprint of the pointer that changes with every commit, or None where no
        cheap one exists (then callers fall back to reading the pointer, or to a time to live)."""
        return None

    def __init__(self, fs: Any) -> None:  # an fsspec filesystem (untyped)
        self.fs = fs

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[None]:
        yield

    def read(self, path: str) -> tuple[bytes | None, object]:
        """The pointer's bytes (None if absent) and a token that :meth:`swap` checks against."""
        try:
            return self.fs.cat_file(path), None
        except (FileNotFoundError, IsADirectoryError):
            return None, None

    def swap(self, path: str, data: bytes, token: object) -> bool:
        """Write ``data`` if the pointer is still what :meth:`read` returned with ``token``; False if not."""
        self.fs.pipe_file(path, data)
        return True

    def remove(self, path: str) -> None:
        self.fs.rm(path)

    def record(self, path: str) -> Record | None:
        """The pointer's record, None if there is none."""
        text, _ = self.read(path)
        return json.loads(text) if text else None

    def commit(
        self, path: str, make_record: Callable[[Record | None], tuple[Record, T]], attempts: int
    ) -> tuple[Record, T] | None:
        """Swap in ``make_record(current record)`` if nobody committed between the read and the
        swap, reading again after each lost race; ``make_record`` returns the new record and
        anything the caller wants back with it. None when all ``attempts`` lost."""
        for _ in range(attempts):
            with self.lock(path):
                text, token = self.read(path)
                record, extra = make_record(json.loads(text) if text else None)
                if self.swap(path, json.dumps(record).encode(), token):
                    return record, extra
        return None

    def take(self, path: str) -> Record | None:
        """Remove the pointer and return its last record (None, and nothing removed, if absent)."""
        with self.lock(path):
            text, _ = self.read(path)
            if text is None:
                return None
            self.remove(path)
        record: Record = json.loads(text)
        return record


class LocalPointers(Pointers):
    """Local files: flock around read and replace, and replace by rename."""

    remote = False

    def signature(self, path: str) -> Signature:
        """``(inode, mtime, size)``: every commit renames a new file into place, so the inode changes."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return MISSING
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def __init__(self, fs: Any, root: str) -> None:
        super().__init__(fs)
        self.root = root

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[None]:
        import fcntl

        rel = os.path.relpath(path, self.root)
        namespace = rel.split(os.sep, 1)[0]
        directory = os.path.join(self.root, namespace, "locks")
        os.makedirs(directory, exist_ok=True)
        name = hashlib.sha256(rel.encode("utf-8")).hexdigest()[:40] + ".lock"
        with open(os.path.join(directory, name), "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def read(self, path: str) -> tuple[bytes | None, object]:
        try:
            with open(path, "rb") as f:
                return f.read(), None
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None, None

    def swap(self, path: str, data: bytes, token: object) -> bool:
        write_atomic(path, data)
        return True

    def remove(self, path: str) -> None:
        os.unlink(path)


class MemoryPointers(Pointers):
    """fsspec's memory filesystem: one process, so a lock per pointer path is enough."""

    remote = False  # reading the pointer is a dict lookup

    @contextlib.contextmanager
    def lock(self, path: str) -> Iterator[None]:
        with _memory_locks_guard:
            lock = _memory_locks.setdefault(path, threading.Lock())
        with lock:
            yield


class S3Pointers(Pointers):
    """S3 through s3fs: conditional PUTs on the pointer's ETag."""

    def read(self, path: str) -> tuple[bytes | None, object]:
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(path)

        async def get() -> tuple[bytes | None, object]:
            try:
                resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            except FileNotFoundError:
                return None, None
            try:
                return await resp["Body"].read(), resp["ETag"]
            finally:
                resp["Body"].close()

        got: tuple[bytes | None, object] = sync(self.fs.loop, get)  # fsspec is untyped
        return got

    def swap(self, path: str, data: bytes, token: object) -> bool:
        bucket, key, _ = self.fs.split_path(path)
        condition = {"IfMatch": token} if token is not None else {"IfNoneMatch": "*"}
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except FileExistsError:  # If-None-Match: someone created it first
            return False
        except OSError as e:
            # s3fs reports 412 PreconditionFailed (If-Match) as EINVAL; only a changed ETag makes it a lost race
            if e.errno == errno.EINVAL and self.read(path)[1] != token:
                return False
            raise
        finally:
            self.fs.invalidate_cache(path)
        return True


def pointers_for(fs: Any, local_root: str | None) -> Pointers:
    """The compare-and-swap the backend offers."""
    if local_root is not None:
        return LocalPointers(fs, local_root)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol == "memory":
        return MemoryPointers(fs)
    if protocol in ("s3", "s3a") and hasattr(fs, "_call_s3"):
        return S3Pointers(fs)
    return Pointers(fs)

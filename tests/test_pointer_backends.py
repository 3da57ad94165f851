"""One conformance suite every pointer backend of the store must pass (as zarr's ``StoreTests`` is for
its stores): local files (flock and rename), fsspec's memory filesystem (a lock per path) and S3 (a
conditional PUT on the ETag, against a real S3-compatible server on 127.0.0.1).

The contract (``dask_kaas.store.pointers``): a committer that, under :meth:`lock`, reads a pointer and
swaps in a new one with the token it read either wins or learns that it lost (``swap`` is False) and
reads again; no commit is ever lost, however many commit at once; a reader sees the old bytes or the
new, never a part.
"""

from __future__ import annotations

import threading
import uuid

import fsspec
import pytest

from dask_kaas.store.pointers import MISSING, LocalPointers, MemoryPointers, Pointers, S3Pointers, pointers_for


def commit(pointers: Pointers, path: str, change) -> bytes:
    """Read-modify-write the pointer at ``path`` until it sticks, as the store's commit loop does."""
    while True:
        with pointers.lock(path):
            data, token = pointers.read(path)
            new = change(data)
            if pointers.swap(path, new, token):
                return new


class PointerBackendTests:
    """Subclasses give ``backend``: ``(pointers, directory)``, a fresh directory on that backend."""

    kind: type

    @pytest.fixture
    def backend(self):  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def test_the_store_picks_this_backend(self, backend):
        pointers, _ = backend
        assert type(pointers) is self.kind
        assert isinstance(pointers.remote, bool)

    def test_a_missing_pointer_reads_as_none(self, backend):
        pointers, root = backend
        data, _ = pointers.read(f"{root}/refs/missing.json")
        assert data is None
        assert pointers.signature(f"{root}/refs/missing.json") in (MISSING, None)

    def test_first_commit_then_reads_back(self, backend):
        pointers, root = backend
        path = f"{root}/refs/k.json"
        assert commit(pointers, path, lambda old: b'{"version": 1}') == b'{"version": 1}'
        assert pointers.read(path)[0] == b'{"version": 1}'

    def test_a_swap_with_a_stale_token_loses_or_the_lock_kept_it_fresh(self, backend):
        """Where the backend compares (S3), a swap with a token read before someone else's commit is
        refused; where it locks (files, memory), the read and the swap happen under one lock."""
        pointers, root = backend
        path = f"{root}/refs/race.json"
        commit(pointers, path, lambda old: b"1")
        _, stale = pointers.read(path)
        commit(pointers, path, lambda old: b"2")
        if isinstance(pointers, S3Pointers):
            assert pointers.swap(path, b"3", stale) is False
            assert pointers.read(path)[0] == b"2"
        else:
            with pointers.lock(path):
                data, token = pointers.read(path)
                assert data == b"2" and pointers.swap(path, b"3", token)
            assert pointers.read(path)[0] == b"3"

    def test_no_commit_is_lost_when_many_commit_at_once(self, backend):
        pointers, root = backend
        path = f"{root}/refs/counter.json"
        threads, per_thread = 6, 5

        def bump(old: bytes | None) -> bytes:
            return str(int(old or b"0") + 1).encode()

        def worker():
            for _ in range(per_thread):
                commit(pointers, path, bump)

        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join(120)
        assert int(pointers.read(path)[0]) == threads * per_thread

    def test_a_signature_changes_with_every_commit(self, backend):
        pointers, root = backend
        path = f"{root}/refs/sig.json"
        commit(pointers, path, lambda old: b"a")
        first = pointers.signature(path)
        commit(pointers, path, lambda old: b"b")
        second = pointers.signature(path)
        if first is not None:  # a backend without a cheap fingerprint says None, never a stale one
            assert first != second and second != MISSING

    def test_remove(self, backend):
        pointers, root = backend
        path = f"{root}/refs/gone.json"
        commit(pointers, path, lambda old: b"x")
        pointers.remove(path)
        assert pointers.read(path)[0] is None


class TestLocalPointers(PointerBackendTests):
    kind = LocalPointers

    @pytest.fixture
    def backend(self, tmp_path):
        root = str(tmp_path / "store")
        (tmp_path / "store" / "ns" / "refs").mkdir(parents=True)
        return pointers_for(fsspec.filesystem("file"), root), f"{root}/ns"


class TestMemoryPointers(PointerBackendTests):
    kind = MemoryPointers

    @pytest.fixture
    def backend(self):
        root = f"/kaas-pointers-{uuid.uuid4().hex}"
        return pointers_for(fsspec.filesystem("memory"), None), f"{root}/ns"


class TestS3Pointers(PointerBackendTests):
    kind = S3Pointers

    @pytest.fixture
    def backend(self, s3_server):
        url, options = s3_server
        fs, bucket = fsspec.core.url_to_fs(url, **options)
        return pointers_for(fs, None), f"{bucket}/{uuid.uuid4().hex[:8]}/ns"

"""The store's parts on their own: the bounded dict, the version cache, gc's decision, and the
pointers' commit loop."""

import pickle
import threading

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
from hypothesis import given
from hypothesis import strategies as st

from dask_kaas.bounded import BoundedDict
from dask_kaas.store import BufferStore, StoreError, Version
from dask_kaas.store.gc import collectable
from dask_kaas.store.pointers import MISSING, LocalPointers, MemoryPointers, Pointers
from dask_kaas.store.version_cache import VersionCache
from dask_kaas.store.versions import next_record


# ------------------------------------------------------------------ BoundedDict
@given(st.integers(1, 8), st.lists(st.integers(0, 20), max_size=60))
def test_a_bounded_dict_keeps_the_newest_keys_in_insertion_order(bound, keys):
    d = BoundedDict(bound)
    model: dict[int, int] = {}
    for i, k in enumerate(keys):
        d[k] = i
        model[k] = i
        while len(model) > bound:
            del model[next(iter(model))]
    assert list(d.items()) == list(model.items())
    assert len(d) <= bound


def test_a_bounded_dict_refuses_a_useless_bound_and_pickles_with_its_bound():
    with pytest.raises(ValueError, match="max_entries"):
        BoundedDict(0)
    d = BoundedDict(2)
    d.update(a=1, b=2, c=3)
    back = pickle.loads(pickle.dumps(d))
    assert back == {"b": 2, "c": 3} and back.max_entries == 2
    back["d"] = 4
    assert list(back) == ["c", "d"]


# ------------------------------------------------------------------ VersionCache
def _version(n: int, key="k") -> Version:
    return Version("ns", key, n, f"uid{n}", np.dtype("f4"), (n,), 4 * n, 0.0)


class _Local(Pointers):
    remote = False

    def __init__(self):
        super().__init__(None)
        self.sig: object = "a"

    def signature(self, path):
        return self.sig


class _Remote(Pointers):
    remote = True

    def __init__(self):
        super().__init__(None)


def test_the_version_cache_rereads_a_local_pointer_only_when_its_signature_changes():
    cache, pointers, reads = VersionCache(), _Local(), []

    def read():
        reads.append(1)
        return _version(len(reads))

    assert cache.lookup(pointers, "p", "ns", "k", read, ttl=0).version == 1
    assert cache.lookup(pointers, "p", "ns", "k", read, ttl=0).version == 1  # same signature: no read
    pointers.sig = "b"  # a commit renamed a new pointer in
    assert cache.lookup(pointers, "p", "ns", "k", read, ttl=0).version == 2
    assert len(reads) == 2
    pointers.sig = None  # no cheap signature: read every time
    cache.lookup(pointers, "p", "ns", "k", read, ttl=0)
    cache.lookup(pointers, "p", "ns", "k", read, ttl=0)
    assert len(reads) == 4


def test_the_version_cache_trusts_a_remote_version_for_its_time_to_live_only():
    now = [100.0]
    cache, pointers, reads = VersionCache(clock=lambda: now[0]), _Remote(), []

    def read():
        reads.append(1)
        return _version(len(reads))

    assert cache.lookup(pointers, "p", "ns", "k", read, ttl=5).version == 1
    now[0] = 104.9
    assert cache.lookup(pointers, "p", "ns", "k", read, ttl=5).version == 1
    now[0] = 105.0
    assert cache.lookup(pointers, "p", "ns", "k", read, ttl=5).version == 2
    cache.committed(_version(7), pointers)  # this process committed: trusted from now
    assert cache.lookup(pointers, "p", "ns", "k", read, ttl=5).version == 7
    cache.forget("ns", "k")
    assert cache.lookup(pointers, "p", "ns", "k", read, ttl=5).version == 3


def test_a_local_commit_makes_the_cache_read_the_new_pointer():
    cache, pointers = VersionCache(), _Local()
    assert cache.lookup(pointers, "p", "ns", "k", lambda: _version(1), ttl=0).version == 1
    cache.committed(_version(2), pointers)  # forgets: the signature is read on next use
    assert cache.lookup(pointers, "p", "ns", "k", lambda: _version(3), ttl=0).version == 3


def test_the_version_cache_is_bounded():
    cache, pointers = VersionCache(max_entries=3), _Local()
    for i in range(10):
        cache.lookup(pointers, "p", "ns", f"k{i}", lambda i=i: _version(1, f"k{i}"), ttl=0)
    assert len(cache._entries) == 3


# ------------------------------------------------------------------ gc's decision
_uids = st.builds(lambda t, tail: f"{t:x}-{tail}", st.integers(0, 10**16), st.text("abcdef0123456789", min_size=1))


@given(st.lists(_uids | st.text(max_size=8), max_size=30), st.data(), st.floats(0, 1e10), st.floats(0, 1e6))
def test_gc_removes_exactly_the_old_unreferenced_uids(listed, data, now, older_than):
    live = set(data.draw(st.lists(st.sampled_from(listed), max_size=len(listed)))) if listed else set()
    out = collectable(listed, live, now, older_than)
    for uid in out:
        assert uid not in live
        born = int(uid.split("-", 1)[0], 16) / 1e6
        assert now - born > older_than
    for uid in set(listed) - set(out):  # kept: live, young, or not a uid at all
        head = uid.split("-", 1)[0]
        is_uid = "-" in uid and all(c in "0123456789abcdefABCDEF" for c in head) and head != ""
        assert uid in live or not is_uid or now - int(head, 16) / 1e6 <= older_than


def test_gc_keeps_what_a_pointer_still_needs(tmp_path):
    store = BufferStore(str(tmp_path / "s"))
    v1 = store.put("k", np.arange(3))
    v2 = store.put("k", np.arange(4))
    assert store.gc(older_than=0) == 0  # v1 is the previous version: kept one write longer
    np.testing.assert_array_equal(store.read(v1), np.arange(3).view(np.uint8))
    np.testing.assert_array_equal(store.get("k"), np.arange(4))
    assert v2.version == 2


# ------------------------------------------------------------------ commit
def _data(n):
    return np.zeros(n, np.uint8)


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_concurrent_commits_each_take_their_own_number(tmp_path, kind):
    import fsspec

    if kind == "local":
        pointers: Pointers = LocalPointers(fsspec.filesystem("file"), str(tmp_path))
        path = str(tmp_path / "ns" / "refs" / "k.json")
        (tmp_path / "ns" / "refs").mkdir(parents=True)
    else:
        pointers = MemoryPointers(fsspec.filesystem("memory"))
        path = f"/commit-{tmp_path.name}/ns/refs/k.json"
    got: list[int] = []
    lock = threading.Lock()

    def commit(i):
        for j in range(5):
            out = pointers.commit(path, lambda old, i=i, j=j: next_record(old, f"{i}-{j}", _data(1), 0.0, 0.0), 64)
            assert out is not None
            with lock:
                got.append(out[0]["version"])

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 21))
    assert pointers.record(path)["version"] == 20
    assert pointers.take(path)["version"] == 20
    assert pointers.take(path) is None and pointers.record(path) is None
    if kind == "local":
        assert pointers.signature(path) == MISSING


def test_a_commit_that_loses_every_race_says_so_and_leaves_nothing(tmp_path):
    import fsspec

    class AlwaysLoses(MemoryPointers):
        def swap(self, path, data, token):
            return False

    pointers = AlwaysLoses(fsspec.filesystem("memory"))
    assert pointers.commit(f"/lose-{tmp_path.name}/k.json", lambda old: ({"version": 1}, None), 3) is None
    assert pointers.record(f"/lose-{tmp_path.name}/k.json") is None


def test_a_put_whose_commit_never_wins_raises_and_removes_its_data(tmp_path):
    store = BufferStore(str(tmp_path / "s"))
    store.put("k", np.arange(3))
    store.backend.pointers.swap = lambda path, data, token: False  # every other writer is faster
    with pytest.raises(StoreError, match="other writers committed first"):
        store.put("k", np.arange(5))
    data = tmp_path / "s" / "default" / "data"
    assert len([p for p in data.iterdir() if p.is_dir()]) == 1  # only the committed version's array
    np.testing.assert_array_equal(store.get("k"), np.arange(3))

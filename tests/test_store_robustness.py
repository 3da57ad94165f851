"""What the store guarantees under deletion, concurrency and crashes, on real files, real processes,
fsspec's memory filesystem and S3 (moto over HTTP on 127.0.0.1):

- data that is gone is an error (or a retry on the current pointer), never zeros;
- every acknowledged put has its own version number and readers never see one go back;
- gc() leaves no temporaries behind and sees what is there now, not a cached listing.
"""

import multiprocessing
import os
import time
import uuid

import dask
import numpy as np
import pytest

from dask_kaas.errors import StoreKeyError
from dask_kaas.store import BufferStore, zarr_io
from dask_kaas.store.pointers import S3Pointers


@pytest.fixture(params=["file", "memory", "s3"])
def anystore(request, tmp_path):
    if request.param == "file":
        return BufferStore(f"file://{tmp_path}/store")
    if request.param == "memory":
        return BufferStore(f"memory://robust-{uuid.uuid4().hex}")
    url, options = request.getfixturevalue("s3_server")
    return BufferStore(f"{url}/{uuid.uuid4().hex[:8]}", storage_options=options)


def _rm(store, version, rel=""):
    store.backend.fs.rm(f"{store.backend.root}/{version.data_path}{rel}", recursive=not rel)
    store.backend.fresh_listings()


def test_a_missing_chunk_is_an_error_never_zeros(anystore):
    v = anystore.put("k", np.full(10, 5.0))
    _rm(anystore, v, "/c/0")
    with pytest.raises(StoreKeyError, match=r"version 1 of key 'k'.*is gone"):
        anystore.read(v)
    with pytest.raises(StoreKeyError, match="is gone"):
        anystore.get("k")


def test_a_missing_array_is_an_error(anystore):
    v = anystore.put("k", np.arange(6, dtype=np.int32))
    _rm(anystore, v)
    with pytest.raises(StoreKeyError, match="is gone"):
        anystore.read(v, 4, 8)


def test_multi_chunk_reads_by_range(anystore, monkeypatch):
    monkeypatch.setattr(zarr_io, "CHUNK_BYTES", 4096)
    x = np.random.default_rng(0).random((1000, 3))
    v = anystore.put("big", x)
    raw = x.reshape(-1).view(np.uint8)
    for offset, size in [(0, raw.nbytes), (4000, 5000), (4096, 4096), (23_999, 1), (raw.nbytes - 7, 7)]:
        np.testing.assert_array_equal(anystore.read(v, offset, size), raw[offset : offset + size])
    _rm(anystore, v, "/c/2/0")  # one chunk in the middle
    np.testing.assert_array_equal(anystore.read(v, 0, 4096), raw[:4096])  # other chunks still read
    with pytest.raises(StoreKeyError, match="is gone"):
        anystore.read(v, 4000, 5000)


def test_readers_racing_writers_never_see_zeros_or_a_mix(tmp_path):
    """With no retention at all, every read still returns one whole written value."""
    import threading

    store = BufferStore(f"file://{tmp_path}/store")
    store.put("k", np.full(50_000, 1.0))
    stop, seen, bad = threading.Event(), set(), []

    def read():
        reader = BufferStore(store.url)
        while not stop.is_set():
            value = reader.get("k")
            first = float(value[0])
            if first == 0.0 or not (value == first).all():
                bad.append(first)
            seen.add(first)

    with dask.config.set({"kaas.store-retain-seconds": 0}):
        threads = [threading.Thread(target=read) for _ in range(2)]
        for t in threads:
            t.start()
        for i in range(2, 60):
            store.put("k", np.full(50_000, float(i)))
        stop.set()
        for t in threads:
            t.join()
    assert bad == [] and len(seen) > 1


# ------------------------------------------------------------------ concurrent writers
def _writer(url, key, n, out):
    store = BufferStore(url)
    out.put([store.put(key, np.full(8, float(os.getpid()))).version for _ in range(n)])


def _reader(url, key, stop, out):
    store = BufferStore(url)
    versions = []
    while not stop.is_set():
        try:
            versions.append(store.version(key).version)
        except StoreKeyError:
            pass
    out.put(versions)


@pytest.mark.slow
def test_concurrent_writer_processes_each_get_their_own_version(tmp_path):
    url = f"file://{tmp_path}/store"
    ctx = multiprocessing.get_context("spawn")
    out, seen, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    reader = ctx.Process(target=_reader, args=(url, "k", stop, seen))
    reader.start()
    writers = [ctx.Process(target=_writer, args=(url, "k", 25, out)) for _ in range(4)]
    for w in writers:
        w.start()
    acknowledged = [v for _ in writers for v in out.get(timeout=120)]
    for w in writers:
        w.join(timeout=60)
    stop.set()
    observed = seen.get(timeout=60)
    reader.join(timeout=60)
    assert sorted(acknowledged) == list(range(1, 101))  # no number given twice, none skipped
    assert observed == sorted(observed), "a reader saw the version go back"
    assert BufferStore(url).version("k").version == 100


def test_s3_commit_that_loses_the_race_takes_the_next_number(s3_server):
    url, options = s3_server
    url = f"{url}/{uuid.uuid4().hex[:8]}"
    mine, theirs = BufferStore(url, storage_options=options), BufferStore(url, storage_options=options)
    mine.put("k", np.zeros(4))
    pointers = mine.backend.pointers
    assert isinstance(pointers, S3Pointers)
    real_read, raced = pointers.read, []

    def read_then_someone_commits(path):
        out = real_read(path)
        if not raced:  # between our read and our swap, another writer commits
            raced.append(theirs.put("k", np.ones(4)))
        return out

    pointers.read = read_then_someone_commits
    v = mine.put("k", np.full(4, 2.0))
    assert [r.version for r in raced] == [2] and v.version == 3
    fresh = BufferStore(url, storage_options=options)
    assert fresh.version("k").version == 3
    np.testing.assert_array_equal(fresh.get("k"), np.full(4, 2.0))
    record = fresh.backend.pointers.record(fresh.backend.ref_path("default", "k"))
    assert record["previous"] == raced[0].uid  # the chain of versions has no gap


# ------------------------------------------------------------------ gc
def test_gc_removes_temporaries_a_killed_writer_left(tmp_path):
    store = BufferStore(f"file://{tmp_path}/store")
    store.put("k", np.arange(3))
    refs, data = tmp_path / "store" / "default" / "refs", tmp_path / "store" / "default" / "data"
    (refs / ".tmp-0123abcd").write_text("{half a pointer")
    v = store.version("k")
    (data / v.uid / "c" / "0.partial").write_bytes(b"half a chunk")
    assert store.gc(older_than=3600) == 0
    assert (refs / ".tmp-0123abcd").exists()  # young: perhaps a writer in flight
    assert store.gc(older_than=0) == 0
    assert not (refs / ".tmp-0123abcd").exists() and not (data / v.uid / "c" / "0.partial").exists()
    np.testing.assert_array_equal(store.get("k"), np.arange(3))
    assert store.keys() == ["k"]


def test_gc_on_s3_sees_what_is_there_now(s3_server):
    url, options = s3_server
    url = f"{url}/{uuid.uuid4().hex[:8]}"
    gcer, writer = BufferStore(url, storage_options=options), BufferStore(url, storage_options=options)
    writer.put("k", np.arange(4))
    assert gcer.keys() == ["k"] and gcer.gc(older_than=0) == 0  # lists (and s3fs caches) the store now
    for i in range(5):  # what writers killed before their commits leave behind
        zarr_io.write_array(writer.backend.zstore, f"default/data/{int(time.time() * 1e6):x}-orphan{i}", np.arange(3))
    writer.put("k2", np.arange(2))
    assert gcer.gc(older_than=0) == 5
    assert sorted(gcer.keys()) == ["k", "k2"]
    np.testing.assert_array_equal(gcer.get("k2"), np.arange(2))


# ------------------------------------------------------------------ the version cache
def test_local_version_cache_reads_a_pointer_only_when_it_changed(tmp_path):
    store = BufferStore(f"file://{tmp_path}/store")
    other = BufferStore(store.url)  # another process's writes, as far as this cache can tell
    store.put("w", np.zeros(4))
    reads = []
    real = store.version
    store.version = lambda key, namespace=None: reads.append(key) or real(key, namespace=namespace)
    first = store.cached_version("w")
    assert [store.cached_version("w") for _ in range(50)] == [first] * 50 and len(reads) == 1
    other.put("w", np.ones(4))
    assert store.cached_version("w").version == 2 and len(reads) == 2
    other.delete("w")
    with pytest.raises(StoreKeyError):
        store.cached_version("w")


def test_s3_version_cache_is_stale_at_most_its_ttl_and_put_waits_it_out(s3_server):
    url, options = s3_server
    url = f"{url}/{uuid.uuid4().hex[:8]}"
    reader, writer = BufferStore(url, storage_options=options), BufferStore(url, storage_options=options)
    with dask.config.set({"kaas.store-version-ttl": 60}):  # long: a slow put on a loaded machine stays within it
        writer.put("w", np.zeros(4), wait=False)
        assert reader.cached_version("w").version == 1
        writer.put("w", np.ones(4), wait=False)
        assert reader.cached_version("w").version == 1  # within the time to live: trusted, unasked
    with dask.config.set({"kaas.store-version-ttl": 0.5}):  # read at each lookup: the entry is older than this
        time.sleep(0.55)
        assert reader.cached_version("w").version == 2
        start = time.monotonic()
        writer.put("w", np.full(4, 2.0))  # waits the ttl out: whatever reader cached before is stale now
        assert time.monotonic() - start >= 0.5
        assert reader.cached_version("w").version == 3


@pytest.mark.slow
def test_a_request_after_put_returned_never_sees_the_old_bytes_on_s3(s3_server):
    from distributed import Client
    from helpers import matvec_request

    from dask_kaas import LocalKaasCluster

    url, options = s3_server
    url = f"{url}/{uuid.uuid4().hex[:8]}"
    store = BufferStore(url, storage_options=options)
    x = np.ones(64, np.float32)
    with (
        dask.config.set({"kaas.store-version-ttl": 0.3}),
        LocalKaasCluster(n_workers=1, device="host", store=store, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        for value in (1.0, 2.0, 3.0):
            store.put("A", np.eye(64, dtype=np.float32) * value, namespace="t")
            for _ in range(3):  # the second and third from the worker's cache
                out = client.submit(matvec_request("A", tenant="t"), x=x, pure=False).result(timeout=60)
                np.testing.assert_allclose(out["y"], x * value)

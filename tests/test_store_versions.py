"""Versions, atomic commits, concurrent writers and tenant namespaces, with real processes."""

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
from distributed import Client, LocalCluster

from dask_kaas import BufferSpec, BufferStore, KernelSpec, Literal, Request, StoreError
from dask_kaas.device import HostDevice
from dask_kaas.runtime import Runtime
from dask_kaas.store import StoreAccessError, StoreKeyError

F = 4


@pytest.fixture
def store(tmp_path):
    return BufferStore(f"file://{tmp_path}/store", shared=["public"])


def test_versions_count_up_and_old_data_is_collected(store, tmp_path):
    import dask

    def data_dirs():
        return sorted(d for d in os.listdir(tmp_path / "store" / "default" / "data") if d != "zarr.json")

    with dask.config.set({"kaas.store-retain-seconds": 0}):
        v1 = store.put("w", np.zeros(4))
        v2 = store.put("w", np.ones(4))
        v3 = store.put("w", np.full(4, 2.0))
    assert (v1.version, v2.version, v3.version) == (1, 2, 3)
    assert len({v1.uid, v2.uid, v3.uid}) == 3
    assert store.version("w") == v3 and store.info("w")["version"] == 3
    np.testing.assert_array_equal(store.get("w"), np.full(4, 2.0))
    # the previous version stays readable for in-flight readers; the one before it is gone
    np.testing.assert_array_equal(store.read(v2).view(np.float64), np.ones(4))
    with pytest.raises(StoreKeyError, match="gone"):
        store.read(v1)
    assert data_dirs() == sorted([v2.uid, v3.uid])
    # within kaas.store-retain-seconds, superseded versions stay readable however many writes follow
    with dask.config.set({"kaas.store-retain-seconds": 60}):
        later = [store.put("w", np.full(4, float(i))) for i in range(4)]
    for i, v in enumerate(later):
        np.testing.assert_array_equal(store.read(v).view(np.float64), np.full(4, float(i)))
    np.testing.assert_array_equal(store.read(v2).view(np.float64), np.ones(4))
    assert len(data_dirs()) == 6
    with dask.config.set({"kaas.store-retain-seconds": 0}):  # once their time is up, the next write takes them
        last = store.put("w", np.full(4, 9.0))
    assert data_dirs() == sorted([later[-1].uid, last.uid])
    assert store.gc(older_than=0) == 0  # nothing referenced went, nothing unreferenced stayed


def test_uncommitted_data_is_invisible_and_gc_removes_it(store, tmp_path):
    store.put("w", np.arange(3))
    # what a writer killed before its commit leaves behind: data, no pointer
    from dask_kaas.store import zarr_io

    zarr_io.write_array(store.backend.zstore, "default/data/1-orphan", np.arange(10))
    assert store.keys() == ["w"]
    np.testing.assert_array_equal(store.get("w"), np.arange(3))
    assert store.gc(older_than=0) == 1
    assert "1-orphan" not in os.listdir(tmp_path / "store" / "default" / "data")
    np.testing.assert_array_equal(store.get("w"), np.arange(3))


def test_namespaces_are_separate(store):
    store.put("w", np.zeros(2), namespace="alice")
    store.put("w", np.ones(2), namespace="bob")
    store.namespace("public").put("bert", np.arange(3))
    assert store.namespaces() == ["alice", "bob", "public"]
    assert store.keys(namespace="alice") == ["w"] and store.keys() == []
    np.testing.assert_array_equal(store.namespace("bob").get("w"), np.ones(2))
    assert "w" not in store and "w" in store.namespace("alice")
    with pytest.raises(StoreError, match="namespace"):
        store.put("w", np.zeros(1), namespace="../escape")


def test_resolve_enforces_namespaces(store):
    assert store.resolve("w", "alice") == ("alice", "w")
    assert store.resolve("alice:w", "alice") == ("alice", "w")
    assert store.resolve("public:bert", "alice") == ("public", "bert")
    assert store.resolve("w", None) == ("default", "w")
    with pytest.raises(StoreAccessError, match=r"tenant 'alice' may not read key 'w' of namespace 'bob'"):
        store.resolve("bob:w", "alice")
    with pytest.raises(StoreAccessError, match="may not write"):
        store.resolve("public:bert", "alice", write=True)
    assert issubclass(StoreAccessError, StoreError)


def _axpy_request(key, tenant, *, n=4, dtype="float32"):
    x = BufferSpec("x", n * F, key=key, const=True, dtype=dtype)
    y = BufferSpec("y", n * F, dtype="float32", ephemeral=True)
    return Request(
        [
            KernelSpec(
                "builtin", "axpy", 1, 32, literals=[Literal("i", n), Literal("f", 1.0)], arguments=[(x, "i"), (y, "io")]
            )
        ],
        tenant=tenant,
    )


def test_runtime_never_reads_another_tenants_key(store):
    rt = Runtime(HostDevice(1 << 20), store)
    store.put("w", np.ones(4, np.float32), namespace="bob")
    store.put("bert", np.full(4, 5, np.float32), namespace="public")
    with pytest.raises(StoreAccessError, match="bob"):
        rt.run(_axpy_request("bob:w", "alice"), {"y": np.zeros(4, np.float32)})
    with pytest.raises(StoreKeyError, match="namespace 'alice'"):  # a plain key stays in alice's namespace
        rt.run(_axpy_request("w", "alice"), {"y": np.zeros(4, np.float32)})
    s = rt.stats()
    assert s["bytes_from_store"] == 0 and s["bytes_h2d"] == 0  # it read nothing
    out = rt.run(_axpy_request("public:bert", "alice"), {"y": np.zeros(4, np.float32)})
    np.testing.assert_array_equal(out["y"], np.full(4, 5))
    np.testing.assert_array_equal(rt.run(_axpy_request("w", "bob"), {"y": np.zeros(4, np.float32)})["y"], np.ones(4))


def test_outputs_cannot_be_written_into_another_namespace(store):
    rt = Runtime(HostDevice(1 << 20), store)
    y = BufferSpec("y", 4 * F, dtype="float32", key="public:result")
    r = Request(
        [KernelSpec("builtin", "fill", 1, 32, literals=[Literal("i", 4), Literal("f", 1.0)], arguments=[(y, "o")])],
        tenant="alice",
    )
    with pytest.raises(StoreAccessError, match="may not write"):
        rt.run(r)
    assert "result" not in store.namespace("public")


def test_spec_must_agree_with_the_stored_buffer(store):
    rt = Runtime(HostDevice(1 << 20), store)
    store.put("w", np.ones(4, np.float64), namespace="alice")  # float64, 32 bytes
    with pytest.raises(StoreError, match=r"key 'w'.*holds float64, the spec says float32"):
        rt.run(_axpy_request("w", "alice"), {"y": np.zeros(4, np.float32)})
    store.put("short", np.ones(2, np.float32), namespace="alice")
    with pytest.raises(StoreError, match=r"key 'short'.*holds 8 bytes.*\[0, 16\)"):
        rt.run(_axpy_request("short", "alice"), {"y": np.zeros(4, np.float32)})
    assert rt.stats()["bytes_from_store"] == 0 and rt.cache.used == 0


def test_new_version_is_never_served_stale_from_the_cache(store):
    rt = Runtime(HostDevice(1 << 20), store)
    store.put("w", np.ones(4, np.float32), namespace="alice")
    r = _axpy_request("w", "alice")
    assert rt.run(r, {"y": np.zeros(4, np.float32)})["y"][0] == 1
    assert rt.run(r, {"y": np.zeros(4, np.float32)})["y"][0] == 1
    store.put("w", np.full(4, 7, np.float32), namespace="alice")
    assert rt.run(r, {"y": np.zeros(4, np.float32)})["y"][0] == 7
    cached = [e["key"] for e in rt.cache.contents()]
    assert len(cached) == 1 and cached[0].uid == store.version("w", namespace="alice").uid  # old copy dropped
    s = rt.stats()
    assert (s["hits"], s["compulsory_misses"]) == (1, 2)


def test_unreachable_store_is_a_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rt = Runtime(HostDevice(1 << 20), BufferStore(f"file://{blocker}/store"))
    with pytest.raises(StoreError, match=str(blocker)):
        rt.run(_axpy_request("w", "alice"), {"y": np.zeros(4, np.float32)})


# ------------------------------------------------------------ real processes
def _writer(url, key, values, size, barrier):
    store = BufferStore(url)
    barrier.wait()
    for v in values:
        store.put(key, np.full(size, v, np.float64))


def _reader(url, key, allowed, size, stop, bad):
    store = BufferStore(url)
    while not stop.is_set():
        got = store.get(key)
        if got.shape != (size,) or len(np.unique(got)) != 1 or float(got[0]) not in allowed:
            bad.value += 1


@pytest.mark.slow
def test_concurrent_writer_processes_leave_exactly_one_value(tmp_path):
    url = f"file://{tmp_path}/store"
    size = 200_000  # 1.6 MB: a write is not instantaneous
    ctx = multiprocessing.get_context("spawn")
    writers = 4
    values = {w: [float(w * 100 + i) for i in range(5)] for w in range(writers)}
    allowed = {v for vs in values.values() for v in vs}
    BufferStore(url).put("k", np.full(size, next(iter(allowed)), np.float64))
    barrier = ctx.Barrier(writers)
    stop, bad = ctx.Event(), ctx.Value("i", 0)
    reader = ctx.Process(target=_reader, args=(url, "k", allowed, size, stop, bad))
    reader.start()
    procs = [ctx.Process(target=_writer, args=(url, "k", values[w], size, barrier)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    stop.set()
    reader.join(60)
    final = BufferStore(url).get("k")
    assert len(np.unique(final)) == 1 and float(final[0]) in allowed
    assert bad.value == 0, "a reader saw a torn or foreign value"
    assert BufferStore(url).keys() == ["k"]


def _slow_put(url, key, marker):
    """Runs on a Dask worker: write a big buffer, but hang after the data, before the commit."""

    store = BufferStore(url)

    def hang(*args, **kwargs):
        open(marker, "w").close()
        time.sleep(600)

    store.backend.pointers.swap = hang  # the commit
    store.put(key, np.full(4_000_000, 2.0))
    return "finished"


def _pid():
    return os.getpid()


def test_worker_killed_mid_write_leaves_the_previous_version(tmp_path):
    url = f"file://{tmp_path}/store"
    store = BufferStore(url)
    store.put("weights", np.full(10, 1.0))
    marker = tmp_path / "data-written"
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        (pid,) = client.run(_pid).values()
        future = client.submit(_slow_put, url, "weights", str(marker), pure=False)
        deadline = time.time() + 60
        while not marker.exists():
            assert time.time() < deadline, "the write never reached its commit"
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)  # dies between data and commit
        client.wait_for_workers(1, timeout=60)
        del future
    after = BufferStore(url)
    np.testing.assert_array_equal(after.get("weights"), np.full(10, 1.0))
    assert after.version("weights").version == 1
    assert after.keys() == ["weights"]
    data = [d for d in os.listdir(tmp_path / "store" / "default" / "data") if d != "zarr.json"]
    assert len(data) == 2  # the committed version and the orphan, which only gc() can see
    assert after.gc(older_than=0) == 1
    np.testing.assert_array_equal(after.get("weights"), np.full(10, 1.0))


def _killed_while_writing_chunks(url, marker):
    """A process killed while zarr is writing chunk files of a multi-chunk buffer."""
    from dask_kaas.store import zarr_io

    zarr_io.CHUNK_BYTES = 1 << 20
    original = zarr_io.write_array

    def write_then_hang(zstore, path, data, local_root=None):
        original(zstore, path, data[: len(data) // 2].copy(), local_root)  # some chunk files are on disk
        open(marker, "w").close()
        time.sleep(600)

    zarr_io.write_array = write_then_hang
    BufferStore(url).put("big", np.full(2_000_000, 3.0))


def test_process_killed_while_writing_chunks(tmp_path):
    url = f"file://{tmp_path}/store"
    BufferStore(url).put("big", np.full(2_000_000, 1.0))
    marker = tmp_path / "m"
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_killed_while_writing_chunks, args=(url, str(marker)))
    p.start()
    deadline = time.time() + 60
    while not marker.exists():
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    got = BufferStore(url).get("big")
    assert np.all(got == 1.0) and got.shape == (2_000_000,)

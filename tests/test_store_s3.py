"""BufferStore on S3 through s3fs, against a real S3-compatible HTTP server on 127.0.0.1 (moto).

The ``s3_server`` fixture (conftest.py, tests/s3server.py) runs the server for
the session; every test here talks to it over HTTP, nothing is patched.
"""

import re
import time
import uuid

import numpy as np
import pytest
from helpers import matvec_request

from dask_kaas import LocalKaasCluster
from dask_kaas.errors import StoreError, StoreKeyError
from dask_kaas.store import BufferStore

F = 4


@pytest.fixture
def store(s3_server):
    url, options = s3_server
    return BufferStore(f"{url}/{uuid.uuid4().hex[:8]}", storage_options=options, shared=["public"])


@pytest.mark.parametrize(
    "array",
    [
        np.arange(1000, dtype=np.float32),
        np.arange(24, dtype=np.int64).reshape(2, 3, 4) - 7,
        np.array([True, False, True]),
        (np.arange(6) + 1j * np.arange(6)).astype(np.complex128).reshape(3, 2),
        np.array(3.5, dtype=np.float64),
        np.arange(10, dtype=">u2"),  # big-endian: stored in native order
        np.frombuffer(b"raw bytes", dtype=np.uint8),
    ],
    ids=["f32", "i64-3d", "bool", "c128", "scalar", "be-u2", "bytes"],
)
def test_round_trip(store, array):
    version = store.put("buf", array)
    assert version.version == 1 and version.nbytes == array.nbytes and version.shape == array.shape
    back = store.get("buf")
    assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    info = store.info("buf")
    assert info["nbytes"] == array.nbytes and info["shape"] == array.shape and info["version"] == 1


def test_overwrite_bumps_version(store):
    v1 = store.put("k", np.zeros(8, np.float32))
    v2 = store.put("k", np.ones((2, 2), np.int16))
    assert (v1.version, v2.version) == (1, 2) and v1.uid != v2.uid and v2.written >= v1.written
    assert store.version("k") == v2
    np.testing.assert_array_equal(store.get("k"), np.ones((2, 2), np.int16))
    fresh = BufferStore(store.url, storage_options=store.storage_options)  # another client sees the commit
    assert fresh.version("k").version == 2 and fresh.info("k")["dtype"] == np.int16


def test_keys_namespaces_and_delete(store):
    store.put("a", np.ones(2))
    store.put("models/w1", np.ones(3), namespace="alice")
    store.put("models/w2", np.ones(3), namespace="alice")
    store.put("w", np.ones(1), namespace="bob")
    assert store.keys() == ["a"]
    assert store.keys(namespace="alice") == ["models/w1", "models/w2"]
    assert store.namespaces() == ["alice", "bob", "default"]
    assert "a" in store and "models/w1" not in store
    store.delete("models/w1", namespace="alice")
    assert store.keys(namespace="alice") == ["models/w2"]
    with pytest.raises(StoreKeyError):
        store.get("models/w1", namespace="alice")
    assert store.keys(namespace="bob") == ["w"]


def test_missing_key_names_key_and_url(store):
    for call in (
        lambda: store.get("nope"),
        lambda: store.get_bytes("nope"),
        lambda: store.info("nope"),
        lambda: store.version("nope"),
        lambda: store.delete("nope"),
        lambda: store.get("w", namespace="carol"),
    ):
        with pytest.raises(StoreKeyError) as e:
            call()
        assert store.url in str(e.value)
        assert "'nope'" in str(e.value) or "'w'" in str(e.value)
    assert isinstance(e.value, KeyError) and isinstance(e.value, StoreError)


def test_get_bytes_ranges(store):
    a = np.arange(4096, dtype=np.float32).reshape(64, 64)
    store.put("m", a)
    raw = a.tobytes()
    for offset, size in [
        (0, None),
        (0, 1),
        (5, 11),
        (4 * 64 * 3 + 2, 4 * 64 + 5),
        (len(raw) - 3, 3),
        (len(raw), 0),
        (100, None),
    ]:
        got = store.get_bytes("m", offset, size)
        want = raw[offset:] if size is None else raw[offset : offset + size]
        assert got.dtype == np.uint8 and got.tobytes() == want, (offset, size)
    with pytest.raises(StoreError, match=re.escape(store.url)):
        store.get_bytes("m", len(raw) - 2, 3)


def test_pickled_store_keeps_options(store):
    import pickle

    store.put("p", np.arange(3))
    other = pickle.loads(pickle.dumps(store))
    assert other == store and other.storage_options == store.storage_options and other.shared == ("public",)
    np.testing.assert_array_equal(other.get("p"), np.arange(3))


def test_s3_profile_with_endpoint_from_environment(s3_server, tmp_path, monkeypatch):
    """The repo's stores/s3.yaml: endpoint_url from ${AWS_ENDPOINT_URL}; bucket dask-kaas on the server."""
    from dask_kaas.store import open_store, resolve_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server[1]["endpoint_url"])
    url, options, _shared = resolve_store("s3")
    assert url == "s3://dask-kaas" and options["endpoint_url"] == s3_server[1]["endpoint_url"]
    store = open_store("s3")
    key = f"profile-{uuid.uuid4().hex[:8]}"
    store.put(key, np.arange(5.0), namespace="public")
    np.testing.assert_array_equal(store.get(key, namespace="public"), np.arange(5.0))
    assert store.shared == ("public",)
    store.delete(key, namespace="public")


def test_unreachable_store_fails_fast_naming_it(s3_server):
    import s3server

    port = s3server.free_port()  # nobody listens there
    store = BufferStore(
        "s3://kaas-test/gone",
        storage_options={
            "endpoint_url": f"http://127.0.0.1:{port}",
            "config_kwargs": {"connect_timeout": 1, "read_timeout": 1, "retries": {"max_attempts": 1}},
        },
    )
    t0 = time.monotonic()
    for call in (lambda: store.put("k", np.ones(3)), lambda: store.get("k"), lambda: store.keys()):
        with pytest.raises(StoreError) as e:
            call()
        assert "s3://kaas-test/gone" in str(e.value)
        assert not isinstance(e.value, StoreKeyError)  # unreachable is not "missing"
    assert time.monotonic() - t0 < 10


def test_cluster_reads_const_buffers_from_s3(s3_server):
    """Worker processes read a tenant's const buffer from S3 over HTTP; results match NumPy."""
    from distributed import Client

    from dask_kaas import worker_stats

    url, options = s3_server
    store = BufferStore(f"{url}/cluster-{uuid.uuid4().hex[:8]}", storage_options=options)
    n = 48
    rng = np.random.default_rng(0)
    w_alice = rng.standard_normal((n, n)).astype(np.float32)
    w_bob = rng.standard_normal((n, n)).astype(np.float32)
    store.put("w", w_alice, namespace="alice")
    store.put("w", w_bob, namespace="bob")  # same key, other tenant: must not be mixed up
    with (
        LocalKaasCluster(
            n_workers=2, device="host", device_memory="64MiB", store=store, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        assert cluster.store.url == store.url
        pids = client.run(lambda: __import__("os").getpid())
        assert len(set(pids.values())) == 2
        jobs = []
        for i in range(8):
            tenant, w = ("alice", w_alice) if i % 2 == 0 else ("bob", w_bob)
            x = rng.standard_normal(n).astype(np.float32)
            jobs.append((x, w, client.submit(matvec_request("w", n, tenant), x=x, pure=False)))
        for x, w, future in jobs:
            np.testing.assert_allclose(future.result()["y"], x @ w, rtol=1e-4, atol=1e-4)
        stats = worker_stats(client)
        assert sum(s["bytes_from_store"] for s in stats.values()) >= 2 * w_alice.nbytes
        assert sum(s["tenants"].get("alice", {}).get("requests", 0) for s in stats.values()) == 4

"""BufferStore over real local files (tmp_path) and fsspec's real memory:// filesystem."""

import multiprocessing
import os
import pickle
import threading
import uuid

import dask.config
import numpy as np
import pytest
import zarr

from dask_kaas.errors import StoreError, StoreKeyError
from dask_kaas.store import BufferStore, open_store, zarr_io


@pytest.fixture
def fstore(tmp_path):
    return BufferStore(f"file://{tmp_path}/store")


@pytest.fixture
def mstore():
    return BufferStore(f"memory://kaas-test-{uuid.uuid4().hex}")


@pytest.fixture(params=["file", "memory"])
def anystore(request, fstore, mstore):
    return fstore if request.param == "file" else mstore


@pytest.mark.parametrize(
    "dtype, shape",
    [
        ("float32", (3, 4)),
        ("float64", (7,)),
        ("float16", (2, 2, 2)),
        ("int8", (2, 3, 4)),
        ("uint16", (5, 1)),
        ("int64", (1,)),
        ("bool", (4, 4)),
        ("complex64", (3,)),
        ("float64", ()),
        ("datetime64[s]", (3,)),
    ],
)
def test_round_trip(anystore, dtype, shape):
    rng = np.random.default_rng(0)
    x = (rng.random(shape) * 100).astype(dtype)
    anystore.put("w", x)
    y = anystore.get("w")
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.flags.c_contiguous
    np.testing.assert_array_equal(y, x)
    info = anystore.info("w")
    assert {k: info[k] for k in ("nbytes", "dtype", "shape", "version")} == {
        "nbytes": x.nbytes,
        "dtype": x.dtype,
        "shape": x.shape,
        "version": 1,
    }


def test_non_contiguous_and_fortran_input(anystore):
    x = np.arange(24, dtype="f4").reshape(4, 6)
    anystore.put("t", x.T)
    np.testing.assert_array_equal(anystore.get("t"), x.T)
    anystore.put("s", x[:, ::2])
    np.testing.assert_array_equal(anystore.get("s"), x[:, ::2])
    assert anystore.get_bytes("s").tobytes() == np.ascontiguousarray(x[:, ::2]).tobytes()


def test_big_endian_stored_by_value_in_native_order(anystore):
    x = np.arange(6, dtype=">i4")
    anystore.put("be", x)
    y = anystore.get("be")
    assert y.dtype == np.dtype("=i4")
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("value", [b"hello", bytearray(b"hello"), memoryview(b"hello")])
def test_bytes_like_is_uint8(anystore, value):
    anystore.put("b", value)
    y = anystore.get("b")
    assert y.dtype == np.uint8 and y.shape == (5,)
    assert y.tobytes() == b"hello"


@pytest.mark.parametrize(
    "value", [np.zeros((0,)), np.zeros((3, 0)), np.array(["a", "b"], dtype=object), [1, 2], "text"]
)
def test_bad_values(fstore, value):
    with pytest.raises(StoreError, match="'w'"):
        fstore.put("w", value)
    assert "w" not in fstore


def test_all_zero_array_round_trips(fstore):
    # zarr skips writing all-fill chunks by default; the store must not
    fstore.put("z", np.zeros((3, 3)))
    np.testing.assert_array_equal(fstore.get("z"), np.zeros((3, 3)))


def test_overwrite_changes_dtype_and_shape(anystore):
    anystore.put("w", np.ones((4, 4), dtype="f8"))
    anystore.put("w", np.arange(10, dtype="i2"))
    y = anystore.get("w")
    assert y.dtype == np.int16 and y.shape == (10,)
    np.testing.assert_array_equal(y, np.arange(10))
    assert anystore.keys() == ["w"]


def test_nested_keys_listing(anystore):
    assert anystore.keys() == [] and len(anystore) == 0
    for k in ["tenantB/x", "tenantA/W1", "tenantA/deep/W2", "top"]:
        anystore.put(k, np.arange(3))
    assert anystore.keys() == ["tenantA/W1", "tenantA/deep/W2", "tenantB/x", "top"]
    assert len(anystore) == 4
    assert "tenantA/W1" in anystore
    assert "tenantA" not in anystore  # a folder, not a buffer
    assert "nope" not in anystore
    with pytest.raises(StoreKeyError):
        anystore.get("tenantA")


def test_a_key_and_keys_below_it_coexist(anystore):
    """Keys are names, not folders: "a", "a/b" and "a/b/c" are three independent buffers."""
    anystore.put("a/b", np.arange(3))
    anystore.put("a", np.arange(2))
    anystore.put("a/b/c", np.arange(4))
    assert anystore.keys() == ["a", "a/b", "a/b/c"]
    np.testing.assert_array_equal(anystore.get("a/b"), np.arange(3))
    anystore.delete("a/b")
    assert anystore.keys() == ["a", "a/b/c"]
    np.testing.assert_array_equal(anystore.get("a/b/c"), np.arange(4))


def test_delete(anystore):
    anystore.put("x/y", np.arange(3))
    anystore.put("z", np.arange(3))
    anystore.delete("x/y")
    assert anystore.keys() == ["z"]
    assert "x/y" not in anystore
    with pytest.raises(StoreKeyError):
        anystore.delete("x/y")


@pytest.mark.parametrize("op", ["get", "get_bytes", "info", "delete"])
def test_missing_key(anystore, op):
    with pytest.raises(StoreKeyError) as ei:
        getattr(anystore, op)("tenant/missing")
    assert isinstance(ei.value, KeyError)
    msg = str(ei.value)
    assert "'tenant/missing'" in msg and anystore.url in msg


@pytest.mark.parametrize(
    "key",
    ["", "/a", "a/", "a//b", ".", "a/..", "../a", "a\\b", "zarr.json", "a/zarr.json", 3, None, b"a"],
)
@pytest.mark.parametrize("op", ["put", "get", "get_bytes", "info", "delete", "contains"])
def test_bad_keys(fstore, key, op):
    with pytest.raises(StoreError) as ei:
        if op == "put":
            fstore.put(key, np.arange(3))
        elif op == "contains":
            key in fstore  # noqa: B015
        else:
            getattr(fstore, op)(key)
    assert not isinstance(ei.value, StoreKeyError)
    assert repr(key) in str(ei.value)


@pytest.mark.parametrize(
    "key", ["\u20ac" * 84, "a/" + "\u00e9" * 126 + "/b", "\U0001f600" * 63, "x" * 251, "/".join(["\u20ac" * 80] * 5)]
)
def test_keys_are_bounded_in_encoded_bytes(anystore, key):
    """A key within the character limits whose UTF-8 segments would exceed a file name's 255 bytes (with the
    pointer's ".json") is refused by name on every backend, before any file or object is made."""
    with pytest.raises(StoreError, match="bytes in UTF-8"):
        anystore.put(key, np.arange(3))
    assert anystore.keys() == []
    ok = "\u20ac" * 83  # 249 bytes: its pointer's file name is 254
    anystore.put(ok, np.arange(3))
    assert anystore.get(ok).tolist() == [0, 1, 2]


def test_get_bytes_ranges(anystore):
    x = np.arange(12, dtype="<i4").reshape(3, 4)
    raw = x.tobytes()
    anystore.put("w", x)
    for offset, size in [(0, None), (0, 48), (5, 10), (16, 16), (47, 1), (48, 0), (20, None)]:
        got = anystore.get_bytes("w", offset, size)
        assert got.dtype == np.uint8 and got.ndim == 1
        end = None if size is None else offset + size
        assert got.tobytes() == raw[offset:end], (offset, size)
    for offset, size in [(0, 49), (40, 9), (49, None), (-1, 4), (4, -1)]:
        with pytest.raises(StoreError, match="'w'") as ei:
            anystore.get_bytes("w", offset, size)
        assert anystore.url in str(ei.value)
        assert not isinstance(ei.value, StoreKeyError)


def test_multi_chunk_arrays(anystore, monkeypatch):
    monkeypatch.setattr(zarr_io, "CHUNK_BYTES", 1000)
    x = np.random.default_rng(1).random((101, 3)).astype("f8")  # 24-byte rows
    v = anystore.put("big", x)
    assert zarr.open_array(store=anystore.backend.zstore, path=v.data_path).chunks == (41, 3)
    np.testing.assert_array_equal(anystore.get("big"), x)
    raw = x.tobytes()
    for offset, size in [(0, None), (980, 30), (984, 984), (1, 2422), (2400, 24)]:
        end = None if size is None else offset + size
        assert anystore.get_bytes("big", offset, size).tobytes() == raw[offset:end]
    # rows bigger than the chunk limit: one row per chunk
    y = np.arange(4 * 300, dtype="f8").reshape(4, 300)
    v = anystore.put("rows", y)
    assert zarr.open_array(store=anystore.backend.zstore, path=v.data_path).chunks == (1, 300)
    np.testing.assert_array_equal(anystore.get("rows"), y)


def test_fast_local_read_matches_zarr(fstore, monkeypatch):
    monkeypatch.setattr(zarr_io, "CHUNK_BYTES", 4096)
    x = np.random.default_rng(2).random((1000, 7)).astype("f4")
    v = fstore.put("w", x)
    arr = zarr.open_array(store=fstore.backend.zstore, path=v.data_path)
    assert zarr_io._read_local_chunks(arr, fstore.backend.local_root, v.data_path, 0, x.nbytes) is not None  # fast path
    np.testing.assert_array_equal(fstore.get("w"), arr[...])


def test_fast_local_write_skips_zarrs_encoder(fstore, monkeypatch):
    """Local writes go straight to the chunk files on every zarr release (zarr >= 3.3 made the endian a string)."""

    def no_encode(self, *args, **kwargs):
        raise AssertionError("zarr's own write path was used")

    monkeypatch.setattr(zarr.Array, "__setitem__", no_encode)
    x = np.arange(1000, dtype="f4").reshape(100, 10)
    fstore.put("w", x)
    np.testing.assert_array_equal(fstore.get("w"), x)


@pytest.mark.parametrize("endian", ["little", "big"])
def test_layout_check_reads_both_endian_forms(endian):
    """The endian of zarr's bytes codec is an Endian enum up to zarr 3.2 and a plain string from 3.3."""
    import sys
    from types import SimpleNamespace

    from zarr.codecs import BytesCodec

    codec = BytesCodec(endian=endian)
    as_string = BytesCodec(endian=endian)
    object.__setattr__(as_string, "endian", endian)
    for c in (codec, as_string):
        meta = SimpleNamespace(codecs=(c,))
        assert zarr_io._raw_native_layout(meta, (4, 3), (2, 3)) is (endian == sys.byteorder)
        assert zarr_io._raw_native_layout(meta, (4, 3), (2, 1)) is False


def test_pickle_reopens(anystore):
    anystore.put("t/w", np.arange(5))
    anystore.keys()  # open the backend before pickling
    data = pickle.dumps(anystore)
    assert b"zarr" not in data
    copy = pickle.loads(data)
    assert copy == anystore and hash(copy) == hash(anystore) and copy is not anystore
    np.testing.assert_array_equal(copy.get("t/w"), np.arange(5))
    copy.put("t/v", np.arange(2))
    assert anystore.keys() == ["t/v", "t/w"]


def test_memory_shared_between_instances(mstore):
    other = BufferStore(mstore.url)
    mstore.put("w", np.arange(4))
    np.testing.assert_array_equal(other.get("w"), np.arange(4))
    other.delete("w")
    assert "w" not in mstore


def test_url_normalization_and_repr(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = BufferStore("rel/store")
    b = BufferStore(f"file://{tmp_path}/rel/store/")
    assert a.url == f"file://{tmp_path}/rel/store"
    assert a == b and hash(a) == hash(b)
    assert a != BufferStore("memory://rel/store")
    assert BufferStore("memory://x/").url == "memory://x"
    assert repr(a) == f"BufferStore('file://{tmp_path}/rel/store')"


def test_open_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    with dask.config.set({"kaas.store": None}):
        assert open_store().url == f"file://{tmp_path}/data/dask-kaas/store"
        assert open_store(None).url == f"file://{tmp_path}/data/dask-kaas/store"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    os.makedirs(tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path / "elsewhere")  # another directory, the same store
    with dask.config.set({"kaas.store": None}):
        assert open_store().url == f"file://{tmp_path}/home/.local/share/dask-kaas/store"
    with dask.config.set({"kaas.store": "memory://configured"}):
        assert open_store().url == "memory://configured"
    s = BufferStore("memory://abc")
    assert open_store(s) is s
    assert open_store("memory://abc") == s
    with pytest.raises(StoreError):
        open_store(42)


def test_corrupt_metadata_is_store_error(fstore, tmp_path):
    v = fstore.put("w", np.arange(3))
    with open(tmp_path / "store" / "default" / "data" / v.uid / "zarr.json", "w") as f:
        f.write("{not json")
    with pytest.raises(StoreError) as ei:
        fstore.get("w")
    assert not isinstance(ei.value, StoreKeyError)
    assert "'w'" in str(ei.value) and fstore.url in str(ei.value)
    assert ei.value.__cause__ is not None


def test_truncated_chunk_is_store_error(fstore, tmp_path):
    v = fstore.put("w", np.arange(100, dtype="f8"))
    chunk = tmp_path / "store" / "default" / "data" / v.uid / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    with pytest.raises(StoreError, match="'w'"):
        fstore.get("w")


def test_unreachable_backend_is_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    s = BufferStore(f"file://{blocker}/store")  # a path below a regular file
    with pytest.raises(StoreError) as ei:
        s.put("w", np.arange(3))
    assert s.url in str(ei.value) and ei.value.__cause__ is not None


def test_threads_share_lazy_open(fstore):
    BufferStore(fstore.url).put("w", np.arange(3))
    errors, barrier = [], threading.Barrier(8)

    def work(i):
        try:
            barrier.wait()
            if i % 2:
                assert fstore.keys() == ["w"]
            else:
                np.testing.assert_array_equal(fstore.get("w"), np.arange(3))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def _write_in_child(store, key):
    store.put(key, np.arange(6, dtype="f4").reshape(2, 3) * 2)


def test_write_in_another_process(fstore):
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_write_in_child, args=(fstore, "tenant/w"))
    p.start()
    p.join(120)
    assert p.exitcode == 0
    np.testing.assert_array_equal(fstore.get("tenant/w"), np.arange(6, dtype="f4").reshape(2, 3) * 2)
    assert fstore.keys() == ["tenant/w"]
    assert os.path.isdir(fstore.url[len("file://") :])

"""Store I/O: reading and writing a 256 MiB const through a file:// BufferStore vs raw NumPy file I/O.

Targets (issue: persistent buffers): read <= 1.5x ``numpy.fromfile`` of the same
bytes, write likewise against ``ndarray.tofile``, measured side by side here.
Also measures the layout choices (chunk size, compression) that the store uses.

    python -m benchmarks.store_io [--mib 256] [--repeat 5] [--quick]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np

from benchmarks.common import interleaved, timeit, write_result
from dask_kaas import zarr_io
from dask_kaas.store import BufferStore


def measure(mib: int, repeat: int) -> dict:
    rng = np.random.default_rng(0)
    data = rng.standard_normal(mib * 2**20 // 4).astype(np.float32)
    root = tempfile.mkdtemp(prefix="kaas-bench-")
    try:
        raw = os.path.join(root, "raw.bin")
        store = BufferStore(f"file://{root}/store")
        data.tofile(raw)
        store.put("w", data)

        def check_read():
            got = store.get("w")
            assert got.nbytes == data.nbytes and got[123] == data[123]

        check_read()
        results = {
            "bytes": data.nbytes,
            "read": interleaved({
                "numpy.fromfile": lambda: np.fromfile(raw, dtype=np.float32),
                "BufferStore.get": lambda: store.get("w"),
                "BufferStore.get_bytes": lambda: store.get_bytes("w"),
            }, repeat=repeat),
            "write": interleaved({
                "ndarray.tofile": lambda: data.tofile(raw),
                "BufferStore.put": lambda: store.put("w", data),
            }, repeat=repeat),
        }
        results["read_ratio"] = results["read"]["BufferStore.get"]["median"] / results["read"]["numpy.fromfile"]["median"]
        results["write_ratio"] = results["write"]["BufferStore.put"]["median"] / results["write"]["ndarray.tofile"]["median"]
        results["layouts"] = layouts(root, data, repeat=max(2, repeat // 2))
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def layouts(root: str, data: np.ndarray, repeat: int) -> list[dict]:
    """Chunk size and compression alternatives, timed through zarr itself."""
    import zarr
    from zarr.codecs import BloscCodec

    rows = []
    smooth = np.cumsum(np.full(data.size, 1e-3, np.float32)).astype(np.float32)  # compressible stand-in
    for label, chunk_mib, compressor in [
        ("16MiB, none", 16, None), ("64MiB, none", 64, None), ("256MiB, none", 256, None),
        ("64MiB, blosc-lz4", 64, BloscCodec(cname="lz4", clevel=5)),
        ("64MiB, blosc-zstd", 64, BloscCodec(cname="zstd", clevel=3)),
    ]:
        for name, arr in (("random", data), ("smooth", smooth)):
            if compressor is None and name == "smooth":
                continue  # uncompressed layouts do not depend on the values
            path = os.path.join(root, f"layout-{chunk_mib}-{len(rows)}")
            zstore = zarr.storage.LocalStore(path)
            chunks = (max(1, chunk_mib * 2**20 // 4),)

            def write():
                z = zarr.create_array(store=zstore, shape=arr.shape, dtype=arr.dtype, chunks=chunks,
                                      compressors=compressor, filters=None, overwrite=True)
                z[...] = arr

            w = timeit(write, repeat=repeat)
            z = zarr.open_array(store=zstore, mode="r")
            r = timeit(lambda: z[...], repeat=repeat)
            disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
            rows.append({"layout": label, "data": name, "write_s": w["median"], "read_s": r["median"],
                         "disk_ratio": disk / arr.nbytes})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="32 MiB, 3 repeats")
    parser.add_argument("--name", default="store_io")
    args = parser.parse_args(argv)
    mib, repeat = (32, 3) if args.quick else (args.mib, args.repeat)
    results = measure(mib, repeat)
    results["chunk_bytes"] = zarr_io.CHUNK_BYTES
    path = write_result(args.name, {"suite": "store_io", "parameters": {"mib": mib, "repeat": repeat}, **results})
    print(f"read  {results['read_ratio']:.2f}x numpy.fromfile   (target <= 1.5x)")
    print(f"write {results['write_ratio']:.2f}x ndarray.tofile   (target <= 1.5x)")
    for row in results["layouts"]:
        print(f"  {row['layout']:<18} {row['data']:<7} write {row['write_s']:.3f}s read {row['read_s']:.3f}s "
              f"disk {row['disk_ratio']:.2f}")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

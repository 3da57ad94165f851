"""Store I/O: reading and writing a 256 MiB const through a file:// BufferStore vs raw NumPy file I/O.

Targets (issue: persistent buffers): read <= 1.5x ``numpy.fromfile`` of the same
bytes, write likewise against ``ndarray.tofile``, measured side by side here.
Also measures the layout choices (chunk size, compression) that the store uses.

    python -m benchmarks store_io [--mib 256] [--repeat 9] [--quick]
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from benchmarks.common import Option, Suite, WrongResult, interleaved, main, timeit

# smoke clips the layouts' chunks to the array (a chunk is written whole, padding and all)
SIZES = {
    "full": {"mib": 256, "repeat": 9},
    "quick": {"mib": 32, "repeat": 3},
    "smoke": {"mib": 4, "repeat": 1, "clip_chunks": True},
}


def measure(mib: int, repeat: int, clip_chunks: bool = False) -> dict:
    from dask_kaas.store import BufferStore

    rng = np.random.default_rng(0)
    data = rng.standard_normal(mib * 2**20 // 4).astype(np.float32)
    root = tempfile.mkdtemp(prefix="kaas-bench-")
    try:
        raw = os.path.join(root, "raw.bin")
        store = BufferStore(f"file://{root}/store")
        data.tofile(raw)
        store.put("w", data)

        got = store.get("w")
        if got.nbytes != data.nbytes or got[123] != data[123]:
            raise WrongResult("store_io: BufferStore.get returned other bytes than were put")
        results = {
            "bytes": data.nbytes,
            "read": interleaved(
                {
                    "numpy.fromfile": lambda: np.fromfile(raw, dtype=np.float32),
                    "BufferStore.get": lambda: store.get("w"),
                    "BufferStore.get_bytes": lambda: store.get_bytes("w"),
                },
                repeat=repeat,
            ),
            "write": interleaved(
                {
                    "ndarray.tofile": lambda: data.tofile(raw),
                    "BufferStore.put": lambda: store.put("w", data),
                },
                repeat=repeat,
            ),
        }
        results["read_ratio"] = (
            results["read"]["BufferStore.get"]["median"] / results["read"]["numpy.fromfile"]["median"]
        )
        results["write_ratio"] = (
            results["write"]["BufferStore.put"]["median"] / results["write"]["ndarray.tofile"]["median"]
        )
        results["layouts"] = layouts(root, data, repeat=max(2, repeat // 2), clip_chunks=clip_chunks)
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def layouts(root: str, data: np.ndarray, repeat: int, clip_chunks: bool = False) -> list[dict]:
    """Chunk size and compression alternatives, timed through zarr itself (``clip_chunks``: none larger than
    ``data``)."""
    import zarr
    from zarr.codecs import BloscCodec

    rows = []
    smooth = np.cumsum(np.full(data.size, 1e-3, np.float32)).astype(np.float32)  # compressible stand-in
    for label, chunk_mib, compressor in [
        ("16MiB, none", 16, None),
        ("64MiB, none", 64, None),
        ("256MiB, none", 256, None),
        ("64MiB, blosc-lz4", 64, BloscCodec(cname="lz4", clevel=5)),
        ("64MiB, blosc-zstd", 64, BloscCodec(cname="zstd", clevel=3)),
    ]:
        for name, arr in (("random", data), ("smooth", smooth)):
            if compressor is None and name == "smooth":
                continue  # uncompressed layouts do not depend on the values
            path = os.path.join(root, f"layout-{chunk_mib}-{len(rows)}")
            zstore = zarr.storage.LocalStore(path)
            chunks = (max(1, chunk_mib * 2**20 // 4),)
            if clip_chunks:
                chunks = (min(chunks[0], arr.size),)

            def write(zstore=zstore, arr=arr, chunks=chunks, compressor=compressor):
                z = zarr.create_array(
                    store=zstore,
                    shape=arr.shape,
                    dtype=arr.dtype,
                    chunks=chunks,
                    compressors=compressor,
                    filters=None,
                    overwrite=True,
                )
                z[...] = arr

            w = timeit(write, repeat=repeat)
            z = zarr.open_array(store=zstore, mode="r")
            r = timeit(lambda z=z: z[...], repeat=repeat)
            disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
            rows.append(
                {
                    "layout": label,
                    "data": name,
                    "write_s": w["median"],
                    "read_s": r["median"],
                    "disk_ratio": disk / arr.nbytes,
                }
            )
    return rows


def measure_suite(config, p: dict) -> dict:
    from dask_kaas.store import zarr_io

    results = measure(p["mib"], p["repeat"], p.get("clip_chunks", False))
    return {"parameters": p, **results, "chunk_bytes": zarr_io.CHUNK_BYTES}


def report(results: dict):
    yield f"read  {results['read_ratio']:.2f}x numpy.fromfile   (target <= 1.5x)"
    yield f"write {results['write_ratio']:.2f}x ndarray.tofile   (target <= 1.5x)"
    for row in results["layouts"]:
        yield (
            f"  {row['layout']:<18} {row['data']:<7} write {row['write_s']:.3f}s read {row['read_s']:.3f}s "
            f"disk {row['disk_ratio']:.2f}"
        )


SUITE = Suite(
    "store_io",
    __doc__,
    measure_suite,
    report,
    SIZES,
    host_only=True,
    per_device_files=False,
    options=(Option("--mib", int, "MiB of the const"), Option("--repeat", int, "timed runs of each")),
)


if __name__ == "__main__":  # python -m benchmarks.store_io ...: the same as python -m benchmarks store_io ...
    raise SystemExit(main(suite="store_io"))

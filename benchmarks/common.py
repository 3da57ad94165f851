"""What every benchmark records: the machine, versions, date; medians and spreads of repeated timings."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from importlib import metadata

RESULTS = os.path.join(os.path.dirname(__file__), "results")  # the default; KAAS_BENCH_RESULTS overrides it


def results_dir() -> str:
    """Where results go: ``$KAAS_BENCH_RESULTS`` when set (tests point it at a temporary directory), else RESULTS."""
    path = os.environ.get("KAAS_BENCH_RESULTS") or RESULTS
    os.makedirs(path, exist_ok=True)
    return path


def result_name(suite: str, device: str, quick: bool) -> str:
    """``<suite>-<device>[-quick]``: the file name (without extension) of a suite's JSON and plots."""
    return f"{suite}-{device}" + ("-quick" if quick else "")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` where a GPU answers, else ``host``; ``cuda`` without a GPU fails clearly."""
    from dask_kaas.device import gpu_count

    if device not in ("auto", "host", "cuda"):
        raise ValueError(f"--device must be auto, host or cuda, got {device!r}")
    if device == "host":
        return "host"
    gpus = gpu_count()
    if device == "cuda" and gpus == 0:
        raise RuntimeError("--device cuda, but no CUDA GPU answers here (is CuPy installed for this CUDA "
                           "version, and is a GPU visible?); use --device host or auto")
    return "cuda" if gpus else "host"


def machine() -> dict:
    versions = {}
    for pkg in ("dask-kaas", "dask", "distributed", "numpy", "zarr", "fsspec", "cupy-cuda13x", "rmm-cu13"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "versions": versions,
    }


def timeit(fn, *, repeat: int = 5, setup=None) -> dict:
    """Median, min and max seconds of ``fn()`` over ``repeat`` runs (``setup()`` before each, untimed)."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "runs": times}


def write_result(name: str, payload: dict) -> str:
    path = os.path.join(results_dir(), f"{name}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine(), **payload}, f, indent=2, default=str)
    return path


def interleaved(fns: dict, *, repeat: int = 5, gap: float = 0.0) -> dict:
    """Time several callables round-robin, so that baseline and candidate see the same machine state;
    ``gap`` seconds idle before each call (back-to-back Dask calls couple through the client's and
    the workers' batched-send intervals, which an isolated request does not see)."""
    runs = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            if gap:
                time.sleep(gap)
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t), "runs": t} for name, t in runs.items()}


class WrongResult(AssertionError):
    """A benchmark computed a wrong result: the run fails (exit status 1), whatever its speed."""


def spread(values) -> dict:
    """Median, min, max and the raw values of repeated measurements."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def save_plot(path: str, draw) -> str | None:
    """Call ``draw(plt)`` and save a PNG at ``path`` with matplotlib; None (and nothing written) without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig = draw(plt)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class local_kaas_cluster:
    """``with local_kaas_cluster(device) as (cluster, client):`` a LocalKaasCluster on a temporary file store.

    host: 2 host-device workers; cuda: one worker per GPU. The store directory is removed afterwards.
    """

    def __init__(self, device: str, *, n_workers: int | None = None, **kwargs):
        self.device, self.n_workers, self.kwargs = device, n_workers, kwargs

    def __enter__(self):
        import tempfile

        from distributed import Client

        from dask_kaas import LocalKaasCluster

        self._root = tempfile.mkdtemp(prefix="kaas-bench-store-")
        n = self.n_workers if self.n_workers is not None else (2 if self.device == "host" else None)
        self.cluster = LocalKaasCluster(n_workers=n, device=self.device, dashboard_address=":0",
                                        store=f"file://{self._root}", **self.kwargs)
        self.client = Client(self.cluster)
        return self.cluster, self.client

    def __exit__(self, *exc):
        import shutil

        try:
            self.client.close()
            self.cluster.close()
        finally:
            shutil.rmtree(self._root, ignore_errors=True)


def suite_main(doc: str, quick_help: str, run, print_table, argv=None) -> int:
    """The stand-alone command of a suite: ``--quick``, ``--device``; exit 1 on a wrong result, 2 on an error."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--device", default="auto", choices=("auto", "host", "cuda"))
    args = parser.parse_args(argv)
    try:
        payload = run(args.device, args.quick)
    except WrongResult as e:
        print(f"WRONG RESULT: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(payload)
    print(f"written: {payload['path']}" + (f" and {payload['plot']}" if payload["plot"] else " (no plot)"))
    return 0

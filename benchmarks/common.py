"""What every benchmark records: the machine, versions, date; medians and spreads of repeated timings."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from importlib import metadata

RESULTS = os.path.join(os.path.dirname(__file__), "results")


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
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine(), **payload}, f, indent=2, default=str)
    return path


def interleaved(fns: dict, *, repeat: int = 5) -> dict:
    """Time several callables round-robin, so that baseline and candidate see the same machine state."""
    runs = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
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

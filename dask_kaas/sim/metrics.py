"""The figures of a simulated run: goodput, latency percentiles, SLO attainment, bytes loaded,
GPU-seconds, hit rate, Jain's fairness; and Belady's hit rate over the same placement."""

from __future__ import annotations

import numpy as np

from .belady import belady_hits
from .engine import SimResult


def jain(values) -> float:
    """Jain's fairness index of ``values``: 1 when all are equal, 1/n when one has everything."""
    x = np.asarray([v for v in values if np.isfinite(v)], dtype=float)
    if not len(x) or not x.any():
        return float("nan")
    return float(x.sum() ** 2 / (len(x) * (x**2).sum()))


def summarize(result: SimResult, *, belady: bool = False) -> dict:
    """The figures of one run (latencies in ms).

    An open-loop trace is judged over its own window (its arrivals' span, ``window_s``): goodput is the
    calls that finished within their SLO *and* within the window, per second of the window, and SLO
    attainment counts a call finished after the window as missed; a backlog left to drain after the
    trace cannot raise either (the run's whole span, ``simulated_s``, is reported beside). A closed loop
    is judged over its run."""
    wl = result.workload
    lat = result.latency
    ok = np.isfinite(lat)
    n = len(lat)
    span = max(result.end, 1e-9)
    window = max(wl.duration, 1e-9) if wl.window is None and n else span
    slo = np.array([f.slo_seconds if f.slo_seconds is not None else np.inf for f in wl.functions])[wl.calls]
    finished = np.where(ok, result.submitted + np.where(ok, lat, 0.0), np.inf)
    met = ok & (lat <= slo) & (finished <= window * (1 + 1e-9))
    done = lat[ok]
    tenants = np.array([f.tenant for f in wl.functions])[wl.calls]
    p50_by_tenant = _median_by(tenants[ok], done)
    accesses = result.hits + result.misses
    out = {
        "requests": n,
        "completed": int(ok.sum()),
        "rejected": int(result.rejected.sum()),
        "failed": int(result.failed.sum()),
        "simulated_s": span,
        "window_s": window,
        "throughput_rps": float(ok.sum() / span),
        "goodput_rps": float(met.sum() / window),
        "p50_ms": float(np.percentile(done, 50) * 1e3) if len(done) else None,
        "p99_ms": float(np.percentile(done, 99) * 1e3) if len(done) else None,
        "slo_attainment": float(met.sum() / n) if n else None,
        "bytes_loaded": int(result.bytes_loaded),
        "load_seconds": float(result.load_seconds),
        "gpu_seconds": float(result.gpu_seconds),
        "hit_rate": float(result.hits / accesses) if accesses else None,
        "jain_fairness": jain(1.0 / v for v in p50_by_tenant.values() if v > 0),
        "requests_per_worker": sorted(result.requests_per_worker, reverse=True)[:16],
        "max_workers_per_tenant": _max_spread(tenants, result.worker_of),
    }
    if belady and result.accesses is not None:
        hits = sum(belady_hits(acc, result.capacity) for acc in result.accesses.values())
        out["belady_hit_rate"] = float(hits / accesses) if accesses else None
    return out


def _median_by(keys: np.ndarray, values: np.ndarray) -> dict:
    if not len(keys):
        return {}
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    cuts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    return {k[0]: float(np.median(v)) for k, v in zip(np.split(keys, cuts), np.split(values, cuts))}


def _max_spread(tenants: np.ndarray, worker_of: np.ndarray) -> int:
    ran = worker_of >= 0
    if not ran.any():
        return 0
    pairs = np.unique(np.stack([np.unique(tenants, return_inverse=True)[1][ran], worker_of[ran]]), axis=1)
    return int(np.bincount(pairs[0]).max())

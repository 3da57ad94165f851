"""The multi-tenant trace of the placement and contention suites, and running it.

Each tenant owns one const matrix ``w`` (k x n float32) under key ``"w"`` in its own store namespace;
a request is ``y = x @ w`` (one builtin ``sgemm``) with a small batch ``x`` passed in the call, so the
time to load a const from the store matters. Tenants are drawn i.i.d. from a Zipf-like law
``p(rank r) ~ 1 / r**s`` with the ranks shuffled over tenants, seeded. A trace runs with at most
``window`` requests in flight, every result checked against NumPy (``WrongResult`` otherwise); the
cache counters are deltas of ``worker_stats`` around it.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.common import WrongResult

F32 = 4
COUNTERS = ("hits", "compulsory_misses", "capacity_misses", "bytes_from_store", "requests")


def matmul_request(k: int, n: int, batch: int, tenant: str):
    """y (batch x n) = x (batch x k) @ w (k x n), w the tenant's const under key "w"."""
    from dask_kaas import BufferSpec, KernelSpec, Literal, Request

    x = BufferSpec("x", batch * k * F32, dtype="float32", shape=(batch, k), ephemeral=True)
    w = BufferSpec("w", k * n * F32, key="w", const=True)
    y = BufferSpec("y", batch * n * F32, dtype="float32", shape=(batch, n), ephemeral=True)
    grid = (max(1, min(65535, -(-n // 16))), max(1, -(-batch // 16)))
    kernel = KernelSpec(
        "builtin",
        "sgemm",
        grid,
        (16, 16),
        literals=[Literal("i", batch), Literal("i", n), Literal("i", k)],
        arguments=[(x, "i"), (w, "i"), (y, "o")],
    )
    return Request([kernel], tenant=tenant)


def device_capacity(per_worker: int, const_bytes: int, k: int, n: int, batch: int) -> int:
    """Bytes of a worker's device: ``per_worker`` consts plus room for one request's call buffers."""
    call_bytes = 2 * batch * max(k, n) * F32
    return per_worker * const_bytes + max(2**20, 4 * call_bytes)


def device_memory(capacity: int, device: str) -> int:
    """The ``device_memory`` a worker needs for a cache of ``capacity`` bytes: on cuda that is the pool,
    of which the cache holds ``kaas.cuda.cache-capacity`` (a share), so the pool is larger."""
    from dask_kaas import config

    setting = str(config.get("cuda.cache-capacity")).strip()
    if device != "cuda" or not setting.endswith("%"):
        return capacity
    pool = math.ceil(capacity * 100 / float(setting[:-1]))
    return -(-pool // 256) * 256


def make_trace(n_requests: int, n_tenants: int, zipf: float, seed: int) -> tuple[list[int], list[float]]:
    """``(tenant index per request, popularity per tenant)``: i.i.d. draws, ``p(rank r) ~ 1/r**zipf``."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_tenants + 1) ** zipf
    weights = weights[rng.permutation(n_tenants)]
    p = weights / weights.sum()
    return [int(t) for t in rng.choice(n_tenants, size=n_requests, p=p)], [float(v) for v in p]


def seed_tenants(store, rng, n_tenants: int, trace, k: int, n: int, batch: int):
    """Each tenant's const ``w`` (k x n) in its namespace, and one job per trace entry:
    ``(tenant, request, x, expected y)``. Returns ``(names, weights, jobs)``."""
    names = [f"tenant-{t:02d}" for t in range(n_tenants)]
    weights, requests = [], []
    for name in names:
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        store.put("w", w, namespace=name)
        weights.append(w)
        requests.append(matmul_request(k, n, batch, name))
    jobs = []
    for t in trace:
        x = rng.standard_normal((batch, k)).astype(np.float32)
        jobs.append((names[t], requests[t], x, (x.astype(np.float64) @ weights[t]).astype(np.float32)))
    return names, weights, jobs


def _forget_caches(dask_scheduler) -> None:
    """Empty the scheduler's picture of the workers' caches, to match ``set_policy(clear_caches=True)``.

    Clearing the caches does not make workers report, so without this the scheduler would go on
    believing the previous run's consts resident until each worker's next report.
    """
    dask_scheduler.plugins["kaas"].core.cluster.forget_caches()


def _forget_model(dask_scheduler) -> None:
    from dask_kaas.scheduling.model import RuntimeModel

    core = dask_scheduler.plugins["kaas"].core
    core.model = RuntimeModel(core.model.default_bandwidth)


def forget_model(client) -> None:
    """The scheduler forgets what it learned of runtimes and load bandwidth (a fresh ``RuntimeModel``), as
    a simulation starts: runs measured one after another start alike, not from what the run before
    (or a calibration's tiny loads) taught it."""
    client.run_on_scheduler(_forget_model)


def reset(client, policy: str) -> None:
    """Switch the scheduler to ``policy`` with every cache emptied, and the scheduler's picture of them.
    ``policy`` may name additions as the simulator's configurations do: ``affinity+replication``,
    ``affinity+replication+queue-aware`` (replication and eviction are off and LRU otherwise)."""
    from dask_kaas import set_policy

    base, *extras = policy.split("+")
    set_policy(
        client,
        base,
        clear_caches=True,
        replication="replication" in extras,
        eviction="queue-aware" if "queue-aware" in extras else "lru",
    )
    client.run_on_scheduler(_forget_caches)


def counters(client) -> dict:
    """``{worker: {counter: value}}`` of the cache counters (COUNTERS) from ``worker_stats``."""
    from dask_kaas import worker_stats

    return {addr: {k: s.get(k, 0) for k in COUNTERS} for addr, s in worker_stats(client).items()}


def lookups(delta: dict) -> int:
    """Const lookups in a counter delta: hits and both kinds of misses."""
    return delta["hits"] + delta["compulsory_misses"] + delta["capacity_misses"]


def hit_rate(delta: dict, default=0.0):
    """Hits over lookups in a counter delta (``default`` when there were none)."""
    n = lookups(delta)
    return delta["hits"] / n if n else default


def counter_delta(before: dict, after: dict) -> tuple[dict, list[int]]:
    """The counters summed over workers, ``after - before``; and requests per worker, most first."""
    delta = {k: sum(after[a][k] - before.get(a, {}).get(k, 0) for a in after) for k in COUNTERS}
    per_worker = sorted((after[a]["requests"] - before.get(a, {}).get("requests", 0) for a in after), reverse=True)
    return delta, per_worker


def run_jobs(client, jobs, submit, *, window: int, label: str, output=None) -> tuple[float, list[float]]:
    """Submit job ``i`` of ``jobs`` [(tenant, request, x, expected)] with ``submit(i)``, at most ``window`` in
    flight; check each result's ``output(result)`` (default ``result["y"]``) against the expected y.
    Returns ``(elapsed seconds, latency per job)``; ``WrongResult`` on any wrong or failed result."""
    from dask_kaas.demo import run_windowed

    output = output or (lambda result: result["y"])
    latencies = [0.0] * len(jobs)
    wrong, failed = [], []

    def done(i, future, latency):
        latencies[i] = latency
        try:
            got = output(future.result())
            if got.shape != jobs[i][3].shape or not np.allclose(got, jobs[i][3], rtol=1e-3, atol=1e-3):
                wrong.append(i)
        except Exception as e:  # reported, and fails the run below
            failed.append((i, repr(e)))

    elapsed = run_windowed(client, len(jobs), submit, done, window=window)
    if wrong or failed:
        raise WrongResult(
            f"{label}: {len(wrong)} wrong and {len(failed)} failed results of {len(jobs)} "
            f"(first: {wrong[:3]} {failed[:3]})"
        )
    return elapsed, latencies


def latency_figures(elapsed: float, latencies: list[float]) -> dict:
    """Elapsed seconds, requests per second, and the p50 and p99 latency in ms of one trace."""
    lat = np.array(latencies) * 1e3
    return {
        "elapsed_s": elapsed,
        "throughput_rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }

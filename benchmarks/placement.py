"""Multi-tenant placement: bytes loaded, cache hit rate, throughput and latency per scheduling policy.

Four host-device workers of ``CAP`` bytes each; ``--tenants`` tenants (default
12), each with one const matrix ``w`` of ``--const-mib`` MiB (default 4) in its
own store namespace. CAP holds ``--per-worker`` consts (default 4) plus room for
one request's call buffers, so the tenants' consts together exceed one
worker's capacity but fit the cluster (12 x 4 MiB = 48 MiB < 4 x 4 consts).

Request: ``y = x @ w`` (one ``sgemm``, ``x`` a small batch passed in the call,
``w`` the tenant's const), so the time to load a const from the store matters.
Trace: ``--requests`` requests (default 600, ``--quick`` 150), tenants drawn
i.i.d. from a Zipf-like law ``p(rank r) ~ 1 / r**s`` (``--zipf`` s, default
0.8; 0 is uniform) with the ranks shuffled over tenants, seeded. Submitted with
at most ``--window`` requests in flight (default 8), every result checked
against NumPy (a wrong or failed result fails the run).

Policies ``affinity``, ``balance``, ``static`` run the same trace on one
cluster, switched with ``set_policy(..., clear_caches=True)`` (and the scheduler's picture of
the caches emptied to match: clearing does not make workers report), interleaved,
``--repeat`` times (default 5, ``--quick`` 1); counters are deltas of
``worker_stats`` around each run. Offline optimum: Belady (evict the entry
used furthest in the future; exact here, since all consts have one size) on
(a) the global trace with the whole cluster's capacity (the headline: it is
what any placement plus eviction could reach), and (b) each worker's own
sub-trace under ``affinity``'s actual placement (what eviction alone could
reach given that placement).

Scheduler cost: (1) inside the scheduler, the KaaS plugin's hooks
(``update_graph``, ``transition``, the fair dispatch, the ``get_comm_cost`` extension minus
Dask's own part, ``handle_report``) timed with ``perf_counter_ns`` wrappers
(wrapper cost calibrated and subtracted) during one ``affinity`` run, divided by
the number of KaaS tasks; (2) end to end, wall time of the trace under
``balance`` with the hooks enabled vs disabled (``update_graph`` reduced to the
GPU restriction, ``transition`` and ``handle_report`` no-ops, Dask's own
``get_comm_cost`` restored), interleaved.

    python -m benchmarks.placement [--quick]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks import schedcost
from benchmarks.common import results_dir, write_result
from dask_kaas import (BufferSpec, KernelSpec, Literal, LocalKaasCluster, Request, cluster_state, set_policy,
                       worker_stats)
from dask_kaas.demo import run_windowed
from dask_kaas.store import BufferStore

F32 = 4
POLICIES = ("affinity", "balance", "static")
COUNTERS = ("hits", "compulsory_misses", "capacity_misses", "bytes_from_store", "requests")


# ------------------------------------------------------------------ workload
def matmul_request(k: int, n: int, batch: int, tenant: str) -> Request:
    """y (batch x n) = x (batch x k) @ w (k x n), w the tenant's const under key "w"."""
    x = BufferSpec("x", batch * k * F32, dtype="float32", shape=(batch, k), ephemeral=True)
    w = BufferSpec("w", k * n * F32, key="w", const=True)
    y = BufferSpec("y", batch * n * F32, dtype="float32", shape=(batch, n), ephemeral=True)
    grid = (max(1, min(65535, -(-n // 16))), max(1, -(-batch // 16)))
    kernel = KernelSpec("builtin", "sgemm", grid, (16, 16),
                        literals=[Literal("i", batch), Literal("i", n), Literal("i", k)],
                        arguments=[(x, "i"), (w, "i"), (y, "o")])
    return Request([kernel], tenant=tenant)


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


def make_trace(n_requests: int, n_tenants: int, zipf: float, seed: int) -> tuple[list[int], list[float]]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_tenants + 1) ** zipf
    weights = weights[rng.permutation(n_tenants)]
    p = weights / weights.sum()
    return [int(t) for t in rng.choice(n_tenants, size=n_requests, p=p)], [float(v) for v in p]


# ------------------------------------------------------------------- belady
def belady_hits(trace: list, capacity: int) -> int:
    """Hits of an optimal offline cache of ``capacity`` equal-size entries over ``trace``."""
    never = len(trace)
    next_use = [never] * len(trace)
    last: dict = {}
    for i in range(len(trace) - 1, -1, -1):
        next_use[i] = last.get(trace[i], never)
        last[trace[i]] = i
    cache: dict = {}  # item -> its next use
    hits = 0
    for i, item in enumerate(trace):
        if item in cache:
            hits += 1
        elif len(cache) >= capacity:
            del cache[max(cache, key=cache.__getitem__)]
        cache[item] = next_use[i]
    return hits


def _forget_caches(dask_scheduler) -> None:
    """Empty the scheduler's picture of the workers' caches, to match ``set_policy(clear_caches=True)``.

    Clearing the caches does not make workers report, so without this the scheduler would go on
    believing the previous run's consts resident until each worker's next report.
    """
    dask_scheduler.plugins["kaas"].core.cluster.forget_caches()


def reset(client, policy: str) -> None:
    set_policy(client, policy, clear_caches=True)
    client.run_on_scheduler(_forget_caches)


def _disable_hooks(dask_scheduler) -> None:
    """The plugin reduced to what a KaaS task needs to run at all: the GPU restriction."""
    from dask_kaas.scheduler_ext.plugin import RESOURCE, request_of

    plugin = dask_scheduler.plugins["kaas"]

    def update_graph(scheduler, *, tasks, **kwargs):
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is not None and request_of(ts.run_spec) is not None:
                ts.resource_restrictions = {**(ts.resource_restrictions or {}), RESOURCE: 1}

    plugin.update_graph = update_graph
    plugin.transition = lambda *args, **kwargs: None
    dask_scheduler.stream_handlers["kaas-report"] = lambda worker, **report: None
    dask_scheduler.get_comm_cost = plugin._base_comm_cost


def _enable_hooks(dask_scheduler) -> None:
    plugin = dask_scheduler.plugins["kaas"]
    for attr in ("update_graph", "transition"):
        vars(plugin).pop(attr, None)
    dask_scheduler.stream_handlers["kaas-report"] = plugin.handle_report
    dask_scheduler.get_comm_cost = plugin.get_comm_cost
    plugin.tasks.clear()  # tasks the disabled hooks never saw are gone anyway


# ---------------------------------------------------------------------- runs
def _totals(stats: dict) -> dict:
    return {addr: {k: s.get(k, 0) for k in COUNTERS} for addr, s in stats.items()}


def run_trace(client, jobs, *, window: int, record_workers: bool = False) -> dict:
    """Submit ``jobs`` (tenant, request, x, expected) with at most ``window`` in flight; check every result."""
    before = _totals(worker_stats(client))
    latencies = [0.0] * len(jobs)
    keep, wrong, failed = [], [], []

    def submit(i):
        future = client.submit(jobs[i][1], pure=False, x=jobs[i][2])
        if record_workers:
            keep.append(future)
        return future

    def done(i, future, latency):
        latencies[i] = latency
        try:
            got = future.result()["y"]
            if not np.allclose(got, jobs[i][3], rtol=1e-3, atol=1e-3):
                wrong.append(i)
        except Exception as e:  # reported, and fails the run below
            failed.append((i, repr(e)))

    elapsed = run_windowed(client, len(jobs), submit, done, window=window)
    if wrong or failed:
        raise RuntimeError(f"{len(wrong)} wrong and {len(failed)} failed results (first: {wrong[:3]} {failed[:3]})")
    workers = None
    if record_workers:
        who = client.who_has(keep)
        workers = [sorted(who[f.key])[0] if who.get(f.key) else None for f in keep]
        del keep
    after = _totals(worker_stats(client))
    delta = {k: sum(after[a][k] - before.get(a, {}).get(k, 0) for a in after) for k in COUNTERS}
    per_worker_requests = {a: after[a]["requests"] - before.get(a, {}).get("requests", 0) for a in after}
    lookups = delta["hits"] + delta["compulsory_misses"] + delta["capacity_misses"]
    lat = np.array(latencies) * 1e3
    return {
        "elapsed_s": elapsed,
        "throughput_rps": len(jobs) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "bytes_from_store": int(delta["bytes_from_store"]),
        "hits": int(delta["hits"]),
        "compulsory_misses": int(delta["compulsory_misses"]),
        "capacity_misses": int(delta["capacity_misses"]),
        "hit_rate": delta["hits"] / lookups if lookups else 0.0,
        "requests_per_worker": sorted(per_worker_requests.values(), reverse=True),
        "workers": workers,
    }


def _tenant_spread(tenants: list[int], workers: list[str]) -> dict:
    by_tenant: dict[int, set] = {}
    for t, w in zip(tenants, workers):
        by_tenant.setdefault(t, set()).add(w)
    counts = [len(s) for s in by_tenant.values()]
    names = {w: i for i, w in enumerate(sorted(set(workers)))}
    table: dict[str, list[int]] = {}
    for t, w in zip(tenants, workers):
        table.setdefault(f"tenant-{t:02d}", [0] * len(names))[names[w]] += 1
    return {"mean_workers_per_tenant": float(np.mean(counts)), "max_workers_per_tenant": max(counts),
            "requests_by_tenant_and_worker": dict(sorted(table.items()))}


def _median(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# ---------------------------------------------------------------------- main
def measure(args) -> dict:
    n_workers = 4
    const_bytes = args.const_mib * 2**20
    k = 1024
    n = const_bytes // (k * F32)
    batch = 8
    call_bytes = 2 * batch * max(k, n) * F32
    cap = args.per_worker * const_bytes + max(2**20, 4 * call_bytes)  # room for one request's x and y
    trace, popularity = make_trace(args.requests, args.tenants, args.zipf, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    root = tempfile.mkdtemp(prefix="kaas-placement-")
    try:
        store = BufferStore(f"file://{root}/store")
        names, weights, jobs = seed_tenants(store, rng, args.tenants, trace, k, n, batch)

        from distributed import Client

        with LocalKaasCluster(n_workers=n_workers, device="host", device_memory=cap, store=store,
                              dashboard_address=":0") as cluster, Client(cluster) as client:
            # warm up: kernel modules, worker imports, the scheduler's runtime model (not counted)
            reset(client, "balance")
            run_trace(client, jobs[: min(40, len(jobs))], window=args.window)

            runs = {p: [] for p in POLICIES}
            for rep in range(args.repeat):
                for policy in POLICIES:
                    reset(client, policy)
                    result = run_trace(client, jobs, window=args.window, record_workers=True)
                    workers = result.pop("workers")
                    result["placement"] = _tenant_spread(trace, workers)
                    if policy == "affinity":  # Belady per worker, on this run's own placement
                        hits = sum(belady_hits([t for t, ww in zip(trace, workers) if ww == w], args.per_worker)
                                   for w in set(workers))
                        result["belady_per_worker_hit_rate"] = hits / len(trace)
                    runs[policy].append(result)
                    print(f"  {policy:<9} run {rep + 1}: {result['throughput_rps']:.0f} req/s, "
                          f"hit rate {result['hit_rate']:.1%}, loaded {result['bytes_from_store'] / 2**20:.0f} MiB, "
                          f"{result['placement']['mean_workers_per_tenant']:.2f} workers/tenant", flush=True)

            # Belady on the same trace
            global_hits = belady_hits(trace, n_workers * args.per_worker)
            belady = {
                "global": {"hits": global_hits, "hit_rate": global_hits / len(trace),
                           "capacity_entries": n_workers * args.per_worker},
                "per_worker_affinity_placement": {
                    "hit_rate": statistics.median(r["belady_per_worker_hit_rate"] for r in runs["affinity"]),
                    "runs": [r["belady_per_worker_hit_rate"] for r in runs["affinity"]],
                    "capacity_entries_per_worker": args.per_worker,
                    "note": "median over the affinity runs, each on its own placement (who_has)"},
                "headline": "global",
            }

            # scheduler cost (1): the plugin's hooks timed inside the scheduler, one affinity run
            reset(client, "affinity")
            client.run_on_scheduler(schedcost.install)
            try:
                client.run_on_scheduler(schedcost.reset)
                run_trace(client, jobs, window=args.window)
                timers = client.run_on_scheduler(schedcost.read)
                model = cluster_state(client)["model"]
            finally:
                client.run_on_scheduler(schedcost.remove)
            overhead = schedcost.scheduler_cost(timers, len(jobs))
            overhead["scheduler_model_after_affinity_run"] = model

            # scheduler cost (2): end to end with the hooks enabled vs disabled, same trace, balance, interleaved
            e2e = {"enabled": [], "disabled": []}
            for _ in range(args.repeat):
                for mode in ("enabled", "disabled"):
                    reset(client, "balance")
                    if mode == "disabled":
                        client.run_on_scheduler(_disable_hooks)
                    try:
                        e2e[mode].append(run_trace(client, jobs, window=args.window)["elapsed_s"])
                    finally:
                        if mode == "disabled":
                            client.run_on_scheduler(_enable_hooks)
            med_on, med_off = statistics.median(e2e["enabled"]), statistics.median(e2e["disabled"])
            overhead["end_to_end"] = {
                "method": ("wall time of the trace under policy balance, hooks enabled vs disabled (update_graph "
                           "reduced to adding the GPU restriction; transition and handle_report no-ops; Dask's "
                           "own get_comm_cost restored); interleaved"),
                "enabled_s": e2e["enabled"], "disabled_s": e2e["disabled"],
                "enabled_median_s": med_on, "disabled_median_s": med_off,
                "us_per_task": (med_on - med_off) / len(jobs) * 1e6,
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)

    summary = {p: {key: _median(rs, key) for key in ("bytes_from_store", "hit_rate", "throughput_rps",
                                                     "p50_ms", "p99_ms")}
               for p, rs in runs.items()}
    aff, bal = summary["affinity"], summary["balance"]
    ratios = {
        "balance_over_affinity_bytes": (bal["bytes_from_store"]["median"] / aff["bytes_from_store"]["median"]
                                        if aff["bytes_from_store"]["median"] else float("inf")),
        "affinity_hit_rate_gap_to_belady_global_points": 100 * (belady["global"]["hit_rate"] - aff["hit_rate"]["median"]),
        "affinity_hit_rate_gap_to_belady_per_worker_points":
            100 * (belady["per_worker_affinity_placement"]["hit_rate"] - aff["hit_rate"]["median"]),
    }
    targets = {
        "bytes_3x_fewer_than_balance": ratios["balance_over_affinity_bytes"] >= 3.0,
        "hit_rate_within_5_points_of_belady_global": ratios["affinity_hit_rate_gap_to_belady_global_points"] <= 5.0,
    }
    return {
        "parameters": {
            "workers": n_workers, "device": "host", "capacity_bytes": cap, "const_bytes": const_bytes,
            "consts_per_worker": args.per_worker, "tenants": args.tenants, "requests": args.requests,
            "window": args.window, "repeat": args.repeat, "zipf_s": args.zipf, "seed": args.seed,
            "request": f"y({batch}x{n}) = x({batch}x{k}) @ w({k}x{n}) float32, one builtin sgemm",
            "trace": "tenants i.i.d. with p(rank r) ~ 1/r**s, ranks shuffled over tenants",
            "tenant_popularity": popularity,
            "store": "file:// BufferStore in a temp dir",
        },
        "runs": runs,
        "summary": summary,
        "belady": belady,
        "ratios": ratios,
        "targets": targets,
        "scheduler_overhead": overhead,
    }


def _source() -> dict:
    """Which dask_kaas was measured: its path, and the git commit and local changes where it is a checkout."""
    import subprocess

    import dask_kaas

    where = os.path.dirname(os.path.dirname(os.path.abspath(dask_kaas.__file__)))
    out = {"dask_kaas": where}
    try:
        git = ["git", "-C", where]
        out["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                       check=True).stdout.strip()
        out["uncommitted"] = subprocess.run([*git, "status", "--porcelain", "dask_kaas"], capture_output=True,
                                            text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def plot(results: dict, path: str) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    summary = results["summary"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    xs = np.arange(len(POLICIES))
    for ax, key, scale, label in ((ax1, "bytes_from_store", 2**-20, "MiB loaded from the store"),
                                  (ax2, "hit_rate", 100, "cache hit rate (%)")):
        med = np.array([summary[p][key]["median"] for p in POLICIES]) * scale
        lo = med - np.array([summary[p][key]["min"] for p in POLICIES]) * scale
        hi = np.array([summary[p][key]["max"] for p in POLICIES]) * scale - med
        ax.bar(xs, med, yerr=[lo, hi], capsize=4, color=["tab:green", "tab:gray", "tab:blue"])
        ax.set_xticks(xs, POLICIES)
        ax.set_ylabel(label)
    for name, style in (("global", "--"), ("per_worker_affinity_placement", ":")):
        ax2.axhline(100 * results["belady"][name]["hit_rate"], color="k", linestyle=style,
                    label=f"Belady ({name.split('_')[0].replace('per', 'per worker')})")
    ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{results['parameters']['tenants']} tenants, {results['parameters']['requests']} requests, "
                 "4 host workers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=12)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--const-mib", type=int, default=4)
    parser.add_argument("--per-worker", type=int, default=4, help="consts that fit one worker")
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--zipf", type=float, default=0.8, help="Zipf exponent of tenant popularity (0: uniform)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="150 requests, 1 repeat")
    parser.add_argument("--note", default=None, help="free text stored in the result (e.g. the commit measured)")
    parser.add_argument("--name", default=None, help="result file name (default placement, placement_quick)")
    args = parser.parse_args(argv)
    if not 8 <= args.tenants <= 16:
        parser.error("--tenants must be 8-16")
    if args.quick:
        args.requests, args.repeat = 150, 1
    name = args.name or ("placement_quick" if args.quick else "placement")
    started = time.perf_counter()
    results = measure(args)
    results["wall_s"] = time.perf_counter() - started
    results["source"] = _source()
    if args.note:
        results["note"] = args.note
    png = os.path.join(results_dir(), f"{name}.png")
    results["plot"] = plot(results, png) and os.path.basename(png)
    if results["plot"] is None:
        results["plot_note"] = "matplotlib is not installed: no plot"
    path = write_result(name, {"suite": "placement", **results})

    summary, belady = results["summary"], results["belady"]
    print(f"\n{'policy':<9} {'loaded MiB':>11} {'hit rate':>9} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for p in POLICIES:
        s = summary[p]
        print(f"{p:<9} {s['bytes_from_store']['median'] / 2**20:>11.0f} {s['hit_rate']['median']:>9.1%} "
              f"{s['throughput_rps']['median']:>7.0f} {s['p50_ms']['median']:>7.1f} {s['p99_ms']['median']:>7.1f}")
    print(f"Belady global (headline) {belady['global']['hit_rate']:.1%}, per worker under affinity's placement "
          f"{belady['per_worker_affinity_placement']['hit_rate']:.1%}")
    r, t = results["ratios"], results["targets"]
    print(f"balance / affinity bytes {r['balance_over_affinity_bytes']:.2f}x (target >= 3x: "
          f"{'met' if t['bytes_3x_fewer_than_balance'] else 'MISSED'}); affinity hit rate "
          f"{r['affinity_hit_rate_gap_to_belady_global_points']:.1f} points below Belady global (target <= 5: "
          f"{'met' if t['hit_rate_within_5_points_of_belady_global'] else 'MISSED'})")
    o = results["scheduler_overhead"]
    print(f"scheduler plugin: {o['plugin_cpu_us_per_task']:.1f} us/task CPU ({o['plugin_wall_us_per_task']:.1f} wall) "
          f"in its hooks; end to end "
          f"{o['end_to_end']['us_per_task']:.0f} us/task (enabled {o['end_to_end']['enabled_median_s']:.2f}s vs "
          f"disabled {o['end_to_end']['disabled_median_s']:.2f}s)")
    print(f"written: {path}" + (f" and {results['plot']}" if results["plot"] else " (no plot: matplotlib missing)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

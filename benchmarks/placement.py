"""Multi-tenant placement: bytes loaded, cache hit rate, throughput and latency per scheduling policy.

Four host-device workers (``--smoke``: two) of ``CAP`` bytes each; ``--tenants`` tenants (default
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

    python -m benchmarks placement [--quick] [--tenants 12] [--requests 600] ...
"""

from __future__ import annotations

import shutil
import statistics
import tempfile

import numpy as np

from benchmarks import schedcost
from benchmarks.common import Option, Suite, bars, main, met, spread
from benchmarks.tenants import (
    counter_delta,
    counters,
    device_capacity,
    hit_rate,
    latency_figures,
    make_trace,
    reset,
    run_jobs,
    seed_tenants,
)

F32 = 4
K, BATCH = 1024, 8
POLICIES = ("affinity", "balance", "static", "affinity+replication", "affinity+replication+queue-aware")
FULL = {
    "workers": 4,
    "tenants": 12,
    "requests": 600,
    "const_mib": 4,
    "per_worker": 4,
    "window": 8,
    "repeat": 5,
    "zipf": 0.8,
    "seed": 0,
}
SIZES = {
    "full": FULL,
    "quick": {**FULL, "requests": 150, "repeat": 1},
    "smoke": {**FULL, "workers": 2, "tenants": 8, "requests": 16, "const_mib": 1, "repeat": 1},
}


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


# ------------------------------------------------------------ scheduler hooks
def _disable_hooks(dask_scheduler) -> None:
    """The plugin reduced to what a KaaS task needs to run at all: the GPU restriction."""
    from dask_kaas.plugins.scheduler import RESOURCE, request_of_task

    plugin = dask_scheduler.plugins["kaas"]

    def update_graph(scheduler, *, tasks, **kwargs):
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is not None and request_of_task(ts)[0] is not None:
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
def run_trace(client, jobs, *, window: int, record_workers: bool = False) -> dict:
    """Submit ``jobs`` (tenant, request, x, expected) with at most ``window`` in flight; check every result."""
    before = counters(client)
    keep = []

    def submit(i):
        future = client.submit(jobs[i][1], pure=False, x=jobs[i][2])
        if record_workers:
            keep.append(future)
        return future

    elapsed, latencies = run_jobs(client, jobs, submit, window=window, label="placement")
    workers = None
    if record_workers:
        who = client.who_has(keep)
        workers = [sorted(who[f.key])[0] if who.get(f.key) else None for f in keep]
        del keep
    delta, per_worker = counter_delta(before, counters(client))
    return {
        **latency_figures(elapsed, latencies),
        "bytes_from_store": int(delta["bytes_from_store"]),
        "hits": int(delta["hits"]),
        "compulsory_misses": int(delta["compulsory_misses"]),
        "capacity_misses": int(delta["capacity_misses"]),
        "hit_rate": hit_rate(delta),
        "requests_per_worker": per_worker,
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
    return {
        "mean_workers_per_tenant": float(np.mean(counts)),
        "max_workers_per_tenant": max(counts),
        "requests_by_tenant_and_worker": dict(sorted(table.items())),
    }


# ---------------------------------------------------------------- experiment
def measure(config, p: dict) -> dict:
    from distributed import Client

    from dask_kaas import LocalKaasCluster, cluster_state
    from dask_kaas.store import BufferStore

    log = config.log
    const_bytes = p["const_mib"] * 2**20
    n = const_bytes // (K * F32)
    cap = device_capacity(p["per_worker"], const_bytes, K, n, BATCH)
    trace, popularity = make_trace(p["requests"], p["tenants"], p["zipf"], p["seed"])
    rng = np.random.default_rng(p["seed"] + 1)
    root = tempfile.mkdtemp(prefix="kaas-placement-")
    try:
        store = BufferStore(f"file://{root}/store")
        _, _, jobs = seed_tenants(store, rng, p["tenants"], trace, K, n, BATCH)

        with (
            LocalKaasCluster(
                n_workers=p["workers"], device="host", device_memory=cap, store=store, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            # warm up: kernel modules, worker imports, the scheduler's runtime model (not counted)
            reset(client, "balance")
            run_trace(client, jobs[: min(40, len(jobs))], window=p["window"])

            runs = {policy: [] for policy in POLICIES}
            for rep in range(p["repeat"]):
                for policy in POLICIES:
                    reset(client, policy)
                    result = run_trace(client, jobs, window=p["window"], record_workers=True)
                    workers = result.pop("workers")
                    result["placement"] = _tenant_spread(trace, workers)
                    if policy == "affinity":  # Belady per worker, on this run's own placement
                        hits = sum(
                            belady_hits([t for t, ww in zip(trace, workers) if ww == w], p["per_worker"])
                            for w in set(workers)
                        )
                        result["belady_per_worker_hit_rate"] = hits / len(trace)
                    runs[policy].append(result)
                    log(
                        f"  {policy:<9} run {rep + 1}: {result['throughput_rps']:.0f} req/s, "
                        f"hit rate {result['hit_rate']:.1%}, loaded {result['bytes_from_store'] / 2**20:.0f} MiB, "
                        f"{result['placement']['mean_workers_per_tenant']:.2f} workers/tenant",
                        flush=True,
                    )

            # Belady on the same trace
            global_hits = belady_hits(trace, p["workers"] * p["per_worker"])
            belady = {
                "global": {
                    "hits": global_hits,
                    "hit_rate": global_hits / len(trace),
                    "capacity_entries": p["workers"] * p["per_worker"],
                },
                "per_worker_affinity_placement": {
                    "hit_rate": statistics.median(r["belady_per_worker_hit_rate"] for r in runs["affinity"]),
                    "runs": [r["belady_per_worker_hit_rate"] for r in runs["affinity"]],
                    "capacity_entries_per_worker": p["per_worker"],
                    "note": "median over the affinity runs, each on its own placement (who_has)",
                },
                "headline": "global",
            }

            # scheduler cost (1): the plugin's hooks timed inside the scheduler, one affinity run
            reset(client, "affinity")
            client.run_on_scheduler(schedcost.install)
            try:
                client.run_on_scheduler(schedcost.reset)
                run_trace(client, jobs, window=p["window"])
                timers = client.run_on_scheduler(schedcost.read)
                model = cluster_state(client)["model"]
            finally:
                client.run_on_scheduler(schedcost.remove)
            overhead = schedcost.scheduler_cost(timers, len(jobs))
            overhead["scheduler_model_after_affinity_run"] = model

            # scheduler cost (2): end to end with the hooks enabled vs disabled, same trace, balance, interleaved
            e2e = {"enabled": [], "disabled": []}
            for _ in range(p["repeat"]):
                for mode in ("enabled", "disabled"):
                    reset(client, "balance")
                    if mode == "disabled":
                        client.run_on_scheduler(_disable_hooks)
                    try:
                        e2e[mode].append(run_trace(client, jobs, window=p["window"])["elapsed_s"])
                    finally:
                        if mode == "disabled":
                            client.run_on_scheduler(_enable_hooks)
            med_on, med_off = statistics.median(e2e["enabled"]), statistics.median(e2e["disabled"])
            overhead["end_to_end"] = {
                "method": (
                    "wall time of the trace under policy balance, hooks enabled vs disabled (update_graph "
                    "reduced to adding the GPU restriction; transition and handle_report no-ops; Dask's "
                    "own get_comm_cost restored); interleaved"
                ),
                "enabled_s": e2e["enabled"],
                "disabled_s": e2e["disabled"],
                "enabled_median_s": med_on,
                "disabled_median_s": med_off,
                "us_per_task": (med_on - med_off) / len(jobs) * 1e6,
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)

    summary = {
        policy: {
            key: spread((r[key] for r in rs), runs=False)
            for key in ("bytes_from_store", "hit_rate", "throughput_rps", "p50_ms", "p99_ms")
        }
        for policy, rs in runs.items()
    }
    aff, bal = summary["affinity"], summary["balance"]
    ratios = {
        "balance_over_affinity_bytes": (
            bal["bytes_from_store"]["median"] / aff["bytes_from_store"]["median"]
            if aff["bytes_from_store"]["median"]
            else float("inf")
        ),
        "affinity_hit_rate_gap_to_belady_global_points": 100
        * (belady["global"]["hit_rate"] - aff["hit_rate"]["median"]),
        "affinity_hit_rate_gap_to_belady_per_worker_points": 100
        * (belady["per_worker_affinity_placement"]["hit_rate"] - aff["hit_rate"]["median"]),
    }
    rep = summary["affinity+replication"]
    ratios["balance_over_replication_bytes"] = (
        bal["bytes_from_store"]["median"] / rep["bytes_from_store"]["median"]
        if rep["bytes_from_store"]["median"]
        else float("inf")
    )
    targets = {
        "replication_p99_le_balance": rep["p99_ms"]["median"] <= bal["p99_ms"]["median"],
        "replication_bytes_3x_fewer_than_balance": ratios["balance_over_replication_bytes"] >= 3.0,
        "bytes_3x_fewer_than_balance": ratios["balance_over_affinity_bytes"] >= 3.0,
        "hit_rate_within_5_points_of_belady_global": ratios["affinity_hit_rate_gap_to_belady_global_points"] <= 5.0,
    }
    return {
        "parameters": {
            "workers": p["workers"],
            "device": "host",
            "capacity_bytes": cap,
            "const_bytes": const_bytes,
            "consts_per_worker": p["per_worker"],
            "tenants": p["tenants"],
            "requests": p["requests"],
            "window": p["window"],
            "repeat": p["repeat"],
            "zipf_s": p["zipf"],
            "seed": p["seed"],
            "request": f"y({BATCH}x{n}) = x({BATCH}x{K}) @ w({K}x{n}) float32, one builtin sgemm",
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


def draw(results: dict, plt):
    summary = results["summary"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    xs = np.arange(len(POLICIES))
    for ax, key, scale, label in (
        (ax1, "bytes_from_store", 2**-20, "MiB loaded from the store"),
        (ax2, "hit_rate", 100, "cache hit rate (%)"),
    ):
        bars(
            ax,
            xs,
            (summary[p][key] for p in POLICIES),
            scale=scale,
            capsize=4,
            color=["tab:green", "tab:gray", "tab:blue", "tab:olive", "tab:cyan"],
        )
        ax.set_xticks(xs, [p.replace("+", "+\n") for p in POLICIES], fontsize=7)
        ax.set_ylabel(label)
    for name, style in (("global", "--"), ("per_worker_affinity_placement", ":")):
        ax2.axhline(
            100 * results["belady"][name]["hit_rate"],
            color="k",
            linestyle=style,
            label=f"Belady ({name.split('_')[0].replace('per', 'per worker')})",
        )
    ax2.legend(loc="lower right", fontsize=8)
    fig.suptitle(
        f"{results['parameters']['tenants']} tenants, {results['parameters']['requests']} requests, "
        f"{results['parameters']['workers']} host workers"
    )
    return fig


def report(results: dict):
    summary, belady = results["summary"], results["belady"]
    yield f"{'policy':<33} {'loaded MiB':>11} {'hit rate':>9} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}"
    for p in POLICIES:
        s = summary[p]
        yield (
            f"{p:<33} {s['bytes_from_store']['median'] / 2**20:>11.0f} {s['hit_rate']['median']:>9.1%} "
            f"{s['throughput_rps']['median']:>7.0f} {s['p50_ms']['median']:>7.1f} {s['p99_ms']['median']:>7.1f}"
        )
    yield (
        f"Belady global (headline) {belady['global']['hit_rate']:.1%}, per worker under affinity's placement "
        f"{belady['per_worker_affinity_placement']['hit_rate']:.1%}"
    )
    r, t = results["ratios"], results["targets"]
    yield (
        f"balance / affinity bytes {r['balance_over_affinity_bytes']:.2f}x (target >= 3x: "
        f"{met(t['bytes_3x_fewer_than_balance'])}); affinity hit rate "
        f"{r['affinity_hit_rate_gap_to_belady_global_points']:.1f} points below Belady global (target <= 5: "
        f"{met(t['hit_rate_within_5_points_of_belady_global'])})"
    )
    yield (
        f"affinity+replication: p99 <= balance's {met(t['replication_p99_le_balance'])}, bytes "
        f"{r['balance_over_replication_bytes']:.1f}x fewer than balance (target >= 3x: "
        f"{met(t['replication_bytes_3x_fewer_than_balance'])})"
    )
    o = results["scheduler_overhead"]
    yield (
        f"scheduler plugin: {o['plugin_cpu_us_per_task']:.1f} us/task CPU ({o['plugin_wall_us_per_task']:.1f} "
        f"wall) in its hooks; end to end {o['end_to_end']['us_per_task']:.0f} us/task (enabled "
        f"{o['end_to_end']['enabled_median_s']:.2f}s vs disabled {o['end_to_end']['disabled_median_s']:.2f}s)"
    )


def validate(p: dict) -> str | None:
    return None if 8 <= p["tenants"] <= 16 else "--tenants must be 8-16"


SUITE = Suite(
    "placement",
    __doc__,
    measure,
    report,
    SIZES,
    draw=draw,
    host_only=True,
    per_device_files=False,
    validate=validate,
    options=(
        Option("--tenants", int, "tenants (8-16)"),
        Option("--requests", int, "requests in the trace"),
        Option("--const-mib", int, "MiB of each tenant's const"),
        Option("--per-worker", int, "consts that fit one worker"),
        Option("--window", int, "requests in flight at most"),
        Option("--repeat", int, "runs of each policy"),
        Option("--zipf", float, "Zipf exponent of tenant popularity (0: uniform)"),
        Option("--seed", int, "seed of the trace and the data"),
    ),
)


if __name__ == "__main__":  # python -m benchmarks.placement ...: the same as python -m benchmarks placement ...
    raise SystemExit(main(suite="placement"))

"""Datacenter scale, simulated: the live scheduling code (``dask_kaas.scheduling``) on a virtual clock.

``dask_kaas.sim`` drives ``SchedulingCore`` (dispatch, placement, admission) and the device cache's
eviction order with simulated workers; costs are calibrated from ``benchmarks/results``
(``dask_kaas.sim.costs``: ``host_costs`` for this machine's host-device clusters, ``gpu_costs`` for
a GPU datacenter, assumptions named). How far the simulation is from live runs is measured by
``python -m benchmarks validate-sim`` (six live scenarios beside their simulation). Four parts:

1. **Eviction**: LRU, queue-aware and Belady (furthest next use, over each worker's own accesses
   under the same placement) on a cyclic trace (12 tenants round robin, each worker's cache 2.5
   consts, 4 workers; and one worker with 11.5) and on Zipf traces, with workers computing in
   parallel (as GPUs do; the headline) and with this host's shared cores; target: queue-aware
   within 5 points of Belady.
2. **Hot spot** (16 GPUs, one tenant of 32 takes 40% of the calls and needs 2.4 GPUs): balance,
   locality, affinity, affinity+replication.
3. **Policy table** at ``--gpus`` GPUs (1,000) and ``--functions`` functions (10,000): an
   Azure-Functions-shaped trace (``azure_like``: Zipf 1.0 popularity, Gamma arrivals with CV 2,
   ``--rate`` calls/s, log-normal kernel seconds (median 2 s) and weights (median 1 GiB), SLO 5x a
   function's own cold latency) over ``--hours`` simulated hours, each GPU caching 40 GiB; every
   configuration of ``dask_kaas.sim.CONFIGURATIONS``, with ratios to ``static``. Targets:
   affinity+replication's p99 <= balance's with >= 3x fewer bytes loaded.
4. **A simulated day** (``--day-hours``, 24) of the same trace under the best configuration: its wall
   time (target: under 10 minutes on this machine).

    python -m benchmarks simulate [--quick | --smoke] [--gpus 1000] [--functions 10000] [--hours 1] ...
"""

from __future__ import annotations

import time

import numpy as np

from benchmarks.common import Option, Suite, main, met

GiB, MiB = 2**30, 2**20
FULL = {
    "gpus": 1000,
    "functions": 10_000,
    "rate": 30.0,
    "hours": 1.0,
    "day_hours": 24.0,
    "capacity_gib": 40.0,
    "seed": 0,
    "validate": True,
    "hot_seconds": 1800.0,
}
SIZES = {
    "full": FULL,
    "quick": {**FULL, "hours": 0.25, "day_hours": 1.0},
    "smoke": {
        **FULL,
        "gpus": 16,
        "functions": 200,
        "rate": 2.0,
        "hours": 0.05,
        "day_hours": 0.1,
        "hot_seconds": 60.0,
        "validate": True,
    },
}


# ------------------------------------------------------------------ eviction
def eviction(costs) -> list[dict]:
    """Each trace under LRU and queue-aware eviction, with Belady over each run's own per-worker accesses;
    workers computing in parallel (``shared_cores`` off: as GPUs do, and as the policies are meant
    for), and again with this host's shared cores, where CPU contention moves tenants between workers."""
    from dask_kaas.sim import cyclic_trace, simulate, zipf_trace

    const = 4 * MiB
    traces = [
        ("cyclic, 4 workers x 2.5 consts", cyclic_trace(12, 600, const_bytes=const, kernel_seconds=0.002), 4, 2.5),
        ("cyclic, 1 worker x 11.5 consts", cyclic_trace(12, 600, const_bytes=const, kernel_seconds=0.002), 1, 11.5),
        (
            "zipf 0.8, 48 tenants, 4 workers x 4.25",
            zipf_trace(48, 2000, s=0.8, seed=0, const_bytes=const, kernel_seconds=0.002),
            4,
            4.25,
        ),
        (
            "zipf 0.8, 12 tenants, 1 worker x 4.25",
            zipf_trace(12, 1000, s=0.8, seed=0, const_bytes=const, kernel_seconds=0.002),
            1,
            4.25,
        ),
    ]
    rows = []
    for cores, model in (("parallel workers", costs.replace(shared_cores=None)), ("shared host cores", costs)):
        for label, wl, gpus, per in traces:
            row = {"trace": label, "workers": cores, "headline": cores == "parallel workers"}
            for ev in ("lru", "queue-aware"):
                r = simulate(
                    wl, "affinity", gpus=gpus, capacity=int(per * const), costs=model, belady=True, eviction=ev
                )
                row[ev] = {
                    "hit_rate": r["hit_rate"],
                    "belady_hit_rate": r["belady_hit_rate"],
                    "bytes_loaded": r["bytes_loaded"],
                    "p99_ms": r["p99_ms"],
                }
            row["queue_aware_points_below_belady"] = 100 * (
                row["queue-aware"]["belady_hit_rate"] - row["queue-aware"]["hit_rate"]
            )
            row["lru_points_below_belady"] = 100 * (row["lru"]["belady_hit_rate"] - row["lru"]["hit_rate"])
            row["within_5_points"] = row["queue_aware_points_below_belady"] <= 5.0
            rows.append(row)
    return rows


# ------------------------------------------------------------------ the table and the day
def table(p: dict, costs) -> dict:
    from dask_kaas.sim import azure_like, policy_table

    wl = azure_like(p["functions"], duration=p["hours"] * 3600, rate=p["rate"], seed=p["seed"])
    wl = wl.with_slo(5.0, costs.load_seconds)
    rows = policy_table(wl, gpus=p["gpus"], capacity=int(p["capacity_gib"] * GiB), costs=costs)
    return {"trace": wl.description, "requests": len(wl), "rows": rows}


def hot_spot(p: dict, costs) -> dict:
    """16 GPUs, 32 tenants with one 8 GiB const each, one tenant taking 40% of 12 calls/s of 0.5 s:
    the hot tenant needs 2.4 GPUs. Where replication should earn its keep, if anywhere."""
    from dask_kaas.sim import simulate
    from dask_kaas.sim.workloads import Function, Workload

    rng = np.random.default_rng(p["seed"])
    n, share, rate, seconds = 32, 0.4, 12.0, p["hot_seconds"]
    prob = np.full(n, (1 - share) / (n - 1))
    prob[0] = share
    fns = [Function(f"t{i:02d}", f"t{i:02d}", (((f"t{i:02d}", "w"), 8 * GiB),), 0.5) for i in range(n)]
    times = np.sort(rng.uniform(0, seconds, int(rate * seconds)))
    wl = Workload(fns, times, rng.choice(n, size=len(times), p=prob)).with_slo(5.0, costs.load_seconds)
    rows = {
        name: simulate(wl, name, gpus=16, capacity=40 * GiB, costs=costs)
        for name in ("balance", "locality", "affinity", "affinity+replication")
    }
    return {
        "gpus": 16,
        "tenants": n,
        "hot_share": share,
        "rate_per_s": rate,
        "kernel_s": 0.5,
        "const_bytes": 8 * GiB,
        "seconds": seconds,
        "requests": len(wl),
        "rows": rows,
    }


def day(p: dict, costs) -> dict | None:
    from dask_kaas.sim import azure_like, simulate

    if not p["day_hours"]:
        return None
    start = time.perf_counter()
    wl = azure_like(p["functions"], duration=p["day_hours"] * 3600, rate=p["rate"], seed=p["seed"])
    wl = wl.with_slo(5.0, costs.load_seconds)
    generate = time.perf_counter() - start
    r = simulate(
        wl, "affinity+replication+queue-aware", gpus=p["gpus"], capacity=int(p["capacity_gib"] * GiB), costs=costs
    )
    wall = time.perf_counter() - start
    return {
        "configuration": "affinity+replication+queue-aware",
        "requests": len(wl),
        "generate_s": generate,
        "wall_s": wall,
        "us_per_request": 1e6 * r["wall_s"] / max(1, len(wl)),
        "figures": r,
        "target_met": wall < 600,
    }


def measure(config, p: dict) -> dict:
    from dask_kaas.sim import gpu_costs, host_costs

    host, gpu = host_costs(), gpu_costs()
    out = {"parameters": dict(p), "costs": {"host": host.as_dict(), "gpu": gpu.as_dict()}}
    if p["validate"]:
        out["eviction"] = eviction(host)
    out["table"] = table(p, gpu)
    out["hot_spot"] = hot_spot(p, gpu)
    rows = out["table"]["rows"]
    rep, bal = rows["affinity+replication"], rows["balance"]
    out["targets"] = {
        "replication_p99_le_balance": rep["p99_ms"] <= bal["p99_ms"],
        "replication_bytes_3x_fewer_than_balance": bal["bytes_loaded"] >= 3 * rep["bytes_loaded"],
        "balance_over_replication_bytes": bal["bytes_loaded"] / max(1, rep["bytes_loaded"]),
    }
    if p["validate"]:
        out["targets"]["eviction_within_5_points_of_belady"] = all(
            r["within_5_points"] for r in out["eviction"] if r["headline"]
        )
    out["day"] = day(p, gpu)
    if out["day"]:
        out["targets"]["day_under_10_minutes"] = out["day"]["target_met"]
    return out


def _fmt(v, scale=1.0, spec=".1f"):
    return "-" if v is None else format(v * scale, spec)


def report(r: dict):
    if r.get("eviction"):
        yield "eviction (hit rate; Belady over the same placement):"
        for row in r["eviction"]:
            yield (
                f"  {row['workers']:<18} {row['trace']:<40} lru {row['lru']['hit_rate']:.1%}  queue-aware "
                f"{row['queue-aware']['hit_rate']:.1%}  Belady {row['queue-aware']['belady_hit_rate']:.1%}  "
                f"({row['queue_aware_points_below_belady']:.1f} points below: {met(row['within_5_points'])})"
            )
    t = r["table"]
    yield (
        f"policy table: {r['parameters']['gpus']} GPUs, {t['trace']['functions']} functions, {t['requests']} "
        f"requests over {t['trace']['duration_s'] / 3600:g} h (GPU costs)"
    )
    yield (
        f"  {'configuration':<34} {'goodput/s':>9} {'p50 s':>8} {'p99 s':>9} {'SLO':>6} {'TB loaded':>9} "
        f"{'GPU-h':>8} {'Jain':>5} {'x static':>8}"
    )
    for name, row in t["rows"].items():
        vs = row.get("vs_static", {})
        yield (
            f"  {name:<34} {row['goodput_rps']:>9.2f} {_fmt(row['p50_ms'], 1e-3, '.2f'):>8} "
            f"{_fmt(row['p99_ms'], 1e-3, '.1f'):>9} {row['slo_attainment']:>6.1%} {row['bytes_loaded'] / 1e12:>9.2f} "
            f"{row['gpu_seconds'] / 3600:>8.0f} {row['jain_fairness']:>5.2f} {_fmt(vs.get('goodput'), 1, '.1f'):>8}"
        )
    h = r["hot_spot"]
    yield (
        f"hot spot: {h['gpus']} GPUs, {h['tenants']} tenants of 8 GiB, one with {h['hot_share']:.0%} of "
        f"{h['rate_per_s']:g} calls/s x {h['kernel_s']} s:"
    )
    for name, row in h["rows"].items():
        yield (
            f"  {name:<34} p50 {_fmt(row['p50_ms'], 1e-3, '.2f')} s, p99 {_fmt(row['p99_ms'], 1e-3, '.2f')} s, "
            f"SLO {row['slo_attainment']:.1%}, {row['bytes_loaded'] / 1e12:.2f} TB, "
            f"{row['max_workers_per_tenant']} workers for the hot tenant"
        )
    g = r["targets"]
    yield (
        f"affinity+replication vs balance: p99 <= balance's {met(g['replication_p99_le_balance'])}, bytes "
        f"{g['balance_over_replication_bytes']:.1f}x fewer (target >= 3x: "
        f"{met(g['replication_bytes_3x_fewer_than_balance'])})"
    )
    if r.get("day"):
        d = r["day"]
        yield (
            f"a simulated day: {d['requests']} requests in {d['wall_s']:.0f} s wall ({d['us_per_request']:.0f} us "
            f"per request; target < 600 s: {met(d['target_met'])})"
        )


def draw(r: dict, plt):
    rows = r["table"]["rows"]
    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key, scale, label in (
        (axes[0], "goodput_rps", 1, "goodput (calls within SLO / s)"),
        (axes[1], "p99_ms", 1e-3, "p99 latency (s, log)"),
        (axes[2], "bytes_loaded", 1e-12, "TB loaded"),
    ):
        ax.bar(range(len(names)), [rows[n][key] * scale for n in names], color="tab:blue")
        ax.set_xticks(range(len(names)), [n.replace("+", "+\n") for n in names], fontsize=7)
        ax.set_ylabel(label)
        if key == "p99_ms":
            ax.set_yscale("log")
    fig.suptitle(f"{r['parameters']['gpus']} simulated GPUs, {r['table']['trace']['functions']} functions")
    fig.tight_layout()
    return fig


SUITE = Suite(
    "simulate",
    __doc__,
    measure,
    report,
    SIZES,
    draw=draw,
    host_only=True,
    per_device_files=False,
    options=(
        Option("--gpus", int, "simulated GPUs"),
        Option("--functions", int, "functions in the trace"),
        Option("--rate", float, "calls per second in all"),
        Option("--hours", float, "simulated hours per policy"),
        Option("--day-hours", float, "hours of the timed run (0: skip)"),
        Option("--capacity-gib", float, "cache GiB per GPU"),
        Option("--seed", int, "seed of the trace"),
    ),
)


if __name__ == "__main__":
    raise SystemExit(main(suite="simulate"))

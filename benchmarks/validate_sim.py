"""The simulator against live runs of several shapes: how far ``dask_kaas.sim`` is from a real cluster.

One KaaS cluster as users deploy it (``dask kaas scheduler`` and four ``dask kaas worker`` processes of
host devices, the client in this process), each worker's cache ``CAP`` (16 MiB of consts plus room for
one call). Each scenario is a :class:`dask_kaas.sim.Workload`; the same object is replayed live (an
asynchronous client: open-loop calls submitted at their times, each closed-loop client keeping its own
calls in flight, a policy switch at its time) and simulated. A request is ``y = x @ w`` (``x`` 8 x 1024
float32 passed in the call, ``w`` the tenant's const), every live result checked against NumPy.

Scenarios (``zipf-closed`` is the shape the simulator's costs were first tuned on; the others are not):

- ``zipf-closed``: 12 tenants of 4 MiB, Zipf 0.8, one client with 8 calls in flight;
- ``zipf-two-sizes``: 16 tenants, 2 MiB and 8 MiB alternately, Zipf 1.0, window 8;
- ``bursty-beside-steady``: 3 steady tenants, each its own client with 2 in flight, beside 9 bursty
  tenants submitting open loop (Gamma arrivals, CV 3) at ``--rate`` calls/s;
- ``open-poisson``: 10 tenants of 4 MiB, Zipf 1.0, Poisson arrivals at ``--rate`` calls/s;
- ``cyclic``: 12 tenants of 6 MiB round robin, window 8 (2.7 consts per worker: eviction decides);
- ``switch``: ``open-poisson``'s shape under ``balance``, switched to ``affinity`` halfway through its
  trace (``set_policy`` live, ``simulate(..., switches=...)`` simulated).

Configurations: ``balance``, ``locality``, ``affinity`` (LRU) and ``affinity+queue-aware``, each run live
``--repeat`` times (interleaved; caches emptied before each run), and simulated with ``--seeds`` seeds
(the median). Figures: throughput (completed calls / seconds from the first submission to the last
result), p50 and p99 latency (submission to result at the client), bytes loaded from the store and the
const hit rate (``worker_stats`` deltas). The error of a figure is (simulated - live median) / live
median; it is judged (target within 10%) only where the live runs agree with each other within 10%
((max - min) / median); p99 is reported, never judged.

Costs in place, measured in the same run (this machine's speed drifts by tens of percent within
minutes): ``python -m benchmarks calibrate``'s figures at the start, and Dask's costs (each process's
CPU per request, the no-op round trip) again on the same cluster just before each live run, each run
simulated with its own (``host_costs(calibrated=...)``; a figure is the median over the runs); each
function's kernel seconds (its warm run in the runtime, in this process); a const's load (latency +
bytes / bandwidth, fitted over the four const sizes) as a live worker process at rest times it.

``--resimulate FILE`` skips the live runs and simulates again against the live runs recorded in FILE
(a model change judged against the same live data).

    python -m benchmarks validate-sim [--quick | --smoke] [--requests 600] [--repeat 2]
                                      [--scenarios S,..] [--configs C,..] [--resimulate FILE]
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import Option, Suite, WrongResult, main
from benchmarks.replay import LiveRun

MiB = 2**20
F32, K, BATCH = 4, 1024, 8
WORKERS, PER_WORKER_MIB = 4, 16
CONFIGS = ("balance", "locality", "affinity", "affinity+queue-aware")
FIGURES = ("throughput_rps", "p50_ms", "bytes_loaded", "hit_rate", "p99_ms", "load_ms_per_mib")
JUDGED = ("throughput_rps", "p50_ms", "bytes_loaded", "hit_rate")
TARGET = 0.10
SCENARIOS = ("zipf-closed", "zipf-two-sizes", "bursty-beside-steady", "open-poisson", "cyclic", "switch")
SETTLE_S = 0.3
RECALIBRATE = {"requests": 200, "noops": 20}  # Dask's costs measured again before each live run
RECALIBRATE_SMOKE = {"requests": 24, "noops": 5}  # a smoke run checks the machinery, not the figures
FULL = {
    "requests": 600,
    "repeat": 2,
    "seeds": 3,
    "rate": 90.0,
    "workers": WORKERS,
    "scenarios": "all",
    "configs": "all",
    "resimulate": "",
}
SIZES = {
    "full": FULL,
    "quick": {**FULL, "requests": 300},
    "smoke": {
        **FULL,
        "requests": 24,
        "repeat": 1,
        "seeds": 1,
        "workers": 2,
        "scenarios": "zipf-closed,switch",
        "configs": "balance,affinity+queue-aware",  # the machinery once with each kind of placement
    },
}


# ------------------------------------------------------------------ the scenarios, as simulator workloads
def _functions(sizes_mib: list[int], prefix: str, kernel_of) -> list:
    from dask_kaas.sim.workloads import Function

    out = []
    for i, mib in enumerate(sizes_mib):
        name = f"{prefix}-{i:02d}"
        out.append(
            Function(
                name,
                name,
                (((name, "w"), mib * MiB),),
                float(kernel_of(mib)),
                in_bytes=BATCH * K * F32,
                out_bytes=BATCH * (mib * MiB // (K * F32)) * F32,
                shape=f"matmul-{mib}MiB",
            )
        )  # live, one shape token per size, whoever's
    return out


def _zipf_calls(rng, tenants: int, n: int, s: float) -> np.ndarray:
    from dask_kaas.sim.workloads import zipf_popularity

    return rng.choice(tenants, size=n, p=zipf_popularity(tenants, s, rng))


def scenarios(p: dict, kernel_of) -> list[dict]:
    """``[{name, workload, configs, switches, note}]``; ``kernel_of(mib)``: a function's kernel seconds."""
    from dask_kaas.sim.workloads import Workload

    n, rate = p["requests"], p["rate"]
    rng = np.random.default_rng(0)
    out = []

    def add(name, workload, note, configs=CONFIGS, switches=()):
        chosen = p.get("configs", "all")  # (results recorded before --configs existed ran them all)
        if configs is CONFIGS and chosen != "all":
            configs = [c for c in CONFIGS if c in chosen.split(",")]
        out.append(
            {"name": name, "workload": workload, "configs": list(configs), "switches": list(switches), "note": note}
        )

    fns = _functions([4] * 12, "zc", kernel_of)
    add(
        "zipf-closed",
        Workload(fns, np.zeros(n), _zipf_calls(rng, 12, n, 0.8), window=8),
        "12 tenants x 4 MiB, Zipf 0.8, closed loop of 8 (the shape the costs were first tuned on)",
    )
    fns = _functions([2, 8] * 8, "z2", kernel_of)
    add(
        "zipf-two-sizes",
        Workload(fns, np.zeros(n), _zipf_calls(rng, 16, n, 1.0), window=8),
        "16 tenants of 2 and 8 MiB alternately, Zipf 1.0, closed loop of 8",
    )
    fns = _functions([4] * 12, "bs", kernel_of)
    steady, bursty = 3, 9
    n_bursty = (n * 3) // 5
    shape = 1.0 / 3.0**2  # Gamma arrivals of CV 3
    gaps = rng.gamma(shape, 1.0 / (rate * shape), n_bursty)
    times_b = np.cumsum(gaps) - gaps[0]
    calls_b = steady + rng.integers(0, bursty, n_bursty)
    calls_s = rng.integers(0, steady, n - n_bursty)
    times = np.concatenate([times_b, np.zeros(len(calls_s))])
    calls = np.concatenate([calls_b, calls_s])
    clients = {f.tenant: (2 if i < steady else None) for i, f in enumerate(fns)}
    add(
        "bursty-beside-steady",
        Workload(fns, times, calls, clients=clients),
        f"3 steady tenants, each a client with 2 in flight, beside 9 bursty tenants open loop (Gamma CV 3, "
        f"{rate:g} calls/s); 4 MiB each",
    )
    fns = _functions([4] * 10, "op", kernel_of)
    times = np.cumsum(rng.exponential(1.0 / rate, n))
    times -= times[0]
    add(
        "open-poisson",
        Workload(fns, times, _zipf_calls(rng, 10, n, 1.0)),
        f"10 tenants x 4 MiB, Zipf 1.0, Poisson arrivals at {rate:g} calls/s",
    )
    fns = _functions([6] * 12, "cy", kernel_of)
    add(
        "cyclic",
        Workload(fns, np.zeros(n), np.arange(n) % 12, window=8),
        "12 tenants x 6 MiB round robin, closed loop of 8 (2.7 consts fit a worker)",
    )
    fns = _functions([4] * 10, "sw", kernel_of)
    times = np.cumsum(rng.exponential(1.0 / rate, n))
    times -= times[0]
    wl = Workload(fns, times, _zipf_calls(rng, 10, n, 1.0))
    add(
        "switch",
        wl,
        f"open-poisson's shape at {rate:g} calls/s, balance switched to affinity at {wl.duration / 2:.1f} s",
        configs=("balance>affinity",),
        switches=[(wl.duration / 2, "affinity")],
    )
    wanted = p["scenarios"]
    if wanted != "all":
        names = wanted.split(",")
        unknown = set(names) - {s["name"] for s in out}
        if unknown:
            raise ValueError(f"unknown scenario(s) {', '.join(sorted(unknown))}")
        out = [s for s in out if s["name"] in names]
    return out


def _settings(config: str) -> dict:
    """A configuration's simulator settings (``balance>affinity``: starts as balance)."""
    base, *extras = config.split(">")[0].split("+")
    return {"policy": base, "eviction": "queue-aware" if "queue-aware" in extras else "lru"}


# ------------------------------------------------------------------ costs measured in place
def _request(tenant: str, nbytes: int):
    from benchmarks.tenants import matmul_request

    return matmul_request(K, nbytes // (K * F32), BATCH, tenant)


def measure_in_place(store_url: str, sizes_mib: list[int], rounds: int) -> dict:
    """Kernel seconds (a warm request's run, less the runtime's own cost) and a cold request's extra
    seconds, per const size, as the runtime measures them in this process; and the fitted load model
    (seconds = latency + bytes / bandwidth)."""
    from dask_kaas.device import make_device
    from dask_kaas.runtime import Runtime
    from dask_kaas.store import BufferStore

    store = BufferStore(store_url)
    rng = np.random.default_rng(1)
    rt = Runtime(make_device("host", memory=4 * max(sizes_mib) * MiB + 8 * MiB), store=store_url)
    warm, cold = {}, {}
    try:
        for mib in sizes_mib:
            tenant = f"cal-{mib}"
            store.put("w", rng.standard_normal((K, mib * MiB // (K * F32))).astype(np.float32), namespace=tenant)
            req = _request(tenant, mib * MiB)
            x = rng.standard_normal((BATCH, K)).astype(np.float32)
            rt.run(req, {"x": x})
            times_w, times_c = [], []
            for _ in range(rounds):
                start = time.perf_counter()
                rt.run(req, {"x": x})
                times_w.append(time.perf_counter() - start)
                rt.clear_cache()
                start = time.perf_counter()
                rt.run(req, {"x": x})
                times_c.append(time.perf_counter() - start)
            warm[mib], cold[mib] = statistics.median(times_w), statistics.median(times_c)
    finally:
        rt.close()
    latency, bandwidth = fit_loads({m: max(0.0, cold[m] - warm[m]) for m in sizes_mib})
    return {
        "warm_s": {str(m): warm[m] for m in sizes_mib},
        "cold_s": {str(m): cold[m] for m in sizes_mib},
        "load_latency_s": latency,
        "load_bandwidth": bandwidth,
    }


def fit_loads(seconds: dict) -> tuple[float, float]:
    """``(latency, bandwidth)`` of ``{MiB: seconds to load a const that size}``, least squares."""
    sizes = sorted(seconds)
    bytes_ = np.array([m * MiB for m in sizes], dtype=float)
    y = np.array([seconds[m] for m in sizes])
    slope, intercept = np.polyfit(bytes_, y, 1) if len(sizes) > 1 else (y[0] / bytes_[0], 0.0)
    return max(0.0, float(intercept)), 1.0 / max(float(slope), 1e-15)


def worker_loads(client, store, sizes_mib: list[int], rounds: int) -> dict:
    """Cold loads of each const size in live worker processes, as the workers time them (``worker_stats``'
    load seconds; each probe's first round, which also opens the store, not counted): one alone on the
    idle cluster (``seconds``), and one on every worker at once (``together_s``, the regime of the
    scenarios, where several workers load at the same time). The simulated load (``latency_s`` +
    bytes / ``bandwidth``) is fitted to the loads together, less the stretch the simulator itself puts
    on that many loads sharing the cores (``stretch``). Live a worker's load takes several times what the
    same load takes in this process, and several times more again when every worker loads."""
    from benchmarks.tenants import reset

    rng = np.random.default_rng(3)
    x = rng.standard_normal((BATCH, K)).astype(np.float32)
    out, runs, warm, together = {}, {}, {}, {}
    for mib in sizes_mib:
        tenant = f"probe-{mib}"
        store.put("w", rng.standard_normal((K, mib * MiB // (K * F32))).astype(np.float32), namespace=tenant)
        req, times, warm_times = _request(tenant, mib * MiB), [], []
        for _ in range(rounds + 1):  # static: always the same worker, whose first load also opens the store
            reset(client, "static")
            time.sleep(SETTLE_S)  # the workers' own handling of the reset, done
            before = load_seconds(client)
            client.submit(req, pure=False, x=x).result()
            times.append(load_seconds(client) - before)
            before = seconds_of(client, "total")
            client.submit(req, pure=False, x=x).result()
            warm_times.append(seconds_of(client, "total") - before)
        out[mib] = statistics.median(times[1:])
        warm[str(mib)] = statistics.median(warm_times[1:])
        runs[str(mib)] = times[1:]
        together[mib] = _loads_together(client, store, rng, mib, x, rounds, reset)
    workers = len(client.scheduler_info()["workers"])
    cores = os.cpu_count() or 1
    # first come first served on the shared cores, `workers` loads at once take on average this many
    # times one alone (the simulator's own stretch): what one load costs is the rest
    stretch = float(np.mean([-(-j // cores) for j in range(1, workers + 1)]))
    latency, bandwidth = fit_loads({m: v / stretch for m, v in together.items()})
    return {
        "seconds": {str(m): v for m, v in out.items()},
        "runs": runs,
        "warm_s": warm,
        "together_s": {str(m): v for m, v in together.items()},
        "stretch": stretch,
        "latency_s": latency,
        "bandwidth": bandwidth,
    }


def _loads_together(client, store, rng, mib: int, x, rounds: int, reset) -> float:
    """The mean load seconds when every worker loads a const of ``mib`` MiB at once (one tenant per worker
    under ``static``), as the workers time them; the median over ``rounds``."""
    workers = len(client.scheduler_info()["workers"])
    tenants = [f"probe-{mib}-{k}" for k in range(workers)]
    for tenant in tenants:
        store.put("w", rng.standard_normal((K, mib * MiB // (K * F32))).astype(np.float32), namespace=tenant)
    requests = [_request(t, mib * MiB) for t in tenants]
    means = []
    for _ in range(rounds + 1):
        reset(client, "static")
        time.sleep(SETTLE_S)
        before = load_seconds(client)
        client.gather([client.submit(r, pure=False, x=x) for r in requests])
        means.append((load_seconds(client) - before) / workers)
    return statistics.median(means[1:])


def costs_in_place(in_place: dict, again: dict | None = None):
    """``host_costs()`` from this run's calibration, with Dask's costs as measured again just before a
    live run (``again``, where given), and this run's measured load model (the fit includes the copy to
    the device; ``load_cv``: the spread of the live workers' loads of each size)."""
    from dask_kaas.sim import host_costs
    from dask_kaas.sim.costs import lognormal_cv

    calibrated = in_place.get("calibration")
    if calibrated is not None and again:
        calibrated = {**calibrated, **again}
    costs = host_costs(calibrated=calibrated)
    fit = in_place.get("worker_loads") or {
        "latency_s": in_place["load_latency_s"],
        "bandwidth": in_place["load_bandwidth"],
    }
    runs = [np.asarray(r) / np.median(r) for r in (fit.get("runs") or {}).values() if len(r)]
    load_cv = lognormal_cv(np.concatenate(runs)) if runs else 0.0
    return costs.replace(
        store_latency=fit["latency_s"], store_bandwidth=fit["bandwidth"], device_bandwidth=1e18, load_cv=load_cv
    )


def run_calibrations(in_place: dict, scenario: str, runs: list[dict]) -> list[dict | None]:
    """Dask's costs measured just before each live run (results recorded before 2026-12-03's per-run
    calibration: the median of those measured before the scenario's runs, for each run)."""
    if all(r.get("calibration") for r in runs):
        return [r["calibration"] for r in runs]
    before = (in_place.get("scenario_calibration") or {}).get(scenario)
    median = {k: float(np.median([c[k] for c in before])) for k in before[0]} if before else None
    return [median] * len(runs)


def kernel_seconds(in_place: dict):
    """A function's kernel seconds: its warm run in the runtime, in this process, less the runtime's own
    per-request cost (which the cost model's worker figure holds). (A live worker at rest takes 2-4x
    as long, ``worker_loads["warm_s"]``; taking that instead made the simulation of three live runs
    worse: most of it is waiting in the worker process, not work on a core.)"""
    from dask_kaas.sim.costs import HOST_FALLBACK, calibration

    runtime = (in_place.get("calibration") or calibration()[0] or HOST_FALLBACK).get(
        "runtime_s", HOST_FALLBACK["runtime_s"]
    )
    return lambda mib: max(0.0, in_place["warm_s"][str(mib)] - runtime)


def calibrate(config, p: dict) -> dict:
    """This machine's figures now (``python -m benchmarks calibrate``'s measurement, its quick size; its
    smoke size when this run is a smoke): the machine's speed drifts within minutes, so the simulation
    is calibrated in the same run as the live scenarios it is judged against."""
    from benchmarks import calibrate as suite

    return suite.measure(config, suite.SIZES["smoke" if p["repeat"] < 2 else "quick"])["figures"]


# ------------------------------------------------------------------ live
def seconds_of(client, phase: str) -> float:
    """The workers' seconds in ``phase`` so far, summed (``worker_stats`` counters' ``seconds``)."""
    from dask_kaas import worker_stats

    return sum(float((s.get("seconds") or {}).get(phase, 0.0)) for s in worker_stats(client).values())


def load_seconds(client) -> float:
    return seconds_of(client, "load")


def per_mib(seconds: float, nbytes: int) -> float | None:
    """Milliseconds of load per MiB loaded: the load bandwidth the workers saw, as the core learns it."""
    return 1e3 * seconds / (nbytes / MiB) if nbytes else None


def live_figures(run: LiveRun, delta: dict, loading: float) -> dict:
    from benchmarks.tenants import hit_rate

    ok = np.isfinite(run.latency)
    finished = run.submitted[ok] + run.latency[ok]
    span = float(finished.max() - run.submitted.min()) if ok.any() else float("nan")
    lat = run.latency[ok] * 1e3
    return {
        "throughput_rps": float(ok.sum() / span),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "bytes_loaded": int(delta["bytes_from_store"]),
        "hit_rate": hit_rate(delta, None),
        "span_s": span,
        "completed": int(ok.sum()),
        "load_ms_per_mib": per_mib(loading, delta["bytes_from_store"]),
    }


def run_live(scenario_list: list[dict], p: dict, store_url: str, address: str, log) -> dict:
    """Every scenario's configurations, ``repeat`` times each, interleaved: ``{scenario: {config: [figures]}}``."""
    from distributed import Client

    from benchmarks.calibrate import cluster_costs, cluster_figures
    from benchmarks.deployed import wait_idle
    from benchmarks.tenants import counter_delta, counters, forget_model, reset
    from dask_kaas import set_policy
    from dask_kaas.sim.workloads import Workload
    from dask_kaas.store import BufferStore

    store = BufferStore(store_url)
    rng = np.random.default_rng(2)
    prepared = {}
    for sc in scenario_list:
        wl = sc["workload"]
        weights, requests = [], []
        for f in wl.functions:
            (ns, key), nbytes = f.consts[0]
            w = (rng.standard_normal((K, nbytes // (K * F32))) / np.sqrt(K)).astype(np.float32)
            store.put(key, w, namespace=ns)
            weights.append(w)
            requests.append(_request(f.tenant, nbytes))
        xs = [rng.standard_normal((BATCH, K)).astype(np.float32) for _ in range(len(wl))]
        expected = [(x.astype(np.float64) @ weights[c]).astype(np.float32) for x, c in zip(xs, wl.calls)]
        prepared[sc["name"]] = ([requests[c] for c in wl.calls], xs, expected)
    out = {sc["name"]: {c: [] for c in sc["configs"]} for sc in scenario_list}
    with Client(address) as client:
        loads = worker_loads(client, store, [2, 4, 6, 8], rounds=10 if p["repeat"] > 1 else 3)
        warm = scenario_list[0]
        reset(client, "balance")
        requests, xs, expected = prepared[warm["name"]]
        k = min(40, len(xs))
        asyncio.run(
            LiveRun(
                Workload(warm["workload"].functions, np.zeros(k), warm["workload"].calls[:k], window=8),
                requests[:k],
                xs[:k],
                expected[:k],
                [],
                None,
            ).run(address)
        )
        for rep in range(p["repeat"]):
            for sc in scenario_list:
                requests, xs, expected = prepared[sc["name"]]
                for config in sc["configs"]:
                    # this machine's speed drifts within minutes: Dask's costs measured again just before each
                    # run, on a cluster left idle by the run before (its results released)
                    wait_idle(client)
                    time.sleep(SETTLE_S)
                    sample = RECALIBRATE if p["repeat"] > 1 else RECALIBRATE_SMOKE
                    calibration = cluster_costs(cluster_figures(client, store, sample))
                    reset(client, config.split(">")[0])
                    forget_model(client)  # each run starts from what a simulation starts from

                    def set_policy_at(name, client=client):
                        set_policy(client, name)

                    run = LiveRun(sc["workload"], requests, xs, expected, sc["switches"], set_policy_at)
                    before, loading = counters(client), load_seconds(client)
                    asyncio.run(run.run(address))
                    delta, _ = counter_delta(before, counters(client))
                    loading = load_seconds(client) - loading
                    if run.errors:
                        raise WrongResult(
                            f"validate-sim {sc['name']} {config}: {len(run.errors)} failed or wrong "
                            f"results (first: {run.errors[:3]})"
                        )
                    figures = live_figures(run, delta, loading)
                    out[sc["name"]][config].append({**figures, "calibration": calibration})
                    log(
                        f"  {sc['name']:<21} {config:<21} run {rep + 1}: {figures['throughput_rps']:.0f} req/s, p50 "
                        f"{figures['p50_ms']:.1f} ms, hit rate {figures['hit_rate']:.1%}, loaded "
                        f"{figures['bytes_loaded'] / MiB:.0f} MiB (calibrated just before: "
                        f"{calibration['task_rate']:.0f} tiny req/s)",
                        flush=True,
                    )
    return out, loads


# ------------------------------------------------------------------ simulated, and compared
def simulate_all(scenario_list: list[dict], p: dict, in_place: dict, live: dict, capacity: int) -> tuple[dict, dict]:
    """Each scenario's configurations simulated once per live run, under the costs measured just before
    that run (``seeds`` seeds each, their median); a figure is the median over the runs. Also the costs,
    ``{scenario: {config: [per run]}}``."""
    from dask_kaas.sim import simulate

    out, costs = {}, {}
    for sc in scenario_list:
        out[sc["name"]], costs[sc["name"]] = {}, {}
        for config in sc["configs"]:
            runs = live[sc["name"]][config]
            per_run, run_costs = [], []
            for again in run_calibrations(in_place, sc["name"], runs):
                c = costs_in_place(in_place, again)
                run_costs.append(c)
                rows = [
                    simulate(
                        sc["workload"],
                        _settings(config),
                        gpus=p["workers"],
                        capacity=capacity,
                        costs=c,
                        seed=seed,
                        switches=[(t, _settings(x)) for t, x in sc["switches"]],
                    )
                    for seed in range(p["seeds"])
                ]
                for r in rows:
                    r["load_ms_per_mib"] = per_mib(r["load_seconds"], r["bytes_loaded"])
                per_run.append(
                    {
                        k: float(np.median([r[k] for r in rows if r[k] is not None]))
                        for k in FIGURES
                        if any(r[k] is not None for r in rows)
                    }
                )
            out[sc["name"]][config] = {
                k: float(np.median([r[k] for r in per_run if k in r])) for k in FIGURES if any(k in r for r in per_run)
            }
            costs[sc["name"]][config] = run_costs
    return out, costs


def compare(live: dict, sim: dict) -> list[dict]:
    """One row per scenario and configuration: per figure the live runs, their median and spread, the
    simulated figure, its error, whether it is judged (live spread under 10%) and within 10%."""
    rows = []
    for scenario, configs in live.items():
        for config, runs in configs.items():
            row = {"scenario": scenario, "config": config, "figures": {}}
            for key in FIGURES:
                values = [r[key] for r in runs if r.get(key) is not None]
                s = sim[scenario][config].get(key)
                if not values or s is None:
                    continue
                med = float(np.median(values))
                spread_ = (max(values) - min(values)) / med if med else 0.0
                error = (s - med) / med if med else (0.0 if s == 0 else float("inf"))
                if key == "hit_rate":  # a rate near 0 or 1: points, not a ratio of a tiny number
                    error = s - med
                judged = key in JUDGED and len(values) > 1 and spread_ < TARGET
                row["figures"][key] = {
                    "live": values,
                    "live_median": med,
                    "live_spread": spread_,
                    "sim": s,
                    "error": error,
                    "judged": judged,
                    "within": abs(error) <= TARGET,
                }
            rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    judged = [(r, k, f) for r in rows for k, f in r["figures"].items() if f["judged"]]
    by_figure = {}
    for key in FIGURES:
        errors = [abs(f["error"]) for r in rows for k, f in r["figures"].items() if k == key]
        if errors:
            by_figure[key] = {
                "median_abs_error": float(np.median(errors)),
                "max_abs_error": float(max(errors)),
                "judged": sum(1 for _, k, _ in judged if k == key),
                "within": sum(1 for _, k, f in judged if k == key and f["within"]),
            }
    return {
        "judged": len(judged),
        "within": sum(1 for _, _, f in judged if f["within"]),
        "target_met": all(f["within"] for _, _, f in judged) and bool(judged),
        "by_figure": by_figure,
    }


# ------------------------------------------------------------------ the suite
def measure(config, p: dict) -> dict:
    from benchmarks.deployed import deployed_cluster
    from benchmarks.tenants import device_capacity

    capacity = device_capacity(PER_WORKER_MIB // 4, 4 * MiB, K, 8 * MiB // (K * F32), BATCH)
    if p["resimulate"]:
        with open(p["resimulate"]) as f:
            recorded = json.load(f)
        in_place, live = recorded["in_place"], recorded["live"]
        live_source = {"file": p["resimulate"], "measured": recorded.get("machine", {}).get("date")}
        p = {**recorded["parameters"], "seeds": p["seeds"], "resimulate": p["resimulate"]}
    root = tempfile.mkdtemp(prefix="kaas-validate-sim-")
    try:
        store_url = f"file://{root}/store"
        if not p["resimulate"]:
            in_place = measure_in_place(store_url, [2, 4, 6, 8], rounds=9 if p["repeat"] > 1 else 3)
            in_place["calibration"] = calibrate(config, p)
            scenario_list = scenarios(p, kernel_seconds(in_place))
            live_source = {"file": None, "measured": "this run"}
            with deployed_cluster("host", p["workers"], device_memory=str(capacity), store_url=store_url) as (
                address,
                url,
            ):
                live, in_place["worker_loads"] = run_live(scenario_list, p, url, address, config.log)
        scenario_list = scenarios(p, kernel_seconds(in_place))
        sim, costs = simulate_all(scenario_list, p, in_place, live, capacity)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = compare(live, sim)
    return {
        "parameters": {**p, "capacity_bytes": capacity, "target": TARGET},
        "scenarios": [
            {"name": s["name"], "note": s["note"], "requests": len(s["workload"]), "configs": s["configs"]}
            for s in scenario_list
        ],
        "in_place": in_place,
        "costs": {
            name: {
                config: [{k: v for k, v in c.as_dict().items() if k != "source"} for c in runs]
                for config, runs in by_config.items()
            }
            for name, by_config in costs.items()
        },
        "costs_source": next(iter(next(iter(costs.values())).values()))[0].source,
        "live_source": live_source,
        "live": live,
        "sim": sim,
        "rows": rows,
        "summary": summary(rows),
    }


def _cell(f: dict | None, key: str) -> str:
    if f is None:
        return "-"
    err = f"{100 * f['error']:+.0f}{'pt' if key == 'hit_rate' else '%'}"
    mark = "" if not f["judged"] else (" ok" if f["within"] else " !")
    return f"{err} (±{100 * f['live_spread']:.0f}%){mark}"


def report(r: dict):
    yield (
        f"error of the simulation against the live median (live spread); judged where the live spread < "
        f"{TARGET:.0%} (ok / !), hit rate in points:"
    )
    yield f"  {'scenario':<21} {'configuration':<21} " + " ".join(f"{k:>18}" for k in FIGURES)
    for row in r["rows"]:
        yield (
            f"  {row['scenario']:<21} {row['config']:<21} "
            + " ".join(f"{_cell(row['figures'].get(k), k):>18}" for k in FIGURES)
        )
    s = r["summary"]
    for key, b in s["by_figure"].items():
        yield (
            f"  {key:<15} median |error| {100 * b['median_abs_error']:.0f}%, max {100 * b['max_abs_error']:.0f}%"
            f"; judged {b['judged']}, within 10%: {b['within']}"
        )
    yield f"within {TARGET:.0%} where judged: {s['within']}/{s['judged']}"


def draw(r: dict, plt):
    rows = r["rows"]
    fig, axes = plt.subplots(1, len(JUDGED), figsize=(15, 4.2), sharey=True)
    labels = [f"{row['scenario']} {row['config']}" for row in rows]
    ys = np.arange(len(rows))
    for ax, key in zip(axes, JUDGED):
        errs = [100 * row["figures"][key]["error"] if key in row["figures"] else 0 for row in rows]
        colours = ["tab:blue" if row["figures"].get(key, {}).get("judged") else "tab:gray" for row in rows]
        ax.barh(ys, errs, color=colours)
        ax.axvspan(-100 * TARGET, 100 * TARGET, color="tab:green", alpha=0.15)
        ax.set_title(key + (" (points)" if key == "hit_rate" else " (%)"), fontsize=9)
        ax.axvline(0, color="k", linewidth=0.6)
    axes[0].set_yticks(ys, labels, fontsize=7)
    fig.suptitle("simulated vs live median (grey: live runs disagree by more than 10%, not judged)")
    return fig


def validate(p: dict) -> str | None:
    if p["repeat"] < 1 or p["requests"] < 8 or p["seeds"] < 1:
        return "--repeat and --seeds must be >= 1 and --requests >= 8"
    unknown = sorted(set(p["scenarios"].split(",")) - set(SCENARIOS)) if p["scenarios"] != "all" else []
    if unknown:
        return f"unknown scenario(s) {', '.join(unknown)}; --scenarios takes all or some of {', '.join(SCENARIOS)}"
    unknown = sorted(set(p["configs"].split(",")) - set(CONFIGS)) if p["configs"] != "all" else []
    if unknown:
        return f"unknown config(s) {', '.join(unknown)}; --configs takes all or some of {', '.join(CONFIGS)}"
    if p["resimulate"] and not os.path.isfile(p["resimulate"]):
        return f"--resimulate {p['resimulate']}: no such result file"
    return None


SUITE = Suite(
    "validate-sim",
    __doc__,
    measure,
    report,
    SIZES,
    draw=draw,
    host_only=True,
    validate=validate,
    options=(
        Option("--requests", int, "calls per scenario"),
        Option("--repeat", int, "live runs of each"),
        Option("--seeds", int, "simulated runs of each (median)"),
        Option("--rate", float, "open-loop calls/s"),
        Option("--scenarios", str, "comma-separated scenario names, or all"),
        Option("--configs", str, "comma-separated placement configs of the scenarios that run them all, or all"),
        Option("--resimulate", str, "simulate again against the live runs recorded in this result file"),
    ),
)


if __name__ == "__main__":
    raise SystemExit(main(suite="validate-sim"))

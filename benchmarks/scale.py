"""Scale: requests per second through one scheduler as workers and tenants grow, and its CPU per request.

Grid: workers W in (1, 2, 4) x tenants T in (1, 4, 16) (``--quick``: W in
(1, 2) x T in (1, 4)), bounded by what a 2-core machine can host (the
scheduler, the client and W worker processes share the cores). One
``LocalKaasCluster`` per W, policy ``affinity``; tenants switched within it.

Request: tiny on purpose, so that the scheduler's path dominates: ``y = x + w``
(builtin ``vadd``, n = 256 float32: 1 KiB), ``x`` passed in the call, ``w`` the
tenant's const in its namespace (cached after the first request on a worker).
Tenants take turns round-robin over ``requests`` requests; at most ``window``
(16, whatever W) in flight, so the same load is offered to every cell and the
KaaS fair queue on the scheduler holds what the workers' slots (2 per worker)
do not. Every result is checked against NumPy (``WrongResult`` otherwise).

Baseline per W: the same inputs through a plain Dask task (``x + w`` in a
Python function, no KaaS), same window: what Dask's own path costs.

Scheduler CPU: the client connects by address, so it runs its own event loop
thread and the scheduler's event loop thread does only the scheduler's work;
``client.run_on_scheduler`` reads ``time.thread_time()`` there (and
``time.process_time()`` of the whole process, which also holds the client)
before and after a run; per request = delta / requests (the two
``run_on_scheduler`` calls themselves are included, a few hundred us over a run).
Each cell repeated ``repeat`` times (3): medians with min/max.

    python -m benchmarks.scale [--quick] [--device host]
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

import numpy as np

from benchmarks.common import (WrongResult, resolve_device, result_name, results_dir, save_plot, spread, suite_main,
                               write_result)

N = 256
WINDOW = 16
FULL = {"workers": (1, 2, 4), "tenants": (1, 4, 16), "requests": 300, "repeat": 3}
QUICK = {"workers": (1, 2), "tenants": (1, 4), "requests": 120, "repeat": 3}


def vadd_request(tenant: str):
    from dask_kaas import BufferSpec, KernelSpec, Literal, Request

    x = BufferSpec("x", 4 * N, dtype="float32", ephemeral=True)
    w = BufferSpec("w", 4 * N, key="w", const=True)
    y = BufferSpec("y", 4 * N, dtype="float32", ephemeral=True)
    return Request([KernelSpec("builtin", "vadd", 1, 256, literals=[Literal("i", N)],
                               arguments=[(x, "i"), (w, "i"), (y, "o")])], tenant=tenant)


def plain_add(x: np.ndarray, w: np.ndarray) -> dict:
    """The Dask baseline: an ordinary task doing the same arithmetic."""
    return {"y": x + w}


def _cpu_clocks(dask_scheduler=None) -> tuple[float, float, int]:
    return time.thread_time(), time.process_time(), threading.get_ident()


def run_cell(client, jobs, *, plain: bool) -> dict:
    """Submit ``jobs`` [(request, x, w, expected)] with at most WINDOW in flight; verify every result."""
    from distributed import as_completed

    n = len(jobs)
    it = iter(range(n))
    index, wrong, failed = {}, [], []
    submitted, latencies = [0.0] * n, [0.0] * n
    stream = as_completed()

    def submit_next():
        i = next(it, None)
        if i is None:
            return
        request, x, w, _ = jobs[i]
        submitted[i] = time.perf_counter()
        future = client.submit(plain_add, x, w, pure=False) if plain else client.submit(request, pure=False, x=x)
        index[future.key] = i
        stream.add(future)

    t0, p0, tid0 = client.run_on_scheduler(_cpu_clocks)
    main0 = time.thread_time()
    start = time.perf_counter()
    for _ in range(WINDOW):
        submit_next()
    for future in stream:
        i = index.pop(future.key)
        latencies[i] = time.perf_counter() - submitted[i]
        submit_next()
        try:
            if not np.array_equal(future.result()["y"], jobs[i][3]):
                wrong.append(i)
        except Exception as e:  # reported, and fails the run below
            failed.append((i, repr(e)))
    elapsed = time.perf_counter() - start
    main1 = time.thread_time()
    t1, p1, tid1 = client.run_on_scheduler(_cpu_clocks)
    if wrong or failed:
        raise WrongResult(f"{'plain' if plain else 'kaas'}: {len(wrong)} wrong and {len(failed)} failed of {n} "
                          f"(first: {wrong[:3]} {failed[:3]})")
    if tid0 != tid1:
        raise RuntimeError("run_on_scheduler ran on two different threads: the CPU figures would be meaningless")
    lat = np.array(latencies) * 1e3
    return {
        "throughput_rps": n / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "scheduler_cpu_us_per_request": (t1 - t0) / n * 1e6,
        "process_cpu_us_per_request": (p1 - p0) / n * 1e6,
        "client_main_thread_cpu_us_per_request": (main1 - main0) / n * 1e6,
        "scheduler_cpu_utilisation": (t1 - t0) / elapsed,
        "loadavg_1m_after": os.getloadavg()[0],
    }


KEYS = ("throughput_rps", "p50_ms", "p99_ms", "scheduler_cpu_us_per_request", "process_cpu_us_per_request",
        "client_main_thread_cpu_us_per_request", "scheduler_cpu_utilisation")


def measure(*, device: str, workers: tuple, tenants: tuple, requests: int, repeat: int, log=print) -> dict:
    from distributed import Client

    from dask_kaas import LocalKaasCluster
    from dask_kaas.store import BufferStore

    rng = np.random.default_rng(0)
    root = tempfile.mkdtemp(prefix="kaas-scale-")
    cells, plain = [], []
    try:
        store = BufferStore(f"file://{root}/store")
        names = [f"tenant-{t:02d}" for t in range(max(tenants))]
        weights = {}
        for name in names:
            weights[name] = rng.standard_normal(N).astype(np.float32)
            store.put("w", weights[name], namespace=name)
        reqs = {name: vadd_request(name) for name in names}
        xs = [rng.standard_normal(N).astype(np.float32) for _ in range(requests)]

        def jobs_for(t: int):
            return [(reqs[names[i % t]], xs[i], weights[names[i % t]], xs[i] + weights[names[i % t]])
                    for i in range(requests)]

        for w in workers:
            with LocalKaasCluster(n_workers=w, device=device, device_memory="16MiB", store=store, policy="affinity",
                                  dashboard_address=":0") as cluster, Client(cluster.scheduler_address) as client:
                if client.loop is cluster.loop:
                    raise RuntimeError("the client shares the scheduler's event loop: its CPU would be counted")
                # warm up: every tenant's const on the workers, imports, the scheduler's runtime model
                run_cell(client, jobs_for(max(tenants))[: max(4 * WINDOW, 2 * max(tenants) * w)], plain=False)
                run_cell(client, jobs_for(1)[: 2 * WINDOW], plain=True)
                runs = {t: [] for t in tenants}
                base = []
                for rep in range(repeat):
                    base.append(run_cell(client, jobs_for(1), plain=True))
                    for t in tenants:
                        runs[t].append(run_cell(client, jobs_for(t), plain=False))
                        r = runs[t][-1]
                        log(f"  W={w} T={t:<2} run {rep + 1}: {r['throughput_rps']:6.0f} req/s, p50 {r['p50_ms']:5.1f} ms, "
                            f"scheduler {r['scheduler_cpu_us_per_request']:5.0f} us CPU/request "
                            f"({r['scheduler_cpu_utilisation']:.0%} of a core)")
                    log(f"  W={w} plain Dask run {rep + 1}: {base[-1]['throughput_rps']:6.0f} req/s, scheduler "
                        f"{base[-1]['scheduler_cpu_us_per_request']:5.0f} us CPU/task")
                for t in tenants:
                    cells.append({"workers": w, "tenants": t, "runs": runs[t],
                                  **{k: spread(r[k] for r in runs[t]) for k in KEYS}})
                plain.append({"workers": w, "runs": base, **{k: spread(r[k] for r in base) for k in KEYS}})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"cells": cells, "plain_dask": plain}


def _plot(result: dict, path: str) -> str | None:
    def draw(plt):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for t in result["parameters"]["tenants"]:
            cells = [c for c in result["cells"] if c["tenants"] == t]
            ws = [c["workers"] for c in cells]
            for ax, key in ((ax1, "throughput_rps"), (ax2, "scheduler_cpu_us_per_request")):
                med = np.array([c[key]["median"] for c in cells])
                err = [med - [c[key]["min"] for c in cells], np.array([c[key]["max"] for c in cells]) - med]
                ax.errorbar(ws, med, yerr=err, marker="o", capsize=3, label=f"KaaS, {t} tenant(s)")
        ws = [c["workers"] for c in result["plain_dask"]]
        for ax, key in ((ax1, "throughput_rps"), (ax2, "scheduler_cpu_us_per_request")):
            ax.plot(ws, [c[key]["median"] for c in result["plain_dask"]], "k--", marker="s", label="plain Dask task")
            ax.set_xlabel("workers")
            ax.set_xticks(ws)
        ax1.set_ylabel("requests / s")
        ax2.set_ylabel("scheduler CPU per request (us)")
        ax1.legend(fontsize=8)
        return fig

    return save_plot(path, draw)


def run(device: str = "auto", quick: bool = False, log=print) -> dict:
    kind = resolve_device(device)
    params = QUICK if quick else FULL
    name = result_name("scale", device, quick)
    started = time.perf_counter()
    result = measure(device=device, log=log, **params)
    payload = {
        "suite": "scale",
        "device": kind,
        "device_requested": device,
        "quick": quick,
        "parameters": {**params, "window": WINDOW, "policy": "affinity",
                       "request": f"y = x + w, builtin vadd, n = {N} float32; w the tenant's const",
                       "tenant_order": "round-robin",
                       "scheduler_cpu": "thread_time of the scheduler's event loop thread (the client runs its "
                                        "own loop thread), delta over a run / requests",
                       "process_cpu": "process_time of the scheduler's process, which also holds the client"},
        **result,
        "wall_s": time.perf_counter() - started,
        "machine_load": {
            "loadavg_1m_after_each_run": spread(r["loadavg_1m_after"] for c in result["cells"] + result["plain_dask"]
                                                for r in c["runs"]),
            "note": "a 1-minute load average well above W + 1 means something else ran beside the benchmark"},
    }
    png = os.path.join(results_dir(), f"{name}.png")  # beside the JSON (KAAS_BENCH_RESULTS when set)
    plotted = _plot(payload, png)
    payload["plot"] = os.path.basename(plotted) if plotted else None
    if plotted is None:
        payload["plot_note"] = "matplotlib is not installed: no plot"
    payload["path"] = write_result(name, payload)
    return payload


def _print_table(payload: dict) -> None:
    print(f"\n{'W':>2} {'T':>3} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'sched us/req':>13} {'sched core':>11} "
          f"{'process us/req':>15}")
    rows = [(c["workers"], str(c["tenants"]), c) for c in payload["cells"]]
    rows += [(c["workers"], "dask", c) for c in payload["plain_dask"]]
    for w, t, c in sorted(rows, key=lambda r: (r[0], r[1] == "dask", r[1].zfill(3))):
        print(f"{w:>2} {t:>4} {c['throughput_rps']['median']:>6.0f} {c['p50_ms']['median']:>7.1f} "
              f"{c['p99_ms']['median']:>7.1f} {c['scheduler_cpu_us_per_request']['median']:>13.0f} "
              f"{c['scheduler_cpu_utilisation']['median']:>11.0%} {c['process_cpu_us_per_request']['median']:>15.0f}")


def main(argv=None) -> int:
    return suite_main(__doc__, "workers (1, 2) x tenants (1, 4), 120 requests", run, _print_table, argv)


if __name__ == "__main__":
    raise SystemExit(main())

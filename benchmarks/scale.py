"""Scale: the scheduler's CPU per KaaS task as workers and tenants grow, against Dask's own per task.

Grid: workers W in (4, 16, 64, 100) x tenants T in (1, 8, 64) (``--quick``: W in (4, 16) x T in
(1, 8)). The scheduler (with the KaaS plugin) runs in this process on its own event loop thread;
the client connects by address and runs its own loop thread; the W workers are lightweight: all
in one other process (``benchmarks.worker_pool``), one thread and a 16 MiB host device each, so
that 100 of them fit a small machine. What is measured is the scheduler, not the workers.

Request: tiny on purpose, so that the scheduler's path dominates: ``y = x + w`` (builtin
``vadd``, n = 256 float32), ``x`` passed in the call, ``w`` the tenant's const (cached after its
first request on a worker). Tenants take turns round robin; ``window`` = min(2 W, 128) in flight.
Every result is checked against NumPy (``WrongResult`` otherwise).

Baseline per W: a no-op plain Dask task with the same ``GPU`` resource restriction, same window:
what Dask itself spends per GPU-restricted task.

Figures per cell, each the median of ``repeat`` runs:

- ``scheduler_cpu_us_per_task``: ``time.thread_time()`` of the scheduler's event loop thread,
  delta over a run / tasks (read with ``run_on_scheduler``, whose own cost is included);
- ``plugin_cpu_us_per_task``: the KaaS plugin's own code, from timers around its hooks inside the
  scheduler (``benchmarks.schedcost``), the timers' own cost subtracted;
- ``dask_cpu_us_per_task``: for the baseline, the scheduler's CPU less the plugin's (which also
  sees plain tasks, and does next to nothing with them);
- ``plugin_over_dask``: the plugin's CPU per KaaS task over Dask's own per GPU-restricted task
  (target <= 10%, flat as W and T grow), and requests per second.

    python -m benchmarks scale [--quick]
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from benchmarks import schedcost
from benchmarks.common import Suite, WrongResult, main, met, spread

N = 256
SIZES = {"full": {"workers": (4, 16, 64, 100), "tenants": (1, 8, 64), "requests": 600, "repeat": 3},
         "quick": {"workers": (4, 16), "tenants": (1, 8), "requests": 160, "repeat": 2},
         "smoke": {"workers": (2,), "tenants": (1, 2), "requests": 8, "repeat": 1}}
TARGET = 0.10


def vadd_request(tenant: str):
    from dask_kaas import BufferSpec, KernelSpec, Literal, Request

    x = BufferSpec("x", 4 * N, dtype="float32", ephemeral=True)
    w = BufferSpec("w", 4 * N, key="w", const=True)
    y = BufferSpec("y", 4 * N, dtype="float32", ephemeral=True)
    return Request([KernelSpec("builtin", "vadd", 1, 256, literals=[Literal("i", N)],
                               arguments=[(x, "i"), (w, "i"), (y, "o")])], tenant=tenant)


def noop() -> None:
    return None


def _clocks(dask_scheduler=None) -> tuple[float, int]:
    return time.thread_time(), threading.get_ident()


def run_cell(client, jobs, *, window: int, plain: bool) -> dict:
    """Submit ``jobs`` [(request, x, expected)] with at most ``window`` in flight; verify every result."""
    from dask_kaas.demo import run_windowed

    n = len(jobs)
    wrong = []

    def submit(i):
        request, x, _ = jobs[i]
        return (client.submit(noop, pure=False, resources={"GPU": 1}) if plain
                else client.submit(request, pure=False, x=x))

    def done(i, future, latency):
        out = future.result()
        if not plain and not np.array_equal(out["y"], jobs[i][2]):
            wrong.append(i)

    client.run_on_scheduler(schedcost.reset)
    cpu0, tid0 = client.run_on_scheduler(_clocks)
    elapsed = run_windowed(client, n, submit, done, window=window)
    cpu1, tid1 = client.run_on_scheduler(_clocks)
    timers = client.run_on_scheduler(schedcost.read)
    if wrong:
        raise WrongResult(f"scale: {len(wrong)} wrong results of {n} (first: {wrong[:3]})")
    if tid0 != tid1:
        raise RuntimeError("run_on_scheduler ran on two different threads: the CPU figures would be meaningless")
    plugin = schedcost.scheduler_cost(timers, n)
    return {
        "throughput_rps": n / elapsed,
        "scheduler_cpu_us_per_task": (cpu1 - cpu0) / n * 1e6,
        "plugin_cpu_us_per_task": plugin["plugin_cpu_us_per_task"],
        "plugin_hooks": plugin["hooks"],
        "loadavg_1m_after": os.getloadavg()[0],
    }


class WorkerPool:
    """``n`` lightweight KaaS workers in one subprocess."""

    def __init__(self, address: str, n: int, store: str, device: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker_pool", address, str(n), "--kaas",
                                      "--device", device, "--store", store], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except Exception:  # noqa: BLE001 - a pool that will not stop is killed
            self.proc.kill()
            self.proc.wait()


def measure(*, device: str, workers: tuple, tenants: tuple, requests: int, repeat: int, log=print) -> dict:
    from distributed import Client, LocalCluster

    from dask_kaas import KaasSchedulerPlugin
    from dask_kaas.store import BufferStore

    rng = np.random.default_rng(0)
    root = tempfile.mkdtemp(prefix="kaas-scale-")
    cells, plain = [], []
    try:
        url = f"file://{root}/store"
        store = BufferStore(url)
        names = [f"tenant-{t:02d}" for t in range(max(tenants))]
        weights = {}
        for name in names:
            weights[name] = rng.standard_normal(N).astype(np.float32)
            store.put("w", weights[name], namespace=name)
        reqs = {name: vadd_request(name) for name in names}
        xs = [rng.standard_normal(N).astype(np.float32) for _ in range(requests)]

        def jobs_for(t: int):
            return [(reqs[names[i % t]], xs[i], xs[i] + weights[names[i % t]]) for i in range(requests)]

        with LocalCluster(n_workers=0, processes=True, dashboard_address=":0",
                          scheduler_kwargs={"plugins": [KaasSchedulerPlugin(policy="affinity")]}) as cluster, \
                Client(cluster.scheduler_address) as client:
            if client.loop is cluster.loop:
                raise RuntimeError("the client shares the scheduler's event loop: its CPU would be counted")
            client.run_on_scheduler(schedcost.install)
            for w in workers:
                pool = WorkerPool(cluster.scheduler_address, w, url, device)
                try:
                    client.wait_for_workers(w, timeout=300)
                    window = min(2 * w, 128)
                    # warm up: every tenant's const on workers, the runtime model, both paths
                    run_cell(client, jobs_for(max(tenants))[: max(2 * window, 2 * max(tenants))], window=window,
                             plain=False)
                    run_cell(client, jobs_for(1)[: 2 * window], window=window, plain=True)
                    runs = {t: [] for t in tenants}
                    base = []
                    for rep in range(repeat):
                        base.append(run_cell(client, jobs_for(1), window=window, plain=True))
                        b = base[-1]
                        b["dask_cpu_us_per_task"] = b["scheduler_cpu_us_per_task"] - b["plugin_cpu_us_per_task"]
                        log(f"  W={w:<3} plain GPU task  run {rep + 1}: {b['throughput_rps']:6.0f} tasks/s, scheduler "
                            f"{b['scheduler_cpu_us_per_task']:5.0f} us CPU/task (Dask {b['dask_cpu_us_per_task']:.0f})")
                        for t in tenants:
                            r = run_cell(client, jobs_for(t), window=window, plain=False)
                            r["plugin_over_dask"] = r["plugin_cpu_us_per_task"] / b["dask_cpu_us_per_task"]
                            runs[t].append(r)
                            log(f"  W={w:<3} T={t:<3} run {rep + 1}: {r['throughput_rps']:6.0f} req/s, scheduler "
                                f"{r['scheduler_cpu_us_per_task']:5.0f} us CPU/task, plugin "
                                f"{r['plugin_cpu_us_per_task']:5.1f} us ({r['plugin_over_dask']:.1%} of Dask's)")
                    keys = ("throughput_rps", "scheduler_cpu_us_per_task", "plugin_cpu_us_per_task", "plugin_over_dask")
                    for t in tenants:
                        cells.append({"workers": w, "tenants": t, "window": window, "runs": runs[t],
                                      **{k: spread(r[k] for r in runs[t]) for k in keys}})
                    plain.append({"workers": w, "window": window, "runs": base,
                                  **{k: spread(r[k] for r in base) for k in
                                     ("throughput_rps", "scheduler_cpu_us_per_task", "plugin_cpu_us_per_task",
                                      "dask_cpu_us_per_task")}})
                finally:
                    pool.close()
                    deadline = time.time() + 60
                    while client.scheduler_info()["workers"] and time.time() < deadline:
                        time.sleep(0.2)
            client.run_on_scheduler(schedcost.remove)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    worst = max(c["plugin_over_dask"]["median"] for c in cells)
    return {"cells": cells, "plain_dask": plain,
            "target": {"rule": f"plugin CPU per KaaS task <= {TARGET:.0%} of Dask's own per GPU-restricted task, "
                               "at every W and T", "worst": worst, "met": bool(worst <= TARGET)}}


def draw(result: dict, plt):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for t in result["parameters"]["tenants"]:
        cells = [c for c in result["cells"] if c["tenants"] == t]
        ws = [c["workers"] for c in cells]
        ax1.plot(ws, [c["plugin_cpu_us_per_task"]["median"] for c in cells], "o-", label=f"KaaS plugin, T={t}")
        ax2.plot(ws, [c["throughput_rps"]["median"] for c in cells], "o-", label=f"KaaS, T={t}")
    ws = [c["workers"] for c in result["plain_dask"]]
    ax1.plot(ws, [c["dask_cpu_us_per_task"]["median"] for c in result["plain_dask"]], "k--", marker="s",
             label="Dask, GPU-restricted no-op")
    ax1.plot(ws, [TARGET * c["dask_cpu_us_per_task"]["median"] for c in result["plain_dask"]], "k:",
             label=f"{TARGET:.0%} of Dask")
    ax2.plot(ws, [c["throughput_rps"]["median"] for c in result["plain_dask"]], "k--", marker="s",
             label="plain GPU-restricted no-op")
    for ax in (ax1, ax2):
        ax.set_xlabel("workers")
        ax.set_xscale("log")
        ax.set_xticks(ws, [str(w) for w in ws])
    ax1.set_ylabel("scheduler CPU per task (us)")
    ax1.set_yscale("log")
    ax2.set_ylabel("tasks / s")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    return fig


def report(payload: dict):
    yield f"{'W':>4} {'T':>4} {'req/s':>7} {'sched us':>9} {'plugin us':>10} {'of Dask':>8}"
    for c in payload["cells"]:
        yield (f"{c['workers']:>4} {c['tenants']:>4} {c['throughput_rps']['median']:>7.0f} "
               f"{c['scheduler_cpu_us_per_task']['median']:>9.0f} {c['plugin_cpu_us_per_task']['median']:>10.1f} "
               f"{c['plugin_over_dask']['median']:>8.1%}")
    for c in payload["plain_dask"]:
        yield (f"{c['workers']:>4} dask {c['throughput_rps']['median']:>7.0f} "
               f"{c['scheduler_cpu_us_per_task']['median']:>9.0f} {'':>10} "
               f"(Dask's own {c['dask_cpu_us_per_task']['median']:.0f} us)")
    t = payload["target"]
    yield f"plugin CPU per task, worst cell: {t['worst']:.1%} of Dask's own (target <= {TARGET:.0%}: {met(t['met'])})"


def measure_suite(config, p: dict) -> dict:
    return {
        "parameters": {**p, "window": "min(2 x workers, 128)", "policy": "affinity",
                       "request": f"y = x + w, builtin vadd, n = {N} float32; w the tenant's const",
                       "workers_process": "all workers in one process (benchmarks.worker_pool), 16 MiB host "
                                          "devices, one thread each",
                       "tenant_order": "round-robin"},
        "method": __doc__.split("\n\n", 1)[1],
        **measure(device=config.device, log=config.log, **p),
    }


SUITE = Suite("scale", __doc__, measure_suite, report, SIZES, draw=draw)


if __name__ == "__main__":  # python -m benchmarks.scale ...: the same as python -m benchmarks scale ...
    raise SystemExit(main(suite="scale"))

"""Scale: the scheduler's CPU per KaaS task as workers and tenants grow, against Dask's own per task.

Grid: workers W in (4, 16, 64, 100) x tenants T in (1, 8, 64) (``--quick``: W in (4, 16) x T in
(1, 8)) x submission mode (``--modes``, both by default). The scheduler (with the KaaS plugin) runs
in this process on its own event loop thread; the client connects by address and runs its own loop
thread; the W workers are lightweight: all in one other process (``benchmarks.worker_pool``), one
thread and a 16 MiB host device each, so that 100 of them fit a small machine. What is measured is
the scheduler, not the workers.

Request: tiny on purpose, so that the scheduler's path dominates: ``y = x + w`` (builtin
``vadd``, n = 256 float32), ``x`` passed in the call, ``w`` the tenant's const (cached after its
first request on a worker). Tenants take turns round robin. Every result is checked against NumPy
(``WrongResult`` otherwise).

Submission modes, the same jobs in each:

- ``separate``: one ``client.submit`` per task (one graph update each), ``window`` =
  min(2 W, 128) in flight, a new task submitted as each finishes;
- ``graph``: all the run's tasks as ONE graph (``dask.delayed(request, pure=False)(x=x)`` per
  task, ``client.compute`` once: one ``update_graph`` on the scheduler), then one gather; the
  futures are then released and the run ends when the scheduler has forgotten every task, so that
  the release is counted as in ``separate`` (where each future is released as it finishes).

Baseline per W and mode: a no-op plain Dask task with the same ``GPU`` resource restriction,
submitted the same way (``separate``: ``client.submit(noop, resources={"GPU": 1})``, same window;
``graph``: ``dask.delayed(noop, pure=False)()`` under ``dask.annotate(resources={"GPU": 1})``, one
graph): what Dask itself spends per GPU-restricted task.

Figures per cell (W, T, mode), each the median of ``repeat`` runs:

- ``scheduler_cpu_us_per_task``: ``time.thread_time()`` of the scheduler's event loop thread,
  delta over a run / tasks (read with ``run_on_scheduler``, whose own cost is included);
- ``scheduler_offload_cpu_us_per_task``: CPU of Dask's offload thread (``distributed.utils``;
  shared by everything in this process; in practice the scheduler's materialization and ordering
  of each graph update, which Dask runs off the event loop: one update per task in ``separate``,
  one per run in ``graph``), per task, recorded beside the event loop's but not in it;
- ``plugin_cpu_us_per_task``: the KaaS plugin's own code, from timers around its hooks inside the
  scheduler (``benchmarks.schedcost``), the timers' own cost subtracted;
- ``dask_cpu_us_per_task``: for the baseline, the scheduler's (event loop's) CPU less the plugin's
  (which also sees plain tasks, and does next to nothing with them);
- ``plugin_over_dask``: the plugin's CPU per KaaS task over Dask's own per GPU-restricted task in
  the SAME mode (target <= 10% in every cell of both modes, flat as W and T grow), and requests
  per second.

    python -m benchmarks scale [--quick] [--workers 64] [--tenants 8] [--modes separate,graph]
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
from benchmarks.common import Option, Suite, WrongResult, main, met, spread

N = 256
MODES = ("separate", "graph")
SIZES = {
    "full": {"workers": (4, 16, 64, 100), "tenants": (1, 8, 64), "modes": MODES, "requests": 600, "repeat": 3},
    "quick": {"workers": (4, 16), "tenants": (1, 8), "modes": MODES, "requests": 160, "repeat": 2},
    "smoke": {"workers": (2,), "tenants": (1, 2), "modes": MODES, "requests": 8, "repeat": 1},
}
TARGET = 0.10


def vadd_request(tenant: str, n: int = N):
    from dask_kaas import BufferSpec, KernelSpec, Literal, Request

    x = BufferSpec("x", 4 * n, dtype="float32", ephemeral=True)
    w = BufferSpec("w", 4 * n, key="w", const=True)
    y = BufferSpec("y", 4 * n, dtype="float32", ephemeral=True)
    return Request(
        [
            KernelSpec(
                "builtin",
                "vadd",
                -(-n // 256),
                256,
                literals=[Literal("i", n)],
                arguments=[(x, "i"), (w, "i"), (y, "o")],
            )
        ],
        tenant=tenant,
    )


def noop() -> None:
    return None


def _offload_cpu() -> float:
    """CPU seconds of Dask's offload thread(s) in this process (0 where there is none yet)."""
    try:
        from distributed.utils import _offload_executor

        threads = list(_offload_executor._threads)
    except (ImportError, AttributeError):
        return 0.0
    total = 0.0
    for t in threads:
        try:
            total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, AttributeError, TypeError):  # a thread gone, or no per-thread clocks here
            pass
    return total


def _clocks(dask_scheduler=None) -> tuple[float, int, float]:
    return time.thread_time(), threading.get_ident(), _offload_cpu()


async def _drained(dask_scheduler=None, timeout: float = 60.0) -> int:
    """Wait (on the scheduler's loop) until it holds no task; the tasks left (0 unless timed out)."""
    import asyncio

    deadline = time.monotonic() + timeout
    while dask_scheduler.tasks and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    return len(dask_scheduler.tasks)


def _run_separate(client, jobs, *, window: int, plain: bool, wrong: list) -> float:
    from dask_kaas.demo import run_windowed

    def submit(i):
        request, x, _ = jobs[i]
        return (
            client.submit(noop, pure=False, resources={"GPU": 1}) if plain else client.submit(request, pure=False, x=x)
        )

    def done(i, future, latency):
        out = future.result()
        if not plain and not np.array_equal(out["y"], jobs[i][2]):
            wrong.append(i)

    return run_windowed(client, len(jobs), submit, done, window=window)


def _run_graph(client, jobs, *, plain: bool, wrong: list) -> float:
    import dask

    start = time.perf_counter()
    if plain:
        with dask.annotate(resources={"GPU": 1}):
            tasks = [dask.delayed(noop, pure=False)() for _ in jobs]
    else:
        tasks = [dask.delayed(request, pure=False)(x=x) for request, x, _ in jobs]
    futures = client.compute(tasks)
    outs = client.gather(futures)
    elapsed = time.perf_counter() - start
    del futures, tasks  # released, as each future of a separate run is when it finishes
    left = client.run_on_scheduler(_drained)
    if left:
        raise RuntimeError(f"scale: the scheduler still holds {left} tasks a minute after a graph run")
    if not plain:
        wrong.extend(i for i, (out, job) in enumerate(zip(outs, jobs)) if not np.array_equal(out["y"], job[2]))
    return elapsed


def run_cell(client, jobs, *, window: int, plain: bool, mode: str = "separate") -> dict:
    """Run ``jobs`` [(request, x, expected)] in ``mode`` (separate: at most ``window`` in flight;
    graph: one graph); verify every result."""
    n = len(jobs)
    wrong = []
    client.run_on_scheduler(schedcost.reset)
    cpu0, tid0, off0 = client.run_on_scheduler(_clocks)
    if mode == "separate":
        elapsed = _run_separate(client, jobs, window=window, plain=plain, wrong=wrong)
    elif mode == "graph":
        elapsed = _run_graph(client, jobs, plain=plain, wrong=wrong)
    else:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    cpu1, tid1, off1 = client.run_on_scheduler(_clocks)
    timers = client.run_on_scheduler(schedcost.read)
    if wrong:
        raise WrongResult(f"scale ({mode}): {len(wrong)} wrong results of {n} (first: {wrong[:3]})")
    if tid0 != tid1:
        raise RuntimeError("run_on_scheduler ran on two different threads: the CPU figures would be meaningless")
    plugin = schedcost.scheduler_cost(timers, n)
    return {
        "mode": mode,
        "throughput_rps": n / elapsed,
        "scheduler_cpu_us_per_task": (cpu1 - cpu0) / n * 1e6,
        "scheduler_offload_cpu_us_per_task": max(0.0, off1 - off0) / n * 1e6,
        "plugin_cpu_us_per_task": plugin["plugin_cpu_us_per_task"],
        "plugin_hooks": plugin["hooks"],
        "loadavg_1m_after": os.getloadavg()[0],
    }


class WorkerPool:
    """``n`` lightweight KaaS workers in one subprocess."""

    def __init__(self, address: str, n: int, store: str, device: str):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.worker_pool",
                address,
                str(n),
                "--kaas",
                "--device",
                device,
                "--store",
                store,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()
            self.proc.wait()


CELL_KEYS = (
    "throughput_rps",
    "scheduler_cpu_us_per_task",
    "scheduler_offload_cpu_us_per_task",
    "plugin_cpu_us_per_task",
    "plugin_over_dask",
)
PLAIN_KEYS = (
    "throughput_rps",
    "scheduler_cpu_us_per_task",
    "scheduler_offload_cpu_us_per_task",
    "plugin_cpu_us_per_task",
    "dask_cpu_us_per_task",
)


def measure(
    *, device: str, workers: tuple, tenants: tuple, requests: int, repeat: int, modes: tuple = MODES, log=print
) -> dict:
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

        with (
            LocalCluster(
                n_workers=0,
                processes=True,
                dashboard_address=":0",
                scheduler_kwargs={"plugins": [KaasSchedulerPlugin(policy="affinity")]},
            ) as cluster,
            Client(cluster.scheduler_address) as client,
        ):
            if client.loop is cluster.loop:
                raise RuntimeError("the client shares the scheduler's event loop: its CPU would be counted")
            client.run_on_scheduler(schedcost.install)
            for w in workers:
                pool = WorkerPool(cluster.scheduler_address, w, url, device)
                try:
                    client.wait_for_workers(w, timeout=300)
                    window = min(2 * w, 128)
                    # warm up: every tenant's const on workers, the runtime model, both paths in every mode
                    for mode in modes:
                        run_cell(
                            client,
                            jobs_for(max(tenants))[: max(2 * window, 2 * max(tenants))],
                            window=window,
                            plain=False,
                            mode=mode,
                        )
                        run_cell(client, jobs_for(1)[: 2 * window], window=window, plain=True, mode=mode)
                    runs = {(m, t): [] for m in modes for t in tenants}
                    base = {m: [] for m in modes}
                    for rep in range(repeat):
                        for mode in modes:
                            b = run_cell(client, jobs_for(1), window=window, plain=True, mode=mode)
                            b["dask_cpu_us_per_task"] = b["scheduler_cpu_us_per_task"] - b["plugin_cpu_us_per_task"]
                            base[mode].append(b)
                            log(
                                f"  {mode:<8} W={w:<3} plain GPU task  run {rep + 1}: {b['throughput_rps']:6.0f} "
                                f"tasks/s, scheduler {b['scheduler_cpu_us_per_task']:5.0f} us CPU/task "
                                f"(Dask {b['dask_cpu_us_per_task']:.0f}, offload "
                                f"{b['scheduler_offload_cpu_us_per_task']:.0f})"
                            )
                            for t in tenants:
                                r = run_cell(client, jobs_for(t), window=window, plain=False, mode=mode)
                                r["plugin_over_dask"] = r["plugin_cpu_us_per_task"] / b["dask_cpu_us_per_task"]
                                runs[mode, t].append(r)
                                log(
                                    f"  {mode:<8} W={w:<3} T={t:<3} run {rep + 1}: {r['throughput_rps']:6.0f} req/s, "
                                    f"scheduler {r['scheduler_cpu_us_per_task']:5.0f} us CPU/task, plugin "
                                    f"{r['plugin_cpu_us_per_task']:5.1f} us ({r['plugin_over_dask']:.1%} of Dask's)"
                                )
                    for mode in modes:
                        win = window if mode == "separate" else None
                        for t in tenants:
                            cells.append(
                                {
                                    "mode": mode,
                                    "workers": w,
                                    "tenants": t,
                                    "window": win,
                                    "runs": runs[mode, t],
                                    **{k: spread(r[k] for r in runs[mode, t]) for k in CELL_KEYS},
                                }
                            )
                        plain.append(
                            {
                                "mode": mode,
                                "workers": w,
                                "window": win,
                                "runs": base[mode],
                                **{k: spread(r[k] for r in base[mode]) for k in PLAIN_KEYS},
                            }
                        )
                finally:
                    pool.close()
                    deadline = time.time() + 60
                    while client.scheduler_info()["workers"] and time.time() < deadline:
                        time.sleep(0.2)
            client.run_on_scheduler(schedcost.remove)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    by_mode = {m: max(c["plugin_over_dask"]["median"] for c in cells if c["mode"] == m) for m in modes}
    worst = max(by_mode.values())
    return {
        "cells": cells,
        "plain_dask": plain,
        "target": {
            "rule": f"plugin CPU per KaaS task <= {TARGET:.0%} of Dask's own per GPU-restricted task "
            "(same submission mode), at every W and T, in every mode",
            "worst": worst,
            "worst_by_mode": by_mode,
            "met": bool(worst <= TARGET),
        },
    }


def _mode(entry: dict) -> str:
    return entry.get("mode", "separate")  # results recorded before the graph mode: all separate


def _modes(result: dict) -> list:
    seen = [_mode(c) for c in result["cells"]]
    return [m for m in MODES if m in seen] + sorted(set(seen) - set(MODES))


def draw(result: dict, plt):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = {"separate": "-", "graph": "--"}
    colors = {t: f"C{i}" for i, t in enumerate(result["parameters"]["tenants"])}
    ws = sorted({c["workers"] for c in result["plain_dask"]})
    for mode in _modes(result):
        ls = styles.get(mode, ":")
        for t in result["parameters"]["tenants"]:
            cells = [c for c in result["cells"] if c["tenants"] == t and _mode(c) == mode]
            x = [c["workers"] for c in cells]
            ax1.plot(
                x,
                [c["plugin_cpu_us_per_task"]["median"] for c in cells],
                "o" + ls,
                color=colors[t],
                label=f"KaaS plugin, T={t}, {mode}",
            )
            ax2.plot(
                x,
                [c["throughput_rps"]["median"] for c in cells],
                "o" + ls,
                color=colors[t],
                label=f"KaaS, T={t}, {mode}",
            )
        base = [c for c in result["plain_dask"] if _mode(c) == mode]
        x = [c["workers"] for c in base]
        ax1.plot(
            x,
            [c["dask_cpu_us_per_task"]["median"] for c in base],
            "s" + ls,
            color="k",
            label=f"Dask, GPU-restricted no-op, {mode}",
        )
        ax1.plot(
            x,
            [TARGET * c["dask_cpu_us_per_task"]["median"] for c in base],
            ls,
            color="0.6",
            label=f"{TARGET:.0%} of Dask, {mode}",
        )
        ax2.plot(
            x,
            [c["throughput_rps"]["median"] for c in base],
            "s" + ls,
            color="k",
            label=f"plain GPU-restricted no-op, {mode}",
        )
    for ax in (ax1, ax2):
        ax.set_xlabel("workers")
        ax.set_xscale("log")
        ax.set_xticks(ws, [str(w) for w in ws])
    ax1.set_ylabel("scheduler CPU per task (us)")
    ax1.set_yscale("log")
    ax2.set_ylabel("tasks / s")
    ax1.legend(fontsize=6)
    ax2.legend(fontsize=6)
    return fig


def report(payload: dict):
    yield (
        f"{'mode':<8} {'W':>4} {'T':>4} {'req/s':>7} {'sched us':>9} {'offload':>8} {'plugin us':>10} {'of Dask':>8}"
    )

    def offload(c):
        s = c.get("scheduler_offload_cpu_us_per_task")
        return f"{s['median']:>8.0f}" if s else f"{'':>8}"

    for mode in _modes(payload):
        for c in payload["cells"]:
            if _mode(c) == mode:
                yield (
                    f"{mode:<8} {c['workers']:>4} {c['tenants']:>4} {c['throughput_rps']['median']:>7.0f} "
                    f"{c['scheduler_cpu_us_per_task']['median']:>9.0f} {offload(c)} "
                    f"{c['plugin_cpu_us_per_task']['median']:>10.1f} {c['plugin_over_dask']['median']:>8.1%}"
                )
        for c in payload["plain_dask"]:
            if _mode(c) == mode:
                yield (
                    f"{mode:<8} {c['workers']:>4} dask {c['throughput_rps']['median']:>7.0f} "
                    f"{c['scheduler_cpu_us_per_task']['median']:>9.0f} {offload(c)} {'':>10} "
                    f"(Dask's own {c['dask_cpu_us_per_task']['median']:.0f} us)"
                )
    t = payload["target"]
    by_mode = "".join(f"; {m} {v:.1%}" for m, v in t.get("worst_by_mode", {}).items())
    yield (
        f"plugin CPU per task, worst cell: {t['worst']:.1%} of Dask's own{by_mode} "
        f"(target <= {TARGET:.0%}: {met(t['met'])})"
    )


def _ints(text: str) -> tuple:
    return tuple(int(v) for v in str(text).split(",") if v.strip())


def _names(text: str) -> tuple:
    return tuple(v.strip() for v in str(text).split(",") if v.strip())


_ints.__name__, _names.__name__ = "comma-separated integers", "comma-separated names"


def validate(p: dict) -> str | None:
    if not p["workers"] or min(p["workers"]) < 1:
        return "--workers: one or more worker counts, each >= 1"
    if not p["tenants"] or min(p["tenants"]) < 1:
        return "--tenants: one or more tenant counts, each >= 1"
    if not p["modes"] or set(p["modes"]) - set(MODES):
        return f"--modes: a comma list of {', '.join(MODES)}, got {','.join(p['modes'])!r}"
    if p["requests"] < 1 or p["repeat"] < 1:
        return "--requests and --repeat must be >= 1"
    return None


def measure_suite(config, p: dict) -> dict:
    return {
        "parameters": {
            **p,
            "window": "separate: min(2 x workers, 128); graph: all the run's tasks at once",
            "policy": "affinity",
            "request": f"y = x + w, builtin vadd, n = {N} float32; w the tenant's const",
            "workers_process": "all workers in one process (benchmarks.worker_pool), 16 MiB host "
            "devices, one thread each",
            "tenant_order": "round-robin",
        },
        "method": __doc__.split("\n\n", 1)[1],
        **measure(device=config.device, log=config.log, **p),
    }


SUITE = Suite(
    "scale",
    __doc__,
    measure_suite,
    report,
    SIZES,
    draw=draw,
    validate=validate,
    options=(
        Option("--workers", _ints, "worker counts W, comma-separated"),
        Option("--tenants", _ints, "tenant counts T, comma-separated"),
        Option("--modes", _names, f"submission modes, comma-separated ({', '.join(MODES)})"),
        Option("--requests", int, "tasks per run"),
        Option("--repeat", int, "runs of each cell"),
    ),
)


if __name__ == "__main__":  # python -m benchmarks.scale ...: the same as python -m benchmarks scale ...
    raise SystemExit(main(suite="scale"))

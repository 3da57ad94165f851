"""Calibrate the simulator's host cost model on this machine, now (seconds, not minutes).

``python -m benchmarks calibrate [--quick | --smoke]`` measures what ``dask_kaas.sim.host_costs()``
needs and writes ``calibrate-host.json``, which ``host_costs()`` reads before any other result file
(and says, in its ``source``, when it is missing, stale, or from another machine):

- ``task_rate``: KaaS requests per second of tiny requests on 4 host workers (``dask kaas scheduler``,
  ``dask kaas worker --nworkers 4`` and the client as separate processes, one ``client.submit`` each
  from an asynchronous client, a window of 8 in flight, as ``validate-sim`` replays its scenarios);
- ``client_cpu_s``, ``scheduler_cpu_s``, ``worker_cpu_s``: each process's CPU per tiny request (the
  workers' summed), read from the operating system around the same run;
- ``byte_cpu_s``: the CPU of all of them per byte a request moves in and out, from the same run with
  requests moving 128 KiB each way;
- ``roundtrip_s`` and ``jitter_cv``: a no-op Dask task's round trip (the same asynchronous client),
  median and the log-normal spread of the runs;
- ``runtime_s``: the runtime's own cost per request (``overhead``'s in-process fit);
- ``store_bw`` and ``device_bw``: a worker's ``BufferStore.get`` of an 8 MiB const, and of 64 MiB
  (a host device's copy is a memcpy).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import Suite, WrongResult, main, spread

SIZES = {
    "full": {"requests": 400, "noops": 40, "rounds": 5, "batch": 200},
    "quick": {"requests": 200, "noops": 20, "rounds": 3, "batch": 100},
    "smoke": {"requests": 16, "noops": 4, "rounds": 1, "batch": 10},
}
WORKERS = 4
WINDOW = 8
TINY_FLOATS, IO_FLOATS = 256, 32768  # 1 KiB and 128 KiB in, and out, per request


def _cpu_per_task(client, pids: dict, run) -> tuple[dict, float]:
    """``run()`` (returns its task count) with each process's CPU read around it: ``({process: CPU
    seconds per task}, tasks per second)``; ``pids``: {"scheduler": pid, "workers": [pid, ...]}."""
    from benchmarks.deployed import process_cpu

    def read():
        return {
            "client": time.process_time(),
            "scheduler": process_cpu(pids["scheduler"]),
            "workers": sum(process_cpu(pid) for pid in pids["workers"]),
        }

    before, start = read(), time.perf_counter()
    n = run()
    elapsed, after = time.perf_counter() - start, read()
    return {k: (after[k] - before[k]) / n for k in before}, n / elapsed


def _live(p: dict, root: str) -> dict:
    """On a cluster deployed as users deploy it (``dask kaas scheduler``, ``dask kaas worker --nworkers 4``,
    the client here): :func:`cluster_figures`."""
    from distributed import Client

    from benchmarks.deployed import deployed_cluster
    from dask_kaas.store import BufferStore

    url = f"file://{root}/store"
    with deployed_cluster("host", WORKERS, store_url=url) as (address, _), Client(address) as client:
        return cluster_figures(client, BufferStore(url), p)


def cluster_figures(client, store, p: dict) -> dict:
    """On the cluster of ``client`` (its consts in ``store``): the tiny requests' rate and each process's
    CPU per request, the same for a request moving ``IO_FLOATS`` floats in and out, and a no-op task's
    round trip (``p``: ``requests``, ``noops``)."""
    from benchmarks.deployed import scheduler_pid
    from benchmarks.replay import LiveRun
    from benchmarks.scale import noop, vadd_request
    from dask_kaas.sim.workloads import Function, Workload

    rng = np.random.default_rng(0)
    cells = {}
    address = client.scheduler.address
    pids = {"scheduler": client.run_on_scheduler(scheduler_pid), "workers": list(client.run(os.getpid).values())}
    for name, n in (("tiny", TINY_FLOATS), ("io", IO_FLOATS)):
        w = rng.standard_normal(n).astype(np.float32)
        store.put("w", w, namespace=f"calibrate-{name}")
        req = vadd_request(f"calibrate-{name}", n)
        xs = [rng.standard_normal(n).astype(np.float32) for _ in range(p["requests"])]
        fn = Function(name, f"calibrate-{name}", (((f"calibrate-{name}", "w"), 4 * n),), 0.0)

        def run(count, xs=xs, w=w, req=req, fn=fn, name=name):
            """``count`` requests, ``WINDOW`` in flight, by the asynchronous client the scenarios use."""
            replay = LiveRun(
                Workload([fn], np.zeros(count), np.zeros(count, dtype=np.int64), window=WINDOW),
                [req] * count,
                xs[:count],
                [x + w for x in xs[:count]],
                [],
                None,
            )
            asyncio.run(replay.run(address))
            if replay.errors:
                raise WrongResult(
                    f"calibrate {name}: {len(replay.errors)} failed or wrong results (first: {replay.errors[:3]})"
                )
            return count

        run(2 * WINDOW)  # warm: the const, the runtime model
        cpu, rate = _cpu_per_task(client, pids, lambda run=run, xs=xs: run(len(xs)))
        cells[name] = {"cpu_s_per_task": cpu, "throughput_rps": rate, "bytes_moved": 2 * 4 * n}
    roundtrips = asyncio.run(_noop_roundtrips(address, p["noops"], noop))
    return {"cells": cells, "roundtrip": spread(roundtrips), "roundtrip_runs": roundtrips}


async def _noop_roundtrips(address: str, n: int, noop) -> list[float]:
    """``n`` no-op Dask tasks' round trips, one at a time, from an asynchronous client; 5-50 ms apart at
    random, since a round trip here depends on where it falls among Dask's periodic sends (one taken
    every 5 ms read 5-6 ms or 15-17 ms, whole batches alike)."""
    from distributed import Client

    rng = np.random.default_rng(1)
    out = []
    async with Client(address, asynchronous=True) as client:
        for _ in range(n):
            await asyncio.sleep(float(rng.uniform(0.005, 0.05)))
            start = time.perf_counter()
            await client.submit(noop, pure=False)
            out.append(time.perf_counter() - start)
    return out


def cluster_costs(live: dict) -> dict:
    """The figures :func:`cluster_figures` gives (``live``) as ``calibrate-host.json`` holds them."""
    from dask_kaas.sim.costs import lognormal_cv

    tiny, io = live["cells"]["tiny"], live["cells"]["io"]
    if not tiny["throughput_rps"] > 0:
        raise WrongResult("calibrate: no requests completed")
    cpu = tiny["cpu_s_per_task"]
    extra = sum(io["cpu_s_per_task"].values()) - sum(cpu.values())
    return {
        "task_rate": tiny["throughput_rps"],
        "roundtrip_s": live["roundtrip"]["median"],
        "jitter_cv": lognormal_cv(live["roundtrip_runs"]),
        "cores": os.cpu_count(),
        "client_cpu_s": cpu["client"],
        "scheduler_cpu_s": cpu["scheduler"],
        "worker_cpu_s": cpu["workers"],
        "byte_cpu_s": max(0.0, extra) / (io["bytes_moved"] - tiny["bytes_moved"]),
    }


def _store_bandwidths(root: str) -> tuple[float, float]:
    from dask_kaas.store import BufferStore

    store = BufferStore(f"file://{root}/bw")
    out = []
    for nbytes in (8 << 20, 64 << 20):
        store.put(f"b{nbytes}", np.ones(nbytes // 4, np.float32))
        times = []
        for _ in range(3):
            start = time.perf_counter()
            store.get(f"b{nbytes}")
            times.append(time.perf_counter() - start)
        out.append(nbytes / statistics.median(times))
    return out[0], out[1]


def measure(config, p: dict) -> dict:
    from benchmarks.overhead import in_process

    root = tempfile.mkdtemp(prefix="kaas-calibrate-")
    started = time.perf_counter()
    try:
        live = _live(p, root)
        runtime = in_process("host", (1, 4), p["rounds"], p["batch"])
        store_bw, device_bw = _store_bandwidths(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures = {
        **cluster_costs(live),
        "runtime_s": max(0.0, runtime["per_request_overhead_us"]) * 1e-6,
        "store_bw": store_bw,
        "device_bw": device_bw,
    }
    return {
        "parameters": {**p, "workers": WORKERS, "window": WINDOW, "tiny_floats": TINY_FLOATS, "io_floats": IO_FLOATS},
        "figures": figures,
        "cells": live["cells"],
        "roundtrip_s": live["roundtrip"],
        "seconds": time.perf_counter() - started,
    }


def report(payload: dict):
    f = payload["figures"]
    yield (
        f"this machine ({f['cores']} cores), measured in {payload['seconds']:.1f} s: {f['task_rate']:.0f} tiny "
        f"requests/s on {payload['parameters']['workers']} host workers, no-op round trip "
        f"{f['roundtrip_s'] * 1e3:.2f} ms (cv {f['jitter_cv']:.2f}), runtime {f['runtime_s'] * 1e6:.0f} us per "
        f"request, store {f['store_bw'] / 1e9:.2f} GB/s, device copy {f['device_bw'] / 1e9:.2f} GB/s"
    )
    yield (
        f"CPU per tiny request: client {f['client_cpu_s'] * 1e3:.2f} ms, scheduler {f['scheduler_cpu_s'] * 1e3:.2f} "
        f"ms, workers {f['worker_cpu_s'] * 1e3:.2f} ms; {f['byte_cpu_s'] * 1e9:.2f} ns more per byte moved in or "
        f"out ({payload['cells']['io']['throughput_rps']:.0f} requests/s moving "
        f"{payload['cells']['io']['bytes_moved'] // 1024} KiB each)"
    )


SUITE = Suite("calibrate", __doc__, measure, report, SIZES, host_only=True)


if __name__ == "__main__":  # python -m benchmarks.calibrate ...: the same as python -m benchmarks calibrate ...
    raise SystemExit(main(suite="calibrate"))

"""Calibrate the simulator's host cost model on this machine, now (seconds, not minutes).

``python -m benchmarks calibrate [--quick | --smoke]`` measures what ``dask_kaas.sim.host_costs()``
needs and writes ``calibrate-host.json``, which ``host_costs()`` reads before any other result file
(and says, in its ``source``, when it is missing, stale, or from another machine):

- ``task_rate``: KaaS requests per second of tiny requests on 4 host workers (scheduler, workers and
  client as separate processes, one ``client.submit`` each, a window of 8 in flight), as ``scale``
  measures it;
- ``roundtrip_s`` and ``jitter_cv``: a no-op Dask task's round trip, median and the log-normal spread
  of the runs;
- ``runtime_s``: the runtime's own cost per request (``overhead``'s in-process fit);
- ``store_bw`` and ``device_bw``: a worker's ``BufferStore.get`` of an 8 MiB const, and of 64 MiB
  (a host device's copy is a memcpy).
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import Suite, WrongResult, main, spread

SIZES = {"full": {"requests": 400, "noops": 40, "rounds": 5, "batch": 200},
         "quick": {"requests": 200, "noops": 20, "rounds": 3, "batch": 100},
         "smoke": {"requests": 16, "noops": 4, "rounds": 1, "batch": 10}}
WORKERS = 4
WINDOW = 8


def _task_rate_and_roundtrip(device: str, p: dict, root: str) -> dict:
    from distributed import Client, LocalCluster

    from benchmarks import schedcost
    from benchmarks.scale import WorkerPool, noop, run_cell, vadd_request
    from dask_kaas import KaasSchedulerPlugin
    from dask_kaas.store import BufferStore

    url = f"file://{root}/store"
    rng = np.random.default_rng(0)
    w = rng.standard_normal(256).astype(np.float32)
    BufferStore(url).put("w", w, namespace="calibrate")
    req = vadd_request("calibrate")
    xs = [rng.standard_normal(256).astype(np.float32) for _ in range(p["requests"])]
    jobs = [(req, x, x + w) for x in xs]
    with LocalCluster(n_workers=0, processes=True, dashboard_address=":0",
                      scheduler_kwargs={"plugins": [KaasSchedulerPlugin(policy="affinity")]}) as cluster, \
            Client(cluster.scheduler_address) as client:
        client.run_on_scheduler(schedcost.install)
        pool = WorkerPool(cluster.scheduler_address, WORKERS, url, device)
        try:
            client.wait_for_workers(WORKERS, timeout=300)
            run_cell(client, jobs[: 2 * WINDOW], window=WINDOW, plain=False)  # warm: consts, the runtime model
            cell = run_cell(client, jobs, window=WINDOW, plain=False)
            roundtrips = []
            for _ in range(p["noops"]):
                time.sleep(0.005)
                start = time.perf_counter()
                client.submit(noop, pure=False).result()
                roundtrips.append(time.perf_counter() - start)
        finally:
            pool.close()
    return {"task_rate": cell["throughput_rps"], "roundtrip": spread(roundtrips), "roundtrip_runs": roundtrips}


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
    from dask_kaas.sim.costs import lognormal_cv

    root = tempfile.mkdtemp(prefix="kaas-calibrate-")
    started = time.perf_counter()
    try:
        live = _task_rate_and_roundtrip("host", p, root)
        runtime = in_process("host", (1, 4), p["rounds"], p["batch"])
        store_bw, device_bw = _store_bandwidths(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if not live["task_rate"] > 0:
        raise WrongResult("calibrate: no requests completed")
    figures = {"task_rate": live["task_rate"], "roundtrip_s": live["roundtrip"]["median"],
               "runtime_s": max(0.0, runtime["per_request_overhead_us"]) * 1e-6, "store_bw": store_bw,
               "device_bw": device_bw, "jitter_cv": lognormal_cv(live["roundtrip_runs"]), "cores": os.cpu_count()}
    return {"parameters": {**p, "workers": WORKERS, "window": WINDOW}, "figures": figures,
            "roundtrip_s": live["roundtrip"], "seconds": time.perf_counter() - started}


def report(payload: dict):
    f = payload["figures"]
    yield (f"this machine ({f['cores']} cores), measured in {payload['seconds']:.1f} s: {f['task_rate']:.0f} tiny "
           f"requests/s on {payload['parameters']['workers']} host workers, no-op round trip "
           f"{f['roundtrip_s'] * 1e3:.2f} ms (cv {f['jitter_cv']:.2f}), runtime {f['runtime_s'] * 1e6:.0f} us per "
           f"request, store {f['store_bw'] / 1e9:.2f} GB/s, device copy {f['device_bw'] / 1e9:.2f} GB/s")


SUITE = Suite("calibrate", __doc__, measure, report, SIZES, host_only=True)


if __name__ == "__main__":  # python -m benchmarks.calibrate ...: the same as python -m benchmarks calibrate ...
    raise SystemExit(main(suite="calibrate"))

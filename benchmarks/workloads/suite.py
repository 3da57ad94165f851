"""Run every workload as KaaS requests and as the fair baselines, plain Dask tasks, side by side.

Per workload, on one LocalKaasCluster (host: 2 workers; cuda: one per GPU):

* the baselines (``benchmarks.baselines``): a plain Dask task computing the same
  output with NumPy (CuPy on a GPU) from the workload's consts, read from the
  same store into a worker-local cache keyed by version: ``dask-lru`` bounded by
  the KaaS device's capacity, ``dask-dict`` unbounded (consts the store does not
  hold travel with the task, as for KaaS); on a GPU the inputs are copied to it in the
  task and each baseline allocates from its own CuPy pool, ``dask-lru``'s limited to
  the KaaS worker's pool bytes (``parameters.memory``);
* setup: the consts go to the store in the workload's tenant namespace; one
  warm-up request per case and system (caches filled, every result checked);
* latency: one request at a time, submit -> result, KaaS and the baselines
  interleaved (``common.interleaved``), ``repeat`` rounds;
* throughput: ``batch`` requests submitted at once, then gathered; the systems
  alternated, ``rounds`` times; requests per second;
* every KaaS result of every phase is checked against the NumPy reference
  (``WrongResult`` fails the run), and so are the baseline's.

``KAAS_BENCH_CORRUPT=<workload>[,<workload>]`` stores a corrupted copy of one
const of that workload (one element changed) after setup while the reference
keeps the true value (the smallest const, element 0 + 100): the run must fail;
the tests use it.
"""

from __future__ import annotations

import importlib
import os
import time

import numpy as np

from benchmarks.common import Suite, WrongResult, bars, interleaved, kernel_s_per_request, local_kaas_cluster, spread

from .base import run_cached

WORKLOADS = ("mlp", "sgemm", "jacobi", "cgemm")


def corrupted() -> set[str]:
    return {w.strip() for w in os.environ.get("KAAS_BENCH_CORRUPT", "").split(",") if w.strip()}


def seed_store(store, w) -> None:
    for name, value in w.stored_consts().items():
        store.put(w.key(name), value, namespace=w.tenant)
    if w.name in corrupted():
        # the smallest const (mlp: the hidden bias b1, whose element 0 feeds every input's logits), element 0
        name, value = min(w.stored_consts().items(), key=lambda kv: kv[1].size)
        bad = value.copy()
        bad.reshape(-1)[0] += np.float32(100.0)
        store.put(w.key(name), bad, namespace=w.tenant)


SYSTEMS = ("kaas", "dask-lru", "dask-dict")


def measure(
    client, store, w, *, repeat: int, batch: int, rounds: int, capacity: int, device: str, pool_bytes: int | None = None
) -> dict:
    from benchmarks.baselines import clear
    from dask_kaas import worker_stats

    seed_store(store, w)
    client.run(clear)
    keys = {name: w.key(name) for name in w.stored_consts()}
    rest = {k: v for k, v in w.consts.items() if k not in keys}
    travelling = client.scatter(rest, broadcast=True) if rest else {}
    outputs: dict[int, np.ndarray] = {}

    def kaas(i):
        return client.submit(w.request, pure=False, **w.cases[i])

    def baseline(bound, pool):
        def submit(i):
            return client.submit(
                run_cached,
                w.numpy_fn,
                w.cases[i],
                store.url,
                w.tenant,
                keys,
                bound,
                device,
                travelling,
                pool,
                pure=False,
            )

        return submit

    submitters = {"kaas": kaas, "dask-lru": baseline(capacity, pool_bytes), "dask-dict": baseline(None, None)}

    # warm-up: every case once on each system (loads and caches the consts); all checked
    start = time.perf_counter()
    for i, f in enumerate(client.gather([kaas(i) for i in range(len(w.cases))])):
        outputs[i] = w.check(i, f)
    cold_s = time.perf_counter() - start
    for name in ("dask-lru", "dask-dict"):
        for i, f in enumerate(client.gather([submitters[name](i) for i in range(len(w.cases))])):
            w.check(i, f)

    # latency, one at a time, interleaved
    got = {name: [] for name in SYSTEMS}
    counter = {name: 0 for name in SYSTEMS}

    def one(kind, submit):
        def call():
            i = counter[kind] % len(w.cases)
            counter[kind] += 1
            got[kind].append((i, submit(i).result()))

        return call

    k0 = worker_stats(client)
    lat = interleaved({name: one(name, submitters[name]) for name in SYSTEMS}, repeat=repeat, gap=0.01)
    kernels_per_request = kernel_s_per_request(k0, worker_stats(client))
    for kind in got:
        for i, result in got[kind]:
            out = w.check(i, result)
            if kind == "kaas":
                outputs[i] = out

    # throughput: a batch in flight at once
    tput = {name: [] for name in SYSTEMS}
    for _ in range(rounds):
        for kind, submit in submitters.items():
            idx = [j % len(w.cases) for j in range(batch)]
            start = time.perf_counter()
            results = client.gather([submit(i) for i in idx])
            elapsed = time.perf_counter() - start
            tput[kind].append(batch / elapsed)
            for i, result in zip(idx, results):
                out = w.check(i, result)
                if kind == "kaas":
                    outputs[i] = out
    if travelling:
        client.cancel(list(travelling.values()))
    figures = {
        "correct": True,
        "requests_checked": len(SYSTEMS) * (len(w.cases) + repeat + rounds * batch),
        "cold_first_pass_s": cold_s,
        "latency_s": {name: lat[name] for name in SYSTEMS},
        "kernel_s_per_request": kernels_per_request,
        "throughput_rps": {name: spread(tput[name]) for name in SYSTEMS},
    }
    for name in ("dask-lru", "dask-dict"):
        figures[f"latency_ratio_kaas_over_{name}"] = lat["kaas"]["median"] / lat[name]["median"]
        figures[f"throughput_ratio_kaas_over_{name}"] = float(np.median(tput["kaas"]) / np.median(tput[name]))
    figures.update(w.summary(outputs))
    return figures


SIZES = {
    "full": {"repeat": 30, "batch": 32, "rounds": 3},
    "quick": {"repeat": 4, "batch": 8, "rounds": 1},
    "smoke": {"repeat": 1, "batch": 2, "rounds": 1},
}


def run_suite(config, p: dict) -> dict:
    device = config.device
    params = {
        "repeat": p["repeat"],
        "throughput_batch": p["batch"],
        "throughput_rounds": p["rounds"],
        "quick": config.quick,
        "workers": "2 host devices" if device == "host" else "one per GPU",
    }
    payload = {"parameters": params, "workloads": {}, "method": __doc__.split("\n\n", 1)[1]}
    with local_kaas_cluster(device) as (cluster, client):
        from benchmarks.baselines import memory_budget
        from dask_kaas import worker_stats

        memory = params["memory"] = memory_budget(worker_stats(client), device)
        capacity = params["device_capacity_bytes"] = memory["kaas_cache_capacity"]
        for name in WORKLOADS:
            w = importlib.import_module(f"benchmarks.workloads.{name}").setup(config.size != "full")
            try:
                figures = measure(
                    client,
                    cluster.store,
                    w,
                    repeat=p["repeat"],
                    batch=p["batch"],
                    rounds=p["rounds"],
                    capacity=capacity,
                    device=device,
                    pool_bytes=memory["baseline_pool_bytes"],
                )
            except WrongResult as e:
                raise WrongResult(f"workload {name}: {e}") from e
            payload["workloads"][name] = {"parameters": w.parameters, **figures}
            lat, tp = figures["latency_s"], figures["throughput_rps"]
            extra = f", accuracy {figures['accuracy']:.3f}" if "accuracy" in figures else ""
            config.log(
                f"  {name:<7} ok{extra}: latency ms kaas {lat['kaas']['median'] * 1e3:.2f}, dask-lru "
                f"{lat['dask-lru']['median'] * 1e3:.2f}, dask-dict {lat['dask-dict']['median'] * 1e3:.2f}; "
                f"req/s kaas {tp['kaas']['median']:.0f}, dask-lru {tp['dask-lru']['median']:.0f}, dask-dict "
                f"{tp['dask-dict']['median']:.0f}",
                flush=True,
            )
    return payload


def draw(payload: dict, plt):
    names = list(payload["workloads"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(names))
    for ax, key, label in (
        (axes[0], "latency_s", "latency, ms (median; bars min-max)"),
        (axes[1], "throughput_rps", "throughput, requests/s"),
    ):
        for off, kind, name in (
            (-0.27, "kaas", "KaaS"),
            (0, "dask-lru", "Dask + LRU cache"),
            (0.27, "dask-dict", "Dask + dict cache"),
        ):
            bars(
                ax,
                x + off,
                (payload["workloads"][n][key][kind] for n in names),
                scale=1e3 if key == "latency_s" else 1.0,
                width=0.27,
                label=name,
            )
        ax.set_xticks(x, names)
        ax.set_title(label)
        ax.legend()
    fig.suptitle(f"workloads on {payload['device']} ({payload['machine']['cpus']} CPUs)")
    return fig


def report(payload: dict):
    yield f"{'workload':<9}{'kaas ms':>9}{'lru ms':>9}{'dict ms':>9}{'kaas/s':>8}{'lru/s':>8}{'dict/s':>8}  checked"
    for name, row in payload["workloads"].items():
        lat, tp = row["latency_s"], row["throughput_rps"]
        extra = f", accuracy {row['accuracy']:.3f}" if "accuracy" in row else ""
        yield (
            f"{name:<9}"
            + "".join(f"{lat[s]['median'] * 1e3:>9.2f}" for s in SYSTEMS)
            + "".join(f"{tp[s]['median']:>8.0f}" for s in SYSTEMS)
            + f"  {row['requests_checked']}{extra}"
        )


SUITE = Suite("workloads", __doc__, run_suite, report, SIZES, draw=draw)

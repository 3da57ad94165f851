"""Run every workload as KaaS requests and as plain Dask tasks doing the NumPy work, side by side.

Per workload, on one LocalKaasCluster (host: 2 workers; cuda: one per GPU):

* setup: the consts go to the store in the workload's tenant namespace; one
  warm-up request per case (consts cached on the devices afterwards, every
  result checked) and the consts scattered to every worker for the baseline;
* latency: one request at a time, submit -> result, KaaS and plain Dask
  interleaved (``common.interleaved``), ``repeat`` rounds;
* throughput: ``batch`` requests submitted at once, then gathered; KaaS and
  Dask alternated, ``rounds`` times; requests per second;
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

from benchmarks.common import (WrongResult, interleaved, local_kaas_cluster, machine, resolve_device, result_name,
                               results_dir, save_plot, spread, write_result)

from .base import run_numpy

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


def kernel_seconds(client) -> float:
    from dask_kaas import worker_stats

    return sum(s.get("seconds", {}).get("kernels", 0.0) for s in worker_stats(client).values())


def measure(client, store, w, *, repeat: int, batch: int, rounds: int) -> dict:
    seed_store(store, w)
    consts = client.scatter(w.consts, broadcast=True)
    outputs: dict[int, np.ndarray] = {}

    def kaas(i):
        return client.submit(w.request, pure=False, **w.cases[i])

    def dask(i):
        return client.submit(run_numpy, w.numpy_fn, w.cases[i], consts, pure=False)

    # warm-up: every case once on KaaS (loads and caches the consts) and on Dask; all checked
    start = time.perf_counter()
    for i, f in enumerate(client.gather([kaas(i) for i in range(len(w.cases))])):
        outputs[i] = w.check(i, f)
    cold_s = time.perf_counter() - start
    for i, f in enumerate(client.gather([dask(i) for i in range(len(w.cases))])):
        w.check(i, f)

    # latency, one at a time, interleaved
    got = {"kaas": [], "dask": []}
    counter = {"kaas": 0, "dask": 0}

    def one(kind, submit):
        def call():
            i = counter[kind] % len(w.cases)
            counter[kind] += 1
            got[kind].append((i, submit(i).result()))
        return call

    k0 = kernel_seconds(client)
    lat = interleaved({"kaas": one("kaas", kaas), "dask": one("dask", dask)}, repeat=repeat)
    kernels_per_request = (kernel_seconds(client) - k0) / repeat
    for kind in got:
        for i, result in got[kind]:
            out = w.check(i, result)
            if kind == "kaas":
                outputs[i] = out

    # throughput: a batch in flight at once
    tput = {"kaas": [], "dask": []}
    for _ in range(rounds):
        for kind, submit in (("kaas", kaas), ("dask", dask)):
            idx = [j % len(w.cases) for j in range(batch)]
            start = time.perf_counter()
            results = client.gather([submit(i) for i in idx])
            elapsed = time.perf_counter() - start
            tput[kind].append(batch / elapsed)
            for i, result in zip(idx, results):
                out = w.check(i, result)
                if kind == "kaas":
                    outputs[i] = out
    client.cancel(list(consts.values()))
    figures = {
        "correct": True,
        "requests_checked": len(w.cases) + repeat + rounds * batch,
        "cold_first_pass_s": cold_s,
        "latency_s": {"kaas": lat["kaas"], "dask_numpy": lat["dask"]},
        "latency_ratio_kaas_over_dask": lat["kaas"]["median"] / lat["dask"]["median"],
        "kernel_s_per_request": kernels_per_request,
        "throughput_rps": {"kaas": spread(tput["kaas"]), "dask_numpy": spread(tput["dask"])},
        "throughput_ratio_kaas_over_dask": float(np.median(tput["kaas"]) / np.median(tput["dask"])),
    }
    figures.update(w.summary(outputs))
    return figures


def plot(payload: dict, path: str):
    names = list(payload["workloads"])

    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        x = np.arange(len(names))
        for ax, key, label in ((axes[0], "latency_s", "latency, ms (median; bars min-max)"),
                               (axes[1], "throughput_rps", "throughput, requests/s")):
            for off, kind, name in ((-0.2, "kaas", "KaaS"), (0.2, "dask_numpy", "plain Dask + NumPy")):
                scale = 1e3 if key == "latency_s" else 1.0
                med = [payload["workloads"][n][key][kind]["median"] * scale for n in names]
                lo = [m - payload["workloads"][n][key][kind]["min"] * scale for m, n in zip(med, names)]
                hi = [payload["workloads"][n][key][kind]["max"] * scale - m for m, n in zip(med, names)]
                ax.bar(x + off, med, 0.4, yerr=[lo, hi], label=name, capsize=3)
            ax.set_xticks(x, names)
            ax.set_title(label)
            ax.legend()
        fig.suptitle(f"workloads on {payload['device']} ({payload['machine']['cpus']} CPUs)")
        return fig

    return save_plot(path, draw)


def run(device: str = "auto", quick: bool = False) -> dict:
    device = resolve_device(device)
    repeat, batch, rounds = (4, 8, 1) if quick else (30, 32, 3)
    params = {"repeat": repeat, "throughput_batch": batch, "throughput_rounds": rounds, "quick": quick,
              "workers": "2 host devices" if device == "host" else "one per GPU"}
    payload = {"suite": "workloads", "device": device, "parameters": params, "workloads": {},
               "method": __doc__.split("\n\n", 1)[1]}
    with local_kaas_cluster(device) as (cluster, client):
        for name in WORKLOADS:
            w = importlib.import_module(f"benchmarks.workloads.{name}").setup(quick)
            try:
                figures = measure(client, cluster.store, w, repeat=repeat, batch=batch, rounds=rounds)
            except WrongResult as e:
                raise WrongResult(f"workload {name}: {e}") from e
            payload["workloads"][name] = {"parameters": w.parameters, **figures}
            lat = figures["latency_s"]
            extra = f", accuracy {figures['accuracy']:.3f}" if "accuracy" in figures else ""
            print(f"  {name:<7} ok{extra}: latency {lat['kaas']['median'] * 1e3:.2f} ms "
                  f"(dask+numpy {lat['dask_numpy']['median'] * 1e3:.2f} ms, {figures['latency_ratio_kaas_over_dask']:.2f}x)"
                  f", throughput {figures['throughput_rps']['kaas']['median']:.0f} req/s "
                  f"(dask+numpy {figures['throughput_rps']['dask_numpy']['median']:.0f}, "
                  f"{figures['throughput_ratio_kaas_over_dask']:.2f}x)", flush=True)
    name = result_name("workloads", device, quick)
    payload["machine"] = machine()
    png = plot(payload, os.path.join(results_dir(), f"{name}.png"))
    payload["plot"] = png and os.path.basename(png)
    payload["path"] = write_result(name, payload)
    return payload

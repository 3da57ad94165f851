"""Overhead: what KaaS adds to a request, against the DESIGN budgets.

Budgets (``DESIGN.md``, "Performance budgets"):

1. host-side overhead of the runtime: < 100 us per request plus < 10 us per
   kernel launch over a raw CuPy launch;
2. end-to-end warm latency of a small request within 1.15x of a no-op Dask
   task round trip (issue 13; DESIGN's budget was 1.2x plus the kernels' own
   time, also reported), with ``GAP`` idle before each call.

End to end (one LocalKaasCluster; host: 2 workers), interleaved round-robin,
``repeat`` rounds, medians and spreads:

(a) ``kaas``: a tiny request (``vadd`` of 256 floats, ``x`` passed in the call,
    ``w`` a const already cached on the workers) through ``client.submit(...).result()``;
(b) ``noop``: a Dask task that does nothing, no arguments (the budget's
    baseline); ``echo``: one that takes the same ``x`` and returns it (the same
    bytes moved, for information);
(c) ``dask_numpy``: a plain Dask task doing the same array work, ``x + w``
    with ``w`` scattered to every worker beforehand.

The kernels' own time per request is the ``kernels`` phase of
``worker_stats`` over the ``kaas`` calls.

In process (d): ``dask_kaas.runtime.Runtime`` on the device directly (no Dask),
requests of K kernels (``fill`` of one element into a 4-byte output), K in
``ks``; each K timed in ``batch`` calls, K values interleaved, ``rounds``
rounds; least squares fit of the per-call medians: ``t(K) = a + b*K``. The
launch itself is measured the same way without the runtime: on the host
device ``HostDevice.launch`` of the same kernel (the host twin: the kernel's
own compute there), on CUDA a raw CuPy launch of the same cubin
(``builtin.binary(arch)`` loaded with ``cupy.cuda.function.Module().load``) K times plus a
stream synchronize, fitted the same way (``a_raw + b_raw*K``). Runtime
overhead: per request ``a - a_raw``, per launch ``b - b_raw``.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time

import numpy as np

from benchmarks.common import (
    Suite,
    WrongResult,
    bars,
    interleaved,
    kernel_s_per_request,
    local_kaas_cluster,
    main,
    met,
    spread,
)
from dask_kaas import BufferSpec, KernelSpec, Literal, Request

N = 256
F32 = 4
BUDGET_REQUEST_US, BUDGET_LAUNCH_US, BUDGET_E2E_RATIO = 100.0, 10.0, 1.15
GAP = 0.02  # seconds idle before each end-to-end call


def tiny_request() -> Request:
    x = BufferSpec("x", N * F32, dtype="float32", ephemeral=True)
    w = BufferSpec("w", N * F32, key="bench/overhead/w", const=True, dtype="float32")
    y = BufferSpec("y", N * F32, dtype="float32", ephemeral=True)
    return Request(
        [KernelSpec("builtin", "vadd", 1, 256, literals=[Literal("i", N)], arguments=[(x, "i"), (w, "i"), (y, "o")])],
        tenant="bench-overhead",
    )


def fill_request(k: int) -> Request:
    y = BufferSpec("y", F32, dtype="float32", ephemeral=True)
    return Request(
        [
            KernelSpec(
                "builtin", "fill", 1, 1, literals=[Literal("i", 1), Literal("f", float(i + 1))], arguments=[(y, "o")]
            )
            for i in range(k)
        ]
    )


def _noop():
    return None


def _echo(x):
    return x


def _add(x, w):
    return {"y": x + w}


# ------------------------------------------------------------- end to end
def end_to_end(device: str, repeat: int) -> dict:
    from dask_kaas import worker_stats

    rng = np.random.default_rng(0)
    x = rng.standard_normal(N).astype(np.float32)
    w = rng.standard_normal(N).astype(np.float32)
    req = tiny_request()
    with local_kaas_cluster(device) as (cluster, client):
        cluster.store.put("bench/overhead/w", w, namespace="bench-overhead")
        wf = client.scatter(w, broadcast=True)
        for _ in range(3):  # warm: the const cached on the worker(s), modules loaded, functions pickled once
            client.submit(req, x=x, pure=False).result()
            client.submit(_noop, pure=False).result()
            client.submit(_add, x, wf, pure=False).result()
        for addr in client.scheduler_info()["workers"]:  # warm every worker, not only the first
            client.submit(req, x=x, pure=False, workers=[addr]).result()
        results = []

        def kaas():
            out = client.submit(req, x=x, pure=False).result()
            results.append(out)

        before = worker_stats(client)
        timing = interleaved(
            {
                "kaas": kaas,
                "noop": lambda: client.submit(_noop, pure=False).result(),
                "echo": lambda: client.submit(_echo, x, pure=False).result(),
                "dask_numpy": lambda: client.submit(_add, x, wf, pure=False).result(),
            },
            repeat=repeat,
            gap=GAP,
        )
        after = worker_stats(client)
    for out in results:
        if not np.allclose(out["y"], x + w, rtol=1e-6, atol=1e-6):
            raise WrongResult("overhead: the tiny KaaS request returned a wrong y")

    def phase(name):
        return sum(
            after[a]["seconds"].get(name, 0.0) - before.get(a, {}).get("seconds", {}).get(name, 0.0) for a in after
        )

    kernel_s = kernel_s_per_request(before, after)
    runtime_total_s = phase("total") / repeat
    hits = sum(after[a].get("hits", 0) - before.get(a, {}).get("hits", 0) for a in after)
    misses = sum(after[a].get("misses", 0) - before.get(a, {}).get("misses", 0) for a in after)
    noop, kaas_med = timing["noop"]["median"], timing["kaas"]["median"]
    bound = BUDGET_E2E_RATIO * (noop + kernel_s)
    return {
        "timing_s": timing,
        "kernel_s_per_request": kernel_s,
        "runtime_total_s_per_request": runtime_total_s,
        "const_hits": hits,
        "const_misses": misses,
        "gap_s": GAP,
        "ratio_kaas_over_noop_plus_kernels": kaas_med / (noop + kernel_s),
        "ratio_kaas_over_noop": kaas_med / noop,
        "ratio_kaas_over_dask_numpy": kaas_med / timing["dask_numpy"]["median"],
        "budget": {
            "rule": f"kaas <= {BUDGET_E2E_RATIO} x noop, calls interleaved with {GAP * 1e3:.0f} ms idle before each",
            "bound_s": BUDGET_E2E_RATIO * noop,
            "met": bool(kaas_med <= BUDGET_E2E_RATIO * noop),
            "with_kernels": {"bound_s": bound, "met": bool(kaas_med <= bound)},
        },
    }


# -------------------------------------------------------------- in process
def fit(ks, times) -> tuple[float, float]:
    b, a = np.polyfit(np.asarray(ks, float), np.asarray(times, float), 1)
    return float(a), float(b)


def _per_call(fn, batch: int) -> float:
    start = time.perf_counter()
    for _ in range(batch):
        fn()
    return (time.perf_counter() - start) / batch


def in_process(device: str, ks, rounds: int, batch: int) -> dict:
    from dask_kaas.device import make_device
    from dask_kaas.kernels import LaunchConfig, resolve_library
    from dask_kaas.runtime import Runtime, module_key

    root = tempfile.mkdtemp(prefix="kaas-bench-overhead-")
    dev = make_device(device, memory=64 * 2**20 if device == "host" else None)
    rt = Runtime(dev, store=f"file://{root}")
    reqs = {k: fill_request(k) for k in ks}
    for k, req in reqs.items():  # warm; and check
        out = rt.run(req, {})["y"]
        if out.shape != (1,) or out[0] != np.float32(k):
            raise WrongResult(f"overhead: {k} fill kernels left y = {out}, expected [{k}.]")
    lib = resolve_library("builtin")
    module = rt.kernels.get(module_key(lib, None))
    handle = dev.allocate(F32)
    launch = LaunchConfig(1, 1, 0)
    literals = [Literal("i", 1), Literal("f", 1.0)]

    def launches(k):
        def fn():
            for _ in range(k):
                dev.launch(module, "fill", launch, literals, [handle])
            dev.synchronize()

        return fn

    raw = raw_cupy(dev, lib, ks, rounds, batch) if device == "cuda" else None
    per_k = {k: [] for k in ks}
    per_k_launch = {k: [] for k in ks}
    for _ in range(rounds):
        for k in ks:
            per_k[k].append(_per_call(lambda k=k: rt.run(reqs[k], {}), batch))
            per_k_launch[k].append(_per_call(launches(k), batch))
    dev.free(handle)
    med = [statistics.median(per_k[k]) for k in ks]
    med_launch = [statistics.median(per_k_launch[k]) for k in ks]
    a, b = fit(ks, med)
    a_dev, b_dev = fit(ks, med_launch)
    out = {
        "ks": list(ks),
        "rounds": rounds,
        "batch": batch,
        "runtime_s": {str(k): spread(per_k[k]) for k in ks},
        "device_launch_s": {str(k): spread(per_k_launch[k]) for k in ks},
        "fit_runtime": {"a_us": a * 1e6, "b_us": b * 1e6},
        "fit_device_launch": {"a_us": a_dev * 1e6, "b_us": b_dev * 1e6},
    }
    if raw is not None:  # CUDA: against a raw CuPy launch of the same cubin
        out["raw_cupy_s"] = raw["runs"]
        out["fit_raw_cupy"] = {"a_us": raw["a"] * 1e6, "b_us": raw["b"] * 1e6}
        base_a, base_b, base = raw["a"], raw["b"], "raw CuPy launch of the same cubin + stream synchronize"
    else:  # host: the host twin run through HostDevice.launch is the kernel's own compute
        base_a, base_b, base = 0.0, b_dev, "HostDevice.launch of the same kernel (its NumPy twin)"
    per_request, per_launch = (a - base_a) * 1e6, (b - base_b) * 1e6
    out.update(
        {
            "baseline": base,
            "per_request_overhead_us": per_request,
            "per_launch_overhead_us": per_launch,
            "budget": {
                "per_request_us": BUDGET_REQUEST_US,
                "per_launch_us": BUDGET_LAUNCH_US,
                "per_request_met": bool(per_request < BUDGET_REQUEST_US),
                "per_launch_met": bool(per_launch < BUDGET_LAUNCH_US),
            },
        }
    )
    dev.close()
    shutil.rmtree(root, ignore_errors=True)
    return out


def raw_cupy(dev, lib, ks, rounds: int, batch: int) -> dict:
    """K raw CuPy launches of ``fill`` from the builtin cubin plus a stream synchronize, fitted a + b*K."""
    import cupy

    data, kind = lib.binary(dev.compile_target())  # the very bytes the runtime loads
    module = cupy.cuda.function.Module()
    module.load(bytes(data))
    fn = module.get_function("fill")
    with cupy.cuda.Device(getattr(dev, "index", 0)):
        y = cupy.zeros(1, dtype=cupy.float32)
        stream = cupy.cuda.Stream(non_blocking=True)
        args = (np.int32(1), np.float32(1.0), y)

        def launches(k):
            def call():
                with stream:
                    for _ in range(k):
                        fn((1,), (1,), args)
                stream.synchronize()

            return call

        for k in ks:
            launches(k)()
        runs = {k: [] for k in ks}
        for _ in range(rounds):
            for k in ks:
                runs[k].append(_per_call(launches(k), batch))
        if float(y.get()[0]) != 1.0:
            raise WrongResult(f"overhead: the raw CuPy fill left {y.get()}")
    a, b = fit(ks, [statistics.median(runs[k]) for k in ks])
    return {"a": a, "b": b, "runs": {str(k): spread(v) for k, v in runs.items()}, "binary": kind}


# ------------------------------------------------------------------ suite
SIZES = {
    "full": {"repeat": 300, "ks": (1, 2, 4, 8, 16, 32, 64), "rounds": 15, "batch": 200},
    "quick": {"repeat": 40, "ks": (1, 4, 16, 32), "rounds": 5, "batch": 50},
    "smoke": {"repeat": 3, "ks": (1, 4), "rounds": 1, "batch": 5},
}


def measure(config, p: dict) -> dict:
    device = config.device
    payload = {
        "parameters": {
            "quick": config.quick,
            "repeat": p["repeat"],
            "ks": list(p["ks"]),
            "rounds": p["rounds"],
            "batch": p["batch"],
            "tiny_request": f"vadd of {N} float32, x in the call, w a cached const",
        },
        "method": __doc__,
    }
    payload["in_process"] = d = in_process(device, p["ks"], p["rounds"], p["batch"])
    payload["end_to_end"] = e = end_to_end(device, p["repeat"])
    payload["budgets"] = {
        "per_request_under_100us": {"measured_us": d["per_request_overhead_us"], "met": d["budget"]["per_request_met"]},
        "per_launch_under_10us": {
            "measured_us": d["per_launch_overhead_us"],
            "met": d["budget"]["per_launch_met"],
            "over": d["baseline"],
        },
        "e2e_within_1.15x_noop": {"ratio": e["ratio_kaas_over_noop"], "met": e["budget"]["met"]},
        "e2e_within_1.2x_noop_plus_kernels": {
            "ratio": e["ratio_kaas_over_noop_plus_kernels"],
            "met": e["ratio_kaas_over_noop_plus_kernels"] <= 1.2,
        },
    }
    return payload


def draw(payload: dict, plt):
    d, e = payload["in_process"], payload["end_to_end"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ks = d["ks"]
    for key, label in (
        ("runtime_s", "Runtime.run"),
        ("device_launch_s", "device launches only"),
        ("raw_cupy_s", "raw CuPy launches"),
    ):
        if key in d:
            ax1.plot(ks, [d[key][str(k)]["median"] * 1e6 for k in ks], "o-", label=label)
    a, b = d["fit_runtime"]["a_us"], d["fit_runtime"]["b_us"]
    ax1.plot(ks, [a + b * k for k in ks], "k--", label=f"fit {a:.0f} + {b:.1f}*K us")
    ax1.set_xlabel("kernels per request (K)")
    ax1.set_ylabel("us per request")
    ax1.set_title("in-process runtime cost")
    ax1.legend()
    names = ["kaas", "noop", "echo", "dask_numpy"]
    bars(ax2, names, (e["timing_s"][n] for n in names), scale=1e3)
    ax2.axhline(e["budget"]["bound_s"] * 1e3, color="r", ls="--", label=f"budget: {BUDGET_E2E_RATIO} x noop")
    ax2.set_ylabel("ms, submit -> result (median; bars min-max)")
    ax2.set_title("end to end, warm")
    ax2.legend()
    fig.suptitle(f"overhead on {payload['device']}")
    return fig


def report(payload: dict):
    d, e = payload["in_process"], payload["end_to_end"]
    t = e["timing_s"]
    yield (
        f"runtime in process: {d['per_request_overhead_us']:.1f} us/request (budget < {BUDGET_REQUEST_US:.0f}: "
        f"{met(d['budget']['per_request_met'])}), {d['per_launch_overhead_us']:.2f} us/launch over "
        f"{'raw CuPy' if payload['device'] == 'cuda' else 'the host twin'} (budget < {BUDGET_LAUNCH_US:.0f}: "
        f"{met(d['budget']['per_launch_met'])})"
    )
    yield (
        f"end to end: kaas {t['kaas']['median'] * 1e3:.2f} ms, noop {t['noop']['median'] * 1e3:.2f} ms, echo "
        f"{t['echo']['median'] * 1e3:.2f} ms, dask+numpy {t['dask_numpy']['median'] * 1e3:.2f} ms, kernels "
        f"{e['kernel_s_per_request'] * 1e6:.0f} us -> {e['ratio_kaas_over_noop']:.2f}x of noop "
        f"(budget <= {BUDGET_E2E_RATIO}: {met(e['budget']['met'])}), "
        f"{e['ratio_kaas_over_noop_plus_kernels']:.2f}x of noop+kernels"
    )


SUITE = Suite("overhead", __doc__, measure, report, SIZES, draw=draw)


if __name__ == "__main__":  # python -m benchmarks.overhead ...: the same as python -m benchmarks overhead ...
    raise SystemExit(main(suite="overhead"))

"""Batching: what ``dask_kaas.Batcher`` (and the gateway through it) buys over one Dask task per request.

Deployed as users deploy: ``dask kaas scheduler`` and ``dask kaas worker --nworkers 2`` as separate
processes, the client here, the gateway (``dask-kaas gateway``) as one more process. The request is
the README's: ``y = x + w`` (builtin ``vadd``), ``x`` passed in the call, ``w`` the tenant's const
(cached on both workers before anything is timed). Every result is checked against NumPy.

1. **Throughput and scheduler cost at K callers** (K in ``ks``: K coroutines on one asynchronous
   client, as a server process holds them, each awaiting its answer before its next call,
   ``calls`` calls in all), n = 1024 float32: ``one_task`` (``await client.submit(request, x=x)``
   per call) against ``batched`` (``await batcher.submit(request, x=x)`` on the same client),
   arms alternated ``rounds`` times. Per arm: calls/s, the
   scheduler process's CPU seconds per call (``/proc/<pid>/stat``: all its threads), the bytes its TCP
   comms read and wrote per call, the mean calls per Dask task, and the CPU per call of the client
   process and of the worker processes (where the rest of the machine's two cores go).
2. **Idle latency of one call**: ``client.submit(...).result()`` against
   ``batcher.submit(...).result()``, interleaved, ``GAP`` idle before each, ``repeat`` each: the
   batcher must add nothing when nothing queues (a batch of one is a plain task with one more hop
   on the client's event loop).
3. **Large payloads** (n in ``big_ns`` float32, 1 and 16 MiB): p50 of ``gateway`` (tritonclient,
   binary tensors, the gateway scattering the batch straight to a worker) against ``submit_direct``
   (what a user writes to keep the bytes off the scheduler: ``client.scatter(x, direct=True)``, then
   ``client.submit(request, x=future)``, then ``client.gather(future, direct=True)``) and ``submit``
   (plain, the payload through the scheduler both ways); and the scheduler's bytes per call of each.

Ratios are within one run, arms interleaved. A loss is reported as measured.

    python -m benchmarks batching [--quick]
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks import deployed
from benchmarks.common import Option, Suite, WrongResult, interleaved, main, met, spread
from dask_kaas.text import table

TENANT = "bench-batching"
GAP = 0.02  # seconds idle before each latency call (as in the overhead suite)
SIZES = {
    "full": {"ks": (16, 64), "calls": 3000, "rounds": 3, "repeat": 150, "big_ns": (262144, 4194304), "big_repeat": 15},
    "quick": {"ks": (16, 64), "calls": 800, "rounds": 1, "repeat": 40, "big_ns": (262144, 4194304), "big_repeat": 5},
    "smoke": {"ks": (4,), "calls": 24, "rounds": 1, "repeat": 3, "big_ns": (131072,), "big_repeat": 2},
}
TARGETS = {"throughput_ratio": 10.0, "cpu_ratio": 1 / 8, "idle_ratio": 1.05, "gateway_over_direct": 1.2}


def vadd_request(n: int, tenant: str = TENANT):
    from dask_kaas import BufferSpec, KernelSpec, Literal, Request

    x = BufferSpec("x", 4 * n, dtype="float32", ephemeral=True)
    w = BufferSpec("w", 4 * n, key=f"bench/batching/w{n}", const=True)
    y = BufferSpec("y", 4 * n, dtype="float32", ephemeral=True)
    return Request(
        [
            KernelSpec(
                "builtin",
                "vadd",
                max(1, min(n // 128, 65535)),
                128,
                literals=[Literal("i", n)],
                arguments=[(x, "i"), (w, "i"), (y, "o")],
            )
        ],
        tenant=tenant,
    )


class Readings:
    """The scheduler process's CPU seconds, comm bytes and KaaS tasks, before and after an arm."""

    def __init__(self, client):
        self.client = client  # a synchronous client (its own loop thread: usable from a coroutine too)
        self.pid = client.run_on_scheduler(deployed.scheduler_pid)
        self.workers = list(client.run(os.getpid).values())
        client.run_on_scheduler(deployed.install_byte_counter)

    def now(self) -> dict:
        counts = self.client.run_on_scheduler(deployed.read_bytes)
        tasks = sum(t.get("tasks", 0) for t in self.client.run_on_scheduler(_tenants).values())
        return {
            "cpu": deployed.process_cpu(self.pid),
            "bytes": counts["read"] + counts["written"],
            "tasks": tasks,
            "client_cpu": deployed.process_cpu(os.getpid()),
            "workers_cpu": sum(deployed.process_cpu(pid) for pid in self.workers),
        }

    def wait_idle(self) -> None:
        deployed.wait_idle(self.client)

    def per_call(self, before: dict, after: dict, calls: int) -> dict:
        return {
            "scheduler_cpu_us_per_call": (after["cpu"] - before["cpu"]) / calls * 1e6,
            "client_cpu_us_per_call": (after["client_cpu"] - before["client_cpu"]) / calls * 1e6,
            "workers_cpu_us_per_call": (after["workers_cpu"] - before["workers_cpu"]) / calls * 1e6,
            "scheduler_bytes_per_call": (after["bytes"] - before["bytes"]) / calls,
            "calls_per_task": calls / max(1, after["tasks"] - before["tasks"]),
        }


def _tenants(dask_scheduler=None) -> dict:
    return dask_scheduler.plugins["kaas"].snapshot()["tenants"]


async def callers_per_second(k: int, calls: int, call) -> float:
    """``calls`` calls (rounded down to a multiple of ``k``) from ``k`` concurrent callers on this event
    loop, each awaiting its answer before its next call; ``call(i)`` makes (and checks) caller i's call.
    Each caller's first call is untimed."""
    per_caller = max(1, calls // k)
    await asyncio.gather(*(call(i) for i in range(k)))

    async def caller(i):
        for _ in range(per_caller):
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(k)))
    return per_caller * k / (time.perf_counter() - start)


def throughput(address, readings, p, log) -> list[dict]:
    return asyncio.run(_throughput(address, readings, p, log))


async def _throughput(address, readings, p, log) -> list[dict]:
    from distributed import Client

    from dask_kaas import Batcher

    n = 1024
    req = vadd_request(n)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(n).astype(np.float32) for _ in range(64)]
    wants = [x + WEIGHTS[n] for x in xs]
    async with Client(address, asynchronous=True) as client:
        batcher = Batcher(client)

        def caller(submit):
            async def call(i):  # caller i: its own input, each answer checked
                out = await submit(xs[i % len(xs)])
                if not np.allclose(out["y"], wants[i % len(xs)]):
                    raise WrongResult(f"batching: caller {i} got a wrong y")

            return call

        arms = {
            "one_task": caller(lambda x: client.submit(req, x=x, pure=False)),
            "batched": caller(lambda x: batcher.submit(req, x=x)),
        }
        out = []
        for k in p["ks"]:
            runs = {name: [] for name in arms}
            for r in range(p["rounds"]):
                for name, call in arms.items():
                    # in a thread: this client's loop must run meanwhile to release the previous arm's results
                    # (blocking it here left their tasks on the scheduler until wait_idle's 30 s timeout)
                    await asyncio.to_thread(readings.wait_idle)
                    before = readings.now()
                    rate = await callers_per_second(k, p["calls"], call)
                    calls = (max(1, p["calls"] // k) + 1) * k  # each caller's untimed first call too
                    row = {"calls_per_s": rate, **readings.per_call(before, readings.now(), calls)}
                    runs[name].append(row)
                    log(
                        f"  K={k:<3} {name:<9} round {r + 1}: {row['calls_per_s']:7.0f} calls/s, scheduler "
                        f"{row['scheduler_cpu_us_per_call']:6.0f} us CPU and {row['scheduler_bytes_per_call']:7.0f} B "
                        f"per call, {row['calls_per_task']:.1f} calls per task; CPU us per call: client "
                        f"{row['client_cpu_us_per_call']:.0f}, workers {row['workers_cpu_us_per_call']:.0f}"
                    )
            arm = {name: {key: spread(r[key] for r in rows) for key in rows[0]} for name, rows in runs.items()}
            one, batched = arm["one_task"], arm["batched"]
            out.append(
                {
                    "k": k,
                    "calls": p["calls"],
                    "arms": arm,
                    "runs": runs,
                    "throughput_ratio": batched["calls_per_s"]["median"] / one["calls_per_s"]["median"],
                    "cpu_ratio": batched["scheduler_cpu_us_per_call"]["median"]
                    / one["scheduler_cpu_us_per_call"]["median"],
                }
            )
        return out


def idle_latency(client, batcher, p) -> dict:
    n = 1024
    req = vadd_request(n)
    x = np.arange(n, dtype=np.float32)
    want = x + WEIGHTS[n]
    results = []

    def checked(out):
        results.append(out["y"])

    timing = interleaved(
        {
            "submit": lambda: checked(client.submit(req, x=x, pure=False).result()),
            "batched": lambda: checked(batcher.submit(req, x=x).result()),
        },
        repeat=p["repeat"],
        gap=GAP,
    )
    if not all(np.allclose(y, want) for y in results):
        raise WrongResult("batching: a wrong y in the idle latency runs")
    s, b = timing["submit"]["median"], timing["batched"]["median"]
    return {"timing_s": timing, "p50_ms": {"submit": s * 1e3, "batched": b * 1e3}, "idle_ratio": b / s}


def large_payloads(client, readings, url, token, p, log) -> list[dict]:
    from benchmarks.gateway import gateway_call, triton_client

    tc = triton_client(url)
    out = []
    for n in p["big_ns"]:
        req = vadd_request(n)
        x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        want = x + WEIGHTS[n]

        def submit_direct(req=req, x=x):
            future = client.submit(req, x=client.scatter(x, direct=True, hash=False), pure=False)
            return client.gather(future, direct=True)["y"]

        arms = {
            "gateway": lambda n=n, x=x: gateway_call(tc, f"vadd{n}", token, x),
            "submit_direct": submit_direct,
            "submit": lambda req=req, x=x: client.submit(req, x=x, pure=False).result()["y"],
        }
        for name, call in arms.items():  # warm, and checked
            if not np.allclose(call(), want):
                raise WrongResult(f"batching: {name} returned a wrong y for n={n}")
        cost = {}
        for name, call in arms.items():  # the scheduler's share of each, over a few calls alone
            deployed.wait_idle(client)
            before = readings.now()
            for _ in range(p["big_repeat"]):
                call()
            cost[name] = readings.per_call(before, readings.now(), p["big_repeat"])
        timing = interleaved(arms, repeat=p["big_repeat"], gap=GAP)
        p50 = {name: t["median"] * 1e3 for name, t in timing.items()}
        row = {
            "n": n,
            "bytes": int(x.nbytes),
            "p50_ms": p50,
            "timing_s": timing,
            "scheduler": cost,
            "gateway_over_direct": p50["gateway"] / p50["submit_direct"],
        }
        log(
            f"  n={n}: p50 ms "
            + ", ".join(f"{k} {v:.1f}" for k, v in p50.items())
            + "; scheduler bytes per call "
            + ", ".join(f"{k} {v['scheduler_bytes_per_call']:.0f}" for k, v in cost.items())
        )
        out.append(row)
    return out


WEIGHTS: dict[int, np.ndarray] = {}


def measure(config, p: dict) -> dict:
    from distributed import Client

    from benchmarks.gateway import gateway_process, vadd_function
    from dask_kaas import Batcher, BufferStore
    from dask_kaas.functions import FunctionRepository
    from dask_kaas.gateway.tokens import add_token

    log = config.log
    tmp = tempfile.mkdtemp(prefix="kaas-bench-batching-")
    payload = {
        "parameters": {
            **{k: list(v) if isinstance(v, tuple) else v for k, v in p.items()},
            "gap_s": GAP,
            "workers": 2,
            "deployment": "dask kaas scheduler + dask kaas worker --nworkers 2 + "
            "dask-kaas gateway, each its own process; client here",
        },
        "method": __doc__,
    }
    try:
        with (
            deployed.deployed_cluster("host", 2, device_memory="512MiB") as (address, store_url),
            Client(address) as client,
        ):
            store = BufferStore(store_url)
            repo = FunctionRepository(store)
            rng = np.random.default_rng(0)
            for n in (1024, *p["big_ns"]):
                WEIGHTS[n] = rng.standard_normal(n).astype(np.float32)
                store.put(f"bench/batching/w{n}", WEIGHTS[n], namespace=TENANT)
                function = vadd_function(n)
                function["request"]["buffers"][1]["key"] = f"bench/batching/w{n}"
                repo.put(f"vadd{n}", function, namespace=TENANT)
                for worker in client.scheduler_info()["workers"]:  # the const cached on both workers
                    client.submit(vadd_request(n), x=np.zeros(n, np.float32), workers=[worker], pure=False).result()
            readings = Readings(client)
            log("  throughput at K callers")
            payload["throughput"] = throughput(address, readings, p, log)
            batcher = Batcher(client)
            log("  idle latency")
            payload["idle"] = idle_latency(client, batcher, p)
            tokens = os.path.join(tmp, "tokens.yaml")
            token = add_token(tokens, TENANT)
            with gateway_process(address, store_url, tokens, os.path.join(tmp, "gateway.log")) as url:
                log("  large payloads")
                payload["large"] = large_payloads(client, readings, url, token, p, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    top = max(payload["throughput"], key=lambda r: r["k"])
    big = max(payload["large"], key=lambda r: r["n"])
    payload["targets"] = {
        "throughput_ratio": {
            "value": top["throughput_ratio"],
            "k": top["k"],
            "rule": f">= {TARGETS['throughput_ratio']:g}x: batched calls/s / one-task calls/s",
        },
        "cpu_ratio": {
            "value": top["cpu_ratio"],
            "k": top["k"],
            "rule": f"<= {TARGETS['cpu_ratio']:g}: batched / one-task scheduler CPU per call",
        },
        "idle_ratio": {
            "value": payload["idle"]["idle_ratio"],
            "rule": f"<= {TARGETS['idle_ratio']:g}: batched / plain p50 of one call, idle",
        },
        "gateway_over_direct": {
            "value": big["gateway_over_direct"],
            "n": big["n"],
            "rule": f"<= {TARGETS['gateway_over_direct']:g}: gateway / submit_direct p50",
        },
    }
    for name, t in payload["targets"].items():
        t["met"] = bool(t["value"] >= TARGETS[name] if name == "throughput_ratio" else t["value"] <= TARGETS[name])
    return payload


def draw(payload: dict, plt):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ks = [r["k"] for r in payload["throughput"]]
    for name in ("one_task", "batched"):
        ax1.plot(ks, [r["arms"][name]["calls_per_s"]["median"] for r in payload["throughput"]], "o-", label=name)
    ax1.set_xlabel("callers (K)")
    ax1.set_ylabel("calls/s")
    ax1.set_yscale("log")
    ax1.set_title("throughput, n=1024")
    ax1.legend()
    large = payload["large"]
    xs = np.arange(len(large))
    for i, name in enumerate(("gateway", "submit_direct", "submit")):
        ax2.bar(xs + (i - 1) * 0.27, [r["p50_ms"][name] for r in large], 0.27, label=name)
    ax2.set_xticks(xs, [f"{r['bytes'] / 2**20:g} MiB" for r in large])
    ax2.set_ylabel("p50 ms")
    ax2.set_title("large payloads")
    ax2.legend()
    fig.suptitle(f"batching on {payload['device']}")
    return fig


def report(payload: dict):
    yield table(
        ["K", "arm", "calls/s", "sched us/call", "sched B/call", "calls/task", "client us/call", "workers us/call"],
        [
            [
                r["k"],
                name,
                f"{a['calls_per_s']['median']:.0f}",
                f"{a['scheduler_cpu_us_per_call']['median']:.0f}",
                f"{a['scheduler_bytes_per_call']['median']:.0f}",
                f"{a['calls_per_task']['median']:.1f}",
                f"{a['client_cpu_us_per_call']['median']:.0f}",
                f"{a['workers_cpu_us_per_call']['median']:.0f}",
            ]
            for r in payload["throughput"]
            for name, a in r["arms"].items()
        ],
        right=(0, 2, 3, 4, 5, 6, 7),
    )
    yield ""
    idle = payload["idle"]
    yield f"idle p50: submit {idle['p50_ms']['submit']:.2f} ms, batched {idle['p50_ms']['batched']:.2f} ms"
    yield table(
        ["n", "arm", "p50 ms", "sched B/call", "sched us/call"],
        [
            [
                r["n"],
                name,
                f"{r['p50_ms'][name]:.1f}",
                f"{r['scheduler'][name]['scheduler_bytes_per_call']:.0f}",
                f"{r['scheduler'][name]['scheduler_cpu_us_per_call']:.0f}",
            ]
            for r in payload["large"]
            for name in r["p50_ms"]
        ],
        right=(0, 2, 3, 4),
    )
    yield ""
    for name, t in payload["targets"].items():
        yield f"{name}: {t['value']:.3g} ({t['rule']}): {met(t['met'])}"


SUITE = Suite(
    "batching",
    __doc__,
    measure,
    report,
    SIZES,
    draw=draw,
    host_only=True,
    options=(
        Option("--calls", int, "calls per throughput run"),
        Option("--rounds", int, "throughput runs of each arm"),
        Option("--repeat", int, "idle latency calls of each arm"),
    ),
)


if __name__ == "__main__":  # python -m benchmarks.batching ...: the same as python -m benchmarks batching ...
    raise SystemExit(main(suite="batching"))

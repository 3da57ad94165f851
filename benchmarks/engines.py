"""Engines: the anchor. A no-op Ray task and actor call, a no-op Dask task, and a warm KaaS request
one task per call and through the ``Batcher``, measured in one interleaved run on this machine.

Deployment as users deploy: ``dask kaas scheduler`` and ``dask kaas worker --nworkers 2 --device
host --store file://TMP`` as separate processes, the Dask client in this process; Ray local in this
process, ``ray.init(num_cpus=2, include_dashboard=False)``. Both engines stay up for the whole run,
so each arm sees the other's idle processes: the same machine state for all. Ray is optional:
without it (or with ``KAAS_BENCH_NO_RAY=1``) its arms are skipped and the payload says why.

Arms:

- ``ray_task``: a ``ray.remote`` function returning None, ``ray.get``;
- ``ray_actor``: a no-op method of one actor, ``ray.get``;
- ``dask_noop``: ``client.submit(noop, pure=False)``, ``client.gather``;
- ``kaas_task``: the README's quick start request (``vadd`` of 1024 float32, ``x`` in the call,
  ``w`` tenant alice's const ``model/w``, cached on both workers after the warm-up), one Dask task
  per call: ``client.submit(request, x=x, pure=False)``, ``client.gather``;
- ``kaas_batched``: the same request through one ``dask_kaas.Batcher(client)``:
  ``batcher.submit(request, x=x)``, ``future.result()`` of each.

Each round, every arm in turn: (1) ``latency_calls`` single calls, ``GAP`` idle before each
(``common.interleaved``): the idle round trip; (2) for each K in ``ks``, ``batches`` bursts of K
calls submitted at once, each burst waited for in full: K * batches / elapsed is one throughput
sample. ``rounds`` rounds; reported: p50 latency over all single calls, median calls/s per K.
Every KaaS call has its own ``x`` (one of K inputs) and its ``y`` is checked against NumPy, and
every no-op's result against None, outside the timed spans (``WrongResult`` otherwise).

Headline, at the largest K: batched KaaS req/s / one-task-per-request KaaS req/s (target >= 10),
batched KaaS req/s / Ray task calls/s (target >= 1), and idle p50 of one call through the Batcher /
idle p50 of the same request with ``client.submit`` (target <= 1.05).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import numpy as np

from benchmarks import deployed
from benchmarks.common import Option, Suite, WrongResult, bars, interleaved, main, met, spread
from benchmarks.deployed import ROOT
from dask_kaas.text import table

N = 1024
TENANT, W_KEY = "alice", "model/w"
GAP = 0.02  # seconds idle before each latency call (as in the overhead and gateway suites)
NO_RAY_ENV = "KAAS_BENCH_NO_RAY"
RAY_ARMS = ("ray_task", "ray_actor")
ARMS = (*RAY_ARMS, "dask_noop", "kaas_task", "kaas_batched")
TARGET_BATCHED_OVER_TASK, TARGET_BATCHED_OVER_RAY, TARGET_IDLE_RATIO = 10.0, 1.0, 1.05


def vadd_request():
    """The README's quick start request: ``y = x + w``, ``w`` alice's const ``model/w``."""
    from dask_kaas import BufferSpec, KernelSpec, Literal, Request

    x = BufferSpec("x", 4 * N, dtype="float32", ephemeral=True)
    w = BufferSpec("w", 4 * N, key=W_KEY, const=True)
    y = BufferSpec("y", 4 * N, dtype="float32", ephemeral=True)
    return Request(
        [
            KernelSpec(
                "builtin",
                "vadd",
                grid=-(-N // 128),
                block=128,
                literals=[Literal("i", N)],
                arguments=[(x, "i"), (w, "i"), (y, "o")],
            )
        ],
        tenant=TENANT,
    )


def noop() -> None:
    return None


# ------------------------------------------------------------------ the engines, started
def ray_status() -> str | None:
    """None where Ray can run here, else why its arms are skipped."""
    if os.environ.get(NO_RAY_ENV):
        return f"skipped ({NO_RAY_ENV} is set)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "not installed (pip install -e .[bench])"
    return None


@contextlib.contextmanager
def ray_session(skipped: str | None):
    """``with ray_session(skipped) as ray:`` the ``ray`` module, initialised locally; None when skipped."""
    if skipped:
        yield None
        return
    import ray

    # code_search_path: Ray's workers import benchmarks.engines (the no-op) whatever the cwd
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        job_config=ray.job_config.JobConfig(code_search_path=[ROOT]),
    )
    try:
        yield ray
    finally:
        ray.shutdown()


# ------------------------------------------------------------------ the arms
@dataclass
class Arm:
    """One way of making a call. ``submit(i)`` starts call ``i`` (a KaaS call takes input ``i`` of the
    K prepared) and returns a handle; ``gather(handles)`` waits for them and returns their results in
    order; ``want(i)`` is call i's right ``y`` (None: a no-op, whose result must be None)."""

    name: str
    what: str
    submit: Callable[[int], Any]
    gather: Callable[[list], list]
    want: Callable[[int], np.ndarray] | None = None
    checked: int = 0
    _outs: list = field(default_factory=list)

    def call(self) -> None:
        """One call, waited for (its result checked later, untimed)."""
        i = len(self._outs)
        self._outs.append((i, self.gather([self.submit(i)])[0]))

    def burst(self, k: int) -> None:
        self._outs.extend(enumerate(self.gather([self.submit(i) for i in range(k)])))

    def check(self) -> None:
        for i, out in self._outs:
            right = (
                out is None
                if self.want is None
                else (isinstance(out, dict) and np.allclose(out.get("y"), self.want(i), rtol=1e-6, atol=1e-6))
            )
            if not right:
                raise WrongResult(f"engines: {self.name} call {i} returned a wrong result")
        self.checked += len(self._outs)
        self._outs.clear()


def ray_arms(ray) -> list[Arm]:
    task = ray.remote(noop)

    @ray.remote
    class Noop:
        def noop(self) -> None:
            return None

    actor = Noop.remote()
    return [
        Arm("ray_task", "ray.remote no-op task, ray.get", lambda i: task.remote(), ray.get),
        Arm("ray_actor", "no-op actor method, ray.get", lambda i: actor.noop.remote(), ray.get),
    ]


def dask_arms(client, batcher, req, xs: np.ndarray, want: np.ndarray) -> list[Arm]:
    def right(i):
        return want[i % len(want)]

    def x(i):
        return xs[i % len(xs)]

    return [
        Arm(
            "dask_noop",
            "client.submit(noop, pure=False), client.gather",
            lambda i: client.submit(noop, pure=False),
            client.gather,
        ),
        Arm(
            "kaas_task",
            "client.submit(request, x=x, pure=False), client.gather: one Dask task per call",
            lambda i: client.submit(req, x=x(i), pure=False),
            client.gather,
            right,
        ),
        Arm(
            "kaas_batched",
            "Batcher(client).submit(request, x=x), .result() of each",
            lambda i: batcher.submit(req, x=x(i)),
            lambda fs: [f.result(timeout=120) for f in fs],
            right,
        ),
    ]


def warm(client, req, arms: list[Arm], xs: np.ndarray, k: int) -> None:
    """The const cached on every worker, functions pickled once, the Batcher's slots known."""
    for addr in client.scheduler_info()["workers"]:
        client.submit(req, x=xs[0], pure=False, workers=[addr]).result()
    for arm in arms:
        for _ in range(3):
            arm.call()
        arm.burst(k)
        arm.check()
    time.sleep(0.5)


def burst_rate(arm: Arm, k: int, batches: int) -> float:
    """Calls/s of ``batches`` bursts of ``k`` calls, each waited for in full."""
    start = time.perf_counter()
    for _ in range(batches):
        arm.burst(k)
    elapsed = time.perf_counter() - start
    arm.check()
    return k * batches / elapsed


def run_rounds(arms: list[Arm], p: dict, log) -> list[dict]:
    """``rounds`` rounds; each: every arm's single calls (interleaved), then every arm's bursts per K."""
    latency = {a.name: [] for a in arms}
    rps = {a.name: {k: [] for k in p["ks"]} for a in arms}
    for r in range(p["rounds"]):
        timing = interleaved({a.name: a.call for a in arms}, repeat=p["latency_calls"], gap=GAP)
        for a in arms:
            a.check()
            latency[a.name] += timing[a.name]["runs"]
        for k in p["ks"]:
            for a in arms:
                rps[a.name][k].append(burst_rate(a, k, p["batches"]))
        log(
            f"  round {r + 1}/{p['rounds']}: "
            + ", ".join(
                f"{a.name} {timing[a.name]['median'] * 1e3:.2f} ms, {rps[a.name][max(p['ks'])][-1]:.0f}/s" for a in arms
            )
        )
    return [
        {
            "arm": a.name,
            "what": a.what,
            "p50_ms": spread(latency[a.name])["median"] * 1e3,
            "latency_s": spread(latency[a.name]),
            "throughput": [{"k": k, "calls_per_s": spread(rps[a.name][k])} for k in p["ks"]],
            "results_checked": a.checked,
        }
        for a in arms
    ]


# ------------------------------------------------------------------ the figures that matter
def rps_at(rows: dict, arm: str, k: int) -> float | None:
    row = rows.get(arm)
    return None if row is None else next(t["calls_per_s"]["median"] for t in row["throughput"] if t["k"] == k)


def ratio(numerator: str, denominator: str, num: float | None, den: float | None, target: str, ok) -> dict:
    value = None if num is None or den is None else num / den
    return {
        "numerator": numerator,
        "denominator": denominator,
        "ratio": value,
        "target": target,
        "met": None if value is None else bool(ok(value)),
    }


def headline(arms: list[dict], k: int) -> dict:
    rows = {a["arm"]: a for a in arms}
    batched = rps_at(rows, "kaas_batched", k)
    return {
        "k": k,
        "batched_over_task_rps": ratio(
            f"kaas_batched req/s at K={k}",
            f"kaas_task req/s at K={k}",
            batched,
            rps_at(rows, "kaas_task", k),
            f">= {TARGET_BATCHED_OVER_TASK:g}",
            lambda r: r >= TARGET_BATCHED_OVER_TASK,
        ),
        "batched_over_ray_task_rps": ratio(
            f"kaas_batched req/s at K={k}",
            f"ray_task calls/s at K={k}",
            batched,
            rps_at(rows, "ray_task", k),
            f">= {TARGET_BATCHED_OVER_RAY:g}",
            lambda r: r >= TARGET_BATCHED_OVER_RAY,
        ),
        "batched_idle_p50_over_submit_idle_p50": ratio(
            "kaas_batched idle p50",
            "kaas_task idle p50 (client.submit)",
            rows["kaas_batched"]["p50_ms"],
            rows["kaas_task"]["p50_ms"],
            f"<= {TARGET_IDLE_RATIO:g}",
            lambda r: r <= TARGET_IDLE_RATIO,
        ),
    }


# ------------------------------------------------------------------ suite
SIZES = {
    "full": {"rounds": 12, "latency_calls": 20, "ks": (16, 64), "batches": 5},
    "quick": {"rounds": 4, "latency_calls": 10, "ks": (16, 64), "batches": 3},
    "smoke": {"rounds": 1, "latency_calls": 2, "ks": (2, 4), "batches": 1},
}


def measure(config, p: dict) -> dict:
    from distributed import Client

    from dask_kaas import Batcher, BufferStore

    log = config.log
    rng = np.random.default_rng(0)
    k_max = max(p["ks"])
    w = rng.standard_normal(N).astype(np.float32)
    xs = rng.standard_normal((k_max, N)).astype(np.float32)  # one input per call in flight
    req = vadd_request()
    skipped = ray_status()
    tmp = tempfile.mkdtemp(prefix="kaas-bench-engines-")
    try:
        store_url = f"file://{tmp}/store"
        BufferStore(store_url).put(W_KEY, w, namespace=TENANT)
        log("  starting dask kaas scheduler and worker --nworkers 2" + ("" if skipped else ", and Ray"))
        with (
            deployed.deployed_cluster("host", 2, store_url=store_url) as (address, _),
            Client(address, timeout=60) as client,
            ray_session(skipped) as ray,
        ):
            batcher = Batcher(client)
            arms = (ray_arms(ray) if ray else []) + dask_arms(client, batcher, req, xs, xs + w)
            warm(client, req, arms, xs, k_max)
            load_before = os.getloadavg()[0]
            rows = run_rounds(arms, p, log)
            load_after = os.getloadavg()[0]
            batcher_stats = batcher.stats()
            batcher.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "parameters": {
            **p,
            "ks": list(p["ks"]),
            "gap_s": GAP,
            "workers": 2,
            "request": f"vadd of {N} float32, x in the call (one of K), w tenant {TENANT}'s const "
            f"{W_KEY}, cached on the workers",
        },
        "method": __doc__,
        "deployment": {
            "dask": "dask kaas scheduler, dask kaas worker --nworkers 2 --device host (own processes); "
            "client in the benchmark's process",
            "ray": skipped or "ray.init(num_cpus=2, include_dashboard=False) in the benchmark's process",
        },
        "ray": skipped or metadata.version("ray"),
        "ray_arms": skipped is None,
        "arms": rows,
        "results_checked": sum(r["results_checked"] for r in rows),
        "batcher": batcher_stats,
        "headline": headline(rows, k_max),
        # every arm shares this machine's CPUs: whatever else runs here skews all the figures
        "loadavg_1m": {"before": load_before, "after": load_after},
    }


def draw(payload: dict, plt):
    arms = payload["arms"]
    names = [a["arm"] for a in arms]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    bars(ax1, names, (a["latency_s"] for a in arms), scale=1e3)
    ax1.set_ylabel("ms, idle round trip (median; bars min-max)")
    ax1.set_title("latency of one call")
    ax1.tick_params(axis="x", rotation=30)
    ks = payload["parameters"]["ks"]
    xs = np.arange(len(names))
    width = 0.8 / len(ks)
    for j, k in enumerate(ks):
        bars(
            ax2,
            xs + (j - (len(ks) - 1) / 2) * width,
            (next(t["calls_per_s"] for t in a["throughput"] if t["k"] == k) for a in arms),
            width=width,
            label=f"K={k} in flight",
        )
    ax2.set_xticks(xs, names, rotation=30)
    ax2.set_yscale("log")
    ax2.set_ylabel("calls/s (median; bars min-max)")
    ax2.set_title("throughput")
    ax2.legend()
    fig.suptitle(f"engines on {payload['device']} ({payload['machine']['cpus']} CPUs); ray: {payload['ray']}")
    return fig


def report(payload: dict):
    ks = payload["parameters"]["ks"]
    rows = [
        [
            a["arm"],
            f"{a['p50_ms']:.2f}",
            *(f"{t['calls_per_s']['median']:.0f}" for t in a["throughput"]),
            a["results_checked"],
        ]
        for a in payload["arms"]
    ]
    yield table(["arm", "idle p50 ms", *(f"calls/s K={k}" for k in ks), "checked"], rows, right=range(1, len(ks) + 3))
    if not payload["ray_arms"]:
        yield f"ray: {payload['ray']}: the Ray arms were skipped"
    load = payload["loadavg_1m"]
    yield (
        f"load average (1 min) before / after the rounds: {load['before']:.2f} / {load['after']:.2f} "
        f"on {payload['machine']['cpus']} CPUs"
    )
    b = payload["batcher"]
    yield f"batcher: {b['calls']} calls in {b['batches']} batches ({b['calls'] / max(b['batches'], 1):.1f} per batch)"
    h = payload["headline"]
    for key in ("batched_over_task_rps", "batched_over_ray_task_rps", "batched_idle_p50_over_submit_idle_p50"):
        r = h[key]
        value = "skipped" if r["ratio"] is None else f"{r['ratio']:.2f}x ({met(r['met'])})"
        yield f"{r['numerator']} / {r['denominator']}: {value}, target {r['target']}"


SUITE = Suite(
    "engines",
    __doc__,
    measure,
    report,
    SIZES,
    draw=draw,
    host_only=True,
    options=(
        Option("--rounds", int, "interleaved rounds"),
        Option("--latency-calls", int, "single calls per arm per round"),
        Option("--batches", int, "bursts of K per throughput sample"),
    ),
)


if __name__ == "__main__":  # python -m benchmarks.engines ...: the same as python -m benchmarks engines ...
    raise SystemExit(main(suite="engines"))

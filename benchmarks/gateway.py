"""Gateway: what the Open Inference Protocol gateway adds to a KaaS call, against ``client.submit``.

One LocalKaasCluster (host: 2 workers) on a temporary file store, one ``dask-kaas gateway``
process over it (the command as a tenant's operator starts it), one tenant with a bearer token and
one function per size: ``vadd`` of N float32, ``x`` from the caller, ``w`` a const of the tenant's
namespace (cached on the workers after the warm-up). Both paths run exactly the same KaaS request:
the gateway builds ``fn.request_for(tenant)`` from the function repository, the baseline submits that
very request from this process.

1. Latency, warm, per N in ``ns`` (4 KiB and 1 MiB of float32): (a) ``gateway``: one call with
   ``tritonclient.http`` (binary tensors, its default; the InferInput built and the output read
   inside the call); (b) ``grpc``: the same call with ``tritonclient.grpc`` to the same gateway's
   ``--grpc-port`` (raw tensor contents); (c) ``submit``: ``client.submit(request, x=x,
   pure=False).result()``. Interleaved round-robin, ``repeat`` rounds, ``GAP`` idle before each
   call; each result checked against NumPy outside the timed span. Reported: p50 of each, the
   ratios gateway / submit and grpc / gateway (REST), and the milliseconds the gateway adds.
2. Throughput: ``calls`` calls of the smallest N spread over K threads, K in ``ks``; gateway: each
   thread its own ``InferenceServerClient`` (one connection) to the one gateway process; submit: the
   same K threads on this process's Dask client. Each thread makes one untimed call first; the clock
   runs from all threads released to the last answer. ``rounds`` rounds, the two paths alternated;
   median requests/s of each and their ratio (gateway / submit: below 1 is a loss). Every result
   checked against NumPy.

A loss (ratio above 1) is the gateway's cost: HTTP, the OIP codec, one more process and one more
Dask client between the caller and the scheduler; it is reported as measured.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from benchmarks.common import Option, Suite, WrongResult, local_kaas_cluster, main, spread
from dask_kaas.text import table

TENANT = "bench-gateway"
GAP = 0.02  # seconds idle before each latency call (as in the overhead suite)


def vadd_function(n: int) -> dict:
    """The function document: ``y = x + w`` over ``n`` float32, ``w`` the const ``bench/gateway/w<n>``."""
    return {
        "request": {
            "buffers": [
                {"name": "x", "size": 4 * n, "dtype": "float32", "ephemeral": True},
                {"name": "w", "size": 4 * n, "key": f"bench/gateway/w{n}", "const": True, "dtype": "float32"},
                {"name": "y", "size": 4 * n, "dtype": "float32", "ephemeral": True},
            ],
            "kernels": [
                {
                    "library": "builtin",
                    "kernel": "vadd",
                    "grid": [-(-n // 128)],
                    "block": [128],
                    "literals": [{"type": "i", "value": n}],
                    "arguments": [["x", "i"], ["w", "i"], ["y", "o"]],
                }
            ],
        },
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [n]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [n]}],
    }


def check(y, want, what: str) -> None:
    if y is None or y.shape != want.shape or not np.allclose(y, want, rtol=1e-6, atol=1e-6):
        raise WrongResult(f"gateway: {what} returned a wrong y")


# ------------------------------------------------------------------ the gateway process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class gateway_process:
    """``with gateway_process(scheduler, store_url, tokens) as url:`` a ``dask-kaas gateway``, ready."""

    def __init__(self, scheduler: str, store_url: str, tokens: str, log_path: str):
        self.grpc_port = free_port()
        exe = os.path.join(os.path.dirname(sys.executable), "dask-kaas")
        cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "dask_kaas.cli"]
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.args = [
            *cmd,
            "gateway",
            "--scheduler",
            scheduler,
            "--store",
            store_url,
            "--tokens",
            tokens,
            "--port",
            str(self.port),
            "--grpc-port",
            str(self.grpc_port),
            "--log-level",
            "warning",
        ]
        self.log_path = log_path

    def __enter__(self) -> str:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # ready: connected to the scheduler, which has workers
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=5) as r:
                    if r.status == 200:
                        return self.url
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        self.__exit__()
        with open(self.log_path) as f:
            raise RuntimeError("the gateway did not become ready:\n" + f.read()[-4000:])

    def __exit__(self, *exc):
        self.proc.terminate()  # SIGTERM: uvicorn shuts down, closing its Dask client
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------ one call each way
def triton_client(url: str):
    import tritonclient.http as http

    return http.InferenceServerClient(url, connection_timeout=120, network_timeout=120)


def gateway_call(tc, model: str, token: str, x: np.ndarray) -> np.ndarray:
    import tritonclient.http as http

    inp = http.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # binary tensor extension, binary outputs: tritonclient's defaults
    return tc.infer(model, [inp], headers={"Authorization": f"Bearer {token}"}).as_numpy("y")


def grpc_client(url: str):
    import tritonclient.grpc as grpc

    return grpc.InferenceServerClient(url)


def grpc_call(gc, model: str, token: str, x: np.ndarray) -> np.ndarray:
    import tritonclient.grpc as grpc

    inp = grpc.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)  # raw_input_contents
    return gc.infer(model, [inp], headers={"authorization": f"Bearer {token}"}).as_numpy("y")


def latency(client, tc, gc, model, token, req, x, want, repeat: int) -> dict:
    """Like ``common.interleaved`` (round-robin, ``GAP`` idle before each), each result checked untimed."""
    calls = {
        "gateway": lambda: gateway_call(tc, model, token, x),
        "grpc": lambda: grpc_call(gc, model, token, x),
        "submit": lambda: client.submit(req, x=x, pure=False).result()["y"],
    }
    runs = {name: [] for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            time.sleep(GAP)
            start = time.perf_counter()
            y = fn()
            runs[name].append(time.perf_counter() - start)
            check(y, want, f"{name} (N={x.size})")
    timing = {name: spread(t) for name, t in runs.items()}
    g, r, s = (timing[name]["median"] for name in ("gateway", "grpc", "submit"))
    return {
        "n": int(x.size),
        "bytes": int(x.nbytes),
        "timing_s": timing,
        "p50_ms": {"gateway": g * 1e3, "grpc": r * 1e3, "submit": s * 1e3},
        "ratio_gateway_over_submit": g / s,
        "ratio_grpc_over_gateway": r / g,
        "added_ms": (g - s) * 1e3,
    }


def requests_per_second(k: int, calls: int, one_call) -> float:
    """``calls`` calls (rounded down to a multiple of ``k``) from ``k`` threads; ``one_call(thread)``
    returns a callable that makes (and checks) one call with that thread's own client."""
    per_thread = max(1, calls // k)
    barrier = threading.Barrier(k + 1)

    def worker(i):
        try:
            call = one_call(i)
            call()  # untimed: the connection opened
        except BaseException:
            barrier.abort()  # the others (and the clock) do not wait for this one
            raise
        barrier.wait()
        for _ in range(per_thread):
            call()

    with concurrent.futures.ThreadPoolExecutor(k) as pool:
        futures = [pool.submit(worker, i) for i in range(k)]
        try:
            barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass  # a thread failed: its error is raised below
        start = time.perf_counter()
        for f in futures:
            f.result()  # a WrongResult (or any failure) raised in a thread is raised here
        elapsed = time.perf_counter() - start
    return per_thread * k / elapsed


def throughput(client, url, model, token, req, x, want, ks, calls: int, rounds: int) -> list[dict]:
    def via_gateway(i):
        tc = triton_client(url)
        return lambda: check(gateway_call(tc, model, token, x), want, "gateway (throughput)")

    def via_submit(i):
        return lambda: check(client.submit(req, x=x, pure=False).result()["y"], want, "submit (throughput)")

    runs = {k: {"gateway": [], "submit": []} for k in ks}
    for _ in range(rounds):
        for k in ks:
            runs[k]["gateway"].append(requests_per_second(k, calls, via_gateway))
            runs[k]["submit"].append(requests_per_second(k, calls, via_submit))
    out = []
    for k in ks:
        rps = {name: spread(v) for name, v in runs[k].items()}
        out.append(
            {
                "k": k,
                "calls": max(1, calls // k) * k,
                "rps": rps,
                "ratio_gateway_over_submit": rps["gateway"]["median"] / rps["submit"]["median"],
            }
        )
    return out


# ------------------------------------------------------------------ suite
SIZES = {
    "full": {"ns": (1024, 262144), "repeat": 200, "ks": (1, 8, 16), "calls": 480, "rounds": 3},
    "quick": {"ns": (1024, 262144), "repeat": 40, "ks": (1, 8, 16), "calls": 160, "rounds": 1},
    "smoke": {"ns": (1024,), "repeat": 3, "ks": (1, 2), "calls": 8, "rounds": 1},
}


def measure(config, p: dict) -> dict:
    from dask_kaas.functions import FunctionRepository
    from dask_kaas.gateway.tokens import add_token

    log = config.log
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp(prefix="kaas-bench-gateway-")
    tokens = os.path.join(tmp, "tokens.yaml")
    token = add_token(tokens, TENANT)
    payload = {
        "parameters": {
            "quick": config.quick,
            "ns": list(p["ns"]),
            "repeat": p["repeat"],
            "ks": list(p["ks"]),
            "calls": p["calls"],
            "rounds": p["rounds"],
            "gap_s": GAP,
            "workers": 2,
            "function": "vadd of N float32, x in the call, w a cached const of the tenant",
        },
        "method": __doc__,
    }
    try:
        with local_kaas_cluster("host") as (cluster, client):
            repo = FunctionRepository(cluster.store)
            data = {}
            for n in p["ns"]:  # one function per size, its const in the tenant's namespace
                w = rng.standard_normal(n).astype(np.float32)
                x = rng.standard_normal(n).astype(np.float32)
                cluster.store.put(f"bench/gateway/w{n}", w, namespace=TENANT)
                fn = repo.put(f"vadd{n}", vadd_function(n), namespace=TENANT)
                data[n] = (f"vadd{n}", fn.request_for(TENANT), x, x + w)
            gateway = gateway_process(
                cluster.scheduler_address, cluster.store.url, tokens, os.path.join(tmp, "gateway.log")
            )
            with gateway as url:
                tc, gc = triton_client(url), grpc_client(f"127.0.0.1:{gateway.grpc_port}")
                for model, req, x, want in data.values():  # warm: the const on every worker, both paths
                    for addr in client.scheduler_info()["workers"]:
                        check(client.submit(req, x=x, pure=False, workers=[addr]).result()["y"], want, "warm-up")
                    for _ in range(4):
                        check(gateway_call(tc, model, token, x), want, "gateway warm-up")
                        check(grpc_call(gc, model, token, x), want, "gateway gRPC warm-up")
                payload["latency"] = []
                for n, (model, req, x, want) in data.items():
                    log(f"  latency N={n}: {p['repeat']} rounds")
                    payload["latency"].append(latency(client, tc, gc, model, token, req, x, want, p["repeat"]))
                log(f"  throughput K={list(p['ks'])}: {p['calls']} calls x {p['rounds']} round(s)")
                model, req, x, want = data[min(data)]
                payload["throughput"] = throughput(
                    client, url, model, token, req, x, want, p["ks"], p["calls"], p["rounds"]
                )
                payload["throughput_n"] = int(x.size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return payload


def draw(payload: dict, plt):
    lat, thr = payload["latency"], payload["throughput"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    xs = np.arange(len(lat))
    labels = {
        "gateway": "tritonclient.http -> gateway",
        "grpc": "tritonclient.grpc -> gateway",
        "submit": "client.submit",
    }
    for i, (name, label) in enumerate(labels.items()):
        ax1.bar(xs + (i - 1) * 0.28, [r["p50_ms"][name] for r in lat], 0.28, color=f"C{i}", label=label)
    ax1.set_xticks(xs, [f"N={r['n']}\n{r['ratio_gateway_over_submit']:.2f}x, +{r['added_ms']:.1f} ms" for r in lat])
    ax1.set_ylabel("ms per call, p50 (warm)")
    ax1.set_title("latency of one call")
    ax1.legend()
    ks = [r["k"] for r in thr]
    for name, label in (("gateway", "gateway (K tritonclients)"), ("submit", "client.submit (K threads)")):
        ax2.plot(ks, [r["rps"][name]["median"] for r in thr], "o-", label=label)
    ax2.set_xscale("log", base=2)
    ax2.set_xticks(ks, [str(k) for k in ks])
    ax2.set_xlabel("concurrent clients (K)")
    ax2.set_ylabel("requests/s (median)")
    ax2.set_title(f"throughput, N={payload['throughput_n']}")
    ax2.legend()
    fig.suptitle(f"gateway vs client.submit on {payload['device']}")
    return fig


def report(payload: dict):
    yield table(
        ["N", "bytes", "REST p50 ms", "gRPC p50 ms", "submit p50 ms", "REST/submit", "gRPC/REST", "added ms"],
        [
            [
                r["n"],
                r["bytes"],
                f"{r['p50_ms']['gateway']:.2f}",
                f"{r['p50_ms']['grpc']:.2f}",
                f"{r['p50_ms']['submit']:.2f}",
                f"{r['ratio_gateway_over_submit']:.2f}x",
                f"{r['ratio_grpc_over_gateway']:.2f}x",
                f"{r['added_ms']:+.2f}",
            ]
            for r in payload["latency"]
        ],
        right=range(8),
    )
    yield ""
    yield table(
        ["K", "calls", "gateway req/s", "submit req/s", "gateway/submit"],
        [
            [
                r["k"],
                r["calls"],
                f"{r['rps']['gateway']['median']:.1f}",
                f"{r['rps']['submit']['median']:.1f}",
                f"{r['ratio_gateway_over_submit']:.2f}x",
            ]
            for r in payload["throughput"]
        ],
        right=range(5),
    )


SUITE = Suite(
    "gateway",
    __doc__,
    measure,
    report,
    SIZES,
    draw=draw,
    host_only=True,
    options=(
        Option("--repeat", int, "latency rounds per size"),
        Option("--calls", int, "calls per throughput run"),
        Option("--rounds", int, "throughput runs of each K and path"),
    ),
)


if __name__ == "__main__":  # python -m benchmarks.gateway ...: the same as python -m benchmarks gateway ...
    raise SystemExit(main(suite="gateway"))

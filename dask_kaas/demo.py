"""The demo workload: several tenants' MLP inference chains plus a Jacobi solve, checked against NumPy."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .request import BufferSpec, KernelSpec, Literal, Request
from .text import format_bytes, table

F32 = 4


def _grid(n: int, block: int, limit: int = 1024) -> int:
    return max(1, min(limit, -(-n // block)))


def mlp_request(prefix: str, *, batch: int, d_in: int, hidden: int, classes: int, tenant: str) -> Request:
    """sgemm -> bias_relu -> sgemm -> softmax_rows with the tenant's const weights under ``prefix/``."""
    x = BufferSpec("x", batch * d_in * F32, dtype="float32", shape=(batch, d_in), ephemeral=True)
    w1 = BufferSpec("w1", d_in * hidden * F32, key=f"{prefix}/w1", const=True, dtype="float32")
    b1 = BufferSpec("b1", hidden * F32, key=f"{prefix}/b1", const=True, dtype="float32")
    w2 = BufferSpec("w2", hidden * classes * F32, key=f"{prefix}/w2", const=True, dtype="float32")
    h = BufferSpec("h", batch * hidden * F32)
    logits = BufferSpec("logits", batch * classes * F32)
    y = BufferSpec("y", batch * classes * F32, dtype="float32", shape=(batch, classes), ephemeral=True)
    tile = (16, 16)

    def gemm_grid(m, n):
        return (_grid(n, 16, 65535), _grid(m, 16, 65535))

    kernels = [
        KernelSpec(
            "builtin",
            "sgemm",
            gemm_grid(batch, hidden),
            tile,
            literals=[Literal("i", batch), Literal("i", hidden), Literal("i", d_in)],
            arguments=[(x, "i"), (w1, "i"), (h, "t")],
        ),
        KernelSpec(
            "builtin",
            "bias_relu",
            _grid(batch * hidden, 256),
            256,
            literals=[Literal("i", batch), Literal("i", hidden)],
            arguments=[(b1, "i"), (h, "t")],
        ),
        KernelSpec(
            "builtin",
            "sgemm",
            gemm_grid(batch, classes),
            tile,
            literals=[Literal("i", batch), Literal("i", classes), Literal("i", hidden)],
            arguments=[(h, "t"), (w2, "i"), (logits, "t")],
        ),
        KernelSpec(
            "builtin",
            "softmax_rows",
            batch,
            128,
            literals=[Literal("i", batch), Literal("i", classes)],
            arguments=[(logits, "t"), (y, "o")],
        ),
    ]
    return Request(kernels, tenant=tenant)


def mlp_reference(x, w1, b1, w2):
    h = np.maximum(x @ w1 + b1, 0)
    z = h @ w2
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def jacobi_request(key: str, n: int, sweeps: int, tenant: str) -> Request:
    """``2 * sweeps`` Jacobi steps: x -> x_next -> x, repeated with ``n_iter``."""
    a = BufferSpec("A", n * n * F32, key=key, const=True, dtype="float32", shape=(n, n))
    b = BufferSpec("b", n * F32, dtype="float32", ephemeral=True)
    x = BufferSpec("x", n * F32, dtype="float32", ephemeral=True)
    x_next = BufferSpec("x_next", n * F32, dtype="float32")
    grid, block = _grid(n, 128), 128
    step = [Literal("i", n)]
    return Request(
        [
            KernelSpec(
                "builtin",
                "jacobi_step",
                grid,
                block,
                literals=step,
                arguments=[(a, "i"), (b, "i"), (x, "i"), (x_next, "t")],
            ),
            KernelSpec(
                "builtin",
                "jacobi_step",
                grid,
                block,
                literals=step,
                arguments=[(a, "i"), (b, "i"), (x_next, "t"), (x, "o")],
            ),
        ],
        n_iter=sweeps,
        tenant=tenant,
    )


def jacobi_reference(a, b, x, steps):
    d = np.diag(a)
    r = a - np.diag(d)
    for _ in range(steps):
        x = (b - r @ x) / d
    return x


@dataclass
class Job:
    """One request of the workload with its inputs and the expected result."""

    tenant: str
    request: Request
    inputs: dict
    output: str
    expected: np.ndarray
    rtol: float = 1e-4
    atol: float = 1e-5
    latency: float = field(default=0.0)

    def check(self, result: dict) -> bool:
        got = result.get(self.output)
        return (
            got is not None
            and got.shape == self.expected.shape
            and bool(np.allclose(got, self.expected, rtol=self.rtol, atol=self.atol))
        )


@dataclass
class Workload:
    consts: dict[tuple[str, str], np.ndarray]  # (namespace, key) -> value
    jobs: list[Job]


def build_workload(
    *,
    tenants: int = 4,
    requests: int = 200,
    jacobi: int = 8,
    seed: int = 0,
    batch: int = 32,
    d_in: int = 64,
    hidden: int = 256,
    classes: int = 10,
    jacobi_n: int = 256,
    sweeps: int = 25,
) -> Workload:
    """Each tenant its own MLP weights, in its own store namespace; requests round-robin; plus ``jacobi`` solves."""
    rng = np.random.default_rng(seed)
    consts: dict[tuple[str, str], np.ndarray] = {}
    tenant_reqs = {}
    for t in range(tenants):
        name = f"tenant-{t}"
        prefix = "demo/mlp"
        w1 = (rng.standard_normal((d_in, hidden)) / np.sqrt(d_in)).astype(np.float32)
        b1 = (0.1 * rng.standard_normal(hidden)).astype(np.float32)
        w2 = (rng.standard_normal((hidden, classes)) / np.sqrt(hidden)).astype(np.float32)
        consts.update({(name, f"{prefix}/w1"): w1, (name, f"{prefix}/b1"): b1, (name, f"{prefix}/w2"): w2})
        tenant_reqs[name] = (
            mlp_request(prefix, batch=batch, d_in=d_in, hidden=hidden, classes=classes, tenant=name),
            (w1, b1, w2),
        )
    jobs = []
    names = list(tenant_reqs)
    for i in range(requests):
        name = names[i % len(names)]
        req, (w1, b1, w2) = tenant_reqs[name]
        x = rng.standard_normal((batch, d_in)).astype(np.float32)
        jobs.append(Job(name, req, {"x": x}, "y", mlp_reference(x, w1, b1, w2)))
    if jacobi:
        a = rng.uniform(-1, 1, (jacobi_n, jacobi_n)).astype(np.float32)
        a[np.diag_indices(jacobi_n)] = np.abs(a).sum(axis=1) + 1.0  # strictly diagonally dominant: converges
        consts[("jacobi", "demo/jacobi/A")] = a
        req = jacobi_request("demo/jacobi/A", jacobi_n, sweeps, "jacobi")
        for _ in range(jacobi):
            b = rng.standard_normal(jacobi_n).astype(np.float32)
            x0 = np.zeros(jacobi_n, np.float32)
            expected = jacobi_reference(a.astype(np.float64), b, x0, 2 * sweeps).astype(np.float32)
            jobs.append(Job("jacobi", req, {"b": b, "x": x0}, "x", expected, rtol=1e-3, atol=1e-4))
    order = rng.permutation(len(jobs))
    return Workload(consts, [jobs[i] for i in order])


def run_windowed(client, n: int, submit, on_done, *, window: int = 8) -> float:
    """Run jobs ``0..n-1`` with at most ``window`` in flight; return the elapsed seconds.

    ``submit(i)`` submits job ``i`` and returns its future; ``on_done(i, future, latency)`` is
    called as each finishes (latency: submission to completion, seconds). A bounded window keeps
    latency about service, not about one long queue.
    """
    from distributed import as_completed

    jobs = iter(range(n))
    index, submitted = {}, {}
    stream = as_completed()

    def submit_next():
        i = next(jobs, None)
        if i is not None:
            submitted[i] = time.perf_counter()
            future = submit(i)
            index[future.key] = i
            stream.add(future)

    start = time.perf_counter()
    for _ in range(window):
        submit_next()
    for future in stream:
        i = index.pop(future.key)
        latency = time.perf_counter() - submitted.pop(i)
        submit_next()
        on_done(i, future, latency)
    return time.perf_counter() - start


def run_workload(client, store, workload: Workload, *, window: int = 8, progress: bool = True) -> dict:
    """Seed the store, run every job with at most ``window`` in flight, check every result; return a report."""
    from tqdm import tqdm

    for (namespace, key), value in workload.consts.items():
        store.put(key, value, namespace=namespace)
    jobs = workload.jobs
    wrong, failed = [], []
    bar = tqdm(total=len(jobs), desc="requests", unit="req", disable=not progress, leave=False)

    def submit(i):
        return client.submit(jobs[i].request, pure=False, **jobs[i].inputs)

    def done(i, future, latency):
        job = jobs[i]
        job.latency = latency
        try:
            ok = job.check(future.result())
        except Exception as e:  # a failed request is reported, never hidden
            failed.append((job.tenant, repr(e)))
            ok = None
        if ok is False:
            wrong.append(job.tenant)
        bar.update()

    elapsed = run_windowed(client, len(jobs), submit, done, window=window)
    bar.close()
    return {"elapsed": elapsed, "wrong": wrong, "failed": failed, "jobs": jobs}


def summarize(report: dict, stats: dict[str, dict]) -> list[dict]:
    """Per-tenant rows: requests, p50/p99 latency, throughput, hit rate and bytes loaded (from the workers)."""
    per_tenant: dict[str, dict] = {}
    for worker in stats.values():
        for tenant, row in worker.get("tenants", {}).items():
            acc = per_tenant.setdefault(tenant, {"hits": 0, "misses": 0, "bytes_loaded": 0})
            for k in acc:
                acc[k] += row.get(k, 0)
    rows = []
    by_tenant: dict[str, list[float]] = {}
    for job in report["jobs"]:
        by_tenant.setdefault(job.tenant, []).append(job.latency)
    for tenant in sorted(by_tenant):
        lat = np.array(by_tenant[tenant]) * 1e3
        cache = per_tenant.get(tenant, {"hits": 0, "misses": 0, "bytes_loaded": 0})
        lookups = cache["hits"] + cache["misses"]
        rows.append(
            {
                "tenant": tenant,
                "requests": len(lat),
                "p50_ms": float(np.percentile(lat, 50)),
                "p99_ms": float(np.percentile(lat, 99)),
                "throughput": len(lat) / report["elapsed"],
                "hit_rate": cache["hits"] / lookups if lookups else 0.0,
                "bytes_loaded": int(cache["bytes_loaded"]),
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    """The demo's per-tenant table."""
    return table(
        ["tenant", "requests", "p50 ms", "p99 ms", "req/s", "hit rate", "loaded"],
        (
            [
                r["tenant"],
                r["requests"],
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['throughput']:.1f}",
                f"{r['hit_rate']:.1%}",
                format_bytes(r["bytes_loaded"]),
            ]
            for r in rows
        ),
        right=range(1, 7),
        rule=True,
    )

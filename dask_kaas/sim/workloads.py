"""What the simulator replays: functions (tenant, consts, kernel time, SLO) and the times they are called.

- :func:`azure_like`: synthetic traces shaped as the Azure Functions 2019 trace is, the way AlpaServe
  replays it: Zipf popularity over functions, each function's arrivals a Gamma renewal process
  (its rate from the popularity, one coefficient of variation for all: CV 1 is Poisson, larger is
  burstier), heavy-tailed (log-normal) kernel times and const (weight) sizes.
- :func:`zipf_trace` and :func:`cyclic_trace`: the small closed-loop traces of the placement and
  eviction experiments (tenants drawn i.i.d. from a Zipf law, or served round robin).
- :func:`read_azure_trace`: the Azure Functions 2019 CSV files (``invocations_per_function_md.*``:
  per-minute counts, and optionally ``function_durations_percentiles.*`` and
  ``app_memory_percentiles.*``), so a user with the real trace replays it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

GiB = 2**30
MiB = 2**20


@dataclass(frozen=True)
class Function:
    """One callable function: whose it is, the consts it reads ((namespace, key), nbytes), its kernel
    seconds; ``in_bytes`` and ``out_bytes``: what a call moves through Dask (its inputs, its outputs);
    ``shape``: what the scheduler predicts its runtime by (live, ``Request.shape_token``: requests of the
    same kernels and sizes share it, whoever's they are); its name when not given."""

    name: str
    tenant: str
    consts: tuple
    kernel_seconds: float
    slo_seconds: float | None = None
    in_bytes: int = 0
    out_bytes: int = 0
    shape: str | None = None

    @property
    def shape_token(self) -> str:
        return self.name if self.shape is None else self.shape

    @property
    def const_bytes(self) -> int:
        return sum(n for _, n in self.consts)


@dataclass
class Workload:
    """Calls of ``functions``: ``calls[i]`` (an index into ``functions``) at ``times[i]`` seconds.

    ``window``: None replays the times (open loop); a number submits that many calls at once and
    the next each time one finishes (a closed loop, as the live benchmarks' clients do), ignoring
    the times. ``clients``: per tenant, a client of its own: a window (that tenant's calls in a
    closed loop of their own, times ignored) or None (its calls at their times); tenants not named
    there are open loop. So several clients keep their own concurrency, and open- and closed-loop
    tenants mix.
    """

    functions: list[Function]
    times: np.ndarray
    calls: np.ndarray
    window: int | None = None
    description: dict = field(default_factory=dict)
    clients: dict | None = None

    def plan(self) -> tuple[np.ndarray, list[tuple[np.ndarray, int]]]:
        """``(open-loop calls in time order, [(a closed-loop client's calls, its window), ...])``."""
        n = len(self.calls)
        if self.clients is None:
            if self.window is not None:
                return np.empty(0, dtype=np.int64), [(np.arange(n), int(self.window))]
            return np.arange(n), []
        tenant_of = np.array([f.tenant for f in self.functions], dtype=object)[self.calls] if n else np.empty(0)
        loops, closed = [], np.zeros(n, dtype=bool)
        for tenant, window in self.clients.items():
            if window is None:
                continue
            mine = np.flatnonzero(tenant_of == tenant)
            closed[mine] = True
            loops.append((mine, int(window)))
        opened = np.flatnonzero(~closed)
        return opened[np.argsort(self.times[opened], kind="stable")], loops

    def __post_init__(self):
        self.times = np.asarray(self.times, dtype=float)
        self.calls = np.asarray(self.calls, dtype=np.int64)
        if self.times.shape != self.calls.shape:
            raise ValueError(f"times and calls differ in length: {self.times.shape} vs {self.calls.shape}")
        if len(self.calls) and (self.calls.min() < 0 or self.calls.max() >= len(self.functions)):
            raise ValueError(f"calls must index functions (0..{len(self.functions) - 1})")
        if self.window is None and self.clients is None and len(self.times) > 1 and np.any(np.diff(self.times) < 0):
            raise ValueError("an open-loop workload's times must be sorted")
        if self.clients is not None and not all(
            w is None or (isinstance(w, int) and not isinstance(w, bool) and w >= 1) for w in self.clients.values()
        ):
            raise ValueError(f"clients maps tenants to a window (a positive int) or None, got {self.clients!r}")

    def __len__(self) -> int:
        return len(self.calls)

    @property
    def duration(self) -> float:
        return float(self.times[-1]) if len(self.times) else 0.0

    def with_slo(self, scale: float, load_seconds) -> Workload:
        """Each function's SLO: ``scale`` x (its kernel time + the time to load its consts cold),
        as AlpaServe sets SLOs as a multiple of a model's own latency."""
        functions = [
            replace(f, slo_seconds=scale * (f.kernel_seconds + load_seconds(f.const_bytes))) for f in self.functions
        ]
        return Workload(
            functions, self.times, self.calls, self.window, {**self.description, "slo_scale": scale}, self.clients
        )


def zipf_popularity(n: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """``p(rank r) ~ 1 / r**s`` over ``n`` items, ranks shuffled over the items."""
    p = 1.0 / np.arange(1, n + 1) ** s
    p /= p.sum()
    return p[rng.permutation(n)]


def _lognormal(rng, median: float, sigma: float, n: int, lo: float, hi: float) -> np.ndarray:
    return np.clip(rng.lognormal(np.log(median), sigma, n), lo, hi)


def azure_like(
    functions: int = 10_000,
    *,
    duration: float = 86_400.0,
    rate: float = 30.0,
    zipf: float = 1.0,
    cv: float = 2.0,
    tenants: int | None = None,
    kernel_median: float = 2.0,
    kernel_sigma: float = 1.0,
    weight_median: float = 1 * GiB,
    weight_sigma: float = 1.0,
    seed: int = 0,
) -> Workload:
    """An Azure-Functions-shaped trace: ``rate`` calls per second in all over ``duration`` seconds.

    Popularity: Zipf(``zipf``) over functions. Arrivals per function: Gamma renewal with rate
    ``rate x p`` and coefficient of variation ``cv``. Kernel seconds per function: log-normal
    (median ``kernel_median``, sigma ``kernel_sigma``; 0.01-120 s, as the trace's function
    durations are heavy tailed, most seconds, some minutes). One const per function,
    log-normal bytes (median ``weight_median``, 16 MiB-24 GiB). ``tenants``: functions are dealt
    to this many tenants round robin (default: each function its own tenant).
    """
    rng = np.random.default_rng(seed)
    popularity = zipf_popularity(functions, zipf, rng)
    kernels = _lognormal(rng, kernel_median, kernel_sigma, functions, 0.01, 120.0)
    weights = _lognormal(rng, weight_median, weight_sigma, functions, 16 * MiB, 24 * GiB).astype(np.int64)
    shape = 1.0 / cv**2
    times, calls = [], []
    for i in range(functions):
        lam = rate * popularity[i]
        expected = lam * duration
        if expected < 1e-9:
            continue
        n = int(expected + 6 * np.sqrt(expected) * max(cv, 1.0) + 10)
        # Gamma inter-arrivals, started at a random phase of the first one (the process is stationary)
        gaps = rng.gamma(shape, 1.0 / (lam * shape), n)
        gaps[0] *= rng.random()
        t = np.cumsum(gaps)
        t = t[t < duration]
        times.append(t)
        calls.append(np.full(len(t), i, dtype=np.int64))
    t = np.concatenate(times) if times else np.zeros(0)
    c = np.concatenate(calls) if calls else np.zeros(0, dtype=np.int64)
    order = np.argsort(t, kind="stable")
    owners = tenants or functions
    width = len(str(functions - 1))
    names = [f"fn-{i:0{width}d}" for i in range(functions)]
    owner_of = [f"tenant-{i % owners:0{len(str(owners - 1))}d}" for i in range(functions)]
    funcs = [
        Function(names[i], owner_of[i], (((owner_of[i], f"{names[i]}/weights"), int(weights[i])),), float(kernels[i]))
        for i in range(functions)
    ]
    return Workload(
        funcs,
        t[order],
        c[order],
        description={
            "kind": "azure-like",
            "functions": functions,
            "duration_s": duration,
            "rate_per_s": rate,
            "zipf": zipf,
            "cv": cv,
            "kernel_median_s": kernel_median,
            "kernel_sigma": kernel_sigma,
            "weight_median_bytes": weight_median,
            "weight_sigma": weight_sigma,
            "seed": seed,
        },
    )


def tenant_functions(tenants: int, const_bytes: int, kernel_seconds: float) -> list[Function]:
    """One function per tenant (``tenant-00`` ...), each reading one const ``w`` of ``const_bytes``: all of
    one shape, as live (the same kernels and sizes)."""
    width = max(2, len(str(tenants - 1)))
    return [
        Function(
            f"tenant-{i:0{width}d}",
            f"tenant-{i:0{width}d}",
            (((f"tenant-{i:0{width}d}", "w"), int(const_bytes)),),
            float(kernel_seconds),
            shape=f"const-{int(const_bytes)}",
        )
        for i in range(tenants)
    ]


def zipf_trace(
    tenants: int, requests: int, *, s: float, seed: int, const_bytes: int, kernel_seconds: float, window: int | None = 8
) -> Workload:
    """Tenants drawn i.i.d. with ``p(rank r) ~ 1/r**s`` (ranks shuffled, seeded), one const each:
    the placement benchmark's trace (same draws for the same seed)."""
    rng = np.random.default_rng(seed)
    p = zipf_popularity(tenants, s, rng)
    calls = rng.choice(tenants, size=requests, p=p)
    return Workload(
        tenant_functions(tenants, const_bytes, kernel_seconds),
        np.zeros(requests),
        calls,
        window,
        {"kind": "zipf", "tenants": tenants, "requests": requests, "zipf": s, "seed": seed},
    )


def cyclic_trace(
    tenants: int, requests: int, *, const_bytes: int, kernel_seconds: float, window: int | None = 8
) -> Workload:
    """Tenants served round robin: a cyclic working set (LRU's worst case when it exceeds the cache)."""
    return Workload(
        tenant_functions(tenants, const_bytes, kernel_seconds),
        np.zeros(requests),
        np.arange(requests) % tenants,
        window,
        {"kind": "cyclic", "tenants": tenants, "requests": requests},
    )


# ----------------------------------------------------------------------- the Azure CSV files
def _rows(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected the Azure Functions trace's CSV header")
        yield header
        yield from reader


def read_azure_trace(
    invocations: str | Path,
    *,
    durations: str | Path | None = None,
    memory: str | Path | None = None,
    seed: int = 0,
    minutes: int | None = None,
    default_kernel_seconds: float = 1.0,
    default_const_bytes: int = 256 * MiB,
    tenant: str = "owner",
) -> Workload:
    """A workload from the Azure Functions 2019 trace's CSV files.

    ``invocations``: ``invocations_per_function_md.anon.dXX.csv`` (``HashOwner, HashApp,
    HashFunction, Trigger, 1, ..., 1440``: calls per minute of one day); each minute's calls are
    spread uniformly at random over the minute (seeded). ``durations``:
    ``function_durations_percentiles.anon.dXX.csv`` (``Average`` in ms, per function) for kernel
    seconds; ``memory``: ``app_memory_percentiles.anon.dXX.csv`` (``AverageAllocatedMb`` per app)
    for each function's const bytes. Functions without either get the defaults. ``tenant``:
    ``"owner"`` (HashOwner, the default), ``"app"`` or ``"function"``. ``minutes``: only the first
    that many minutes.
    """
    if tenant not in ("owner", "app", "function"):
        raise ValueError(f"tenant must be owner, app or function, got {tenant!r}")
    rng = np.random.default_rng(seed)
    avg_ms = _column_map(durations, "HashFunction", "Average") if durations is not None else {}
    app_mb = _column_map(memory, "HashApp", "AverageAllocatedMb") if memory is not None else {}
    rows = _rows(invocations)
    header = next(rows)
    col = _columns(header, invocations, "HashOwner", "HashApp", "HashFunction")
    minute_cols = [i for i, name in enumerate(header) if name.strip().isdigit()]
    if not minute_cols:
        raise ValueError(f"{invocations}: no per-minute columns (1, 2, ..., 1440) in the header")
    if minutes is not None:
        minute_cols = minute_cols[:minutes]
    funcs: list[Function] = []
    times: list[np.ndarray] = []
    calls: list[np.ndarray] = []
    for line, row in enumerate(rows, start=2):
        if len(row) < len(header):
            raise ValueError(f"{invocations}, line {line}: {len(row)} fields, the header has {len(header)}")
        owner, app, fn = row[col["HashOwner"]], row[col["HashApp"]], row[col["HashFunction"]]
        try:
            counts = np.array([int(row[i] or 0) for i in minute_cols], dtype=np.int64)
        except ValueError:
            raise ValueError(f"{invocations}, line {line}: a per-minute count is not an integer") from None
        if (counts < 0).any():
            raise ValueError(f"{invocations}, line {line}: a negative per-minute count")
        index = len(funcs)
        who = {"owner": owner, "app": app, "function": fn}[tenant]
        kernel = avg_ms[fn] / 1e3 if fn in avg_ms else default_kernel_seconds
        nbytes = int(app_mb[app] * MiB) if app in app_mb else default_const_bytes
        funcs.append(Function(fn, who, (((who, f"{app}/{fn}"), max(1, nbytes)),), max(kernel, 1e-6)))
        total = int(counts.sum())
        if total:
            minute = np.repeat(np.arange(len(counts)), counts)
            times.append((minute + rng.random(total)) * 60.0)
            calls.append(np.full(total, index, dtype=np.int64))
    t = np.concatenate(times) if times else np.zeros(0)
    c = np.concatenate(calls) if calls else np.zeros(0, dtype=np.int64)
    order = np.argsort(t, kind="stable")
    return Workload(
        funcs,
        t[order],
        c[order],
        description={
            "kind": "azure-functions-2019",
            "invocations": str(invocations),
            "functions": len(funcs),
            "minutes": len(minute_cols),
            "tenant": tenant,
            "seed": seed,
        },
    )


def _column_map(path, key: str, value: str) -> dict:
    """``{row[key]: float(row[value])}`` over a trace CSV file."""
    rows = _rows(path)
    col = _columns(next(rows), path, key, value)
    return {row[col[key]]: float(row[col[value]]) for row in rows}


def _columns(header, path, *names) -> dict:
    where = {name.strip(): i for i, name in enumerate(header)}
    missing = [n for n in names if n not in where]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (is this the Azure Functions 2019 trace?)")
    return {n: where[n] for n in names}

"""The one harness every suite runs on (in the manner of dask-cuda's ``benchmarks/common.py``).

A suite (``Suite``) is just its experiment: ``measure(config, params) -> dict`` of what it measured,
``report(payload)`` the lines of its table, ``draw(payload, plt)`` its figure, its sizes (``full``,
``quick``, ``smoke``) and its own command-line options. The harness does the rest, the same for all:

- ``Config``: which suite, device, size, output directory, result name, note, the suite's options;
- ``parse_args(argv)``: ``python -m benchmarks SUITE [--device D] [--quick | --smoke] [--out DIR] ...``;
- ``run(config)``: the suite once: measured, plotted, written; returns the payload (and its path);
- ``write_result(config, payload)``: the tidy JSON ``<results>/<name>.json`` (machine, suite, device,
  what the suite measured, wall time, the source measured, the plot's name);
- ``plot_result(config, payload)`` / ``save_plot(path, draw)``: a PNG beside it (none without matplotlib);
- ``print_result(payload)``: the suite's table and where it was written;
- ``main(argv)``: all of it; exit status 1 on a wrong result (``WrongResult``) or any other failure.

Measuring helpers the suites share: ``timeit``, ``interleaved``, ``spread``, ``bars``,
``local_kaas_cluster``, ``machine``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

RESULTS = os.path.join(os.path.dirname(__file__), "results")  # the default; KAAS_BENCH_RESULTS or --out override it
SUITES = (
    "workloads",
    "overhead",
    "contention",
    "scale",
    "store_io",
    "placement",
    "gateway",
    "simulate",
    "engines",
    "batching",
    "gateway_attack",
    "calibrate",
    "validate-sim",
)
ALL = ("workloads", "overhead", "contention", "scale")  # what ``all`` runs, in this order
SIZES = ("full", "quick", "smoke")
DEVICES = ("auto", "host", "cuda")


class WrongResult(AssertionError):
    """A benchmark computed a wrong result: the run fails (exit status 1), whatever its speed."""


# ------------------------------------------------------------------ what a suite is
@dataclass(frozen=True)
class Option:
    """A suite's own command-line option; its default is the chosen size's value of ``dest``."""

    flag: str
    type: Callable = int
    help: str = ""

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Suite:
    """One experiment on the harness.

    ``sizes`` maps ``full``, ``quick`` and ``smoke`` (the smallest that still exercises every path:
    tests) to the parameters ``measure`` gets, ``options`` override them from the command line.
    ``measure(config, params)`` returns the measured payload (it raises ``WrongResult`` on a wrong
    result); ``report(payload)`` yields the printed table's lines; ``draw(payload, plt)`` returns a
    matplotlib figure (None: no plot). ``host_only`` suites run on the host whatever ``--device``
    says; ``per_device_files`` names results ``<suite>-<device>[-quick]``, else ``<suite>[_quick]``.
    ``validate(params)`` returns an error message for parameters it refuses.
    """

    name: str
    doc: str
    measure: Callable[[Config, dict], dict]
    report: Callable[[dict], Iterable[str]]
    sizes: dict
    draw: Callable[[dict, Any], Any] | None = None
    options: tuple[Option, ...] = ()
    host_only: bool = False
    per_device_files: bool = True
    validate: Callable[[dict], str | None] | None = None

    def file_name(self, device: str, size: str) -> str:
        if self.per_device_files:
            return f"{self.name}-{device}" + ("" if size == "full" else f"-{size}")
        return self.name + ("" if size == "full" else f"_{size}")

    def params(self, size: str, options: dict | None = None) -> dict:
        return {**self.sizes[size], **{k: v for k, v in (options or {}).items() if v is not None}}


def get_suite(name: str) -> Suite:
    """The ``SUITE`` of module ``benchmarks.<name>`` (imported on first use)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; one of {', '.join(SUITES)}")
    return importlib.import_module(f"benchmarks.{name.replace('-', '_')}").SUITE


# ------------------------------------------------------------------ the config of one run
def _quiet(*args, **kwargs) -> None:
    return None


@dataclass(frozen=True)
class Config:
    """One run of one suite. ``device`` is what was asked (auto, host, cuda) until ``resolved()``;
    ``smoke`` is smaller than ``quick`` (few requests, one repetition: it proves the suite runs and
    measures nothing worth keeping); ``out`` is the results directory (default ``$KAAS_BENCH_RESULTS``,
    else benchmarks/results); ``name`` the result file name without extension (default the suite's
    rule); ``options`` the suite's own options (override its size's parameters); ``log`` gets the
    progress lines printed during the run (``verbose=False``: none)."""

    suite: str
    device: str = "auto"
    quick: bool = False
    smoke: bool = False
    out: str | None = None
    name: str | None = None
    note: str | None = None
    options: dict = field(default_factory=dict)
    device_requested: str | None = None
    verbose: bool = True

    def __post_init__(self):
        get_suite(self.suite)
        if self.device not in DEVICES:
            raise ValueError(f"--device must be auto, host or cuda, got {self.device!r}")

    @property
    def size(self) -> str:
        return "smoke" if self.smoke else "quick" if self.quick else "full"

    @property
    def log(self) -> Callable:
        return print if self.verbose else _quiet

    def params(self) -> dict:
        """The suite's parameters at this size, the given options over them."""
        return get_suite(self.suite).params(self.size, self.options)

    def results_dir(self) -> str:
        path = os.path.abspath(self.out or os.environ.get("KAAS_BENCH_RESULTS") or RESULTS)
        os.makedirs(path, exist_ok=True)
        return path

    def file_name(self) -> str:
        return self.name or get_suite(self.suite).file_name(self.device, self.size)

    def resolved(self) -> Config:
        """The same config with ``device`` host or cuda (``resolve_device``; host for host-only suites)."""
        if self.device_requested is not None:
            return self
        device = resolve_device(self.device)
        if get_suite(self.suite).host_only:
            device = "host"
        return dataclasses.replace(self, device=device, device_requested=self.device)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` where a GPU answers, else ``host``; ``cuda`` without a GPU fails clearly."""
    if device not in DEVICES:
        raise ValueError(f"--device must be auto, host or cuda, got {device!r}")
    if device == "host":
        return "host"
    from dask_kaas.device import gpu_count

    gpus = gpu_count()
    if device == "cuda" and gpus == 0:
        raise RuntimeError(
            "--device cuda, but no CUDA GPU answers here (is CuPy installed for this CUDA "
            "version, and is a GPU visible?); use --device host or auto"
        )
    return "cuda" if gpus else "host"


# ------------------------------------------------------------------ run once, write, plot, print
def run(config: Config) -> dict:
    """Run the suite of ``config`` once: measure, plot and write its results; the payload, with ``path``."""
    suite = get_suite(config.suite)
    config = config.resolved()
    started = time.perf_counter()
    measured = suite.measure(config, config.params())
    payload = {
        "machine": machine(),
        "suite": suite.name,
        "device": config.device,
        "device_requested": config.device_requested,
        "quick": config.quick,
        **({"smoke": True} if config.smoke else {}),
        **measured,
        "wall_s": time.perf_counter() - started,
        "source": source(),
    }
    if config.note:
        payload["note"] = config.note
    payload["plot"] = plot_result(config, payload)
    if payload["plot"] is None and suite.draw is not None:
        payload["plot_note"] = "matplotlib is not installed: no plot"
    payload["path"] = write_result(config, payload)
    return payload


def kernel_s_per_request(before: dict, after: dict) -> float:
    """Kernel seconds per request between two ``worker_stats`` snapshots, as the devices measured them
    (CUDA events around a timed request's launches; the host's clock on the host device), averaged over
    the requests that were timed."""

    def total(stats, field, name=None):
        return sum((s.get("seconds", {}).get(name, 0.0) if name else s.get(field, 0)) for s in stats.values())

    timed = total(after, "timed_requests") - total(before, "timed_requests")
    seconds = total(after, "seconds", "device_kernels") - total(before, "seconds", "device_kernels")
    return seconds / timed if timed else 0.0


def write_result(config: Config, payload: dict) -> str:
    """``<results>/<name>.json``: the payload (``path`` left out), the machine first; returns its path."""
    path = os.path.join(config.results_dir(), f"{config.file_name()}.json")
    tidy = {"machine": payload.get("machine") or machine(), **{k: v for k, v in payload.items() if k != "path"}}
    with open(path, "w") as f:
        json.dump(tidy, f, indent=2, default=str)
    return path


def plot_result(config: Config, payload: dict) -> str | None:
    """The suite's figure as ``<results>/<name>.png``; its file name, or None (no figure, or no matplotlib)."""
    draw = get_suite(config.suite).draw
    if draw is None:
        return None
    path = save_plot(os.path.join(config.results_dir(), f"{config.file_name()}.png"), lambda plt: draw(payload, plt))
    return path and os.path.basename(path)


def save_plot(path: str, draw) -> str | None:
    """Call ``draw(plt)`` and save a PNG at ``path`` with matplotlib; None (and nothing written) without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig = draw(plt)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars(ax, x, spreads: Iterable[dict], *, scale: float = 1.0, **kwargs):
    """Bars at ``x`` of the medians of ``spreads`` (dicts with median, min, max) times ``scale``, min-max error bars."""
    spreads = list(spreads)
    med = [s["median"] * scale for s in spreads]
    lo = [m - s["min"] * scale for m, s in zip(med, spreads)]
    hi = [s["max"] * scale - m for m, s in zip(med, spreads)]
    kwargs.setdefault("capsize", 3)
    return ax.bar(x, med, yerr=[lo, hi], **kwargs)


def print_result(payload: dict, file=None) -> None:
    """The suite's table, headed by its name and device, and where its results were written."""
    out = file or sys.stdout
    size = "smoke" if payload.get("smoke") else "quick" if payload.get("quick") else "full"
    print(f"\n{payload['suite']} on {payload['device']} ({size})", file=out)
    for line in get_suite(payload["suite"]).report(payload):
        print(line, file=out)
    print(
        f"written: {payload.get('path')}" + (f" and {payload['plot']}" if payload.get("plot") else " (no plot)"),
        file=out,
        flush=True,
    )


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


# ------------------------------------------------------------------ command line
USAGE = """\
``python -m benchmarks SUITE [--device auto|host|cuda] [--quick | --smoke] [--out DIR] [options]``

SUITE: workloads, overhead, contention, scale, store_io, placement, gateway, or
all (workloads, overhead, contention, scale, in that order). Each suite writes
its results as JSON (and a PNG plot) under benchmarks/results/, or under
``--out`` / ``$KAAS_BENCH_RESULTS``: ``<suite>-<device>[-quick].json`` (gateway:
host only, ``gateway-host[-quick].json``), for store_io and placement (host
only, whatever ``--device`` says) ``<suite>[_quick].json``.
``python -m benchmarks SUITE --help`` lists a suite's own options. Exit status 1
when a suite computes a wrong result (``WrongResult``) or fails in any other way
(the others still run), else 0. ``python -m benchmarks.<suite> ...`` is the same
as ``python -m benchmarks <suite> ...``.
"""


def _defaults(suite: Suite, dest: str) -> str:
    """``600; quick 150, smoke 24``: the full size's default, then the other sizes' where they differ."""
    full = suite.sizes["full"].get(dest)
    other = [f"{size} {suite.sizes[size][dest]}" for size in SIZES[1:] if suite.sizes[size].get(dest) != full]
    return f"{full}" + (f"; {', '.join(other)}" if other else "")


def build_parser() -> argparse.ArgumentParser:
    """The command line of every suite: common options, then each suite's own (a subcommand per suite)."""
    raw = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--device", choices=DEVICES, default="auto")
    size = common.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes and few repeats (CI)")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="the smallest sizes, one repetition: proves the suite runs (tests), measures nothing",
    )
    common.add_argument(
        "--out", default=None, help="results directory (default benchmarks/results; also $KAAS_BENCH_RESULTS)"
    )
    common.add_argument("--name", default=None, help="result file name without extension (default: the suite's)")
    common.add_argument("--note", default=None, help="free text stored in the result (e.g. the commit measured)")
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=USAGE, formatter_class=raw)
    sub = parser.add_subparsers(dest="suite", required=True, metavar="SUITE")
    for name in SUITES:
        suite = get_suite(name)
        p = sub.add_parser(
            name, parents=[common], help=suite.doc.strip().split("\n")[0], description=suite.doc, formatter_class=raw
        )
        for opt in suite.options:
            p.add_argument(
                opt.flag,
                type=opt.type,
                default=None,
                help=f"{opt.help} (default: {_defaults(suite, opt.dest)})".lstrip(),
            )
    sub.add_parser(
        "all", parents=[common], help=", ".join(ALL) + ", in that order", description=USAGE, formatter_class=raw
    )
    return parser


def parse_args(argv=None, *, suite: str | None = None) -> list[Config]:
    """The configs of a command line (``all``: one per suite of ALL). ``suite``: the command line of
    ``python -m benchmarks.<suite>``, whose arguments lack the suite's name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if suite is not None:
        argv = [suite, *argv]
    parser = build_parser()
    args = parser.parse_args(argv)
    common = {"device": args.device, "quick": args.quick, "smoke": args.smoke, "out": args.out, "note": args.note}
    if args.suite == "all":
        if args.name:
            parser.error("--name names one suite's results; not with all")
        return [Config(name, **common) for name in ALL]
    s = get_suite(args.suite)
    options = {opt.dest: getattr(args, opt.dest) for opt in s.options if getattr(args, opt.dest) is not None}
    config = Config(args.suite, name=args.name, options=options, **common)
    if s.validate is not None:
        error = s.validate(config.params())
        if error:
            parser.error(error)
    return [config]


def main(argv=None, *, suite: str | None = None) -> int:
    """Parse, run each suite once, print its table; a summary last. 0, or 1 on any wrong result or failure."""
    configs = parse_args(argv, suite=suite)
    try:
        configs = [c.resolved() for c in configs]
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    status, summary = 0, []
    for config in configs:
        print(f"== {config.suite} ({config.device}{'' if config.size == 'full' else ', ' + config.size})", flush=True)
        start = time.perf_counter()
        try:
            payload = run(config)
        except WrongResult as e:
            status = 1
            summary.append(f"{config.suite}: WRONG RESULT ({e}) after {time.perf_counter() - start:.1f}s")
        except Exception as e:  # any failure fails the run; the other suites still run
            traceback.print_exc()
            status = 1
            summary.append(f"{config.suite}: FAILED ({type(e).__name__}: {e}) after {time.perf_counter() - start:.1f}s")
        else:
            print_result(payload)
            summary.append(f"{config.suite}: ok in {time.perf_counter() - start:.1f}s -> {payload['path']}")
        print(summary[-1], flush=True)
    print("\n".join(["== summary", *summary]))
    return status


# ------------------------------------------------------------------ what every payload records
def machine() -> dict:
    versions = {}
    for pkg in ("dask-kaas", "dask", "distributed", "numpy", "zarr", "fsspec", "cupy-cuda13x", "rmm-cu13"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "versions": versions,
    }


def source() -> dict:
    """Which dask_kaas was measured: its path, and the git commit and local changes where it is a checkout."""
    import subprocess

    import dask_kaas

    where = os.path.dirname(os.path.dirname(os.path.abspath(dask_kaas.__file__)))
    out = {"dask_kaas": where}
    try:
        git = ["git", "-C", where]
        out["commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        out["uncommitted"] = subprocess.run(
            [*git, "status", "--porcelain", "dask_kaas"], capture_output=True, text=True, check=True
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


# ------------------------------------------------------------------ measuring
def spread(values, *, runs: bool = True) -> dict:
    """Median, min, max (and with ``runs`` the raw values) of repeated measurements."""
    values = list(values)
    out = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    if runs:
        out["runs"] = values
    return out


def timeit(fn, *, repeat: int = 5, setup=None) -> dict:
    """Median, min and max seconds of ``fn()`` over ``repeat`` runs (``setup()`` before each, untimed)."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return spread(times)


def interleaved(fns: dict, *, repeat: int = 5, gap: float = 0.0) -> dict:
    """Time several callables round-robin, so that baseline and candidate see the same machine state;
    ``gap`` seconds idle before each call (back-to-back Dask calls couple through the client's and
    the workers' batched-send intervals, which an isolated request does not see)."""
    runs = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            if gap:
                time.sleep(gap)
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    return {name: spread(t) for name, t in runs.items()}


class local_kaas_cluster:
    """``with local_kaas_cluster(device) as (cluster, client):`` a LocalKaasCluster on a temporary file store.

    host: 2 host-device workers; cuda: one worker per GPU. The store directory is removed afterwards.
    """

    def __init__(self, device: str, *, n_workers: int | None = None, **kwargs):
        self.device, self.n_workers, self.kwargs = device, n_workers, kwargs

    def __enter__(self):
        import tempfile

        from distributed import Client

        from dask_kaas import LocalKaasCluster

        self._root = tempfile.mkdtemp(prefix="kaas-bench-store-")
        n = self.n_workers if self.n_workers is not None else (2 if self.device == "host" else None)
        self.cluster = LocalKaasCluster(
            n_workers=n, device=self.device, dashboard_address=":0", store=f"file://{self._root}", **self.kwargs
        )
        self.client = Client(self.cluster)
        return self.cluster, self.client

    def __exit__(self, *exc):
        import shutil

        try:
            self.client.close()
            self.cluster.close()
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

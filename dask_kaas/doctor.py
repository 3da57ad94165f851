"""``dask-kaas doctor``: check a node the way an operator would before adding it to a cluster.

Each check returns a :class:`Check` (``ok``, ``fail``, ``skip`` or ``info``) with a one-line
detail and its figures. :func:`diagnose` runs them in order and never raises: a check that
breaks is a ``fail`` naming what broke. On the CUDA device the kernels run against NumPy,
memory comes from the worker's RMM pool, and copies and launches are timed against raw CuPy;
on the host device the same checks run on the host stand-in, and the report says exactly why
CUDA is unavailable.
"""

from __future__ import annotations

import importlib
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np

from .device import cuda_unavailable_reason, gpu_present, make_device, resolve_kind
from .errors import DeviceMemoryError
from .kernels import nvrtc
from .text import table

MiB = 2**20
EMPTY_SOURCE = 'extern "C" __global__ void empty(int n, float* y) {}\n'


@dataclass
class Check:
    name: str
    status: str  # ok | fail | skip | info
    detail: str
    figures: dict = field(default_factory=dict)


def _versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for module in ("dask_kaas", "dask", "distributed", "numpy", "zarr", "cupy", "rmm"):
        try:
            out[module] = getattr(importlib.import_module(module), "__version__", "?")
        except Exception as e:
            out[module] = f"not importable ({type(e).__name__})"
    if nvrtc.available():
        out["nvrtc"] = ".".join(map(str, nvrtc.version()))
        out["nvrtc_path"] = nvrtc.library_path()
    else:
        out["nvrtc"] = "not found"
    return out


def check_versions() -> Check:
    figures = _versions()
    reason = cuda_unavailable_reason()
    figures["gpu_present"] = gpu_present()
    if reason is None:
        import cupy

        figures["cuda_driver"] = ".".join(map(str, nvrtc.cuda_version(cupy.cuda.runtime.driverGetVersion())))
        figures["cuda_runtime"] = ".".join(map(str, nvrtc.cuda_version(cupy.cuda.runtime.runtimeGetVersion())))
        gpus = []
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            props = cupy.cuda.runtime.getDeviceProperties(i)
            name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
            gpus.append(
                {
                    "index": i,
                    "name": name,
                    "arch": f"sm_{props['major']}{props['minor']}",
                    "memory": int(props["totalGlobalMem"]),
                }
            )
        figures["gpus"] = gpus
        described = ", ".join(f"{g['name']} {g['arch']}" for g in gpus)
        detail = (
            f"{len(gpus)} GPU(s): {described}; driver CUDA "
            f"{figures['cuda_driver']}; CuPy {figures['cupy']}; RMM {figures['rmm']}; NVRTC {figures['nvrtc']}"
        )
    else:
        figures["cuda_unavailable"] = reason
        detail = f"CUDA unavailable: {reason}; NVRTC {figures['nvrtc']}"
    return Check("versions", "info", detail, figures)


def check_driver(device) -> Check:
    if device.kind != "cuda":
        return Check("driver", "skip", "host device: no driver to check")
    if not nvrtc.available():
        return Check("driver", "fail", "NVRTC is not installed (install the cuda13 or cuda12 extra)")
    have, built = device.driver, nvrtc.version()
    figures = {"driver_cuda": list(have), "nvrtc": list(built), "target": device.compile_target()}
    if have[0] < built[0]:
        return Check(
            "driver",
            "fail",
            f"NVRTC {built[0]}.{built[1]} builds cubins that need a CUDA {built[0]} "
            f"driver; this driver supports CUDA {have[0]}.{have[1]}",
            figures,
        )
    return Check(
        "driver",
        "ok",
        f"driver CUDA {have[0]}.{have[1]} loads NVRTC {built[0]}.{built[1]} output for {figures['target']}",
        figures,
    )


def check_compile(device) -> Check:
    from .kernels import builtin

    if not nvrtc.available():
        status = "fail" if device.kind == "cuda" else "skip"
        return Check("nvrtc", status, "NVRTC is not installed (install the cuda13 or cuda12 extra)")
    targets = [device.compile_target()] if device.kind == "cuda" else ["sm_90", "compute_90"]
    fresh = type(builtin)(
        builtin.name, source=builtin.source, twins=builtin.twins, constraints=builtin.constraints
    )  # no in-memory cache: really compile
    figures = {}
    for target in targets:
        start = time.perf_counter()
        data, kind = fresh.binary(target)
        figures[target] = {"seconds": time.perf_counter() - start, "bytes": len(data), "kind": kind}
    return Check(
        "nvrtc",
        "ok",
        f"built-in library compiled for {', '.join(targets)} with NVRTC {'.'.join(map(str, nvrtc.version()))}",
        figures,
    )


def check_kernels(runtime, sizes) -> Check:
    from .selfcheck import cases, compare

    ran, problems = 0, []
    for n in sizes:
        for case in cases(n, np.random.default_rng(n)):
            problem = compare(case, runtime.run(case.request, case.inputs), n)
            ran += 1
            if problem:
                problems.append(problem)
    if problems:
        return Check("kernels", "fail", "; ".join(problems[:3]), {"cases": ran, "wrong": problems})
    return Check(
        "kernels",
        "ok",
        f"{ran} runs of the 8 built-in kernels (n = {', '.join(map(str, sizes))}) match NumPy",
        {"cases": ran, "sizes": list(sizes)},
    )


def check_pool(device) -> Check:
    block = 16 * MiB
    count = max(1, min(32, device.capacity // 2 // block))
    before = device.memory_info()
    handles = [device.allocate(block) for _ in range(count)]
    during = device.memory_info()
    while handles:  # pop: a loop variable would keep the last buffer alive
        device.free(handles.pop())
    device.synchronize()
    after = device.memory_info()
    key = "rmm_current_bytes" if "rmm_current_bytes" in before else "used" if "used" in before else None
    figures = {"blocks": count, "block_bytes": block, "before": before, "during": during, "after": after}

    def held(info):  # spares are freed buffers the device keeps for the next request
        return info[key] - info.get("spare_bytes", 0)

    if key is not None and held(after) != held(before):
        return Check(
            "pool", "fail", f"{key} less spares is {held(after)} after freeing, {held(before)} before", figures
        )
    try:
        device.allocate(device.pool_bytes + block if device.kind == "cuda" else device.capacity + block)
    except DeviceMemoryError as e:
        figures["oversize"] = str(e)
    else:
        return Check("pool", "fail", "an allocation larger than the pool succeeded", figures)
    where = "RMM pool" if getattr(device, "rmm", False) else f"{device.kind} device memory"
    return Check(
        "pool",
        "ok",
        f"{count} x 16 MiB allocated and freed from the {where} "
        f"(pool {device_pool(device) // MiB} MiB, cache {device.capacity // MiB} MiB); "
        "an oversize allocation is a DeviceMemoryError",
        figures,
    )


def device_pool(device) -> int:
    return getattr(device, "pool_bytes", device.capacity)


def _best(fn: Callable[[], None], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def check_bandwidth(device, nbytes: int, repeats: int) -> Check:
    if device.kind != "cuda":
        src = np.ones(nbytes, np.uint8)
        dst = np.empty_like(src)
        seconds = _best(lambda: np.copyto(dst, src), repeats)
        return Check(
            "bandwidth",
            "info",
            f"host device: copies are host memcpy, {nbytes / seconds / 1e9:.1f} GB/s at {nbytes // MiB} MiB",
            {"bytes": nbytes, "memcpy_GBps": nbytes / seconds / 1e9},
        )
    import cupy as cp

    dbuf = device.allocate(nbytes)
    stream = device.stream
    pageable = np.ones(nbytes, np.uint8)
    pinned = np.frombuffer(cp.cuda.alloc_pinned_memory(nbytes), np.uint8, nbytes)
    pinned[:] = 1
    figures: dict[str, float] = {"bytes": nbytes}
    for label, host in (("pinned", pinned), ("pageable", pageable)):

        def h2d(host=host):
            dbuf.set(host, stream=stream)
            stream.synchronize()

        def d2h(host=host):
            dbuf.get(stream=stream, out=host)
            stream.synchronize()

        figures[f"h2d_{label}_GBps"] = nbytes / _best(h2d, repeats) / 1e9
        figures[f"d2h_{label}_GBps"] = nbytes / _best(d2h, repeats) / 1e9
    return Check(
        "bandwidth",
        "ok",
        "H2D {h2d_pinned_GBps:.1f} / {h2d_pageable_GBps:.1f} GB/s, D2H {d2h_pinned_GBps:.1f}"
        " / {d2h_pageable_GBps:.1f} GB/s (pinned / pageable) at {mib} MiB".format(mib=nbytes // MiB, **figures),
        figures,
    )


def check_launch(runtime, launches: int, repeats: int) -> Check:
    """An empty kernel K times in one request through the runtime, against the same launches
    made directly (raw CuPy on CUDA, the host twin on the host device)."""
    from .kernels import LaunchConfig, Library
    from .request import BufferSpec, KernelSpec, Literal, Request

    lib = Library.from_source("doctor_empty", EMPTY_SOURCE, twins={"empty": lambda launch, n, y: None})
    y = BufferSpec("y", 4, dtype="float32", ephemeral=True)
    kernel = KernelSpec(lib, "empty", 1, 1, literals=[Literal("i", 1)], arguments=[(y, "o")])
    one, many = Request([kernel]), Request([kernel] * launches)
    t_one = _best(lambda: runtime.run(one), repeats)
    t_many = _best(lambda: runtime.run(many), repeats)
    per_launch = (t_many - t_one) / (launches - 1)
    device = runtime.device
    if device.kind == "cuda":
        import cupy as cp

        data, _ = lib.binary(device.compile_target())
        module = cp.cuda.function.Module()
        module.load(bytes(data))
        fn = module.get_function("empty")
        buf = device.allocate(4)
        args = (np.int32(1), buf)

        def raw():
            for _ in range(launches):
                fn((1, 1, 1), (1, 1, 1), args, stream=device.stream)
            device.stream.synchronize()

        baseline = "raw CuPy launches of the same cubin"
    else:
        bufs = [np.zeros(4, np.uint8)]

        def raw():
            for _ in range(launches):
                lib.run_twin("empty", LaunchConfig((1, 1, 1), (1, 1, 1)), [1], bufs)

        baseline = "direct calls of the host twin"
    t_raw = _best(raw, repeats) / launches
    figures = {
        "launches": launches,
        "runtime_per_launch_us": per_launch * 1e6,
        "raw_per_launch_us": t_raw * 1e6,
        "overhead_per_launch_us": (per_launch - t_raw) * 1e6,
        "request_one_launch_us": t_one * 1e6,
        "baseline": baseline,
    }
    return Check(
        "launch",
        "ok",
        f"{per_launch * 1e6:.1f} us per launch through the runtime vs {t_raw * 1e6:.1f} us "
        f"for {baseline} ({(per_launch - t_raw) * 1e6:+.1f} us); a one-launch request "
        f"{t_one * 1e6:.0f} us",
        figures,
    )


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except Exception as e:
        return Check(name, "fail", f"{type(e).__name__}: {e}", {"traceback": traceback.format_exc()})


def diagnose(device: str | None = None, *, memory=None, quick: bool = False) -> dict:
    """Run every check on ``device`` ("auto", "cuda" or "host"; default ``kaas.device``); the report as a dict."""
    import dask.config

    from .runtime import Runtime
    from .store import BufferStore

    device = device or dask.config.get("kaas.device")
    started = datetime.now(UTC)
    checks = [_guard("versions", check_versions)]
    try:
        kind = resolve_kind(device)
        if kind == "cuda" and cuda_unavailable_reason() is not None:
            raise RuntimeError(f"CUDA was asked for, but {cuda_unavailable_reason()}")
        dev = make_device(kind, memory=memory if memory is not None else ("2GiB" if kind == "cuda" else "1GiB"))
    except Exception as e:
        checks.append(Check("device", "fail", f"{type(e).__name__}: {e}"))
        return _report(device, None, checks, started)
    why = "" if dev.kind == "cuda" else f" (CUDA unavailable: {cuda_unavailable_reason() or 'not asked for'})"
    checks.append(
        Check("device", "ok", f"{dev.kind} device {dev.name!r}, cache {dev.capacity // MiB} MiB{why}", dev.describe())
    )
    sizes = (17, 1000) if quick else (1, 17, 255, 1000, 4099)
    nbytes, repeats = (64 * MiB, 3) if quick else (256 * MiB, 5)
    with (
        tempfile.TemporaryDirectory(prefix="kaas-doctor-") as tmp,
        dask.config.set({"kaas.kernel-cache.directory": os.path.join(tmp, "kernels")}),
    ):
        runtime = Runtime(dev, BufferStore(f"file://{tmp}/store"))
        try:
            checks.append(_guard("driver", lambda: check_driver(dev)))
            checks.append(_guard("nvrtc", lambda: check_compile(dev)))
            compiled = checks[-1].status != "fail"
            checks.append(
                _guard("kernels", lambda: check_kernels(runtime, sizes))
                if compiled or dev.kind == "host"
                else Check("kernels", "skip", "nothing to run: the library did not compile")
            )
            checks.append(_guard("pool", lambda: check_pool(dev)))
            checks.append(_guard("bandwidth", lambda: check_bandwidth(dev, nbytes, repeats)))
            checks.append(
                _guard("launch", lambda: check_launch(runtime, 32, repeats * 4))
                if compiled or dev.kind == "host"
                else Check("launch", "skip", "no compiled kernel")
            )
        finally:
            runtime.close()
    return _report(device, dev, checks, started)


def _report(asked: str, dev, checks: list[Check], started: datetime) -> dict:
    failed = [c.name for c in checks if c.status == "fail"]
    return {
        "date": started.isoformat(timespec="seconds"),
        "host": platform.node(),
        "asked": asked,
        "device": None if dev is None else dev.describe(),
        "checks": [asdict(c) for c in checks],
        "failed": failed,
        "ok": not failed,
        "seconds": (datetime.now(UTC) - started).total_seconds(),
    }


def format_report(report: dict) -> str:
    rows = [
        (c["name"], c["status"].upper() if c["status"] == "fail" else c["status"], c["detail"])
        for c in report["checks"]
    ]
    lines = table(["check", "status", "detail"], rows).split("\n")[1:]
    verdict = "ok" if report["ok"] else f"FAILED: {', '.join(report['failed'])}"
    lines.append(f"doctor: {verdict} ({report['seconds']:.1f} s)")
    return "\n".join(lines)

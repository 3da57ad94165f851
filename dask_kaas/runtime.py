"""Execute one Request on one Device.

The loop, for each request:
  check inputs and that the pinned set fits the device (else fail before touching it)
  pin cached const buffers (miss: read from the store, copy to the device)
  copy call inputs in, read keyed non-const inputs from the store, zero the rest
  launch the kernels in order, ``n_iter`` times over
  copy outputs back, persist the non-ephemeral ones under their keys
  release pins (consts stay cached; everything else is freed)
"""
from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from .access import plan_store_access
from .cache import BufferCache, KernelCache
from .device import Device, make_device
from .errors import KaasError, KernelError
from .library import LaunchConfig, is_registered, resolve_library
from .report import ReportBuilder
from .request import Request
from .stats import Counters
from .store import BufferStore, open_store


_ACCOUNTED = ("hits", "compulsory_misses", "capacity_misses", "bytes_from_store")
PREPARED_LAUNCHES = 4096  # distinct launches (kernel, shape, literals) kept prepared per worker


def module_key(library, tenant: str | None) -> tuple:
    """Kernel-cache key of a library: registered libraries are shared, a library a request brings
    is loaded for its tenant alone (no tenant's request can reach another's loaded kernels)."""
    return (None if is_registered(library) else (tenant or "default"), library)


def const_id(spec, version) -> tuple:
    """Cache identity of a const buffer: which committed version of which key, and which bytes of it.

    ``("const", namespace, key, uid, offset, size, version number)``; the uid alone identifies the version.
    """
    return ("const", version.namespace, version.key, version.uid, spec.offset, spec.size, version.version)


class Runtime:
    """Owns a device's buffer cache and kernel cache, and runs requests on it one at a time."""

    def __init__(self, device: Device, store: BufferStore | str | None = None, *, counters: Counters | None = None,
                 kernel_cache_entries: int = 64):
        self.device = device
        self.store = open_store(store)
        self.counters = counters or Counters()
        self.cache = BufferCache(device.capacity, device.allocate, device.free, counters=self.counters)
        self.kernels = KernelCache(self._load_module, max_entries=kernel_cache_entries, counters=self.counters)
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.last_request: dict | None = None
        self.on_device_lost: Callable[[KernelError], None] | None = None
        self.on_report: Callable[[dict], None] | None = None  # called after every request with report()
        self.exclusive = False  # a tenant switch empties the cache (the "exclusive GPU" baseline)
        self._last_tenant: str | None = None
        self._prepared: dict[tuple, tuple] = {}  # launch key -> (module, prepared launch), oldest first
        self._reports = ReportBuilder()

    def _load_module(self, key):
        return self.device.load_module(key[1])

    # ------------------------------------------------------------------ run
    def run(self, request: Request, inputs: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Run ``request`` with ``inputs``; return its outputs by buffer name."""
        if not isinstance(request, Request):
            raise TypeError(f"expected a Request, got {type(request).__name__}")
        counters = self.counters
        with self._lock:
            if self.exclusive and request.tenant != self._last_tenant:
                self.cache.clear()
            self._last_tenant = request.tenant
            start = time.perf_counter()
            before = dict(counters.counts)
            ok = False
            try:
                with counters.phase("total"):
                    result = self._run(request, inputs or {})
                ok = True
            except KaasError as e:
                counters.add("errors")
                counters.add_tenant(request.tenant, errors=1)
                if isinstance(e, KernelError) and not getattr(self.device, "healthy", True) and self.on_device_lost:
                    self.on_device_lost(e)
                raise
            finally:
                seconds = time.perf_counter() - start
                self._account(request, before, seconds)
                if self.on_report is not None:
                    self.on_report(self.report(request, seconds, ok))
            return result

    def _run(self, request: Request, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        counters, device, cache = self.counters, self.device, self.cache
        with counters.phase("validate"):
            data = request.check_inputs(inputs)
            cache.check_fits(request.footprint, lambda: f"{request!r} pins {request.footprint} bytes in "
                                                        f"{len(request.roles)} buffers")
            plan = plan_store_access(self.store, request, data)
            launches = self._launches(request)
        run_id = next(self._ids)
        handles: dict[str, Any] = {}
        held: list[tuple[Any, bool]] = []  # (cache id, keep cached afterwards)
        try:
            with device.session():
                for name, role in request.roles.items():
                    spec = role.spec
                    if spec.const and name not in data:
                        version = plan.reads[name]
                        cid = const_id(spec, version)
                        with counters.phase("load"):
                            handle, hit = cache.acquire(cid, spec.size, const=True,
                                                        fill=self._filler_from_store(spec, version))
                        if not hit:
                            self._drop_stale(cid)
                        held.append((cid, True))
                    else:
                        cid = ("run", run_id, name)
                        with counters.phase("h2d" if name in data else "allocate"):
                            handle, _ = cache.acquire(cid, spec.size, const=False,
                                                      fill=self._filler(role, data.get(name), plan.reads.get(name)))
                        held.append((cid, False))
                    handles[name] = handle

                with counters.phase("kernels"):  # queued; on a GPU they finish within d2h's one synchronize
                    run = device.run
                    for _ in range(request.n_iter):
                        for prepared, names in launches:
                            run(prepared, [handles[n] for n in names])
                counters.add("kernel_launches", request.n_iter * len(launches))

                with counters.phase("d2h"):
                    raws = device.copy_out_many([handles[name] for name in request.outputs])
            result = {}
            for name, raw in zip(request.outputs, raws):
                counters.add("bytes_d2h", raw.nbytes)
                result[name] = request.roles[name].spec.as_result(raw)
            with counters.phase("store_write"):
                for name, (namespace, key) in plan.writes.items():
                    self.store.put(key, result[name], namespace=namespace, wait=False)
                    counters.add("bytes_to_store", request.roles[name].spec.size)
            return result
        finally:
            handles.clear()
            for cid, keep in held:
                cache.release(cid, keep=keep)

    def _launches(self, request: Request) -> list[tuple[Any, list[str]]]:
        """``(prepared launch, buffer names)`` per kernel; launches that recur are prepared once."""
        out = []
        for kernel in request.kernels:
            module = self.kernels.get(module_key(resolve_library(kernel.library), request.tenant))
            key = (id(module), kernel.kernel, kernel.grid, kernel.block, kernel.shared,
                   tuple((lit.type, lit.value) for lit in kernel.literals))
            known = self._prepared.get(key)
            if known is None or known[0] is not module:  # (an id can come back for another module)
                known = (module, self.device.prepare(module, kernel.kernel,
                                                     LaunchConfig(kernel.grid, kernel.block, kernel.shared),
                                                     kernel.literals))
                self._prepared[key] = known
                if len(self._prepared) > PREPARED_LAUNCHES:
                    self._prepared.pop(next(iter(self._prepared)))
            out.append((known[1], [buf.name for buf, _ in kernel.arguments]))
        return out

    def _drop_stale(self, cid: tuple) -> None:
        """Free cached copies of other versions of the key just loaded: no later request can use them."""
        for entry in self.cache.contents():
            other = entry["key"]
            if other[:3] == cid[:3] and other[3] != cid[3] and not entry["pinned"]:
                self.cache.drop(other)

    def _filler_from_store(self, spec, version) -> Callable:
        def fill(handle):
            raw = self.store.read(version, spec.offset, spec.size)
            self.counters.add("bytes_from_store", raw.nbytes)
            self.device.copy_in(handle, raw)
            self.counters.add("bytes_h2d", raw.nbytes)

        return fill

    def _filler(self, role, raw: np.ndarray | None, version=None) -> Callable:
        if raw is not None:
            def fill(handle):
                self.device.copy_in(handle, raw)
                self.counters.add("bytes_h2d", raw.nbytes)
            return fill
        if version is not None:
            return self._filler_from_store(role.spec, version)
        return self.device.zero  # outputs and temporaries start zeroed: no bytes of earlier tenants leak

    def _account(self, request: Request, before: dict, seconds: float) -> None:
        counts = self.counters.counts
        delta = {k: counts[k] - before[k] for k in _ACCOUNTED}
        self.counters.add("requests")
        self.counters.add_tenant(
            request.tenant,
            requests=1,
            hits=delta["hits"],
            misses=delta["compulsory_misses"] + delta["capacity_misses"],
            bytes_loaded=delta["bytes_from_store"],
            seconds=seconds,
        )
        self.last_request = {"tenant": request.tenant, "kernels": request.kernel_names, "seconds": seconds, **delta}

    # ------------------------------------------------------------- reporting
    def stats(self) -> dict:
        """Counters plus device identity and memory figures."""
        out = self.counters.snapshot()
        out.update(
            device=self.device.kind,
            device_name=self.device.name,
            capacity=self.cache.capacity,
            used=self.cache.used,
            pinned=self.cache.pinned_bytes,
            cached_buffers=len(self.cache),
            store=self.store.url,
            memory=self.device.memory_info(),
        )
        return out

    def cache_contents(self) -> list[dict]:
        return self.cache.contents()

    def resident_consts(self) -> list[tuple]:
        """``(namespace, key, uid, version, nbytes)`` of every const buffer the cache holds."""
        return [(e["key"][1], e["key"][2], e["key"][3], e["key"][6], e["nbytes"])
                for e in self.cache.contents() if e["key"][0] == "const"]

    def report(self, request: Request, seconds: float, ok: bool) -> dict:
        """What the scheduler learns after each request (:mod:`dask_kaas.report`): the request's cost,
        and what changed in the cache since the previous report."""
        last = self.last_request or {}
        fields = {
            "tenant": request.tenant,
            "kernels": list(request.kernel_names),
            "hits": last.get("hits", 0),
            "misses": last.get("compulsory_misses", 0) + last.get("capacity_misses", 0),
            "bytes_loaded": last.get("bytes_from_store", 0),
            "shape": request.shape_token,
            "seconds": seconds,
            "ok": ok,
            "device": self.device.kind,
            "capacity": self.cache.capacity,
            "used": self.cache.used,
            "pinned": self.cache.pinned_bytes,
        }
        return self._reports.build(fields, consts=self.resident_consts(), counters=self.counters.counts,
                                   load_seconds=self.counters.seconds["load"])

    def close(self) -> None:
        with self._lock:
            self._prepared.clear()
            self.cache.clear()
            self.kernels.clear()
            self.device.close()


# ------------------------------------------------------- the current runtime
_resolvers: list[Callable[[], Runtime | None]] = []
_local: Runtime | None = None
_local_lock = threading.Lock()


def add_runtime_resolver(resolver: Callable[[], Runtime | None]) -> None:
    """Register a function that returns the runtime of the current context (e.g. the Dask worker's), or None."""
    if resolver not in _resolvers:
        _resolvers.append(resolver)


def current_runtime() -> Runtime:
    """The runtime a request called here should run on: the worker's, else a process-local one."""
    for resolver in _resolvers:
        runtime = resolver()
        if runtime is not None:
            return runtime
    global _local
    with _local_lock:
        if _local is None:
            _local = Runtime(make_device(), None)
        return _local


def run_request(request: Request, inputs: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Run a request on the current runtime (what ``request(**inputs)`` does)."""
    return current_runtime().run(request, inputs or {})


__all__ = ["Runtime", "current_runtime", "add_runtime_resolver", "run_request", "KernelError"]

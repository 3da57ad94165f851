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
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import config
from ..bounded import BoundedDict
from ..device import Device
from ..errors import KaasError, KernelError
from ..kernels import LaunchConfig, resolve_library
from ..report import Report, ReportBuilder, RequestFields
from ..request import Request
from ..store import BufferStore, open_store, plan_store_access
from .cache import BufferCache, KernelCache
from .counters import Counters
from .keys import ConstId, ModuleKey, RunBufferId, const_ref, module_key

REPORTED_PHASES = ("load", "h2d", "kernels", "d2h")  # what a report says a request spent its time on
_ACCOUNTED = ("hits", "compulsory_misses", "capacity_misses", "bytes_from_store")
PREPARED_LAUNCHES = 4096  # distinct launches (kernel, shape, literals) kept prepared per worker


def _forget_locals(exc: BaseException | None) -> None:
    """Clear the locals of the finished frames in ``exc``'s traceback, and in those of the exceptions it
    came from. Dask keeps a failed task's exception with its traceback; its frames' locals would keep
    device buffers alive that the cache has counted as freed. File names and lines stay."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


class Runtime:
    """Owns a device's buffer cache and kernel cache, and runs requests on it one at a time.

    What a KaaS worker runs requests on (:class:`~dask_kaas.KaasWorkerPlugin` builds one per
    worker), and, outside a worker, :func:`~dask_kaas.runtime.local_runtime`. The buffer cache
    holds at most the device's capacity: buffers of a running request are pinned; const buffers
    stay cached after it, keyed by their store version, and are evicted least recently used first
    (unpinned non-const buffers before consts) when a request needs the room.

    Parameters
    ----------
    device : Device
        The device to own (:func:`dask_kaas.device.make_device`: a ``HostDevice`` or a
        ``CudaDevice``); :meth:`close` closes it.
    store : BufferStore, str or None, optional
        Where const buffers and keyed inputs are read and outputs that are not ephemeral are
        written (:func:`~dask_kaas.store.open_store`: a URL, a path, a profile name, or None for
        ``kaas.store``, else the profile ``local``).
    counters : Counters, optional
        Where the caches and the runtime count; default: new ones.
    kernel_cache_entries : int, optional
        Loaded modules kept (least recently used go); default from ``kaas.kernel-cache.modules``.

    Raises
    ------
    StoreError
        When ``store`` names no usable store (an unknown profile, say).

    See Also
    --------
    dask_kaas.run_request : run a request on the current context's runtime.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from dask_kaas import BufferSpec, BufferStore, KernelSpec, Literal, Request
    >>> from dask_kaas.device import HostDevice
    >>> from dask_kaas.runtime import Runtime
    >>> store = BufferStore(tempfile.mkdtemp())
    >>> _ = store.put("model/w", np.ones(4, np.float32), namespace="alice")
    >>> rt = Runtime(HostDevice(1 << 20), store)
    >>> x = BufferSpec("x", 16, dtype="float32", ephemeral=True)
    >>> w = BufferSpec("w", 16, key="model/w", const=True)
    >>> y = BufferSpec("y", 16, dtype="float32", ephemeral=True)
    >>> req = Request([KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", 4)],
    ...                           arguments=[(x, "i"), (w, "i"), (y, "o")])], tenant="alice")
    >>> for i in range(3):
    ...     out = rt.run(req, {"x": np.full(4, i, np.float32)})
    >>> out["y"]
    array([3., 3., 3., 3.], dtype=float32)
    >>> stats = rt.stats()
    >>> stats["compulsory_misses"], stats["hits"], stats["bytes_from_store"], stats["used"]
    (1, 2, 16, 16)
    >>> rt.close()
    """

    def __init__(
        self,
        device: Device,
        store: BufferStore | str | None = None,
        *,
        counters: Counters | None = None,
        kernel_cache_entries: int | None = None,
    ) -> None:
        self.device = device
        self.store = open_store(store)
        self.counters = counters or Counters()
        self.cache = BufferCache(
            device.capacity,
            device.allocate,
            device.free,
            counters=self.counters,
            eviction=config.eviction(),
            hint_key=const_ref,
        )
        if kernel_cache_entries is None:
            kernel_cache_entries = int(config.get("kernel-cache.modules"))
        self.kernels = KernelCache(self._load_module, max_entries=kernel_cache_entries, counters=self.counters)
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.hints_received = 0  # the scheduler's queue hints (want), for tests and the curious
        self.last_request: dict | None = None
        self.on_device_lost: Callable[[KernelError], None] | None = None
        self.on_report: Callable[[Report], None] | None = None  # called after every request with report()
        # (i, error): the calls of the batch about to run from the i-th on were rejected by the scheduler's
        # admission control; set by the worker's runtime resolver from the task's annotation
        self.task_rejection: tuple[int, KaasError] | None = None
        self.exclusive = False  # a tenant switch empties the cache (the "exclusive GPU" baseline)
        # called with each request before it runs (the worker's: TenantError unless the scheduler approved
        # the running task for the request's tenant)
        self.check_tenant: Callable[[Request], None] | None = None
        self._last_tenant: str | None = None
        self._prepared: BoundedDict[tuple, tuple] = BoundedDict(PREPARED_LAUNCHES)  # launch key -> (module, launch)
        self._reports = ReportBuilder()

    def _load_module(self, key: ModuleKey):
        return self.device.load_module(key.library)

    # ------------------------------------------------------------------ run
    def run(self, request: Request, inputs: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Run ``request`` with ``inputs``; return its outputs by buffer name.

        One request at a time (a lock): check the inputs and that the request's buffers can fit
        the device, resolve what it reads from and writes to the store (in the tenant's
        namespace), pin its consts (a hit in the cache, else read from the store), copy the
        inputs in, zero outputs and temporaries, launch the kernels ``n_iter`` times over, copy
        the outputs back and write the non-ephemeral ones to the store (without waiting out
        ``kaas.store-version-ttl``). Everything but the consts is freed afterwards, whatever
        happens. Bad requests fail before the device is touched.

        Parameters
        ----------
        request : Request
            The request to run.
        inputs : mapping of str to array-like, optional
            Call inputs by buffer name (:meth:`Request.check_inputs`).

        Returns
        -------
        dict of str to numpy.ndarray
            Every output by buffer name, viewed as its buffer's dtype and shape.

        Raises
        ------
        TypeError
            When ``request`` is not a :class:`~dask_kaas.Request`.
        RequestError
            For bad inputs (:meth:`Request.check_inputs`), or a missing input that is not
            in the store either.
        DeviceMemoryError
            When the request's buffers cannot fit the device even after eviction.
        KernelError
            When a kernel cannot be compiled, loaded or run (on the host device: no host twin).
            A sticky CUDA fault also calls ``on_device_lost`` (the worker restarts).
        StoreError
            When a stored buffer does not agree with its spec (too few bytes, another dtype),
            the tenant may not reach a key, or the store fails; :class:`StoreKeyError` for a
            const whose key is not in the store.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferSpec, BufferStore, KernelSpec, Literal, Request
        >>> from dask_kaas.device import HostDevice
        >>> from dask_kaas.runtime import Runtime
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> _ = store.put("model/w", np.ones(4, np.float32), namespace="alice")
        >>> rt = Runtime(HostDevice(1 << 20), store)
        >>> x = BufferSpec("x", 16, dtype="float32", ephemeral=True)
        >>> w = BufferSpec("w", 16, key="model/w", const=True)
        >>> y = BufferSpec("y", 16, dtype="float32", ephemeral=True)
        >>> req = Request([KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", 4)],
        ...                           arguments=[(x, "i"), (w, "i"), (y, "o")])], tenant="alice")
        >>> rt.run(req, {"x": np.arange(4, dtype=np.float32)})
        {'y': array([1., 2., 3., 4.], dtype=float32)}
        >>> rt.run(req, {})
        Traceback (most recent call last):
        ...
        dask_kaas.errors.RequestError: missing input 'x': the buffer is ephemeral (never in the store), ...
        """
        if not isinstance(request, Request):
            raise TypeError(f"expected a Request, got {type(request).__name__}")
        if self.check_tenant is not None:
            self.check_tenant(request)
        with self._lock:
            start = time.perf_counter()
            ok = False
            try:
                result = self._run_one(request, inputs or {})
                ok = True
                return result
            finally:
                if self.on_report is not None:
                    self.on_report(self.report(request, time.perf_counter() - start, ok))

    def run_batch(
        self, request: Request, calls: Sequence[Mapping[str, Any]], rejected: tuple[int, KaasError] | None = None
    ) -> list:
        """Run ``request`` once for each call's inputs, in order, in one turn of the device; one outcome
        per call: its outputs, or the :class:`~dask_kaas.KaasError` it alone raised.

        What a batched task runs (:class:`~dask_kaas.request.batch.RequestBatch`). Each call is
        checked, run and accounted exactly as :meth:`run` would (counters count requests, not
        batches); one report follows the whole batch, with ``count`` (calls) and ``failed``.

        Parameters
        ----------
        request : Request
        calls : sequence of mappings
            Each call's inputs by buffer name.
        rejected : (int, KaasError), optional
            ``(i, error)``: calls from the ``i``-th on do not run and get ``error`` (the scheduler's
            admission control rejected them); default: what the scheduler attached to the task being
            run (:attr:`task_rejection`), if anything.

        Returns
        -------
        list
            Per call, ``{buffer name: numpy.ndarray}`` or the exception.

        Raises
        ------
        TypeError
            When ``request`` is not a :class:`~dask_kaas.Request`. Anything but a ``KaasError``
            raised by a call (a bug) propagates and fails the whole batch.

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferSpec, KernelSpec, Literal, Request
        >>> from dask_kaas.device import HostDevice
        >>> from dask_kaas.runtime import Runtime
        >>> rt = Runtime(HostDevice(1 << 20), tempfile.mkdtemp())
        >>> a, b = (BufferSpec(n, 16, dtype="float32", ephemeral=True) for n in "ab")
        >>> double = Request(KernelSpec("builtin", "axpy", 1, 32, literals=[Literal("i", 4), Literal("f", 1.0)],
        ...                             arguments=[(a, "i"), (b, "io")]))
        >>> out = rt.run_batch(double, [{"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)}, {"a": b"x"}])
        >>> out[0]["b"], type(out[1]).__name__, rt.stats()["requests"]
        (array([2., 2., 2., 2.], dtype=float32), 'RequestError', 2)
        >>> rt.close()
        """
        if not isinstance(request, Request):
            raise TypeError(f"expected a Request, got {type(request).__name__}")
        if self.check_tenant is not None:
            self.check_tenant(request)
        if rejected is None:
            rejected, self.task_rejection = self.task_rejection, None
        cut, rejection = rejected if rejected is not None else (len(calls), None)
        outcomes: list = []
        failed, ran = 0, 0
        memo: dict = {}
        with self._lock:
            start = time.perf_counter()
            before = dict(self.counters.counts)
            phases_before = dict(self.counters.seconds)
            try:
                for i, inputs in enumerate(calls):
                    if i >= cut:
                        outcomes.append(rejection)
                        failed += 1
                        continue
                    if not getattr(self.device, "healthy", True):
                        outcomes.append(
                            KernelError(
                                f"{request!r}: not run, the device was lost earlier in this batch (the worker restarts)"
                            )
                        )
                        failed += 1
                        continue
                    ran += 1
                    try:
                        outcomes.append(self._run_one(request, inputs or {}, memo))
                    except KaasError as e:
                        outcomes.append(e)
                        failed += 1
            finally:
                seconds = time.perf_counter() - start
                counts = self.counters.counts
                self.last_request = {
                    "tenant": request.tenant,
                    "kernels": request.kernel_names,
                    "seconds": seconds,
                    **{k: counts[k] - before.get(k, 0) for k in _ACCOUNTED},
                    "phases": self._phases_since(phases_before),
                }
                if self.on_report is not None:
                    self.on_report(self.report(request, seconds / max(ran, 1), True, count=len(calls), failed=failed))
        return outcomes

    def _run_one(self, request: Request, inputs: Mapping[str, Any], memo: dict | None = None) -> dict[str, np.ndarray]:
        """One request, under the lock: run, counted and accounted (no report)."""
        counters = self.counters
        if self.exclusive and request.tenant != self._last_tenant:
            self.cache.clear()
        self._last_tenant = request.tenant
        start = time.perf_counter()
        before = dict(counters.counts)
        phases_before = dict(counters.seconds)
        try:
            with counters.phase("total"):
                return self._run(request, inputs, memo)
        except BaseException as e:
            _forget_locals(e)
            if isinstance(e, KaasError):
                counters.add("errors")
                counters.add_tenant(request.tenant, errors=1)
                if isinstance(e, KernelError) and not getattr(self.device, "healthy", True) and self.on_device_lost:
                    self.on_device_lost(e)
            raise
        finally:
            self._account(request, before, time.perf_counter() - start)
            if self.last_request is not None:
                self.last_request["phases"] = self._phases_since(phases_before)

    def _phases_since(self, before: dict) -> dict:
        """Seconds spent in each stage a request's wait is explained by, since ``before`` (the phase timers)."""
        now = self.counters.seconds
        return {phase: round(now[phase] - before.get(phase, 0.0), 6) for phase in REPORTED_PHASES}

    def _run(self, request: Request, inputs: Mapping[str, Any], memo: dict | None = None) -> dict[str, np.ndarray]:
        """One request on the device. ``memo`` (a batch's): what the calls of one batch share is worked out
        once: the fit check, the prepared launches, and the store plan per set of inputs passed (the
        versions committed when the batch started, as if its calls had all started then)."""
        counters, device, cache = self.counters, self.device, self.cache
        with counters.phase("validate"):
            data = request.check_inputs(inputs)
            shared = memo.get(frozenset(data)) if memo is not None else None
            if shared is None:
                cache.check_fits(
                    request.footprint,
                    lambda: f"{request!r} pins {request.footprint} bytes in {len(request.roles)} buffers",
                )
                shared = (plan_store_access(self.store, request, data), self._launches(request))
                if memo is not None:
                    memo[frozenset(data)] = shared
            plan, launches = shared
        run_id = next(self._ids)
        handles: dict[str, Any] = {}
        held: list[tuple[Any, bool]] = []  # (cache id, keep cached afterwards)
        try:
            with device.session():
                device.mark()
                for name, role in request.roles.items():
                    spec = role.spec
                    if spec.const and name not in data:
                        version = plan.reads[name]
                        const = ConstId.of(spec, version)
                        with counters.phase("load"):
                            handle, hit = cache.acquire(
                                const, spec.size, const=True, fill=self._filler_from_store(spec, version)
                            )
                        if not hit:
                            self._drop_stale(const)
                        held.append((const, True))
                    else:
                        cid = RunBufferId(run_id, name)
                        with counters.phase("h2d" if name in data else "allocate"):
                            handle, _ = cache.acquire(
                                cid,
                                spec.size,
                                const=False,
                                fill=self._filler(role, data.get(name), plan.reads.get(name)),
                            )
                        held.append((cid, False))
                    handles[name] = handle
                del handle
                device.mark()

                with counters.phase("kernels"):  # queued; on a GPU they finish within d2h's one synchronize
                    run = device.run
                    for _ in range(request.n_iter):
                        for prepared, names in launches:
                            run(prepared, [handles[n] for n in names])
                device.mark()
                counters.add("kernel_launches", request.n_iter * len(launches))

                with counters.phase("d2h"):
                    raws = device.copy_out_many([handles[name] for name in request.outputs])
            stages = device.stage_seconds()
            if stages is not None:
                counters.add_stages(stages)
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
            key = (
                id(module),
                kernel.kernel,
                kernel.grid,
                kernel.block,
                kernel.shared,
                tuple((lit.type, lit.value) for lit in kernel.literals),
            )
            known = self._prepared.get(key)
            if known is None or known[0] is not module:  # (an id can come back for another module)
                known = (
                    module,
                    self.device.prepare(
                        module, kernel.kernel, LaunchConfig(kernel.grid, kernel.block, kernel.shared), kernel.literals
                    ),
                )
                self._prepared[key] = known
            out.append((known[1], [buf.name for buf, _ in kernel.arguments]))
        return out

    def _drop_stale(self, cid: ConstId) -> None:
        """Free cached copies of other versions of the key just loaded: no later request can use them."""
        for entry in self.cache.contents():
            other = entry["key"]
            if (
                isinstance(other, ConstId)
                and (other.namespace, other.key) == (cid.namespace, cid.key)
                and other.uid != cid.uid
                and not entry["pinned"]
            ):
                self.cache.drop(other)

    def _filler_from_store(self, spec, version) -> Callable:
        def fill(handle):
            raw = self.store.read(version, spec.offset, spec.size)
            self.counters.add("bytes_from_store", raw.nbytes)
            self.device.copy_in(handle, raw)
            self.counters.add("bytes_h2d", raw.nbytes)

        return fill

    def want(self, hints) -> None:
        """The scheduler's hints for ``queue-aware`` eviction: ``[[namespace, key, n], ...]``, ``n``
        requests queued (or assigned here) that need that const. Malformed hints are ignored: they
        only order evictions."""
        self.hints_received += 1
        wanted = {}
        try:
            for ns, key, n in hints or ():
                wanted[(str(ns), str(key))] = int(n)
        except (TypeError, ValueError):
            return
        self.cache.want(wanted)

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

    def resident_consts(self) -> list[tuple]:
        """``(namespace, key, uid, version, nbytes)`` of every const buffer the cache holds."""
        return [
            (cid.namespace, cid.key, cid.uid, cid.version, e["nbytes"])
            for e in self.cache.contents()
            if isinstance(cid := e["key"], ConstId)
        ]

    def report(self, request: Request, seconds: float, ok: bool, *, count: int = 1, failed: int = 0) -> Report:
        """What the scheduler learns after each request (:mod:`dask_kaas.report`): the request's cost,
        and what changed in the cache since the previous report.

        :meth:`run` calls it after every request and hands the result to ``on_report``. Each call
        advances the report sequence: the first (and every 64th, and the one after
        :meth:`clear_cache`) carries the whole cache (``consts``, ``counters``, ``load_seconds``),
        the others only what changed (``added``, ``removed``, ``counters_delta``,
        ``load_seconds_delta``). The hits, misses and bytes loaded are those of the last request
        run, whichever ``request`` is given.

        Parameters
        ----------
        request : Request
            The request just run: its tenant, kernels and shape token go in the report.
        seconds : float
            How long it ran.
        ok : bool
            Whether it succeeded (a batch: whether it ran).
        count, failed : int, optional
            A batch (:meth:`run_batch`): how many calls it had and how many of them failed;
            ``seconds`` is then the mean per call run, and hits, misses and bytes loaded are the
            whole batch's.

        Returns
        -------
        dict
            ``tenant``, ``kernels``, ``hits``, ``misses``, ``bytes_loaded``, ``shape``, ``seconds``,
            ``ok``, ``device``, ``capacity``, ``used``, ``pinned``, ``seq``, and the cache's consts
            and counters, whole or as changes (consts as ``[namespace, key, uid, version, nbytes]``).

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferSpec, BufferStore, KernelSpec, Literal, Request
        >>> from dask_kaas.device import HostDevice
        >>> from dask_kaas.runtime import Runtime
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> _ = store.put("model/w", np.ones(4, np.float32), namespace="alice")
        >>> rt = Runtime(HostDevice(1 << 20), store)
        >>> x = BufferSpec("x", 16, dtype="float32", ephemeral=True)
        >>> w = BufferSpec("w", 16, key="model/w", const=True)
        >>> y = BufferSpec("y", 16, dtype="float32", ephemeral=True)
        >>> req = Request([KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", 4)],
        ...                           arguments=[(x, "i"), (w, "i"), (y, "o")])], tenant="alice")
        >>> _ = rt.run(req, {"x": np.zeros(4, np.float32)})
        >>> first = rt.report(req, 0.01, True)
        >>> first["seq"], first["tenant"], first["misses"], [c[:2] + c[3:] for c in first["consts"]]
        (1, 'alice', 1, [['alice', 'model/w', 1, 16]])
        >>> _ = rt.run(req, {"x": np.zeros(4, np.float32)})
        >>> second = rt.report(req, 0.01, True)
        >>> second["seq"], second["hits"], second["added"], second["counters_delta"]["hits"]
        (2, 1, [], 1)
        """
        last = self.last_request or {}
        fields: RequestFields = {
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
            "phases": last.get("phases", {}),
        }
        if count != 1 or failed:
            fields["count"], fields["failed"] = count, failed
        return self._reports.build(
            fields,
            consts=self.resident_consts(),
            counters=self.counters.counts,
            load_seconds=self.counters.seconds["load"],
        )

    def clear_cache(self) -> int:
        """Drop every unpinned cached buffer; the next report carries the whole cache again.
        Returns the bytes that remain (pinned by a request running now). Safe while a request runs.

        Loaded modules stay loaded. ``dask_kaas.set_policy(client, ..., clear_caches=True)`` calls
        this on every worker.

        Returns
        -------
        int
            Bytes still cached (pinned by a request running now; 0 when none runs).

        Examples
        --------
        >>> import tempfile
        >>> import numpy as np
        >>> from dask_kaas import BufferSpec, BufferStore, KernelSpec, Literal, Request
        >>> from dask_kaas.device import HostDevice
        >>> from dask_kaas.runtime import Runtime
        >>> store = BufferStore(tempfile.mkdtemp())
        >>> _ = store.put("model/w", np.ones(4, np.float32), namespace="alice")
        >>> rt = Runtime(HostDevice(1 << 20), store)
        >>> x = BufferSpec("x", 16, dtype="float32", ephemeral=True)
        >>> w = BufferSpec("w", 16, key="model/w", const=True)
        >>> y = BufferSpec("y", 16, dtype="float32", ephemeral=True)
        >>> req = Request([KernelSpec("builtin", "vadd", 1, 32, literals=[Literal("i", 4)],
        ...                           arguments=[(x, "i"), (w, "i"), (y, "o")])], tenant="alice")
        >>> _ = rt.run(req, {"x": np.zeros(4, np.float32)})
        >>> rt.cache.used
        16
        >>> rt.clear_cache()
        0
        """
        self.cache.clear()
        self._reports.reset()
        return self.cache.used

    def close(self) -> None:
        """Free every cached buffer and loaded module and close the device (waits for a running request)."""
        with self._lock:
            self._prepared.clear()
            self.cache.clear()
            self.kernels.clear()
            self.device.close()


__all__ = ["Runtime"]

"""The Dask WorkerPlugin that owns a worker's device, caches and runtime."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from distributed import WorkerPlugin, get_worker

from .. import compat, config
from ..device import KINDS, make_device
from ..errors import AdmissionRejected, ConfigError, KaasError, TenantError
from ..eviction import check_eviction
from ..logs import setup_logging
from ..report import REJECTED_ANNOTATION, TENANT_ANNOTATION, WANTED_ANNOTATION, Report
from ..runtime import Runtime
from ..store import BufferStore, open_store
from ..text import format_bytes
from .peer_guard import cluster_access, guard_server

if TYPE_CHECKING:  # annotations only
    from distributed import Worker

logger = logging.getLogger(__name__)

PLUGIN_NAME = "kaas"
RESTART_DELAY = 1.0  # seconds for the erred task's report to reach the scheduler before the worker goes


class KaasWorkerPlugin(WorkerPlugin):
    """Give a worker a KaaS device and runtime; requests called on it run there.

    On ``setup`` (on the worker) it builds the device and a :class:`~dask_kaas.runtime.Runtime`
    over the store, adds the ``GPU`` resource to the worker if it lacks it, and wires the
    runtime's reports to the scheduler and, after a sticky CUDA fault, a restart of the worker
    process through its nanny. ``teardown`` closes the runtime and the device. Requests called
    on the worker (``client.submit(request, ...)``) then run on that runtime
    (:func:`worker_runtime`). The arguments are checked where the plugin is built, so a bad one
    fails on the client rather than on every worker.

    Parameters
    ----------
    device : {"auto", "cuda", "host"}, optional
        Backend; "auto" picks CUDA where a GPU answers (on the worker). Default from
        ``kaas.device`` on the worker.
    device_memory : int or str, optional
        Host device capacity, or the CUDA RMM pool size (bytes, ``"2GiB"``, ``"80%"``).
        Default from ``kaas.host.memory`` / ``kaas.cuda.pool-size`` on the worker.
    store : BufferStore or str, optional
        Where const buffers and keyed outputs live: a store, a URL, a local path or a profile
        name. Default from ``kaas.store``, else the profile ``local``, resolved where the plugin
        is built (it travels as its URL).
    device_index : int, optional
        Which visible CUDA device to use (default 0: one worker per GPU, each
        started with its own ``CUDA_VISIBLE_DEVICES``).
    policy : {"affinity", "balance", "static", "exclusive", "locality"}, optional
        The scheduling policy (default from ``kaas.scheduler.policy`` on the worker);
        ``"exclusive"`` makes the worker empty its cache whenever the tenant changes.
    workers_per_device : int, optional
        How many KaaS workers share this worker's GPU; they split a percentage
        pool size evenly (default from ``kaas.cuda.workers-per-device``).

    Attributes
    ----------
    runtime : Runtime or None
        The worker's runtime, from ``setup`` to ``teardown``.

    Raises
    ------
    ConfigError
        For an unknown device, an unreadable ``device_memory``, a ``device_index`` that is not
        a non-negative integer, or a ``workers_per_device`` that is not a positive integer.
    StoreError
        When ``store`` names no usable store.

    See Also
    --------
    dask_kaas.install : registers this plugin and the scheduler's.
    KaasSchedulerPlugin : its scheduler-side counterpart.

    Examples
    --------
    >>> from distributed import Client, LocalCluster
    >>> from dask_kaas import KaasSchedulerPlugin, KaasWorkerPlugin
    >>> plugin = KaasWorkerPlugin(device="host", device_memory="256MiB", store="memory://doc-workers")
    >>> plugin.device, plugin.store
    ('host', BufferStore('memory://doc-workers'))
    >>> KaasWorkerPlugin(device="tpu")
    Traceback (most recent call last):
    ...
    dask_kaas.errors.ConfigError: device must be one of auto, cuda, host, got 'tpu'

    On a cluster (one thread per worker), with a store the worker processes can reach:

    >>> cluster = LocalCluster(n_workers=2, threads_per_worker=1)  # doctest: +SKIP
    >>> client = Client(cluster)  # doctest: +SKIP
    >>> client.register_plugin(KaasSchedulerPlugin())  # doctest: +SKIP
    >>> client.register_plugin(KaasWorkerPlugin(device="host", store="file:///tmp/kaas-store"))  # doctest: +SKIP
    {'tcp://127.0.0.1:...': {'status': 'OK'}, 'tcp://127.0.0.1:...': {'status': 'OK'}}
    >>> client.close(); cluster.close()  # doctest: +SKIP
    """

    name = PLUGIN_NAME
    idempotent = False

    def __init__(
        self,
        device: str | None = None,
        device_memory: int | str | None = None,
        store: BufferStore | str | None = None,
        device_index: int | None = None,
        policy: str | None = None,
        workers_per_device: int | None = None,
    ) -> None:
        if device is not None and device not in KINDS:
            raise ConfigError(f"device must be one of {', '.join(KINDS)}, got {device!r}")
        if device_memory is not None:
            config.parse_size(device_memory, total=1, name="device_memory")  # fail here, not on the worker
        if device_index is not None and (not isinstance(device_index, int) or device_index < 0):
            raise ConfigError(f"device_index must be a non-negative integer, got {device_index!r}")
        self.device = device
        self.device_memory = device_memory
        self.store = store if isinstance(store, BufferStore) else open_store(store)
        if workers_per_device is not None and (not isinstance(workers_per_device, int) or workers_per_device < 1):
            raise ConfigError(f"workers_per_device must be a positive integer, got {workers_per_device!r}")
        self.device_index = device_index
        self.workers_per_device = workers_per_device
        self.policy = policy
        self.runtime: Runtime | None = None

    async def setup(self, worker: Worker) -> None:
        """Build the worker's device and runtime (Dask calls this on the worker)."""
        device = make_device(
            self.device, memory=self.device_memory, device_index=self.device_index or 0, share=self.workers_per_device
        )
        self.runtime = Runtime(device, self.store)
        self.runtime.on_device_lost = lambda error: _restart_soon(worker, error)
        self.runtime.on_report = lambda report: _send_report(worker, report)
        access = await cluster_access(worker.scheduler)
        guard_server(worker, access)
        bound = (access or {}).get("tenant_identity", config.get("scheduler.tenant-identity")) == "tls"
        self.runtime.check_tenant = lambda request: check_approved_tenant(worker, request, bound)
        self.runtime.exclusive = (self.policy or config.get("scheduler.policy")) == "exclusive"
        await compat.ensure_worker_resource(worker, "GPU", 1)
        pool = getattr(device, "pool_bytes", None)
        setup_logging().info(
            "dask-kaas worker %s: %s device %r (CUDA_VISIBLE_DEVICES=%s), cache capacity %s%s, store %s, pid %d",
            worker.address,
            device.kind,
            device.name,
            os.environ.get("CUDA_VISIBLE_DEVICES", "-"),
            format_bytes(device.capacity),
            f", RMM pool {format_bytes(pool)}" if pool else "",
            self.store.url,
            os.getpid(),
        )

    def teardown(self, worker: Worker) -> None:
        """Close the runtime and its device (Dask calls this when the worker closes)."""
        if self.runtime is not None:
            self.runtime.close()
            self.runtime = None


def sendable(value):
    """``value`` with every string made UTF-8 encodable (lone surrogates replaced).

    A message the worker's stream cannot serialize closes that stream, and with it the worker;
    nothing a tenant put in a request may do that.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {sendable(k): sendable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sendable(v) for v in value]
    return value


def _send_report(worker, report: Report) -> None:
    """A successful request's report rides in its task-finished message (no message of its own:
    the worker's batched stream would hold task-finished back for its send interval); a failed
    one's goes over the stream now, ahead of the task-erred that carries no metadata."""
    try:
        report = sendable(report)
        if report.get("ok") and compat.set_task_metadata(worker, report):
            return
        compat.send_to_scheduler(worker, {"op": "kaas-report", **report})
    except Exception:
        logger.exception("dask-kaas: could not deliver a report")


def _restart_soon(worker, error) -> None:
    """A sticky CUDA error poisons the context: let the failed task report first, then restart the worker.

    Closing the worker but not its nanny makes the nanny start a fresh worker process.
    """
    logger.error("dask-kaas: device lost (%s); restarting worker %s", error, worker.address)

    def close():
        worker.loop.add_callback(worker.close, nanny=False, executor_wait=False, reason="kaas-device-lost")

    worker.loop.add_callback(lambda: worker.loop.call_later(RESTART_DELAY, close))


HOW_TO_INSTALL = (
    "start the cluster with dask_kaas.LocalKaasCluster (or `dask kaas worker`), or make an existing one "
    "a KaaS cluster with dask_kaas.install(client)"
)
NO_PLUGIN = f"has no KaaS plugin, so it cannot run a Request: {HOW_TO_INSTALL}"


def worker_runtime() -> Runtime | None:
    """The runtime of the Dask worker this thread runs in; None outside a Dask worker (the first of
    ``kaas.runtime-resolvers``).

    A Request called on a Dask worker without the KaaS plugin is an error, not a run on some
    process-local runtime against a store nobody configured.
    """
    try:
        worker = get_worker()
    except ValueError:
        return None
    runtime = _runtime_of(worker)
    if runtime is None:
        raise KaasError(f"Dask worker {worker.address} {NO_PLUGIN}")
    hints = compat.current_task_annotation(worker, WANTED_ANNOTATION)
    if hints is not None:
        runtime.want(hints)
    runtime.task_rejection = _rejection(compat.current_task_annotation(worker, REJECTED_ANNOTATION))
    return runtime


def check_approved_tenant(worker, request, bound: bool) -> None:
    """Refuse to run ``request`` in a task the scheduler approved for another tenant; with ``bound``
    (``kaas.scheduler.tenant-identity: tls``), also in a task it did not approve at all (a Request
    called from inside some other task). Outside a task (``client.run``, a thread): no task, no check."""
    if not compat.in_task(worker):
        return
    approved = compat.current_task_annotation(worker, TENANT_ANNOTATION)
    tenant = request.tenant or ""
    if approved is None and not bound:
        return
    if type(approved) is not str or approved != tenant:
        raise TenantError(
            f"{request!r} is running in a task the scheduler approved "
            + (
                f"for tenant {approved!r}, not {tenant!r}"
                if isinstance(approved, str)
                else "for no KaaS request (a Request runs only as a task's function)"
            )
        )


def _rejection(annotation) -> tuple[int, AdmissionRejected] | None:
    """The scheduler's ``[first call, message, predicted, deadline]`` for a batch, as the runtime takes it."""
    try:
        first, message, predicted, deadline = annotation
        return int(first), AdmissionRejected(str(message), predicted, deadline)
    except (TypeError, ValueError):
        return None


def _runtime_of(dask_worker) -> Runtime | None:
    """The runtime of ``dask_worker``'s KaaS plugin, or None without the plugin (or before its setup)."""
    return getattr(dask_worker.plugins.get(PLUGIN_NAME), "runtime", None)


def stats_on_worker(dask_worker) -> dict | None:
    """Runs on a worker (through ``client.run``): its runtime's counters, or None without one."""
    runtime = _runtime_of(dask_worker)
    return None if runtime is None else runtime.stats()


def store_on_worker(dask_worker) -> BufferStore | None:
    """Runs on a worker (``client.run``): the store its KaaS plugin reads, or None without the plugin."""
    return getattr(dask_worker.plugins.get(PLUGIN_NAME), "store", None)


def set_exclusive_on_worker(dask_worker, exclusive: bool) -> bool:
    """Runs on a worker (``client.run``): switch the exclusive-tenant baseline on or off."""
    runtime = _runtime_of(dask_worker)
    if runtime is None:
        return False
    runtime.exclusive = exclusive
    return True


def set_eviction_on_worker(dask_worker, eviction: str) -> str:
    """Runs on a worker (``client.run``): the device cache's eviction order from now on."""
    runtime = _runtime_of(dask_worker)
    if runtime is not None:
        runtime.cache.eviction = check_eviction(eviction)
    return eviction


def clear_cache_on_worker(dask_worker) -> int:
    """Runs on a worker (``client.run``): drop every unpinned cached buffer; returns how many bytes remain."""
    runtime = _runtime_of(dask_worker)
    if runtime is None:
        return 0
    return runtime.clear_cache()

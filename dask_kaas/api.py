"""Client-side helpers: cluster-wide state, policy switching, installing KaaS on an existing cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import ConfigError, KaasError
from .eviction import EVICTIONS
from .jupyter import ClusterState, WorkerStats
from .plugins.scheduler import KaasSchedulerPlugin
from .plugins.worker import (
    HOW_TO_INSTALL,
    KaasWorkerPlugin,
    clear_cache_on_worker,
    set_eviction_on_worker,
    set_exclusive_on_worker,
    stats_on_worker,
    store_on_worker,
)
from .scheduling import POLICIES

if TYPE_CHECKING:  # annotations only
    from distributed import Client

    from .store import BufferStore


def worker_stats(client: Client) -> WorkerStats:
    """Per KaaS worker address: cache counters, ``device``, ``capacity`` and ``used`` bytes, per-tenant rows.

    Asks every worker (``client.run``); workers without the KaaS plugin are left out.

    Parameters
    ----------
    client : distributed.Client
        A client of the cluster.

    Returns
    -------
    dict of str to dict
        Per worker address, its runtime's figures: the counters (``requests``, ``hits``,
        ``compulsory_misses``, ``capacity_misses``, ``misses``, ``hit_rate``, ``evictions``,
        ``bytes_h2d``, ``bytes_d2h``, ``bytes_from_store``, ``bytes_to_store``,
        ``kernel_launches``, ``errors``, ...), ``seconds`` per phase (``load``, ``h2d``,
        ``allocate``, ``kernels``, ``d2h``, ``store_write``, ``total``), ``tenants`` (a row per
        tenant), and ``device``, ``device_name``, ``capacity``, ``used``, ``pinned``,
        ``cached_buffers``, ``store`` and ``memory`` (the device's own figures).

    Raises
    ------
    KaasError
        When no worker of the cluster has the KaaS plugin.

    Examples
    --------
    >>> from distributed import Client
    >>> from dask_kaas import LocalKaasCluster, worker_stats
    >>> cluster = LocalKaasCluster(n_workers=2, device="host")  # doctest: +SKIP
    >>> client = Client(cluster)  # doctest: +SKIP
    >>> stats = worker_stats(client)  # doctest: +SKIP
    >>> len(stats), {s["device"] for s in stats.values()}, {s["requests"] for s in stats.values()}  # doctest: +SKIP
    (2, {'host'}, {0})
    >>> client.close(); cluster.close()  # doctest: +SKIP
    """
    return WorkerStats(_from_kaas_workers(client, stats_on_worker))


def _from_kaas_workers(client: Client, function) -> dict:
    """``client.run(function)`` where the KaaS plugin is (it answers None elsewhere); KaasError when nowhere."""
    results = client.run(function)
    found = {addr: value for addr, value in results.items() if value is not None}
    if not found:
        raise KaasError(
            f"none of this cluster's {len(results)} workers has the KaaS plugin, so none can run a "
            f"Request: {HOW_TO_INSTALL}"
        )
    return found


def cluster_store(client: Client):
    """The store the cluster's KaaS workers read consts from, opened as they opened it.

    Put a const there and every worker sees it: ``cluster_store(client).put("model/w", w,
    namespace="alice")``. A ``BufferStore("local")`` or ``open_store("local")`` of the client's own
    is the ``local`` profile *on the client's machine*, which is the cluster's only when they share it.

    Raises
    ------
    KaasError
        When no worker has the KaaS plugin, or the workers read different stores.

    Examples
    --------
    >>> from distributed import Client
    >>> from dask_kaas import LocalKaasCluster, cluster_store
    >>> cluster = LocalKaasCluster(n_workers=1, device="host")  # doctest: +SKIP
    >>> client = Client(cluster)  # doctest: +SKIP
    >>> cluster_store(client) == cluster.store  # doctest: +SKIP
    True
    """
    stores = _from_kaas_workers(client, store_on_worker)
    urls = {store.url for store in stores.values()}
    if len(urls) > 1:
        raise KaasError(
            f"the cluster's workers read different stores ({', '.join(sorted(urls))}): give each the same --store"
        )
    return next(iter(stores.values()))


def _scheduler_plugin(dask_scheduler) -> KaasSchedulerPlugin:
    plugin = dask_scheduler.plugins.get("kaas")
    if plugin is None:
        raise KaasError(
            "the scheduler has no KaaS plugin: use dask_kaas.LocalKaasCluster (or `dask kaas "
            "scheduler`), or dask_kaas.install(client)"
        )
    return plugin


def _scheduler_snapshot(dask_scheduler) -> dict:
    return _scheduler_plugin(dask_scheduler).snapshot()


def cluster_state(client: Client) -> ClusterState:
    """The scheduler's picture of the KaaS cluster, as of the last completed request on each worker.

    A plain dict (a :class:`~dask_kaas.jupyter.ClusterState`, which only adds an HTML view for notebooks):
    ``{"policy", "workers": {address: {"cache": [{namespace, key, version, uid, bytes}], "capacity",
    "used", "pinned", "free", "queue", "queued_seconds", "counters"}}, "tenants": {tenant: {"submitted",
    "completed", "rejected", "failed", "gpu_seconds", "latency_p50", "latency_p99", "latency_mean"}},
    "recent": [{"time", "tenant", "kernels", "worker", "seconds", "hits", "misses", "bytes_loaded", "ok"}]}``
    (latencies in seconds, from submission to completion, seen by the scheduler; ``recent`` holds the
    latest requests, oldest first, as the workers reported them).

    Parameters
    ----------
    client : distributed.Client
        A client of the cluster.

    Returns
    -------
    ClusterState
        The dict above.

    Raises
    ------
    KaasError
        When the scheduler has no KaaS plugin.

    Examples
    --------
    >>> from distributed import Client
    >>> from dask_kaas import LocalKaasCluster, cluster_state
    >>> cluster = LocalKaasCluster(n_workers=2, device="host")  # doctest: +SKIP
    >>> client = Client(cluster)  # doctest: +SKIP
    >>> state = cluster_state(client)  # doctest: +SKIP
    >>> state["policy"], len(state["workers"])  # doctest: +SKIP
    ('affinity', 2)
    >>> client.close(); cluster.close()  # doctest: +SKIP
    """
    return ClusterState(client.run_on_scheduler(_scheduler_snapshot))


def _set_policy_on_scheduler(
    dask_scheduler, policy: str, caches_cleared: bool = False, replication: bool | None = None
) -> str:
    _scheduler_plugin(dask_scheduler).set_policy(policy, caches_cleared=caches_cleared, replication=replication)
    return policy


def set_policy(
    client: Client,
    policy: str,
    *,
    clear_caches: bool = False,
    replication: bool | None = None,
    eviction: str | None = None,
) -> None:
    """Switch the placement policy of a running cluster (``affinity``, ``balance``, ``static``, ``exclusive``,
    ``locality``).

    An unknown policy is a :class:`~dask_kaas.errors.ConfigError` (also a ``ValueError``), raised before
    anything changes.

    The workers are told first (``exclusive`` makes each empty its cache whenever the tenant
    changes; any other policy turns that off), then their caches are cleared if asked, then the
    scheduler switches.

    Parameters
    ----------
    client : distributed.Client
        A client of a KaaS cluster.
    policy : {"affinity", "balance", "static", "exclusive", "locality"}
        The new policy.
    clear_caches : bool, default False
        Empty every worker's device buffer cache too (:meth:`Runtime.clear_cache
        <dask_kaas.runtime.Runtime.clear_cache>`), and tell the scheduler so.
    replication : bool, optional
        Turn replication of hot tenants' consts on or off (``kaas.scheduler.replication``); None
        leaves it as it is.
    eviction : {"lru", "queue-aware"}, optional
        The workers' device cache eviction order (``kaas.eviction``); None leaves it as it is.

    Raises
    ------
    ConfigError
        For an unknown policy or eviction, before anything changes.
    KaasError
        When the scheduler has no KaaS plugin, before anything changes.

    Examples
    --------
    >>> from distributed import Client
    >>> from dask_kaas import LocalKaasCluster, cluster_state, set_policy
    >>> cluster = LocalKaasCluster(n_workers=2, device="host", policy="affinity")  # doctest: +SKIP
    >>> client = Client(cluster)  # doctest: +SKIP
    >>> set_policy(client, "balance", clear_caches=True)  # doctest: +SKIP
    >>> cluster_state(client)["policy"]  # doctest: +SKIP
    'balance'
    >>> set_policy(client, "fastest")  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    dask_kaas.errors.ConfigError: policy must be one of affinity, balance, static, exclusive, locality, got 'fastest'
    >>> client.close(); cluster.close()  # doctest: +SKIP
    """
    if policy not in POLICIES:
        raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if eviction is not None and eviction not in EVICTIONS:
        raise ConfigError(f"eviction must be one of {', '.join(EVICTIONS)}, got {eviction!r}")
    client.run_on_scheduler(_scheduler_plugin)  # no KaaS scheduler: fail before the workers change
    client.run(set_exclusive_on_worker, exclusive=(policy == "exclusive"))
    if eviction is not None:
        client.run(set_eviction_on_worker, eviction=eviction)
    if clear_caches:
        client.run(clear_cache_on_worker)
    client.run_on_scheduler(
        _set_policy_on_scheduler, policy=policy, caches_cleared=clear_caches, replication=replication
    )


def install(
    client: Client,
    *,
    device: str | None = None,
    device_memory: int | str | None = None,
    store: BufferStore | str | None = None,
    policy: str | None = None,
) -> None:
    """Make the cluster behind ``client`` a KaaS cluster: scheduler plugin plus a worker plugin on every worker.

    Workers should run one thread each (``dask worker --nthreads 1``); the
    plugin adds the ``GPU`` resource to workers that do not advertise it.

    The plugins are built here and sent with ``client.register_plugin``: the scheduler's first,
    then the workers' (which also reaches workers that join later). The store is resolved here,
    in the client's process, and travels as its URL.

    Parameters
    ----------
    client : distributed.Client
        A client of the cluster.
    device : {"auto", "cuda", "host"}, optional
        The workers' device; ``"auto"`` is CUDA where a GPU answers on that worker. Default
        from ``kaas.device`` on each worker.
    device_memory : int or str, optional
        Each host device's capacity, or each GPU's RMM pool size (bytes, ``"2GiB"``, ``"80%"``).
        Default from ``kaas.host.memory`` / ``kaas.cuda.pool-size`` on each worker.
    store : BufferStore or str, optional
        The workers' store: a store, a URL, a local path or a profile name. Default from
        ``kaas.store``, else the profile ``local`` (resolved in this process).
    policy : {"affinity", "balance", "static", "exclusive", "locality"}, optional
        The placement policy; default from ``kaas.scheduler.policy`` (read in this process).
        The workers get it too (``exclusive`` empties a worker's cache on a tenant switch).

    Raises
    ------
    ConfigError
        For an unknown device or policy, an unreadable ``device_memory``, or an invalid
        ``kaas.scheduler.tenant-identity``.
    StoreError
        When ``store`` names no usable store.

    See Also
    --------
    LocalKaasCluster : a local cluster that is a KaaS cluster from the start.

    Examples
    --------
    >>> from distributed import Client, LocalCluster
    >>> import dask_kaas
    >>> cluster = LocalCluster(n_workers=2, threads_per_worker=1)  # doctest: +SKIP
    >>> client = Client(cluster)  # doctest: +SKIP
    >>> dask_kaas.install(client, device="host", store="file:///tmp/kaas-store")  # doctest: +SKIP
    >>> {s["device"] for s in dask_kaas.worker_stats(client).values()}  # doctest: +SKIP
    {'host'}
    >>> client.close(); cluster.close()  # doctest: +SKIP
    """
    # both built (and so checked) before either is sent: a bad option leaves the cluster as it was
    scheduler_plugin = KaasSchedulerPlugin(policy=policy)
    worker_plugin = KaasWorkerPlugin(
        device=device, device_memory=device_memory, store=store, policy=scheduler_plugin.policy
    )
    client.register_plugin(scheduler_plugin)
    client.register_plugin(worker_plugin)

"""Client-side helpers: cluster-wide state, policy switching, installing KaaS on an existing cluster."""
from __future__ import annotations

from .errors import ConfigError, KaasError
from .jupyter import ClusterState
from .plugins import KaasWorkerPlugin, clear_cache_on_worker, set_exclusive_on_worker, stats_on_worker
from .plugins.worker import NO_PLUGIN
from .scheduler_ext import KaasSchedulerPlugin
from .scheduler_ext.plugin import POLICIES


def worker_stats(client) -> dict[str, dict]:
    """Per KaaS worker address: cache counters, ``device``, ``capacity`` and ``used`` bytes, per-tenant rows.

    Raises :class:`KaasError` when no worker of the cluster has the KaaS plugin.
    """
    results = client.run(stats_on_worker)
    stats = {addr: stats for addr, stats in results.items() if stats is not None}
    if not stats:
        raise KaasError(f"no worker of this cluster ({len(results)} workers) {NO_PLUGIN}")
    return stats


def _scheduler_snapshot(dask_scheduler) -> dict:
    plugin = dask_scheduler.plugins.get("kaas")
    if plugin is None:
        raise KaasError("the scheduler has no KaaS plugin: use dask_kaas.LocalKaasCluster (or `dask kaas "
                        "scheduler`), or dask_kaas.install(client)")
    return plugin.snapshot()


def cluster_state(client) -> ClusterState:
    """The scheduler's picture of the KaaS cluster, as of the last completed request on each worker.

    A plain dict (a :class:`~dask_kaas.jupyter.ClusterState`, which only adds an HTML view for notebooks):
    ``{"policy", "workers": {address: {"cache": [{namespace, key, version, uid, bytes}], "capacity",
    "used", "pinned", "free", "queue", "queued_seconds", "counters"}}, "tenants": {tenant: {"submitted",
    "completed", "rejected", "failed", "gpu_seconds", "latency_p50", "latency_p99", "latency_mean"}},
    "recent": [{"time", "tenant", "kernels", "worker", "seconds", "hits", "misses", "bytes_loaded", "ok"}]}``
    (latencies in seconds, from submission to completion, seen by the scheduler; ``recent`` holds the
    latest requests, oldest first, as the workers reported them).
    """
    return ClusterState(client.run_on_scheduler(_scheduler_snapshot))


def _set_policy_on_scheduler(dask_scheduler, policy: str, caches_cleared: bool = False) -> str:
    dask_scheduler.plugins["kaas"].set_policy(policy, caches_cleared=caches_cleared)
    return policy


def set_policy(client, policy: str, *, clear_caches: bool = False) -> None:
    """Switch the placement policy of a running cluster (``affinity``, ``balance``, ``static``, ``exclusive``).

    An unknown policy is a :class:`~dask_kaas.errors.ConfigError` (also a ``ValueError``), raised before
    anything changes.
    """
    if policy not in POLICIES:
        raise ConfigError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    client.run(set_exclusive_on_worker, exclusive=(policy == "exclusive"))
    if clear_caches:
        client.run(clear_cache_on_worker)
    client.run_on_scheduler(_set_policy_on_scheduler, policy=policy, caches_cleared=clear_caches)


def install(client, *, device="auto", device_memory=None, store=None, policy=None) -> None:
    """Make the cluster behind ``client`` a KaaS cluster: scheduler plugin plus a worker plugin on every worker.

    Workers should run one thread each (``dask worker --nthreads 1``); the
    plugin adds the ``GPU`` resource to workers that do not advertise it.
    """
    client.register_plugin(KaasSchedulerPlugin(policy=policy))
    client.register_plugin(KaasWorkerPlugin(device=device, device_memory=device_memory, store=store))

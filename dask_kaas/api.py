"""Client-side helpers: cluster-wide stats and installing KaaS on an existing cluster."""
from __future__ import annotations

from .plugins import KaasWorkerPlugin, stats_on_worker
from .scheduler_ext import KaasSchedulerPlugin


def worker_stats(client) -> dict[str, dict]:
    """Per KaaS worker address: cache counters, ``device``, ``capacity`` and ``used`` bytes, per-tenant rows."""
    results = client.run(stats_on_worker)
    return {addr: stats for addr, stats in results.items() if stats is not None}


def install(client, *, device="auto", device_memory=None, store=None) -> None:
    """Make the cluster behind ``client`` a KaaS cluster: scheduler plugin plus a worker plugin on every worker.

    Workers should run one thread each (``dask worker --nthreads 1``); the
    plugin adds the ``GPU`` resource to workers that do not advertise it.
    """
    client.register_plugin(KaasSchedulerPlugin())
    client.register_plugin(KaasWorkerPlugin(device=device, device_memory=device_memory, store=store))

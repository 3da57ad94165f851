"""``dask_kaas_*`` Prometheus metrics on the scheduler's ``/metrics``.

Distributed serves ``/metrics`` from ``prometheus_client.REGISTRY`` (when
prometheus_client is installed). Like distributed's own collectors, one
process-wide :class:`KaasCollector` is registered there once; the KaaS
scheduler plugin calls :func:`register` when it starts, which points the
collector at that plugin, so several schedulers started one after another in
one process (tests) never register twice. While a scheduler's ``/metrics`` is
being served, the collector reads the KaaS plugin of that scheduler (the one
distributed's handler has just pointed its own collectors at), so two live
schedulers in one process each report their own figures.

Everything is read from the plugin's state at scrape time: per tenant
(``TenantStats``) and per worker (``WorkerView``, whose ``counters`` are the
worker's cumulative cache counters as of its last report, sent after every
request).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator

import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .. import compat

PREFIX = "dask_kaas_"

# (metric name without _total, worker counter, help)
WORKER_COUNTERS = (
    ("cache_hits", "hits", "Const buffer lookups served from the worker's device cache"),
    ("cache_evictions", "evictions", "Cache entries evicted to make room"),
    ("bytes_loaded", "bytes_from_store", "Bytes read from the store into the device cache"),
    ("bytes_h2d", "bytes_h2d", "Bytes copied host to device"),
    ("bytes_d2h", "bytes_d2h", "Bytes copied device to host"),
)
# (metric name without _total, TenantStats attribute, help)
TENANT_COUNTERS = (
    ("requests", "completed", "KaaS requests completed"),
    ("requests_failed", "failed", "KaaS requests that failed on a worker"),
    ("admission_rejections", "rejected", "KaaS requests rejected by admission control (deadline)"),
    ("submitted", "submitted", "KaaS requests submitted"),
    ("tasks", "tasks", "Dask tasks the KaaS requests came in (fewer than requests when batched)"),
    ("tenant_cache_hits", "hits", "Const buffer lookups of the tenant's requests served from a device cache"),
    ("tenant_cache_misses", "misses", "Const buffer lookups of the tenant's requests that loaded from the store"),
    ("tenant_bytes_loaded", "bytes_loaded", "Bytes the tenant's requests loaded from the store"),
    ("tenant_evictions_caused", "evictions_caused", "Cache entries evicted while the tenant's requests ran"),
    ("tenant_device_seconds", "gpu_seconds", "Seconds the tenant's requests ran on a worker's device"),
)
OTHER = "_other"  # the label of the tenants beyond kaas.dashboard.metric-tenants, summed


class KaasCollector(Collector):
    """Collects ``dask_kaas_*`` families from a :class:`~dask_kaas.KaasSchedulerPlugin`."""

    def __init__(self, plugin=None):
        self._plugin = None
        self.plugin = plugin

    @property
    def plugin(self):
        """The plugin of the latest KaaS scheduler started in this process (held weakly), or None."""
        return self._plugin() if self._plugin is not None else None

    @plugin.setter
    def plugin(self, plugin) -> None:
        self._plugin = weakref.ref(plugin) if plugin is not None else None

    def describe(self) -> list:
        return []  # names vary with no scheduler running; do not let the registry call collect() to learn them

    def current(self):
        """The KaaS plugin of the scheduler whose ``/metrics`` is being served, else the latest started."""
        server = compat.metrics_scheduler()
        plugins = getattr(server, "plugins", None) or {}
        plugin = plugins.get("kaas")
        if plugin is not None and hasattr(plugin, "tenants") and hasattr(plugin, "workers"):
            return plugin
        return self.plugin

    def collect(self) -> Iterator:
        plugin = self.current()
        if plugin is None:
            return
        yield from families(plugin)


def labelled_tenants(tenants: dict, limit: int) -> list[tuple[str, list]]:
    """``(label, [TenantStats, ...])``: the ``limit - 1`` tenants with the most requests submitted under
    their own names (all of them when they are at most ``limit``), the rest together as ``_other``, so the
    number of label values stays bounded whatever names clients send."""
    if len(tenants) <= limit:
        return [(t, [s]) for t, s in sorted(tenants.items())]
    ranked = sorted(tenants.items(), key=lambda item: (-item[1].submitted, item[0]))
    kept = sorted(ranked[: max(limit - 1, 0)])
    return [(t, [s]) for t, s in kept] + [(OTHER, [s for _, s in ranked[max(limit - 1, 0) :]])]


def families(plugin) -> list[Metric]:
    """The metric families of one scheduler plugin's current state."""
    from .. import config

    tenants = labelled_tenants(dict(plugin.tenants), int(config.get("dashboard.metric-tenants")))
    workers = sorted(dict(plugin.workers).items())
    out: list[Metric] = []

    for name, attr, doc in TENANT_COUNTERS:
        family = CounterMetricFamily(PREFIX + name, doc, labels=["tenant"])
        for tenant, group in tenants:
            family.add_metric([tenant], sum(getattr(stats, attr) for stats in group))
        out.append(family)

    latency = HistogramMetricFamily(
        PREFIX + "request_latency_seconds",
        "Latency of completed KaaS requests, submission to completion on the scheduler",
        labels=["tenant"],
    )
    for tenant, group in tenants:
        bounds = [bound for bound, _ in group[0].histogram()]
        counts = [sum(column) for column in zip(*([n for _, n in s.histogram()] for s in group))]
        latency.add_metric(
            [tenant],
            [(floatToGoString(bound), n) for bound, n in zip(bounds, counts)],
            sum_value=sum(s.latency_sum for s in group),
        )
    out.append(latency)
    held = GaugeMetricFamily(
        PREFIX + "tenant_held_requests", "The tenant's KaaS tasks waiting in the fair queue", labels=["tenant"]
    )
    for tenant, _ in tenants:
        if tenant != OTHER:
            held.add_metric([tenant], plugin.dispatcher.held(tenant))
    out.append(held)

    for name, key, doc in WORKER_COUNTERS:
        family = CounterMetricFamily(PREFIX + name, doc, labels=["worker"])
        for address, view in workers:
            family.add_metric([address], view.counters.get(key, 0))
        out.append(family)
        if name == "cache_hits":
            misses = CounterMetricFamily(
                PREFIX + "cache_misses",
                "Const buffer lookups the device cache missed: "
                "compulsory (never cached there before) or capacity (evicted since)",
                labels=["worker", "kind"],
            )
            for address, view in workers:
                for kind in ("compulsory", "capacity"):
                    misses.add_metric([address, kind], view.counters.get(f"{kind}_misses", 0))
            out.append(misses)

    device = GaugeMetricFamily(
        PREFIX + "device_bytes", "Device cache bytes as of the worker's last report", labels=["worker", "state"]
    )
    queue = GaugeMetricFamily(
        PREFIX + "queue_length", "KaaS tasks assigned to the worker and not finished", labels=["worker"]
    )
    for address, view in workers:
        if view.reports:  # a worker that has run no request yet has told the scheduler nothing of its memory
            for state, value in (
                ("used", view.used),
                ("pinned", view.pinned),
                ("free", max(0, view.capacity - view.used)),
                ("capacity", view.capacity),
            ):
                device.add_metric([address, state], value)
        queue.add_metric([address], view.queued)
    out += [device, queue]

    out.append(
        GaugeMetricFamily(
            PREFIX + "held_requests",
            "KaaS tasks waiting in the scheduler's fair-dispatch queues",
            value=len(plugin.dispatcher),
        )
    )
    return out


_collector: KaasCollector | None = None
_lock = threading.Lock()


def register(plugin) -> KaasCollector:
    """Point the process-wide collector at ``plugin``, registering it on ``prometheus_client.REGISTRY`` once."""
    global _collector
    with _lock:
        if _collector is None:
            collector = KaasCollector()
            prometheus_client.REGISTRY.register(collector)
            _collector = collector
        _collector.plugin = plugin
        return _collector

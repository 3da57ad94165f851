"""The gateway's own Prometheus metrics, on its ``/metrics``: calls, latency, errors, per tenant.

A registry per application (not the process-wide one), so two gateways in one process (tests)
count apart. Label values are bounded: tenants come from the tokens file (``-`` before a token
is known), models only once found (``-`` otherwise), so hostile paths cannot grow the series.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["UNKNOWN", "GatewayMetrics"]

UNKNOWN = "-"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dask_kaas_gateway_requests",
            "Inference calls answered, by tenant, model and status",
            ["tenant", "model", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "dask_kaas_gateway_errors",
            "Calls answered with an error status, by tenant and status",
            ["tenant", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dask_kaas_gateway_request_seconds",
            "Seconds from a call's arrival to its answer, by tenant",
            ["tenant"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge("dask_kaas_gateway_in_flight", "Calls being served now", registry=self.registry)
        self.bytes_in = Counter(
            "dask_kaas_gateway_request_bytes",
            "Request body bytes received, by tenant",
            ["tenant"],
            registry=self.registry,
        )
        self.bytes_out = Counter(
            "dask_kaas_gateway_response_bytes",
            "Response body bytes sent, by tenant",
            ["tenant"],
            registry=self.registry,
        )

    def observe(
        self, tenant: str | None, model: str | None, status: int, seconds: float, bytes_in: int = 0, bytes_out: int = 0
    ) -> None:
        tenant = tenant or UNKNOWN
        self.requests.labels(tenant, model or UNKNOWN, str(status)).inc()
        if status >= 400:
            self.errors.labels(tenant, str(status)).inc()
        self.latency.labels(tenant).observe(seconds)
        if bytes_in:
            self.bytes_in.labels(tenant).inc(bytes_in)
        if bytes_out:
            self.bytes_out.labels(tenant).inc(bytes_out)

    def exposition(self) -> tuple[bytes, str]:
        return prometheus_client.generate_latest(self.registry), prometheus_client.CONTENT_TYPE_LATEST

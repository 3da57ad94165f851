"""``dask_kaas_*`` Prometheus metrics, scraped over HTTP from the scheduler's ``/metrics``."""

import math
import time
import urllib.request
from collections import defaultdict

import numpy as np
import pytest
from distributed import Client
from helpers import matvec_request

from dask_kaas import AdmissionRejected, LocalKaasCluster, cluster_state, worker_stats

parser = pytest.importorskip("prometheus_client.parser")

N = 64
RUNS = {"alice": 5, "bob": 3}


def scrape(cluster) -> dict:
    """``{sample name: {frozenset(labels.items()): value}}`` from the cluster's ``/metrics``."""
    url = cluster.dashboard_link.rsplit("/status", 1)[0] + "/metrics"
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = defaultdict(dict)
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name][frozenset(s.labels.items())] = s.value
    return samples


def by(samples: dict, name: str, label: str) -> dict:
    return {dict(labels)[label]: value for labels, value in samples.get(name, {}).items()}


def run_tenants(cluster, client, runs: dict) -> None:
    for tenant in runs:
        cluster.store.put("A", np.full((N, N), 0.5, np.float32), namespace=tenant)
    x = np.ones(N, np.float32)
    for tenant, n in runs.items():
        futures = [client.submit(matvec_request("A", N, tenant), x=x, pure=False) for _ in range(n)]
        for f in futures:
            np.testing.assert_allclose(f.result()["y"], np.full(N, 0.5 * N, np.float32))


def reported(client, completed: int) -> None:
    """Wait until every completed request's worker report reached the scheduler."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        views = cluster_state(client)["workers"].values()
        if sum(v["counters"].get("requests", 0) for v in views) >= completed:
            return
        time.sleep(0.05)
    raise AssertionError("workers did not report every request")


@pytest.fixture
def cluster(tmp_path):
    with LocalKaasCluster(
        n_workers=2, device="host", device_memory="16MiB", store=f"file://{tmp_path}", dashboard_address="127.0.0.1:0"
    ) as cluster:
        yield cluster


def test_metrics_over_http(cluster):
    with Client(cluster) as client:
        run_tenants(cluster, client, RUNS)
        # the runtime of this shape is known now: a deadline no request can meet is rejected at admission
        with pytest.raises(AdmissionRejected):
            client.submit(matvec_request("A", N, "alice", deadline=1e-6), x=np.ones(N, np.float32), pure=False).result()
        completed = sum(RUNS.values())
        reported(client, completed)
        stats = worker_stats(client)
        samples = scrape(cluster)

    assert by(samples, "dask_kaas_requests_total", "tenant") == RUNS
    assert by(samples, "dask_kaas_submitted_total", "tenant") == {"alice": RUNS["alice"] + 1, "bob": RUNS["bob"]}
    assert by(samples, "dask_kaas_admission_rejections_total", "tenant") == {"alice": 1, "bob": 0}
    assert by(samples, "dask_kaas_requests_failed_total", "tenant") == {"alice": 0, "bob": 0}
    assert samples["dask_kaas_held_requests"][frozenset()] == 0

    # cache counters per worker: one const lookup per request, one compulsory miss per tenant
    hits = by(samples, "dask_kaas_cache_hits_total", "worker")
    misses = defaultdict(dict)
    for labels, value in samples["dask_kaas_cache_misses_total"].items():
        labels = dict(labels)
        misses[labels["worker"]][labels["kind"]] = value
    assert set(hits) == set(misses) == set(stats)
    assert sum(hits.values()) + sum(sum(m.values()) for m in misses.values()) == completed
    assert sum(m["compulsory"] for m in misses.values()) >= len(RUNS)
    for address, worker in stats.items():
        assert hits[address] == worker["hits"]
        assert misses[address] == {"compulsory": worker["compulsory_misses"], "capacity": worker["capacity_misses"]}
        assert by(samples, "dask_kaas_bytes_loaded_total", "worker")[address] == worker["bytes_from_store"]
        assert by(samples, "dask_kaas_bytes_h2d_total", "worker")[address] == worker["bytes_h2d"]
        assert by(samples, "dask_kaas_bytes_d2h_total", "worker")[address] == worker["bytes_d2h"]
        assert by(samples, "dask_kaas_cache_evictions_total", "worker")[address] == worker["evictions"]
        assert by(samples, "dask_kaas_queue_length", "worker")[address] == 0
        device = {
            dict(labels)["state"]: value
            for labels, value in samples["dask_kaas_device_bytes"].items()
            if dict(labels)["worker"] == address
        }
        if not worker["requests"]:  # no report from it yet: no memory figures
            assert device == {}
            continue
        assert device == {
            "used": worker["used"],
            "pinned": worker["pinned"],
            "capacity": worker["capacity"],
            "free": worker["capacity"] - worker["used"],
        }
        assert worker["capacity"] == 16 * 2**20 and worker["used"] > 0
    assert sum(by(samples, "dask_kaas_bytes_loaded_total", "worker").values()) >= len(RUNS) * N * N * 4

    # the cache per tenant: its requests' lookups add up to the workers' (every request was one lookup)
    tenant_hits = by(samples, "dask_kaas_tenant_cache_hits_total", "tenant")
    tenant_misses = by(samples, "dask_kaas_tenant_cache_misses_total", "tenant")
    assert {t: tenant_hits[t] + tenant_misses[t] for t in RUNS} == RUNS
    assert sum(tenant_hits.values()) == sum(hits.values())
    assert all(tenant_misses[t] >= 1 for t in RUNS)  # each tenant's const loaded once at least
    assert sum(by(samples, "dask_kaas_tenant_bytes_loaded_total", "tenant").values()) == sum(
        by(samples, "dask_kaas_bytes_loaded_total", "worker").values()
    )
    assert sum(by(samples, "dask_kaas_tenant_evictions_caused_total", "tenant").values()) == sum(
        by(samples, "dask_kaas_cache_evictions_total", "worker").values()
    )
    assert all(v > 0 for v in by(samples, "dask_kaas_tenant_device_seconds_total", "tenant").values())
    assert by(samples, "dask_kaas_tenant_held_requests", "tenant") == {"alice": 0, "bob": 0}

    # latency histogram: one observation per completed request, cumulative buckets ending at +Inf
    assert by(samples, "dask_kaas_request_latency_seconds_count", "tenant") == RUNS
    sums = by(samples, "dask_kaas_request_latency_seconds_sum", "tenant")
    for tenant, n in RUNS.items():
        buckets = sorted(
            (float(dict(labels)["le"]), value)
            for labels, value in samples["dask_kaas_request_latency_seconds_bucket"].items()
            if dict(labels)["tenant"] == tenant
        )
        counts = [value for _, value in buckets]
        assert buckets[-1] == (math.inf, n)
        assert counts == sorted(counts)  # cumulative: never decreasing
        assert len(buckets) > 10 and buckets[0][0] == 0.005
        assert 0 < sums[tenant] < 60 * n


@pytest.mark.slow
def test_two_clusters_one_after_the_other(tmp_path):
    """The collector is registered once per process and follows the latest scheduler."""
    for i, runs in enumerate(({"first": 2}, {"second": 3})):
        with LocalKaasCluster(
            n_workers=1,
            device="host",
            device_memory="16MiB",
            store=f"file://{tmp_path / str(i)}",
            dashboard_address="127.0.0.1:0",
        ) as cluster:
            with Client(cluster) as client:
                run_tenants(cluster, client, runs)
                reported(client, sum(runs.values()))
            samples = scrape(cluster)
            assert by(samples, "dask_kaas_requests_total", "tenant") == runs
            assert by(samples, "dask_kaas_request_latency_seconds_count", "tenant") == runs
            (worker,) = cluster.scheduler_info["workers"]
            assert set(by(samples, "dask_kaas_queue_length", "worker")) == {worker}


@pytest.mark.slow
def test_two_live_clusters_each_report_their_own(tmp_path):
    """With two schedulers alive in one process, each ``/metrics`` shows its own scheduler's figures."""
    with (
        LocalKaasCluster(
            n_workers=1,
            device="host",
            device_memory="16MiB",
            store=f"file://{tmp_path / 'a'}",
            dashboard_address="127.0.0.1:0",
        ) as a,
        LocalKaasCluster(
            n_workers=1,
            device="host",
            device_memory="16MiB",
            store=f"file://{tmp_path / 'b'}",
            dashboard_address="127.0.0.1:0",
        ) as b,
    ):
        for cluster, runs in ((a, {"ta": 2}), (b, {"tb": 1})):
            with Client(cluster) as client:
                run_tenants(cluster, client, runs)
                reported(client, sum(runs.values()))
        for _ in range(2):  # alternate: the collector follows the scheduler being scraped
            assert by(scrape(a), "dask_kaas_requests_total", "tenant") == {"ta": 2}
            assert by(scrape(b), "dask_kaas_requests_total", "tenant") == {"tb": 1}


def test_tenant_labels_stay_bounded():
    from dask_kaas.dashboard.metrics import OTHER, labelled_tenants
    from dask_kaas.scheduling.tenants import TenantStats

    tenants = {f"t{i:03d}": TenantStats(submitted=i) for i in range(200)}
    labelled = labelled_tenants(tenants, 10)
    assert len(labelled) == 10 and labelled[-1][0] == OTHER
    assert {t for t, _ in labelled[:-1]} == {f"t{i:03d}" for i in range(191, 200)}  # the most active by name
    assert sum(s.submitted for _, group in labelled for s in group) == sum(range(200))  # nothing lost
    assert labelled_tenants({"a": TenantStats()}, 10) == [("a", [tenants.get("a") or TenantStats()])]

"""End to end on real worker processes: LocalKaasCluster, a plain Client, and a plain LocalCluster + install()."""

import os

import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster
from helpers import kaas_dict, matvec_request

import dask_kaas
from dask_kaas import (
    BufferSpec,
    BufferStore,
    ConfigError,
    DeviceMemoryError,
    KaasError,
    KernelError,
    KernelSpec,
    Library,
    Literal,
    LocalKaasCluster,
    Request,
    RequestError,
    worker_stats,
)

F = 4
N = 64


@pytest.fixture
def client(cluster):
    with Client(cluster) as client:
        yield client


def test_cluster_shape(cluster, client):
    info = client.scheduler_info()["workers"]
    assert len(info) == 2
    for w in info.values():
        assert w["nthreads"] == 1
        assert w["resources"] == {"GPU": 1}
    pids = client.run(os.getpid)
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()
    assert "kaas" in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.plugins))
    assert cluster.dashboard_link


def test_submit_gives_correct_results_and_hits(client, store_url):
    store = BufferStore(store_url)
    a = np.random.default_rng(1).standard_normal((N, N)).astype(np.float32)
    store.put("e2e/A", a)
    store.put("e2e/A", a, namespace="alice")
    r = matvec_request("e2e/A", tenant="alice")
    xs = [np.random.default_rng(i).standard_normal(N).astype(np.float32) for i in range(12)]
    futures = [client.submit(r, x=x, pure=False) for x in xs]
    for x, result in zip(xs, client.gather(futures)):
        np.testing.assert_allclose(result["y"], x @ a, rtol=1e-4, atol=1e-5)
    stats = worker_stats(client)
    assert len(stats) == 2
    for s in stats.values():
        assert s["device"] == "host" and s["capacity"] == 64 * 2**20
        assert s["used"] <= s["capacity"]
    hits = sum(s["hits"] for s in stats.values())
    misses = sum(s["compulsory_misses"] for s in stats.values())
    assert misses <= 2 and hits + misses == 12 and hits >= 10
    assert sum(s["tenants"].get("alice", {}).get("requests", 0) for s in stats.values()) == 12


def test_scheduler_gives_kaas_tasks_the_gpu_restriction(client):
    r = matvec_request("e2e/A")
    future = client.submit(r, x=np.zeros(N, np.float32), pure=False)
    plain = client.submit(np.add, 1, 2)
    future.result(), plain.result()

    def restrictions(dask_scheduler, keys):
        return [dask_scheduler.tasks[k].resource_restrictions for k in keys]

    got = client.run_on_scheduler(restrictions, keys=[future.key, plain.key])
    assert got[0] == {"GPU": 1}
    assert not got[1]
    assert future.key.startswith("kaas-sgemm")


def test_requests_in_a_dask_graph_between_host_tasks(client, store_url):
    """host pre-processing -> KaaS request -> host post-processing, as one graph."""
    a = BufferStore(store_url).get("e2e/A")
    r = matvec_request("e2e/A")

    @dask.delayed
    def preprocess(i):
        return np.full(N, float(i), np.float32)

    @dask.delayed
    def postprocess(out):
        return float(out["y"].sum())

    totals = dask.compute(*[postprocess(dask.delayed(r)(x=preprocess(i))) for i in range(4)])
    for i, total in enumerate(totals):
        assert total == pytest.approx(float((np.full(N, i, np.float32) @ a).sum()), rel=1e-4)


def test_original_kaas_dict_runs(client):
    r = Request.from_dict(kaas_dict())
    x = np.arange(10, dtype=np.float32)
    out = client.submit(r, x=x, y=np.ones(10, np.float32)).result()
    np.testing.assert_allclose(out["y"].view(np.float32), 1 + 2 * 3.0 * x)


def test_bad_requests_raise_on_the_client_and_workers_go_on(client):
    pids = client.run(os.getpid)
    r = matvec_request("e2e/A")
    with pytest.raises(RequestError, match=r"input 'x': 8 bytes given"):
        client.submit(r, x=np.zeros(2, np.float32)).result()
    with pytest.raises(RequestError, match="missing input 'x'"):
        client.submit(r).result()
    with pytest.raises(KaasError, match="nosuch/key"):
        client.submit(matvec_request("nosuch/key"), x=np.zeros(N, np.float32)).result()
    lib = Library.from_source("faulty", 'extern "C" __global__ void k(int n, float* y) {}', twins={"k": _raise_in_twin})
    bad = Request(
        [KernelSpec(lib, "k", 1, 1, literals=[Literal("i", 1)], arguments=[(BufferSpec("y", 4, ephemeral=True), "o")])]
    )
    with pytest.raises(KernelError, match="twin exploded"):
        client.submit(bad).result()
    # same worker processes, still serving correct results
    assert client.run(os.getpid) == pids
    out = client.submit(r, x=np.ones(N, np.float32), pure=False).result()
    assert out["y"].shape == (N,)
    for s in worker_stats(client).values():
        assert s["pinned"] == 0


def _raise_in_twin(launch, n, y):
    raise RuntimeError("twin exploded")


def test_capacity_below_working_set(store_url):
    """Each worker can hold one of the three matrices: results stay correct, the cache evicts."""
    n = 128
    mat_bytes = n * n * F
    store = BufferStore(store_url)
    mats = [np.random.default_rng(10 + i).standard_normal((n, n)).astype(np.float32) for i in range(3)]
    for i, m in enumerate(mats):
        store.put(f"small/A{i}", m)
    with (
        LocalKaasCluster(
            n_workers=2, device="host", device_memory=mat_bytes + 4 * n * F, store=store_url, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        futures, expected = [], []
        for rep in range(4):
            for i in range(3):
                x = np.full(n, rep + i, np.float32)
                futures.append(client.submit(matvec_request(f"small/A{i}", n=n), x=x, pure=False))
                expected.append(x @ mats[i])
        for want, got in zip(expected, client.gather(futures)):
            np.testing.assert_allclose(got["y"], want, rtol=1e-4, atol=1e-4)
        stats = worker_stats(client)
        # three matrices on two workers that hold one each: some worker evicts (whether it meets the
        # evicted one again, a capacity miss, depends on where the scheduler put each request)
        assert sum(s["evictions"] for s in stats.values()) > 0
        assert sum(s["compulsory_misses"] + s["capacity_misses"] for s in stats.values()) >= 3
        assert all(s["used"] <= s["capacity"] for s in stats.values())
        # a request that can never fit fails clearly, and the worker goes on
        big = BufferSpec("big", 2 * mat_bytes, ephemeral=True)
        too_big = Request(
            [
                KernelSpec(
                    "builtin", "fill", 1, 32, literals=[Literal("i", 1), Literal("f", 0.0)], arguments=[(big, "o")]
                )
            ]
        )
        with pytest.raises(DeviceMemoryError, match="capacity"):
            client.submit(too_big).result()
        x = np.ones(n, np.float32)
        np.testing.assert_allclose(
            client.submit(matvec_request("small/A0", n=n), x=x).result()["y"], x @ mats[0], rtol=1e-4, atol=1e-4
        )


def test_plain_local_cluster_with_install(store_url):
    """A plain distributed cluster becomes a KaaS cluster with install(); plain tasks keep working."""
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        dask_kaas.install(client, device="host", device_memory="32MiB", store=store_url)
        r = Request(
            [
                KernelSpec(
                    "builtin",
                    "fill",
                    1,
                    64,
                    literals=[Literal("i", 8), Literal("f", 2.5)],
                    arguments=[(BufferSpec("y", 32, dtype="float32", ephemeral=True), "o")],
                )
            ]
        )
        np.testing.assert_array_equal(client.submit(r).result()["y"], np.full(8, 2.5, np.float32))
        assert client.submit(sum, [1, 2, 3]).result() == 6
        workers = client.scheduler_info()["workers"].values()
        assert all(w["resources"].get("GPU") == 1 for w in workers)
        assert next(iter(worker_stats(client).values()))["requests"] == 1


def _worker_exclusive(dask_worker):
    return dask_worker.plugins["kaas"].runtime.exclusive


def test_install_checks_everything_first_and_set_policy_needs_the_scheduler_plugin(store_url):
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        # nothing is installed: set_policy fails before any worker changes, worker_stats says why
        with pytest.raises(KaasError, match="scheduler has no KaaS plugin"):
            dask_kaas.set_policy(client, "balance", clear_caches=True)
        with pytest.raises(KaasError, match=r"none of this cluster.s 1 workers has the KaaS plugin, so none can run"):
            worker_stats(client)
        # a bad worker option fails before the scheduler plugin is sent
        with pytest.raises(ConfigError, match="device_memory"):
            dask_kaas.install(client, device="host", device_memory="lots", store=store_url)
        assert client.run_on_scheduler(lambda dask_scheduler: "kaas" in dask_scheduler.plugins) is False
        # the policy reaches the workers too
        dask_kaas.install(client, device="host", device_memory="32MiB", store=store_url, policy="exclusive")
        assert set(client.run(_worker_exclusive).values()) == {True}
        assert dask_kaas.cluster_state(client)["policy"] == "exclusive"


def test_kaas_device_setting_is_the_default_everywhere():
    from dask_kaas.device import make_device

    with dask.config.set({"kaas.device": "host"}):
        assert make_device(memory="1MiB").kind == "host"
        assert dask_kaas.KaasWorkerPlugin().device is None  # resolved on the worker, from its kaas.device
    with dask.config.set({"kaas.device": "tpu"}), pytest.raises(ConfigError, match="tpu"):
        make_device(memory="1MiB")


def _poison_device(launch, n, y):
    """Host stand-in for a sticky CUDA fault: the device is marked lost, then the kernel fails."""
    from dask_kaas.plugins.worker import worker_runtime

    worker_runtime().device.healthy = False
    raise RuntimeError("illegal address (simulated)")


@pytest.mark.slow
def test_lost_device_restarts_the_worker(store_url):
    import time

    lib = Library.from_source("poison", 'extern "C" __global__ void k(int n, float* y) {}', twins={"k": _poison_device})
    bad = Request(
        [KernelSpec(lib, "k", 1, 1, literals=[Literal("i", 1)], arguments=[(BufferSpec("y", 4, ephemeral=True), "o")])]
    )
    good = Request(
        [
            KernelSpec(
                "builtin",
                "fill",
                1,
                8,
                literals=[Literal("i", 2), Literal("f", 3.0)],
                arguments=[(BufferSpec("y", 8, dtype="float32", ephemeral=True), "o")],
            )
        ]
    )
    with (
        LocalKaasCluster(n_workers=1, device="host", store=store_url, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        (pid_before,) = client.run(os.getpid).values()
        with pytest.raises(KernelError, match="simulated"):
            client.submit(bad).result()
        deadline = time.time() + 60
        while time.time() < deadline:
            pids = list(client.run(os.getpid).values()) if client.scheduler_info()["workers"] else []
            if pids and pids[0] != pid_before:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the worker was not restarted after its device was lost")
        client.wait_for_workers(1)
        np.testing.assert_array_equal(client.submit(good, pure=False).result()["y"], [3.0, 3.0])


def test_new_version_reaches_every_worker(client, store_url):
    """After a commit, no request started later is served the old bytes from any worker's cache."""
    store = BufferStore(store_url)
    store.put("versioned/A", np.eye(N, dtype=np.float32), namespace="carol")
    r = matvec_request("versioned/A", tenant="carol")
    workers = list(client.scheduler_info()["workers"])
    x = np.arange(N, dtype=np.float32)
    for _ in range(2):  # cache it everywhere
        for w in workers:
            np.testing.assert_allclose(client.submit(r, x=x, workers=[w], pure=False).result()["y"], x)
    store.put("versioned/A", 2 * np.eye(N, dtype=np.float32), namespace="carol")
    for w in workers:
        np.testing.assert_allclose(client.submit(r, x=x, workers=[w], pure=False).result()["y"], 2 * x)


def test_tenant_cannot_read_another_tenants_key_on_the_cluster(client, store_url):
    BufferStore(store_url).put("secret/A", np.eye(N, dtype=np.float32), namespace="dave")
    with pytest.raises(dask_kaas.StoreError, match="may not read key 'secret/A' of namespace 'dave'"):
        client.submit(matvec_request("dave:secret/A", tenant="eve"), x=np.zeros(N, np.float32)).result()
    with pytest.raises(dask_kaas.StoreError, match="namespace 'eve'"):
        client.submit(matvec_request("secret/A", tenant="eve"), x=np.zeros(N, np.float32)).result()
    out = client.submit(matvec_request("secret/A", tenant="dave"), x=np.ones(N, np.float32)).result()
    np.testing.assert_allclose(out["y"], np.ones(N))


def test_memory_store_is_refused_for_worker_processes():
    with pytest.raises(ValueError, match=r"memory://kaas-x.*worker processes"):
        LocalKaasCluster(n_workers=1, device="host", store="memory://kaas-x", dashboard_address=":0")


def test_plugins_travel_as_their_settings():
    """install() pickles both plugins to the cluster: what travels is their settings, nothing that
    Python 3.14 can no longer pickle (the scheduler plugin's core holds itertools counters)."""
    import pickle
    import warnings

    from dask_kaas import KaasSchedulerPlugin, KaasWorkerPlugin

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scheduler = pickle.loads(pickle.dumps(KaasSchedulerPlugin(policy="balance", weights={"a": 2.0})))
        worker = pickle.loads(pickle.dumps(KaasWorkerPlugin(device="host", device_memory="8MiB")))
    assert scheduler.policy == "balance" and scheduler.core.queue.weight("a") == 2.0
    assert worker.runtime is None


def test_a_client_opens_the_store_its_cluster_reads(cluster, client):
    """cluster_store: the workers' own store, whatever the client's kaas.store says."""
    import numpy as np
    from helpers import matvec_request

    from dask_kaas import cluster_store

    store = cluster_store(client)
    assert store == cluster.store and store.url.startswith("file://")
    store.put("via-cluster-store", np.eye(64, dtype=np.float32) * 7, namespace="alice")
    out = client.submit(
        matvec_request("via-cluster-store", tenant="alice"), x=np.ones(64, np.float32), pure=False
    ).result()
    np.testing.assert_allclose(out["y"], np.full(64, 7, np.float32))

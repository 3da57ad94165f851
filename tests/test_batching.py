"""Batching end to end on real worker processes: the Batcher, RequestBatch tasks, what each call keeps.

What each call of a batch keeps is tested here on a real cluster (its own result or error, per-call
counters on the scheduler and the workers, admission per call, exactly one outcome when a worker dies
mid-batch, payloads off the scheduler); fairness under batching and the queue's never-wait rule are
tested on the pure code (tests/test_batch_core.py, tests/test_batch_queue.py).
"""

import asyncio
import os
import pickle
import time

import numpy as np
import pytest
from distributed import Client, SchedulerPlugin
from helpers import matvec_request

from dask_kaas import (
    AdmissionRejected,
    Batcher,
    BufferSpec,
    BufferStore,
    KernelSpec,
    Library,
    Literal,
    LocalKaasCluster,
    Request,
    RequestError,
    cluster_state,
    worker_stats,
)
from dask_kaas.request.batch import BatchCalls, RequestBatch

N = 64
SLOW_SECONDS = 0.25


@pytest.fixture(scope="module")
def matrix(store_url):
    a = np.random.default_rng(7).standard_normal((N, N)).astype(np.float32)
    store = BufferStore(store_url)
    for tenant in ("bt-a", "bt-b", "bt-c", "bt-d"):
        store.put("batch/A", a, namespace=tenant)
    return a


@pytest.fixture
def client(cluster):
    with Client(cluster) as client:
        yield client


def _tenant_row(client, tenant):
    return cluster_state(client)["tenants"][tenant]


def test_every_call_gets_its_own_result_and_counts_as_a_request(client, matrix):
    req = matvec_request("batch/A", tenant="bt-a")
    xs = [np.random.default_rng(i).standard_normal(N).astype(np.float32) for i in range(200)]
    batcher = Batcher(client)
    futures = [batcher.submit(req, x=x) for x in xs]
    for x, future in zip(xs, futures):
        np.testing.assert_allclose(future.result(timeout=120)["y"], x @ matrix, rtol=1e-4, atol=1e-4)
    stats = batcher.stats()
    assert stats["calls"] == 200 and stats["batches"] < 200 and stats["queued"] == 0
    row = _tenant_row(client, "bt-a")
    assert row["submitted"] == row["completed"] == 200 and row["failed"] == row["rejected"] == 0
    per_worker = worker_stats(client)
    assert sum(s["tenants"].get("bt-a", {}).get("requests", 0) for s in per_worker.values()) == 200


def test_bad_inputs_fail_only_their_own_call(client, matrix):
    req = matvec_request("batch/A", tenant="bt-b")
    batcher = Batcher(client, in_flight=1)
    good = [batcher.submit(req, x=np.ones(N, np.float32)) for _ in range(5)]
    wrong_size = batcher.submit(req, x=np.ones(N + 1, np.float32))
    wrong_name = batcher.submit(req, z=np.ones(N, np.float32))
    positional = batcher.submit(req, np.ones(N, np.float32))
    for future in good:
        np.testing.assert_allclose(future.result(timeout=120)["y"], matrix.sum(axis=0), rtol=1e-4)
    for future in (wrong_size, wrong_name, positional):
        assert isinstance(future.exception(timeout=10), RequestError)
    with pytest.raises(TypeError):
        batcher.submit(lambda x: x, x=1)


def test_a_failing_call_inside_a_batch_fails_only_itself_on_the_worker(client, matrix):
    """Calls that pass the client's checks can still fail on the worker (here: an input read from
    the store under a key that is not there); the rest of the batch runs."""
    # not ephemeral: read from the store when a call does not pass it
    x = BufferSpec("x", N * 4, key="batch/x-in-store", dtype="float32")
    a = BufferSpec("A", N * N * 4, key="batch/A", const=True)
    y = BufferSpec("y", N * 4, dtype="float32", ephemeral=True)
    req = Request(
        [
            KernelSpec(
                "builtin",
                "sgemm",
                (4, 1),
                (16, 16),
                literals=[Literal("i", 1), Literal("i", N), Literal("i", N)],
                arguments=[(x, "i"), (a, "i"), (y, "o")],
            )
        ],
        tenant="bt-c",
    )
    calls = BatchCalls([{"x": np.ones(N, np.float32)}, {}, {"x": np.full(N, 2, np.float32)}])
    outcomes = client.submit(RequestBatch(req, 3), calls, pure=False).result(timeout=120)
    np.testing.assert_allclose(outcomes[0]["y"], matrix.sum(axis=0), rtol=1e-4)
    assert isinstance(outcomes[1], RequestError) and "batch/x-in-store" in str(outcomes[1])
    np.testing.assert_allclose(outcomes[2]["y"], 2 * matrix.sum(axis=0), rtol=1e-4)
    row = _tenant_row(client, "bt-c")
    assert (row["submitted"], row["completed"], row["failed"]) == (3, 2, 1)
    with pytest.raises(RequestError, match="BatchCalls of 3 calls"):
        client.submit(RequestBatch(req, 3), BatchCalls([{}]), pure=False).result(timeout=60)


def _model_estimate(shape, dask_scheduler=None):
    return dask_scheduler.plugins["kaas"].core.model.estimate(shape)


def test_admission_is_per_call(client, matrix):
    warm = matvec_request("batch/A", tenant="bt-d")
    for _ in range(5):
        client.submit(warm, x=np.ones(N, np.float32), pure=False).result(timeout=60)
    runtime = client.run_on_scheduler(_model_estimate, warm.shape_token)
    assert runtime and runtime > 0
    # a deadline no call can make: the whole batch is rejected, each call with AdmissionRejected
    hopeless = matvec_request("batch/A", tenant="bt-d", deadline=runtime / 100)
    futures = Batcher(client).map(hopeless, [{"x": np.ones(N, np.float32)}] * 3)
    assert all(isinstance(f.exception(timeout=60), AdmissionRejected) for f in futures)
    # a deadline about twenty calls make: a batch of 200 runs its first calls, the later ones are rejected
    tight = matvec_request("batch/A", tenant="bt-d", deadline=20 * runtime)
    outcomes = client.submit(
        RequestBatch(tight, 200), BatchCalls([{"x": np.ones(N, np.float32)}] * 200), pure=False
    ).result(timeout=120)
    rejected = [i for i, o in enumerate(outcomes) if isinstance(o, AdmissionRejected)]
    assert 0 < len(rejected) < 200
    assert rejected == list(range(rejected[0], 200))  # the later calls, in order
    assert "of its batch" in str(outcomes[-1]) and outcomes[-1].deadline == pytest.approx(20 * runtime)
    for outcome in outcomes[: rejected[0]]:
        np.testing.assert_allclose(outcome["y"], matrix.sum(axis=0), rtol=1e-4)


class _RunSpecSizes(SchedulerPlugin):
    """Records the pickled size of every new KaaS batch task's run spec, as the scheduler holds it."""

    name = "run-spec-sizes"

    def __init__(self):
        self.sizes = []

    def update_graph(self, scheduler, *, tasks, **kwargs):
        for key in tasks:
            ts = scheduler.tasks.get(key)
            if ts is not None and isinstance(getattr(ts.run_spec, "func", None), RequestBatch):
                self.sizes.append(len(pickle.dumps(ts.run_spec)))


def _sizes(dask_scheduler):
    return dask_scheduler.plugins["run-spec-sizes"].sizes


def test_large_payloads_go_straight_to_a_worker_not_through_the_scheduler(client, matrix):
    client.register_plugin(_RunSpecSizes())
    big = 256 * 1024
    x = BufferSpec("x", big * 4, dtype="float32", ephemeral=True)
    y = BufferSpec("y", big * 4, dtype="float32", ephemeral=True)
    req = Request(
        [
            KernelSpec(
                "builtin",
                "axpy",
                64,
                256,
                literals=[Literal("i", big), Literal("f", 2.0)],
                arguments=[(x, "i"), (y, "io")],
            )
        ],
        tenant="bt-a",
    )
    batcher = Batcher(client, direct_bytes="512KiB")
    xs = [np.full(big, i, np.float32) for i in range(4)]
    futures = [batcher.submit(req, x=xi, y=np.ones(big, np.float32)) for xi in xs]
    for i, future in enumerate(futures):
        np.testing.assert_array_equal(future.result(timeout=120)["y"][:3], [2 * i + 1] * 3)
    assert batcher.stats()["direct_batches"] == batcher.stats()["batches"] >= 1
    sizes = client.run_on_scheduler(_sizes)
    assert sizes and max(sizes) < 64 * 1024  # each call carries 2 MiB; the scheduler holds a few KiB per task


def _slow_twin(launch, n, y):
    time.sleep(SLOW_SECONDS)
    y[:n] = 1.0


@pytest.mark.slow
def test_a_worker_lost_mid_batch_gives_every_call_exactly_one_outcome(store_url):
    lib = Library.from_source(
        "slowlib", 'extern "C" __global__ void slow(int n, float* y) {}', twins={"slow": _slow_twin}
    )
    req = Request(
        [
            KernelSpec(
                lib,
                "slow",
                1,
                1,
                literals=[Literal("i", 4)],
                arguments=[(BufferSpec("y", 16, dtype="float32", ephemeral=True), "o")],
            )
        ]
    )
    with (
        LocalKaasCluster(n_workers=2, device="host", store=store_url, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        batcher = Batcher(client, in_flight=1)
        first = batcher.submit(req)  # leaves alone; the next 20 queue behind it and leave as one batch
        futures = [batcher.submit(req) for _ in range(20)]
        first.result(timeout=120)
        deadline = time.time() + 60
        victim = None
        while victim is None and time.time() < deadline:
            victim = next((w for w, keys in client.processing().items() if keys), None)
            time.sleep(0.05)
        assert victim is not None, "the batch never started"
        pids = client.run(os.getpid)
        os.kill(pids[victim], 9)  # the worker dies mid-batch; its nanny starts another
        outcomes = [f.result(timeout=180) for f in futures]
        assert all(np.array_equal(o["y"], np.ones(4, np.float32)) for o in outcomes)
        assert all(f.done() for f in futures) and batcher.stats()["in_flight"] == 0
        assert victim not in client.scheduler_info()["workers"]


class _GraphUpdates(SchedulerPlugin):
    """Counts the graph updates that bring KaaS batch tasks, and their tasks."""

    name = "graph-updates"

    def __init__(self):
        self.updates = []

    def update_graph(self, scheduler, *, tasks, **kwargs):
        batches = [k for k in tasks if isinstance(getattr(scheduler.tasks[k].run_spec, "func", None), RequestBatch)]
        if batches:
            self.updates.append(len(batches))


def _updates(dask_scheduler):
    return dask_scheduler.plugins["graph-updates"].updates


def test_concurrent_calls_of_several_requests_go_in_one_graph_update(cluster, client, matrix):
    """Calls submitted in one turn of the client's event loop (as the gateway's are), of four requests
    (four tenants), leave as four tasks of one graph update."""
    client.register_plugin(_GraphUpdates())
    requests = [matvec_request("batch/A", tenant=t) for t in ("bt-a", "bt-b", "bt-c", "bt-d")]

    async def on_the_loop():
        async with Client(cluster.scheduler_address, asynchronous=True) as aclient:
            batcher = Batcher(aclient)
            futures = [batcher.submit(r, x=np.ones(N, np.float32)) for r in requests]
            return [await f for f in futures], batcher.stats()

    outcomes, stats = asyncio.run(on_the_loop())
    for outcome in outcomes:
        np.testing.assert_allclose(outcome["y"], matrix.sum(axis=0), rtol=1e-4)
    assert client.run_on_scheduler(_updates) == [4]
    assert stats["graph_updates"] == 1 and stats["batches"] == 4


def test_a_forged_batch_is_refused_and_the_cluster_goes_on(client, matrix):
    """A client that forges a RequestBatch past its checks (a count of a billion, calls that are not
    mappings, annotations naming rejections) gets an error; scheduler and workers go on serving."""
    import dask

    req = matvec_request("batch/A", tenant="bt-a")
    forged = object.__new__(RequestBatch)
    object.__setattr__(forged, "request", req)
    object.__setattr__(forged, "count", 10**9)
    with pytest.raises(RequestError, match="a batch holds 1 to"):  # rebuilt where the scheduler unpickles it: refused
        client.submit(forged, BatchCalls([{}]), pure=False).result(timeout=60)
    calls = object.__new__(BatchCalls)
    object.__setattr__(calls, "calls", [b"not a mapping"])
    # refused as the scheduler rebuilds the graph (BatchCalls names the call; Dask wraps it)
    with pytest.raises(RuntimeError, match="deserialization of the task graph"):
        client.submit(RequestBatch(req, 1), calls, pure=False).result(timeout=60)
    with dask.annotate(**{"kaas-rejected": ["x" * 10**6, None, "nan", []]}):  # garbage where the scheduler writes
        outcome = client.submit(RequestBatch(req, 1), BatchCalls([{"x": np.ones(N, np.float32)}]), pure=False).result(
            timeout=60
        )
    np.testing.assert_allclose(outcome[0]["y"], matrix.sum(axis=0), rtol=1e-4)
    assert len(worker_stats(client)) == 2
    np.testing.assert_allclose(
        Batcher(client).submit(req, x=np.ones(N, np.float32)).result(timeout=60)["y"], matrix.sum(axis=0), rtol=1e-4
    )


def test_a_batcher_on_a_closed_client_refuses_calls_at_once(cluster, matrix):
    req = matvec_request("batch/A", tenant="bt-a")
    with Client(cluster) as own:
        batcher = Batcher(own)
        np.testing.assert_allclose(
            batcher.submit(req, x=np.ones(N, np.float32)).result(timeout=60)["y"], matrix.sum(axis=0), rtol=1e-4
        )
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(req, x=np.ones(N, np.float32))
    batcher.close()
    with pytest.raises(RuntimeError, match="Batcher is closed"):
        batcher.map(req, [{"x": np.ones(N, np.float32)}])

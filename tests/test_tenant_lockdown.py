"""The locked-down mode: ``kaas.scheduler.tenant-clients: requests-only`` on a TLS cluster started with the
operator commands. A tenant's certificate may submit graphs of KaaS requests and gather its own results,
nothing else; each test tries what an attacker holding ``alice``'s certificate (mallory) would, through
Dask's own client calls and raw messages, and checks that bob's data and the cluster are untouched.
"""

import asyncio
import functools
import operator
import re
import uuid

import dask
import numpy as np
import pytest
from distributed import Client, Future
from distributed.comm import CommClosedError, connect
from helpers import matvec_request
from tenant_attacks import Opaque, Opens, exponential

from dask_kaas import Batcher, compat
from dask_kaas.errors import TenantError

if not compat.graphs_arrive_as_expressions():
    pytest.skip("the requests-only mode needs distributed 2025.4 or later", allow_module_level=True)
pytest.importorskip("cryptography")  # a test-only dependency (tlscerts makes certificates with it)
from tls_cluster import tls_cluster as start_tls_cluster

X = np.ones(64, np.float32)
REFUSED = (TenantError, ImportError)  # a refused register-client surfaces as the ImportError distributed raises


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    settings = {
        "DASK_KAAS__SCHEDULER__TENANT_IDENTITY": "tls",
        "DASK_KAAS__SCHEDULER__TENANT_CLIENTS": "requests-only",
        "DASK_KAAS__SCHEDULER__TENANT_MAP": '{"carol.example.org": "carol"}',
        "DASK_KAAS__SCHEDULER__WORKER_NAMES": '["cluster", "worker-*"]',
        "DASK_KAAS__SCHEDULER__OPERATOR_NAMES": '["operator"]',
    }
    with start_tls_cluster(tmp_path_factory.mktemp("pki"), tmp_path_factory.mktemp("locked-store"), settings) as out:
        yield out


@pytest.fixture
def bob(locked):
    cluster, clients = locked
    with Client(cluster.scheduler_address, security=clients["bob"], timeout=60) as c:
        yield c


@pytest.fixture
def mallory(locked):
    cluster, clients = locked
    with Client(cluster.scheduler_address, security=clients["alice"], timeout=60) as c:
        yield c


def bobs_result(bob):
    """A result of bob's held in the cluster under a known key, and its value."""
    key = f"bob-secret-{uuid.uuid4().hex}"
    future = bob.submit(matvec_request("A", tenant="bob"), x=X * 3, key=key)
    np.testing.assert_allclose(future.result(timeout=60)["y"], X * 12)
    return future


def still_fine(bob, future):
    np.testing.assert_allclose(future.result(timeout=60)["y"], X * 12)
    np.testing.assert_allclose(
        bob.submit(matvec_request("A", tenant="bob"), x=X, pure=False).result(timeout=60)["y"], X * 4
    )


def handled(client):
    """Wait until the scheduler handled what ``client`` sent so far (its stream is read in order)."""
    client.submit(matvec_request("A", tenant="alice"), x=X, pure=False).result(timeout=60)


# ------------------------------------------------------------------------ what a tenant still does
def test_a_tenants_requests_run_in_every_form_a_client_writes_them(mallory):
    own = matvec_request("A", tenant="alice")
    np.testing.assert_allclose(mallory.submit(own, x=X, pure=False).result(timeout=60)["y"], X * 6)
    first = mallory.submit(own, x=X)
    second = mallory.submit(own, x=mallory.submit(operator.getitem, first, "y"))  # plumbing between requests
    np.testing.assert_allclose(second.result(timeout=60)["y"], X * 36)
    a = dask.delayed(own, pure=False)(x=X)
    b = dask.delayed(own, pure=False)(x=dask.delayed(operator.getitem)(a, "y"))
    outs = mallory.compute([a, b], sync=True)  # a graph of several requests
    np.testing.assert_allclose(outs[1]["y"], X * 36)
    with dask.config.set(scheduler=mallory.get):
        (out,) = dask.compute(b)
    np.testing.assert_allclose(out["y"], X * 36)


def test_the_batcher_goes_through_the_scheduler(mallory):
    own = matvec_request("A", tenant="alice")
    batcher = Batcher(mallory, direct_bytes=1)  # every batch would go straight to a worker
    futures = [batcher.submit(own, x=X * i) for i in range(6)]
    for i, f in enumerate(futures):
        np.testing.assert_allclose(f.result(timeout=60)["y"], X * i * 6)
    assert batcher.stats()["direct_batches"] == 0


def test_an_operator_certificate_keeps_dasks_whole_client_and_acts_for_any_tenant(locked):
    cluster, clients = locked
    with Client(cluster.scheduler_address, security=clients["operator"], timeout=60) as op:
        assert len(op.run(lambda: 1)) == 1
        out = op.submit(matvec_request("A", tenant="bob"), x=X, pure=False).result(timeout=60)  # as the gateway does
        np.testing.assert_allclose(out["y"], X * 4)
        batcher = Batcher(op, direct_bytes=1)  # and its large batches go straight to the workers
        np.testing.assert_allclose(
            batcher.submit(matvec_request("A", tenant="bob"), x=X).result(timeout=60)["y"], X * 4
        )
        assert batcher.stats()["direct_batches"] == 1


# ------------------------------------------------------------------------ no code of the tenant's runs
def test_a_tenant_submits_requests_only(mallory, bob):
    secret = bobs_result(bob)
    with pytest.raises(TenantError, match="KaaS requests and dask's graph nodes only"):
        mallory.submit(lambda: 1, pure=False).result(timeout=60)  # code by value
    with pytest.raises(TenantError, match=r"not builtins.getattr"):  # a bound method pickles through getattr
        mallory.submit(matvec_request("A", tenant="bob").__call__, x=X, pure=False).result(timeout=60)
    with pytest.raises(TenantError, match=r"not functools.partial"):
        mallory.submit(functools.partial(matvec_request("A", tenant="bob")), x=X, pure=False).result(timeout=60)
    with pytest.raises(TenantError, match=r"KaaS requests only, not numpy.dtype"):  # unpickles, never runs
        mallory.submit(np.dtype, "f4", pure=False).result(timeout=60)
    still_fine(bob, secret)


def test_the_attacks_on_the_tls_binding_fail_here_too(mallory, bob):
    from dask.utils import apply
    from tenant_attacks import HiddenRequest, SameAsAnyone

    from dask_kaas import Request
    from dask_kaas.request.model import _set_request_fields

    secret = bobs_result(bob)
    bobs = matvec_request("A", tenant="bob")
    attempts = {
        "argument": lambda: mallory.submit(lambda r, x: r(x=x), bobs, X, pure=False),
        "element": lambda: mallory.submit(lambda rs, x: rs[0](x=x), [bobs], X, pure=False),
        "hidden": lambda: mallory.submit(HiddenRequest(bobs), X, pure=False),
        "apply": lambda: mallory.get(
            {"t": (apply, bobs, [], {"x": X}), "o": (operator.getitem, "t", "y")}, "o", sync=False
        ),
    }
    for _name, attempt in attempts.items():
        with pytest.raises(TenantError, match="graph nodes only"):
            attempt().result(timeout=60)
    forged = object.__new__(Request)
    _set_request_fields(forged, bobs.kernels, 1, SameAsAnyone("bob"), None)
    with pytest.raises(TenantError, match=r"graph nodes only, not tenant_attacks.SameAsAnyone"):
        mallory.submit(forged, x=X, pure=False).result(timeout=60)
    send = mallory._send_to_scheduler
    mallory._send_to_scheduler = lambda msg: send({**msg, "client": bob.id} if msg.get("op") == "update-graph" else msg)
    try:
        with pytest.raises(TenantError, match="certificate is tenant 'alice', not 'bob'"):
            mallory.submit(bobs, x=X, pure=False).result(timeout=60)
    finally:
        mallory._send_to_scheduler = send
    with dask.annotate(**{"kaas-tenant": "bob"}):  # a client's own reserved annotation is dropped
        out = mallory.submit(matvec_request("A", tenant="alice"), x=X, pure=False).result(timeout=60)
    np.testing.assert_allclose(out["y"], X * 6)
    still_fine(bob, secret)


def test_a_pickle_that_runs_code_is_never_unpickled(mallory, locked, tmp_path):
    cluster, _ = locked
    target = tmp_path / "pwned"
    with pytest.raises(TenantError, match=r"graph nodes only, not (_?io|builtins).open"):
        mallory.submit(matvec_request("A", tenant="alice"), x=Opens(str(target)), pure=False).result(timeout=60)
    assert not target.exists()
    assert "refused a graph" in cluster.procs.log("scheduler")


def test_a_pickle_in_any_message_field_is_unpickled_by_the_rules(locked, tmp_path):
    """distributed unpickles a message's ToPickle parts while it reads the message, before any handler:
    for a tenant's connection with the same rules as its graphs, from the handshake on."""
    from distributed.protocol.serialize import ToPickle

    cluster, clients = locked
    targets = [tmp_path / f"pwned-{i}" for i in range(3)]
    args = clients["alice"].get_connection_args("client")

    async def attempts():
        comm = await connect(cluster.scheduler_address, timeout=10, **args)  # a field of an rpc message
        await comm.write({"op": "identity", "reply": True, "x": ToPickle(Opens(str(targets[0])))})
        with pytest.raises(CommClosedError):  # closed
            await asyncio.wait_for(comm.read(), 30)
        comm = await connect(cluster.scheduler_address, timeout=10, **args)  # a client stream's message
        await comm.write({"op": "register-client", "client": f"Client-{uuid.uuid4()}", "reply": False, "versions": {}})
        await comm.read()
        await comm.write([{"op": "heartbeat-client", "x": ToPickle(Opens(str(targets[1])))}])
        with pytest.raises(CommClosedError):
            await asyncio.wait_for(comm.read(), 30)
        with pytest.raises(OSError):  # the handshake
            comm = await connect(
                cluster.scheduler_address,
                timeout=10,
                handshake_overrides={"x": ToPickle(Opens(str(targets[2])))},
                **args,
            )
            await comm.write({"op": "identity", "reply": True})
            await asyncio.wait_for(comm.read(), 30)

    asyncio.run(attempts())
    assert not any(t.exists() for t in targets)
    assert cluster.procs.log("scheduler").count("dask-kaas: closed the connection from") >= 3
    with Client(cluster.scheduler_address, security=clients["alice"], timeout=60) as alice:  # and the cluster goes on
        handled(alice)


def test_a_graph_of_exponential_size_is_refused_and_the_scheduler_goes_on(mallory):
    with pytest.raises(TenantError, match="shared references"):
        mallory.submit(matvec_request("A", tenant="alice"), x=Opaque(exponential(80)), pure=False).result(timeout=60)
    np.testing.assert_allclose(
        mallory.submit(matvec_request("A", tenant="alice"), x=X, pure=False).result(timeout=60)["y"], X * 6
    )


@pytest.mark.parametrize(
    "call",
    [
        "run",
        "run_on_scheduler",
        "register_plugin",
        "register_worker_plugin",
        "scatter",
        "who_has",
        "has_what",
        "get_task_stream",
        "publish_dataset",
        "get_events",
        "restart",
    ],
)
def test_dasks_other_client_calls_are_refused(mallory, call):
    from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

    calls = {
        "run": lambda: mallory.run(lambda: 1),
        "run_on_scheduler": lambda: mallory.run_on_scheduler(lambda: 1),
        "register_plugin": lambda: mallory.register_plugin(SchedulerPlugin(), name="evil"),
        "register_worker_plugin": lambda: mallory.register_plugin(WorkerPlugin(), name="evil"),
        "scatter": lambda: mallory.scatter(X),
        "who_has": lambda: mallory.who_has(),
        "has_what": lambda: mallory.has_what(),
        "get_task_stream": lambda: mallory.get_task_stream(),
        "publish_dataset": lambda: mallory.publish_dataset(x=1),
        "get_events": lambda: mallory.get_events(),
        "restart": lambda: mallory.restart(timeout=30),
    }
    with pytest.raises(TenantError, match="may not call the scheduler's"):
        calls[call]()


def test_workers_and_nannies_refuse_a_tenants_connection_before_reading_it(mallory, locked):
    cluster, clients = locked
    info = mallory.scheduler_info()
    (worker,) = info["workers"].values()
    for address in (worker["id"], worker["nanny"]):

        async def talk(address=address):
            comm = await connect(address, timeout=10, **clients["alice"].get_connection_args("client"))
            await comm.write({"op": "get_data", "keys": [], "reply": True})
            return await comm.read()

        with pytest.raises(CommClosedError):  # closed before Dask's handshake: nothing the tenant sends is read
            asyncio.run(talk())
    assert "may not connect to a worker" in cluster.procs.log("worker")
    with pytest.raises(TenantError):  # and a gather straight from a worker asks the scheduler's who_has first
        mallory.gather(mallory.submit(matvec_request("A", tenant="alice"), x=X, pure=False), direct=True)


# ------------------------------------------------------------------------ another tenant's keys
def test_another_tenants_result_cannot_be_gathered_wanted_or_used(mallory, bob):
    secret = bobs_result(bob)
    with pytest.raises(TenantError, match="may gather only its own"):
        mallory.sync(mallory.scheduler.gather, keys=[secret.key])
    stolen = Future(secret.key, client=mallory)
    mallory._send_to_scheduler({"op": "client-desires-keys", "keys": [secret.key]})
    with pytest.raises(TenantError):
        stolen.result(timeout=60)
    used = mallory.submit(
        matvec_request("A", tenant="alice"), x=mallory.submit(operator.getitem, stolen, "y"), pure=False
    )
    with pytest.raises(TenantError, match="belongs to another tenant"):
        used.result(timeout=60)
    still_fine(bob, secret)


def test_a_tenant_cannot_cancel_release_or_squat_another_tenants_keys(mallory, bob):
    secret = bobs_result(bob)
    mallory._send_to_scheduler({"op": "cancel-keys", "keys": [secret.key], "force": True, "reason": "r", "msg": "m"})
    mallory._send_to_scheduler({"op": "client-releases-keys", "keys": [secret.key]})
    handled(mallory)
    still_fine(bob, secret)
    key = f"squat-{uuid.uuid4().hex}"  # mallory takes a key first: bob's later task of that key is refused,
    squatted = mallory.submit(matvec_request("A", tenant="alice"), x=X, key=key)  # never handed mallory's result
    np.testing.assert_allclose(squatted.result(timeout=60)["y"], X * 6)
    with pytest.raises(TenantError, match=r"belongs to another tenant|only its own tasks"):
        bob.submit(matvec_request("A", tenant="bob"), x=X, key=key).result(timeout=60)


def test_a_tenant_cannot_take_another_clients_id_or_speak_as_a_worker(mallory, bob, locked):
    cluster, clients = locked
    secret = bobs_result(bob)

    async def register_as_bob():
        comm = await connect(cluster.scheduler_address, timeout=10, **clients["alice"].get_connection_args("client"))
        await comm.write({"op": "register-client", "client": bob.id, "reply": False, "versions": {}})
        return await comm.read()

    answer = asyncio.run(register_as_bob())
    assert "is taken" in answer[0]["error"]
    worker = next(iter(mallory.scheduler_info()["workers"]))
    mallory._send_to_scheduler(
        {
            "op": "task-erred",
            "key": secret.key,
            "worker": worker,
            "exception": b"",
            "traceback": b"",
            "stimulus_id": "forged",
        }
    )
    mallory._send_to_scheduler({"op": "update-data", "who_has": {secret.key: [worker]}, "nbytes": {secret.key: 1}})
    handled(mallory)
    still_fine(bob, secret)
    assert "may not send 'task-erred'" in cluster.procs.log("scheduler")


def test_a_stream_message_of_any_shape_is_dropped_and_the_tenants_stream_goes_on(mallory, bob):
    secret = bobs_result(bob)
    for op in (["update-graph"], {"op": 1}, None, 7, b"update-graph"):  # unhashable, missing, not a name
        mallory._send_to_scheduler({"op": op, "keys": [secret.key]})
    mallory._send_to_scheduler({"op": "client-releases-keys", "keys": [secret.key], "client": ["x"]})
    mallory._send_to_scheduler({"op": "update-graph", "keys": 5, "expr_ser": None})  # keys no list
    mallory._send_to_scheduler({"op": "update-graph", "keys": [], "graph_header": {}, "graph_frames": 7})
    handled(mallory)  # the stream was not closed: its next request still runs
    still_fine(bob, secret)


def test_a_certificate_without_a_common_name_submits_nothing(locked, bob):
    cluster, clients = locked
    secret = bobs_result(bob)
    with Client(cluster.scheduler_address, security=clients["nameless"], timeout=60) as nameless:
        with pytest.raises(TenantError, match="without a certificate name may not submit"):
            nameless.submit(matvec_request("A", tenant="bob"), x=X, pure=False).result(timeout=60)
        with pytest.raises(TenantError, match="without a certificate name may not submit"):
            nameless.submit(operator.getitem, [1, 2], 0, pure=False).result(timeout=60)
    still_fine(bob, secret)


def test_a_tenant_certificate_does_not_join_as_a_worker(locked):
    from tls_cluster import BIN

    cluster, _ = locked
    cluster.procs.start(
        "rogue",
        BIN / "dask-kaas",
        "worker",
        cluster.scheduler_address,
        "--device",
        "host",
        "--store",
        cluster.store.url,
        "--no-dashboard",
        "--name",
        "rogue",
        *cluster.tls_of("alice"),
        env=cluster.env,
    )
    try:
        import time

        deadline = time.monotonic() + 120
        refused = re.compile(r"'alice' may not (join as a worker|call the scheduler's 'register_nanny')")
        while not refused.search(cluster.procs.log("scheduler")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert refused.search(cluster.procs.log("scheduler"))  # its nanny is refused first, or else the worker
        with Client(cluster.scheduler_address, security=cluster.operator, timeout=60) as op:
            assert "rogue" not in {w["name"] for w in op.scheduler_info()["workers"].values()}
    finally:
        cluster.procs.kill("rogue")

"""Tenants bound to Dask's own TLS client identities (``kaas.scheduler.tenant-identity: tls``).

The Dask client interface is for trusted users (it can run any function); with mutual TLS and this
setting, the scheduler at least makes a request's tenant the one its client's certificate names.
"""

import time

import dask
import numpy as np
import pytest
from distributed import Client
from helpers import matvec_request
from tenant_attacks import HiddenRequest, SameAsAnyone

from dask_kaas import Request
from dask_kaas.errors import RequestError, TenantError

pytest.importorskip("cryptography")  # a test-only dependency (tlscerts makes certificates with it)
from tls_cluster import BIN
from tls_cluster import tls_cluster as start_tls_cluster


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    """A TLS cluster as an operator starts one, with ``kaas.scheduler.tenant-identity: tls``."""
    settings = {
        "DASK_KAAS__SCHEDULER__TENANT_IDENTITY": "tls",
        "DASK_KAAS__SCHEDULER__TENANT_MAP": '{"carol.example.org": "carol"}',
        "DASK_KAAS__SCHEDULER__WORKER_NAMES": '["cluster", "worker-*"]',
    }
    with start_tls_cluster(tmp_path_factory.mktemp("pki"), tmp_path_factory.mktemp("tls-store"), settings) as out:
        yield out


def test_a_client_runs_as_the_tenant_its_certificate_names(tls_cluster):
    cluster, clients = tls_cluster
    x = np.ones(64, np.float32)
    with Client(cluster.scheduler_address, security=clients["alice"]) as alice:
        out = alice.submit(matvec_request("A", tenant="alice"), x=x, pure=False).result(timeout=60)
        np.testing.assert_allclose(out["y"], x * 6)
        with pytest.raises(TenantError, match="certificate is tenant 'alice', not 'bob'"):
            alice.submit(matvec_request("A", tenant="bob"), x=x, pure=False).result(timeout=60)
        with pytest.raises(TenantError, match="not None"):
            alice.submit(matvec_request("A"), x=x, pure=False).result(timeout=60)
    with Client(cluster.scheduler_address, security=clients["carol.example.org"]) as carol:  # tenant-map
        out = carol.submit(matvec_request("A", tenant="carol"), x=x, pure=False).result(timeout=60)
        np.testing.assert_allclose(out["y"], x * 6)
        with pytest.raises(TenantError, match=r"'carol', not 'carol.example.org'"):
            carol.submit(matvec_request("A", tenant="carol.example.org"), x=x, pure=False).result(timeout=60)


# ------------------------------------------------------------------ attacks through Dask's own forms
# mallory (alice's certificate here) tries to run bob's request, reaching bob's namespace and consts.
def _refused(future, match):
    with pytest.raises((TenantError, RequestError), match=match):
        future.result(timeout=60)


def test_a_request_in_any_position_of_a_task_is_checked(tls_cluster):
    import functools
    import operator

    from dask.utils import apply

    cluster, clients = tls_cluster
    x = np.ones(64, np.float32)
    bobs = matvec_request("A", tenant="bob")
    with Client(cluster.scheduler_address, security=clients["alice"]) as mallory:
        _refused(mallory.submit(bobs.__call__, x=x, pure=False), "inside task")  # a bound method
        _refused(mallory.submit(functools.partial(bobs), x=x, pure=False), "inside task")  # a partial
        _refused(mallory.submit(lambda r, x: r(x=x), bobs, x, pure=False), "inside task")  # an argument
        _refused(mallory.submit(lambda rs, x: rs[0](x=x), [bobs], x, pure=False), "inside task")
        graph = {"t": (apply, bobs, [], {"x": x}), "out": (operator.getitem, "t", "y")}  # a low-level graph
        with pytest.raises(TenantError, match="inside task"):
            mallory.get(graph, "out", sync=True)
        # out of the scheduler's sight (an object of the caller's own): the worker refuses, the scheduler
        # approved no KaaS task; an annotation naming bob, written by the client, is dropped
        _refused(mallory.submit(HiddenRequest(bobs), x, pure=False), "approved for no KaaS request")
        with dask.annotate(**{"kaas-tenant": "bob"}):
            _refused(mallory.submit(HiddenRequest(bobs), x, pure=False), "approved for no KaaS request")
        # and its own requests still run, in every form a tenant uses
        own = matvec_request("A", tenant="alice")
        np.testing.assert_allclose(mallory.submit(own, x=x, pure=False).result(timeout=60)["y"], x * 6)
        first = dask.delayed(own, pure=False)(x=x)
        second = dask.delayed(own, pure=False)(x=dask.delayed(operator.getitem)(first, "y"))
        np.testing.assert_allclose(mallory.compute(second).result(timeout=60)["y"], x * 36)


def test_a_client_id_in_a_message_is_not_the_connections(tls_cluster):
    cluster, clients = tls_cluster
    x = np.ones(64, np.float32)
    with (
        Client(cluster.scheduler_address, security=clients["bob"]) as bob,
        Client(cluster.scheduler_address, security=clients["alice"]) as mallory,
    ):
        send = mallory._send_to_scheduler

        def as_bob(msg):  # every update-graph names bob's client id, whose certificate says bob
            if msg.get("op") == "update-graph":
                msg = {**msg, "client": bob.id}
            return send(msg)

        mallory._send_to_scheduler = as_bob
        with pytest.raises(TenantError, match="certificate is tenant 'alice', not 'bob'"):
            mallory.submit(matvec_request("A", tenant="bob"), x=x, pure=False).result(timeout=60)
        mallory._send_to_scheduler = send
        np.testing.assert_allclose(
            bob.submit(matvec_request("A", tenant="bob"), x=x, pure=False).result(timeout=60)["y"], x * 4
        )


def test_a_tenant_is_exactly_a_str_after_unpickling(tls_cluster):
    from dask_kaas.request.model import _set_request_fields

    cluster, clients = tls_cluster
    x = np.ones(64, np.float32)
    forged = object.__new__(Request)  # around the constructor, as a pickling client can
    _set_request_fields(forged, matvec_request("A").kernels, 1, SameAsAnyone("bob"), None)
    with Client(cluster.scheduler_address, security=clients["alice"]) as mallory:
        with pytest.raises(TenantError, match="certificate is tenant 'alice', not 'bob'"):  # rebuilt as a plain str
            mallory.submit(forged, x=x, pure=False).result(timeout=60)
        assert len(mallory.run(lambda: 1)) == 1  # the worker is still there


def test_only_worker_certificates_join_as_workers(tls_cluster):
    """kaas.scheduler.worker-names: a tenant's certificate is refused as a worker (it would be sent other
    tenants' requests and inputs); a certificate of a worker name joins. Last: it changes the cluster."""
    cluster, _ = tls_cluster
    address, procs = cluster.scheduler_address, cluster.procs

    def worker(name, cert):
        procs.start(
            name,
            BIN / "dask-kaas",
            "worker",
            address,
            "--device",
            "host",
            "--store",
            cluster.store.url,
            "--no-dashboard",
            "--name",
            name,
            *cluster.tls_of(cert),
            env=cluster.env,
        )

    with Client(address, security=cluster.operator, timeout=60) as operator:
        worker("rogue", "alice")
        deadline = time.monotonic() + 120
        while "may not join as a worker" not in procs.log("scheduler") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "the certificate 'alice' may not join as a worker" in procs.log("scheduler")
        names = {w["name"] for w in operator.scheduler_info()["workers"].values()}
        assert "rogue" not in names and len(names) == 1
        procs.kill("rogue")
        worker("second", "worker-2")
        operator.wait_for_workers(2, timeout=120)
        assert "second" in {w["name"] for w in operator.scheduler_info()["workers"].values()}

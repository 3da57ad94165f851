"""Tenants bound to Dask's own TLS client identities (``kaas.scheduler.tenant-identity: tls``).

The Dask client interface is for trusted users (it can run any function); with mutual TLS and this
setting, the scheduler at least makes a request's tenant the one its client's certificate names.
"""
import dask
import numpy as np
import pytest
from distributed import Client
from distributed.security import Security

from dask_kaas import LocalKaasCluster
from dask_kaas.errors import TenantError
from helpers import matvec_request
pytest.importorskip("cryptography")  # a test-only dependency (tlscerts makes certificates with it)
from tlscerts import make_pki


def security(pki, name, ca):
    cert, key = pki[name]
    return Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, tls_scheduler_cert=cert,
                    tls_scheduler_key=key, tls_worker_cert=cert, tls_worker_key=key, require_encryption=True)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    pki = make_pki(directory, ["cluster", "alice", "bob", "carol.example.org"])
    ca = pki["ca"][0]
    store = f"file://{tmp_path_factory.mktemp('tls-store')}"
    with dask.config.set({"kaas.scheduler.tenant-identity": "tls",
                          "kaas.scheduler.tenant-map": {"carol.example.org": "carol"}}):
        with LocalKaasCluster(n_workers=1, device="host", store=store, protocol="tls://",
                              security=security(pki, "cluster", ca), dashboard_address=":0") as cluster:
            for tenant in ("alice", "bob", "carol"):
                cluster.store.put("A", np.eye(64, dtype=np.float32) * (1 + len(tenant)), namespace=tenant)
            yield cluster, {name: security(pki, name, ca) for name in ("alice", "bob", "carol.example.org")}


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
        with pytest.raises(TenantError, match="'carol', not 'carol.example.org'"):
            carol.submit(matvec_request("A", tenant="carol.example.org"), x=x, pure=False).result(timeout=60)

"""A TLS cluster as an operator starts one, for the tenant tests: ``dask kaas scheduler`` and ``dask kaas
worker`` processes with the cluster's certificate and the ``kaas.scheduler.*`` settings in their
environment, and certificates for tenants, an operator and a second worker."""

import contextlib
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from distributed import Client
from distributed.security import Security
from procs import Processes, free_port
from tlscerts import make_pki

from dask_kaas import BufferStore

BIN = Path(os.path.dirname(sys.executable))
NAMES = ["cluster", "alice", "bob", "carol.example.org", "worker-2", "operator", "nameless"]


def security(pki, name) -> Security:
    cert, key = pki[name]
    return Security(
        tls_ca_file=pki["ca"][0],
        tls_client_cert=cert,
        tls_client_key=key,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        require_encryption=True,
    )


@contextlib.contextmanager
def tls_cluster(directory: Path, store_directory: Path, settings: dict):
    """Yield ``(cluster, clients)``: ``cluster.scheduler_address``, ``store``, ``procs``, ``env``, ``tls_of``,
    ``operator`` (the cluster certificate's Security), ``pki``; ``clients`` the tenants' Security objects.
    ``settings``: ``DASK_KAAS__...`` variables beside the tests' directory on PYTHONPATH."""
    pki = make_pki(directory, NAMES)
    store = BufferStore(f"file://{store_directory}")
    for tenant in ("alice", "bob", "carol"):
        store.put("A", np.eye(64, dtype=np.float32) * (1 + len(tenant)), namespace=tenant)
    # the attacker's classes (tenant_attacks) importable there, as a client's own script's travel by value
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]), **settings}

    def tls_of(name):
        cert, key = pki[name]
        return ["--tls-ca-file", str(pki["ca"][0]), "--tls-cert", str(cert), "--tls-key", str(key)]

    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    procs = Processes(directory)
    try:
        procs.start(
            "scheduler",
            BIN / "dask-kaas",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--protocol",
            "tls",
            "--dashboard-address",
            ":0",
            *tls_of("cluster"),
            env=env,
        )
        procs.start(
            "worker",
            BIN / "dask-kaas",
            "worker",
            address,
            "--device",
            "host",
            "--store",
            store.url,
            "--no-dashboard",
            *tls_of("cluster"),
            env=env,
        )
        with Client(address, security=security(pki, "cluster"), timeout=60) as operator:
            operator.wait_for_workers(1, timeout=120)
        yield (
            SimpleNamespace(
                scheduler_address=address,
                store=store,
                procs=procs,
                env=env,
                tls_of=tls_of,
                pki=pki,
                operator=security(pki, "cluster"),
            ),
            {name: security(pki, name) for name in ("alice", "bob", "carol.example.org", "operator", "nameless")},
        )
    except Exception:
        for name in ("scheduler", "worker"):
            print(f"--- {name} log\n" + (procs.log(name) if name in procs.procs else ""))
        raise
    finally:
        procs.stop_all()

"""A KaaS cluster over SSH with distributed's SSHCluster: the scheduler (with the KaaS preload) on the
first host, on every other host the KaaS workers of that node (one per GPU), started as
``dask_kaas.deploy.KaasWorkers``, the class ``dask kaas worker`` runs.

    python ssh.py gpu-head gpu-node-1 gpu-node-2
"""

from __future__ import annotations

import sys

WORKER_CLASS = "dask_kaas.deploy.KaasWorkers"
WORKER_OPTIONS = {"device": "cuda", "store": "s3", "rmm_pool_size": "80%"}
SCHEDULER_OPTIONS = {"preload": ["dask_kaas.preload"], "dashboard_address": ":8787"}


def make_cluster(hosts: list[str], **overrides):
    """The SSHCluster of this recipe; ``hosts[0]`` runs the scheduler."""
    from distributed import SSHCluster

    options = dict(
        worker_class=WORKER_CLASS,
        worker_options=WORKER_OPTIONS,
        scheduler_options=SCHEDULER_OPTIONS,
        connect_options={"known_hosts": None},
    )
    return SSHCluster(hosts, **{**options, **overrides})


if __name__ == "__main__":
    from distributed import Client

    with make_cluster(sys.argv[1:]) as cluster, Client(cluster) as client:
        print(client.scheduler_info()["workers"].keys())

"""What a new user runs into: a plain Dask cluster, a typo in a policy, the wrong call shape."""

import os

import numpy as np
import pytest
from distributed import Client, LocalCluster
from helpers import matvec_request

from dask_kaas import (
    KaasError,
    KaasSchedulerPlugin,
    KaasWorkerPlugin,
    LocalKaasCluster,
    cluster_state,
    set_policy,
    worker_stats,
)
from dask_kaas.errors import ConfigError


def test_a_plain_dask_cluster_says_how_to_make_it_a_kaas_cluster():
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
        Client(cluster) as client,
    ):
        request = matvec_request("A")
        with pytest.raises(KaasError, match=r"has no KaaS plugin.*LocalKaasCluster.*install\(client\)"):
            client.submit(request, x=np.ones(64, np.float32)).result(timeout=60)
        with pytest.raises(
            KaasError, match="none of this cluster's 1 workers has the KaaS plugin, so none can run a Request"
        ):
            worker_stats(client)
        with pytest.raises(KaasError, match="the scheduler has no KaaS plugin"):
            cluster_state(client)
        assert len(client.run(os.getpid)) == 1  # the worker goes on


@pytest.mark.parametrize(
    "make",
    [
        lambda: KaasSchedulerPlugin(policy="afinity"),
        lambda: KaasWorkerPlugin(device="tpu"),
        lambda: KaasWorkerPlugin(device_memory="lots"),
        lambda: KaasWorkerPlugin(workers_per_device=0),
        lambda: LocalKaasCluster(n_workers=0, device="host"),
        lambda: LocalKaasCluster(n_workers=1, device="host", store="memory://x"),
    ],
)
def test_configuration_mistakes_are_kaas_errors_and_value_errors(make):
    with pytest.raises(ConfigError) as info:
        make()
    assert isinstance(info.value, KaasError) and isinstance(info.value, ValueError)


def test_set_policy_typo_changes_nothing(cluster):
    with Client(cluster) as client:
        before = cluster_state(client)["policy"]
        with pytest.raises(ConfigError, match="policy must be one of affinity, balance, static, exclusive"):
            set_policy(client, "afinity")
        assert cluster_state(client)["policy"] == before
        with pytest.raises(ConfigError, match="eviction must be one of lru, queue-aware, got 'mru'"):
            set_policy(client, "balance", eviction="mru")
        assert cluster_state(client)["policy"] == before

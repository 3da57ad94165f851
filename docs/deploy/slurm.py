"""A KaaS cluster on SLURM with dask-jobqueue: each job is one GPU node running ``dask kaas worker``
(one worker per GPU of the allocation); the scheduler runs in this process with the KaaS preload.

    python slurm.py            # 2 nodes of 4 GPUs, then a request
"""

from __future__ import annotations

GPUS_PER_NODE = 4


def make_cluster(**overrides):
    """The SLURMCluster of this recipe (``overrides`` go to SLURMCluster)."""
    from dask_jobqueue import SLURMCluster

    options = dict(
        cores=1,
        processes=1,  # one `dask kaas worker` per job (--nthreads 1); it starts one worker per GPU
        job_cpu=GPUS_PER_NODE,  # CPUs per job (--cpus-per-task)
        memory="64GB",  # per job; Dask's memory limit is per worker process
        walltime="04:00:00",
        job_extra_directives=[f"--gres=gpu:{GPUS_PER_NODE}"],
        worker_command="dask_kaas.cli worker",  # `python -m dask_kaas.cli worker SCHEDULER ...`
        worker_extra_args=["--device", "cuda", "--store", "s3"],
        scheduler_options={"preload": ["dask_kaas.preload"], "dashboard_address": ":8787"},
    )
    return SLURMCluster(**{**options, **overrides})


if __name__ == "__main__":
    from distributed import Client

    with make_cluster() as cluster, Client(cluster) as client:
        cluster.scale(jobs=2)
        client.wait_for_workers(2 * GPUS_PER_NODE)
        print(client.scheduler_info()["workers"].keys())

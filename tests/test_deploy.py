"""The deployment recipes in docs/deploy/: each parsed and checked against what runs it (the Dask
operator's DaskCluster schema, dask-jobqueue's own job script, distributed's ``dask spec`` that
SSHCluster runs on each host), and against our own commands."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from distributed import Client
from helpers import matvec_request

from dask_kaas import BufferStore, worker_stats
from dask_kaas.deploy.commands import scheduler as scheduler_command
from dask_kaas.deploy.commands import worker as worker_command

DEPLOY = Path(__file__).resolve().parents[1] / "docs" / "deploy"


def load_recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", DEPLOY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parses(command, args: list[str]) -> dict:
    """The options ``args`` give our click command (a bad option fails here)."""
    with command.make_context(command.name, list(args)) as ctx:
        return dict(ctx.params)


# ------------------------------------------------------------------ Kubernetes
def test_kubernetes_daskcluster_manifest():
    manifest = yaml.safe_load((DEPLOY / "kubernetes.yaml").read_text())
    # the DaskCluster custom resource (kubernetes.dask.org/v1): spec.scheduler {spec: PodSpec, service:
    # ServiceSpec} and spec.worker {replicas, spec: PodSpec}, as the operator's CRD requires
    assert (manifest["apiVersion"], manifest["kind"]) == ("kubernetes.dask.org/v1", "DaskCluster")
    name, spec = manifest["metadata"]["name"], manifest["spec"]
    assert set(spec) == {"scheduler", "worker"} and {"spec", "service"} <= set(spec["scheduler"])
    assert isinstance(spec["worker"]["replicas"], int) and spec["worker"]["replicas"] >= 1
    for pod in (spec["scheduler"]["spec"], spec["worker"]["spec"]):
        for container in pod["containers"]:
            assert container["name"] and container["image"] and all(isinstance(a, str) for a in container["args"])
            assert {p["name"] for p in container.get("ports", [])} <= {"tcp-comm", "http-dashboard"}
            for env in container.get("env", []):
                assert set(env) == {"name", "value"} and isinstance(env["value"], str)

    [worker] = spec["worker"]["spec"]["containers"]
    assert worker["args"][:3] == ["dask", "kaas", "worker"]
    options = parses(worker_command, worker["args"][3:])
    assert options["device"] == "cuda" and options["nworkers"] is None  # one worker: the pod's one GPU
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1 == worker["resources"]["requests"]["nvidia.com/gpu"]

    [scheduler] = spec["scheduler"]["spec"]["containers"]
    assert scheduler["args"][:3] == ["dask", "kaas", "scheduler"]
    parses(scheduler_command, scheduler["args"][3:])
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    assert ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    service = spec["scheduler"]["service"]
    assert {(p["port"], p["targetPort"]) for p in service["ports"]} == {(8786, "tcp-comm"), (8787, "http-dashboard")}
    assert service["selector"] == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}


def test_worker_takes_the_scheduler_address_from_the_operators_environment():
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "dask-kaas"), "worker", "--device", "host", "--nthreads", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:1"},
    )
    # past the address check (it came from the environment), stopped by the next rule
    assert proc.returncode != 0 and "nthreads must be 1" in proc.stderr


# ------------------------------------------------------------------ SLURM
def test_slurm_recipe_job_script():
    recipe = load_recipe("slurm")
    with recipe.make_cluster(
        scheduler_options={"preload": ["dask_kaas.preload"], "dashboard_address": ":0"}
    ) as cluster:
        script = cluster.job_script()
        assert "kaas" in cluster.scheduler.plugins  # the preload ran in this process's scheduler
    assert f"#SBATCH --gres=gpu:{recipe.GPUS_PER_NODE}" in script
    assert f"#SBATCH --cpus-per-task={recipe.GPUS_PER_NODE}" in script
    command = next(line for line in script.splitlines() if "dask_kaas.cli worker" in line)
    args = command.split("dask_kaas.cli worker", 1)[1].split()
    options = parses(worker_command, args)
    assert options["scheduler"].startswith("tcp://") and options["nthreads"] == 1
    assert options["device"] == "cuda" and options["store"] == "s3"


# ------------------------------------------------------------------ SSH
@pytest.mark.slow
def test_ssh_recipe_worker_spec_runs_as_sshcluster_runs_it(tmp_path):
    """SSHCluster starts ``python -m distributed.cli.dask_spec SCHEDULER --spec '{"cls": WORKER_CLASS,
    "opts": WORKER_OPTIONS}'`` on each host: run exactly that here, with the host device."""
    recipe = load_recipe("ssh")
    store = BufferStore(f"file://{tmp_path / 'store'}")
    store.put("A", np.eye(64, dtype=np.float32), namespace="ssh")
    opts = {**recipe.WORKER_OPTIONS, "device": "host", "store": store.url, "nworkers": 2}
    opts.pop("rmm_pool_size")  # a GPU option: refused on the host device
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=0, scheduler_kwargs={"preload": recipe.SCHEDULER_OPTIONS["preload"]}, dashboard_address=":0"
    ) as cluster:
        spec = json.dumps({"cls": recipe.WORKER_CLASS, "opts": opts})
        proc = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_spec", cluster.scheduler_address, "--spec", spec],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            with Client(cluster) as client:
                client.wait_for_workers(2, timeout=120)
                y = client.submit(matvec_request("A", tenant="ssh"), x=np.ones(64, np.float32), pure=False).result()
                np.testing.assert_allclose(y["y"], np.ones(64, np.float32))
                assert len(worker_stats(client)) == 2
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            deadline = time.time() + 60
            while proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)

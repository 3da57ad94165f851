"""Operators: ``dask kaas scheduler`` and ``dask kaas worker`` as real processes, the scheduler
preloads, which GPU each worker gets, the ``__main__`` guard, and the README's Quick start run as
a saved file."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
from helpers import matvec_request
from hypothesis import given
from hypothesis import strategies as st
from procs import Processes, free_port

from dask_kaas import ConfigError, worker_stats
from dask_kaas.deploy import visible_devices, worker_slots
from dask_kaas.deploy.main_guard import unguarded_line

BIN = os.path.dirname(sys.executable)
README = Path(__file__).resolve().parents[1] / "README.md"


# ------------------------------------------------------------------ which GPU each worker gets
def test_visible_devices():
    assert visible_devices({}, count=3) == ["0", "1", "2"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "2,3"}, count=8) == ["2", "3"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": " GPU-ab12 , 1"}) == ["GPU-ab12", "1"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}, count=4) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "-1"}, count=4) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "1,-1,0"}) == ["1"]  # CUDA stops at -1
    with pytest.raises(ConfigError, match="empty entry"):
        visible_devices({"CUDA_VISIBLE_DEVICES": "0,,1"})


def test_worker_slots_examples():
    assert worker_slots(["2", "3"], None) == [("2,3", "2", 1), ("3,2", "3", 1)]
    assert worker_slots(["0", "1"], 3) == [("0,1", "0", 2), ("1,0", "1", 1), ("0,1", "0", 2)]
    assert worker_slots([], 2) == [(None, None, 2), (None, None, 2)]
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ConfigError, match="positive integer"):
            worker_slots(["0"], bad)
    with pytest.raises(ConfigError, match="no GPU is visible"):
        worker_slots([], None)


@given(n_gpus=st.integers(1, 8), n_workers=st.integers(1, 40))
def test_worker_slots_spread_evenly_and_see_their_gpu_first(n_gpus, n_workers):
    devices = [f"GPU-{i}" for i in range(n_gpus)]
    slots = worker_slots(devices, n_workers)
    per_gpu = Counter(s.gpu for s in slots)
    assert max(per_gpu.values()) - min(per_gpu.values(), default=0) <= 1 or len(per_gpu) < n_gpus
    for slot in slots:
        visible = slot.visible.split(",")
        assert visible[0] == slot.gpu and sorted(visible) == sorted(devices)  # a rotation: all, its own first
        assert slot.share == per_gpu[slot.gpu]  # workers sharing a GPU know how many they are


# ------------------------------------------------------------------ the __main__ guard
@pytest.mark.parametrize(
    "source, line, unguarded",
    [
        ("import x\ncluster = f()\n", 2, True),
        ('if __name__ == "__main__":\n    cluster = f()\n', 2, False),
        ("if '__main__' == __name__:\n    cluster = f()\n", 2, False),
        ('def main():\n    cluster = f()\n\nif __name__ == "__main__":\n    main()\n', 5, False),
        ('if __name__ == "__main__":\n    pass\nelse:\n    cluster = f()\n', 4, True),
        ("with f() as cluster:\n    g(cluster)\n", 2, True),
        ("class A:\n    c = f()\n", 2, False),
    ],
)
def test_unguarded_line(source, line, unguarded):
    assert unguarded_line(source, line) is unguarded


def quick_start_code() -> str:
    """The README's Quick start, as a user would copy it."""
    text = README.read_text()
    section = text[text.index("## Quick start") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_quick_start_runs_as_a_saved_file(tmp_path):
    script = tmp_path / "quickstart.py"
    script.write_text(quick_start_code())
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[1. 2. 3. 4.]" in proc.stdout


def test_an_unguarded_cluster_script_fails_at_once_saying_what_to_write(tmp_path):
    code = quick_start_code()
    guarded = code[code.index('if __name__ == "__main__":') :]
    unguarded = code[: code.index('if __name__ == "__main__":')] + textwrap.dedent(guarded.split("\n", 1)[1])
    script = tmp_path / "unguarded.py"
    script.write_text(unguarded)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60  # not the two-minute wait for workers that never arrive
    assert "ConfigError" in proc.stderr and 'if __name__ == "__main__":' in proc.stderr
    assert f"{script} (line" in proc.stderr


# ------------------------------------------------------------------ real processes
@pytest.fixture
def procs(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.stop_all()


def dask_kaas(*args: str) -> list[str]:
    return [os.path.join(BIN, "dask-kaas"), *args]


def http(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.read().decode()


def run_a_request(address: str, store, tenant="ops") -> dict:
    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
        x = np.ones(64, np.float32)
        y = client.submit(matvec_request("A", tenant=tenant), x=x, pure=False).result(timeout=120)["y"]
        np.testing.assert_allclose(y, x @ store.get("A", namespace=tenant), rtol=1e-4)
        return {"stats": worker_stats(client), "dashboard": client.dashboard_link}


@pytest.mark.slow
def test_two_commands_make_a_kaas_cluster_that_survives_a_scheduler_restart(procs, tmp_path):
    from dask_kaas import BufferStore

    store = BufferStore(f"file://{tmp_path / 'store'}")
    store.put("A", np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32), namespace="ops")
    port, dashboard = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = dask_kaas(
        "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", f"127.0.0.1:{dashboard}"
    )
    procs.start("scheduler", *scheduler)
    for i in (0, 1):  # two worker processes, each started by its own command
        procs.start(
            f"worker{i}",
            *dask_kaas(
                "worker",
                address,
                "--device",
                "host",
                "--device-memory",
                "32MiB",
                "--store",
                store.url,
                "--name",
                f"w{i}",
                "--no-dashboard",
            ),
        )
    first = run_a_request(address, store)
    assert sorted(s["capacity"] for s in first["stats"].values()) == [32 * 2**20] * 2
    base = f"http://127.0.0.1:{dashboard}"
    status, page = http(f"{base}/kaas")
    assert status == 200 and "bokeh" in page.lower()  # the page's Bokeh document
    assert 'href="kaas"' in http(f"{base}/status")[1]  # linked from the navigation
    assert "dask_kaas_" in http(f"{base}/metrics")[1]
    assert f"the KaaS page at {base}/kaas" in procs.log("scheduler")  # the scheduler says where its page is
    for i in (0, 1):
        assert re.search(
            r"dask-kaas worker .*: host device .*cache capacity 32.00 MiB.*store file://", procs.log(f"worker{i}")
        )

    procs.kill("scheduler")  # killed, then started again with the same command: no client action needed
    procs.start("scheduler", *scheduler)
    again = run_a_request(address, store)
    assert sum(s["requests"] for s in again["stats"].values()) == 1  # workers started afresh
    assert http(f"{base}/kaas")[0] == 200
    assert "starting them again" in procs.log("worker0")


@pytest.mark.slow
def test_several_workers_of_one_command_and_the_dashboard_preload(procs, tmp_path):
    from dask_kaas import BufferStore

    store = BufferStore(f"file://{tmp_path / 'store'}")
    store.put("A", np.eye(64, dtype=np.float32), namespace="ops")
    port, dashboard = free_port(), free_port()
    address = f"tcp://127.0.0.1:{port}"
    # plain dask scheduler with the page-only preload, the plugin from the other preload
    procs.start(
        "scheduler",
        os.path.join(BIN, "dask"),
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dashboard-address",
        f"127.0.0.1:{dashboard}",
        "--preload",
        "dask_kaas.dashboard",
        "--preload",
        "dask_kaas.preload",
    )
    procs.start(
        "workers",
        *dask_kaas(
            "worker",
            address,
            "--device",
            "host",
            "--nworkers",
            "2",
            "--device-memory",
            "2%",
            "--store",
            store.url,
            "--name",
            "node",
            "--no-dashboard",
        ),
    )
    result = run_a_request(address, store)
    import psutil

    share = int(psutil.virtual_memory().total // 2 * 0.02)  # 2% of the machine's memory, split between the two
    assert sorted(s["capacity"] for s in result["stats"].values()) == [share] * 2
    with Client(address) as client:
        workers = client.scheduler_info()["workers"].values()
        assert sorted(w["name"] for w in workers) == ["node-0", "node-1"]
        assert all(w["resources"] == {"GPU": 1} and w["nthreads"] == 1 for w in workers)
    assert http(f"http://127.0.0.1:{dashboard}/kaas")[0] == 200


def test_worker_command_refuses_what_cannot_work(tmp_path):
    def run(*args):
        return subprocess.run(dask_kaas("worker", *args), capture_output=True, text=True, timeout=120)

    proc = run("tcp://127.0.0.1:1", "--device", "host", "--nthreads", "2")
    assert proc.returncode != 0 and "nthreads must be 1" in proc.stderr
    proc = run("tcp://127.0.0.1:1", "--device", "host", "--rmm-pool-size", "1GiB")
    assert proc.returncode != 0 and "RMM pool on a GPU" in proc.stderr
    proc = run("--device", "host")
    assert proc.returncode != 0 and "scheduler's address" in proc.stderr
    proc = run("tcp://127.0.0.1:1", "--device", "host", "--device-memory", "lots")
    assert proc.returncode != 0 and "device memory" in proc.stderr


def test_local_cluster_respects_the_parents_visible_gpus(monkeypatch, tmp_path):
    """Under CUDA_VISIBLE_DEVICES=2,3 a GPU cluster's workers see 2,3 and 3,2 (not 0,1); a third
    worker shares GPU 2 and says so. Checked on the worker specs, without starting any process."""
    import dask_kaas.cluster as cluster_module

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(cluster_module, "gpu_count", lambda: 2)

    async def specs():
        cluster = cluster_module.LocalKaasCluster(
            n_workers=3, device="cuda", store=f"file://{tmp_path}", asynchronous=True, dashboard_address=":0"
        )
        try:
            return [
                (s["options"]["env"]["CUDA_VISIBLE_DEVICES"], next(iter(s["options"]["plugins"])))
                for s in cluster.worker_spec.values()
            ]
        finally:
            await cluster.close()

    got = asyncio.run(specs())
    assert [(visible, p.workers_per_device, p.device_index) for visible, p in got] == [
        ("2,3", 2, 0),
        ("3,2", 1, 0),
        ("2,3", 2, 0),
    ]


def test_local_cluster_fails_within_seconds_with_the_workers_own_error(tmp_path):
    from dask_kaas import KaasError, LocalKaasCluster

    start = time.monotonic()
    with pytest.raises(KaasError, match="failed to start: ModuleNotFoundError: No module named 'no_such_module_xyz'"):
        LocalKaasCluster(
            n_workers=2,
            device="host",
            store=f"file://{tmp_path}",
            dashboard_address=":0",
            preload=["no_such_module_xyz"],
        )
    assert time.monotonic() - start < 60  # not the two-minute wait for workers that never arrive

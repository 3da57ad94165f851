"""The command line: `dask-kaas demo`, `dask-kaas submit`, and `dask kaas` through dask_cli."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client

from dask_kaas import BufferSpec, KernelSpec, Literal, LocalKaasCluster, Request

BIN = os.path.dirname(sys.executable)


def run(*args, cwd=None, timeout=180):
    return subprocess.run(
        [os.path.join(BIN, args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


@pytest.mark.slow
def test_demo_runs_checks_and_reports(tmp_path):
    proc = run(
        "dask-kaas",
        "demo",
        "--requests",
        "24",
        "--jacobi",
        "2",
        "--no-progress",
        "--dashboard-address",
        ":0",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "all results match NumPy" in out
    for tenant in ("tenant-0", "tenant-1", "tenant-2", "tenant-3", "jacobi"):
        assert tenant in out
    assert "p50 ms" in out and "hit rate" in out and "dashboard: http" in out
    assert out.index("dashboard: http") < out.index("all results match")  # printed while the cluster is up
    assert (Path(os.environ["XDG_DATA_HOME"]) / "dask-kaas" / "store").is_dir()  # the default store
    assert not (tmp_path / "stores").exists()  # nothing in the current directory


@pytest.mark.slow
def test_demo_keeps_its_dashboard_up_when_asked(tmp_path):
    """--duration keeps the cluster after the workload: the printed /kaas address answers meanwhile."""
    import re
    import urllib.request

    proc = subprocess.Popen(
        [
            os.path.join(BIN, "dask-kaas"),
            "demo",
            "--requests",
            "8",
            "--jacobi",
            "0",
            "--no-progress",
            "--dashboard-address",
            ":0",
            "--duration",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "the dashboard stays up at" in line:
                break
        url = re.search(r"(http://\S+/kaas)", lines[-1]).group(1)
        assert "all results match NumPy" in "".join(lines)
        with urllib.request.urlopen(url, timeout=60) as response:
            assert response.status == 200 and "bokeh" in response.read().decode().lower()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_demo_rejects_bad_options(tmp_path):
    proc = run("dask-kaas", "demo", "--device", "tpu", cwd=tmp_path)
    assert proc.returncode == 2 and "tpu" in proc.stderr


def test_dask_cli_entry_point():
    proc = run("dask", "kaas", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and "submit" in proc.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalKaasCluster(
        n_workers=1, device="host", store=f"file://{tmp_path_factory.mktemp('s')}", dashboard_address=":0"
    ) as cluster:
        yield cluster


def test_submit_json_request(cluster, tmp_path):
    y = BufferSpec("y", 16, dtype="float32", ephemeral=True)
    x = BufferSpec("x", 16, dtype="float32", ephemeral=True)
    r = Request(
        [
            KernelSpec(
                "builtin", "axpy", 1, 32, literals=[Literal("i", 4), Literal("f", 2.0)], arguments=[(x, "i"), (y, "io")]
            )
        ]
    )
    doc = {"request": r.to_dict(), "inputs": {"x": [1, 2, 3, 4], "y": [10, 10, 10, 10]}}
    path = tmp_path / "req.json"
    path.write_text(json.dumps(doc))
    proc = run(
        "dask-kaas", "submit", str(path), "--scheduler", cluster.scheduler_address, "--save", str(tmp_path / "out")
    )
    assert proc.returncode == 0, proc.stderr
    assert "y: float32 (4,)" in proc.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "y.npy"), [12, 14, 16, 18])


def test_submit_bad_request_names_the_error(cluster, tmp_path):
    doc = {
        "kernels": [
            {
                "library": "builtin",
                "kernel": "fill",
                "arguments": [{"name": "y", "size": 0}],
                "type_list": ["o"],
                "gridDim": [1],
                "blockDim": [1],
                "literals": [{"type": "i", "val": 1}, {"type": "f", "val": 0.0}],
            }
        ]
    }
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    proc = run("dask-kaas", "submit", str(path), "--scheduler", cluster.scheduler_address)
    assert proc.returncode == 2
    assert "RequestError" in proc.stderr and "buffer 'y'" in proc.stderr
    with Client(cluster) as client:  # the cluster is untouched and still serves
        assert client.submit(r_fill()).result()["y"][0] == 1.0


def r_fill():
    return Request(
        [
            KernelSpec(
                "builtin",
                "fill",
                1,
                1,
                literals=[Literal("i", 1), Literal("f", 1.0)],
                arguments=[(BufferSpec("y", 4, dtype="float32", ephemeral=True), "o")],
            )
        ]
    )


def test_submit_to_an_unreachable_scheduler_is_a_tidy_error(tmp_path):
    path = tmp_path / "req.json"
    path.write_text(r_fill().to_json())
    start = time.time()
    proc = run("dask-kaas", "submit", str(path), "--scheduler", "tcp://127.0.0.1:1", "--timeout", "2")
    assert proc.returncode == 2
    assert "error: cannot reach the scheduler at tcp://127.0.0.1:1 within 2 s" in proc.stderr
    assert "Traceback" not in proc.stderr and time.time() - start < 60


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"x": [1000, 2, 3, 4]}, "input 'x': cannot be read as uint8"),  # no dtype: bytes, and 1000 is no byte
        ({"x": [[1], [2, 3]]}, "input 'x': cannot be read"),
        ({"x": "abcd"}, "input 'x'"),
        ([1, 2], "'inputs' must map buffer names"),
    ],
)
def test_submit_bad_inline_inputs(tmp_path, inputs, message):
    x = BufferSpec("x", 4, ephemeral=True)
    y = BufferSpec("y", 16, dtype="float32", ephemeral=True)
    r = Request(
        [KernelSpec("builtin", "vadd", 1, 1, literals=[Literal("i", 1)], arguments=[(x, "i"), (x, "i"), (y, "o")])]
    )
    path = tmp_path / "req.json"
    path.write_text(json.dumps({"request": r.to_dict(), "inputs": inputs}))
    proc = run("dask-kaas", "submit", str(path), "--scheduler", "tcp://127.0.0.1:1", "--timeout", "1")
    assert proc.returncode == 2 and "RequestError" in proc.stderr and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr

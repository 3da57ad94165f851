"""The benchmark harness: ``python -m benchmarks all --quick --device host`` succeeds and writes every
suite's results; a wrong result makes the run fail."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the benchmarks package lives at the repository root, not in the installed package
    sys.path.insert(0, ROOT)


def bench(*args, env=None, timeout=400):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_all_quick_host(tmp_path):
    proc = bench("all", "--quick", "--device", "host", env={"KAAS_BENCH_RESULTS": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "== summary" in proc.stdout

    workloads = json.loads((tmp_path / "workloads-host-quick.json").read_text())
    assert workloads["device"] == "host" and "machine" in workloads
    assert set(workloads["workloads"]) == {"mlp", "sgemm", "jacobi", "cgemm"}
    for row in workloads["workloads"].values():
        assert row["correct"] is True
        for system in ("kaas", "dask-lru", "dask-dict"):
            assert row["latency_s"][system]["median"] > 0 and row["throughput_rps"][system]["median"] > 0
        assert row["latency_ratio_kaas_over_dask-lru"] > 0 and row["throughput_ratio_kaas_over_dask-dict"] > 0
    assert workloads["workloads"]["mlp"]["accuracy"] >= 0.9

    overhead = json.loads((tmp_path / "overhead-host-quick.json").read_text())
    d, e = overhead["in_process"], overhead["end_to_end"]
    assert {"a_us", "b_us"} <= set(d["fit_runtime"])
    assert isinstance(d["budget"]["per_request_met"], bool) and isinstance(d["budget"]["per_launch_met"], bool)
    assert e["timing_s"]["kaas"]["median"] > 0 and e["timing_s"]["noop"]["median"] > 0
    assert isinstance(e["budget"]["met"], bool)
    assert set(overhead["budgets"]) == {"per_request_under_100us", "per_launch_under_10us", "e2e_within_1.15x_noop",
                                        "e2e_within_1.2x_noop_plus_kernels"}
    assert e["gap_s"] > 0  # calls measured with an idle gap before each

    contention = json.loads((tmp_path / "contention-host-quick.json").read_text())
    table = contention["headline"]["table"]
    assert {"naive", "dask-lru", "dask-dict", "static", "kaas-balance", "kaas-affinity"} == set(table)
    assert table["kaas-affinity"]["bytes_from_store"] < table["naive"]["bytes_from_store"]
    assert isinstance(contention["headline"]["targets"]["affinity_1.5x_dask_lru_throughput"], bool)

    scale = json.loads((tmp_path / "scale-host-quick.json").read_text())
    assert {c["workers"] for c in scale["cells"]} == {4, 16}
    for cell in scale["cells"]:
        assert cell["plugin_cpu_us_per_task"]["median"] > 0 and cell["plugin_over_dask"]["median"] > 0
    assert all(c["dask_cpu_us_per_task"]["median"] > 0 for c in scale["plain_dask"])


def test_corrupted_weight_fails_the_run(tmp_path):
    proc = bench("workloads", "--quick", "--device", "host",
                 env={"KAAS_BENCH_RESULTS": str(tmp_path), "KAAS_BENCH_CORRUPT": "mlp"}, timeout=200)
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "WRONG RESULT" in proc.stdout and "mlp" in proc.stdout
    assert not (tmp_path / "workloads-host-quick.json").exists()


def test_check_functions_reject_wrong_outputs():
    from benchmarks.common import WrongResult
    from benchmarks.workloads import cgemm, jacobi, mlp, sgemm

    for module in (mlp, sgemm, jacobi, cgemm):
        w = module.setup(quick=True)
        want = w.expected[0]
        right = ({"re": want[0], "im": want[1]} if module is cgemm else {w.output: want})
        w.check(0, right)
        wrong = {k: v.copy() for k, v in right.items()}
        next(iter(wrong.values())).reshape(-1)[0] += 1.0
        with pytest.raises(WrongResult):
            w.check(0, wrong)
    # accuracy below 0.9 is a wrong result even when every probability matched some forward pass
    w = mlp.setup(quick=True)
    shuffled = {i: np.roll(e, 1, axis=1) for i, e in enumerate(w.expected)}
    with pytest.raises(WrongResult):
        w.summary(shuffled)


def test_cuda_without_gpu_fails_clearly(tmp_path):
    from benchmarks.common import resolve_device
    from dask_kaas.device import gpu_count

    if gpu_count():
        pytest.skip("a GPU answers here")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        resolve_device("cuda")
    proc = bench("overhead", "--device", "cuda", "--quick", env={"KAAS_BENCH_RESULTS": str(tmp_path)}, timeout=60)
    assert proc.returncode == 1 and "no CUDA GPU" in proc.stderr

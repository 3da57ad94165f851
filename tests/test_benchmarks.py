"""The benchmark harness (``benchmarks.common``): its config, argv parsing, results writer and printer,
the command line, and the simulator's suites (calibrate, simulate, workloads) at their smallest
(``smoke``) size. Nothing here asserts a timing: the figures of a smoke run mean nothing, only their
presence, shape and sanity do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from benchmark_smoke import ROOT, positive, smoke

from benchmarks import common
from benchmarks.common import Config, parse_args, write_result


# ------------------------------------------------------------------ the harness's pieces
def test_config_names_sizes_and_directory(tmp_path, monkeypatch):
    assert Config("overhead", device="host").file_name() == "overhead-host"
    assert Config("contention", device="cuda", quick=True).file_name() == "contention-cuda-quick"
    assert Config("scale", device="host", smoke=True).file_name() == "scale-host-smoke"
    assert Config("placement", quick=True).file_name() == "placement_quick"
    assert Config("store_io").file_name() == "store_io"
    assert Config("placement", quick=True, name="mine").file_name() == "mine"
    for name in common.SUITES:
        suite = common.get_suite(name)
        assert set(suite.sizes) == {"full", "quick", "smoke"}
        assert set(suite.sizes["quick"]) <= set(suite.sizes["smoke"])
    placement = Config("placement", quick=True, options={"requests": 30})
    assert placement.params()["requests"] == 30 and placement.params()["repeat"] == 1
    with pytest.raises(ValueError, match="unknown suite"):
        Config("nosuch")
    with pytest.raises(ValueError, match="--device"):
        Config("overhead", device="tpu")

    monkeypatch.setenv("KAAS_BENCH_RESULTS", str(tmp_path / "env"))
    assert Config("overhead").results_dir() == str(tmp_path / "env") and (tmp_path / "env").is_dir()
    assert Config("overhead", out=str(tmp_path / "out")).results_dir() == str(tmp_path / "out")
    monkeypatch.delenv("KAAS_BENCH_RESULTS")
    assert Config("overhead").results_dir() == os.path.abspath(common.RESULTS)


def test_resolved_device():
    config = Config("placement", device="host").resolved()
    assert (config.device, config.device_requested) == ("host", "host")
    assert config.resolved() is config
    assert Config("store_io", device="auto").resolved().device == "host"  # host-only, whatever answers


def test_parse_args(tmp_path):
    [config] = parse_args(
        ["placement", "--quick", "--requests", "30", "--zipf", "0.5", "--out", str(tmp_path), "--note", "abc"]
    )
    assert (config.suite, config.quick, config.smoke, config.device, config.out, config.note) == (
        "placement",
        True,
        False,
        "auto",
        str(tmp_path),
        "abc",
    )
    assert config.options == {"requests": 30, "zipf": 0.5}
    assert config.params()["requests"] == 30 and config.params()["tenants"] == 12

    configs = parse_args(["all", "--smoke", "--device", "host"])
    assert [c.suite for c in configs] == list(common.ALL)
    assert all(c.smoke and c.device == "host" and not c.options for c in configs)

    [config] = parse_args(["--mib", "8"], suite="store_io")  # python -m benchmarks.store_io --mib 8
    assert config.suite == "store_io" and config.params() == {"mib": 8, "repeat": 9}

    for argv in (
        ["nosuch"],
        ["overhead", "--tenants", "9"],
        ["placement", "--tenants", "20"],
        ["all", "--name", "x"],
        ["overhead", "--quick", "--smoke"],
        ["overhead", "--device", "tpu"],
    ):
        with pytest.raises(SystemExit) as e:
            parse_args(argv)
        assert e.value.code == 2, argv


def test_write_result(tmp_path):
    config = Config("store_io", out=str(tmp_path), name="tiny")
    path = write_result(config, {"suite": "store_io", "ratio": float("inf"), "path": "not written"})
    assert path == str(tmp_path / "tiny.json")
    written = json.loads((tmp_path / "tiny.json").read_text())
    assert list(written) == ["machine", "suite", "ratio"]
    assert written["ratio"] == float("inf") and {"date", "python", "cpus", "versions"} <= set(written["machine"])


def test_spread_and_interleaved():
    assert common.spread([3, 1, 2]) == {"median": 2, "min": 1, "max": 3, "runs": [3, 1, 2]}
    assert common.spread([3, 1, 2], runs=False) == {"median": 2, "min": 1, "max": 3}
    calls = []
    out = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeat=3)
    assert calls == ["a", "b"] * 3 and len(out["a"]["runs"]) == 3 and out["b"]["min"] <= out["b"]["median"]


def test_belady_and_jain():
    from benchmarks.contention import jain
    from benchmarks.placement import belady_hits

    assert belady_hits([1, 2, 1, 3, 1, 2], 2) == 2  # evicts 2 (used furthest ahead) for 3, keeps 1
    assert belady_hits([1, 2, 3, 1, 2, 3], 3) == 3 and belady_hits([1, 2, 3, 1, 2, 3], 1) == 0
    assert jain([2.0, 2.0, 2.0]) == pytest.approx(1.0) and jain([1.0, 0.0, 0.0]) == pytest.approx(1 / 3)


def test_cuda_without_gpu_fails_clearly(capsys):
    from dask_kaas.device import gpu_count

    if gpu_count():
        pytest.skip("a GPU answers here")
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        common.resolve_device("cuda")
    assert common.main(["overhead", "--device", "cuda", "--smoke"]) == 1
    assert "no CUDA GPU" in capsys.readouterr().err


def test_check_functions_reject_wrong_outputs():
    from benchmarks.common import WrongResult
    from benchmarks.workloads import cgemm, jacobi, mlp, sgemm

    for module in (mlp, sgemm, jacobi, cgemm):
        w = module.setup(quick=True)
        want = w.expected[0]
        right = {"re": want[0], "im": want[1]} if module is cgemm else {w.output: want}
        w.check(0, right)
        wrong = {k: v.copy() for k, v in right.items()}
        next(iter(wrong.values())).reshape(-1)[0] += 1.0
        with pytest.raises(WrongResult):
            w.check(0, wrong)
        if module is mlp:  # accuracy below 0.9 is a wrong result even when every output matched a forward pass
            with pytest.raises(WrongResult):
                w.summary({i: np.roll(e, 1, axis=1) for i, e in enumerate(w.expected)})


# ------------------------------------------------------------------ the command line, end to end
def test_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "store_io", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "store_io on host (smoke)" in proc.stdout and "== summary" in proc.stdout
    written = json.loads((tmp_path / "store_io_smoke.json").read_text())
    assert written["parameters"]["mib"] == 4 and positive(written["read_ratio"])


@pytest.mark.slow
def test_calibrate_smoke_and_host_costs_read_it(tmp_path):
    """python -m benchmarks calibrate measures this machine in seconds; host_costs() takes every figure from
    it and says when it is missing or stale."""
    import json

    from dask_kaas.sim.costs import calibration, host_costs

    r = smoke("calibrate", tmp_path)
    f = r["figures"]
    assert positive(f["task_rate"]) and positive(f["roundtrip_s"]) and f["cores"] == os.cpu_count()
    assert r["seconds"] < 120
    (path,) = tmp_path.glob("calibrate-host-smoke.json")
    path.rename(tmp_path / "calibrate-host.json")
    costs = host_costs(tmp_path)
    cpu = f["client_cpu_s"] + f["scheduler_cpu_s"] + f["worker_cpu_s"]
    assert all(positive(f[k]) for k in ("client_cpu_s", "scheduler_cpu_s", "worker_cpu_s"))
    assert costs.path_seconds + costs.worker_seconds == pytest.approx(max(cpu, f["cores"] / f["task_rate"]))
    assert (
        costs.source["calibration"].startswith("calibrate-host.json, measured")
        and "STALE" not in costs.source["calibration"]
    )
    assert calibration(tmp_path, now=time.time() + 40 * 86400)[1].endswith(
        "40 days old; run python -m benchmarks calibrate)"
    )
    data = json.loads((tmp_path / "calibrate-host.json").read_text())
    data["machine"]["cpus"] = (os.cpu_count() or 1) + 6
    (tmp_path / "calibrate-host.json").write_text(json.dumps(data))
    assert "STALE: on" in host_costs(tmp_path).source["calibration"]
    empty = tmp_path / "none"
    empty.mkdir()
    assert host_costs(empty).source["calibration"].startswith("missing")


@pytest.mark.slow
def test_workloads_smoke(tmp_path):
    r = smoke("workloads", tmp_path)
    assert set(r["workloads"]) == {"mlp", "sgemm", "jacobi", "cgemm"}
    for row in r["workloads"].values():
        assert row["correct"] is True and row["requests_checked"] > 0
        for system in ("kaas", "dask-lru", "dask-dict"):
            assert positive(row["latency_s"][system]["median"]) and positive(row["throughput_rps"][system]["median"])
        assert positive(row["latency_ratio_kaas_over_dask-lru"]) and positive(
            row["throughput_ratio_kaas_over_dask-dict"]
        )
    assert r["workloads"]["mlp"]["accuracy"] >= 0.9


def test_simulate_smoke(tmp_path):
    r = smoke("simulate", tmp_path)
    rows = r["table"]["rows"]
    assert set(rows) >= {"static", "exclusive", "balance", "affinity", "affinity+replication"}
    for row in rows.values():
        assert row["completed"] == r["table"]["requests"] > 0 and 0 <= row["slo_attainment"] <= 1
    assert isinstance(r["targets"]["replication_bytes_3x_fewer_than_balance"], bool)

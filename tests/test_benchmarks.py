"""The benchmark harness (``benchmarks.common``): its config, argv parsing, results writer and printer,
and every suite once in its smallest (``smoke``) size; a wrong result fails a run. Nothing here asserts
a timing: the figures of a smoke run mean nothing, only their presence, shape and sanity do."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the benchmarks package lives at the repository root, not in the installed package
    sys.path.insert(0, ROOT)

from benchmarks import common
from benchmarks.common import Config, parse_args, print_result, run, write_result

RECORDED = {
    "workloads": "workloads-host",
    "overhead": "overhead-host",
    "contention": "contention-host",
    "scale": "scale-host",
    "store_io": "store_io",
    "placement": "placement",
    "gateway": "gateway-host",
    "simulate": "simulate",
    "engines": "engines-host",
    "batching": "batching-host",
    "gateway_attack": "gateway_attack-host",
    "calibrate": "calibrate-host",
    "validate-sim": "validate-sim-host",
}
# dicts whose keys are data (tenant names, K values, worker addresses), not fields
DATA_KEYS = {
    "machine",
    "source",
    "per_tenant_p50_ms",
    "tenant_popularity",
    "runtime_s",
    "device_launch_s",
    "raw_cupy_s",
    "requests_by_tenant_and_worker",
    "scheduler_model_after_affinity_run",
    "plugin_hooks",
    "scenario_calibration",
    "live",
    "sim",
    "costs",
}  # validate-sim: keyed by scenario


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def missing_fields(recorded, new, where="") -> list[str]:
    """Fields of a recorded result (benchmarks/results) that a new result lacks, recursively; lists are
    compared by their first elements."""
    if isinstance(recorded, dict) and isinstance(new, dict):
        out = [f"{where}.{k}" for k in recorded if k not in new]
        for k in recorded:
            if k in new and k not in DATA_KEYS:
                out += missing_fields(recorded[k], new[k], f"{where}.{k}")
        return out
    if isinstance(recorded, list) and isinstance(new, list) and recorded and new:
        return missing_fields(recorded[0], new[0], f"{where}[0]")
    return []


def smoke(suite: str, out) -> dict:
    """Run ``suite`` once at its smoke size on the host; check what every result must have; the payload."""
    payload = run(Config(suite, device="host", smoke=True, out=str(out), verbose=False))
    name = common.get_suite(suite).file_name("host", "smoke")
    assert payload["path"] == str(out / f"{name}.json")
    written = json.loads((out / f"{name}.json").read_text())
    assert next(iter(written)) == "machine" and "path" not in written
    assert written["suite"] == suite and written["device"] == "host" and written["smoke"] is True
    assert positive(written["wall_s"]) and written["machine"]["cpus"] >= 1
    with open(os.path.join(common.RESULTS, f"{RECORDED[suite]}.json")) as f:
        assert missing_fields(json.load(f), written) == []  # the recorded results' fields, still all there
    if written["plot"] is not None:
        assert (out / written["plot"]).stat().st_size > 0
    text = io.StringIO()
    print_result(payload, file=text)
    lines = text.getvalue().strip().split("\n")
    assert lines[0] == f"{suite} on host (smoke)" and len(lines) >= 3
    assert lines[-1].startswith(f"written: {payload['path']}")
    return written


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
def test_corrupted_weight_fails_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAAS_BENCH_CORRUPT", "mlp")
    assert common.main(["workloads", "--smoke", "--device", "host", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "WRONG RESULT" in out and "mlp" in out
    assert not (tmp_path / "workloads-host-smoke.json").exists()


# ------------------------------------------------------------------ every suite, smallest size
def test_store_io_smoke(tmp_path):
    r = smoke("store_io", tmp_path)
    assert r["bytes"] == 4 * 2**20 and positive(r["read_ratio"]) and positive(r["write_ratio"])
    assert {"numpy.fromfile", "BufferStore.get", "BufferStore.get_bytes"} == set(r["read"])
    assert len(r["layouts"]) == 7 and all(positive(row["disk_ratio"]) for row in r["layouts"])


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
def test_overhead_smoke(tmp_path):
    r = smoke("overhead", tmp_path)
    d, e = r["in_process"], r["end_to_end"]
    assert d["ks"] == [1, 4] and {"a_us", "b_us"} <= set(d["fit_runtime"])
    assert isinstance(d["budget"]["per_request_met"], bool) and isinstance(d["budget"]["per_launch_met"], bool)
    assert all(positive(e["timing_s"][s]["median"]) for s in ("kaas", "noop", "echo", "dask_numpy"))
    assert positive(e["ratio_kaas_over_noop"]) and positive(e["ratio_kaas_over_dask_numpy"])
    assert set(r["budgets"]) == {
        "per_request_under_100us",
        "per_launch_under_10us",
        "e2e_within_1.15x_noop",
        "e2e_within_1.2x_noop_plus_kernels",
    }
    assert e["gap_s"] > 0 and e["const_hits"] > 0  # an idle gap before each call; the const cached


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


@pytest.mark.slow
def test_contention_smoke(tmp_path):
    r = smoke("contention", tmp_path)
    table = r["headline"]["table"]
    assert set(table) == {"naive", "dask-lru", "dask-dict", "static", "kaas-balance", "kaas-affinity"}
    assert table["kaas-affinity"]["bytes_from_store"] < table["naive"]["bytes_from_store"]
    assert all(positive(v) for v in r["headline"]["ratios"].values())
    assert isinstance(r["headline"]["targets"]["affinity_1.5x_dask_lru_throughput"], bool)
    for runs in r["configs"][0]["runs"].values():
        assert 0 < runs[0]["fairness_jain"] <= 1 and positive(runs[0]["throughput_rps"])


@pytest.mark.slow
def test_scale_smoke(tmp_path):
    r = smoke("scale", tmp_path)
    assert sorted((c["mode"], c["workers"], c["tenants"]) for c in r["cells"]) == [
        ("graph", 2, 1),
        ("graph", 2, 2),
        ("separate", 2, 1),
        ("separate", 2, 2),
    ]
    assert sorted(c["mode"] for c in r["plain_dask"]) == ["graph", "separate"]
    for cell in r["cells"]:
        assert positive(cell["plugin_cpu_us_per_task"]["median"]) and positive(cell["plugin_over_dask"]["median"])
    assert all(positive(c["dask_cpu_us_per_task"]["median"]) for c in r["plain_dask"])
    assert isinstance(r["target"]["met"], bool)


@pytest.mark.slow
def test_placement_smoke(tmp_path):
    r = smoke("placement", tmp_path)
    requests = r["parameters"]["requests"]
    for policy in ("affinity", "balance", "static"):
        for run_ in r["runs"][policy]:
            assert run_["hits"] + run_["compulsory_misses"] + run_["capacity_misses"] == requests
            assert sum(run_["requests_per_worker"]) == requests and run_["bytes_from_store"] > 0
    assert positive(r["ratios"]["balance_over_affinity_bytes"])
    assert 0 < r["belady"]["global"]["hit_rate"] <= 1 and isinstance(r["targets"]["bytes_3x_fewer_than_balance"], bool)
    assert r["scheduler_overhead"]["kaas_tasks"] == requests and positive(
        r["scheduler_overhead"]["plugin_cpu_us_per_task"]
    )


def test_simulate_smoke(tmp_path):
    r = smoke("simulate", tmp_path)
    rows = r["table"]["rows"]
    assert set(rows) >= {"static", "exclusive", "balance", "affinity", "affinity+replication"}
    for row in rows.values():
        assert row["completed"] == r["table"]["requests"] > 0 and 0 <= row["slo_attainment"] <= 1
    assert isinstance(r["targets"]["replication_bytes_3x_fewer_than_balance"], bool)


@pytest.mark.slow
def test_validate_sim_smoke_and_resimulate(tmp_path):
    """validate-sim replays each scenario live on a deployed cluster and simulates it; every figure has its
    live runs, the simulated value and its error; --resimulate judges the model again on the same live runs."""
    r = smoke("validate-sim", tmp_path)
    assert {row["scenario"] for row in r["rows"]} == {"zipf-closed", "switch"}
    for row in r["rows"]:
        f = row["figures"]
        assert {"throughput_rps", "p50_ms", "bytes_loaded", "hit_rate"} <= set(f)
        for fig in f.values():
            assert fig["error"] == pytest.approx(
                fig["sim"] - fig["live_median"]
                if fig is f["hit_rate"]
                else (fig["sim"] - fig["live_median"]) / fig["live_median"]
            )
        runs = r["live"][row["scenario"]][row["config"]]
        assert all(run_["completed"] == 24 and positive(run_["calibration"]["task_rate"]) for run_ in runs)
        # each live run simulated with Dask's costs measured just before it
        costs = r["costs"][row["scenario"]][row["config"]]
        assert len(costs) == len(runs) and all(positive(c["scheduler_seconds"]) for c in costs)
    loads = r["in_place"]["worker_loads"]
    assert positive(loads["bandwidth"]) and set(loads["seconds"]) == {"2", "4", "6", "8"}
    again = run(
        Config(
            "validate-sim",
            device="host",
            smoke=True,
            out=str(tmp_path / "again"),
            verbose=False,
            options={"resimulate": str(tmp_path / "validate-sim-host-smoke.json")},
        )
    )
    assert again["live"] == r["live"] and again["live_source"]["file"].endswith("validate-sim-host-smoke.json")


@pytest.mark.slow
def test_gateway_smoke(tmp_path):
    pytest.importorskip("tritonclient.http")
    from benchmarks.gateway import check

    with pytest.raises(common.WrongResult):  # a wrong y fails the run
        check(np.zeros(4, np.float32), np.ones(4, np.float32), "test")
    r = smoke("gateway", tmp_path)
    assert [row["n"] for row in r["latency"]] == [1024] and r["parameters"]["ks"] == [1, 2]
    for row in r["latency"]:
        assert all(positive(row["p50_ms"][s]) for s in ("gateway", "grpc", "submit"))
        assert positive(row["ratio_gateway_over_submit"]) and positive(row["ratio_grpc_over_gateway"])
        assert math.isfinite(row["added_ms"])
        assert len(row["timing_s"]["gateway"]["runs"]) == r["parameters"]["repeat"]
    assert [row["k"] for row in r["throughput"]] == [1, 2]
    for row in r["throughput"]:
        assert all(positive(row["rps"][s]["median"]) for s in ("gateway", "submit"))
        assert positive(row["ratio_gateway_over_submit"]) and row["calls"] > 0


@pytest.mark.slow
def test_engines_smoke(tmp_path):
    from benchmarks.engines import ARMS, RAY_ARMS

    r = smoke("engines", tmp_path)  # with Ray where it is installed and KAAS_BENCH_NO_RAY unset
    arms = {a["arm"]: a for a in r["arms"]}
    assert set(arms) == (set(ARMS) if r["ray_arms"] else set(ARMS) - set(RAY_ARMS))
    assert r["ray_arms"] or "not installed" in r["ray"] or "skipped" in r["ray"]
    per_arm = r["parameters"]["rounds"] * (
        r["parameters"]["latency_calls"] + r["parameters"]["batches"] * sum(r["parameters"]["ks"])
    )
    for a in arms.values():  # every call of the timed rounds checked (the warm-up's too)
        assert positive(a["p50_ms"]) and a["results_checked"] > per_arm
        assert [t["k"] for t in a["throughput"]] == [2, 4] and all(
            positive(t["calls_per_s"]["median"]) for t in a["throughput"]
        )
    assert r["results_checked"] == sum(a["results_checked"] for a in arms.values())
    h = r["headline"]
    assert h["k"] == 4 and positive(h["batched_over_task_rps"]["ratio"])
    assert positive(h["batched_idle_p50_over_submit_idle_p50"]["ratio"])
    assert (h["batched_over_ray_task_rps"]["ratio"] is None) is (not r["ray_arms"])
    assert r["batcher"]["calls"] == arms["kaas_batched"]["results_checked"]


@pytest.mark.slow
def test_batching_smoke(tmp_path):
    pytest.importorskip("tritonclient.http")
    r = smoke("batching", tmp_path)
    (row,) = r["throughput"]
    assert row["k"] == 4 and set(row["arms"]) == {"one_task", "batched"}
    for arm in row["arms"].values():
        assert positive(arm["calls_per_s"]["median"]) and positive(arm["scheduler_bytes_per_call"]["median"])
        assert arm["calls_per_task"]["median"] >= 1
    assert row["arms"]["one_task"]["calls_per_task"]["median"] == 1  # one task per call: nothing batches it
    assert positive(r["idle"]["p50_ms"]["submit"]) and positive(r["idle"]["p50_ms"]["batched"])
    (big,) = r["large"]
    assert set(big["p50_ms"]) == {"gateway", "submit_direct", "submit"}
    # the plain submit carries the payload through the scheduler both ways; scatter + gather direct does not
    assert big["scheduler"]["submit"]["scheduler_bytes_per_call"] > 2 * big["bytes"]
    assert big["scheduler"]["submit_direct"]["scheduler_bytes_per_call"] < big["bytes"] / 4
    assert big["scheduler"]["gateway"]["scheduler_bytes_per_call"] < big["bytes"] / 4  # 512 KiB: scattered
    assert set(r["targets"]) == {"throughput_ratio", "cpu_ratio", "idle_ratio", "gateway_over_direct"}


@pytest.mark.slow
def test_gateway_attack_smoke(tmp_path):
    pytest.importorskip("tritonclient.http")
    r = smoke("gateway_attack", tmp_path)
    assert r["idle"]["calls"] == r["parameters"]["calls"] and r["attack"]["calls"] >= 1
    assert positive(r["idle"]["p99_ms"]) and positive(r["attack"]["p99_ms"])
    assert r["attack"]["bombs"] >= r["parameters"]["attackers"]
    assert set(r["attack"]["statuses"]) <= {"400", "413"}  # every bomb refused (else a WrongResult)
    assert r["rss_mib"]["peak"] >= r["rss_mib"]["before"] > 0
    assert set(r["targets"]) == {"p99_ratio", "rss_growth_mib"}


def test_validate_sim_fits_loads_and_judges_only_where_live_runs_agree():
    """The load model is latency + bytes / bandwidth, least squares over const sizes; a figure is judged
    only where the live runs agree within 10%, and a hit rate's error is in points."""
    from benchmarks.validate_sim import MiB, compare, fit_loads

    latency, bandwidth = fit_loads({m: 0.004 + m * MiB / 2e9 for m in (2, 4, 6, 8)})
    assert latency == pytest.approx(0.004) and bandwidth == pytest.approx(2e9)
    live = {
        "s": {
            "c": [
                {"throughput_rps": 100.0, "hit_rate": 0.5, "p50_ms": 10.0},
                {"throughput_rps": 105.0, "hit_rate": 0.9, "p50_ms": 10.0},
            ]
        }
    }
    sim = {"s": {"c": {"throughput_rps": 115.0, "hit_rate": 0.6, "p50_ms": 10.5}}}
    (row,) = compare(live, sim)
    f = row["figures"]
    assert f["throughput_rps"]["judged"] and not f["throughput_rps"]["within"]
    assert f["throughput_rps"]["error"] == pytest.approx(115 / 102.5 - 1)
    assert not f["hit_rate"]["judged"] and f["hit_rate"]["error"] == pytest.approx(0.6 - 0.7)
    assert f["p50_ms"]["judged"] and f["p50_ms"]["within"]


def test_validate_sim_refuses_bad_options_before_running(tmp_path, capsys):
    from benchmarks.validate_sim import SCENARIOS, SIZES, scenarios

    assert [s["name"] for s in scenarios(SIZES["smoke"] | {"scenarios": "all"}, lambda mib: 0.001)] == list(SCENARIOS)
    for argv, message in (
        (["--scenarios", "zipf-closed,nosuch"], "unknown scenario(s) nosuch"),
        (["--resimulate", str(tmp_path / "none.json")], "no such result file"),
        (["--repeat", "0"], "--repeat and --seeds"),
    ):
        with pytest.raises(SystemExit):
            parse_args(["validate-sim", "--smoke", *argv])
        assert message in capsys.readouterr().err

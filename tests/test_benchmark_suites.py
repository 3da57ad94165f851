"""Every live benchmark suite once at its smallest (``smoke``) size on the host, on clusters deployed as
users deploy them; a wrong result fails a run. Nothing here asserts a timing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from benchmark_smoke import positive, smoke

from benchmarks import common


# ------------------------------------------------------------------ every suite, smallest size
@pytest.mark.slow
def test_corrupted_weight_fails_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAAS_BENCH_CORRUPT", "mlp")
    assert common.main(["workloads", "--smoke", "--device", "host", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "WRONG RESULT" in out and "mlp" in out
    assert not (tmp_path / "workloads-host-smoke.json").exists()


def test_store_io_smoke(tmp_path):
    r = smoke("store_io", tmp_path)
    assert r["bytes"] == 4 * 2**20 and positive(r["read_ratio"]) and positive(r["write_ratio"])
    assert {"numpy.fromfile", "BufferStore.get", "BufferStore.get_bytes"} == set(r["read"])
    assert len(r["layouts"]) == 7 and all(positive(row["disk_ratio"]) for row in r["layouts"])


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

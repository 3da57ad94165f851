"""validate-sim: the simulator judged against live runs, at its smallest size, and its pure parts."""

from __future__ import annotations

import pytest
from benchmark_smoke import positive, smoke

from benchmarks.common import Config, parse_args, run


@pytest.mark.slow
def test_validate_sim_smoke_and_resimulate(tmp_path):
    """validate-sim replays each scenario live on a deployed cluster and simulates it; every figure has its
    live runs, the simulated value and its error; --resimulate judges the model again on the same live runs."""
    r = smoke("validate-sim", tmp_path)
    assert {row["scenario"] for row in r["rows"]} == {"zipf-closed", "switch"}
    assert {(row["scenario"], row["config"]) for row in r["rows"]} == {
        ("zipf-closed", "balance"),
        ("zipf-closed", "affinity+queue-aware"),
        ("switch", "balance>affinity"),
    }
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
    full = scenarios(SIZES["full"], lambda mib: 0.001)
    assert full[0]["configs"] == ["balance", "locality", "affinity", "affinity+queue-aware"]
    for argv, message in (
        (["--scenarios", "zipf-closed,nosuch"], "unknown scenario(s) nosuch"),
        (["--resimulate", str(tmp_path / "none.json")], "no such result file"),
        (["--repeat", "0"], "--repeat and --seeds"),
        (["--configs", "balance,nosuch"], "unknown config(s) nosuch"),
    ):
        with pytest.raises(SystemExit):
            parse_args(["validate-sim", "--smoke", *argv])
        assert message in capsys.readouterr().err

"""What the benchmark tests share: the recorded results every new result must still match in shape,
and one smoke run of a suite with the checks every result must pass."""

from __future__ import annotations

import io
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the benchmarks package lives at the repository root, not in the installed package
    sys.path.insert(0, ROOT)

from benchmarks import common
from benchmarks.common import Config, print_result, run

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

"""The policy configurations the figures compare, and a table of them over one workload."""

from __future__ import annotations

import time
from typing import Any

from .costs import CostModel
from .engine import Simulation
from .metrics import summarize
from .workloads import Workload

# name -> Simulation settings: the paper's baselines, Dask-like balance, KaaS's affinity and its additions
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "static": {"policy": "static"},
    "exclusive": {"policy": "exclusive"},
    "balance": {"policy": "balance"},
    "locality": {"policy": "locality"},
    "affinity": {"policy": "affinity"},
    "affinity+replication": {"policy": "affinity", "replication": True},
    "affinity+replication+queue-aware": {"policy": "affinity", "replication": True, "eviction": "queue-aware"},
}


def simulate(
    workload: Workload,
    configuration: str | dict,
    *,
    gpus: int,
    capacity: int,
    costs: CostModel,
    belady: bool = False,
    switches=(),
    **settings,
) -> dict:
    """Run ``workload`` under one configuration (a name of :data:`CONFIGURATIONS` or settings);
    its figures (:func:`summarize`) plus the wall seconds the simulation took. ``switches``:
    ``(seconds, configuration)`` pairs that change the policy (replication, eviction) mid-run."""
    config = CONFIGURATIONS[configuration] if isinstance(configuration, str) else configuration
    sim = Simulation(gpus, capacity=capacity, costs=costs, record=belady, **{**config, **settings})
    start = time.perf_counter()
    result = sim.run(workload, [(when, CONFIGURATIONS[c] if isinstance(c, str) else c) for when, c in switches])
    wall = time.perf_counter() - start
    return {**summarize(result, belady=belady), "wall_s": wall, "events": result.events}


def policy_table(
    workload: Workload,
    *,
    gpus: int,
    capacity: int,
    costs: CostModel,
    configurations=None,
    baseline: str = "static",
    **settings,
) -> dict:
    """Every configuration over the same workload, with throughput, goodput and p99 as ratios to ``baseline``."""
    names = list(configurations or CONFIGURATIONS)
    rows = {name: simulate(workload, name, gpus=gpus, capacity=capacity, costs=costs, **settings) for name in names}
    base = rows.get(baseline)
    if base:
        for row in rows.values():
            row["vs_" + baseline] = {
                "goodput": _ratio(row["goodput_rps"], base["goodput_rps"]),
                "throughput": _ratio(row["throughput_rps"], base["throughput_rps"]),
                "p99_lower": _ratio(base["p99_ms"], row["p99_ms"]),
            }
    return rows


def _ratio(a, b):
    return float(a / b) if a is not None and b else None

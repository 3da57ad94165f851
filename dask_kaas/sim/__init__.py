"""A discrete-event simulator of a KaaS GPU pool that runs the live scheduling code.

    >>> from dask_kaas.sim import Simulation, azure_like, gpu_costs, summarize
    >>> workload = azure_like(functions=50, duration=60.0, rate=5.0, seed=1)
    >>> costs = gpu_costs()
    >>> result = Simulation(8, capacity=40 * 2**30, costs=costs).run(workload.with_slo(5, costs.load_seconds))
    >>> summarize(result)["completed"] == len(workload)
    True

See ``docs/simulator.md`` for the model, its calibration and its validation against the live cluster.
"""

from .belady import belady_hits
from .costs import CostModel, gpu_costs, host_costs
from .engine import SimResult, Simulation
from .metrics import jain, summarize
from .policies import CONFIGURATIONS, policy_table, simulate
from .workloads import Function, Workload, azure_like, cyclic_trace, read_azure_trace, zipf_trace

__all__ = [
    "CONFIGURATIONS",
    "CostModel",
    "Function",
    "SimResult",
    "Simulation",
    "Workload",
    "azure_like",
    "belady_hits",
    "cyclic_trace",
    "gpu_costs",
    "host_costs",
    "jain",
    "policy_table",
    "read_azure_trace",
    "simulate",
    "summarize",
    "zipf_trace",
]

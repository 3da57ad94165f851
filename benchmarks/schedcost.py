"""The KaaS scheduler plugin's own CPU, measured inside the scheduler by wrapping its hooks.

``client.run_on_scheduler(install)`` wraps the plugin's ``update_graph``, ``transition``, fair
dispatch, stream report handler and ``get_comm_cost`` extension (Dask's own ``get_comm_cost`` timed
separately, to subtract it) with timers of wall time and of the scheduler thread's CPU time;
``reset``, ``read`` and ``remove`` do what they say; :func:`scheduler_cost` turns a reading into
per-hook and per-task figures, the wrappers' own cost (calibrated on an empty function) subtracted.
Used by the placement and scale suites.
"""

from __future__ import annotations

import time


def _timed(store: dict, name: str, fn):
    def wrapper(*args, **kwargs):
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            c1, t1 = time.thread_time_ns(), time.perf_counter_ns()
            row = store[name]
            row[0] += t1 - t0
            row[1] += 1
            row[2] += c1 - c0

    wrapper.__wrapped__ = fn
    return wrapper


def scheduler_cost(timers: dict, n_tasks: int) -> dict:
    """Per hook and per task: wall time (perf_counter) and the scheduler thread's CPU time (thread_time)."""
    cal_calls = max(1, timers["calibration"][1])
    cal = (timers["calibration"][0] / cal_calls, timers["calibration"][2] / cal_calls)  # per wrapper call

    def net(name, clock):  # clock 0: wall, 1: cpu
        row = timers[name]
        return max(0.0, row[2 * clock] - row[1] * cal[clock])

    hooks = {}
    for name in ("update_graph", "transition", "dispatch", "handle_report", "get_comm_cost"):
        wall, cpu = net(name, 0), net(name, 1)
        if name == "get_comm_cost":  # the extension only: Dask's own part and its wrapper subtracted
            calls = timers["base_comm_cost"][1]
            wall -= net("base_comm_cost", 0) + calls * cal[0]
            cpu -= net("base_comm_cost", 1) + calls * cal[1]
            name = "get_comm_cost_extension"
        hooks[name] = {
            "calls": timers[name if name in timers else "get_comm_cost"][1],
            "wall_us": max(0.0, wall) / 1e3,
            "cpu_us": max(0.0, cpu) / 1e3,
        }
    hooks["get_comm_cost_extension"]["dask_base_cpu_us"] = net("base_comm_cost", 1) / 1e3
    return {
        "method_in_scheduler": (
            "wrappers around the KaaS plugin's update_graph, transition, fair dispatch, handle_report and its "
            "get_comm_cost "
            "extension (Dask's own get_comm_cost timed separately and subtracted), accumulating perf_counter_ns "
            "(wall) and thread_time_ns (CPU of the scheduler's thread); wrapper cost calibrated on an empty "
            "function and subtracted per call; one affinity run of the trace. The scheduler shares its process "
            "(and GIL) with the benchmark's client in a LocalCluster, so wall time includes GIL waits; CPU time "
            "is the plugin's own cost"
        ),
        "wrapper_cost_ns": {"wall": cal[0], "cpu": cal[1]},
        "kaas_tasks": n_tasks,
        "hooks": hooks,
        "plugin_cpu_us_per_task": sum(h["cpu_us"] for h in hooks.values()) / n_tasks,
        "plugin_wall_us_per_task": sum(h["wall_us"] for h in hooks.values()) / n_tasks,
    }


def install(dask_scheduler) -> None:
    """Wrap the KaaS plugin's hooks (and Dask's own get_comm_cost, to subtract it) with timers."""
    plugin = dask_scheduler.plugins["kaas"]
    acc = {
        name: [0, 0, 0]
        for name in (
            "update_graph",
            "transition",
            "dispatch",
            "get_comm_cost",
            "base_comm_cost",
            "handle_report",
            "calibration",
        )
    }
    plugin._bench_timers = acc
    plugin.update_graph = _timed(acc, "update_graph", plugin.update_graph)
    plugin.transition = _timed(acc, "transition", plugin.transition)
    plugin._dispatch = _timed(acc, "dispatch", plugin._dispatch)
    plugin._base_comm_cost = _timed(acc, "base_comm_cost", plugin._base_comm_cost)
    dask_scheduler.get_comm_cost = _timed(acc, "get_comm_cost", dask_scheduler.get_comm_cost)
    dask_scheduler.stream_handlers["kaas-report"] = _timed(
        acc, "handle_report", dask_scheduler.stream_handlers["kaas-report"]
    )
    calibrate = _timed(acc, "calibration", lambda: None)
    for _ in range(20000):
        calibrate()


def reset(dask_scheduler) -> None:
    for name, row in dask_scheduler.plugins["kaas"]._bench_timers.items():
        if name != "calibration":
            row[:] = [0, 0, 0]


def read(dask_scheduler) -> dict:
    return {name: list(row) for name, row in dask_scheduler.plugins["kaas"]._bench_timers.items()}


def remove(dask_scheduler) -> None:
    plugin = dask_scheduler.plugins["kaas"]
    for attr in ("update_graph", "transition", "_dispatch"):
        vars(plugin).pop(attr, None)  # back to the class's methods
    plugin._base_comm_cost = plugin._base_comm_cost.__wrapped__
    dask_scheduler.get_comm_cost = dask_scheduler.get_comm_cost.__wrapped__
    dask_scheduler.stream_handlers["kaas-report"] = dask_scheduler.stream_handlers["kaas-report"].__wrapped__
    del plugin._bench_timers

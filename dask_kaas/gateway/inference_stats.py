"""Triton's per-model inference statistics, as the gateway counts them."""

from __future__ import annotations

import time
from typing import Any

from ..functions import Function
from .catalog import visible_name

__all__ = ["InferenceStats"]

_STAGES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


class InferenceStats:
    """Infer calls per (tenant, function, version): counts, nanoseconds and the last call's time, reported as
    Triton's statistics extension does (``GET /v2/models/{name}/stats``), each tenant its own calls only.

    Only ``success`` and ``fail`` are measured (a call from arrival to answer, once its function is found);
    Triton's other stages are reported as zero. The clock gives seconds since the epoch (``time.time``).
    """

    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self._calls: dict[tuple[str, str, int], list[int]] = {}  # [successes, their ns, failures, their ns, last ms]

    def record(self, tenant: str, fn: Function, ok: bool, seconds: float) -> None:
        entry = self._calls.setdefault((tenant, fn.qualified_name, fn.version), [0, 0, 0, 0, 0])
        k = 0 if ok else 2
        entry[k] += 1
        entry[k + 1] += int(seconds * 1e9)
        entry[4] = int(self.clock() * 1000)

    def report(self, tenant: str, found) -> dict[str, Any]:
        """``{"model_stats": [...]}`` for ``found``, ``(function, its versions)`` pairs, one entry a version;
        a function of another namespace is named ``namespace:name``, as in the repository index."""
        stats = []
        for fn, versions in found:
            name = visible_name(fn, tenant)
            for version in versions:
                ok, ok_ns, failed, failed_ns, last = self._calls.get(
                    (tenant, fn.qualified_name, version), (0, 0, 0, 0, 0)
                )
                stages = {stage: {"count": 0, "ns": 0} for stage in _STAGES}
                stages["success"], stages["fail"] = {"count": ok, "ns": ok_ns}, {"count": failed, "ns": failed_ns}
                stats.append(
                    {
                        "name": name,
                        "version": str(version),
                        "last_inference": last,
                        "inference_count": ok,
                        "execution_count": ok,
                        "inference_stats": stages,
                        "batch_stats": [],
                    }
                )
        return {"model_stats": stats}

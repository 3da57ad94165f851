"""What the scheduler predicts: a request's runtime (by shape), per-task overhead, and store load bandwidth."""
from __future__ import annotations

from .. import config

ALPHA = 0.3  # weight of the newest observation in the moving averages


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - ALPHA) * old + ALPHA * new


class RuntimeModel:
    """Moving averages of observed runtimes per request shape (same kernels and sizes)."""

    def __init__(self):
        self.runtime: dict[str, float] = {}
        self.overhead: float = 0.0         # dispatch + result handling per task, seconds
        self.bandwidth: float | None = None  # store -> device bytes per second, as observed

    def observe(self, shape: str, seconds: float) -> None:
        self.runtime[shape] = _ewma(self.runtime.get(shape), seconds)

    def observe_overhead(self, seconds: float) -> None:
        self.overhead = _ewma(self.overhead or None, max(0.0, seconds))

    def observe_load(self, nbytes: int, seconds: float) -> None:
        if nbytes > 0 and seconds > 0:
            self.bandwidth = _ewma(self.bandwidth, nbytes / seconds)

    def estimate(self, shape: str) -> float | None:
        """Predicted seconds of one request of this shape, or None before one has been seen."""
        known = self.runtime.get(shape)
        return None if known is None else known + self.overhead

    def estimate_or_mean(self, shape: str) -> float:
        known = self.estimate(shape)
        if known is not None:
            return known
        return (sum(self.runtime.values()) / len(self.runtime) + self.overhead) if self.runtime else 0.0

    def load_bandwidth(self) -> float:
        if self.bandwidth:
            return self.bandwidth
        return float(config.parse_size(config.get("scheduler.load-bandwidth") or "1GiB", name="load-bandwidth"))

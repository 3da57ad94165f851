"""What the scheduler predicts: a request's runtime (by shape), per-task overhead, and store load bandwidth."""

from __future__ import annotations

from collections import deque

import numpy as np

ALPHA = 0.3  # weight of the newest observation in the moving averages
CALIBRATION_WINDOW = 200
CALIBRATION_MIN = 5
CALIBRATION_PRIOR = 1.5  # until it has seen how its predictions fare, admission assumes they are optimistic
CALIBRATION_QUANTILE = 0.99
LOAD_DECAY = 0.95  # weight of a load observation per later one: the fit follows about the last 20 loads
SIZE_SPREAD = 0.1  # the squared coefficient of variation of load sizes from which their slope is used


class LoadModel:
    """Store -> device loads as a fixed latency plus bytes over a bandwidth, fitted by least squares to
    the recent loads (each weighted ``LOAD_DECAY`` per later one).

    A moving average of each load's bytes/seconds would be dragged down by small loads, which are mostly
    latency: a few 4 KiB consts read in a millisecond each made 64 MiB weights look a thousand times
    slower to load than they are, and placement far stickier than its policy says. The slope of seconds
    over bytes is the bandwidth that large loads see; where the recent loads had much the same size a slope
    would be noise, and bytes over seconds of them all is the answer.
    """

    def __init__(self, default_bandwidth: float) -> None:
        self.default_bandwidth = float(default_bandwidth)
        self._w = self._x = self._y = self._xx = self._xy = 0.0  # decayed sums: weight, bytes, seconds, ...
        self._bandwidth = self.default_bandwidth  # fitted at each load, read at every placement decision

    def observe(self, nbytes: float, seconds: float) -> None:
        if not (nbytes > 0 and seconds > 0):
            return
        d = LOAD_DECAY
        self._w = d * self._w + 1.0
        self._x = d * self._x + nbytes
        self._y = d * self._y + seconds
        self._xx = d * self._xx + nbytes * nbytes
        self._xy = d * self._xy + nbytes * seconds
        self._bandwidth = self._fit()

    def bandwidth(self) -> float:
        """Bytes per second a large load sees (``default_bandwidth`` before any load)."""
        return self._bandwidth

    def _fit(self) -> float:
        overall = self._x / self._y  # bytes over seconds of them all
        spread = self._w * self._xx - self._x * self._x
        if spread >= SIZE_SPREAD * self._x * self._x:  # sizes that differ enough for a slope to mean something
            slope = (self._w * self._xy - self._x * self._y) / spread
            if slope > 0:
                return max(1.0 / slope, overall)  # never below overall: that would be a negative latency
        return overall

    def latency(self) -> float:
        """Seconds a load takes whatever its size (the fit's intercept; 0 without a slope)."""
        if self._w == 0.0:
            return 0.0
        return max(0.0, (self._y - self._x / self.bandwidth()) / self._w)


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - ALPHA) * old + ALPHA * new


class RuntimeModel:
    """Moving averages of observed runtimes per request shape (same kernels and sizes).

    ``default_bandwidth``: store -> device bytes per second assumed until loads are observed.
    """

    def __init__(self, default_bandwidth: float = 2**30) -> None:
        self.default_bandwidth = float(default_bandwidth)
        self.runtime: dict[str, float] = {}
        self._runtime_sum = 0.0  # of runtime's values, kept as they change: the mean is O(1) with many shapes
        self.warm: dict[str, float] = {}  # the same, of requests that loaded nothing (their consts were cached)
        self.overhead: float = 0.0  # dispatch + result handling per task, seconds
        self.loads = LoadModel(default_bandwidth)  # store -> device: latency and bandwidth, as observed
        self.ratios: deque[float] = deque(maxlen=CALIBRATION_WINDOW)  # observed / predicted latency, admitted requests
        self.calibration = CALIBRATION_PRIOR

    def observe(self, shape: str, seconds: float) -> None:
        old = self.runtime.get(shape)
        new = self.runtime[shape] = _ewma(old, seconds)
        self._runtime_sum += new - (old or 0.0)

    def observe_warm(self, shape: str, seconds: float) -> None:
        self.warm[shape] = _ewma(self.warm.get(shape), seconds)

    def warm_estimate(self, shape: str) -> float:
        """Predicted seconds of one request of this shape whose consts are cached (the best guess without)."""
        known = self.warm.get(shape)
        return known + self.overhead if known is not None else self.estimate_or_mean(shape)

    def observe_overhead(self, seconds: float) -> None:
        self.overhead = _ewma(self.overhead or None, max(0.0, seconds))

    def observe_calibration(self, ratio: float) -> None:
        """Learn how far predictions fall short of what admitted requests really took.

        The calibration factor is a high quantile of recent observed/predicted
        ratios (clamped to 0.5-5x), so that admitted requests meet their deadline
        that often, not merely on average.
        """
        self.ratios.append(ratio)
        if len(self.ratios) >= CALIBRATION_MIN:
            self.calibration = min(5.0, max(0.5, float(np.quantile(self.ratios, CALIBRATION_QUANTILE))))

    def observe_load(self, nbytes: int, seconds: float) -> None:
        self.loads.observe(nbytes, seconds)

    def estimate(self, shape: str) -> float | None:
        """Predicted seconds of one request of this shape, or None before one has been seen."""
        known = self.runtime.get(shape)
        return None if known is None else known + self.overhead

    def estimate_or_mean(self, shape: str) -> float:
        known = self.estimate(shape)
        if known is not None:
            return known
        return (max(0.0, self._runtime_sum) / len(self.runtime) + self.overhead) if self.runtime else 0.0

    def load_bandwidth(self) -> float:
        return self.loads.bandwidth()

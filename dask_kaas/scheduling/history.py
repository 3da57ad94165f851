"""The recent history of the cluster's cache and tenants, kept by the scheduler plugin (pure).

Every ``interval`` seconds the plugin records the cumulative counters of each worker's cache and each
tenant; :meth:`History.series` turns consecutive samples into rates per interval. The window is bounded
(``seconds``), lives as long as the scheduler, and so a dashboard page opened after an incident shows
the minutes before it. An interval in which nothing was looked up has no hit rate (``nan``: a gap in a
plot, not 0%), and a worker or tenant that appears later has no figures before it appeared.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TypedDict

__all__ = ["TENANT_FIELDS", "WORKER_FIELDS", "History", "Series"]

WORKER_FIELDS = ("hits", "misses", "evictions", "bytes_loaded")
TENANT_FIELDS = ("completed", "rejected", "hits", "misses", "bytes_loaded", "evictions_caused")

Counts = dict[str, int]  # field -> cumulative count, of one worker or tenant
Sample = tuple[float, dict[str, Counts], dict[str, Counts]]  # (time, {worker: counts}, {tenant: counts})
Row = dict[str, list[float]]  # series name -> one value per interval, of one worker or tenant


class Series(TypedDict):
    """What :meth:`History.series` returns: one value per interval in every list."""

    time: list[float]
    hit_rate: list[float]
    loaded: list[float]
    workers: dict[str, Row]
    tenants: dict[str, Row]


class History:
    """A rolling window of cumulative samples: ``{worker: {field: n}}`` and ``{tenant: {field: n}}``."""

    def __init__(self, seconds: float = 900.0, interval: float = 1.0) -> None:
        if interval <= 0 or seconds < interval:
            raise ValueError(f"history needs 0 < interval <= seconds, got interval={interval}, seconds={seconds}")
        self.interval = float(interval)
        self.samples: deque[Sample] = deque(maxlen=int(seconds / interval) + 1)

    def sample(
        self, now: float, workers: Mapping[str, Mapping[str, int]], tenants: Mapping[str, Mapping[str, int]]
    ) -> None:
        """Record the cumulative counters at time ``now`` (seconds)."""
        if self.samples and now <= self.samples[-1][0]:
            return  # a clock that did not move: nothing new to say
        self.samples.append((now, {w: dict(c) for w, c in workers.items()}, {t: dict(c) for t, c in tenants.items()}))

    def series(self, since: float | None = None) -> Series:
        """Per interval after ``since`` (all kept ones by default), ending at each sample's time:

        - ``time``; ``hit_rate`` and ``loaded`` (bytes/s) of the whole cluster;
        - ``workers``: ``{worker: {"hit_rate", "evictions", "loaded"}}`` lists;
        - ``tenants``: ``{tenant: {"throughput", "hit_rate", "rejected"}}`` lists (per second where a rate).

        Every list has one value per ``time``; ``nan`` where there is nothing to say (no lookups, not
        there yet)."""
        samples = list(self.samples)
        workers: dict[str, Row] = {
            w: {k: [] for k in _WORKER_SERIES} for w in sorted({w for _, ws, _ in samples for w in ws})
        }
        tenants: dict[str, Row] = {
            t: {k: [] for k in _TENANT_SERIES} for t in sorted({t for _, _, ts in samples for t in ts})
        }
        out: Series = {"time": [], "hit_rate": [], "loaded": [], "workers": workers, "tenants": tenants}
        for (t0, w0, n0), (t1, w1, n1) in itertools.pairwise(samples):
            if since is not None and t1 <= since:
                continue
            dt = t1 - t0
            out["time"].append(t1)
            grown = _append(workers, w0, w1, WORKER_FIELDS, _worker_figures, dt)
            out["hit_rate"].append(_rate(sum(d["hits"] for d in grown), sum(d["misses"] for d in grown)))
            out["loaded"].append(sum(d["bytes_loaded"] for d in grown) / dt)
            _append(tenants, n0, n1, TENANT_FIELDS, _tenant_figures, dt)
        return out


_WORKER_SERIES = ("hit_rate", "evictions", "loaded")
_TENANT_SERIES = ("throughput", "hit_rate", "rejected")


def _worker_figures(d: Counts, dt: float) -> dict[str, float]:
    return {"hit_rate": _rate(d["hits"], d["misses"]), "evictions": d["evictions"], "loaded": d["bytes_loaded"] / dt}


def _tenant_figures(d: Counts, dt: float) -> dict[str, float]:
    return {
        "throughput": d["completed"] / dt,
        "hit_rate": _rate(d["hits"], d["misses"]),
        "rejected": d["rejected"] / dt,
    }


def _append(
    rows: dict[str, Row],
    before: dict[str, Counts],
    after: dict[str, Counts],
    fields: Iterable[str],
    figures: Callable[[Counts, float], dict[str, float]],
    dt: float,
) -> list[Counts]:
    """One interval's figures appended to each row (a gap where the worker or tenant is not there); what
    grew, for the rows that are."""
    grown: list[Counts] = []
    for name, row in rows.items():
        d = _delta(before.get(name), after.get(name), fields)
        if d is None:
            _gap(row)
            continue
        grown.append(d)
        for key, value in figures(d, dt).items():
            row[key].append(value)
    return grown


def _delta(before: Counts | None, after: Counts | None, fields: Iterable[str]) -> Counts | None:
    """What grew between two samples of one worker or tenant (None: not there at the end; one that was
    not there at the start counts from zero)."""
    if after is None:
        return None
    before = before or {}
    return {f: max(0, after.get(f, 0) - before.get(f, 0)) for f in fields}


def _gap(row: Row) -> None:
    """No figures for this interval (not there yet, or gone): a gap in each of the row's series."""
    for values in row.values():
        values.append(math.nan)


def _rate(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else math.nan

"""The scheduler plugin's rolling history of the cache and tenants (dask_kaas.scheduling.history): pure."""

import math

import pytest

from dask_kaas.scheduling.history import History

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given
from hypothesis import strategies as st


def worker(hits=0, misses=0, evictions=0, loaded=0):
    return {"hits": hits, "misses": misses, "evictions": evictions, "bytes_loaded": loaded}


def test_rates_per_interval_gaps_when_idle_and_late_arrivals():
    h = History(seconds=10, interval=1)
    h.sample(0, {"w1": worker()}, {})
    h.sample(1, {"w1": worker(3, 1, 0, 100)}, {"alice": {"completed": 4, "hits": 3, "misses": 1}})
    h.sample(2, {"w1": worker(3, 1, 0, 100)}, {"alice": {"completed": 4, "hits": 3, "misses": 1}})  # idle
    h.sample(
        3,
        {"w1": worker(3, 3, 2, 300), "w2": worker(1, 0)},
        {"alice": {"completed": 6, "hits": 3, "misses": 3}, "bob": {"completed": 1, "hits": 1}},
    )
    s = h.series()
    assert s["time"] == [1, 2, 3]
    assert s["hit_rate"][0] == 0.75 and math.isnan(s["hit_rate"][1]) and s["hit_rate"][2] == 1 / 3
    assert s["loaded"] == [100, 0, 200]
    assert s["workers"]["w1"]["evictions"] == [0, 0, 2]
    assert all(math.isnan(v) for v in s["workers"]["w2"]["hit_rate"][:2])  # not there yet: gaps
    assert s["workers"]["w2"]["hit_rate"][2] == 1.0  # counted from zero at its first sample
    assert s["tenants"]["alice"]["throughput"] == [4, 0, 2]
    assert math.isnan(s["tenants"]["bob"]["throughput"][0]) and s["tenants"]["bob"]["throughput"][2] == 1
    assert h.series(since=2)["time"] == [3]


def test_the_window_is_bounded_and_the_clock_must_move():
    h = History(seconds=5, interval=1)
    for t in range(100):
        h.sample(t, {"w": worker(t)}, {})
    h.sample(99, {"w": worker(1000)}, {})  # the same instant again: ignored
    assert len(h.samples) == 6 and h.samples[-1][0] == 99
    with pytest.raises(ValueError):
        History(seconds=1, interval=2)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=2, max_size=30))
def test_the_intervals_add_up_to_the_counters(steps):
    h = History(seconds=1000, interval=1)
    hits = misses = 0
    for t, (dh, dm) in enumerate(steps):
        hits, misses = hits + dh, misses + dm
        h.sample(t, {"w": worker(hits, misses)}, {})
    s = h.series()
    assert len(s["time"]) == len(steps) - 1 == len(s["hit_rate"]) == len(s["workers"]["w"]["hit_rate"])
    for (dh, dm), rate in zip(steps[1:], s["hit_rate"]):
        assert (math.isnan(rate) and dh + dm == 0) or rate == dh / (dh + dm)

"""The scheduler's model of store -> device loads: a latency plus bytes over a bandwidth, fitted to the
recent loads, so that small, latency-bound loads do not make large ones look slow."""

import math

import pytest

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
from hypothesis import given
from hypothesis import strategies as st

from dask_kaas import config
from dask_kaas.scheduling import SchedulingCore, Task
from dask_kaas.scheduling.model import LOAD_DECAY, LoadModel, RuntimeModel

KiB, MiB, GiB = 2**10, 2**20, 2**30


def test_before_any_load_the_default_holds():
    model = LoadModel(2 * GiB)
    assert model.bandwidth() == 2 * GiB and model.latency() == 0.0
    model.observe(0, 1.0)  # nothing loaded, or no time: not a load
    model.observe(10 * MiB, 0.0)
    assert model.bandwidth() == 2 * GiB


def test_tiny_loads_do_not_drag_the_bandwidth_of_large_ones_down():
    """The flaw of a moving average of per-load rates: 4 KiB consts read in a millisecond each made
    64 MiB weights look a thousand times slower to load than they are."""
    bandwidth, latency = 1 * GiB, 1e-3
    model = RuntimeModel(default_bandwidth=2 * GiB)
    for i in range(60):
        nbytes = 64 * MiB if i % 10 == 0 else 4 * KiB
        model.observe_load(nbytes, latency + nbytes / bandwidth)
    assert model.load_bandwidth() == pytest.approx(bandwidth, rel=1e-6)
    assert model.loads.latency() == pytest.approx(latency, rel=1e-6)
    rates = [n / (latency + n / bandwidth) for n in (64 * MiB, 4 * KiB)]
    assert min(rates) < bandwidth / 200  # what the old average was made of


@given(
    st.floats(1e6, 1e11),  # bytes per second
    st.floats(0.0, 0.05),  # latency
    st.lists(st.integers(1, 2**30), min_size=2, max_size=60),
)
def test_noise_free_loads_give_back_their_bandwidth_or_a_lower_bound(bandwidth, latency, sizes):
    model = LoadModel(1.0)
    for n in sizes:
        model.observe(n, latency + n / bandwidth)
    got = model.bandwidth()
    weights = [LOAD_DECAY ** (len(sizes) - 1 - i) for i in range(len(sizes))]  # the newest counts most
    overall = sum(w * n for w, n in zip(weights, sizes)) / sum(
        w * (latency + n / bandwidth) for w, n in zip(weights, sizes)
    )
    assert math.isfinite(got) and got > 0
    assert got <= bandwidth * (1 + 1e-6)  # never faster than the loads were
    assert got >= overall * (1 - 1e-9)  # never slower than all of them together
    mean = sum(sizes) / len(sizes)
    if min(sizes) < mean / 3 < mean * 3 < max(sizes) * 1.0:  # sizes far apart: the slope is exact
        assert got == pytest.approx(bandwidth, rel=1e-3)


def test_loads_of_one_size_give_bytes_over_seconds():
    model = LoadModel(1.0)
    times = (0.010, 0.012, 0.008, 0.011)
    for seconds in times:  # noise in time, none in size: no slope to fit
        model.observe(8 * MiB, seconds)
    weights = [LOAD_DECAY**3, LOAD_DECAY**2, LOAD_DECAY, 1.0]
    assert model.bandwidth() == pytest.approx(sum(weights) * 8 * MiB / sum(w * t for w, t in zip(weights, times)))


def test_the_fit_follows_a_store_that_got_slower():
    model = LoadModel(1.0)
    for i in range(40):
        n = (i % 4 + 1) * 16 * MiB
        model.observe(n, n / (2 * GiB))
    assert model.bandwidth() == pytest.approx(2 * GiB, rel=1e-6)
    for i in range(200):
        n = (i % 4 + 1) * 16 * MiB
        model.observe(n, n / (200 * MiB))
    assert model.bandwidth() == pytest.approx(200 * MiB, rel=0.01)


def test_placement_sees_the_fitted_bandwidth():
    """The core prices a missing const by the fitted bandwidth: after tiny and large loads, moving a
    request to a worker that lacks its 64 MiB const costs what loading 64 MiB really takes."""
    core = SchedulingCore(**{**config.scheduler_settings(), "policy": "affinity", "load_bandwidth": 2 * GiB})
    for i in range(30):
        nbytes = 64 * MiB if i % 5 == 0 else 4 * KiB
        core.model.observe_load(nbytes, 1e-3 + nbytes / GiB)
    core.add_worker("a")
    core.add_worker("b")
    task = Task("k", "t", "shape", ((("t", "w64"), 64 * MiB),), submitted=0.0)
    assert core.comm_cost("k", "a") == 0.0  # not submitted yet
    decision = core.submit(task)
    assert decision.action == "run" and core.model.load_bandwidth() == pytest.approx(GiB, rel=1e-6)
    other = "b" if decision.worker == "a" else "a"  # the worker it was not placed on lacks the const
    # stickiness x the const's load time at the bandwidth large loads see (the old average: ~100x that)
    assert core.comm_cost("k", other) == pytest.approx(core.stickiness * 64 * MiB / GiB, rel=1e-6)
    assert core.comm_cost("k", decision.worker) == 0.0  # its load is already counted there

"""The scheduling core with batched tasks (``Task.count`` calls each), on a virtual clock (no Dask).

Fair share, admission and the tenants' counts are per call: a batch of 20 calls is charged 20 calls'
worth of service (so batching buys no share), admitted call by call against its deadline (its later
calls may be rejected while its first ones run), and counted call by call when it completes or fails.
A discrete-event harness (``coresim``, extended to batches) checks the shares without any timing.
"""

from collections import Counter

import pytest

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
from coresim import Sim
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_kaas import config
from dask_kaas.scheduling import Decision, SchedulingCore, Task
from dask_kaas.scheduling.core import CANDIDATE_TENANTS
from dask_kaas.scheduling.model import CALIBRATION_PRIOR

PER_CALL = 0.01  # seconds of one call, the same for every tenant


def make_core(**overrides) -> SchedulingCore:
    """A core with the settings of ``kaas.yaml``, ``overrides`` over them."""
    return SchedulingCore(**{"policy": "affinity", **config.scheduler_settings(), **overrides})


class BatchSim(Sim):
    """``coresim.Sim`` with batched tasks: a task of ``count`` calls occupies its worker ``count`` x
    ``per_call`` seconds and reports as a batch does (seconds per call, ``count``, ``failed``)."""

    def __init__(self, core, workers, **kwargs):
        super().__init__(core, workers, **kwargs)
        self.calls: dict = {}  # key -> calls admitted (what runs)
        self.tenant: dict = {}
        self.order: list = []  # keys in the order they went to a worker

    def submit(self, key, tenant, per_call, count=1, consts=(), deadline=None, shape="s"):
        self.submitted[key] = self.now
        task = Task(key, tenant, shape, tuple(consts), submitted=self.now, deadline=deadline, count=count)
        decision = self.core.submit(task)
        if decision.action == "reject":
            self.rejected[key] = decision
        else:
            self.calls[key], self.tenant[key] = task.count, tenant
            self._work[key] = per_call * task.count
            if decision.action == "run":
                self._start(key, decision.worker)
        self._dispatch()
        return decision

    def _start(self, key, address):
        self.order.append(key)
        super()._start(key, address)

    def report_fields(self, key, seconds):
        count = self.calls[key]
        return {"seconds": seconds / count, "count": count, "failed": 0}


# ------------------------------------------------------------------ (a) fairness under batching
def call_shares(
    counts: dict, weights: dict | None, *, workers=2, depth=2, seconds=8.0, skip=1.0, rate_ratio=10
) -> tuple[dict, BatchSim]:
    """Three tenants, all backlogged throughout: A submits tasks of ``counts["A"]`` calls ``rate_ratio``
    times as often as B and C submit theirs; each of B and C alone submits more calls than the whole
    cluster serves. Returns each tenant's share of the calls completed between ``skip`` and ``seconds``."""
    core = make_core(policy="affinity", depth=depth, weights=weights)
    sim = BatchSim(core, workers)
    for tenant in "ABC":  # the shape's runtime, learned from a report
        sim.submit(("warm", tenant), tenant, PER_CALL)
    sim.run()
    assert core.model.estimate("s") == pytest.approx(PER_CALL)
    t0 = sim.now
    capacity = workers / PER_CALL  # calls per second the cluster serves
    gap = 1.0 / capacity  # B and C: one task per gap, each of them alone as many calls as the cluster serves
    n = int(seconds / gap)
    for i in range(n):
        for tenant in "BC":
            sim.at(t0 + i * gap, sim.submit, (tenant, i), tenant, PER_CALL, counts.get(tenant, 1))
        for j in range(rate_ratio):
            sim.at(t0 + (i + j / rate_ratio) * gap, sim.submit, ("A", i, j), "A", PER_CALL, counts.get("A", 1))
    start, end = t0 + skip, t0 + seconds
    sim.run(until=end)
    for tenant in "ABC":  # still backlogged at the end of the window
        assert core.queue.held(tenant) > 0, f"{tenant} ran out of work: the window is not all backlogged"
    done = Counter()
    for key, when in sim.finished.items():
        if start < when <= end and key[0] != "warm":
            done[sim.tenant[key]] += sim.calls[key]
    total = sum(done.values())
    assert total >= 0.9 * capacity * (seconds - skip), "the workers idled while everyone was backlogged"
    return {t: done[t] / total for t in "ABC"}, sim


def expected_shares(weights):
    w = {t: float((weights or {}).get(t, 1.0)) for t in "ABC"}
    return {t: w[t] / sum(w.values()) for t in "ABC"}


def test_batches_buy_no_share_of_the_calls():
    """A submits batches of 10 calls at 10x the rate of B and C (100x their calls): each still gets a
    third of the calls completed while all three are backlogged."""
    shares, sim = call_shares({"A": 10}, None)
    assert all(abs(shares[t] - 1 / 3) <= 0.03 for t in "ABC"), shares
    stats = sim.core.tenants  # the tenants' counts are per call too
    for tenant in "ABC":
        mine = [k for k in sim.calls if sim.tenant[k] == tenant]
        assert stats[tenant].submitted == sum(sim.calls[k] for k in mine)
        assert stats[tenant].tasks == len(mine)  # ... and the tasks they came in
        assert stats[tenant].completed == sum(sim.calls[k] for k in mine if k in sim.finished)
        assert stats[tenant].latency_count == stats[tenant].completed


def test_weighted_shares_are_shares_of_calls():
    shares, _ = call_shares({"A": 10}, {"A": 2.0})
    assert abs(shares["A"] - 0.5) <= 0.03 and all(abs(shares[t] - 0.25) <= 0.03 for t in "BC"), shares


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    count_a=st.integers(1, 20),
    count_b=st.integers(1, 4),
    weight_a=st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0]),
    weight_c=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_shares_of_calls_follow_weights_whatever_the_batch_sizes(count_a, count_b, weight_a, weight_c):
    weights = {"A": weight_a, "C": weight_c}
    shares, _ = call_shares({"A": count_a, "B": count_b}, weights, seconds=5.0)
    want = expected_shares(weights)
    assert all(abs(shares[t] - want[t]) <= 0.03 for t in "ABC"), (shares, want)


# ------------------------------------------------------------------ (b) a batch is charged per call
def test_a_batch_is_charged_per_call_and_cannot_jump_the_queue():
    """B is backlogged; A's batch of 20 calls joins at B's service (no credit, no penalty) and is
    charged 20 calls: B's next 20 tasks or so go before A's next batch."""
    clock = [0.0]
    core = make_core(policy="balance", depth=1, clock=lambda: clock[0])
    core.add_worker("w")
    core.report("w", {"ok": True, "shape": "s", "seconds": PER_CALL})
    r = core.model.estimate("s")
    assert r == pytest.approx(PER_CALL)
    running = []
    for i in range(60):
        d = core.submit(Task(("B", i), "B", "s", submitted=clock[0]))
        if d.action == "run":
            running.append(("B", i))
    assert running == [("B", 0)] and core.queue.held("B") == 59
    for i in range(3):
        d = core.submit(Task(("A", i), "A", "s", submitted=clock[0], count=20))
        assert d.action == "hold" and d.admitted is None
        assert core.tasks[("A", i)].estimate == pytest.approx(20 * r)
    assert core.queue.service["A"] == core.queue.service["B"]  # joined at the floor: no banked credit
    order, charged = [], {}
    while running:
        key = running.pop()
        clock[0] += PER_CALL * core.tasks[key].count
        core.finished(key, True)
        before = dict(core.queue.service)
        for key, _worker in core.dispatch():
            tenant = core.tasks[key].tenant
            if core.queue.held(tenant):  # (the last of a backlog catches up to the floor as well: no credit)
                charged.setdefault(tenant, set()).add(round(core.queue.service[tenant] - before[tenant], 9))
            order.append(key)
            running.append(key)
    assert charged == {"A": {round(20 * r, 9)}, "B": {round(r, 9)}}
    first, second, third = (order.index(("A", i)) for i in range(3))
    assert first <= 1  # its turn came at once (it was no less served than B)
    between = [k[0] for k in order[first + 1 : second]]
    assert set(between) == {"B"} and 19 <= len(between) <= 21, between
    assert set(k[0] for k in order[second + 1 : third]) == {"B"} and 19 <= third - second - 1 <= 21


# ------------------------------------------------------------------ (c) admission per call
def observed_core(margin: float, clock: list) -> SchedulingCore:
    """One worker, depth 1, whose service interval (PER_CALL) and the shape's runtime are observed."""
    core = make_core(policy="balance", depth=1, margin=margin, clock=lambda: clock[0])
    core.add_worker("w")
    for i in range(3):
        d = core.submit(Task(("warm", i), "warm", "s", submitted=clock[0]))
        assert d.action == "run"
        clock[0] += PER_CALL
        core.report("w", {"ok": True, "shape": "s", "seconds": PER_CALL})
        core.finished(("warm", i), True, duration=PER_CALL)
    assert core.model.estimate("s") == pytest.approx(PER_CALL)
    assert core.cluster.views["w"].service_interval == pytest.approx(PER_CALL)
    assert core.model.calibration == CALIBRATION_PRIOR  # no admitted request has finished yet
    return core


def calls_that_make_it(
    wait: float, runtime: float, count: int, deadline: float, margin: float, calibration: float
) -> int:
    """How many of a batch's first calls finish within the deadline (with the margin): the first at
    ``wait + runtime``, the ``i``-th ``i - 1`` runtimes after it, each prediction scaled by calibration."""
    n = 0
    for i in range(1, count + 1):
        if (wait + i * runtime) * calibration > deadline * margin:
            break
        n = i
    return n


def busy_core(margin: float, clock: list) -> tuple[SchedulingCore, float]:
    """A batch submitted now waits one task: one running, and B's two held (A is as served as B)."""
    core = observed_core(margin, clock)
    for i in range(3):
        core.submit(Task(("B", i), "B", "s", submitted=clock[0]))
    assert core.cluster.queued == 1 and core.queue.held("B") == 2
    return core, 1 * PER_CALL  # wait: the task on the worker, at the observed rate (1 / PER_CALL)


@pytest.mark.parametrize("margin", [0.85, 0.5])
@pytest.mark.parametrize("busy", [False, True])
def test_a_batch_is_admitted_in_part_when_its_later_calls_would_miss_the_deadline(busy, margin):
    clock = [0.0]
    core, wait = busy_core(margin, clock) if busy else (observed_core(margin, clock), 0.0)
    r, cal, count = PER_CALL, CALIBRATION_PRIOR, 12
    deadline = (wait + 4.5 * r) * cal / margin  # room for 4 calls, not 5
    n = calls_that_make_it(wait, r, count, deadline, margin, cal)
    assert n == 4
    d = core.submit(Task("batch", "A", "s", submitted=clock[0], deadline=deadline, count=count))
    assert d.action == ("hold" if busy else "run") and d.admitted == n
    assert d.predicted == pytest.approx((wait + (n + 1) * r) * cal)  # when its first rejected call would finish
    assert d.predicted > deadline * margin
    assert f"call {n + 1} of {count} of its batch" in d.message
    task = core.tasks["batch"]
    assert task.count == n and task.estimate == pytest.approx(n * r)
    assert task.predicted == pytest.approx(wait + n * r)  # its last admitted call
    stats = core.tenants["A"]
    assert (stats.submitted, stats.rejected) == (count, count - n)
    while core.tasks["batch"].state != "assigned":  # busy: it waits its turn, then runs its admitted calls only
        for key in [k for k, t in core.tasks.items() if t.state == "assigned"]:
            clock[0] += r * core.tasks[key].count
            core.finished(key, True)
        core.dispatch()
    clock[0] += n * r
    core.finished("batch", True)
    assert (stats.completed, stats.failed, stats.latency_count) == (n, 0, n)


@pytest.mark.parametrize("busy", [False, True])
def test_a_batch_none_of_whose_calls_fits_is_rejected_whole(busy):
    clock = [0.0]
    margin = 0.85
    core, wait = busy_core(margin, clock) if busy else (observed_core(margin, clock), 0.0)
    deadline = (wait + 0.5 * PER_CALL) * CALIBRATION_PRIOR / margin
    assert calls_that_make_it(wait, PER_CALL, 8, deadline, margin, CALIBRATION_PRIOR) == 0
    held = len(core.queue)
    d = core.submit(Task("batch", "A", "s", submitted=clock[0], deadline=deadline, count=8))
    assert d.action == "reject" and d.admitted is None and d.worker is None
    assert d.predicted == pytest.approx((wait + PER_CALL) * CALIBRATION_PRIOR)
    assert "call 1 of 8 of its batch" in d.message
    assert "batch" not in core.tasks and len(core.queue) == held
    stats = core.tenants["A"]
    assert (stats.submitted, stats.rejected, stats.completed) == (8, 8, 0)


def test_a_batch_all_of_whose_calls_fit_is_admitted_whole():
    clock = [0.0]
    core = observed_core(0.85, clock)
    deadline = 20.5 * PER_CALL * CALIBRATION_PRIOR / 0.85
    d = core.submit(Task("batch", "A", "s", submitted=clock[0], deadline=deadline, count=20))
    assert d == Decision("run", "w")
    assert core.tasks["batch"].count == 20 and core.tenants["A"].rejected == 0
    assert core.tasks["batch"].predicted == pytest.approx(20 * PER_CALL)


@settings(max_examples=60, deadline=None)
@given(count=st.integers(1, 40), room=st.integers(0, 45), busy=st.booleans(), margin=st.sampled_from([0.5, 0.85, 1.0]))
def test_admitted_calls_match_the_model(count, room, busy, margin):
    """Whatever the batch size and deadline: exactly the calls the model says finish in time run,
    the rest count as rejected, and the submitted count is every call."""
    clock = [0.0]
    core, wait = busy_core(margin, clock) if busy else (observed_core(margin, clock), 0.0)
    deadline = (wait + (room + 0.5) * PER_CALL) * CALIBRATION_PRIOR / margin
    n = calls_that_make_it(wait, PER_CALL, count, deadline, margin, CALIBRATION_PRIOR)
    assert n == min(room, count)
    d = core.submit(Task("batch", "A", "s", submitted=clock[0], deadline=deadline, count=count))
    stats = core.tenants["A"]
    assert stats.submitted == count and stats.rejected == count - n
    if n == 0:
        assert d.action == "reject" and "batch" not in core.tasks
    else:
        assert d.action in ("run", "hold") and core.tasks["batch"].count == n
        assert d.admitted == (None if n == count else n)


# ------------------------------------------------------------------ (d) completions and failures per call
def test_finished_counts_completed_and_failed_calls():
    clock = [0.0]
    core = make_core(policy="balance", depth=8, clock=lambda: clock[0])
    core.add_worker("w")
    for key, count in (("ok", 10), ("some", 10), ("all", 6), ("lost", 7), ("over", 3), ("neg", 5)):
        assert core.submit(Task(key, "t", "s", count=count)).action == "run"
    clock[0] = 0.5
    core.finished("ok", True)
    core.finished("some", True, failed=3)
    stats = core.tenants["t"]
    assert (stats.submitted, stats.completed, stats.failed) == (41, 17, 3)
    core.finished("all", True, failed=6)  # a completed batch every call of which failed
    core.finished("lost", False)  # the task itself failed: every call of it
    assert (stats.completed, stats.failed) == (17, 16)
    core.finished("over", True, failed=99)  # no more failures than calls
    core.finished("neg", True, failed=-2)
    assert (stats.completed, stats.failed) == (22, 19)
    assert stats.latency_count == stats.completed == 22 and list(stats.latencies) == [0.5] * 22
    core.finished("ok", True)  # twice: counted once
    assert (stats.completed, stats.failed) == (22, 19)
    assert stats.snapshot()["completed"] == 22 and stats.snapshot()["failed"] == 19


def test_a_batch_report_teaches_seconds_per_call_unless_every_call_failed():
    core = make_core(policy="balance", depth=1)
    core.add_worker("w")
    core.report("w", {"ok": True, "shape": "s", "seconds": 0.002, "count": 50, "failed": 50, "tenant": "t"})
    assert core.model.estimate("s") is None  # nothing ran to completion: nothing learned
    core.report("w", {"ok": True, "shape": "s", "seconds": 0.002, "count": 50, "failed": 3, "tenant": "t"})
    assert core.model.estimate("s") == pytest.approx(0.002)
    assert [(e["calls"], e["failed"], e["ok"]) for e in core.recent] == [(50, 50, False), (50, 3, False)]
    core.report("w", {"ok": True, "shape": "s", "seconds": 0.002, "tenant": "t"})  # a single call
    assert (core.recent[-1]["calls"], core.recent[-1]["failed"], core.recent[-1]["ok"]) == (1, 0, True)
    d = core.submit(Task("b", "t", "s", count=50))
    assert core.tasks["b"].estimate == pytest.approx(50 * 0.002) and d.action == "run"


# ------------------------------------------------------------------ (e) one worker choice per dispatched task
TENANTS = [f"t{i}" for i in range(8)]


def backlogged_core(policy: str, clock: list, *, tenants=TENANTS, workers=("w0", "w1"), per_tenant=20):
    """``tenants`` all backlogged (``per_tenant`` tasks of batches of 4 each), each with its own const,
    cached on every worker; every slot taken."""
    core = make_core(policy=policy, depth=1, clock=lambda: clock[0])
    consts = {t: (((t, "w"), 1 << 20),) for t in tenants}
    for w in workers:
        core.add_worker(w)
        core.report(
            w,
            {
                "consts": [[t, "w", "u", 1, 1 << 20] for t in tenants],
                "capacity": 1 << 30,
                "used": len(tenants) << 20,
                "ok": True,
                "shape": "s",
                "seconds": PER_CALL,
            },
        )
    running = []
    for i in range(per_tenant):
        for t in tenants:
            d = core.submit(Task((t, i), t, "s", consts[t] if policy == "affinity" else (), count=4))
            if d.action == "run":
                running.append((t, i))
    assert len(running) == len(workers) and core.cluster.least_loaded() is None
    return core, running


@pytest.mark.parametrize("policy", ["affinity", "balance"])
def test_each_pick_makes_one_worker_choice_with_eight_backlogged_tenants(policy):
    """When the least-served tenant's next task loads nothing on the worker it would go to (or under
    balance), no other candidate can beat it: one worker choice, not one per candidate tenant."""
    clock = [0.0]
    core, running = backlogged_core(policy, clock)
    assert len(core.queue.least_served(CANDIDATE_TENANTS)) == 8
    served = Counter()
    for _ in range(60):
        key = running.pop(0)
        clock[0] += 4 * PER_CALL
        core.finished(key, True)
        before = core.decisions
        picked = core._pick()  # the free slot filled: what dispatch does for each task it dispatches
        assert picked is not None and core.decisions - before == 1
        core.placed(*picked)
        running.append(picked[0])
        served[picked[0][0]] += 1
    assert max(served.values()) - min(served.values()) <= 1  # round robin all the same: fair


def test_locality_still_wins_over_a_cold_least_served_tenant():
    """The least-served tenant would load its const; another within the slack loads nothing: the
    warm one goes (the early stop does not cut the search for locality short)."""
    clock = [0.0]
    core = make_core(policy="affinity", depth=1, clock=lambda: clock[0])
    core.add_worker("w")
    core.report(
        "w",
        {
            "consts": [["warm", "w", "u", 1, 1 << 20]],
            "capacity": 1 << 30,
            "used": 1 << 20,
            "ok": True,
            "shape": "s",
            "seconds": PER_CALL,
        },
    )
    core.submit(Task("first", "x", "s"))
    core.submit(Task("cold", "cold", "s", ((("cold", "w"), 1 << 20),)))
    core.submit(Task("hot", "warm", "s", ((("warm", "w"), 1 << 20),)))
    assert core.queue.least_served(2)[0] == "cold"
    core.finished("first", True)
    assert core.dispatch() == [("hot", "w")]


@pytest.mark.parametrize("policy", ["affinity", "balance"])
def test_dispatch_makes_one_worker_choice_per_dispatched_task(policy):
    clock = [0.0]
    core, running = backlogged_core(policy, clock)
    dispatched, before = 0, core.decisions
    for _ in range(60):
        key = running.pop(0)
        clock[0] += 4 * PER_CALL
        core.finished(key, True)
        for key, worker in core.dispatch():
            core.placed(key, worker)
            running.append(key)
            dispatched += 1
    assert dispatched == 60
    assert (core.decisions - before) / dispatched == 1.0


def _balance_core(clock: list, runtime: float) -> SchedulingCore:
    core = SchedulingCore(**{**config.scheduler_settings(), "policy": "balance", "depth": 1, "clock": lambda: clock[0]})
    core.add_worker("w")
    core.report("w", {"ok": True, "shape": "s", "seconds": runtime})
    return core


def test_the_wait_ahead_of_a_batch_counts_calls_not_the_batch():
    """On a worker not yet observed, one call ahead of a batch of 20 is one call's wait, not 20 calls'."""
    clock, runtime = [0.0], 0.01
    core = _balance_core(clock, runtime)
    core.submit(Task("ahead", "B", "s"))
    waits = []
    for count in (1, 20):
        task = Task(("probe", count), "A", "s", count=count)
        core._price(task)
        waits.append(core._predicted_wait(task)[0])
    assert waits[0] == pytest.approx(waits[1]) == pytest.approx(runtime)


def test_a_worker_that_served_batches_serves_single_calls_at_the_per_call_rate():
    """After batches of 10, an idle worker's service interval is one call's, so a single call whose
    deadline is five calls' long is admitted (it was predicted at ten calls' time and rejected)."""
    clock, runtime = [0.0], 0.01
    core = _balance_core(clock, runtime)
    for i in range(5):
        core.submit(Task(i, "A", "s", count=10))
        clock[0] += 10 * runtime
        core.report("w", {"ok": True, "shape": "s", "seconds": runtime, "count": 10})
        core.finished(i, True, duration=10 * runtime)
    assert core.cluster.views["w"].service_interval == pytest.approx(runtime)
    decision = core.submit(Task("one", "B", "s", deadline=5 * runtime))
    assert decision.action == "run" and decision.admitted is None

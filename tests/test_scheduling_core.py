"""The scheduling core on its own (no Dask): fair queueing, placement, admission, their invariants.

A hypothesis state machine drives the core with random events and checks its bookkeeping after
each; a discrete-event harness on a virtual clock (``coresim``) checks the policies' outcomes
(shares, deadlines, bytes loaded) without any timing, so nothing here can be flaky.
"""

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
from coresim import Sim
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dask_kaas import config
from dask_kaas.scheduling import FairQueue, SchedulingCore, Task


def make_core(**overrides) -> SchedulingCore:
    """A core with the settings of ``kaas.yaml``, ``overrides`` over them."""
    return SchedulingCore(**{"policy": "affinity", **config.scheduler_settings(), **overrides})


MiB = 2**20


# ------------------------------------------------------------------ the fair queue
def test_least_served_first_and_no_credit_for_idle_time():
    q = FairQueue({"heavy": 1, "light": 1})
    for i in range(10):
        q.push("heavy", ("h", i))
    served = []
    for _ in range(4):
        t = q.least_served(1)[0]
        served.append(q.pop(t))
        q.charge(t, 1.0)
    q.push("light", ("l", 0))  # joins at the least service among the backlogged: no banked credit
    assert q.service["light"] == q.service["heavy"]
    t = q.least_served(2)
    assert set(t) == {"heavy", "light"}


def test_weights_share_service():
    q = FairQueue({"a": 3, "b": 1})
    for i in range(400):
        q.push("a", i)
        q.push("b", i)
    counts = Counter()
    for _ in range(400):
        t = q.least_served(1)[0]
        q.pop(t)
        q.charge(t, 1.0)
        counts[t] += 1
    assert counts["a"] == pytest.approx(300, abs=2) and counts["b"] == pytest.approx(100, abs=2)


def test_withdrawn_keys_are_skipped():
    q = FairQueue()
    q.push("a", 1)
    q.push("a", 2)
    q.withdraw(1)
    assert q.head("a") == 2 and len(q) == 1 and q.least_served(4) == ["a"]
    q.withdraw(2)
    assert q.head("a") is None and q.least_served(4) == [] and len(q) == 0


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["push", "serve", "withdraw"]), st.sampled_from("abcd"), st.floats(0.001, 5.0)),
        max_size=80,
    )
)
def test_service_goes_to_the_least_served(ops):
    """Whatever the order of events, each serve goes to a least-served backlogged tenant."""
    q = FairQueue({"a": 1, "b": 2, "c": 0.5, "d": 1})
    keys = {}
    n = 0
    for op, tenant, cost in ops:
        if op == "push":
            n += 1
            q.push(tenant, n)
            keys.setdefault(tenant, []).append(n)
        elif op == "withdraw" and keys.get(tenant):
            q.withdraw(keys[tenant].pop(0))
        elif op == "serve":
            chosen = q.least_served(1)
            backlogged = [t for t in q.queues if q.head(t) is not None]
            if not backlogged:
                assert chosen == []
                continue
            assert q.service[chosen[0]] == min(q.service[t] for t in backlogged)
            key = q.pop(chosen[0])
            keys[chosen[0]].remove(key)
            q.charge(chosen[0], cost)
        assert len(q) == sum(len(v) for v in keys.values())


# ------------------------------------------------------------------ the core's bookkeeping, under random events
REFS = [("t0", "w"), ("t1", "w"), ("t2", "w"), ("shared", "emb")]


class CoreMachine(RuleBasedStateMachine):
    """Random events against the core; after each, its books must balance exactly."""

    def __init__(self):
        super().__init__()
        self.policy = None
        self.core = None
        self.n = 0
        self.dispatched: set = set()
        self.overfilled = False  # affinity may queue beyond a worker's slots; those tasks outlive a switch

    @rule(
        policy=st.sampled_from(["affinity", "balance", "static", "exclusive", "locality"]),
        depth=st.integers(1, 3),
        replication=st.booleans(),
    )
    @precondition(lambda self: self.core is None)
    def start(self, policy, depth, replication):
        self.policy = policy
        self.overfilled = policy == "affinity"
        self.core = make_core(
            policy=policy, depth=depth, weights={"t0": 2.0}, replication=replication, clock=lambda: self.n * 0.01
        )

    @rule(policy=st.sampled_from(["affinity", "balance", "static", "exclusive", "locality"]))
    @precondition(lambda self: self.core is not None)
    def switch(self, policy):
        self.policy = policy
        self.overfilled |= policy == "affinity"
        self.core.set_policy(policy)

    @rule(worker=st.sampled_from(["a", "b", "c"]))
    @precondition(lambda self: self.core is not None)
    def add_worker(self, worker):
        self.core.add_worker(worker)

    @rule(
        tenant=st.sampled_from(["t0", "t1", "t2"]),
        shared=st.booleans(),
        ready=st.booleans(),
        count=st.sampled_from([1, 1, 3, 16]),
    )
    @precondition(lambda self: self.core is not None)
    def submit(self, tenant, shared, ready, count):
        self.n += 1
        consts = ((REFS[int(tenant[1])], 4 * MiB),) + (((REFS[3], MiB),) if shared else ())
        decision = self.core.submit(
            Task(self.n, tenant, f"s{tenant}", consts, submitted=self.n, ready=ready, count=count)
        )
        assert decision.action in ("run", "hold")
        if decision.action == "run":
            self._dispatched(self.n, decision.worker)

    @rule()
    @precondition(lambda self: self.core is not None)
    def dispatch(self):
        before_open = self.core.cluster.least_loaded()
        out = self.core.dispatch()
        if out:
            assert before_open is not None, "dispatched with no free slot anywhere"
        for key, worker in out:
            self._dispatched(key, worker)

    def _dispatched(self, key, worker):
        assert key not in self.dispatched, f"task {key} dispatched twice"
        self.dispatched.add(key)
        self.core.placed(key, worker)

    @rule(data=st.data(), ok=st.booleans())
    @precondition(lambda self: self.core is not None and self.dispatched)
    def finish(self, data, ok):
        key = data.draw(st.sampled_from(sorted(self.dispatched)))
        self.dispatched.discard(key)
        task = self.core.tasks[key]
        if ok:
            view = self.core.cluster.views[task.worker]
            resident = {ref: ("u", 1, n) for ref, n in task.consts}
            resident.update(view.resident)
            self.core.report(
                task.worker,
                {
                    "ok": True,
                    "shape": task.shape,
                    "seconds": 0.01,
                    "capacity": 64 * MiB,
                    "used": 8 * MiB,
                    "pinned": 0,
                    "consts": [[*r, *v] for r, v in resident.items()],
                    "counters": {},
                },
            )
        self.core.finished(key, ok)

    @rule(data=st.data())
    @precondition(lambda self: self.core is not None and self.core.tasks)
    def forget(self, data):
        key = data.draw(st.sampled_from(sorted(self.core.tasks)))
        self.dispatched.discard(key)
        self.core.forget(key)

    @rule(data=st.data())
    @precondition(lambda self: self.core is not None and any(not t.ready for t in self.core.tasks.values()))
    def ready(self, data):
        key = data.draw(st.sampled_from(sorted(k for k, t in self.core.tasks.items() if not t.ready)))
        self.core.set_ready(key)

    @rule(data=st.data())
    @precondition(lambda self: self.core is not None and self.dispatched)
    def unplace(self, data):
        key = data.draw(st.sampled_from(sorted(self.dispatched)))
        self.dispatched.discard(key)
        self.core.unplaced(key)

    @invariant()
    def books_balance(self):
        core = self.core
        if core is None:
            return
        assigned = {k: t for k, t in core.tasks.items() if t.state == "assigned"}
        held_ready = [k for k, t in core.tasks.items() if t.state == "held" and t.ready]
        assert set(assigned) == self.dispatched
        assert len(core.queue) == len(held_ready), "a held task is lost, or counted twice"
        assert core.cluster.queued == len(assigned)
        assert core.cluster.queued_calls == sum(t.count for t in assigned.values()), "calls on workers miscounted"
        held_calls = Counter()
        for k in held_ready:
            held_calls[core.tasks[k].tenant] += core.tasks[k].count
        assert +core.held_calls == +held_calls and core.held_calls_total == sum(held_calls.values()), (
            "calls waiting in the fair queue miscounted"
        )
        for address, view in core.cluster.views.items():
            mine = [t for t in assigned.values() if t.worker == address]
            assert view.queued == len(mine) and view.queued_calls == sum(t.count for t in mine)
            assert +view.pending == +Counter(ref for t in mine for ref, _ in t.consts)
            if not self.overfilled:
                assert view.queued <= view.depth, "more tasks in flight than slots"
            for ref in set(view.resident) | set(view.pending):
                assert address in core.cluster.holders.get(ref, set())
        for ref, workers in core.cluster.holders.items():
            for address in workers:
                view = core.cluster.views[address]
                assert ref in view.resident or view.pending[ref], "the const index names a worker without it"
        held = [t for t in core.tasks.values() if t.state == "held"]
        assert +core.wanted == +Counter(ref for t in held for ref, _ in t.consts), "queue hints out of step"

    @invariant()
    def pinned_tasks_are_found(self):
        """static/exclusive: a ready held task whose worker has a free slot is dispatched by the next dispatch."""
        core = self.core
        if core is None or self.policy not in ("static", "exclusive") or not core.cluster.views:
            return
        waiting = [t for t in core.tasks.values() if t.state == "held" and t.ready]
        if any(t.pinned is not None and core.cluster.is_open(t.pinned) for t in waiting):
            assert any(core.cluster.is_open(w) for w, tenants in core.pinned_backlog.items() if tenants)

    @invariant()
    def nothing_starves(self):
        """With a free slot somewhere, a ready held task of an unpinned policy is dispatchable now."""
        core = self.core
        if core is None or self.policy not in ("affinity", "balance") or not len(core.queue):
            return
        if core.cluster.least_loaded() is not None:
            tenants = core.queue.least_served(1)
            assert tenants, "held tasks, a free slot, and no tenant to serve"


TestCoreMachine = CoreMachine.TestCase
TestCoreMachine.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# ------------------------------------------------------------------ outcomes, on a virtual clock
def test_fair_shares_while_everyone_is_backlogged():
    """One tenant submits 10x more, first; while all are backlogged each gets a quarter of the service."""
    core = make_core(policy="affinity", depth=2)
    sim = Sim(core, workers=2)
    tenants = ["heavy", "l1", "l2", "l3"]
    for t in tenants:  # learn the shape
        sim.submit(("warm", t), t, 0.02)
    sim.run()
    rng = np.random.default_rng(0)
    for i in range(400):
        sim.submit(("heavy", i), "heavy", 0.02 * rng.uniform(0.8, 1.2))
    for t in tenants[1:]:
        for i in range(40):
            sim.submit((t, i), t, 0.02 * rng.uniform(0.8, 1.2))
    sim.run()
    end_of_window = min(max(sim.finished[(t, i)] for i in range(40)) for t in tenants[1:])
    done = Counter(k[0] for k, when in sim.finished.items() if k[0] != "warm" and when <= end_of_window)
    shares = np.array([done[t] for t in tenants], float) / sum(done.values())
    assert np.all(np.abs(shares - 0.25) <= 0.03), dict(zip(tenants, shares.round(3)))


def test_weighted_shares():
    core = make_core(policy="balance", depth=1, weights={"gold": 3.0})
    sim = Sim(core, workers=1)
    for t in ("gold", "bronze"):
        sim.submit(("warm", t), t, 0.01)
    sim.run()
    for i in range(300):
        sim.submit(("gold", i), "gold", 0.01)
        sim.submit(("bronze", i), "bronze", 0.01)
    sim.run(until=sim.now + 2.0)  # both backlogged throughout
    done = Counter(k[0] for k in sim.finished if k[0] != "warm")
    assert done["gold"] / sum(done.values()) == pytest.approx(0.75, abs=0.03)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_admission_under_twice_the_sustainable_load(seed):
    """Deadlines of 8 service times at 2x what the workers sustain: about half rejected at once, and
    the admitted meet their deadline (>= 95%)."""
    core = make_core(policy="affinity", depth=2)
    sim = Sim(core, workers=2)
    rng = np.random.default_rng(seed)
    service = 0.05
    for i in range(10):  # learn the shape
        sim.submit(("warm", i), "slo", service, shape="s")
    sim.run()
    deadline, rate = 8 * service, 2 * 2 / service
    t = sim.now
    for i in range(400):
        t += rng.exponential(1 / rate)
        sim.at(t, sim.submit, i, "slo", service * rng.uniform(0.9, 1.1), (), deadline, "s")
    sim.run()
    admitted = [k for k in range(400) if k not in sim.rejected]
    met = np.mean([sim.latency(k) <= deadline for k in admitted])
    assert 0.3 <= len(sim.rejected) / 400 <= 0.7
    assert met >= 0.95, met
    for decision in sim.rejected.values():
        assert decision.predicted > deadline * core.margin


def test_affinity_loads_each_const_about_once_and_balance_does_not():
    loaded = {}
    for policy in ("affinity", "balance"):
        core = make_core(policy=policy, depth=2, load_bandwidth=1e9)
        sim = Sim(core, workers=4, capacity=64 * MiB, bandwidth=1e9)
        rng = np.random.default_rng(7)
        tenants = [f"t{i}" for i in range(12)]
        zipf = 1 / np.arange(1, 13) ** 1.1
        t = 0.0
        for i in range(600):
            t += 0.004
            tenant = tenants[rng.choice(12, p=zipf / zipf.sum())]
            sim.at(t, sim.submit, i, tenant, 0.01, (((tenant, "w"), 16 * MiB),))
        sim.run()
        loaded[policy] = sum(w.loaded for w in sim.workers.values())
    assert loaded["affinity"] * 3 <= loaded["balance"], loaded
    assert loaded["affinity"] <= 1.7 * 12 * 16 * MiB, loaded  # a hot tenant may spill to a second worker


def test_the_policy_code_imports_nothing_of_distributed():
    import ast
    import pathlib

    import dask_kaas.scheduling as package

    for path in pathlib.Path(package.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            else:
                continue
            for name in names:
                assert "distributed" not in name, f"{path.name} imports {name}"
                assert not name.startswith("..") or name in ("..report",), f"{path.name} reaches out to {name}"


def test_idle_workers_tie_exactly_whatever_the_durations():
    """The running sum of a worker's queued seconds is exactly 0 once it is idle, so idle workers
    tie and take turns; a float residue (0.1 + 0.2 - 0.1 - 0.2 > 0) once made balance send every
    request to the same worker, and affinity every new tenant."""
    from dask_kaas.scheduling.cluster import Cluster

    cluster = Cluster(depth=2)
    for w in ("a", "b"):
        cluster.add(w)
    cluster.assign("a", (), 0.1)
    cluster.assign("a", (), 0.2)
    cluster.release("a", (), 0.1)
    cluster.release("a", (), 0.2)
    assert cluster.views["a"].queued_seconds == 0.0

    core = make_core(policy="balance", depth=1)
    for w in ("w0", "w1"):
        core.add_worker(w)
    where = []
    for i, seconds in enumerate([0.1, 0.2, 0.7, 0.3, 0.1, 0.6] * 4):
        decision = core.submit(Task(i, "t", "s", estimate=seconds))
        assert decision.action == "run"
        core.placed(i, decision.worker)
        where.append(decision.worker)
        core.finished(i, True, duration=seconds)
    assert Counter(where) == {"w0": 12, "w1": 12}, where


# ------------------------------------------------------------------ the cache per tenant
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["alice", "bob", "scanner"]), st.integers(0, 3), st.integers(0, 2), st.integers(0, 3)
        ),
        min_size=1,
        max_size=40,
    )
)
def test_each_tenants_cache_figures_add_up_to_the_workers(reports):
    """Hits, misses, bytes loaded and evictions of each report go to the tenant of its task, and the
    tenants' sums are the worker's counters."""
    core = make_core()
    core.add_worker("w")
    totals = {"hits": 0, "misses": 0, "bytes": 0, "evictions": 0}
    for i, (tenant, hits, misses, evictions) in enumerate(reports):
        key = f"k{i}"
        core.submit(Task(key, tenant, "shape", ((("ns", "A"), MiB),), submitted=0.0))
        totals = {
            "hits": totals["hits"] + hits,
            "misses": totals["misses"] + misses,
            "bytes": totals["bytes"] + misses * MiB,
            "evictions": totals["evictions"] + evictions,
        }
        core.report(
            "w",
            {
                "ok": True,
                "tenant": "forged",
                "hits": hits,
                "misses": misses,
                "bytes_loaded": misses * MiB,
                "seconds": 0.01,
                "capacity": 64 * MiB,
                "used": 0,
                "pinned": 0,
                "seq": i + 1,
                **(
                    {"consts": [], "counters": {"evictions": totals["evictions"]}}
                    if i == 0
                    else {"added": [], "removed": [], "counters_delta": {"evictions": evictions}}
                ),
            },
            key=key,
        )
        core.finished(key, True, duration=0.01)
    tenants = core.snapshot()["tenants"]
    assert "forged" not in tenants  # a report's tenant is its task's
    assert sum(t["hits"] for t in tenants.values()) == totals["hits"]
    assert sum(t["misses"] for t in tenants.values()) == totals["misses"]
    assert sum(t["bytes_loaded"] for t in tenants.values()) == totals["bytes"]
    assert (
        sum(t["evictions_caused"] for t in tenants.values())
        == totals["evictions"]
        == core.snapshot()["workers"]["w"]["counters"].get("evictions", 0)
    )
    for name, t in tenants.items():
        mine = [r for r in reports if r[0] == name]
        assert t["hits"] == sum(r[1] for r in mine) and t["held"] == 0
        lookups = sum(r[1] + r[2] for r in mine)
        assert t["hit_rate"] == (sum(r[1] for r in mine) / lookups if lookups else None)

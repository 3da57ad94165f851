"""The batch queue on its own (pure code, no clock): dynamic batching that never waits.

Direct tests of its promises (an idle key sends each call alone, at once; under backlog batches grow
to what queued; bounds on calls and bytes), and a hypothesis state machine that drives it with random
arrivals, completions and slot changes against a simple model of what must have left.
"""

from collections import deque

import pytest

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from dask_kaas.batching.queue import Batch, BatchQueue


def sizes(batches):
    return [len(b) for b in batches]


# ------------------------------------------------------------------ direct tests
def test_an_idle_key_sends_each_call_alone_at_once():
    """No latency added: every call to a key with a free slot leaves in the very call that adds it."""
    q = BatchQueue(slots=2, max_calls=64, max_bytes=1 << 20)
    for i in range(50):
        out = q.add("f", i, 10)
        assert [(b.key, b.items, b.nbytes) for b in out] == [("f", [i], 10)]
        assert q.queued("f") == 0
        assert q.done("f") == []  # it came back before the next arrived: the key is idle again
    assert (q.batches, q.calls, q.in_flight(), q.queued()) == (50, 50, 0, 0)


def test_free_slots_send_calls_alone_even_when_other_keys_are_busy():
    q = BatchQueue(slots=2, max_calls=64, max_bytes=1 << 20)
    assert sizes(q.add("busy", 0)) == [1] and sizes(q.add("busy", 1)) == [1]
    assert q.add("busy", 2) == []  # both slots of "busy" taken: it queues
    assert [b.items for b in q.add("idle", "x")] == [["x"]]  # another key's slots are its own
    assert sizes(q.add("idle", "y")) == [1]  # its second slot
    assert q.add("idle", "z") == []
    assert (q.queued("busy"), q.queued("idle"), q.queued()) == (1, 1, 2)
    assert (q.in_flight("busy"), q.in_flight("idle"), q.in_flight()) == (2, 2, 4)


@pytest.mark.parametrize("slots", [1, 3])
def test_under_backlog_batches_grow_to_what_queued(slots):
    q = BatchQueue(slots=slots, max_calls=1000, max_bytes=1 << 30)
    n = 0
    for _ in range(slots):
        assert sizes(q.add("f", n)) == [1]
        n += 1
    for backlog in (1, 5, 17, 40):
        for _ in range(backlog):
            assert q.add("f", n) == []  # every slot taken: nothing leaves, nothing is lost
            n += 1
        out = q.done("f")  # one slot frees: everything that queued leaves as one batch
        assert sizes(out) == [backlog]
        assert out[0].items == list(range(n - backlog, n))
        assert q.queued("f") == 0 and q.in_flight("f") == slots
    for _ in range(slots):
        assert q.done("f") == []
    assert q.in_flight("f") == 0 and q.calls == n


def test_a_batch_holds_at_most_max_calls_and_the_rest_waits_for_the_next_slot():
    q = BatchQueue(slots=1, max_calls=4, max_bytes=1 << 30)
    q.add("f", "first")
    for i in range(10):
        q.add("f", i)
    assert [b.items for b in q.done("f")] == [[0, 1, 2, 3]]
    assert q.queued("f") == 6
    assert [b.items for b in q.done("f")] == [[4, 5, 6, 7]]
    assert [b.items for b in q.done("f")] == [[8, 9]]
    assert q.done("f") == [] and q.in_flight("f") == 0


def test_max_bytes_bounds_a_batch_and_a_larger_call_goes_alone():
    q = BatchQueue(slots=1, max_calls=100, max_bytes=100)
    q.add("f", "first", 1)
    for item, nbytes in [("a", 40), ("b", 40), ("c", 40), ("big", 500), ("d", 10), ("e", 100)]:
        assert q.add("f", item, nbytes) == []
    out = [q.done("f")[0] for _ in range(4)]
    assert [(b.items, b.nbytes) for b in out] == [(["a", "b"], 80), (["c"], 40), (["big"], 500), (["d"], 10)]
    assert [(b.items, b.nbytes) for b in q.done("f")] == [(["e"], 100)]  # exactly max_bytes still fits
    assert q.done("f") == []


def test_a_large_first_call_is_not_held_back_and_negative_bytes_count_as_none():
    q = BatchQueue(slots=1, max_calls=8, max_bytes=10)
    assert [(b.items, b.nbytes) for b in q.add("f", "huge", 10**9)] == [(["huge"], 10**9)]
    q.add("f", "neg", -5)
    q.add("f", "x", 10)
    assert [(b.items, b.nbytes) for b in q.done("f")] == [(["neg", "x"], 10)]


def test_more_slots_release_queued_calls_at_once_and_fewer_hold_new_batches_back():
    q = BatchQueue(slots=1, max_calls=2, max_bytes=1 << 20)
    q.add("f", 0)
    for i in range(1, 6):
        q.add("f", i)
    q.add("g", "g0")
    q.add("g", "g1")
    out = q.set_slots(3)  # two more slots per key: queued calls leave now, max_calls at a time
    assert sorted((b.key, tuple(b.items)) for b in out) == [("f", (1, 2)), ("f", (3, 4)), ("g", ("g1",))]
    assert q.in_flight("f") == 3 and q.queued("f") == 1 and q.in_flight("g") == 2
    assert q.set_slots(1) == []  # fewer slots: nothing in flight is recalled, nothing new leaves
    assert q.done("f") == [] and q.done("f") == []  # 3 -> 2 -> 1 in flight: still not below 1
    assert [b.items for b in q.done("f")] == [[5]]  # below the new limit: the queue leaves
    assert q.set_slots(0) == [] and q.slots == 1  # at least one slot


def test_done_on_an_idle_key_is_harmless():
    q = BatchQueue(slots=1, max_calls=4, max_bytes=100)
    assert q.done("nobody") == [] and q.in_flight() == 0 and q.queued() == 0


@pytest.mark.parametrize("bad", [dict(max_calls=0, max_bytes=1), dict(max_calls=1, max_bytes=0)])
def test_bounds_must_be_positive(bad):
    with pytest.raises(ValueError, match="must be positive"):
        BatchQueue(slots=1, **bad)


def test_a_batch_reports_its_length():
    assert len(Batch("k", ["a", "b"], 3)) == 2 and len(Batch("k")) == 0


@settings(max_examples=100, deadline=None)
@given(
    calls=st.lists(st.tuples(st.sampled_from("fgh"), st.integers(0, 300)), max_size=60),
    slots=st.integers(1, 3),
    max_calls=st.integers(1, 6),
    max_bytes=st.integers(1, 400),
)
def test_each_arrival_with_a_free_slot_leaves_in_the_batch_it_returns(calls, slots, max_calls, max_bytes):
    """Arrivals only (no batch ever returns): the first ``slots`` calls of each key leave alone and at
    once, later ones all queue; nothing else ever leaves."""
    q = BatchQueue(slots=slots, max_calls=max_calls, max_bytes=max_bytes)
    seen = {}
    for i, (key, nbytes) in enumerate(calls):
        out = q.add(key, i, nbytes)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= slots:
            assert [(b.key, b.items, b.nbytes) for b in out] == [(key, [i], nbytes)]
        else:
            assert out == []
        assert q.in_flight(key) == min(seen[key], slots)
        assert q.queued(key) == max(0, seen[key] - slots)


# ------------------------------------------------------------------ the model, under random events
class BatchQueueMachine(RuleBasedStateMachine):
    """Random arrivals, completions and slot changes; after each, what left must match the model.

    The model keeps, per key, the calls added and not yet sent (FIFO), the batches in flight, and the
    order calls left in; the queue must agree on all of it and keep its promises (bounds, never
    waiting, FIFO per key, each call leaving exactly once)."""

    @initialize(slots=st.integers(1, 4), max_calls=st.integers(1, 6), max_bytes=st.integers(1, 300))
    def start(self, slots, max_calls, max_bytes):
        self.q = BatchQueue(slots=slots, max_calls=max_calls, max_bytes=max_bytes)
        self.slots = slots
        self.n = 0
        self.waiting: dict = {}  # key -> deque of (item, nbytes) added and not yet sent
        self.flying: dict = {}  # key -> batches in flight
        self.added: dict = {}  # key -> items in arrival order
        self.left: dict = {}  # key -> items in the order they left
        self.batches = self.calls = 0
        self.over = set()  # keys with more in flight than slots (set_slots lowered it)

    def _check_out(self, out, *, allowed: set):
        """The batches an event returned: of keys it may release, bounded, each the head of its queue."""
        for batch in out:
            key = batch.key
            assert key in allowed, f"a batch of {key!r} left on an event that cannot free a slot of it"
            assert 1 <= len(batch) <= self.q.max_calls, "an empty batch, or more than max_calls"
            assert batch.nbytes <= self.q.max_bytes or len(batch) == 1, "more than max_bytes in a batch of several"
            assert key not in self.over, "a new batch left while the key was over its (lowered) slots"
            expected = [self.waiting[key].popleft() for _ in range(len(batch))]  # FIFO: the oldest calls first
            assert batch.items == [item for item, _ in expected]
            assert batch.nbytes == sum(nbytes for _, nbytes in expected)
            if self.waiting[key]:  # it stopped short of what queued: only because a bound was reached
                nxt = self.waiting[key][0][1]
                assert len(batch) == self.q.max_calls or batch.nbytes + nxt > self.q.max_bytes, (
                    "a batch left smaller than its bounds allow while calls were queued behind it"
                )
            self.left.setdefault(key, []).extend(batch.items)
            self.flying[key] = self.flying.get(key, 0) + 1
            assert self.flying[key] <= self.slots, "more batches in flight than slots"
            self.batches += 1
            self.calls += len(batch)

    @rule(key=st.sampled_from(["a", "b", ("req", 3)]), nbytes=st.integers(-10, 200))
    def add(self, key, nbytes):
        self.n += 1
        item = (key, self.n)
        free = self.flying.get(key, 0) < self.slots
        self.waiting.setdefault(key, deque()).append((item, max(0, nbytes)))
        self.added.setdefault(key, []).append(item)
        out = self.q.add(key, item, nbytes)
        self._check_out(out, allowed={key})
        if free:  # a free slot: this very call leaves now, alone (nothing can have queued before it)
            assert [b.items for b in out] == [[item]], "a call to a key with a free slot did not leave at once"
        else:
            assert out == []

    @rule(data=st.data())
    @precondition(lambda self: any(self.flying.values()))
    def done(self, data):
        key = data.draw(st.sampled_from(sorted((k for k, n in self.flying.items() if n), key=repr)))
        self.flying[key] -= 1
        if self.flying[key] < self.slots:
            self.over.discard(key)
        out = self.q.done(key)
        self._check_out(out, allowed={key})
        assert len(out) <= 1, "one slot freed, more than one batch left"

    @rule(slots=st.integers(-1, 5))
    def set_slots(self, slots):
        self.slots = max(1, slots)
        out = self.q.set_slots(slots)
        self.over = {k for k, n in self.flying.items() if n > self.slots}
        self._check_out(out, allowed={k for k, w in self.waiting.items() if w})
        assert self.q.slots == self.slots

    @invariant()
    def agrees_with_the_model(self):
        q = self.q
        for key in set(self.added) | set(self.flying):
            waiting = len(self.waiting.get(key, ()))
            assert q.queued(key) == waiting
            assert q.in_flight(key) == self.flying.get(key, 0)
            # never waits: a call queues only while every slot of its key is taken
            if waiting:
                assert q.in_flight(key) >= self.slots, f"{key!r} has calls queued and a free slot"
            if key not in self.over:
                assert q.in_flight(key) <= self.slots
            # every call added leaves exactly once, in arrival order: what left, then what waits, is what came
            assert self.left.get(key, []) + [item for item, _ in self.waiting.get(key, ())] == self.added.get(key, [])
        assert q.queued() == sum(len(w) for w in self.waiting.values())
        assert q.in_flight() == sum(self.flying.values())
        assert (q.batches, q.calls) == (self.batches, self.calls)
        assert q.calls == sum(len(v) for v in self.left.values())


TestBatchQueueMachine = BatchQueueMachine.TestCase
TestBatchQueueMachine.settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

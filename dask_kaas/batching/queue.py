"""Which queued calls go together, and when: dynamic batching that never waits (pure code).

Calls are queued per key (one request: the calls a batch can hold). A key may have at most
``slots`` batches in flight; a call that arrives while its key has a free slot leaves at once,
alone or with whatever queued before it, and calls queue only while every slot of their key is
taken. When a batch of the key comes back (a slot frees), everything queued for it leaves as the
next batch, up to ``max_calls`` calls and ``max_bytes`` bytes (a single call larger than that
goes alone). Nothing is ever held back to fill a batch: an idle key sends each call the moment it
arrives, so batching adds no latency; under load, batches grow by themselves to what queued while
the slots were busy.

The queue knows nothing of Dask or clocks: :class:`~dask_kaas.Batcher` drives it from the
client's event loop, and tests drive it directly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batch", "BatchQueue"]


@dataclass
class Batch:
    """Calls of one key that leave together: ``items`` in arrival order, ``nbytes`` their input bytes."""

    key: Hashable
    items: list = field(default_factory=list)
    nbytes: int = 0

    def __len__(self) -> int:
        return len(self.items)


class BatchQueue:
    """Per-key FIFO queues of calls and the batches in flight for each key.

    Parameters
    ----------
    slots : int
        Batches of one key in flight at once (at least 1); :meth:`set_slots` changes it.
    max_calls : int
        Calls in one batch at most.
    max_bytes : int
        Input bytes in one batch at most; a single call larger than this goes alone.

    Examples
    --------
    >>> q = BatchQueue(slots=1, max_calls=8, max_bytes=1 << 20)
    >>> [len(b) for b in q.add("f", "call-1", 100)]   # a free slot: it leaves at once, alone
    [1]
    >>> q.add("f", "call-2", 100), q.add("f", "call-3", 100)  # the slot is taken: they queue
    ([], [])
    >>> [b.items for b in q.done("f")]                # the batch came back: the queue leaves together
    [['call-2', 'call-3']]
    >>> q.done("f"), q.in_flight("f")
    ([], 0)
    """

    def __init__(self, *, slots: int, max_calls: int, max_bytes: int):
        if max_calls < 1 or max_bytes < 1:
            raise ValueError(f"max_calls and max_bytes must be positive, got {max_calls} and {max_bytes}")
        self.max_calls = int(max_calls)
        self.max_bytes = int(max_bytes)
        self.slots = max(1, int(slots))
        self._queued: dict[Hashable, deque] = {}
        self._flying: dict[Hashable, int] = {}
        self.batches = 0  # batches sent so far
        self.calls = 0  # calls sent so far

    # -- state --------------------------------------------------------------------------------
    def queued(self, key: Hashable | None = None) -> int:
        """Calls waiting for a slot (of ``key``, or of every key)."""
        if key is not None:
            return len(self._queued.get(key, ()))
        return sum(len(q) for q in self._queued.values())

    def in_flight(self, key: Hashable | None = None) -> int:
        """Batches sent and not yet back (of ``key``, or of every key)."""
        if key is not None:
            return self._flying.get(key, 0)
        return sum(self._flying.values())

    # -- events -------------------------------------------------------------------------------
    def add(self, key: Hashable, item: Any, nbytes: int = 0) -> list[Batch]:
        """A call arrives; returns the batches to send now (empty while every slot of ``key`` is taken)."""
        self._queued.setdefault(key, deque()).append((item, max(0, int(nbytes))))
        return self._release(key)

    def done(self, key: Hashable) -> list[Batch]:
        """A batch of ``key`` came back (or failed): its slot frees; returns the batches to send now."""
        flying = self._flying.get(key, 0)
        if flying <= 1:
            self._flying.pop(key, None)
        else:
            self._flying[key] = flying - 1
        return self._release(key)

    def set_slots(self, slots: int) -> list[Batch]:
        """Change the slots per key; returns the batches that more slots let go now."""
        self.slots = max(1, int(slots))
        out: list[Batch] = []
        for key in list(self._queued):
            out.extend(self._release(key))
        return out

    # -- internals ----------------------------------------------------------------------------
    def _release(self, key: Hashable) -> list[Batch]:
        out = []
        queue = self._queued.get(key)
        while queue and self._flying.get(key, 0) < self.slots:
            batch = Batch(key)
            while queue and len(batch.items) < self.max_calls:
                item, nbytes = queue[0]
                if batch.items and batch.nbytes + nbytes > self.max_bytes:
                    break
                queue.popleft()
                batch.items.append(item)
                batch.nbytes += nbytes
            self._flying[key] = self._flying.get(key, 0) + 1
            self.batches += 1
            self.calls += len(batch.items)
            out.append(batch)
        if queue is not None and not queue:
            del self._queued[key]
        return out

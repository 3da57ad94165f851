"""Memory a device keeps for its next request instead of returning it: pure bookkeeping, any backend.

- :class:`SpareBuffers`: device buffers a request freed, kept by size, so that the next request of
  the same shape allocates nothing (a warm request then makes no allocator call at all).
- :class:`PinnedBlocks`: page-locked host blocks that request outputs are copied into from the
  GPU and handed to the caller as they are (no second copy); a block serves again once nothing
  refers to it any more.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np


class SpareBuffers:
    """Freed buffers by exact size: at most ``per_size`` of each and ``limit`` bytes in all.

    ``put`` answers whether it kept the buffer (else the caller lets it go); ``take`` hands one
    back or None; ``clear`` lets them all go (before an allocation is refused for want of memory
    that spares hold). Buffers are opaque; their size is what the caller says.
    """

    def __init__(self, limit: int, per_size: int = 4):
        self.limit = int(limit)
        self.per_size = int(per_size)
        self.nbytes = 0
        self._by_size: dict[int, list] = {}

    def take(self, nbytes: int):
        spares = self._by_size.get(nbytes)
        if not spares:
            return None
        self.nbytes -= nbytes
        return spares.pop()

    def put(self, buffer, nbytes: int) -> bool:
        spares = self._by_size.setdefault(nbytes, [])
        if len(spares) >= self.per_size or self.nbytes + nbytes > self.limit:
            return False
        spares.append(buffer)
        self.nbytes += nbytes
        return True

    def clear(self) -> int:
        """Let every spare go; returns the bytes they held."""
        freed, self.nbytes = self.nbytes, 0
        self._by_size.clear()
        return freed

    def __len__(self) -> int:
        return sum(map(len, self._by_size.values()))


class PinnedBlocks:
    """Page-locked host blocks, handed out as NumPy views and reused once the caller lets go.

    A block is busy while any array refers to it: every view NumPy makes of a view still has the
    block itself as its ``base``, so the block's reference count says whether the caller (or Dask,
    serializing the result) still holds any part of it. Blocks are sized in powers of two from
    ``MIN_BLOCK``; at most ``limit`` bytes are pinned in all. Past that, or when pinning fails
    (the OS refuses to lock more pages), :meth:`take` answers None and the caller uses pageable
    memory.
    """

    MIN_BLOCK = 4096

    def __init__(self, allocate: Callable[[int], object], limit: int):
        self._allocate = allocate
        self.limit = int(limit)
        self.nbytes = 0
        self.failed: BaseException | None = None  # why pinning last failed, for memory_info
        self._blocks: dict[int, list[np.ndarray]] = {}

    @classmethod
    def block_size(cls, nbytes: int) -> int:
        return max(cls.MIN_BLOCK, 1 << (max(nbytes, 1) - 1).bit_length())

    def take(self, nbytes: int) -> np.ndarray | None:
        """``nbytes`` of pinned memory (a flat uint8 view), or None."""
        size = self.block_size(nbytes)
        blocks = self._blocks.setdefault(size, [])
        for block, refs in zip(blocks, _refcounts(blocks)):
            if refs <= _IDLE:
                return block[:nbytes]
        if self.nbytes + size > self.limit:
            return None
        try:
            memory = self._allocate(size)
        except Exception as e:
            self.failed = e
            return None
        blocks.append(np.frombuffer(memory, dtype=np.uint8, count=size))  # type: ignore[call-overload]  # a buffer
        self.nbytes += size
        return blocks[-1][:nbytes]

    def busy(self) -> int:
        """Bytes of blocks a caller still holds."""
        return sum(
            b.nbytes for blocks in self._blocks.values() for b, refs in zip(blocks, _refcounts(blocks)) if refs > _IDLE
        )

    def clear(self) -> None:
        """Forget every block (a busy one stays valid until its last holder lets go)."""
        self._blocks.clear()
        self.nbytes = 0


def _refcounts(blocks: list) -> list[int]:
    return [sys.getrefcount(b) for b in blocks]


_IDLE = _refcounts([np.empty(0)])[0]  # what a block held by its list alone counts, measured the same way

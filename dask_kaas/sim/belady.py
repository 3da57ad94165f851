"""Belady's offline optimum: the hits of a cache that always evicts what is used furthest in the future.

Exact for equal sizes; with sizes that differ (where the optimum is NP-hard) it is the usual
furthest-next-use heuristic, evicting until the new const fits, which is what the figures call
"Belady" there.
"""

from __future__ import annotations

import heapq


def belady_hits(accesses: list, capacity: int) -> int:
    """Hits over ``accesses`` [(ref, nbytes), ...] of a cache of ``capacity`` bytes (a const larger
    than the whole cache is a miss and is not kept)."""
    never = len(accesses)
    next_use = [never] * len(accesses)
    last: dict = {}
    for i in range(len(accesses) - 1, -1, -1):
        ref = accesses[i][0]
        next_use[i] = last.get(ref, never)
        last[ref] = i
    cache: dict = {}  # ref -> (next use, nbytes)
    heap: list = []  # (-next use, ref): the furthest first; stale entries skipped
    used = hits = 0
    for i, (ref, nbytes) in enumerate(accesses):
        if ref in cache:
            hits += 1
            used -= cache[ref][1]
        elif nbytes > capacity:
            continue
        else:
            while used + nbytes > capacity:
                far, victim = heapq.heappop(heap)
                if victim in cache and cache[victim][0] == -far:
                    used -= cache.pop(victim)[1]
        cache[ref] = (next_use[i], nbytes)
        used += nbytes
        heapq.heappush(heap, (-next_use[i], ref))
    return hits

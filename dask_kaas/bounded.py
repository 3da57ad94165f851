"""A dict that forgets its oldest entries past a size: the caches of prepared launches, store
versions and the gateway's catalog, each bounded so that no stream of distinct keys grows it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

__all__ = ["BoundedDict"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(OrderedDict[K, V]):
    """An ordered dict of at most ``max_entries``; adding past it drops the oldest entries.

    Order is insertion order: replacing a key's value keeps its place. A caller that wants
    least-recently-used order calls ``move_to_end(key)`` on a hit.

    Examples
    --------
    >>> d = BoundedDict(2)
    >>> d["a"], d["b"], d["c"] = 1, 2, 3
    >>> list(d)
    ['b', 'c']
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        super().__init__()
        self.max_entries = max_entries

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        while len(self) > self.max_entries:
            self.popitem(last=False)

    def __reduce__(self) -> tuple[Callable[[int, list[tuple[K, V]]], BoundedDict[K, V]], tuple[int, list[tuple[K, V]]]]:
        # pickled with its bound (OrderedDict's would call __init__ without it)
        return (_rebuild, (self.max_entries, list(self.items())))


def _rebuild(max_entries: int, items: list[tuple[K, V]]) -> BoundedDict[K, V]:
    d: BoundedDict[K, V] = BoundedDict(max_entries)
    d.update(items)
    return d

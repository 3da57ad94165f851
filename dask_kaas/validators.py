"""The small checks every part of a request's validation shares (a leaf: it imports only errors and names)."""

from __future__ import annotations

import numbers

from .errors import RequestError

__all__ = ["check", "is_int"]


def is_int(value) -> bool:
    """An integer of any integral type, and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check(problem: str | None, where: str = "") -> None:
    """Raise the :class:`RequestError` a name check found (``problem``), prefixed by ``where``."""
    if problem is not None:
        raise RequestError(f"{where}: {problem}" if where else problem)

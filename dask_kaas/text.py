"""Plain text for people: byte sizes (Dask's ``format_bytes``) and aligned tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from dask.utils import format_bytes

__all__ = ["exact_bytes", "format_bytes", "table"]


def exact_bytes(n: int) -> str:
    """``"512 B"``; from 1 KiB on also readable: ``"3145728 B (3.00 MiB)"``."""
    n = int(n)
    return f"{n} B" if abs(n) < 1024 else f"{n} B ({format_bytes(n)})"


def table(header: Sequence[str], rows: Iterable[Sequence], *, right: Iterable[int] = (), rule: bool = False) -> str:
    """Columns as wide as their widest cell, two spaces apart; the columns numbered in ``right``
    right-aligned (numbers); ``rule`` draws a line of dashes under the header."""
    rows = [[str(c) for c in r] for r in rows]
    header = [str(c) for c in header]
    right = set(right)
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]

    def line(cells):
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    lines = [line(header)]
    if rule:
        lines.append("-" * len(lines[0]))
    return "\n".join(lines + [line(r) for r in rows])

"""One request per built-in kernel, with its expected outputs computed by plain NumPy.

Used by ``dask-kaas doctor`` (a device against NumPy) and the GPU tests (the CUDA device
against the host device). Launch shapes deliberately do not cover ``n`` exactly, so the
kernels' grid-stride loops are exercised; ``axpy`` runs ``n_iter=3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .request import BufferSpec, KernelSpec, Literal, Request

F32 = 4


@dataclass(frozen=True)
class Case:
    kernel: str
    request: Request
    inputs: dict
    expected: dict

    def tolerance(self, n: int) -> dict:
        """``rtol``/``atol`` for float32 results of a kernel that sums up to ``n`` terms."""
        return {"rtol": 2e-4, "atol": 2e-4 * max(1.0, float(np.sqrt(n)))}


def _buf(name: str, count: int) -> BufferSpec:
    return BufferSpec(name, count * F32, dtype="float32", ephemeral=True)


def _one(kernel, grid, block, literals, arguments, n_iter=1) -> Request:
    return Request([KernelSpec("builtin", kernel, grid, block, literals=literals, arguments=arguments)], n_iter=n_iter)


def cases(n: int, rng: np.random.Generator) -> list[Case]:
    """A :class:`Case` for every built-in kernel at size ``n`` (n >= 1)."""

    def v(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    rows, cols = max(1, n // 7), 7
    m, k, p = n // 3 + 1, n // 5 + 2, n // 4 + 3
    out = []

    out.append(
        Case(
            "fill",
            _one("fill", 3, 64, [Literal("i", n), Literal("f", 2.5)], [(_buf("y", n), "o")]),
            {},
            {"y": np.full(n, 2.5, np.float32)},
        )
    )

    a, b = v(n), v(n)
    out.append(
        Case(
            "vadd",
            _one("vadd", 2, 96, [Literal("i", n)], [(_buf("a", n), "i"), (_buf("b", n), "i"), (_buf("c", n), "o")]),
            {"a": a, "b": b},
            {"c": a + b},
        )
    )

    x, y = v(n), v(n)
    expected = y.copy()
    for _ in range(3):
        expected = expected + np.float32(-0.75) * x
    out.append(
        Case(
            "axpy",
            _one(
                "axpy",
                5,
                33,
                [Literal("i", n), Literal("f", -0.75)],
                [(_buf("x", n), "i"), (_buf("y", n), "io")],
                n_iter=3,
            ),
            {"x": x, "y": y},
            {"y": expected},
        )
    )

    A, B = v(m * k), v(k * p)
    out.append(
        Case(
            "sgemm",
            _one(
                "sgemm",
                (2, 3),
                (16, 16),
                [Literal("i", m), Literal("i", p), Literal("i", k)],
                [(_buf("A", m * k), "i"), (_buf("B", k * p), "i"), (_buf("C", m * p), "o")],
            ),
            {"A": A, "B": B},
            {"C": (A.reshape(m, k).astype(np.float64) @ B.reshape(k, p)).astype(np.float32).ravel()},
        )
    )

    bias, xs = v(cols), v(rows * cols)
    out.append(
        Case(
            "bias_relu",
            _one(
                "bias_relu",
                4,
                128,
                [Literal("i", rows), Literal("i", cols)],
                [(_buf("bias", cols), "i"), (_buf("x", rows * cols), "io")],
            ),
            {"bias": bias, "x": xs},
            {"x": np.maximum(xs.reshape(rows, cols) + bias, 0).ravel()},
        )
    )

    logits = 5 * v(rows * cols)
    e = np.exp(logits.reshape(rows, cols).astype(np.float64))
    out.append(
        Case(
            "softmax_rows",
            _one(
                "softmax_rows",
                3,
                50,
                [Literal("i", rows), Literal("i", cols)],
                [(_buf("x", rows * cols), "i"), (_buf("y", rows * cols), "o")],
            ),
            {"x": logits},
            {"y": (e / e.sum(axis=1, keepdims=True)).astype(np.float32).ravel()},
        )
    )

    Aj = v(n, n)
    Aj[np.diag_indices(n)] = np.abs(Aj).sum(axis=1) + 1
    bj, xj = v(n), v(n)
    d = np.diagonal(Aj).astype(np.float64)
    x_next = (bj - (Aj.astype(np.float64) @ xj - d * xj)) / d
    out.append(
        Case(
            "jacobi_step",
            _one(
                "jacobi_step",
                2,
                64,
                [Literal("i", n)],
                [(_buf("A", n * n), "i"), (_buf("b", n), "i"), (_buf("x", n), "i"), (_buf("xn", n), "o")],
            ),
            {"A": Aj.ravel(), "b": bj, "x": xj},
            {"xn": x_next.astype(np.float32)},
        )
    )

    xr = v(n)
    out.append(
        Case(
            "reduce_sum",
            _one("reduce_sum", 3, 200, [Literal("i", n)], [(_buf("x", n), "i"), (_buf("out", 1), "o")]),
            {"x": xr},
            {"out": np.array([xr.sum(dtype=np.float64)], np.float32)},
        )
    )
    return out


def compare(case: Case, got: dict, n: int) -> str | None:
    """None if ``got`` matches the case's expected outputs, else what differs."""
    if set(got) != set(case.expected):
        return f"{case.kernel}: outputs {sorted(got)}, expected {sorted(case.expected)}"
    for name, want in case.expected.items():
        have = np.asarray(got[name]).reshape(-1)
        tol = case.tolerance(n)
        if have.shape != want.shape or not np.allclose(have, want, **tol):
            worst = float(np.max(np.abs(have - want))) if have.shape == want.shape else float("nan")
            return f"{case.kernel}: output {name!r} differs from NumPy (max abs error {worst:.3g}, n={n})"
    return None

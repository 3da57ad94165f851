"""NumPy host twins of the built-in kernels (``builtin.cu``).

Each twin is ``twin(launch, *literals, *buffers)`` with buffers as 1-D typed views of device
memory; it writes its outputs in place and, like the kernels, ignores the launch shape.
Arithmetic is float32 (reduce_sum accumulates in float64, then rounds). A buffer too small for
the sizes given raises :class:`RequestError` where the kernel would read out of bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import RequestError


def _need(kernel: str, buf: np.ndarray, count: int, what: str) -> None:
    if buf.size < count:
        raise RequestError(
            f"builtin kernel {kernel!r}: buffer {what!r} holds {buf.size} elements, the sizes given need {count}"
        )


def fill(launch, n, v, y):
    n = max(n, 0)
    _need("fill", y, n, "y")
    y[:n] = np.float32(v)


def vadd(launch, n, a, b, c):
    n = max(n, 0)
    for buf, what in ((a, "a"), (b, "b"), (c, "c")):
        _need("vadd", buf, n, what)
    np.add(a[:n], b[:n], out=c[:n])


def axpy(launch, n, alpha, x, y):
    n = max(n, 0)
    _need("axpy", x, n, "x")
    _need("axpy", y, n, "y")
    y[:n] += np.float32(alpha) * x[:n]


def sgemm(launch, M, N, K, A, B, C):
    M, N, K = max(M, 0), max(N, 0), max(K, 0)
    _need("sgemm", A, M * K, "A")
    _need("sgemm", B, K * N, "B")
    _need("sgemm", C, M * N, "C")
    np.matmul(A[: M * K].reshape(M, K), B[: K * N].reshape(K, N), out=C[: M * N].reshape(M, N))


def bias_relu(launch, rows, cols, bias, x):
    rows, cols = max(rows, 0), max(cols, 0)
    _need("bias_relu", bias, cols if rows else 0, "bias")
    _need("bias_relu", x, rows * cols, "x")
    x2 = x[: rows * cols].reshape(rows, cols)
    np.maximum(x2 + bias[:cols], np.float32(0), out=x2)


def softmax_rows(launch, rows, cols, x, y):
    rows, cols = max(rows, 0), max(cols, 0)
    _need("softmax_rows", x, rows * cols, "x")
    _need("softmax_rows", y, rows * cols, "y")
    if rows * cols == 0:
        return
    x2 = x[: rows * cols].reshape(rows, cols)
    e = np.exp(x2 - x2.max(axis=1, keepdims=True))
    np.divide(e, e.sum(axis=1, keepdims=True), out=y[: rows * cols].reshape(rows, cols))


def jacobi_step(launch, n, A, b, x, x_next):
    n = max(n, 0)
    _need("jacobi_step", A, n * n, "A")
    for buf, what in ((b, "b"), (x, "x"), (x_next, "x_next")):
        _need("jacobi_step", buf, n, what)
    A2 = A[: n * n].reshape(n, n)
    d = np.diagonal(A2)
    off = A2 @ x[:n] - d * x[:n]
    with np.errstate(divide="ignore", invalid="ignore"):  # the device gives inf/nan too
        np.divide(b[:n] - off, d, out=x_next[:n])


def reduce_sum(launch, n, x, out):
    """``out[0] += sum(x[:n])``: out accumulates, as the kernel's atomicAdd does."""
    n = max(n, 0)
    _need("reduce_sum", x, n, "x")
    _need("reduce_sum", out, 1, "out")
    out[0] += np.float32(x[:n].sum(dtype=np.float64))


TWINS: dict[str, Callable[..., Any]] = {
    "fill": fill,
    "vadd": vadd,
    "axpy": axpy,
    "sgemm": sgemm,
    "bias_relu": bias_relu,
    "softmax_rows": softmax_rows,
    "jacobi_step": jacobi_step,
    "reduce_sum": reduce_sum,
}

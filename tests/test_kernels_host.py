"""The built-in kernels' NumPy host twins against straightforward references."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # a test-only dependency: without it the module skips, never errors
from hypothesis import given, settings
from hypothesis import strategies as st

from dask_kaas.kernels import LaunchConfig, builtin

LAUNCHES = [LaunchConfig(1, 1), LaunchConfig((3, 2), (7, 3)), LaunchConfig((4, 4), (16, 16))]
SIZES = [0, 1, 15, 16, 17, 33, 100, 257]


def run(kernel, literals, *arrays, launch=LAUNCHES[1]):
    """Run a twin through run_twin on uint8 copies; return the float32 results."""
    raw = [np.ascontiguousarray(a, dtype=np.float32).reshape(-1).view(np.uint8).copy() for a in arrays]
    builtin.run_twin(kernel, launch, literals, raw)
    return [r.view(np.float32) for r in raw]


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("n", SIZES)
def test_fill(n):
    (y,) = run("fill", [n, 2.5], np.zeros(n + 3, np.float32))
    assert np.all(y[:n] == 2.5) and not y[n:].any()


@pytest.mark.parametrize("n", SIZES)
def test_vadd(n):
    rng = np.random.default_rng(n)
    a, b = rand(rng, n), rand(rng, n)
    *_, c = run("vadd", [n], a, b, np.zeros(n, np.float32))
    np.testing.assert_array_equal(c, a + b)


@pytest.mark.parametrize("n", SIZES)
def test_axpy(n):
    rng = np.random.default_rng(n)
    x, y0 = rand(rng, n), rand(rng, n)
    _, y = run("axpy", [n, 0.75], x, y0)
    np.testing.assert_allclose(y, y0 + np.float32(0.75) * x, rtol=1e-6)


@pytest.mark.parametrize("M, N, K", [(0, 3, 2), (1, 1, 1), (16, 16, 16), (17, 5, 33), (31, 40, 7), (64, 48, 80)])
def test_sgemm(M, N, K):
    rng = np.random.default_rng(M * 100 + N)
    A, B = rand(rng, M, K), rand(rng, K, N)
    *_, C = run("sgemm", [M, N, K], A, B, np.full(M * N, np.nan, np.float32), launch=LaunchConfig((2, 3), (16, 16)))
    np.testing.assert_allclose(C.reshape(M, N), A.astype(np.float64) @ B, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows, cols", [(0, 4), (1, 1), (5, 17), (16, 16), (33, 100)])
def test_bias_relu(rows, cols):
    rng = np.random.default_rng(rows + cols)
    bias, x0 = rand(rng, cols), rand(rng, rows, cols)
    _, x = run("bias_relu", [rows, cols], bias, x0)
    np.testing.assert_array_equal(x.reshape(rows, cols), np.maximum(x0 + bias, 0))


@pytest.mark.parametrize("rows, cols", [(0, 3), (1, 1), (3, 17), (16, 16), (9, 1000)])
def test_softmax_rows(rows, cols):
    rng = np.random.default_rng(rows * cols)
    x = rand(rng, rows, cols) * 30 + 500  # large values: needs the max subtraction
    _, y = run("softmax_rows", [rows, cols], x, np.zeros(rows * cols, np.float32))
    xd = x.astype(np.float64)
    ref = np.exp(xd - xd.max(axis=1, keepdims=True))
    ref /= ref.sum(axis=1, keepdims=True)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y.reshape(rows, cols), ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", [1, 2, 15, 17, 64])
def test_jacobi_step(n):
    rng = np.random.default_rng(n)
    A = rand(rng, n, n) + np.eye(n, dtype=np.float32) * (n + 1)
    b, x = rand(rng, n), rand(rng, n)
    *_, x_next = run("jacobi_step", [n], A, b, x, np.zeros(n, np.float32))
    ref = np.empty(n)
    for i in range(n):
        s = sum(float(A[i, j]) * float(x[j]) for j in range(n) if j != i)
        ref[i] = (b[i] - s) / A[i, i]
    np.testing.assert_allclose(x_next, ref, rtol=1e-4, atol=1e-5)


def test_jacobi_converges():
    rng = np.random.default_rng(0)
    n = 20
    A = rand(rng, n, n) + np.eye(n, dtype=np.float32) * 3 * n
    want = rand(rng, n)
    b = (A.astype(np.float64) @ want).astype(np.float32)
    x = np.zeros(n, np.float32)
    for _ in range(50):
        *_, x = run("jacobi_step", [n], A, b, x, np.zeros(n, np.float32))
    np.testing.assert_allclose(x, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", SIZES)
def test_reduce_sum(n):
    rng = np.random.default_rng(n)
    x = rand(rng, n)
    _, out = run("reduce_sum", [n], x, np.zeros(1, np.float32))
    np.testing.assert_allclose(out[0], x.astype(np.float64).sum(), rtol=1e-5, atol=1e-5)


def test_reduce_sum_accumulates():
    x = np.ones(10, np.float32)
    _, out = run("reduce_sum", [10], x, np.array([5.0], np.float32))
    assert out[0] == 15.0


@pytest.mark.parametrize("launch", LAUNCHES)
def test_twins_ignore_launch_shape(launch):
    rng = np.random.default_rng(1)
    a, b = rand(rng, 50), rand(rng, 50)
    *_, c = run("vadd", [50], a, b, np.zeros(50, np.float32), launch=launch)
    np.testing.assert_array_equal(c, a + b)


def test_every_builtin_kernel_has_a_twin():
    for name in builtin.kernels:
        assert callable(builtin.twin(name)), name


def test_short_buffer_is_refused():
    with pytest.raises(ValueError, match="'c'"):
        run("vadd", [8], np.zeros(8), np.zeros(8), np.zeros(4))


@settings(max_examples=40, deadline=None)
@given(M=st.integers(0, 40), N=st.integers(0, 40), K=st.integers(0, 40), seed=st.integers(0, 2**16))
def test_sgemm_property(M, N, K, seed):
    rng = np.random.default_rng(seed)
    A, B = rand(rng, M, K), rand(rng, K, N)
    *_, C = run("sgemm", [M, N, K], A, B, np.zeros(M * N, np.float32))
    np.testing.assert_allclose(C.reshape(M, N), A.astype(np.float64) @ B, rtol=1e-4, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(data=st.lists(st.floats(-1e3, 1e3, width=32), max_size=300), extra=st.integers(0, 7))
def test_run_twin_truncates_trailing_bytes(data, extra):
    n = len(data)
    x = np.array(data, np.float32)
    raw_x = np.concatenate([x.view(np.uint8), np.full(extra, 0xFF, np.uint8)])
    out = np.zeros(4 + extra, np.uint8)
    builtin.run_twin("reduce_sum", LaunchConfig(1, 1), [n], [raw_x, out])
    np.testing.assert_allclose(out[:4].view(np.float32)[0], x.astype(np.float64).sum(), rtol=1e-5, atol=1e-3)
    assert not out[4:].any()

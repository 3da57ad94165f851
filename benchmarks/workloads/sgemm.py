"""A chain of GEMMs with large const matrices: y = ((x @ W1) @ W2) @ W3, each W const n x n.

``x`` (batch x n) is passed in the call; the three weights stay cached on the
device; the two intermediates are device temporaries. Checked against NumPy.
"""

from __future__ import annotations

import numpy as np

from dask_kaas import BufferSpec, KernelSpec, Literal, Request

from .base import Workload

F32 = 4


def chain_request(prefix: str, n: int, batch: int, depth: int, tenant: str) -> Request:
    x = BufferSpec("x", batch * n * F32, dtype="float32", shape=(batch, n), ephemeral=True)
    ws = [
        BufferSpec(f"w{i + 1}", n * n * F32, key=f"{prefix}/w{i + 1}", const=True, dtype="float32")
        for i in range(depth)
    ]
    temps = [BufferSpec(f"t{i + 1}", batch * n * F32) for i in range(depth - 1)]
    y = BufferSpec("y", batch * n * F32, dtype="float32", shape=(batch, n), ephemeral=True)
    grid = (max(1, min(65535, -(-n // 16))), max(1, min(65535, -(-batch // 16))))
    kernels, src = [], (x, "i")
    for i, w in enumerate(ws):
        dst = (temps[i], "t") if i < depth - 1 else (y, "o")
        kernels.append(
            KernelSpec(
                "builtin",
                "sgemm",
                grid,
                (16, 16),
                literals=[Literal("i", batch), Literal("i", n), Literal("i", n)],
                arguments=[src, (w, "i"), dst],
            )
        )
        src = (dst[0], "t")
    return Request(kernels, tenant=tenant)


def forward(inputs: dict, consts: dict) -> np.ndarray:
    y = inputs["x"]
    for i in range(1, len(consts) + 1):
        y = y @ consts[f"w{i}"]
    return y


def _reference(inputs: dict, consts: dict) -> np.ndarray:
    y = inputs["x"].astype(np.float64)
    for i in range(1, len(consts) + 1):
        y = y @ consts[f"w{i}"].astype(np.float64)
    return y


def setup(quick: bool, seed: int = 0) -> Workload:
    n, batch, depth = (512, 32, 3) if quick else (1024, 64, 3)
    rng = np.random.default_rng(seed + 1)
    consts = {f"w{i + 1}": (rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32) for i in range(depth)}
    cases = [{"x": rng.standard_normal((batch, n)).astype(np.float32)} for _ in range(4)]
    tenant, prefix = "bench-sgemm", "bench/sgemm"
    w = Workload(
        name="sgemm",
        tenant=tenant,
        prefix=prefix,
        request=chain_request(prefix, n, batch, depth, tenant),
        output="y",
        consts=consts,
        cases=cases,
        numpy_fn=forward,
        rtol=1e-3,
        atol=1e-3,
        parameters={
            "n": n,
            "batch": batch,
            "depth": depth,
            "const_bytes": depth * n * n * F32,
            "flops_per_request": 2 * batch * n * n * depth,
        },
    )
    w.expected = [_reference(c, consts).astype(np.float32) for c in cases]  # float64 truth
    return w

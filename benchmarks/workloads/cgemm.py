"""Complex GEMM from real kernels, as in the original KaaS benchmarks.

(A + iB)(C + iD) = (AC - BD) + i(AD + BC): ``A``, ``B`` (m x k) are passed in
the call, ``C``, ``D`` (k x n) are consts. Kernels: ``sgemm`` A@C -> re;
``sgemm`` B@D -> bd; ``axpy`` re += -1 * bd; ``sgemm`` A@D -> ad; ``sgemm``
B@C -> bc; ``vadd`` im = ad + bc. Checked against NumPy complex matmul.
"""

from __future__ import annotations

import numpy as np

from dask_kaas import BufferSpec, KernelSpec, Literal, Request

from .base import Workload

F32 = 4


def cgemm_request(prefix: str, m: int, k: int, n: int, tenant: str) -> Request:
    a = BufferSpec("A", m * k * F32, dtype="float32", shape=(m, k), ephemeral=True)
    b = BufferSpec("B", m * k * F32, dtype="float32", shape=(m, k), ephemeral=True)
    c = BufferSpec("C", k * n * F32, key=f"{prefix}/C", const=True, dtype="float32")
    d = BufferSpec("D", k * n * F32, key=f"{prefix}/D", const=True, dtype="float32")
    re = BufferSpec("re", m * n * F32, dtype="float32", shape=(m, n), ephemeral=True)
    im = BufferSpec("im", m * n * F32, dtype="float32", shape=(m, n), ephemeral=True)
    bd, ad, bc = (BufferSpec(name, m * n * F32) for name in ("bd", "ad", "bc"))
    grid = (max(1, min(65535, -(-n // 16))), max(1, min(65535, -(-m // 16))))
    lits = [Literal("i", m), Literal("i", n), Literal("i", k)]
    size = m * n
    vgrid = max(1, min(1024, -(-size // 256)))

    def gemm(x, y, out):
        return KernelSpec("builtin", "sgemm", grid, (16, 16), literals=lits, arguments=[(x, "i"), (y, "i"), out])

    return Request(
        [
            gemm(a, c, (re, "o")),
            gemm(b, d, (bd, "t")),
            KernelSpec(
                "builtin",
                "axpy",
                vgrid,
                256,
                literals=[Literal("i", size), Literal("f", -1.0)],
                arguments=[(bd, "t"), (re, "io")],
            ),
            gemm(a, d, (ad, "t")),
            gemm(b, c, (bc, "t")),
            KernelSpec(
                "builtin",
                "vadd",
                vgrid,
                256,
                literals=[Literal("i", size)],
                arguments=[(ad, "t"), (bc, "t"), (im, "o")],
            ),
        ],
        tenant=tenant,
    )


def forward(inputs: dict, consts: dict) -> np.ndarray:
    """NumPy complex matmul, returned as (2, m, n) float32: real and imaginary parts."""
    z = (inputs["A"] + 1j * inputs["B"]) @ (consts["C"] + 1j * consts["D"])
    return np.stack([z.real, z.imag]).astype(np.float32)


class CgemmWorkload(Workload):
    def check(self, case: int, result):
        if isinstance(result, dict) and "re" in result and "im" in result:
            result = np.stack([result["re"], result["im"]])
        return super().check(case, result)


def setup(quick: bool, seed: int = 0) -> CgemmWorkload:
    m, k, n = (64, 256, 256) if quick else (128, 512, 512)
    rng = np.random.default_rng(seed + 3)
    scale = 1 / np.sqrt(k)
    consts = {name: (rng.standard_normal((k, n)) * scale).astype(np.float32) for name in ("C", "D")}
    cases = [{name: rng.standard_normal((m, k)).astype(np.float32) for name in ("A", "B")} for _ in range(4)]
    tenant, prefix = "bench-cgemm", "bench/cgemm"
    w = CgemmWorkload(
        name="cgemm",
        tenant=tenant,
        prefix=prefix,
        request=cgemm_request(prefix, m, k, n, tenant),
        output="re+im",
        consts=consts,
        cases=cases,
        numpy_fn=forward,
        rtol=1e-3,
        atol=1e-4,
        parameters={"m": m, "k": k, "n": n, "kernels": ["sgemm", "sgemm", "axpy", "sgemm", "sgemm", "vadd"]},
    )
    return w

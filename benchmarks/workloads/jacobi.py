"""Iterative solve: ``demo.jacobi_request`` (two ``jacobi_step`` kernels, ``n_iter`` sweeps) on a
strictly diagonally dominant const A; checked against NumPy's Jacobi iteration and against
``numpy.linalg.solve`` (relative error and residual of the KaaS solution).
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import WrongResult
from dask_kaas.demo import jacobi_reference, jacobi_request

from .base import Workload

TOL = 1e-4  # relative error of the KaaS solution vs numpy.linalg.solve


def forward(inputs: dict, consts: dict) -> np.ndarray:
    return jacobi_reference(consts["A"], inputs["b"], inputs["x"], consts["steps"].item()).astype(np.float32)


class JacobiWorkload(Workload):
    def check(self, case: int, result) -> np.ndarray:
        got = super().check(case, result)
        a = self.consts["A"].astype(np.float64)
        b = self.cases[case]["b"].astype(np.float64)
        exact = np.linalg.solve(a, b)
        rel = float(np.linalg.norm(got - exact) / np.linalg.norm(exact))
        if rel > TOL:
            raise WrongResult(f"jacobi: case {case}: relative error {rel:.2e} vs numpy.linalg.solve (> {TOL})")
        return got

    def summary(self, outputs: dict[int, np.ndarray]) -> dict:
        a = self.consts["A"].astype(np.float64)
        rel, res = [], []
        for i, got in outputs.items():
            b = self.cases[i]["b"].astype(np.float64)
            exact = np.linalg.solve(a, b)
            rel.append(float(np.linalg.norm(got - exact) / np.linalg.norm(exact)))
            res.append(float(np.linalg.norm(a @ got - b) / np.linalg.norm(b)))
        return {"max_relative_error_vs_solve": max(rel), "max_relative_residual": max(res), "tolerance": TOL}


def setup(quick: bool, seed: int = 0) -> JacobiWorkload:
    n, sweeps = (256, 15) if quick else (1024, 25)
    rng = np.random.default_rng(seed + 2)
    a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    a[np.diag_indices(n)] = np.abs(a).sum(axis=1) + 1.0  # strictly diagonally dominant: Jacobi converges
    tenant, prefix = "bench-jacobi", "bench/jacobi"
    request = jacobi_request(f"{prefix}/A", n, sweeps, tenant)
    cases = [{"b": rng.standard_normal(n).astype(np.float32), "x": np.zeros(n, np.float32)} for _ in range(4)]
    # "steps" travels with the consts to the NumPy baseline; only "A" is stored (see suite: stored_consts)
    consts = {"A": a, "steps": np.array(2 * sweeps)}
    w = JacobiWorkload(
        name="jacobi",
        tenant=tenant,
        prefix=prefix,
        request=request,
        output="x",
        consts=consts,
        cases=cases,
        numpy_fn=forward,
        rtol=1e-3,
        atol=1e-5,
        parameters={"n": n, "sweeps": sweeps, "jacobi_steps": 2 * sweeps, "n_iter": sweeps},
    )
    w.stored = ("A",)
    return w

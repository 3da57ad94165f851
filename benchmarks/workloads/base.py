"""What a benchmark workload is: a KaaS request, its consts, its cases, a NumPy reference and a check."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from benchmarks.common import WrongResult
from dask_kaas import Request


@dataclass
class Workload:
    """One workload of the ``workloads`` suite.

    ``consts`` maps a buffer name to its value; it is stored under ``prefix/name`` in
    the ``tenant``'s namespace and read by ``request`` as const buffers (cached on
    the device). ``cases`` are the call inputs of successive requests. ``numpy_fn``
    (a module-level function, so that it pickles to workers) computes the same
    output from ``(inputs, consts)`` with NumPy: the reference for the check and
    the work of the plain-Dask baseline, which on a GPU calls it with CuPy arrays (so it must
    dispatch through NumPy's functions, ufuncs and operators, never convert to NumPy).
    """

    name: str
    tenant: str
    prefix: str
    request: Request
    output: str
    consts: dict[str, np.ndarray]
    cases: list[dict[str, np.ndarray]]
    numpy_fn: Callable[[dict, dict], np.ndarray]
    rtol: float = 1e-4
    atol: float = 1e-5
    parameters: dict = field(default_factory=dict)
    expected: list[np.ndarray] = field(default_factory=list)
    stored: tuple = ()  # the consts put in the store (default: all of them)

    def __post_init__(self):
        if not self.expected:
            self.expected = [np.asarray(self.numpy_fn(case, self.consts)) for case in self.cases]

    def stored_consts(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.consts.items() if not self.stored or k in self.stored}

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def check(self, case: int, result: Any) -> np.ndarray:
        """The output of a KaaS result for ``cases[case]``; WrongResult unless it matches the reference."""
        got = result.get(self.output) if isinstance(result, dict) else result
        want = self.expected[case]
        if got is None:
            raise WrongResult(f"{self.name}: case {case}: the result has no output {self.output!r}")
        got = np.asarray(got)
        if got.shape != want.shape:
            raise WrongResult(f"{self.name}: case {case}: output shape {got.shape}, expected {want.shape}")
        if not np.all(np.isfinite(got)):
            raise WrongResult(f"{self.name}: case {case}: non-finite values in the output")
        if not np.allclose(got, want, rtol=self.rtol, atol=self.atol):
            err = float(np.max(np.abs(got.astype(np.float64) - want)))
            raise WrongResult(
                f"{self.name}: case {case}: max abs error {err:.3g} vs the NumPy reference "
                f"(rtol {self.rtol}, atol {self.atol})"
            )
        return got

    def summary(self, outputs: dict[int, np.ndarray]) -> dict:
        """Workload-specific figures computed from the KaaS outputs by case (e.g. accuracy); may raise WrongResult."""
        return {}


def run_cached(
    fn,
    inputs: dict,
    url: str,
    tenant: str,
    keys: dict,
    capacity: int | None,
    device: str,
    travelling: dict,
    pool_bytes: int | None = None,
) -> np.ndarray:
    """The fair baselines' task: the workload's consts from this worker's cache of the store
    (``benchmarks.baselines``, bounded by ``capacity`` bytes or not), then the same computation;
    on cuda with the inputs copied to the GPU, in the baselines' own pool of ``pool_bytes``."""
    from benchmarks.baselines import allocator, to_device, to_host, weights

    with allocator(device, pool_bytes):
        consts, _ = weights(url, tenant, keys, capacity, device)
        args = {k: to_device(v, device) for k, v in inputs.items()}
        travelling = {k: to_device(v, device) for k, v in travelling.items()}
        return to_host(fn(args, {**travelling, **consts}))

"""The ``workloads`` suite: MLP on digits, a GEMM chain, a Jacobi solve and complex GEMM, each as KaaS
requests on a LocalKaasCluster next to the same NumPy work as plain Dask tasks; every result checked.

    python -m benchmarks workloads [--device auto|host|cuda] [--quick]
"""

from .suite import SUITE, WORKLOADS

__all__ = ["SUITE", "WORKLOADS"]

"""Solve A x = b by Jacobi iteration on a KaaS cluster, checked against numpy.linalg.solve.

    python examples/jacobi.py [--n 256] [--sweeps 25] [--systems 4] [--device host]

The matrix ``A`` is a const buffer in the store (loaded once per device, then
cached); each request carries its own right-hand side ``b`` and start ``x``, and
runs ``2 * sweeps`` Jacobi steps (two kernels, repeated ``n_iter = sweeps``
times). Exits non-zero if any solution is wrong.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np
from distributed import Client

from dask_kaas import LocalKaasCluster, worker_stats
from dask_kaas.demo import jacobi_request

TOLERANCE = 1e-4  # relative, on the error against numpy.linalg.solve and on the residual


def make_system(n: int, seed: int = 0) -> np.ndarray:
    """A strictly diagonally dominant matrix, so Jacobi converges."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (n, n)).astype(np.float32)
    a[np.diag_indices(n)] = np.abs(a).sum(axis=1) + 1.0
    return a


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="unknowns")
    parser.add_argument("--sweeps", type=int, default=25, help="n_iter: each iteration is two Jacobi steps")
    parser.add_argument("--systems", type=int, default=4, help="right-hand sides, one request each")
    parser.add_argument("--device", default="host", help="host, cuda or auto")
    args = parser.parse_args(argv)

    a = make_system(args.n)
    rng = np.random.default_rng(1)
    rhs = [rng.standard_normal(args.n).astype(np.float32) for _ in range(args.systems)]
    request = jacobi_request("jacobi/A", args.n, args.sweeps, tenant="jacobi")
    a64 = a.astype(np.float64)
    failures = 0
    with (
        tempfile.TemporaryDirectory(prefix="kaas-jacobi-") as directory,
        LocalKaasCluster(
            n_workers=2, device=args.device, store=f"file://{directory}", dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        cluster.store.put("jacobi/A", a, namespace="jacobi")
        futures = [client.submit(request, b=b, x=np.zeros(args.n, np.float32), pure=False) for b in rhs]
        for i, (b, result) in enumerate(zip(rhs, client.gather(futures))):
            x = result["x"].astype(np.float64)
            exact = np.linalg.solve(a64, b.astype(np.float64))
            error = np.linalg.norm(x - exact) / np.linalg.norm(exact)
            residual = np.linalg.norm(a64 @ x - b) / np.linalg.norm(b)
            ok = bool(np.isfinite(error) and error < TOLERANCE and residual < TOLERANCE)
            failures += not ok
            print(
                f"system {i}: {2 * args.sweeps} steps, error vs solve {error:.2e}, residual {residual:.2e}"
                f" {'ok' if ok else 'WRONG'}"
            )
        stats = worker_stats(client)
        print(
            f"const A loaded {sum(s['compulsory_misses'] for s in stats.values())} time(s), "
            f"served from a device cache {sum(s['hits'] for s in stats.values())} time(s)"
        )
    if failures:
        print(f"{failures} of {len(rhs)} solutions are wrong", file=sys.stderr)
        return 1
    print("all solutions agree with numpy.linalg.solve")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Requests shared by several test modules."""

from dask_kaas import BufferSpec, KernelSpec, Literal, Request

F = 4


def matvec_request(key, n=64, tenant=None, *, n_iter=1, deadline=None):
    """y = x @ A (``n_iter`` times over) with A an n x n const read from the store under ``key``."""
    x = BufferSpec("x", n * F, dtype="float32", ephemeral=True)
    a = BufferSpec("A", n * n * F, key=key, const=True)
    y = BufferSpec("y", n * F, dtype="float32", ephemeral=True)
    k = KernelSpec(
        "builtin",
        "sgemm",
        (-(-n // 16), 1),
        (16, 16),
        literals=[Literal("i", 1), Literal("i", n), Literal("i", n)],
        arguments=[(x, "i"), (a, "i"), (y, "o")],
    )
    return Request([k], tenant=tenant, n_iter=n_iter, deadline=deadline)


def kaas_dict():
    """A request dict in the original KaaS's format (type_list, gridDim, nIter, ...)."""
    return {
        "kernels": [
            {
                "library": "builtin",
                "kernel": "axpy",
                "arguments": [
                    {"name": "x", "size": 40, "ephemeral": True},
                    {"name": "y", "size": 40, "ephemeral": True},
                ],
                "type_list": ["i", "io"],
                "gridDim": [1, 1, 1],
                "blockDim": [32, 1, 1],
                "sharedSize": 0,
                "literals": [{"type": "i", "val": 10}, {"type": "f", "val": 3.0}],
            }
        ],
        "nIter": 2,
    }

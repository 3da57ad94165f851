"""What identifies a request: its content token (Dask's key, the function repository's check) and its
shape token (requests that cost the same, which the scheduler predicts runtimes by)."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Request
    from .specs import KernelSpec

__all__ = ["content_token", "library_id", "shape_token"]


def library_id(kernel: KernelSpec) -> str:
    """A kernel's library as identity sees it: a registered library's name, else the library's own hash."""
    return kernel.library if isinstance(kernel.library, str) else kernel.library.hash


def shape_token(request: Request) -> str:
    """Same kernels, launch shapes, literals, buffer sizes and ``n_iter`` (not keys, names or tenant)."""
    parts: list[Any] = [request.n_iter]
    for k in request.kernels:
        parts.append(
            [
                library_id(k),
                k.kernel,
                k.grid,
                k.block,
                k.shared,
                [(lit.type, lit.value) for lit in k.literals],
                [(b.size, io) for b, io in k.arguments],
            ]
        )
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def content_token(request: Request) -> str:
    """A stable hash of the whole request (:meth:`Request.to_dict`, libraries by :func:`library_id`)."""
    payload = request.to_dict()
    for kd, k in zip(payload["kernels"], request.kernels):
        kd["library"] = library_id(k)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

"""Requests: what a tenant asks a GPU to do, as data.

=============  =======================================================================
``specs``      :class:`BufferSpec`, :class:`Literal`, :class:`KernelSpec`, each checked when built
``model``      :class:`Request`: kernels in order, buffer roles, call inputs, identity, pickling
``parse``      requests from dicts and JSON (ours and the original KaaS format), as hostile input
``call``       which runtime a called request runs on
=============  =======================================================================
"""

from .model import BufferRole, Request
from .specs import IO_CODES, LITERAL_TYPES, BufferSpec, KernelSpec, Literal

__all__ = [
    "IO_CODES",
    "LITERAL_TYPES",
    "BufferRole",
    "BufferSpec",
    "KernelSpec",
    "Literal",
    "Request",
    "request_from_dict",
    "request_from_json",
]


def request_from_dict(d) -> Request:
    """:meth:`Request.from_dict`."""
    return Request.from_dict(d)


def request_from_json(text) -> Request:
    """:meth:`Request.from_json`."""
    return Request.from_json(text)

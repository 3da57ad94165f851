"""Requests from JSON-shaped dicts (ours and the original KaaS format), read as hostile input.

A request dict can come from any tenant, so nothing in it is trusted:

- every malformed field is a :class:`RequestError` whose message starts with the path of the
  field (``kernels[1].arguments[0]``) and shows at most a few dozen characters of it;
- it can name no Python code: a library given inline carries CUDA source or a binary, and host
  twins only through a registered library or a module the operator allows
  (``kaas.twins.allowed-modules``, see :meth:`dask_kaas.Library.from_dict`);
- a library named by path must lie in a directory of ``kaas.library-paths``; otherwise library
  strings are registered names;
- sizes, counts and nesting are bounded, so no string or size in it can take a worker down.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .. import config
from ..errors import KaasError, RequestError
from ..names import show
from .specs import BufferSpec, KernelSpec, Literal

if TYPE_CHECKING:  # the request class is passed in: it builds itself from what is parsed here
    from .model import Request

MAX_JSON_BYTES = 64 * 2**20
MAX_BUFFERS = 4096

_OURS = ("kernels", "buffers", "n_iter", "tenant", "deadline")
_KAAS = ("kernels", "nIter", "n_iter", "tenant", "deadline")
_OUR_KERNEL = ("library", "kernel", "grid", "block", "shared", "literals", "arguments")
_KAAS_KERNEL = ("library", "kernel", "arguments", "type_list", "gridDim", "blockDim", "sharedSize", "literals")


@contextmanager
def _at(path: str):
    """Prefix any error raised inside with the path of the field being read."""
    try:
        yield
    except RequestError as e:
        raise RequestError(f"{path}: {e}") from None
    except KaasError as e:  # a library that cannot be built, say: still the tenant's input
        raise RequestError(f"{path}: {type(e).__name__}: {e}") from None
    except RecursionError:
        raise RequestError(f"{path}: nested too deeply") from None


def _mapping(value, path: str, fields) -> Mapping:
    if not isinstance(value, Mapping):
        raise RequestError(f"{path}: expected an object, got {show(value)}")
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise RequestError(f"{path}: unknown field(s) {show(unknown)}; known: {', '.join(fields)}")
    return value


def _list(value, path: str, most: int) -> list:
    if not isinstance(value, (list, tuple)):
        raise RequestError(f"{path}: expected a list, got {show(value)}")
    if len(value) > most:
        raise RequestError(f"{path}: {len(value)} entries, more than {most}")
    return list(value)


def request_from_json(text, cls: type[Request]) -> Request:
    """The ``cls`` instance a JSON text describes (either format)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"request: not UTF-8 ({e.reason} at byte {e.start})") from None
    if not isinstance(text, str):
        raise RequestError(f"request: expected JSON text, got {type(text).__name__}")
    if len(text) > MAX_JSON_BYTES:
        raise RequestError(f"request: {len(text)} characters of JSON, more than {MAX_JSON_BYTES}")
    try:
        d = json.loads(text)
    except RecursionError:
        raise RequestError("request: JSON nested too deeply") from None
    except ValueError as e:
        raise RequestError(f"request: not valid JSON ({show(str(e), 120)})") from None
    return request_from_dict(d, cls)


def request_from_dict(d, cls: type[Request]) -> Request:
    """The ``cls`` instance ``d`` describes: :meth:`Request.to_dict` output or the original KaaS format."""
    if not isinstance(d, Mapping) or "kernels" not in d:
        raise RequestError(f"request: expected an object with a 'kernels' list, got {show(d)}")
    ours = "buffers" in d
    _mapping(d, "request", _OURS if ours else _KAAS)
    limits = config.get("limits")
    kernels = _list(d["kernels"], "kernels", limits["kernels"])
    if ours:
        buffers = _buffers(_list(d["buffers"], "buffers", MAX_BUFFERS))
        specs = [_our_kernel(k, f"kernels[{i}]", buffers) for i, k in enumerate(kernels)]
    else:
        specs = [_kaas_kernel(k, f"kernels[{i}]") for i, k in enumerate(kernels)]
    n_iter_field = "n_iter" if "n_iter" in d or ours else "nIter"
    with _at("request"):
        return cls(specs, n_iter=d.get(n_iter_field, 1), tenant=d.get("tenant"), deadline=d.get("deadline"))


def _buffers(items: list) -> dict[str, BufferSpec]:
    by_name: dict[str, BufferSpec] = {}
    for i, item in enumerate(items):
        with _at(f"buffers[{i}]"):
            spec = BufferSpec.from_dict(item)
        known = by_name.get(spec.name)
        if known is not None and known != spec:
            raise RequestError(
                f"buffers[{i}]: buffer {spec.name!r} is declared twice with different specs ({known} and {spec})"
            )
        by_name[spec.name] = spec
    return by_name


def _launch_fields(k: Mapping, path: str, names: tuple[str, str, str]) -> tuple:
    grid, block, shared = names
    for required in ("library", "kernel", grid, block):
        if required not in k:
            raise RequestError(f"{path}: the kernel has no {required!r}")
    literals = _list(k.get("literals", []), f"{path}.literals", 64)
    with _at(f"{path}.literals"):
        literals = [Literal.from_dict(lit) for lit in literals]
    return _library(k["library"], f"{path}.library"), k[grid], k[block], k.get(shared, 0), literals


def _our_kernel(k, path: str, buffers: Mapping[str, BufferSpec]) -> KernelSpec:
    _mapping(k, path, _OUR_KERNEL)
    library, grid, block, shared, literals = _launch_fields(k, path, ("grid", "block", "shared"))
    args = []
    for j, arg in enumerate(_list(k.get("arguments", []), f"{path}.arguments", 256)):
        where = f"{path}.arguments[{j}]"
        if not isinstance(arg, (list, tuple)) or len(arg) != 2 or not isinstance(arg[0], str):
            raise RequestError(f"{where}: expected [buffer name, io], got {show(arg)}")
        name, io = arg
        if name not in buffers:
            raise RequestError(f"{where}: buffer {show(name)} is not in the request's buffers")
        args.append((buffers[name], io))
    with _at(path):
        return KernelSpec(library, k["kernel"], grid, block, shared=shared, literals=literals, arguments=args)


def _kaas_kernel(k, path: str) -> KernelSpec:
    _mapping(k, path, _KAAS_KERNEL)
    library, grid, block, shared, literals = _launch_fields(k, path, ("gridDim", "blockDim", "sharedSize"))
    arguments = _list(k.get("arguments", []), f"{path}.arguments", 256)
    types = _list(k.get("type_list", []), f"{path}.type_list", 256)
    if len(types) != len(arguments):
        raise RequestError(f"{path}: {len(arguments)} arguments but {len(types)} entries in type_list")
    args = []
    for j, (buf, io) in enumerate(zip(arguments, types)):
        with _at(f"{path}.arguments[{j}]"):
            args.append((BufferSpec.from_dict(buf), io))
    with _at(path):
        return KernelSpec(library, k["kernel"], grid, block, shared=shared, literals=literals, arguments=args)


def _library(value, path: str):
    """A library field: a registered name, a path inside ``kaas.library-paths``, or an inline
    library (:meth:`Library.from_dict`)."""
    from ..kernels.library import KINDS, Library
    from ..kernels.registry import registered_libraries

    if isinstance(value, Mapping):
        with _at(path):
            return Library.from_dict(value)
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise RequestError(f"{path}: expected a library name or object, got {show(value)}")
    if value in registered_libraries():
        return value
    if os.path.splitext(value)[1].lower() in KINDS:
        return _allowed_path(value, path)
    names = ", ".join(sorted(registered_libraries()))
    raise RequestError(f"{path}: unknown kernel library {show(value)}; registered libraries are {names}")


def _allowed_path(value: str, path: str) -> str:
    try:
        real = os.path.realpath(os.path.expanduser(value))
    except (ValueError, OSError):
        raise RequestError(f"{path}: cannot read {show(value)} as a path") from None
    roots = [os.path.realpath(os.path.expanduser(str(p))) for p in config.get_list("library-paths")]
    if not any(os.path.commonpath([real, root]) == root for root in roots):
        raise RequestError(
            f"{path}: library file {show(value)} is not inside a directory of kaas.library-paths "
            f"({', '.join(roots) or 'none configured'}); request dicts name registered libraries, "
            "inline libraries, or files an operator allows"
        )
    return real

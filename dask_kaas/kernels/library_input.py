"""What a kernel library given inside a request dict may hold: tenant input, so no Python code and no file.

Host twins only from modules listed in ``kaas.twins.allowed-modules`` (each a function defined
there), NVRTC options that change code generation only, sources that ``#include`` only NVRTC's
own headers, binaries as bounded base64. Each check returns the validated value or raises
:class:`RequestError` naming the library and the rule.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import re
from collections.abc import Callable, Mapping

from .. import config
from ..errors import RequestError
from ..names import show, text_problem
from .launch import dims

MAX_SOURCE = 4 * 2**20
MAX_BINARY = 64 * 2**20
_LIBRARY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def library_name(name) -> str:
    """A library's name from a dict: bounded text of letters, digits, '_', '.' or '-'."""
    problem = text_problem(name, "library name")
    if problem is None and not _LIBRARY_NAME.match(name):
        problem = f"library name must be letters, digits, '_', '.' or '-', got {show(name)}"
    if problem:
        raise RequestError(problem)
    return name


# NVRTC options a tenant may pass: code generation only, nothing that names a file or directory.
_SAFE_OPTIONS = re.compile(
    r"^(-D[A-Za-z_]\w*(=[\w.+-]*)?|--define-macro=[A-Za-z_]\w*(=[\w.+-]*)?|-U[A-Za-z_]\w*|"
    r"--use_fast_math|-use_fast_math|-lineinfo|--generate-line-info|-G|--device-debug|"
    r"--(fmad|ftz|prec-div|prec-sqrt|extra-device-vectorization|restrict)(=(true|false))?|"
    r"-(fmad|ftz|prec-div|prec-sqrt)=(true|false)|--std=c\+\+(11|14|17|20)|-std=c\+\+(11|14|17|20)|"
    r"--maxrregcount=\d{1,3}|-maxrregcount=\d{1,3}|-default-device|--default-device)$"
)
_INCLUDE = re.compile(r"^[ \t]*#[ \t]*include[ \t]*(.*)$", re.M)
_NVRTC_HEADER = re.compile(r"^<[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*(\.h|\.hpp|\.cuh)?>\s*(//.*)?$")


def allowed_twins(value, where: str) -> dict[str, Callable]:
    """Host twins named by ``"module:function"`` in a library dict, from allowed modules only."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > 1024:
        raise RequestError(f"{where}: twins must map kernel names to 'module:function', got {show(value)}")
    allowed = set(config.get_list("twins.allowed-modules"))
    twins = {}
    for kernel, spec in value.items():
        problem = text_problem(kernel, "twin kernel name") or text_problem(spec, f"twin of {show(kernel)}")
        if problem:
            raise RequestError(f"{where}: {problem}")
        module, sep, qualname = spec.partition(":")
        if not sep or module not in allowed or not qualname.isidentifier() or qualname.startswith("_"):
            raise RequestError(
                f"{where}: host twin {show(spec)} of kernel {kernel!r} is not allowed: a request cannot name "
                f"Python code. Register the library on the workers (dask_kaas.register_library), or list its "
                f"module in kaas.twins.allowed-modules (now: {', '.join(sorted(allowed)) or 'none'})"
            )
        fn = getattr(importlib.import_module(module), qualname, None)
        if not callable(fn) or getattr(fn, "__module__", None) != module:
            raise RequestError(f"{where}: {show(spec)} is not a function defined in module {module!r}")
        twins[kernel] = fn
    return twins


def constraints(value, where: str):
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(r, Mapping) and all(isinstance(n, str) for n in r) for k, r in value.items()
    ):
        raise RequestError(
            f"{where}: constraints must map kernel names to {{'block': [x, y, z]}} or "
            f"{{'max_block': n}}, got {show(value)}"
        )
    for kernel, rules in value.items():
        block, most = rules.get("block"), rules.get("max_block")
        if block is not None:
            try:
                dims(block, "block constraint")
            except RequestError as e:
                raise RequestError(f"{where} kernel {show(kernel)}: {e}") from None
        if most is not None and (not isinstance(most, int) or isinstance(most, bool) or most < 1):
            raise RequestError(f"{where} kernel {show(kernel)}: max_block must be a positive int, got {show(most)}")
    return value


def allowed_options(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > 32:
        raise RequestError(f"{where}: options must be a list of at most 32 NVRTC options, got {show(value)}")
    for option in value:
        if not isinstance(option, str) or not _SAFE_OPTIONS.match(option):
            raise RequestError(
                f"{where}: NVRTC option {show(option)} is not allowed in a request (only options "
                "that change code generation, such as -DNAME=1, --use_fast_math, -lineinfo, "
                "--std=c++17, --maxrregcount=N)"
            )
    return tuple(value)


def signatures(value, where: str):
    if value is None:
        return None
    if (
        not isinstance(value, Mapping)
        or len(value) > 1024
        or not all(isinstance(k, str) and isinstance(v, str) and len(v) <= 4096 for k, v in value.items())
    ):
        raise RequestError(f"{where}: signatures must map kernel names to C parameter lists, got {show(value)}")
    return value


def source_text(source, where: str) -> str:
    """A tenant's CUDA source: bounded text that includes only NVRTC's own headers."""
    if not isinstance(source, str) or len(source) > MAX_SOURCE:
        raise RequestError(
            f"{where}: source must be CUDA C++ text of at most {MAX_SOURCE} characters, got {show(source)}"
        )
    check_includes(source, where)
    return source


def check_includes(source: str, where: str) -> None:
    """A tenant's source may include NVRTC's own headers (``<cuda_fp16.h>``), never a file by path."""
    for m in _INCLUDE.finditer(source):
        if not _NVRTC_HEADER.match(m.group(1).strip()):
            raise RequestError(
                f"{where}: #include {show(m.group(1).strip())} is not allowed in a request's source "
                "(only NVRTC's built-in headers, as <name.h>)"
            )


def decode_binary(value, where: str) -> bytes:
    if not isinstance(value, str) or len(value) > MAX_BINARY * 4 // 3 + 4:
        raise RequestError(f"{where}: data must be base64 text of at most {MAX_BINARY} bytes, got {show(value)}")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: data is not valid base64") from None
    if not data:
        raise RequestError(f"{where}: data is empty")
    return data

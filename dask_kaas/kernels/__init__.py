"""Kernels: libraries and their registry, signatures, launch shapes, NVRTC, the built-in library.

| module | one job |
|---|---|
| ``library.py`` | :class:`Library`: source or binary, identity, kernels, dict form, host twins |
| ``registry.py`` | libraries by name (per process) and :func:`resolve_library` |
| ``binary_cache.py`` | compiled binaries on disk (``kaas.kernel-cache.directory``) |
| ``twin_runner.py`` | a twin run on host-device buffers (typed views, cast literals) |
| ``library_input.py`` | what a library given inside a request dict may hold (no Python code, no files) |
| ``signatures.py`` | kernel parameters parsed from CUDA C++ |
| ``launch.py`` | grid and block shapes, checked once |
| ``nvrtc.py`` | compiling CUDA C++ with NVRTC |
| ``builtin.py``, ``builtin.cu``, ``twins.py`` | the built-in library, its CUDA source and NumPy twins |
"""

from __future__ import annotations

from .builtin import builtin
from .launch import LaunchConfig
from .library import Library
from .registry import is_registered, register_library, registered_libraries, resolve_library
from .signatures import KernelSignature, Param, parse_params, parse_signatures

register_library(builtin)

__all__ = [
    "KernelSignature",
    "LaunchConfig",
    "Library",
    "Param",
    "builtin",
    "is_registered",
    "parse_params",
    "parse_signatures",
    "register_library",
    "registered_libraries",
    "resolve_library",
]

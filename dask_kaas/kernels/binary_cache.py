"""Compiled kernel binaries on disk: NVRTC's output for a source library, kept per content hash, GPU
architecture and NVRTC version in ``kaas.kernel-cache.directory`` (written atomically), and a file for
a prebuilt library whose original is gone (CuPy loads modules from paths)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .. import config
from ..files import write_atomic
from . import nvrtc

if TYPE_CHECKING:
    from .library import Library

__all__ = ["binary_path", "cache_directory", "cache_path", "load_or_compile"]


def cache_directory() -> str:
    """The compiled-kernel cache directory (``kaas.kernel-cache.directory``), created."""
    path = config.get("kernel-cache.directory")
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    os.makedirs(path, exist_ok=True)
    return path


def cache_path(lib: Library, arch: str) -> str:
    """``<hash>-<arch>-nvrtc<major>.<minor>.<cubin|ptx>``: a new NVRTC compiles afresh."""
    ext = "cubin" if arch.startswith("sm_") else "ptx"
    major, minor = nvrtc.version()
    return os.path.join(cache_directory(), f"{lib.content_hash}-{arch}-nvrtc{major}.{minor}.{ext}")


def load_or_compile(lib: Library, arch: str, kind: str) -> bytes:
    """The cached binary of ``lib`` for ``arch``, else NVRTC's, then cached (a read-only cache only
    costs recompiles)."""
    path = cache_path(lib, arch)
    try:
        with open(path, "rb") as f:
            data = f.read()
        if data and (kind != "cubin" or data.startswith(b"\x7fELF")):
            return data
    except OSError:
        pass
    data = nvrtc.compile(lib.source or "", name=lib.name, arch=arch, options=lib.options)  # a source library
    try:
        write_atomic(path, data)
    except OSError:
        pass
    return data


def binary_path(lib: Library, arch: str) -> str:
    """A file holding ``lib.binary(arch)``: the cache file for sources, else the original file, or a
    cached copy where it is gone or changed."""
    if lib.kind == "source":
        path = cache_path(lib, arch)
        if not os.path.exists(path):
            data, _ = lib.binary(arch)
            if not os.path.exists(path):
                write_atomic(path, data)
        return path
    if lib.path and _file_holds(lib.path, lib._data):
        return lib.path
    path = os.path.join(cache_directory(), f"{lib.content_hash}.{lib.kind}")
    if not os.path.exists(path):
        write_atomic(path, lib._data)  # type: ignore[arg-type]
    return path


def _file_holds(path: str, data: bytes | None) -> bool:
    try:
        if os.path.getsize(path) != len(data or b""):
            return False
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False

"""A thin ctypes wrapper over NVRTC: compile CUDA C++ source to CUBIN or PTX without a GPU.

The library is searched for, loaded once, lazily (first call that needs it):

1. pip wheels: ``nvidia/cu13/lib/libnvrtc.so.13`` (``nvidia-cuda-nvrtc``) and
   ``nvidia/cuda_nvrtc/lib/libnvrtc.so.12`` (``nvidia-cuda-nvrtc-cu12``), found through the
   ``nvidia`` namespace package and every ``sys.path`` entry;
2. ``$CUDA_HOME``/``$CUDA_PATH`` ``lib64``/``lib``, then ``/usr/local/cuda*/lib64``;
3. ``ctypes.util.find_library("nvrtc")``.

If none loads, every entry point except :func:`available` raises :class:`KernelError`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import threading
from collections.abc import Sequence

from .errors import KernelError

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_load_error: str | None = None

_WHEEL_LIBS = (
    ("cu13", "lib", "libnvrtc.so.13"),
    ("cuda_nvrtc", "lib", "libnvrtc.so.12"),
    ("cu13", "bin", "nvrtc64_130_0.dll"),
    ("cuda_nvrtc", "bin", "nvrtc64_120_0.dll"),
)
_SONAMES = ("libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2")


def _nvidia_dirs() -> list[str]:
    dirs: list[str] = []
    try:
        import nvidia  # namespace package installed by the nvidia-* wheels

        dirs.extend(list(getattr(nvidia, "__path__", [])))
    except ImportError:
        pass
    for entry in sys.path:
        if entry and os.path.isdir(os.path.join(entry, "nvidia")):
            dirs.append(os.path.join(entry, "nvidia"))
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def candidates() -> list[str]:
    """Paths tried, in order, before falling back to ``ctypes.util.find_library``."""
    paths: list[str] = []
    for base in _nvidia_dirs():
        paths.extend(os.path.join(base, *parts) for parts in _WHEEL_LIBS)
    roots = [os.environ.get(v) for v in ("CUDA_HOME", "CUDA_PATH")]
    roots += sorted(glob.glob("/usr/local/cuda*"))
    for root in filter(None, roots):
        for sub in ("lib64", "lib"):
            paths.extend(os.path.join(root, sub, so) for so in _SONAMES)
    return [p for p in dict.fromkeys(paths) if os.path.exists(p)]


def _declare(lib: ctypes.CDLL) -> None:
    c_int_p = ctypes.POINTER(ctypes.c_int)
    c_size_p = ctypes.POINTER(ctypes.c_size_t)
    prog_p = ctypes.POINTER(ctypes.c_void_p)
    char_pp = ctypes.POINTER(ctypes.c_char_p)
    sigs = {
        "nvrtcGetErrorString": ([ctypes.c_int], ctypes.c_char_p),
        "nvrtcVersion": ([c_int_p, c_int_p], ctypes.c_int),
        "nvrtcGetNumSupportedArchs": ([c_int_p], ctypes.c_int),
        "nvrtcGetSupportedArchs": ([c_int_p], ctypes.c_int),
        "nvrtcCreateProgram": (
            [prog_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, char_pp, char_pp],
            ctypes.c_int,
        ),
        "nvrtcDestroyProgram": ([prog_p], ctypes.c_int),
        "nvrtcCompileProgram": ([ctypes.c_void_p, ctypes.c_int, char_pp], ctypes.c_int),
        "nvrtcGetProgramLogSize": ([ctypes.c_void_p, c_size_p], ctypes.c_int),
        "nvrtcGetProgramLog": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int),
        "nvrtcGetPTXSize": ([ctypes.c_void_p, c_size_p], ctypes.c_int),
        "nvrtcGetPTX": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int),
        "nvrtcGetCUBINSize": ([ctypes.c_void_p, c_size_p], ctypes.c_int),
        "nvrtcGetCUBIN": ([ctypes.c_void_p, ctypes.c_char_p], ctypes.c_int),
    }
    for fname, (argtypes, restype) in sigs.items():
        fn = getattr(lib, fname)
        fn.argtypes = argtypes
        fn.restype = restype


def _load() -> ctypes.CDLL:
    global _lib, _load_error
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        if _load_error is None:
            tried = candidates()
            found = ctypes.util.find_library("nvrtc")
            if found:
                tried.append(found)
            errors = []
            for path in tried:
                try:
                    lib = ctypes.CDLL(path)
                    _declare(lib)
                except (OSError, AttributeError) as e:
                    errors.append(f"{path}: {e}")
                    continue
                _lib = lib
                return lib
            _load_error = (
                "NVRTC (libnvrtc) is missing, so CUDA kernel sources cannot be compiled; "
                "install the dask-kaas `cuda13` or `cuda12` extra (or the `nvidia-cuda-nvrtc` "
                "wheel), or set CUDA_HOME to a CUDA toolkit"
                + (f" (tried: {'; '.join(errors)})" if errors else "")
            )
        raise KernelError(_load_error)


def library_path() -> str:
    """File name of the loaded libnvrtc (loads it; KernelError if missing)."""
    return _load()._name


def available() -> bool:
    """True if libnvrtc can be loaded; never raises."""
    try:
        _load()
    except KernelError:
        return False
    return True


def _check(code: int, what: str) -> None:
    if code != 0:
        msg = _load().nvrtcGetErrorString(code)
        text = msg.decode(errors="replace") if msg else f"error {code}"
        raise KernelError(f"NVRTC {what} failed: {text}")


def version() -> tuple[int, int]:
    """NVRTC's (major, minor) version."""
    lib = _load()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def supported_archs() -> list[int]:
    """Compute capabilities NVRTC can target, e.g. ``[75, 80, 86, 89, 90, ...]``."""
    lib = _load()
    n = ctypes.c_int()
    _check(lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * n.value)()
    _check(lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return list(archs)


def _c_strings(items: Sequence[str]):
    arr = (ctypes.c_char_p * max(len(items), 1))()
    for i, s in enumerate(items):
        arr[i] = s.encode()
    return arr


def compile(source: str, *, name: str, arch: str, options: Sequence[str] = ()) -> bytes:
    """Compile ``source`` for ``arch`` and return the binary.

    ``arch`` ``"sm_XX"`` yields a CUBIN (ELF bytes); ``"compute_XX"`` yields PTX text (bytes,
    without the trailing NUL). ``--gpu-architecture=<arch>`` and ``--std=c++17`` are always
    passed, then ``options``. The program is named ``f"{name}.cu"`` so the log reads
    ``name.cu(LINE): error: ...``. A failed compilation raises :class:`KernelError` whose
    message names the library and carries NVRTC's full log.
    """
    if arch.startswith("sm_"):
        want_cubin = True
    elif arch.startswith("compute_"):
        want_cubin = False
    else:
        raise KernelError(f"library {name}: unknown GPU architecture {arch!r} "
                          "(expected 'sm_XX' for a CUBIN or 'compute_XX' for PTX)")
    lib = _load()
    prog = ctypes.c_void_p()
    _check(
        lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(),
                               0, None, None),
        "nvrtcCreateProgram",
    )
    try:
        opts = [f"--gpu-architecture={arch}", "--std=c++17", *options]
        result = lib.nvrtcCompileProgram(prog, len(opts), _c_strings(opts))
        if result != 0:
            log = _log(lib, prog)
            err = lib.nvrtcGetErrorString(result)
            err = err.decode(errors="replace") if err else f"error {result}"
            raise KernelError(
                f"compiling kernel library {name!r} for {arch} failed ({err}):\n{log}"
            )
        size = ctypes.c_size_t()
        if want_cubin:
            _check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
            buf = ctypes.create_string_buffer(size.value)
            _check(lib.nvrtcGetCUBIN(prog, buf), "nvrtcGetCUBIN")
            return buf.raw
        _check(lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
        return buf.raw.rstrip(b"\x00")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def _log(lib: ctypes.CDLL, prog: ctypes.c_void_p) -> str:
    size = ctypes.c_size_t()
    if lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)) != 0 or size.value <= 1:
        return ""
    buf = ctypes.create_string_buffer(size.value)
    if lib.nvrtcGetProgramLog(prog, buf) != 0:
        return ""
    return buf.value.decode(errors="replace")

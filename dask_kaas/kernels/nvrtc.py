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
import re
import sys
import threading
from collections.abc import Sequence

from ..errors import KernelError

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


def builtins_path(nvrtc_path: str, major: int, minor: int) -> str | None:
    """The ``libnvrtc-builtins`` beside a libnvrtc of version ``major.minor``, if it is there."""
    directory = os.path.dirname(os.path.realpath(nvrtc_path))
    for name in (f"libnvrtc-builtins.so.{major}.{minor}", f"nvrtc-builtins64_{major}{minor}.dll"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _preload_builtins(lib: ctypes.CDLL, path: str) -> None:
    """Load NVRTC's builtins library globally before the first compile.

    libnvrtc opens ``libnvrtc-builtins.so.MAJOR.MINOR`` by name when it compiles. The
    nvidia-cuda-nvrtc 13.0 wheels ship libnvrtc without a RUNPATH, so that lookup fails
    (``NVRTC_ERROR_BUILTIN_OPERATION_FAILURE``) unless the sibling is already loaded, which is
    what cuda-pathfinder does too. Where the sibling is missing, NVRTC's own lookup may still work.
    """
    major, minor = ctypes.c_int(), ctypes.c_int()
    if lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)) != 0:
        return
    sibling = builtins_path(path, major.value, minor.value)
    if sibling is not None:
        ctypes.CDLL(sibling, mode=ctypes.RTLD_GLOBAL)


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
                    _preload_builtins(lib, path)
                except (OSError, AttributeError) as e:
                    errors.append(f"{path}: {e}")
                    continue
                _lib = lib
                return lib
            _load_error = (
                "NVRTC (libnvrtc) is missing, so CUDA kernel sources cannot be compiled; "
                "install the dask-kaas `cuda13` or `cuda12` extra (or the `nvidia-cuda-nvrtc` "
                "wheel), or set CUDA_HOME to a CUDA toolkit" + (f" (tried: {'; '.join(errors)})" if errors else "")
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
        raise KernelError(
            f"library {name}: unknown GPU architecture {arch!r} (expected 'sm_XX' for a CUBIN or 'compute_XX' for PTX)"
        )
    lib = _load()
    prog = ctypes.c_void_p()
    _check(
        lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), f"{name}.cu".encode(), 0, None, None),
        "nvrtcCreateProgram",
    )
    try:
        opts = [f"--gpu-architecture={arch}", "--std=c++17", *options]
        result = lib.nvrtcCompileProgram(prog, len(opts), _c_strings(opts))
        if result != 0:
            log = _log(lib, prog)
            err = lib.nvrtcGetErrorString(result)
            err = err.decode(errors="replace") if err else f"error {result}"
            raise KernelError(f"compiling kernel library {name!r} for {arch} failed ({err}):\n{log}")
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


# -- targets ---------------------------------------------------------------------------------

#: The PTX ISA version that each CUDA release reads and writes (its newest), per the PTX ISA
#: release notes. A driver JIT-compiles PTX of its own ISA version or older only.
PTX_ISA: dict[tuple[int, int], tuple[int, int]] = {
    (11, 0): (7, 0),
    (11, 1): (7, 1),
    (11, 2): (7, 2),
    (11, 3): (7, 3),
    (11, 4): (7, 4),
    (11, 5): (7, 5),
    (11, 6): (7, 6),
    (11, 7): (7, 7),
    (11, 8): (7, 8),
    (12, 0): (8, 0),
    (12, 1): (8, 1),
    (12, 2): (8, 2),
    (12, 3): (8, 3),
    (12, 4): (8, 4),
    (12, 5): (8, 5),
    (12, 6): (8, 5),
    (12, 8): (8, 7),
    (12, 9): (8, 8),
    (13, 0): (9, 0),
    (13, 1): (9, 1),
    (13, 2): (9, 2),
    (13, 3): (9, 3),
    (13, 4): (9, 4),
    (13, 5): (9, 5),
}


def cuda_version(encoded: int) -> tuple[int, int]:
    """``(major, minor)`` from CUDA's integer encoding (``cudaDriverGetVersion``: 13000 -> (13, 0))."""
    return encoded // 1000, (encoded % 1000) // 10


def ptx_isa(cuda: tuple[int, int]) -> tuple[int, int] | None:
    """The newest PTX ISA a driver of CUDA version ``cuda`` accepts; None when it is newer than
    every release this table knows (then it accepts whatever this NVRTC writes)."""
    if cuda > max(PTX_ISA):
        return None
    known = [v for v in PTX_ISA if v <= cuda]
    return PTX_ISA[max(known)] if known else (0, 0)


_PTX_VERSION = re.compile(rb"^([ \t]*\.version[ \t]+)(\d+)\.(\d+)", re.M)


def ptx_version(ptx: bytes) -> tuple[int, int] | None:
    """The ``.version`` directive of PTX text, or None if it has none."""
    m = _PTX_VERSION.search(ptx)
    return (int(m.group(2)), int(m.group(3))) if m else None


def fit_ptx_to_driver(ptx: bytes, driver: tuple[int, int]) -> bytes:
    """PTX whose ``.version`` a driver of CUDA version ``driver`` accepts.

    NVRTC writes its own (newest) ISA version even when the code uses nothing new, and an older
    driver refuses such PTX outright (``CUDA_ERROR_UNSUPPORTED_PTX_VERSION``). The directive is
    lowered to the driver's ISA; code that really needs a newer instruction then fails to JIT
    with the driver's own message, which names it.
    """
    have, most = ptx_version(ptx), ptx_isa(driver)
    if have is None or most is None or have <= most:
        return ptx
    return _PTX_VERSION.sub(lambda m: m.group(1) + f"{most[0]}.{most[1]}".encode(), ptx, count=1)


def choose_target(compute_capability: int, supported: Sequence[int]) -> str:
    """What to compile for a GPU of ``compute_capability`` (e.g. 90) with an NVRTC that targets
    ``supported``: its own ``sm_XX`` CUBIN when NVRTC knows the arch, else PTX for the newest
    older arch NVRTC knows (the driver JIT-compiles it for the GPU)."""
    if compute_capability in supported:
        return f"sm_{compute_capability}"
    older = [a for a in supported if a <= compute_capability]
    if not older:
        raise KernelError(
            f"GPU architecture sm_{compute_capability} is older than every architecture "
            f"this NVRTC {'.'.join(map(str, version()))} supports ({sorted(supported)}); "
            "install an older NVRTC (the cuda12 extra)"
        )
    return f"compute_{max(older)}"

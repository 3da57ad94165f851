"""Kernel libraries: CUDA source or prebuilt binaries, their kernels, launch constraints, NumPy host
twins, the compiled-binary cache, and the registry of names (``dask_kaas.kernels`` registers the
built-in library there).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import config
from ..errors import KernelError, RequestError
from ..files import write_atomic
from ..names import show
from . import library_input as checks
from . import nvrtc
from .launch import MAX_THREADS_PER_BLOCK, LaunchConfig, dims
from .signatures import KernelSignature, Param, parse_params, parse_signatures

_KINDS = {".cu": "source", ".cubin": "cubin", ".ptx": "ptx", ".fatbin": "fatbin"}
KINDS = tuple(_KINDS)  # file extensions a library may be loaded from


def cache_directory() -> str:
    """The compiled-kernel cache directory (``kaas.kernel-cache.directory``), created."""
    path = config.get("kernel-cache.directory")
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    os.makedirs(path, exist_ok=True)
    return path


class Library:
    """A named set of CUDA kernels: source (compiled on demand by NVRTC) or a prebuilt binary.

    Give exactly one of ``source`` (CUDA C++ text) or ``path`` (``.cu``, ``.cubin``, ``.ptx``
    or ``.fatbin``). ``twins`` maps kernel names to NumPy host twins
    ``twin(launch, *literals, *typed_buffers)``; ``constraints`` maps kernel names to
    ``{"block": (x, y, z)}`` (block must equal it) and/or ``{"max_block": n}`` (at most n
    threads per block); ``options`` are extra NVRTC options; ``signatures`` maps kernel names
    to C parameter lists (``"int n, const float* a"``) and is how prebuilt binaries declare
    their kernels (for sources they override the parsed ones).

    ``content_hash`` is the hex sha256 of what compiles (the kind, the source or binary bytes
    and the options) and names compiled binaries; ``hash`` covers everything that changes how a
    kernel runs or is checked (also the constraints, signatures and host twins), and two
    libraries are equal iff their hashes are. Pickling carries the source text (or the prebuilt
    binary's bytes), never compiled output.

    Sources are compiled with NVRTC for a device's architecture when a CUDA device first loads
    them (:meth:`binary`), and the result is cached on disk under ``kaas.kernel-cache.directory``
    by content hash, arch and NVRTC version; on the host device the kernels run by their twins,
    and nothing is compiled.

    Parameters
    ----------
    name : str
        The library's name: what requests and :func:`register_library` call it.
    source : str, optional
        CUDA C++ text; kernels declared ``extern "C" __global__``, every scalar parameter before
        every pointer (KaaS passes literals first, then buffers). Their signatures are parsed from
        the text.
    path : str or os.PathLike, optional
        A ``.cu``, ``.cubin``, ``.ptx`` or ``.fatbin`` file, read now (made absolute).
    twins : mapping of str to callable, optional
        NumPy host twins by kernel name, called as ``twin(launch, *literals, *typed_buffers)``
        with a :class:`~dask_kaas.kernels.LaunchConfig`, the literals cast to their parameter
        types, and each buffer as a 1-D view of its parameter's dtype, written in place.
    constraints : mapping of str to mapping, optional
        Launch rules by kernel name: ``{"block": (x, y, z)}`` (block must equal it) and/or
        ``{"max_block": n}`` (at most n threads per block).
    options : sequence of str, default ()
        Extra NVRTC options (part of :attr:`content_hash`).
    signatures : mapping of str to str, optional
        C parameter lists by kernel name (``"int n, const float* a"``): how prebuilt binaries
        declare their kernels; for sources they override the parsed ones.

    Raises
    ------
    KernelError
        When both or neither of ``source`` and ``path`` are given, ``path`` has another
        extension or cannot be read, or a constraint is not ``block`` or ``max_block``.

    See Also
    --------
    register_library : make a library's name usable in requests and request dicts.
    resolve_library : the library a name, path or object stands for.

    Examples
    --------
    A library from CUDA source with a NumPy host twin, so it also runs on the host device:

    >>> import numpy as np
    >>> from dask_kaas import BufferSpec, KernelSpec, Library, Literal, Request, run_request
    >>> source = '''
    ... extern "C" __global__ void scale(int n, float alpha, float* x) {
    ...     for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
    ...         x[i] *= alpha;
    ... }
    ... '''
    >>> def scale(launch, n, alpha, x):
    ...     x[:n] *= alpha
    >>> lib = Library.from_source("doc_scale", source, twins={"scale": scale})
    >>> lib
    <Library 'doc_scale' source ...>
    >>> [(p.ctype, p.pointer) for p in lib.signature("scale").params]
    [('int', False), ('float', False), ('float', True)]
    >>> x = BufferSpec("x", 16, dtype="float32", ephemeral=True)
    >>> req = Request(KernelSpec(lib, "scale", 1, 32, literals=[Literal("i", 4), Literal("f", 3.0)],
    ...                          arguments=[(x, "io")]))
    >>> run_request(req, {"x": np.arange(4, dtype=np.float32)})
    {'x': array([0., 3., 6., 9.], dtype=float32)}

    Requests are checked against the parsed signature:

    >>> KernelSpec(lib, "scale", 1, 32, literals=[Literal("i", 4)], arguments=[(x, "io")])
    Traceback (most recent call last):
    ...
    dask_kaas.errors.RequestError: kernel 'scale' of library 'doc_scale': literals have types i, the kernel takes if
    """

    def __init__(
        self,
        name: str,
        *,
        source: str | None = None,
        path: str | os.PathLike | None = None,
        twins: Mapping[str, Callable] | None = None,
        constraints: Mapping[str, Mapping[str, Any]] | None = None,
        options: Sequence[str] = (),
        signatures: Mapping[str, str] | None = None,
    ) -> None:
        if (source is None) == (path is None):
            raise KernelError(f"library {name!r}: give exactly one of source= or path=")
        self.name = str(name)
        self.path = os.path.abspath(os.fspath(path)) if path is not None else None
        self.options = tuple(str(o) for o in options)
        if path is not None:
            ext = os.path.splitext(self.path)[1].lower()
            if ext not in _KINDS:
                raise KernelError(
                    f"library {name!r}: cannot load {self.path!r}, expected a file ending in {', '.join(_KINDS)}"
                )
            self.kind = _KINDS[ext]
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise KernelError(f"library {name!r}: cannot read {self.path!r}: {e}") from e
            if self.kind == "source":
                self.source: str | None = data.decode()
                self._data: bytes | None = None
            else:
                self.source, self._data = None, data
        else:
            self.kind, self.source, self._data = "source", str(source), None
        self.twins = dict(twins or {})
        self.constraints = {k: dict(v) for k, v in (constraints or {}).items()}
        for kernel, rules in self.constraints.items():
            unknown = set(rules) - {"block", "max_block"}
            if unknown:
                raise KernelError(
                    f"library {name!r} kernel {kernel!r}: unknown constraint(s) "
                    f"{sorted(unknown)}; known: 'block', 'max_block'"
                )
        self.signatures = dict(signatures or {})
        content = self.source.encode() if self.source is not None else self._data
        h = hashlib.sha256(self.kind.encode() + b"\0" + content)
        for opt in self.options:
            h.update(b"\0" + opt.encode())
        self.content_hash = h.hexdigest()
        behaviour = {
            "constraints": self.constraints,
            "signatures": self.signatures,
            "twins": {k: _twin_identity(fn) for k, fn in self.twins.items()},
        }
        self.hash = hashlib.sha256(
            self.content_hash.encode() + json.dumps(behaviour, sort_keys=True, default=list).encode()
        ).hexdigest()
        self._init_caches()

    def _init_caches(self) -> None:
        self._kernels: dict[str, KernelSignature] | None = None
        self._binaries: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_source(cls, name: str, source: str, twins: Mapping[str, Callable] | None = None, **kwargs) -> Library:
        """A library compiled from CUDA C++ ``source``: ``Library(name, source=source, twins=twins, **kwargs)``.

        ``kwargs`` are ``constraints``, ``options`` and ``signatures`` (see :class:`Library`).
        """
        return cls(name, source=source, twins=twins, **kwargs)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, twins: Mapping[str, Callable] | None = None, *, name: str | None = None, **kwargs
    ) -> Library:
        """A library from a ``.cu``, ``.cubin``, ``.ptx`` or ``.fatbin`` file; ``name``
        defaults to the file's stem."""
        path = os.fspath(path)
        if name is None:
            name = os.path.splitext(os.path.basename(path))[0]
        return cls(name, path=path, twins=twins, **kwargs)

    # -- identity and pickling ---------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Library) and other.hash == self.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return f"<Library {self.name!r} {self.kind} {self.hash[:12]}>"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_kernels", "_binaries", "_lock"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_caches()

    def to_dict(self) -> dict:
        """A JSON-able description that :meth:`from_dict` turns back into an equal library.

        Carries the source text (or the binary as base64), options, constraints, signatures
        and twins as ``"module:qualname"`` import paths (twins that cannot be imported that way
        are left out; :meth:`from_dict` recovers them from a registered library of the same
        name and hash).
        """
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "hash": self.hash}
        if self.source is not None:
            d["source"] = self.source
        else:
            d["data"] = base64.b64encode(self._data or b"").decode("ascii")
            if self.path:
                d["path"] = self.path
        if self.options:
            d["options"] = list(self.options)
        if self.constraints:
            d["constraints"] = {
                k: {r: list(v) if isinstance(v, tuple) else v for r, v in rules.items()}
                for k, rules in self.constraints.items()
            }
        if self.signatures:
            d["signatures"] = dict(self.signatures)
        twins = {k: _import_path(fn) for k, fn in self.twins.items()}
        if any(twins.values()):
            d["twins"] = {k: v for k, v in twins.items() if v}
        return d

    DICT_FIELDS = ("name", "kind", "hash", "source", "data", "path", "options", "constraints", "signatures", "twins")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Library:
        """The library described by :meth:`to_dict` output (the registered one if a library
        of that name and hash is registered).

        The dict is tenant input (it arrives inside request dicts), so it names no Python code
        and no file: host twins are taken only from modules listed in
        ``kaas.twins.allowed-modules`` (each a function defined in that module); NVRTC options
        are limited to those that change code generation, not where files are read; sources may
        ``#include`` only NVRTC's own headers; ``path`` is informational and never read.
        Anything else is a :class:`RequestError`.
        """
        if not isinstance(d, Mapping):
            raise RequestError(f"a kernel library must be an object, got {show(d)}")
        unknown = [k for k in d if k not in cls.DICT_FIELDS]
        if unknown:
            raise RequestError(f"library: unknown field(s) {show(unknown)}; known: {', '.join(cls.DICT_FIELDS)}")
        name = checks.library_name(d.get("name"))
        registered = _registry.get(name)
        if registered is not None and isinstance(d.get("hash"), str) and registered.hash == d["hash"]:
            return registered
        where = f"library {name!r}"
        kind = d.get("kind", "source")
        if kind not in _KINDS.values():
            raise RequestError(f"{where}: unknown kind {show(kind)}; expected one of {', '.join(_KINDS.values())}")
        common = dict(
            twins=checks.allowed_twins(d.get("twins"), where),
            constraints=checks.constraints(d.get("constraints"), where),
            options=checks.allowed_options(d.get("options", ()), where),
            signatures=checks.signatures(d.get("signatures"), where),
        )
        try:
            if kind == "source":
                lib = cls(name, source=checks.source_text(d.get("source"), where), **common)
            else:
                lib = cls._from_bytes(name, kind, checks.decode_binary(d.get("data"), where), None, **common)
        except KernelError as e:
            raise RequestError(f"{where}: {e}") from None
        if "hash" in d and d["hash"] != lib.hash:
            raise RequestError(
                f"{where}: its content (source or binary, options, constraints, signatures, host "
                f"twins) does not match its hash {show(d['hash'])}; host twins that are not "
                "importable functions cannot travel in a dict: register the library on the workers"
            )
        return lib

    @classmethod
    def _from_bytes(cls, name: str, kind: str, data: bytes, path: str | None, **kwargs) -> Library:
        ext = {v: k for k, v in _KINDS.items()}[kind]
        with tempfile.TemporaryDirectory() as tmp:  # the constructor reads binaries from files
            fn = os.path.join(tmp, "lib" + ext)
            with open(fn, "wb") as f:
                f.write(data)
            lib = cls(name, path=fn, **kwargs)
        lib.path = path
        return lib

    # -- kernels -----------------------------------------------------------------------------

    @property
    def kernels(self) -> dict[str, KernelSignature]:
        """Known kernels' signatures: parsed from source, plus any ``signatures=``. Prebuilt
        binaries without ``signatures=`` give an empty dict, although they have kernels."""
        if self._kernels is None:
            kernels = parse_signatures(self.source) if self.source is not None else {}
            for kname, params in self.signatures.items():
                kernels[kname] = KernelSignature(kname, parse_params(params))
            self._kernels = kernels
        return self._kernels

    def signature(self, kernel: str) -> KernelSignature | None:
        """The kernel's signature, or None if unknown (absent, or a binary that may have it
        but declared no signature)."""
        return self.kernels.get(kernel)

    def _ptx_entries(self) -> set[str] | None:
        if self.kind != "ptx":
            return None
        found = re.findall(rb"\.entry\s+([A-Za-z_$][\w$]*)", self._data or b"")
        return {n.decode() for n in found}

    def has_kernel(self, kernel: str) -> bool:
        """Whether the library has ``kernel``. Sources and PTX know exactly; cubin/fatbin
        libraries without ``signatures=`` cannot tell and answer True."""
        if kernel in self.kernels:
            return True
        if self.kind == "source" or self.signatures:
            return False
        entries = self._ptx_entries()
        return kernel in entries if entries is not None else True

    def check_launch(self, kernel: str, grid: Any, block: Any) -> None:
        """Raise :class:`RequestError` if launching ``kernel`` with ``grid``/``block`` breaks
        a CUDA rule (positive dims, at most 1024 threads per block) or one of the kernel's
        constraints. The message names library, kernel and rule."""
        where = f"library {self.name!r} kernel {kernel!r}"
        try:
            dims(grid, "grid")
            block3 = dims(block, "block")
        except RequestError as e:
            raise RequestError(f"{where}: {e}") from None
        threads = block3[0] * block3[1] * block3[2]
        if threads > MAX_THREADS_PER_BLOCK:
            raise RequestError(
                f"{where}: block {block3} has {threads} threads, CUDA allows at most {MAX_THREADS_PER_BLOCK} per block"
            )
        rules = self.constraints.get(kernel, {})
        if "block" in rules:
            want = dims(rules["block"], "block constraint")
            if block3 != want:
                raise RequestError(f"{where}: needs block == {want}, got block {block3}")
        if "max_block" in rules and threads > int(rules["max_block"]):
            raise RequestError(
                f"{where}: needs at most max_block={int(rules['max_block'])} "
                f"threads per block, got block {block3} ({threads} threads)"
            )

    # -- binaries ----------------------------------------------------------------------------

    def _cache_path(self, arch: str) -> str:
        """``<hash>-<arch>-nvrtc<major>.<minor>.<cubin|ptx>``: a new NVRTC compiles afresh."""
        ext = "cubin" if arch.startswith("sm_") else "ptx"
        major, minor = nvrtc.version()
        return os.path.join(cache_directory(), f"{self.content_hash}-{arch}-nvrtc{major}.{minor}.{ext}")

    def binary(self, arch: str) -> tuple[bytes, str]:
        """``(bytes, kind)`` to load on a device of ``arch`` (e.g. ``"sm_90"``).

        Source libraries compile with NVRTC: ``sm_XX`` gives ``"cubin"``, ``compute_XX``
        ``"ptx"``; results are cached on disk as ``<hash>-<arch>-nvrtc<version>.<kind>`` in
        :func:`cache_directory` (written atomically) and in memory. Prebuilt libraries return
        their file's bytes and kind whatever ``arch``.
        """
        if self.kind != "source":
            return self._data, self.kind  # type: ignore[return-value]
        kind = "cubin" if arch.startswith("sm_") else "ptx"
        data = self._binaries.get(arch)
        if data is not None:
            return data, kind
        with self._lock:
            data = self._binaries.get(arch)
            if data is None:
                data = self._load_or_compile(arch, kind)
                self._binaries[arch] = data
        return data, kind

    def compile(self, arch: str = "sm_90") -> bytes:
        """The compiled (or prebuilt) bytes for ``arch``: :meth:`binary` without the kind."""
        return self.binary(arch)[0]

    def _load_or_compile(self, arch: str, kind: str) -> bytes:
        path = self._cache_path(arch)
        try:
            with open(path, "rb") as f:
                data = f.read()
            if data and (kind != "cubin" or data.startswith(b"\x7fELF")):
                return data
        except OSError:
            pass
        data = nvrtc.compile(self.source, name=self.name, arch=arch, options=self.options)
        try:
            write_atomic(path, data)
        except OSError:
            pass  # a read-only cache only costs recompiles
        return data

    def binary_path(self, arch: str) -> str:
        """A file holding :meth:`binary` for ``arch`` (CuPy loads modules from paths): the
        cache file for sources, else the original file, or a cached copy where it is gone."""
        if self.kind == "source":
            path = self._cache_path(arch)
            if not os.path.exists(path):
                data, _ = self.binary(arch)
                if not os.path.exists(path):
                    write_atomic(path, data)
            return path
        if self.path and _file_holds(self.path, self._data):
            return self.path
        path = os.path.join(cache_directory(), f"{self.content_hash}.{self.kind}")
        if not os.path.exists(path):
            write_atomic(path, self._data)  # type: ignore[arg-type]
        return path

    # -- host twins --------------------------------------------------------------------------

    def twin(self, kernel: str) -> Callable | None:
        """The NumPy host twin of ``kernel``, or None."""
        return self.twins.get(kernel)

    def run_twin(
        self, kernel: str, launch: LaunchConfig, literal_values: Sequence, buffers: Sequence[np.ndarray]
    ) -> None:
        """Run ``kernel``'s host twin as ``twin(launch, *literals, *typed_views)``.

        ``buffers`` are 1-D uint8 arrays (host device memory), in the order of the kernel's
        pointer parameters; each is viewed as its parameter's dtype (trailing bytes that do
        not fill an element are left out), so the twin's writes land in place. Literals are
        cast to their parameter types. Without a known signature, buffers go in as uint8.
        """
        self.prepare_twin(kernel, launch, literal_values)(buffers)

    def prepare_twin(
        self, kernel: str, launch: LaunchConfig, literal_values: Sequence
    ) -> Callable[[Sequence[np.ndarray]], None]:
        """:meth:`run_twin` with everything but the buffers decided once: the twin, the checks
        against the signature, the literals cast; returns ``call(buffers)``."""
        fn = self.twin(kernel)
        if fn is None:
            raise KernelError(
                f"kernel {kernel!r} of library {self.name!r} has no host twin, it can only run on a CUDA device"
            )
        sig = self.signature(kernel)
        literals = list(literal_values)
        where = f"library {self.name!r} kernel {kernel!r}"
        dtypes = None
        if sig is not None:
            if len(literals) != len(sig.literals):
                raise RequestError(f"{where}: takes {len(sig.literals)} literal(s), got {len(literals)}")
            literals = [_cast_literal(p, v) for p, v in zip(sig.literals, literals)]
            dtypes = [p.dtype for p in sig.buffers]

        def call(buffers: Sequence[np.ndarray]) -> None:
            if dtypes is None:
                views = [_as_bytes(b) for b in buffers]
            elif len(buffers) != len(dtypes):
                raise RequestError(f"{where}: takes {len(dtypes)} buffer(s), got {len(buffers)}")
            else:
                views = [_typed_view(_as_bytes(b), d) for b, d in zip(buffers, dtypes)]
            fn(launch, *literals, *views)

        return call


def _twin_identity(fn: Callable) -> str:
    """What identifies a host twin in a library's hash: its import path, else its pickled bytes."""
    path = _import_path(fn)
    if path is not None:
        return path
    try:
        import cloudpickle

        return "pickle:" + hashlib.sha256(cloudpickle.dumps(fn)).hexdigest()
    except Exception:
        return f"object:{type(fn).__qualname__}:{id(fn)}"


def _import_path(fn: Callable) -> str | None:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or "<" in qualname:
        return None
    try:
        if _import_object(f"{module}:{qualname}") is fn:
            return f"{module}:{qualname}"
    except Exception:
        pass
    return None


def _import_object(spec: str) -> Any:
    module, _, qualname = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _file_holds(path: str, data: bytes | None) -> bool:
    try:
        if os.path.getsize(path) != len(data or b""):
            return False
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def _as_bytes(buf: Any) -> np.ndarray:
    arr = np.asarray(buf)
    if arr.dtype != np.uint8 or arr.ndim != 1:
        arr = arr.reshape(-1).view(np.uint8)  # view (not copy) for contiguous inputs
    return arr


def _typed_view(buf: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    if dtype is None or dtype == np.uint8:
        return buf
    n = buf.nbytes // dtype.itemsize
    return buf[: n * dtype.itemsize].view(dtype)


def _cast_literal(param: Param, value: Any) -> Any:
    dtype = param.dtype
    if dtype is None:
        return value
    if dtype.kind in "iu":
        return int(value)
    if dtype.kind == "b":
        return bool(value)
    return dtype.type(value)


# -- the registry ----------------------------------------------------------------------

_registry: dict[str, Library] = {}
_by_path: dict[tuple[str, int, int], Library] = {}
_registry_lock = threading.Lock()


def register_library(lib: Library) -> Library:
    """Make ``lib`` resolvable by its name (replacing any library of that name); returns it.

    A registered library can be named by a string in a :class:`~dask_kaas.KernelSpec` and in
    request dicts and JSON (which can carry no Python code, so this is how host twins reach
    them), and its loaded modules are shared by every tenant on a worker (a library a request
    brings is loaded for its tenant alone). The registry is per process: a request that names a
    library by string needs it registered where the request is built and on the workers that run
    it (in a worker plugin or a module they import); a request holding the :class:`Library`
    object carries it along. ``dask_kaas.kernels`` registers ``builtin``.

    Parameters
    ----------
    lib : Library
        The library to register under ``lib.name``.

    Returns
    -------
    Library
        ``lib`` itself.

    Raises
    ------
    TypeError
        When ``lib`` is not a :class:`Library`.

    See Also
    --------
    resolve_library

    Examples
    --------
    >>> from dask_kaas import Library, register_library, resolve_library
    >>> lib = register_library(Library.from_source("doc_noop", 'extern "C" __global__ void noop(int n) {}'))
    >>> resolve_library("doc_noop") is lib
    True
    """
    if not isinstance(lib, Library):
        raise TypeError(f"register_library expects a Library, got {type(lib).__name__}")
    with _registry_lock:
        _registry[lib.name] = lib
    return lib


def registered_libraries() -> dict[str, Library]:
    """Registered libraries by name (``"builtin"`` included)."""
    return dict(_registry)


def is_registered(lib: Library) -> bool:
    """Whether ``lib`` is the library registered under its name (shared by every tenant)."""
    registered = _registry.get(lib.name)
    return registered is lib or (registered is not None and registered.hash == lib.hash)


def resolve_library(spec: Library | str | os.PathLike) -> Library:
    """The library for ``spec``: a :class:`Library` (as is), a registered name, or a path
    ending in ``.cu``/``.cubin``/``.ptx``/``.fatbin`` (loaded once per path and mtime).

    A registered name wins over a file of the same name. Paths are not limited to
    ``kaas.library-paths`` here: that rule applies to request dicts, which check it before
    they get here.

    Parameters
    ----------
    spec : Library, str or os.PathLike
        The library, its registered name, or a path (``~`` expanded).

    Returns
    -------
    Library

    Raises
    ------
    RequestError
        For an unknown name (the message lists the registered ones), a path that does not
        exist, or a ``spec`` of another type.
    KernelError
        When a file named by path cannot be read.

    See Also
    --------
    register_library

    Examples
    --------
    >>> from dask_kaas import builtin, resolve_library
    >>> resolve_library("builtin") is builtin
    True
    >>> sorted(resolve_library(builtin).kernels)[:3]
    ['axpy', 'bias_relu', 'fill']
    >>> resolve_library("no_such_library")
    Traceback (most recent call last):
    ...
    dask_kaas.errors.RequestError: unknown kernel library 'no_such_library': registered libraries are ...
    """
    if isinstance(spec, Library):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise RequestError(f"a kernel library is a Library, a registered name or a path, got {spec!r}")
    key = os.fspath(spec)
    lib = _registry.get(key)
    if lib is not None:
        return lib
    if os.path.splitext(key)[1].lower() in _KINDS:
        path = os.path.abspath(os.path.expanduser(key))
        try:
            st = os.stat(path)
        except OSError:
            raise RequestError(f"kernel library file {key!r} does not exist (looked at {path!r})") from None
        memo = (path, st.st_mtime_ns, st.st_size)
        with _registry_lock:
            lib = _by_path.get(memo)
            if lib is None:
                lib = Library.from_file(path)
                _by_path[memo] = lib
        return lib
    names = ", ".join(repr(n) for n in sorted(_registry))
    raise RequestError(
        f"unknown kernel library {spec!r}: registered libraries are {names}; "
        f"or give a path to a .cu, .cubin, .ptx or .fatbin file"
    )

"""A kernel library as a value: CUDA source or prebuilt binaries, its identity (content hash, pickling),
its kernels and their launch constraints, its dict form and its host twins. Compiled binaries on disk:
:mod:`.binary_cache`; running a twin: :mod:`.twin_runner`; the registry of names: :mod:`.registry`.
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

from ..errors import KernelError, RequestError
from ..names import show
from . import binary_cache, twin_runner
from . import library_input as checks
from .launch import MAX_THREADS_PER_BLOCK, LaunchConfig, dims
from .signatures import KernelSignature, parse_params, parse_signatures

_KINDS = {".cu": "source", ".cubin": "cubin", ".ptx": "ptx", ".fatbin": "fatbin"}
KINDS = tuple(_KINDS)  # file extensions a library may be loaded from
REGISTERED: dict[str, Library] = {}  # the registry's table by name (kept by kernels/registry.py)


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
        if self.path is not None:
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
        content = self.source.encode() if self.source is not None else (self._data or b"")
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
        registered = REGISTERED.get(name)
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

    def binary(self, arch: str) -> tuple[bytes, str]:
        """``(bytes, kind)`` to load on a device of ``arch`` (e.g. ``"sm_90"``).

        Source libraries compile with NVRTC: ``sm_XX`` gives ``"cubin"``, ``compute_XX``
        ``"ptx"``; results are cached on disk as ``<hash>-<arch>-nvrtc<version>.<kind>`` in
        ``kaas.kernel-cache.directory`` (:mod:`~dask_kaas.kernels.binary_cache`, written atomically)
        and in memory. Prebuilt libraries return their file's bytes and kind whatever ``arch``.
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
                data = binary_cache.load_or_compile(self, arch, kind)
                self._binaries[arch] = data
        return data, kind

    def compile(self, arch: str = "sm_90") -> bytes:
        """The compiled (or prebuilt) bytes for ``arch``: :meth:`binary` without the kind."""
        return self.binary(arch)[0]

    def binary_path(self, arch: str) -> str:
        """A file holding :meth:`binary` for ``arch`` (CuPy loads modules from paths): the
        cache file for sources, else the original file, or a cached copy where it is gone."""
        return binary_cache.binary_path(self, arch)

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
        return twin_runner.prepare(self, kernel, launch, literal_values)


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

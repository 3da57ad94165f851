"""Kernel libraries: CUDA source or prebuilt binaries, their kernel signatures, launch
constraints, NumPy host twins, compiled-binary cache, and the name registry.

Kernel parameters are passed *literals (scalars) first, then buffers (pointers)*; a
:class:`KernelSignature` exposes both groups and whether the declared order already matches.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import config
from . import nvrtc
from .errors import KernelError, RequestError
from .names import show, text_problem

# --------------------------------------------------------------------------------------------
# Parameters and signatures
# --------------------------------------------------------------------------------------------

_DTYPES = {
    "float": "float32", "double": "float64",
    "int": "int32", "signed": "int32", "signed int": "int32", "int32_t": "int32",
    "unsigned": "uint32", "unsigned int": "uint32", "uint32_t": "uint32",
    "long": "int64", "long int": "int64", "long long": "int64", "long long int": "int64",
    "signed long long": "int64", "int64_t": "int64", "ptrdiff_t": "int64",
    "unsigned long": "uint64", "unsigned long int": "uint64", "unsigned long long": "uint64",
    "unsigned long long int": "uint64", "uint64_t": "uint64", "size_t": "uint64",
    "char": "int8", "signed char": "int8", "int8_t": "int8",
    "unsigned char": "uint8", "uint8_t": "uint8", "void": "uint8",
    "short": "int16", "short int": "int16", "int16_t": "int16",
    "unsigned short": "uint16", "unsigned short int": "uint16", "uint16_t": "uint16",
    "half": "float16", "__half": "float16",
    "bool": "bool",
}
_CODES = {"int32": "i", "uint32": "I", "int64": "q", "uint64": "Q", "float32": "f", "float64": "d"}
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict", "struct"}


@dataclass(frozen=True)
class Param:
    """One kernel parameter. ``const`` qualifies the value (scalars) or the pointee (pointers)."""

    name: str
    ctype: str
    pointer: bool = False
    const: bool = False

    @property
    def dtype(self) -> np.dtype | None:
        """NumPy dtype of the value or pointee (``void*`` -> uint8); None for unknown types."""
        name = _DTYPES.get(self.ctype)
        return np.dtype(name) if name else None

    @property
    def code(self) -> str | None:
        """``struct`` code of a scalar (one of ``i I q Q f d``); None for pointers/unsupported."""
        if self.pointer:
            return None
        dtype = self.dtype
        return _CODES.get(dtype.name) if dtype is not None else None


@dataclass(frozen=True)
class KernelSignature:
    """A kernel's name and its parameters in declared order."""

    name: str
    params: tuple[Param, ...]

    @property
    def literals(self) -> tuple[Param, ...]:
        """Non-pointer parameters, in declared order."""
        return tuple(p for p in self.params if not p.pointer)

    @property
    def buffers(self) -> tuple[Param, ...]:
        """Pointer parameters, in declared order."""
        return tuple(p for p in self.params if p.pointer)

    @property
    def literal_codes(self) -> tuple[str | None, ...]:
        return tuple(p.code for p in self.literals)

    @property
    def scalars_first(self) -> bool:
        """True if every scalar is declared before every pointer (the launch order)."""
        seen_pointer = False
        for p in self.params:
            if p.pointer:
                seen_pointer = True
            elif seen_pointer:
                return False
        return True


def _strip_comments(source: str) -> str:
    """Blank out comments, string literals other than "C", and preprocessor lines."""
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'',
                         re.S)

    def repl(m: re.Match) -> str:
        text = m.group(0)
        if text == '"C"':
            return text
        return re.sub(r"[^\n]", " ", text)  # keep offsets and line breaks

    out = pattern.sub(repl, source)
    # Preprocessor directives, including backslash-continued lines.
    return re.sub(r"^[ \t]*#(?:[^\n]*\\\n)*[^\n]*", lambda m: re.sub(r"[^\n]", " ", m.group(0)),
                  out, flags=re.M)


def _parse_param(text: str, index: int) -> Param | None:
    text = text.strip()
    if not text or text == "void":
        return None
    text = re.sub(r"=.*$", "", text, flags=re.S)  # default arguments
    array = bool(re.search(r"\[\s*\w*\s*\]\s*$", text))
    text = re.sub(r"\[\s*\w*\s*\]\s*$", "", text)
    tokens = re.findall(r"[A-Za-z_][\w:]*|\*|&", text)
    pointer = array or "*" in tokens
    first_star = tokens.index("*") if "*" in tokens else len(tokens)
    const = "const" in tokens[:first_star]
    words = [t for t in tokens if t not in _QUALIFIERS and t not in ("*", "&")]
    if len(words) >= 2 and " ".join(words) not in _DTYPES:
        name, type_words = words[-1], words[:-1]
    else:
        name, type_words = f"arg{index}", words
    ctype = " ".join(type_words)
    if not ctype:
        raise KernelError(f"cannot read the kernel parameter {text!r}")
    return Param(name=name, ctype=ctype, pointer=pointer, const=const)


def parse_params(text: str) -> tuple[Param, ...]:
    """Parameters from a C parameter list such as ``"int n, const float* __restrict__ a"``."""
    params = []
    for i, part in enumerate(text.split(",")):
        p = _parse_param(part, i)
        if p is not None:
            params.append(p)
    return tuple(params)


_ATTRIBUTE = re.compile(r"\s*(__launch_bounds__|__maxnreg__|__cluster_dims__|__attribute__)\s*\(")
_WORD = re.compile(r"\s*([A-Za-z_]\w*)")


def _skip_parens(text: str, i: int) -> int:
    """Index just past the parenthesised group opening at ``text[i] == '('``."""
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "(":
            depth += 1
        elif text[j] == ")":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(text)


def _extern_c_blocks(text: str) -> list[tuple[int, int]]:
    blocks = []
    for m in re.finditer(r'\bextern\s+"C"\s*\{', text):
        depth, start = 0, m.end() - 1
        end = len(text)
        for j in range(start, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    end = j
                    break
        blocks.append((start, end))
    return blocks


def parse_signatures(source: str) -> dict[str, KernelSignature]:
    """Signatures of every ``extern "C" __global__ void`` kernel in ``source``.

    Finds kernels declared ``extern "C"`` directly or inside an ``extern "C" { ... }`` block,
    across newlines and comments, with ``__launch_bounds__(...)`` before or after ``void`` and
    ``const``/``__restrict__`` qualifiers. Templates and C++-linkage kernels are ignored (they
    have mangled names). Later declarations of a name replace earlier ones.
    """
    text = _strip_comments(source)
    blocks = _extern_c_blocks(text)
    found: dict[str, KernelSignature] = {}
    for m in re.finditer(r"\b__global__\b", text):
        before = text[:m.start()]
        stmt_start = max(before.rfind(";"), before.rfind("}"), before.rfind("{")) + 1
        prefix = before[stmt_start:]
        in_block = any(s < m.start() < e for s, e in blocks)
        if "template" in prefix or not (in_block or re.search(r'\bextern\s+"C"', prefix)):
            continue
        i, words = m.end(), []
        while True:
            attr = _ATTRIBUTE.match(text, i)
            if attr:
                i = _skip_parens(text, attr.end() - 1)
                continue
            word = _WORD.match(text, i)
            if not word:
                break
            words.append(word.group(1))
            i = word.end()
        paren = re.compile(r"\s*\(").match(text, i)
        if not paren or len(words) < 2 or words[-2] != "void":
            continue
        end = _skip_parens(text, paren.end() - 1)
        name = words[-1]
        found[name] = KernelSignature(name, parse_params(text[paren.end():end - 1]))
    return found


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------


def _dim3(value: Any, what: str) -> tuple[int, int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    try:
        dims = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise RequestError(f"{what} must be an int or up to three ints, got {value!r}") from None
    if not 1 <= len(dims) <= 3 or any(d < 1 for d in dims):
        raise RequestError(f"{what} must be one to three positive ints, got {value!r}")
    return dims + (1,) * (3 - len(dims))  # type: ignore[return-value]


@dataclass(frozen=True)
class LaunchConfig:
    """Grid and block shapes (always 3-tuples) and dynamic shared memory bytes of a launch."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared: int = 0

    def __post_init__(self):
        object.__setattr__(self, "grid", _dim3(self.grid, "grid"))
        object.__setattr__(self, "block", _dim3(self.block, "block"))
        object.__setattr__(self, "shared", int(self.shared))


# --------------------------------------------------------------------------------------------
# Libraries
# --------------------------------------------------------------------------------------------

_KINDS = {".cu": "source", ".cubin": "cubin", ".ptx": "ptx", ".fatbin": "fatbin"}
KINDS = tuple(_KINDS)  # file extensions a library may be loaded from
_MAX_THREADS = 1024


def cache_directory() -> str:
    """The compiled-kernel cache directory (``kaas.kernel-cache.directory``), created."""
    path = config.get("kernel-cache.directory") or "~/.cache/dask-kaas/kernels"
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    os.makedirs(path, exist_ok=True)
    return path


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
    """

    def __init__(self, name: str, *, source: str | None = None, path: str | None = None,
                 twins: Mapping[str, Callable] | None = None,
                 constraints: Mapping[str, Mapping[str, Any]] | None = None,
                 options: Sequence[str] = (),
                 signatures: Mapping[str, str] | None = None):
        if (source is None) == (path is None):
            raise KernelError(f"library {name!r}: give exactly one of source= or path=")
        self.name = str(name)
        self.path = os.path.abspath(os.fspath(path)) if path is not None else None
        self.options = tuple(str(o) for o in options)
        if path is not None:
            ext = os.path.splitext(self.path)[1].lower()
            if ext not in _KINDS:
                raise KernelError(f"library {name!r}: cannot load {self.path!r}, expected a "
                                  f"file ending in {', '.join(_KINDS)}")
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
                raise KernelError(f"library {name!r} kernel {kernel!r}: unknown constraint(s) "
                                  f"{sorted(unknown)}; known: 'block', 'max_block'")
        self.signatures = dict(signatures or {})
        content = self.source.encode() if self.source is not None else self._data
        h = hashlib.sha256(self.kind.encode() + b"\0" + content)
        for opt in self.options:
            h.update(b"\0" + opt.encode())
        self.content_hash = h.hexdigest()
        behaviour = {"constraints": self.constraints, "signatures": self.signatures,
                     "twins": {k: _twin_identity(fn) for k, fn in self.twins.items()}}
        self.hash = hashlib.sha256(self.content_hash.encode() + json.dumps(
            behaviour, sort_keys=True, default=list).encode()).hexdigest()
        self._init_caches()

    def _init_caches(self) -> None:
        self._kernels: dict[str, KernelSignature] | None = None
        self._binaries: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_source(cls, name: str, source: str, twins: Mapping[str, Callable] | None = None,
                    **kwargs) -> Library:
        """A library compiled from CUDA C++ ``source``."""
        return cls(name, source=source, twins=twins, **kwargs)

    @classmethod
    def from_file(cls, path: str, twins: Mapping[str, Callable] | None = None, *,
                  name: str | None = None, **kwargs) -> Library:
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
            d["constraints"] = {k: {r: list(v) if isinstance(v, tuple) else v
                                    for r, v in rules.items()}
                                for k, rules in self.constraints.items()}
        if self.signatures:
            d["signatures"] = dict(self.signatures)
        twins = {k: _import_path(fn) for k, fn in self.twins.items()}
        if any(twins.values()):
            d["twins"] = {k: v for k, v in twins.items() if v}
        return d

    DICT_FIELDS = ("name", "kind", "hash", "source", "data", "path", "options", "constraints", "signatures",
                   "twins")

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
        name = d.get("name")
        problem = text_problem(name, "library name")
        if problem is None and not _LIBRARY_NAME.match(name):
            problem = f"library name must be letters, digits, '_', '.' or '-', got {show(name)}"
        if problem:
            raise RequestError(problem)
        registered = registered_libraries().get(name)
        if registered is not None and isinstance(d.get("hash"), str) and registered.hash == d["hash"]:
            return registered
        where = f"library {name!r}"
        kind = d.get("kind", "source")
        if kind not in _KINDS.values():
            raise RequestError(f"{where}: unknown kind {show(kind)}; expected one of {', '.join(_KINDS.values())}")
        common = dict(twins=_allowed_twins(d.get("twins"), where), constraints=_constraints(d.get("constraints"), where),
                      options=_allowed_options(d.get("options", ()), where),
                      signatures=_signatures(d.get("signatures"), where))
        try:
            if kind == "source":
                source = d.get("source")
                if not isinstance(source, str) or len(source) > MAX_SOURCE:
                    raise RequestError(f"{where}: source must be CUDA C++ text of at most {MAX_SOURCE} "
                                       f"characters, got {show(source)}")
                _check_includes(source, where)
                lib = cls(name, source=source, **common)
            else:
                lib = cls._from_bytes(name, kind, _decode_binary(d.get("data"), where), None, **common)
        except KernelError as e:
            raise RequestError(f"{where}: {e}") from None
        if "hash" in d and d["hash"] != lib.hash:
            raise RequestError(f"{where}: its content (source or binary, options, constraints, signatures, host "
                               f"twins) does not match its hash {show(d['hash'])}; host twins that are not "
                               "importable functions cannot travel in a dict: register the library on the workers")
        return lib

    @classmethod
    def _from_bytes(cls, name: str, kind: str, data: bytes, path: str | None,
                    **kwargs) -> Library:
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
            _dim3(grid, "grid")
            block3 = _dim3(block, "block")
        except RequestError as e:
            raise RequestError(f"{where}: {e}") from None
        threads = block3[0] * block3[1] * block3[2]
        if threads > _MAX_THREADS:
            raise RequestError(f"{where}: block {block3} has {threads} threads, CUDA allows at "
                               f"most {_MAX_THREADS} per block")
        rules = self.constraints.get(kernel, {})
        if "block" in rules:
            want = _dim3(rules["block"], "block constraint")
            if block3 != want:
                raise RequestError(f"{where}: needs block == {want}, got block {block3}")
        if "max_block" in rules and threads > int(rules["max_block"]):
            raise RequestError(f"{where}: needs at most max_block={int(rules['max_block'])} "
                               f"threads per block, got block {block3} ({threads} threads)")

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
            _write_atomic(path, data)
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
                    _write_atomic(path, data)
            return path
        if self.path and _file_holds(self.path, self._data):
            return self.path
        path = os.path.join(cache_directory(), f"{self.content_hash}.{self.kind}")
        if not os.path.exists(path):
            _write_atomic(path, self._data)  # type: ignore[arg-type]
        return path

    # -- host twins --------------------------------------------------------------------------

    def twin(self, kernel: str) -> Callable | None:
        """The NumPy host twin of ``kernel``, or None."""
        return self.twins.get(kernel)

    def run_twin(self, kernel: str, launch: LaunchConfig, literal_values: Sequence,
                 buffers: Sequence[np.ndarray]) -> None:
        """Run ``kernel``'s host twin as ``twin(launch, *literals, *typed_views)``.

        ``buffers`` are 1-D uint8 arrays (host device memory), in the order of the kernel's
        pointer parameters; each is viewed as its parameter's dtype (trailing bytes that do
        not fill an element are left out), so the twin's writes land in place. Literals are
        cast to their parameter types. Without a known signature, buffers go in as uint8.
        """
        self.prepare_twin(kernel, launch, literal_values)(buffers)

    def prepare_twin(self, kernel: str, launch: LaunchConfig,
                     literal_values: Sequence) -> Callable[[Sequence[np.ndarray]], None]:
        """:meth:`run_twin` with everything but the buffers decided once: the twin, the checks
        against the signature, the literals cast; returns ``call(buffers)``."""
        fn = self.twin(kernel)
        if fn is None:
            raise KernelError(f"kernel {kernel!r} of library {self.name!r} has no host twin, "
                              "it can only run on a CUDA device")
        sig = self.signature(kernel)
        literals = list(literal_values)
        where = f"library {self.name!r} kernel {kernel!r}"
        dtypes = None
        if sig is not None:
            if len(literals) != len(sig.literals):
                raise RequestError(f"{where}: takes {len(sig.literals)} literal(s), got "
                                   f"{len(literals)}")
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


MAX_SOURCE = 4 * 2**20
MAX_BINARY = 64 * 2**20
_LIBRARY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# NVRTC options a tenant may pass: code generation only, nothing that names a file or directory.
_SAFE_OPTIONS = re.compile(
    r"^(-D[A-Za-z_]\w*(=[\w.+-]*)?|--define-macro=[A-Za-z_]\w*(=[\w.+-]*)?|-U[A-Za-z_]\w*|"
    r"--use_fast_math|-use_fast_math|-lineinfo|--generate-line-info|-G|--device-debug|"
    r"--(fmad|ftz|prec-div|prec-sqrt|extra-device-vectorization|restrict)(=(true|false))?|"
    r"-(fmad|ftz|prec-div|prec-sqrt)=(true|false)|--std=c\+\+(11|14|17|20)|-std=c\+\+(11|14|17|20)|"
    r"--maxrregcount=\d{1,3}|-maxrregcount=\d{1,3}|-default-device|--default-device)$")
_INCLUDE = re.compile(r"^[ \t]*#[ \t]*include[ \t]*(.*)$", re.M)
_NVRTC_HEADER = re.compile(r"^<[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*(\.h|\.hpp|\.cuh)?>\s*(//.*)?$")


def _allowed_twins(value, where: str) -> dict[str, Callable]:
    """Host twins named by ``"module:function"`` in a library dict, from allowed modules only."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > 1024:
        raise RequestError(f"{where}: twins must map kernel names to 'module:function', got {show(value)}")
    allowed = set(config.get("twins.allowed-modules") or ())
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
                f"module in kaas.twins.allowed-modules (now: {', '.join(sorted(allowed)) or 'none'})")
        fn = getattr(importlib.import_module(module), qualname, None)
        if not callable(fn) or getattr(fn, "__module__", None) != module:
            raise RequestError(f"{where}: {show(spec)} is not a function defined in module {module!r}")
        twins[kernel] = fn
    return twins


def _constraints(value, where: str):
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(r, Mapping) and all(isinstance(n, str) for n in r)
            for k, r in value.items()):
        raise RequestError(f"{where}: constraints must map kernel names to {{'block': [x, y, z]}} or "
                           f"{{'max_block': n}}, got {show(value)}")
    for kernel, rules in value.items():
        block, most = rules.get("block"), rules.get("max_block")
        if block is not None:
            try:
                _dim3(block, "block constraint")
            except RequestError as e:
                raise RequestError(f"{where} kernel {show(kernel)}: {e}") from None
        if most is not None and (not isinstance(most, int) or isinstance(most, bool) or most < 1):
            raise RequestError(f"{where} kernel {show(kernel)}: max_block must be a positive int, got {show(most)}")
    return value


def _allowed_options(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > 32:
        raise RequestError(f"{where}: options must be a list of at most 32 NVRTC options, got {show(value)}")
    for option in value:
        if not isinstance(option, str) or not _SAFE_OPTIONS.match(option):
            raise RequestError(f"{where}: NVRTC option {show(option)} is not allowed in a request (only options "
                               "that change code generation, such as -DNAME=1, --use_fast_math, -lineinfo, "
                               "--std=c++17, --maxrregcount=N)")
    return tuple(value)


def _signatures(value, where: str):
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) > 1024 or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) <= 4096 for k, v in value.items()):
        raise RequestError(f"{where}: signatures must map kernel names to C parameter lists, got {show(value)}")
    return value


def _check_includes(source: str, where: str) -> None:
    """A tenant's source may include NVRTC's own headers (``<cuda_fp16.h>``), never a file by path."""
    for m in _INCLUDE.finditer(source):
        if not _NVRTC_HEADER.match(m.group(1).strip()):
            raise RequestError(f"{where}: #include {show(m.group(1).strip())} is not allowed in a request's source "
                               "(only NVRTC's built-in headers, as <name.h>)")


def _decode_binary(value, where: str) -> bytes:
    if not isinstance(value, str) or len(value) > MAX_BINARY * 4 // 3 + 4:
        raise RequestError(f"{where}: data must be base64 text of at most {MAX_BINARY} bytes, got {show(value)}")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: data is not valid base64") from None
    if not data:
        raise RequestError(f"{where}: data is empty")
    return data


def _twin_identity(fn: Callable) -> str:
    """What identifies a host twin in a library's hash: its import path, else its pickled bytes."""
    path = _import_path(fn)
    if path is not None:
        return path
    try:
        import cloudpickle

        return "pickle:" + hashlib.sha256(cloudpickle.dumps(fn)).hexdigest()
    except Exception:  # noqa: BLE001 - unpicklable: unique to this object
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


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

_registry: dict[str, Library] = {}
_by_path: dict[tuple[str, int, int], Library] = {}
_registry_lock = threading.Lock()


def register_library(lib: Library) -> Library:
    """Make ``lib`` resolvable by its name (replacing any library of that name); returns it."""
    if not isinstance(lib, Library):
        raise TypeError(f"register_library expects a Library, got {type(lib).__name__}")
    with _registry_lock:
        _registry[lib.name] = lib
    return lib


def registered_libraries() -> dict[str, Library]:
    """Registered libraries by name (``"builtin"`` included)."""
    _ensure_builtin()
    return dict(_registry)


def _ensure_builtin() -> None:
    if "builtin" not in _registry:
        from .kernels import builtin as lib

        with _registry_lock:
            _registry.setdefault("builtin", lib)


def is_registered(lib: Library) -> bool:
    """Whether ``lib`` is the library registered under its name (shared by every tenant)."""
    _ensure_builtin()
    registered = _registry.get(lib.name)
    return registered is lib or (registered is not None and registered.hash == lib.hash)


def resolve_library(spec: Library | str | os.PathLike) -> Library:
    """The library for ``spec``: a :class:`Library` (as is), a registered name, or a path
    ending in ``.cu``/``.cubin``/``.ptx``/``.fatbin`` (loaded once per path and mtime).
    Raises :class:`RequestError` for unknown names and missing paths."""
    if isinstance(spec, Library):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise RequestError(f"a kernel library is a Library, a registered name or a path, "
                           f"got {spec!r}")
    _ensure_builtin()
    key = os.fspath(spec)
    lib = _registry.get(key)
    if lib is not None:
        return lib
    if os.path.splitext(key)[1].lower() in _KINDS:
        path = os.path.abspath(os.path.expanduser(key))
        try:
            st = os.stat(path)
        except OSError:
            raise RequestError(f"kernel library file {key!r} does not exist "
                               f"(looked at {path!r})") from None
        memo = (path, st.st_mtime_ns, st.st_size)
        with _registry_lock:
            lib = _by_path.get(memo)
            if lib is None:
                lib = Library.from_file(path)
                _by_path[memo] = lib
        return lib
    names = ", ".join(repr(n) for n in sorted(_registry))
    raise RequestError(f"unknown kernel library {spec!r}: registered libraries are {names}; "
                       f"or give a path to a .cu, .cubin, .ptx or .fatbin file")


def __getattr__(name: str) -> Any:
    if name == "builtin":  # built on first use; dask_kaas.kernels imports this module
        _ensure_builtin()
        return _registry["builtin"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The registry of kernel libraries by name (per process), and how a library named in a request is
found: a :class:`Library`, a registered name, or a file path."""

from __future__ import annotations

import os
import threading

from ..errors import RequestError
from .library import _KINDS, REGISTERED, Library

__all__ = ["is_registered", "register_library", "registered_libraries", "resolve_library"]

_registry = REGISTERED  # beside Library, which looks a name up there when it reads a library dict
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

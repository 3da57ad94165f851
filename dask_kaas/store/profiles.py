"""Store profiles: named stores kept as small YAML files (``stores/<name>.yaml``).

A profile names a store's URL, its fsspec ``storage_options`` and the
namespaces every tenant may read (``shared``)::

    # stores/local.yaml
    url: file://${XDG_DATA_HOME:-~/.local/share}/dask-kaas/store
    shared: [public]
    storage_options: {}

String values inside ``url`` and ``storage_options`` may use ``${VAR}`` (the
environment variable, which must be set) and ``${VAR:-default}`` (the
default when it is unset or empty); options left as empty strings after
expansion are dropped, so ``endpoint_url: ${AWS_ENDPOINT_URL:-}`` means "let
the client decide" when the variable is not set. ``$$`` is a literal ``$``.

Profiles are searched in :func:`profile_dirs` order, the first file of a
name wins. ``local`` (``$XDG_DATA_HOME/dask-kaas/store``, by default
``~/.local/share/dask-kaas/store``, the same whatever the current directory) and ``memory``
(``memory://dask-kaas``) are built in, so they exist even without any
profile file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypedDict, overload

import yaml

from .. import config
from ..errors import StoreError
from .urls import is_location, normalize_url

__all__ = [
    "BUILTIN_PROFILES",
    "DEFAULT_PROFILE",
    "StoreProfile",
    "default_store_spec",
    "expand_env",
    "list_profiles",
    "load_profile",
    "profile_dirs",
    "resolve_store",
]


class StoreProfile(TypedDict):
    """A validated store profile (what :func:`load_profile` returns)."""

    url: str  # normalized (a built-in one: before its ${VAR} are expanded)
    storage_options: dict[str, Any]  # fsspec's, passed through
    shared: list[str]  # namespaces every tenant may read


#: The profile used when neither ``--store`` nor ``kaas.store`` names one.
DEFAULT_PROFILE = "local"

#: Profiles that exist without a file (a file of the same name overrides them).
BUILTIN_PROFILES: dict[str, StoreProfile] = {
    "local": {
        "url": "file://${XDG_DATA_HOME:-~/.local/share}/dask-kaas/store",
        "storage_options": {},
        "shared": ["public"],
    },
    "memory": {"url": "memory://dask-kaas", "storage_options": {}, "shared": ["public"]},
}

_SUFFIXES = (".yaml", ".yml")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_FIELDS = {"url", "storage_options", "shared"}


def profile_dirs() -> list[str]:
    """Directories searched for ``<name>.yaml``, first match wins.

    1. the ``kaas.store-profiles`` dask config list (a single string works too),
    2. ``./stores`` under the current directory,
    3. the source checkout's ``stores/`` next to the ``dask_kaas`` package, when it exists.

    Absolute paths, without duplicates; directories need not exist (they are
    skipped when searching).

    Returns
    -------
    list of str

    Raises
    ------
    ConfigError
        When ``kaas.store-profiles`` is neither null, a string nor a list.

    Examples
    --------
    >>> import os, tempfile
    >>> import dask
    >>> from dask_kaas.store import profile_dirs
    >>> directory = tempfile.mkdtemp()
    >>> with dask.config.set({"kaas.store-profiles": [directory]}):
    ...     dirs = profile_dirs()
    >>> dirs[0] == directory, os.path.abspath("stores") in dirs
    (True, True)
    """
    extra = config.get_list("store-profiles")
    dirs = [os.path.abspath(os.path.expanduser(os.fspath(d))) for d in extra]
    dirs.append(os.path.abspath("stores"))
    checkout = Path(__file__).resolve().parents[2] / "stores"  # the checkout holding dask_kaas/store/
    if checkout.is_dir():
        dirs.append(str(checkout))
    seen, out = set(), []
    for d in dirs:
        key = os.path.realpath(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def list_profiles() -> dict[str, str]:
    """``{name: path}`` of every profile, in search order; built-in ones not
    overridden by a file have the path ``"<built-in>"``.

    A profile file is ``<name>.yaml`` or ``<name>.yml`` in a directory of :func:`profile_dirs`
    (unreadable directories are skipped); the first file of a name wins. The files are not
    read here: :func:`load_profile` validates one.

    Returns
    -------
    dict of str to str

    Raises
    ------
    ConfigError
        When ``kaas.store-profiles`` is neither null, a string nor a list.

    Examples
    --------
    >>> import os, tempfile
    >>> import dask
    >>> directory = tempfile.mkdtemp()
    >>> with open(os.path.join(directory, "team.yaml"), "w") as f:
    ...     _ = f.write("url: memory://${DOC_KAAS_UNSET:-team}\\nshared: [public]\\n")
    >>> from dask_kaas.store import list_profiles
    >>> with dask.config.set({"kaas.store-profiles": [directory]}):
    ...     found = list_profiles()
    >>> found["team"] == os.path.join(directory, "team.yaml"), {"local", "memory"} <= set(found)
    (True, True)
    """
    found: dict[str, str] = {}
    for d in profile_dirs():
        try:
            entries = sorted(os.listdir(d))
        except OSError:
            continue
        for entry in entries:
            stem, ext = os.path.splitext(entry)
            path = os.path.join(d, entry)
            if ext in _SUFFIXES and _NAME.match(stem) and stem not in found and os.path.isfile(path):
                found[stem] = path
    for name in BUILTIN_PROFILES:
        found.setdefault(name, "<built-in>")
    return found


def _find(name: str) -> str | None:
    for d in profile_dirs():
        for ext in _SUFFIXES:
            path = os.path.join(d, name + ext)
            if os.path.isfile(path):
                return path
    return None


@overload
def expand_env(value: str, *, where: str = "value") -> str: ...
@overload
def expand_env(value: dict[str, Any], *, where: str = "value") -> dict[str, Any]: ...
@overload
def expand_env(value: object, *, where: str = "value") -> object: ...
def expand_env(value: object, *, where: str = "value") -> object:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of ``value``
    (str, list or dict, recursively); dict entries that end up as empty
    strings are dropped. An unset ``${VAR}`` without default is a StoreError."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            var, default = m.group(1), m.group(2)
            got = os.environ.get(var)
            if default is not None:
                return got if got else default
            if got is None:
                raise StoreError(
                    f"{where}: environment variable {var} is not set (write ${{{var}:-}} to allow it to be unset)"
                )
            return got

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        out: dict[Any, object] = {}
        for k, v in value.items():
            v = expand_env(v, where=f"{where}.{k}")
            if isinstance(v, str) and v == "":
                continue
            out[k] = v
        return out
    if isinstance(value, (list, tuple)):
        return [expand_env(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _default_shared() -> list[str]:
    return [str(s) for s in config.get_list("store-shared")]


def _validate(doc: object, where: str) -> StoreProfile:
    if not isinstance(doc, dict):
        raise StoreError(f"{where}: a store profile must be a mapping with a 'url', got {type(doc).__name__}")
    unknown = set(doc) - _FIELDS
    if unknown:
        raise StoreError(f"{where}: unknown field(s) {sorted(unknown)}; a profile has {sorted(_FIELDS)}")
    url = doc.get("url")
    if not isinstance(url, str) or not url.strip():
        raise StoreError(f"{where}: 'url' must be a non-empty string, got {url!r}")
    options = doc.get("storage_options")
    if options is None:
        options = {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise StoreError(f"{where}: 'storage_options' must be a mapping of option names, got {options!r}")
    if "shared" in doc:
        shared = doc["shared"]
        if shared is None:
            shared = []
        elif isinstance(shared, str):
            shared = [shared]
        if not isinstance(shared, list) or not all(isinstance(s, str) and s for s in shared):
            raise StoreError(f"{where}: 'shared' must be a list of namespace names, got {shared!r}")
    else:
        shared = _default_shared()
    url = expand_env(url, where=f"{where}: url").strip()
    if not url:
        raise StoreError(f"{where}: 'url' is empty after expanding environment variables")
    return {
        "url": normalize_url(url),
        "storage_options": expand_env(options, where=f"{where}: storage_options"),
        "shared": list(dict.fromkeys(shared)),
    }


def load_profile(name: str) -> StoreProfile:
    """``dict(url=, storage_options=, shared=)`` of the profile ``name``.

    ``file://`` URLs come back absolute (relative ones resolve against the
    current directory); environment variables are expanded. StoreError names
    the profile and the directories searched when there is no such profile,
    and the file when it is not a valid profile.

    Parameters
    ----------
    name : str
        Letters, digits, ``_``, ``-`` and ``.`` (not first). A file of that name in
        :func:`profile_dirs` wins over the built-in ``local`` and ``memory``.

    Returns
    -------
    dict
        ``url`` (normalized), ``storage_options`` (options that expand to ``""`` dropped) and
        ``shared`` (a list; ``kaas.store-shared`` when the profile has no ``shared`` field).

    Raises
    ------
    StoreError
        For an invalid name, no such profile, a file that cannot be read or is not valid YAML,
        unknown fields, a missing or empty ``url``, malformed ``storage_options`` or ``shared``,
        or a ``${VAR}`` without default whose variable is not set.

    Examples
    --------
    >>> import os, tempfile
    >>> import dask
    >>> directory = tempfile.mkdtemp()
    >>> with open(os.path.join(directory, "team.yaml"), "w") as f:
    ...     _ = f.write("url: memory://${DOC_KAAS_UNSET:-team}\\nshared: [public]\\n")
    >>> from dask_kaas.store import load_profile
    >>> with dask.config.set({"kaas.store-profiles": [directory]}):
    ...     load_profile("team")
    {'url': 'memory://team', 'storage_options': {}, 'shared': ['public']}
    >>> load_profile("memory")["url"]
    'memory://dask-kaas'
    >>> load_profile("no-such-profile")
    Traceback (most recent call last):
    ...
    dask_kaas.errors.StoreError: no store profile 'no-such-profile': no no-such-profile.yaml in ...
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoreError(f"{name!r} is not a valid store profile name (letters, digits, '_', '-', '.')")
    path = _find(name)
    if path is None:
        if name in BUILTIN_PROFILES:
            return _validate(BUILTIN_PROFILES[name], f"built-in store profile {name!r}")
        known = ", ".join(sorted(list_profiles())) or "none"
        raise StoreError(
            f"no store profile {name!r}: no {name}.yaml in {', '.join(profile_dirs())} "
            f"(known profiles: {known}; a store URL needs a scheme such as file:// or s3://)"
        )
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise StoreError(f"store profile {name!r}: {path} is not valid YAML: {e}") from e
    except OSError as e:
        raise StoreError(f"store profile {name!r}: cannot read {path}: {e}") from e
    return _validate(doc, f"store profile {name!r} ({path})")


def resolve_store(spec: str) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """``(url, storage_options, shared)`` for a store spec.

    A spec containing ``://`` is a URL (no storage options; ``shared`` from
    the ``kaas.store-shared`` dask config); a spec containing a path
    separator is a local path (a ``file://`` store there); anything else is a
    profile name (:func:`load_profile`).

    Parameters
    ----------
    spec : str
        A URL, a local path or a profile name (surrounding whitespace ignored).

    Returns
    -------
    tuple of (str, dict, tuple of str)
        ``(url, storage_options, shared)``, as :class:`~dask_kaas.BufferStore` takes them.

    Raises
    ------
    StoreError
        For an empty or non-string spec, and whatever :func:`load_profile` raises.

    See Also
    --------
    dask_kaas.store.open_store : the store itself.

    Examples
    --------
    >>> from dask_kaas.store import resolve_store
    >>> resolve_store("s3://bucket/prefix/")
    ('s3://bucket/prefix', {}, ())
    >>> resolve_store("/data/kaas")
    ('file:///data/kaas', {}, ())
    >>> resolve_store("memory")
    ('memory://dask-kaas', {}, ('public',))
    """
    if not isinstance(spec, str) or not spec.strip():
        raise StoreError(f"a store must be a profile name or a URL, got {spec!r}")
    spec = spec.strip()
    if is_location(spec):
        return normalize_url(spec), {}, tuple(_default_shared())
    profile = load_profile(spec)
    return profile["url"], profile["storage_options"], tuple(profile["shared"])


def default_store_spec() -> str:
    """The ``kaas.store`` dask config value, or :data:`DEFAULT_PROFILE` when it is null.

    Returns
    -------
    str
        A profile name or URL, for :func:`resolve_store`.

    Examples
    --------
    >>> import dask
    >>> from dask_kaas.store import default_store_spec
    >>> with dask.config.set({"kaas.store": None}):
    ...     default_store_spec()
    'local'
    >>> with dask.config.set({"kaas.store": "s3://bucket/kaas"}):
    ...     default_store_spec()
    's3://bucket/kaas'
    """
    spec = config.get("store")
    return DEFAULT_PROFILE if spec in (None, "") else str(spec)

"""What names may be: tenants and namespaces, store keys, buffer, kernel and library names.

Every name in a request is tenant input, and reaches logs, store paths, dashboards and the
messages that workers send the scheduler. So each is a bounded string that UTF-8 can encode
(no lone surrogates) and has no control characters; tenants and namespaces are safe path
segments, kernel names are C identifiers. The checks are pure: each returns what is wrong
(or None), and the caller raises its own error type.
"""

from __future__ import annotations

import re

DEFAULT_NAMESPACE = "default"
MAX_NAME = 256
MAX_TENANT = 128
MAX_KEY = 1024
# a store key's path segments become file and object names: 255 bytes is a file name's limit on the
# usual file systems, and a key's last segment gets ".json" (its pointer) appended
MAX_SEGMENT_BYTES = 250

NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def show(value, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters: error messages never echo unbounded input
    (and never recurse into a deeply nested one)."""
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxtuple = 3, limit, limit, 6, 6, 6
    try:
        text = r.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    return text if len(text) <= 3 * limit else text[: 3 * limit] + "..."


def text_problem(value, what: str, limit: int = MAX_NAME) -> str | None:
    """What is wrong with a name-like string: type, length, encoding, control characters."""
    if type(value) is not str or not value:  # exactly str: a subclass could answer == and hash as it likes
        return f"{what} must be a non-empty string (a str, not a subclass), got {show(value)}"
    if len(value) > limit:
        return f"{what} is {len(value)} characters long, more than {limit}: {show(value)}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid Unicode (it holds a lone surrogate): {show(value)}"
    if _CONTROL.search(value):
        return f"{what} holds a control character: {show(value)}"
    return None


def namespace_problem(value, what: str = "namespace") -> str | None:
    problem = text_problem(value, what, MAX_TENANT)
    if problem is None and not NAMESPACE_RE.match(value):
        problem = f"{what} must be letters, digits, '_', '.' or '-' (not first), got {show(value)}"
    return problem


def key_problem(key) -> str | None:
    """What is wrong with a store key (without a ``namespace:`` prefix)."""
    problem = text_problem(key, "store key", MAX_KEY)
    if problem is not None:
        return problem
    if "\\" in key or ":" in key:
        return f"store key {show(key)} must not contain a backslash or ':'"
    nbytes = len(key.encode("utf-8"))
    if nbytes > MAX_KEY:
        return f"store key {show(key)} is {nbytes} bytes in UTF-8, more than {MAX_KEY}"
    for seg in key.split("/"):
        if seg in ("", ".", "..") or seg.endswith(".json") or seg.startswith(".tmp"):
            return (
                f"store key {show(key)}: segments separated by '/' must be non-empty, not '.' or '..', "
                "and not end in '.json' or start with '.tmp' (no leading or trailing '/')"
            )
        if (seg_bytes := len(seg.encode("utf-8"))) > MAX_SEGMENT_BYTES:
            return (
                f"store key {show(key)}: a segment between '/' is {seg_bytes} bytes in UTF-8, "
                f"more than {MAX_SEGMENT_BYTES} (it names a file or object)"
            )
    return None


def buffer_key_problem(key) -> str | None:
    """What is wrong with a buffer's key: a store key, or ``"namespace:key"``."""
    problem = text_problem(key, "key", MAX_KEY + MAX_TENANT + 1)
    if problem is not None:
        return problem
    namespace, sep, plain = key.rpartition(":")
    if sep:
        problem = namespace_problem(namespace, f"namespace of key {show(key)}")
    return problem or key_problem(plain)


def identifier_problem(value, what: str) -> str | None:
    problem = text_problem(value, what)
    if problem is None and not IDENTIFIER_RE.match(value):
        problem = f"{what} must be a C identifier (letters, digits, '_'; not a digit first), got {show(value)}"
    return problem


def split_key(key: str, tenant: str | None) -> tuple[str, str]:
    """``(namespace, key)`` a tenant's buffer key names, without access checks: ``"ns:key"`` or its own namespace."""
    namespace, sep, plain = key.rpartition(":")
    return (namespace, plain) if sep else (DEFAULT_NAMESPACE if tenant is None else tenant, key)

"""Store URLs in one spelling, so the same store compares equal and means the same on every worker."""

from __future__ import annotations

import os

from ..errors import StoreError

__all__ = ["normalize_url"]


def normalize_url(url: str) -> str:
    """``file://`` URLs and plain paths made absolute (``~`` expanded, against the current
    directory); other URLs without a trailing ``/``.

    Raises
    ------
    StoreError
        When ``url`` is not a non-empty string.
    """
    if not isinstance(url, str) or not url:
        raise StoreError(f"store URL must be a non-empty str, got {url!r}")
    if url.startswith("file://"):
        return "file://" + os.path.abspath(os.path.expanduser(url[len("file://") :]))
    if "://" not in url:
        return "file://" + os.path.abspath(os.path.expanduser(url))
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rstrip('/')}"


def is_location(spec: str) -> bool:
    """Whether a store spec is a URL or a path (it has ``://`` or a path separator); anything else is a
    store profile's name, wherever a store is named (``BufferStore``, ``open_store``, ``--store``)."""
    return "://" in spec or "/" in spec or os.sep in spec

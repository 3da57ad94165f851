"""Local files written whole or not at all."""

from __future__ import annotations

import contextlib
import os
import uuid


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part:
    into a ``.tmp-*`` file beside it, then renamed over it (a writer killed midway leaves only the
    temporary file, which ``BufferStore.gc`` removes from stores)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

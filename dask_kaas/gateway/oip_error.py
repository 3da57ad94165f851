"""The one error of the inference protocol's parsing: an answer's status and message."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import KaasError

__all__ = ["OipError"]


class OipError(KaasError):
    """A call the protocol answers with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})

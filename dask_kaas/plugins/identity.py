"""Who a TLS peer is: the common name of its certificate, and which names may join as workers (pure)."""

from __future__ import annotations

import fnmatch

__all__ = ["common_name", "matches_any", "worker_refusal"]


def common_name(cert: dict | None) -> str | None:
    """The first common name in the subject of a certificate as ``ssl.SSLSocket.getpeercert`` gives it."""
    names = [value for rdn in (cert or {}).get("subject", ()) for key, value in rdn if key == "commonName"]
    return names[0] if names and type(names[0]) is str else None


def matches_any(name: str, patterns) -> bool:
    """Whether ``name`` matches one of the shell patterns (``fnmatch``, case-sensitive)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def worker_refusal(cert: dict | None, patterns) -> str | None:
    """Why a peer with ``cert`` may not join as a worker (None: it may), ``patterns`` being
    ``kaas.scheduler.worker-names``: shell patterns (``fnmatch``, case-sensitive) of the common names
    that may; None lets any certificate the cluster's CA signed join."""
    if patterns is None:
        return None
    name = common_name(cert)
    if name is None:
        return "a worker must present a TLS certificate with a common name (kaas.scheduler.worker-names is set)"
    if not matches_any(name, patterns):
        return (
            f"the certificate {name!r} may not join as a worker: its common name matches none of "
            f"kaas.scheduler.worker-names"
        )
    return None

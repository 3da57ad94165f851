"""Bearer tokens per tenant, stored hashed.

The tokens file (YAML) maps tenants to the SHA-256 hashes of their tokens, and optionally a rate::

    tenants:
      alice:
        tokens: ["sha256:9f86d0..."]
        rate: 50        # requests per second through the gateway (optional)
        burst: 100      # requests allowed at once before the rate applies (default: rate, at least 1)

A token is 32 random bytes (``secrets.token_urlsafe``), so a plain SHA-256 is the right hash: it
cannot be brute-forced, and lookup is one dict access. The file never holds a token itself;
``dask kaas token add TENANT`` prints a new one once. The gateway reads the file again when it
changes, so tokens are added and revoked without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import threading
from dataclasses import dataclass, field

import yaml

from ..errors import ConfigError
from ..files import write_atomic
from ..names import namespace_problem, show

__all__ = ["TenantEntry", "Tokens", "add_token", "hash_token", "load_tokens", "new_token", "revoke_tenant"]

PREFIX = "sha256:"
MAX_TOKEN = 512


def hash_token(token: str) -> str:
    """``"sha256:<hex>"`` of a token, as the tokens file stores it."""
    return PREFIX + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe."""
    return "kaas_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TenantEntry:
    tenant: str
    hashes: tuple[str, ...] = ()
    rate: float | None = None  # requests per second
    burst: float | None = None

    def to_dict(self) -> dict:
        d: dict = {"tokens": list(self.hashes)}
        if self.rate is not None:
            d["rate"] = self.rate
        if self.burst is not None:
            d["burst"] = self.burst
        return d


def _positive(value, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where} must be a positive number, got {show(value)}")
    return float(value)


def _parse(doc, path: str) -> dict[str, TenantEntry]:
    if doc is None:
        return {}
    if not isinstance(doc, dict) or set(doc) - {"tenants"}:
        raise ConfigError(f"tokens file {path}: expected a mapping with one field 'tenants'")
    tenants = doc.get("tenants") or {}
    if not isinstance(tenants, dict):
        raise ConfigError(f"tokens file {path}: 'tenants' must map tenant names to entries")
    out = {}
    for tenant, entry in tenants.items():
        problem = namespace_problem(tenant, "tenant")
        if problem:
            raise ConfigError(f"tokens file {path}: {problem}")
        entry = entry or {}
        if not isinstance(entry, dict) or set(entry) - {"tokens", "rate", "burst"}:
            raise ConfigError(f"tokens file {path}: tenant {tenant!r}: expected fields tokens, rate, burst")
        hashes = entry.get("tokens") or []
        if not isinstance(hashes, list) or not all(
            isinstance(h, str) and h.startswith(PREFIX) and len(h) == len(PREFIX) + 64 for h in hashes
        ):
            raise ConfigError(
                f"tokens file {path}: tenant {tenant!r}: tokens must be a list of 'sha256:<64 hex>' "
                "hashes (never tokens themselves: add them with `dask kaas token add`)"
            )
        where = f"tokens file {path}: tenant {tenant!r}"
        out[tenant] = TenantEntry(
            tenant,
            tuple(hashes),
            _positive(entry.get("rate"), f"{where}: rate"),
            _positive(entry.get("burst"), f"{where}: burst"),
        )
    return out


def load_tokens(path: str) -> dict[str, TenantEntry]:
    """The tenants of a tokens file; ConfigError naming what is wrong. A missing file has none."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"tokens file {path}: cannot read it ({e})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"tokens file {path}: not valid YAML ({str(e)[:200]})") from None
    return _parse(doc, path)


def _save(path: str, entries: dict[str, TenantEntry]) -> None:
    doc = {"tenants": {t: e.to_dict() for t, e in sorted(entries.items())}}
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False).encode("utf-8"))
    os.chmod(path, 0o600)


def add_token(path: str, tenant: str, *, rate: float | None = None, burst: float | None = None) -> str:
    """Add a new token for ``tenant`` to the tokens file (created if absent); return the token.

    ``rate``/``burst`` set the tenant's rate limit when given (kept otherwise).
    """
    problem = namespace_problem(tenant, "tenant")
    if problem:
        raise ConfigError(problem)
    entries = load_tokens(path)
    old = entries.get(tenant, TenantEntry(tenant))
    token = new_token()
    entries[tenant] = TenantEntry(
        tenant,
        (*old.hashes, hash_token(token)),
        _positive(rate, "rate") if rate is not None else old.rate,
        _positive(burst, "burst") if burst is not None else old.burst,
    )
    _save(path, entries)
    return token


def revoke_tenant(path: str, tenant: str) -> int:
    """Remove every token of ``tenant``; how many there were."""
    entries = load_tokens(path)
    entry = entries.pop(tenant, None)
    if entry is None:
        raise ConfigError(f"tokens file {path}: no tenant {tenant!r}")
    _save(path, entries)
    return len(entry.hashes)


@dataclass
class Tokens:
    """Who a bearer token is: read from a tokens file, and read again when the file changes.

    Parameters
    ----------
    path : str
        The tokens file.
    """

    path: str
    _entries: dict[str, TenantEntry] = field(default_factory=dict, repr=False)
    _by_hash: dict[str, str] = field(default_factory=dict, repr=False)
    _signature: tuple | None = field(default=None, repr=False)
    loads: int = field(default=0, repr=False)  # how many times the file was read: changes with every reload
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        self.path = os.path.expanduser(self.path)
        self.refresh()

    def refresh(self) -> None:
        """Read the file again if it changed since it was read (a bad file keeps the old tokens)."""
        try:
            st = os.stat(self.path)
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            signature = None
        if signature == self._signature and self._signature is not None:
            return
        with self._lock:
            entries = load_tokens(self.path)
            self._entries = entries
            self._by_hash = {h: e.tenant for e in entries.values() for h in e.hashes}
            self._signature = signature
            self.loads += 1

    @property
    def tenants(self) -> dict[str, TenantEntry]:
        return dict(self._entries)

    def tenant_of(self, authorization: str | None) -> str | None:
        """The tenant of an ``Authorization: Bearer <token>`` header, or None."""
        if not authorization or len(authorization) > MAX_TOKEN + 16:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token or len(token.strip()) > MAX_TOKEN:
            return None
        try:
            digest = hash_token(token.strip())
        except UnicodeEncodeError:
            return None
        tenant = self._by_hash.get(digest)
        # the dict lookup above already found it; compare_digest keeps the final check constant-time
        if tenant is None or not any(hmac.compare_digest(digest, h) for h in self._entries[tenant].hashes):
            return None
        return tenant

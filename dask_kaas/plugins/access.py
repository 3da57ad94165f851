"""Who may do what on a cluster shared by tenants who hold Dask clients (pure).

Under Dask's mutual TLS every connection presents a certificate of the cluster's CA. Its common name
gives the peer a role:

- **worker**: matches ``kaas.scheduler.worker-names`` (the cluster's own processes: workers, and the
  scheduler's certificate when it connects to them);
- **operator**: matches ``kaas.scheduler.operator-names`` (the gateway, an administrator's client):
  Dask's full client interface, and requests for any tenant;
- **tenant**: any other name, through ``kaas.scheduler.tenant-map``.

With ``kaas.scheduler.tenant-clients: requests-only`` a tenant's connection may only do what a client
of KaaS requests needs (:data:`TENANT_RPC`, :data:`TENANT_STREAM`): submit graphs of requests, gather,
release and cancel its own keys. Workers and nannies take connections from workers and operators only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .identity import common_name, matches_any

__all__ = [
    "QUIET_STREAM",
    "REQUESTS_ONLY",
    "TENANT_CLIENT_MODES",
    "TENANT_RPC",
    "TENANT_STREAM",
    "AccessRules",
    "Role",
    "foreign_keys",
]

TENANT_CLIENT_MODES = (None, "requests-only")

# scheduler handlers (one request, one answer) a tenant's client may call
TENANT_RPC = frozenset({"identity", "register-client", "gather", "kaas_batch_info"})
# answered by their own checks (register-worker: kaas.scheduler.worker-names, which requests-only requires)
CHECKED_ELSEWHERE = frozenset({"register-worker"})
# messages on a tenant client's stream to the scheduler
TENANT_STREAM = frozenset(
    {"update-graph", "client-desires-keys", "client-releases-keys", "cancel-keys", "heartbeat-client", "close-client"}
)
# what a client sends on its own at start (Dask's print and warning topics): dropped without a warning
QUIET_STREAM = frozenset({"subscribe-topic", "unsubscribe-topic"})
# of those, the ones naming keys, which must be the tenant's own
KEYED_STREAM = frozenset({"client-desires-keys", "client-releases-keys", "cancel-keys"})


@dataclass(frozen=True)
class Role:
    """What a certificate's common name makes its holder: ``kind`` one of worker, operator, tenant
    (``tenant`` its tenant) or anonymous (no certificate, or no common name)."""

    kind: str
    name: str | None = None
    tenant: str | None = None

    @property
    def trusted(self) -> bool:
        return self.kind in ("worker", "operator")


@dataclass(frozen=True)
class AccessRules:
    """The cluster's access settings, as the scheduler plugin reads them from ``kaas.scheduler.*``."""

    tenant_clients: str | None = None
    worker_names: tuple[str, ...] | None = None
    operator_names: tuple[str, ...] = ()
    tenant_map: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tenant_clients not in TENANT_CLIENT_MODES:
            raise ConfigError(
                f"kaas.scheduler.tenant-clients must be null or 'requests-only', got {self.tenant_clients!r}"
            )
        if self.locked and not self.worker_names:
            raise ConfigError(
                "kaas.scheduler.tenant-clients: requests-only needs kaas.scheduler.worker-names "
                "(the certificates that may join as workers; every other one is a tenant's)"
            )

    @property
    def locked(self) -> bool:
        """Whether tenants' connections are held to :data:`TENANT_RPC` and :data:`TENANT_STREAM`."""
        return self.tenant_clients == "requests-only"

    def role(self, cert: dict | None) -> Role:
        name = common_name(cert)
        if name is None:
            return Role("anonymous")
        if self.worker_names and matches_any(name, self.worker_names):
            return Role("worker", name)
        if matches_any(name, self.operator_names):
            return Role("operator", name)
        return Role("tenant", name, self.tenant_map.get(name, name))

    def rpc_refusal(self, role: Role, op: str) -> str | None:
        """Why a connection of ``role`` may not call the scheduler's handler ``op`` (None: it may)."""
        if not self.locked or role.trusted or op in TENANT_RPC or op in CHECKED_ELSEWHERE:
            return None
        return f"{_who(role)} may not call the scheduler's {op!r} ({REQUESTS_ONLY})"

    def stream_refusal(self, role: Role, op: str) -> str | None:
        """Why a client stream of ``role`` may not send ``op`` (None: it may)."""
        if not self.locked or role.trusted or op in TENANT_STREAM:
            return None
        return f"{_who(role)} may not send {op!r} to the scheduler ({REQUESTS_ONLY})"

    def peer_refusal(self, role: Role) -> str | None:
        """Why a connection of ``role`` may not talk to a worker or nanny at all (None: it may)."""
        if not self.locked or role.trusted:
            return None
        return (
            f"{_who(role)} may not connect to a worker ({REQUESTS_ONLY}: tenants reach workers through the scheduler)"
        )

    def to_dict(self) -> dict:
        return {
            "tenant_clients": self.tenant_clients,
            "worker_names": list(self.worker_names or ()) or None,
            "operator_names": list(self.operator_names),
            "tenant_map": dict(self.tenant_map),
        }

    @classmethod
    def from_dict(cls, d: dict) -> AccessRules:
        names = d.get("worker_names")
        return cls(
            d.get("tenant_clients"),
            tuple(names) if names else None,
            tuple(d.get("operator_names") or ()),
            dict(d.get("tenant_map") or {}),
        )


REQUESTS_ONLY = "kaas.scheduler.tenant-clients: requests-only"  # named in every refusal


def _who(role: Role) -> str:
    return "a connection without a certificate name" if role.name is None else f"the tenant certificate {role.name!r}"


def foreign_keys(keys, owners: dict, tenant: str | None) -> list:
    """The keys among ``keys`` that a task of another owner holds (``owners``: key -> tenant, or "" for
    an operator's or a worker's task; ``tenant`` None for a connection whose certificate names none);
    keys no task holds yet are not foreign."""
    return [k for k in keys if k in owners and owners[k] != tenant]

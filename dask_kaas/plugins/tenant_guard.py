"""The requests-only mode on the scheduler (``kaas.scheduler.tenant-clients: requests-only``): what a
tenant's connection may do, message by message.

Which task each client made is recorded (a tenant's, or ``""`` an operator's); a tenant's graph update
may make tasks that call only Requests and Dask's plumbing and may not touch another owner's task; its
stream messages are held to :data:`~dask_kaas.plugins.access.TENANT_STREAM` with the keys they name cut
to its own; its graph is unpickled here with :mod:`.tenant_pickle`'s rules; its calls of the scheduler's
handlers are held to :data:`~dask_kaas.plugins.access.TENANT_RPC`, a gather to its own results. The
rules themselves are :class:`~dask_kaas.plugins.access.AccessRules` (pure); this class applies them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import Any

from .. import compat
from ..errors import TenantError
from ..names import show
from .access import KEYED_STREAM, QUIET_STREAM, REQUESTS_ONLY, AccessRules, Role, foreign_keys
from .graph_scan import foreign_call
from .tenant_pickle import MAX_DEPTH, restricted_loads, tenant_loads

__all__ = ["TenantGuard"]

logger = logging.getLogger("dask_kaas.plugins.scheduler")


def _function_name(func) -> str:
    qualname = getattr(func, "__qualname__", None)
    if isinstance(qualname, str):
        return show(f"{getattr(func, '__module__', None) or '?'}.{qualname}", 80).strip("'\"")
    return f"a {type(func).__name__} object"


def _hashable(key) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


class TenantGuard:
    """The requests-only rules applied to one scheduler's connections and graph updates.

    Parameters
    ----------
    access : AccessRules
        Who is a tenant, a worker or an operator, and what each may call and send.
    graph_objects : int
        The most objects a tenant's pickled graph may hold (``kaas.scheduler.tenant-graph-objects``).
    """

    def __init__(self, access: AccessRules, graph_objects: int) -> None:
        self.access = access
        self.graph_objects = graph_objects
        self.owners: dict[Hashable, str | None] = {}  # key -> the tenant whose client made its task ("" an operator's)
        self.scheduler: Any | None = None

    def install(self, scheduler) -> None:
        """Guard the scheduler's handlers and the unpickling of tenants' messages (the stream guard is
        :meth:`guard_stream`, which the plugin binds with the stream identity)."""
        self.scheduler = scheduler
        compat.guard_handlers(scheduler, self.handler_refusal)
        # a message's ToPickle parts are unpickled while it is read: a tenant's, with tenant_pickle's rules
        compat.restrict_unpickling(scheduler, lambda cert: None if self.access.role(cert).trusted else restricted_loads)

    def client_role(self, scheduler, client: str) -> Role:
        return self.access.role(compat.client_certificate(scheduler, client))

    # -- graph updates -----------------------------------------------------------------------------
    def graph_update(self, scheduler, client: str, tasks: list, keys) -> dict:
        """Record who owns the tasks of this graph update; for a tenant's update, ``{key: tenant}`` of the
        tasks it made (each must be a request or plumbing), all of them refused when the update touched
        a task of another owner (and that task stays out of the tenant's reach), or made by a connection
        whose certificate names no tenant."""
        role = self.client_role(scheduler, client)
        owner = "" if role.trusted else role.tenant
        if role.trusted:
            for key in tasks:
                self.owners.setdefault(key, "")
            return {}
        foreign = foreign_keys(tasks, self.owners, owner)
        made = [key for key in tasks if key not in self.owners]
        for key in made:
            self.owners[key] = owner
        if foreign:
            error = TenantError(
                f"task {show(str(foreign[0]), 80)} belongs to another tenant (or an operator): a "
                f"tenant's graph may use only its own tasks ({REQUESTS_ONLY})"
            )
            wanted = [k for k in foreign if k in set(keys)]
            scheduler.loop.add_callback(self._turn_away, client, wanted, error)
            return {key: error for key in made}
        if owner is None:  # no certificate name, so no tenant: None would be no verdict, and its tasks unchecked
            error = TenantError(f"a connection without a certificate name may not submit tasks ({REQUESTS_ONLY})")
            return {key: error for key in made}
        return {key: owner for key in made}

    def task_refusal(self, ts, verdict) -> Exception | None:
        """Why a task :meth:`graph_update` gave ``verdict`` may not run (None: it may)."""
        if isinstance(verdict, Exception):
            return verdict
        func = foreign_call(compat.task_spec(ts))
        if func is not None:
            name = "a task too large to look through" if func is ... else _function_name(func)
            return TenantError(f"a tenant's certificate may submit KaaS requests only, not {name} ({REQUESTS_ONLY})")
        return None

    def _turn_away(self, client: str, keys: list, error: Exception) -> None:
        """The tenant no longer wants another owner's tasks it asked for; its futures of them fail."""
        if keys:
            compat.release_for_client(self.scheduler, client, keys, "kaas-foreign")
            compat.refuse_keys(self.scheduler, client, keys, error)

    # -- the scheduler's handlers and stream -------------------------------------------------------
    def handler_refusal(self, cert: dict | None, op: str, msg: dict) -> str | None:
        """Why a connection presenting ``cert`` may not call handler ``op`` with ``msg`` (None: it may)."""
        role = self.access.role(cert)
        problem = self.access.rpc_refusal(role, op)
        if problem is not None or role.trusted:
            return problem
        if op == "gather":
            keys = msg.get("keys")
            if not isinstance(keys, (list, tuple)):
                return "gather takes a list of keys"
            theirs = [k for k in keys if not _hashable(k) or self.owners.get(k) != role.tenant]
            if theirs:
                return (
                    f"the tenant certificate {role.name!r} may gather only its own tasks' results, not "
                    f"{show(repr(theirs[0]), 80)}"
                )
        elif op == "register-client":
            client = msg.get("client")
            assert self.scheduler is not None  # install() guards the handlers, once it has the scheduler
            if not isinstance(client, str) or client in self.scheduler.clients:
                return f"client id {show(repr(client), 80)} is taken or no name: a client registers under a new id"
        return None

    async def guard_stream(self, comm, msg: dict) -> dict | None:
        """A message on a client's stream: a tenant's passes (its graph unpickled here, with
        :mod:`.tenant_pickle`; the keys it names cut to its own) or is dropped (None)."""
        role = self.access.role(compat.peer_certificate(comm))
        if role.trusted:
            return msg
        op, client = msg.get("op"), msg.get("client")  # client: the connection's id (bind_stream_identity)
        if not isinstance(op, str) or not isinstance(client, str):  # an op of None, or one not even hashable
            logger.warning(
                "dask-kaas: dropped a message from %s: its op %s is not a name", comm.peer_address, show(repr(op), 80)
            )
            return None
        problem = self.access.stream_refusal(role, op)
        if problem is not None:
            logger.log(
                logging.DEBUG if op in QUIET_STREAM else logging.WARNING,
                "dask-kaas: dropped a message from %s: %s",
                comm.peer_address,
                problem,
            )
            return None
        if op == "update-graph":
            try:
                header, frames, keys = compat.update_graph_parts(msg)
            except TypeError:  # keys or frames that are not even iterable
                logger.warning("dask-kaas: dropped a graph from %s: its keys or frames are no lists", comm.peer_address)
                return None
            try:
                expr = await asyncio.to_thread(tenant_loads, header, frames, self.graph_objects, MAX_DEPTH)
            except TenantError as e:
                logger.warning("dask-kaas: refused a graph from %s: %s", comm.peer_address, e)
                compat.refuse_keys(self.scheduler, client, [k for k in keys if _hashable(k)], e)
                return None
            return compat.with_expression(msg, expr)
        if op in KEYED_STREAM:
            named = msg.get("keys")
            if not isinstance(named, (list, tuple)):
                return None
            own = [k for k in named if _hashable(k) and self.owners.get(k) == role.tenant]
            if len(own) < len(named):
                logger.warning(
                    "dask-kaas: %s from %s named tasks not its tenant's; those were left out", op, comm.peer_address
                )
                if op == "client-desires-keys":
                    compat.refuse_keys(
                        self.scheduler,
                        client,
                        [k for k in named if _hashable(k) and k not in own],
                        TenantError("a tenant may want only its own tasks' results"),
                    )
            return {**msg, "keys": own} if own else None
        return msg

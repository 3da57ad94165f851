"""What a worker tells the scheduler after each request, and how the scheduler keeps its picture.

A report rides inside the request's own ``task-finished`` message (the task's metadata), so it
costs no message of its own; a failed request's report goes over the worker's stream, in order
with the rest. Each report carries the request's cost (tenant, kernels, shape, seconds, hits and
misses) and only what changed in the worker's cache since the previous report: consts added or
replaced, consts gone, counter increments. Every ``FULL_EVERY``-th report (and the first) carries
the whole picture instead, so a scheduler that missed one (its ``seq`` jumps) is exact again soon.

Pure code on both sides: :class:`ReportBuilder` on the worker, :class:`CachePicture` on the scheduler.
:class:`Report` is a report's format (a plain dict at run time).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

FULL_EVERY = 64
# The other way: a task the scheduler sends carries, in this annotation, how many queued requests want
# each const its worker caches ([[namespace, key, n], ...]: SchedulingCore.hints), for queue-aware eviction.
WANTED_ANNOTATION = "kaas-wanted"
# And for a batch (RequestBatch) whose later calls admission control rejected: [first rejected call,
# message, predicted seconds, deadline seconds]; the worker answers those calls with AdmissionRejected.
REJECTED_ANNOTATION = "kaas-rejected"
# the tenant the scheduler approved a KaaS task for ("" for none): a worker runs its Request as that tenant only
TENANT_ANNOTATION = "kaas-tenant"

ConstRef = tuple[str, str]  # (namespace, key)
ConstState = tuple[str, int, int]  # (uid, version, nbytes) of a cached const
ConstEntry = tuple[str, str, str, int, int]  # (namespace, key, uid, version, nbytes): a cached const, worker side
# The same as a report carries it: a list [namespace, key, uid, version, nbytes] (what msgpack and JSON
# make of a tuple anyway); its items differ in type, which a list's type cannot say item by item.
ConstRow = list[Any]


class RequestFields(TypedDict):
    """A request's own figures and its device's memory: what a worker's runtime hands
    :meth:`ReportBuilder.build` (:meth:`dask_kaas.runtime.Runtime.report`)."""

    tenant: str | None  # None: a request without one (the scheduler counts it for its task's tenant, or "default")
    kernels: list[str]
    hits: int
    misses: int  # compulsory + capacity
    bytes_loaded: int
    shape: str  # Request.shape_token: the runtime model's key
    seconds: float  # a batch: per call run
    ok: bool
    device: str  # the device's kind
    capacity: int  # the cache's bytes
    used: int
    pinned: int
    phases: dict[str, float]  # seconds per phase the request's wait is explained by
    count: NotRequired[int]  # a batch only: its calls
    failed: NotRequired[int]  # a batch only: how many of them failed


class CacheChange(TypedDict, total=False):
    """A report's cache part: the whole picture (``consts``, ``counters``, ``load_seconds``) or what
    changed since the previous report (``added``, ``removed``, ``counters_delta``, ``load_seconds_delta``)."""

    consts: list[ConstRow]
    counters: dict[str, int]
    load_seconds: float  # cumulative seconds spent loading consts from the store
    added: list[ConstRow]  # consts new or replaced (another uid or version) since the previous report
    removed: list[list[str]]  # [namespace, key] of the consts gone since
    counters_delta: dict[str, int]  # increments of the counters that changed
    load_seconds_delta: float


class Report(CacheChange):
    """A worker's report, as the scheduler reads it (:meth:`dask_kaas.scheduling.SchedulingCore.report`).

    ``seq`` numbers a worker's reports from 1. The request's figures are those of
    :class:`RequestFields`; the scheduler takes any of them as optional (a simulated worker's reports
    carry no kernels or device, say). The cache part (:class:`CacheChange`) is whole or a change.
    """

    seq: int
    tenant: NotRequired[str | None]
    kernels: NotRequired[list[str]]
    hits: NotRequired[int]
    misses: NotRequired[int]
    bytes_loaded: NotRequired[int]
    shape: NotRequired[str]
    seconds: NotRequired[float]
    ok: NotRequired[bool]
    device: NotRequired[str]
    capacity: NotRequired[int]
    used: NotRequired[int]
    pinned: NotRequired[int]
    phases: NotRequired[dict[str, float]]
    count: NotRequired[int]
    failed: NotRequired[int]


class ReportBuilder:
    """Builds a worker's reports, remembering what the previous one said."""

    def __init__(self, full_every: int = FULL_EVERY) -> None:
        self.full_every = full_every
        self.seq = 0
        self._consts: dict[ConstRef, ConstState] = {}
        self._counters: dict[str, int] = {}
        self._load_seconds = 0.0
        self._full_next = True

    def reset(self) -> None:
        """Send the whole picture next time: the cache changed outside a request (it was cleared, say),
        and the scheduler may have forgotten what it knew."""
        self._full_next = True

    def build(
        self,
        fields: RequestFields,
        *,
        consts: Iterable[ConstEntry],
        counters: Mapping[str, int],
        load_seconds: float,
    ) -> Report:
        """The next report: ``fields`` (the request's own figures and the device's memory) plus the
        cache's consts ``(namespace, key, uid, version, nbytes)`` and counters, whole or as changes."""
        self.seq += 1
        now = {(ns, key): (uid, version, nbytes) for ns, key, uid, version, nbytes in consts}
        change: CacheChange
        if self._full_next or self.seq % self.full_every == 0:
            self._full_next = False
            change = {
                "consts": [[*ref, *v] for ref, v in now.items()],
                "counters": dict(counters),
                "load_seconds": load_seconds,
            }
        else:
            change = {
                "added": [[*ref, *v] for ref, v in now.items() if self._consts.get(ref) != v],
                "removed": [list(ref) for ref in self._consts if ref not in now],
                "counters_delta": {
                    k: v - self._counters.get(k, 0) for k, v in counters.items() if v != self._counters.get(k, 0)
                },
                "load_seconds_delta": load_seconds - self._load_seconds,
            }
        report: Report = {**fields, "seq": self.seq, **change}
        self._consts, self._counters, self._load_seconds = now, dict(counters), load_seconds
        return report


@dataclass
class CachePicture:
    """The scheduler's picture of one worker's cache and counters, kept by its reports."""

    resident: dict[ConstRef, ConstState] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    load_seconds: float = 0.0
    seq: int = 0
    exact: bool = False  # False from a missed report until the next full one

    def apply(self, report: Report) -> None:
        seq = report.get("seq", self.seq + 1)
        if "consts" in report:
            self.resident = {(ns, key): (uid, version, nbytes) for ns, key, uid, version, nbytes in report["consts"]}
            self.counters = dict(report.get("counters", {}))
            self.load_seconds = report.get("load_seconds", 0.0)
            self.exact = True
        else:
            if seq != self.seq + 1:
                self.exact = False
            for ns, key in report.get("removed", ()):
                self.resident.pop((ns, key), None)
            for ns, key, uid, version, nbytes in report.get("added", ()):
                self.resident[(ns, key)] = (uid, version, nbytes)
            for name, inc in report.get("counters_delta", {}).items():
                self.counters[name] = self.counters.get(name, 0) + inc
            self.load_seconds += report.get("load_seconds_delta", 0.0)
        self.seq = seq

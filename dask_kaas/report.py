"""What a worker tells the scheduler after each request, and how the scheduler keeps its picture.

A report rides inside the request's own ``task-finished`` message (the task's metadata), so it
costs no message of its own; a failed request's report goes over the worker's stream, in order
with the rest. Each report carries the request's cost (tenant, kernels, shape, seconds, hits and
misses) and only what changed in the worker's cache since the previous report: consts added or
replaced, consts gone, counter increments. Every ``FULL_EVERY``-th report (and the first) carries
the whole picture instead, so a scheduler that missed one (its ``seq`` jumps) is exact again soon.

Pure code on both sides: :class:`ReportBuilder` on the worker, :class:`CachePicture` on the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FULL_EVERY = 64
# The other way: a task the scheduler sends carries, in this annotation, how many queued requests want
# each const its worker caches ([[namespace, key, n], ...]: SchedulingCore.hints), for queue-aware eviction.
WANTED_ANNOTATION = "kaas-wanted"
# And for a batch (RequestBatch) whose later calls admission control rejected: [first rejected call,
# message, predicted seconds, deadline seconds]; the worker answers those calls with AdmissionRejected.
REJECTED_ANNOTATION = "kaas-rejected"
# the tenant the scheduler approved a KaaS task for ("" for none): a worker runs its Request as that tenant only
TENANT_ANNOTATION = "kaas-tenant"

ConstRef = tuple  # (namespace, key)


class ReportBuilder:
    """Builds a worker's reports, remembering what the previous one said."""

    def __init__(self, full_every: int = FULL_EVERY):
        self.full_every = full_every
        self.seq = 0
        self._consts: dict[ConstRef, tuple] = {}
        self._counters: dict[str, int] = {}
        self._load_seconds = 0.0
        self._full_next = True

    def reset(self) -> None:
        """Send the whole picture next time: the cache changed outside a request (it was cleared, say),
        and the scheduler may have forgotten what it knew."""
        self._full_next = True

    def build(self, fields: dict, *, consts, counters: dict, load_seconds: float) -> dict:
        """The next report: ``fields`` (the request's own figures and the device's memory) plus the
        cache's consts ``(namespace, key, uid, version, nbytes)`` and counters, whole or as changes."""
        self.seq += 1
        now = {(ns, key): (uid, version, nbytes) for ns, key, uid, version, nbytes in consts}
        report = dict(fields, seq=self.seq)
        if self._full_next or self.seq % self.full_every == 0:
            self._full_next = False
            report.update(
                consts=[[*ref, *v] for ref, v in now.items()], counters=dict(counters), load_seconds=load_seconds
            )
        else:
            report.update(
                added=[[*ref, *v] for ref, v in now.items() if self._consts.get(ref) != v],
                removed=[list(ref) for ref in self._consts if ref not in now],
                counters_delta={
                    k: v - self._counters.get(k, 0) for k, v in counters.items() if v != self._counters.get(k, 0)
                },
                load_seconds_delta=load_seconds - self._load_seconds,
            )
        self._consts, self._counters, self._load_seconds = now, dict(counters), load_seconds
        return report


@dataclass
class CachePicture:
    """The scheduler's picture of one worker's cache and counters, kept by its reports."""

    resident: dict = field(default_factory=dict)  # (namespace, key) -> (uid, version, nbytes)
    counters: dict = field(default_factory=dict)
    load_seconds: float = 0.0
    seq: int = 0
    exact: bool = False  # False from a missed report until the next full one

    def apply(self, report: dict) -> None:
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

"""The batching client: calls of one request that queue up run as one Dask task.

Dask's scheduler spends one to two milliseconds of CPU on every task, whatever it does; a warm
KaaS request needs a tenth of that on its worker. :class:`Batcher` sits beside a
``distributed.Client`` and sends the calls of one request that queued while the cluster was busy
as one task (:class:`~dask_kaas.request.batch.RequestBatch`), so Dask's per-task cost is paid once
per batch; an idle request sends each call the moment it arrives (:mod:`.queue`: never waits to
fill a batch). Each call still gets its own future, its own result or error, and its own share
of fairness, admission and the counters, on the scheduler and the workers.

- **One graph update for concurrent calls**: the batches ready in one turn of the client's event
  loop are submitted together, as one graph (one ``update_graph`` on the scheduler).
- **Payloads off the scheduler**: a batch whose inputs exceed ``direct_bytes`` is scattered
  straight to a worker and the task depends on it; results always come back straight from the
  worker (``gather(direct=True)``), so the scheduler never carries a batch's bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

import dask

from .. import config
from ..errors import ConfigError, KaasError
from ..request import Request
from ..request.batch import BatchCalls, RequestBatch
from .queue import Batch, BatchQueue

__all__ = ["Batcher", "CallFuture"]

logger = logging.getLogger(__name__)

SLOTS_REFRESH = 5.0  # seconds between asking the scheduler how many KaaS workers the cluster has
UNKNOWN_SLOTS = 2  # batches per request in flight until the scheduler has answered


class CallFuture(concurrent.futures.Future):
    """One call's outcome: ``result(timeout)``, ``exception()``, ``done()``, ``cancel()`` (until its
    batch leaves), ``add_done_callback``, and ``await`` in a coroutine."""

    def __await__(self):
        if not self.done():
            loop = asyncio.get_running_loop()
            waiter = loop.create_future()

            def wake(_):
                # resolved on the awaiting loop itself (the Batcher's loop, an asynchronous client's):
                # no thread-safe hand-off, which costs a system call per call
                if _running_loop() is loop:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    loop.call_soon_threadsafe(_wake, waiter)

            self.add_done_callback(wake)
            try:
                yield from waiter.__await__()
            except asyncio.CancelledError:
                self.cancel()  # a caller that gives up before its batch leaves takes its call back
                raise
        return self.result()


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Call:
    __slots__ = ("future", "inputs", "nbytes")

    def __init__(self, inputs: dict | None, future: CallFuture, nbytes: int):
        self.inputs, self.future, self.nbytes = inputs, future, nbytes


class Batcher:
    """Submit KaaS calls through ``client``, batching the calls of one request that queue up.

    ``batcher.submit(request, x=...)`` is ``client.submit(request, x=...)`` for many callers at
    once: each call returns a :class:`CallFuture` of its outputs (``{buffer name: array}``) or its
    own error. Calls of one request (equal ``Request`` objects: same kernels, tenant and
    deadline) leave as one task when they queued while that request's batches were all in flight;
    a request has one batch in flight per KaaS worker (the workers' other slots stay for other
    requests), so the batcher never waits to fill a batch, and under load batches grow to what
    queued while they ran.

    What a single request has, each call keeps: its inputs are checked when submitted (a bad one
    fails only its own future); the scheduler charges fair share and admits deadlines per call (a
    batch whose later calls would miss their deadline runs the first ones, the rest fail with
    :class:`~dask_kaas.AdmissionRejected`); the workers count requests, not batches. A worker lost
    mid-batch is what Dask makes of a lost task: the batch runs again elsewhere and every call gets
    exactly one outcome (outputs written to the store are written again by the rerun, as for a
    single request).

    Works with synchronous and asynchronous clients; its work happens on the client's event loop,
    and ``submit`` may be called from any thread.

    Parameters
    ----------
    client : distributed.Client
        A client of a KaaS cluster.
    max_calls : int, optional
        Calls in one batch at most (default ``kaas.batch.max-calls``).
    max_bytes : int or str, optional
        Input bytes in one batch at most (default ``kaas.batch.max-bytes``); a larger call goes alone.
    direct_bytes : int or str, optional
        A batch with more input bytes is scattered straight to a worker instead of riding in the
        graph through the scheduler (default ``kaas.batch.direct-bytes``).
    in_flight : int, optional
        Batches of one request in flight at once (default ``kaas.batch.in-flight``, else one per
        KaaS worker, asked of the scheduler every few seconds).

    Raises
    ------
    ConfigError
        For a limit that is not a positive size or count.

    Examples
    --------
    >>> import numpy as np
    >>> from distributed import Client
    >>> from dask_kaas import Batcher, LocalKaasCluster
    >>> cluster = LocalKaasCluster(n_workers=2, device="host")  # doctest: +SKIP
    >>> client = Client(cluster)  # doctest: +SKIP
    >>> batcher = Batcher(client)  # doctest: +SKIP
    >>> futures = [batcher.submit(request, x=np.full(1024, i, np.float32)) for i in range(100)]  # doctest: +SKIP
    >>> [f.result()["y"][0] for f in futures][:3]  # doctest: +SKIP
    [1.0, 2.0, 3.0]
    >>> batcher.stats()["batches"] < 100  # doctest: +SKIP
    True
    """

    def __init__(
        self,
        client,
        *,
        max_calls: int | None = None,
        max_bytes: int | str | None = None,
        direct_bytes: int | str | None = None,
        in_flight: int | None = None,
    ) -> None:
        self.client = client
        max_calls = int(max_calls if max_calls is not None else config.get("batch.max-calls"))
        limit = int(config.get("batch.max-calls"))
        if not 1 <= max_calls <= limit:
            raise ConfigError(f"max_calls must be 1 to kaas.batch.max-calls ({limit}), got {max_calls}")
        max_bytes = config.parse_size(
            max_bytes if max_bytes is not None else config.get("batch.max-bytes"), name="max_bytes"
        )
        self.direct_bytes = config.parse_size(
            direct_bytes if direct_bytes is not None else config.get("batch.direct-bytes"), name="direct_bytes"
        )
        if in_flight is None:
            in_flight = config.get("batch.in-flight")
        if in_flight is not None and (isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1):
            raise ConfigError(f"in_flight must be a positive integer or None, got {in_flight!r}")
        if max_bytes < 1:
            raise ConfigError(f"max_bytes must be positive, got {max_bytes}")
        self._auto_slots = in_flight is None
        self._queue = BatchQueue(slots=in_flight or UNKNOWN_SLOTS, max_calls=max_calls, max_bytes=max_bytes)
        self._outbox: list[Batch] = []
        self._flush_pending = False
        self._slots_asked = -float("inf")
        self._direct: bool | None = None  # whether batches may go straight to workers (the scheduler says)
        self._counts = {"graph_updates": 0, "direct_batches": 0}
        self._inbox: list[tuple[Request, _Call]] = []  # calls handed over, not yet taken by the loop
        self._inbox_lock = threading.Lock()
        self._wake_pending = False
        self.closed = False

    # -- the caller's side (any thread) ------------------------------------------------------------
    def submit(self, request: Request, /, *args: Any, **inputs: Any) -> CallFuture:
        """One call of ``request`` with ``inputs`` (by buffer name); its future.

        Bad inputs (:meth:`Request.check_inputs`) fail the returned future at once; nothing leaves.

        Raises
        ------
        TypeError
            When ``request`` is not a :class:`~dask_kaas.Request`.
        RuntimeError
            After :meth:`close`, or once its client is closed.
        """
        call = self._call(request, args, inputs)
        if call.inputs is not None:
            self._hand_over([(request, call)])
        return call.future

    def map(self, request: Request, calls: Iterable[Mapping[str, Any]]) -> list[CallFuture]:
        """:meth:`submit` for each mapping of inputs in ``calls``, handed to the event loop at once
        (so they leave together: one task while the request's slots are busy, else one per free
        slot); the futures in order."""
        futures, added = [], []
        for inputs in calls:
            call = self._call(request, (), dict(inputs))
            futures.append(call.future)
            if call.inputs is not None:
                added.append((request, call))
        if added:
            self._hand_over(added)
        return futures

    def _call(self, request: Request, args: tuple, inputs: dict) -> _Call:
        """The call, its inputs checked (bad ones: no inputs, its future failed already)."""
        if not isinstance(request, Request):
            raise TypeError(f"Batcher.submit takes a dask_kaas.Request, got {type(request).__name__}")
        if self.closed:
            raise RuntimeError("this Batcher is closed")
        if self.client.status in ("closing", "closed"):
            raise RuntimeError(f"the Batcher's client is {self.client.status}: no call can leave")
        future = CallFuture()
        try:
            if args:
                request(*args)  # raises the request's own error for positional inputs
            data = request.check_inputs(inputs)
        except KaasError as e:
            future.set_exception(e)
            return _Call(None, future, 0)
        return _Call(data, future, sum(a.nbytes for a in data.values()))

    def stats(self) -> dict[str, int]:
        """``calls`` and ``batches`` sent, ``direct_batches`` (scattered), ``graph_updates``, and now:
        ``queued`` calls, ``in_flight`` batches, ``slots`` per request."""
        q = self._queue
        return {
            "calls": q.calls,
            "batches": q.batches,
            **self._counts,
            "queued": q.queued(),
            "in_flight": q.in_flight(),
            "slots": q.slots,
        }

    def close(self) -> None:
        """Accept no more calls; those submitted still complete."""
        self.closed = True

    def __enter__(self) -> Batcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.stats()
        return f"<Batcher: {s['calls']} calls in {s['batches']} batches, {s['queued']} queued>"

    def _hand_over(self, calls: list[tuple[Request, _Call]]) -> None:
        """Give calls to the event loop. One wake-up of the loop serves every call handed over before
        it runs (from any thread): waking it costs a system call, more than a call's own work."""
        with self._inbox_lock:
            self._inbox.extend(calls)
            if self._wake_pending:
                return
            self._wake_pending = True
        self.client.loop.add_callback(self._add)

    # -- the event loop's side ---------------------------------------------------------------------
    def _add(self) -> None:
        with self._inbox_lock:
            calls, self._inbox = self._inbox, []
            self._wake_pending = False
        for request, call in calls:
            self._outbox.extend(self._queue.add(request, call, call.nbytes))
        self._schedule_flush()
        if self._auto_slots and time.monotonic() - self._slots_asked > SLOTS_REFRESH:
            self._slots_asked = time.monotonic()
            self.client.loop.add_callback(self._refresh_slots)

    def _schedule_flush(self) -> None:
        # after the callbacks already queued: the calls submitted in this turn go in one graph update
        if self._outbox and not self._flush_pending:
            self._flush_pending = True
            self.client.loop.add_callback(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        batches, self._outbox = self._outbox, []
        inline = []
        for batch in batches:
            batch.items = [c for c in batch.items if c.future.set_running_or_notify_cancel()]
            if not batch.items:  # every caller gave up before it left
                self._done(batch)
            elif batch.nbytes > self.direct_bytes:
                self.client.loop.add_callback(self._send_direct, batch)
            else:
                inline.append(batch)
        if inline:
            try:
                futures = self._submit_together(inline)
            except Exception as e:
                for batch in inline:
                    self._fail(batch, e)
                return
            for batch, future in zip(inline, futures):
                self.client.loop.add_callback(self._collect, batch, future)

    def _submit_together(self, batches: list[Batch]) -> list:
        """One task per batch, all in one graph update (a single batch: a plain submit, cheaper still)."""
        self._counts["graph_updates"] += 1
        if len(batches) == 1:
            (batch,) = batches
            return [self.client.submit(RequestBatch(cast(Request, batch.key), len(batch)), _calls(batch), pure=False)]
        return self.client.compute(
            [dask.delayed(RequestBatch(cast(Request, b.key), len(b)), pure=False)(_calls(b)) for b in batches]
        )

    async def _send_direct(self, batch: Batch) -> None:
        if self._direct is None:
            await self._ask_scheduler()
        if not self._direct:  # tenants held to requests reach no worker: through the scheduler
            try:
                (future,) = self._submit_together([batch])
            except Exception as e:
                self._fail(batch, e)
                return
            await self._collect(batch, future)
            return
        try:
            data = await self.client.scatter(_calls(batch), direct=True, hash=False, asynchronous=True)
            future = self.client.submit(RequestBatch(cast(Request, batch.key), len(batch)), data, pure=False)
            self._counts["direct_batches"] += 1
            self._counts["graph_updates"] += 1
        except Exception as e:
            self._fail(batch, e)
            return
        await self._collect(batch, future, data)

    async def _collect(self, batch: Batch, future, *keep) -> None:
        try:
            if self._direct is None:
                await self._ask_scheduler()
            outcomes = await self.client.gather(future, direct=self._direct, asynchronous=True)
        except BaseException as e:
            self._fail(batch, e if isinstance(e, Exception) else KaasError(f"the batch was cancelled ({e!r})"))
            return
        finally:
            future.release()
            for other in keep:
                other.release()
        if not isinstance(outcomes, list) or len(outcomes) != len(batch.items):  # never: one outcome per call
            self._fail(
                batch,
                KaasError(
                    f"a batch of {len(batch.items)} calls came back with "
                    f"{len(outcomes) if isinstance(outcomes, list) else type(outcomes).__name__}"
                ),
            )
            return
        for call, outcome in zip(batch.items, outcomes):
            if isinstance(outcome, BaseException):
                call.future.set_exception(outcome)
            else:
                call.future.set_result(outcome)
        self._done(batch)

    def _fail(self, batch: Batch, error: Exception) -> None:
        for call in batch.items:
            if not call.future.done():
                call.future.set_exception(error)
        self._done(batch)

    def _done(self, batch: Batch) -> None:
        self._outbox.extend(self._queue.done(batch.key))
        self._schedule_flush()

    async def _refresh_slots(self) -> None:
        await self._ask_scheduler()

    async def _ask_scheduler(self) -> None:
        """Ask the KaaS scheduler (its ``kaas_batch_info`` handler) how many batches to keep in flight and
        whether batches may go straight to workers; without an answer, keep the current figures."""
        try:
            info = await self.client.scheduler.kaas_batch_info()
        except Exception:
            logger.debug("dask-kaas batcher: could not ask the scheduler", exc_info=True)
            info = None
        if not isinstance(info, dict):  # no KaaS plugin there: Dask's defaults
            self._direct = True if self._direct is None else self._direct
            return
        self._direct = bool(info.get("direct", True))
        slots = info.get("slots")
        if self._auto_slots and slots:
            self._outbox.extend(self._queue.set_slots(slots))
            self._schedule_flush()


def _calls(batch: Batch) -> BatchCalls:
    return BatchCalls([call.inputs for call in batch.items])

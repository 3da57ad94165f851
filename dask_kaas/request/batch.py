"""A batch: one Request run for several calls' inputs, as one Dask task.

Dask spends one to two milliseconds of scheduler CPU on every task, whatever the task does; a warm
KaaS request costs the worker a tenth of that. A :class:`RequestBatch` is the function of a task
that runs one request for each of several calls (their inputs in one :class:`BatchCalls`), so
Dask's per-task cost is paid once per batch. The scheduler plugin sees the request and the count
without touching the inputs, charges the tenant's fair share per call, and admits each call
against its deadline; the worker runs the calls one after another in one device session and
returns one outcome per call: its outputs, or the error that call alone raised.

:class:`dask_kaas.Batcher` builds these; nothing here knows Dask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from dask.sizeof import sizeof

from .. import config
from ..errors import RequestError
from .call import current_runtime
from .model import InvalidRequest, Request

__all__ = ["BatchCalls", "BatchResults", "RequestBatch"]


class BatchCalls:
    """The inputs of a batch's calls (a list of ``{buffer name: array}``), as one opaque value.

    Opaque so that Dask neither walks nor copies the calls when it builds the graph, and so that a
    batch's inputs move as one piece (inline in the task, or scattered straight to a worker).
    """

    __slots__ = ("calls",)

    def __init__(self, calls: Sequence[Mapping[str, Any]]):
        self.calls = [_call_dict(i, c) for i, c in enumerate(calls)]

    def __len__(self) -> int:
        return len(self.calls)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (and raw bytes) the calls carry."""
        return sum(_nbytes(v) for call in self.calls for v in call.values())

    def __reduce__(self):
        return BatchCalls, (self.calls,)

    def __repr__(self) -> str:
        return f"BatchCalls({len(self.calls)} calls, {self.nbytes} bytes)"


def _call_dict(i: int, call: Any) -> dict:
    if not isinstance(call, Mapping):
        raise RequestError(f"a batch's call #{i} must map buffer names to inputs, got {type(call).__name__}")
    return dict(call)


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    return sizeof(value)


@sizeof.register(BatchCalls)
def _sizeof_calls(calls: BatchCalls) -> int:
    return calls.nbytes + 64 * len(calls)


class BatchResults(list):
    """A batch's outcomes, one per call in order (a list): outputs, or the call's exception.

    Its own type so that Dask moves it as one pickled object (its arrays out of band) rather than
    serializing the list item by item, which costs more than a small call's work.
    """

    __slots__ = ()

    def __reduce__(self):
        return BatchResults, (list(self),)


@sizeof.register(BatchResults)
def _sizeof_results(results: BatchResults) -> int:
    return sum(_nbytes(v) for r in results if isinstance(r, dict) for v in r.values()) + 64 * len(results)


class RequestBatch:
    """The function of a batched Dask task: ``request`` run once for each of ``count`` calls.

    Called with a :class:`BatchCalls` of exactly ``count`` calls, it runs each on the current
    runtime (the worker's), in order, and returns a list (:class:`BatchResults`) with one outcome per call: the call's
    outputs (``{buffer name: numpy.ndarray}``), or the :class:`~dask_kaas.KaasError` that call
    raised. One bad call fails only itself; a call the scheduler's admission control rejected
    (its deadline) comes back as :class:`~dask_kaas.AdmissionRejected` without running.

    Immutable and cheap to pickle: the scheduler unpickles it (with the request) for every task,
    never the inputs' bytes. :class:`dask_kaas.Batcher` builds batches; by hand:

    >>> import numpy as np
    >>> from dask_kaas import BufferSpec, KernelSpec, Literal, Request
    >>> from dask_kaas.request.batch import BatchCalls, RequestBatch
    >>> a, b = (BufferSpec(n, 16, dtype="float32", ephemeral=True) for n in "ab")
    >>> fill = Request(KernelSpec("builtin", "axpy", 1, 32, literals=[Literal("i", 4), Literal("f", 2.0)],
    ...                           arguments=[(a, "i"), (b, "io")]))
    >>> batch = RequestBatch(fill, 2)
    >>> out = batch(BatchCalls([{"a": np.ones(4, np.float32), "b": np.zeros(4, np.float32)},
    ...                         {"a": np.ones(4, np.float32)}]))
    >>> out[0]
    {'b': array([2., 2., 2., 2.], dtype=float32)}
    >>> type(out[1]).__name__
    'RequestError'
    """

    __slots__ = ("count", "request")
    request: Request
    count: int

    def __init__(self, request: Request, count: int):
        if not isinstance(request, Request):
            raise TypeError(f"a RequestBatch runs a Request, got {type(request).__name__}")
        limit = int(config.get("batch.max-calls"))
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= limit:
            raise RequestError(f"a batch holds 1 to {limit} calls (kaas.batch.max-calls), got {count!r}")
        object.__setattr__(self, "request", request)
        object.__setattr__(self, "count", count)

    def __setattr__(self, name, value):
        raise AttributeError("RequestBatch is immutable")

    @property
    def __name__(self) -> str:  # Dask names the task's key after its function
        return f"batch-{self.request.__name__}"

    def __call__(self, calls: BatchCalls) -> list:
        if not isinstance(calls, BatchCalls) or len(calls) != self.count:
            raise RequestError(
                f"{self!r} takes a BatchCalls of {self.count} calls, got "
                f"{len(calls) if isinstance(calls, BatchCalls) else type(calls).__name__}"
            )
        return BatchResults(current_runtime().run_batch(self.request, calls.calls))

    def __reduce__(self):
        return _rebuild_batch, (self.request, self.count)

    def __eq__(self, other) -> bool:
        return isinstance(other, RequestBatch) and (self.request, self.count) == (other.request, other.count)

    def __hash__(self) -> int:
        return hash((self.request, self.count))

    def __dask_tokenize__(self):
        return ("dask_kaas.RequestBatch", self.request.token, self.count)

    def __repr__(self) -> str:
        return f"RequestBatch({self.request!r} x {self.count})"


def _rebuild_batch(request, count):
    """A RequestBatch again, or the :class:`~.model.InvalidRequest` that says why it is not one."""
    if isinstance(request, InvalidRequest):
        return request
    try:
        return RequestBatch(request, count)
    except (RequestError, TypeError) as e:
        return InvalidRequest(e if isinstance(e, RequestError) else RequestError(str(e)))

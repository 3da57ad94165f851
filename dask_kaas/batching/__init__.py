"""Dynamic batching on the client: calls of one request that queue up run as one Dask task.

==============  ========================================================================
``queue``       which queued calls go together, and when (pure code: never waits to fill)
``batcher``     :class:`Batcher`: the queue driven on a ``distributed.Client``'s event loop
==============  ========================================================================
"""

from .batcher import Batcher, CallFuture

__all__ = ["Batcher", "CallFuture"]

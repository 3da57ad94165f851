"""dask-kaas inside Dask.

- ``worker``: :class:`~dask_kaas.plugins.worker.KaasWorkerPlugin`, a device and a runtime per worker;
- ``scheduler``: :class:`~dask_kaas.plugins.scheduler.KaasSchedulerPlugin`, fair dispatch, placement
  and admission through :mod:`dask_kaas.scheduling`.

Nothing is imported here, so a scheduler loads only its own plugin (never the store or the devices).
"""

"""The ``dask_kaas`` logger in Dask's processes: Dask's own handler and format, level ``kaas.log-level``.

Dask configures its loggers (``distributed``, ...) when distributed is imported, from the
``logging`` config; ``dask_kaas`` is not among them, so without this a worker's INFO lines (its
device, capacity, pool and store) would never show.
"""

from __future__ import annotations

import logging

from . import config

LOGGER = "dask_kaas"


def setup_logging() -> logging.Logger:
    """Give the ``dask_kaas`` logger the handlers of Dask's ``distributed`` logger (once; not where
    Dask has configured none, nor where the application has configured ``dask_kaas`` itself)."""
    logger = logging.getLogger(LOGGER)
    source = logging.getLogger("distributed")
    if logger.handlers or not source.handlers:
        return logger
    for handler in source.handlers:
        logger.addHandler(handler)
    logger.setLevel(str(config.get("log-level")).upper())
    logger.propagate = False
    return logger

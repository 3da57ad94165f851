"""Store profiles; they live in :mod:`dask_kaas.store.profiles` (this name is kept so older imports work)."""

from .store.profiles import *  # noqa: F403
from .store.profiles import __all__  # noqa: F401

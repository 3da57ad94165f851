"""The worker side: running requests on one device.

============  ====================================================================
``runtime``   :class:`Runtime`: one request at a time, pinning consts, zeroing outputs
``cache``     the device buffer cache (pins, LRU eviction) and the loaded-module cache
``counters``  counters and phase timers a worker reports
``keys``      what the caches key a loaded library, a const version and a run's buffer by
``local``     the runtime of a process that is not a KaaS worker; ``run_request``
============  ====================================================================
"""

from .counters import Counters
from .keys import ConstId, ModuleKey, RunBufferId, module_key
from .local import local_runtime, run_request
from .runtime import Runtime

__all__ = ["ConstId", "Counters", "ModuleKey", "RunBufferId", "Runtime", "local_runtime", "module_key", "run_request"]

"""The worker side: running requests on one device.

============  ====================================================================
``runtime``   :class:`Runtime`: one request at a time, pinning consts, zeroing outputs
``cache``     the device buffer cache (pins, LRU eviction) and the loaded-module cache
``counters``  counters and phase timers a worker reports
``local``     the runtime of a process that is not a KaaS worker; ``run_request``
============  ====================================================================
"""

from .counters import Counters
from .local import local_runtime, run_request
from .runtime import ConstId, ModuleKey, RunBufferId, Runtime, module_key

__all__ = ["ConstId", "Counters", "ModuleKey", "RunBufferId", "Runtime", "local_runtime", "module_key", "run_request"]
